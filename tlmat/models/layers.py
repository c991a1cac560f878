"""Small building blocks the architectures share: activations, cutoff envelopes, MLPs."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


class ShiftedSoftplus(nn.Module):
    """ssp(x) = ln(½eˣ + ½) = softplus(x) − ln 2 (SchNet): zero at zero, smooth."""

    shift = math.log(2.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.softplus(x) - self.shift


ACTIVATIONS: dict[str, type[nn.Module]] = {
    "softplus": nn.Softplus,
    "ssp": ShiftedSoftplus,
    "silu": nn.SiLU,
    "relu": nn.ReLU,
}


def activation(name: str) -> nn.Module:
    """An activation module by name (softplus, ssp, silu, relu)."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose from {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


class CosineCutoff(nn.Module):
    """f(d) = ½(cos(π d / r_c) + 1) for d < r_c, else 0 (Behler): filters fade to zero
    at the cutoff r_c (Å), so a neighbour crossing it changes nothing abruptly."""

    def __init__(self, cutoff: float):
        super().__init__()
        self.cutoff = float(cutoff)

    def forward(self, distances: torch.Tensor) -> torch.Tensor:
        envelope = 0.5 * (torch.cos(distances * math.pi / self.cutoff) + 1.0)
        return envelope * (distances < self.cutoff).to(distances.dtype)


def reset_all(module: nn.Module, **own: Callable[[torch.Tensor], Any]) -> None:
    """Call ``reset_parameters`` on the outermost sub-modules that have one (PyG's
    convention), so a block's own initialisation is not undone by its children's; the
    module's own parameters named in ``own`` get their initialiser (``None`` ones are
    absent by configuration and skipped)."""
    for name, init in own.items():
        if (parameter := getattr(module, name)) is not None:
            init(parameter)
    for child in module.children():
        if hasattr(child, "reset_parameters"):
            child.reset_parameters()
        else:
            reset_all(child)
