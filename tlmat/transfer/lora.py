"""LoRA: low-rank adapters on a frozen backbone (Hu et al. 2021; for interatomic
potentials: ELoRA, MACE's ``--lora``).

Every ``nn.Linear`` of the backbone keeps its weight W frozen and learns
W + (α/r)·B·A instead, with A (r × in) and B (out × r): r·(in + out) parameters where
full fine-tuning trains in·out. B starts at zero, so training starts from the source's
predictions exactly. The update is a :mod:`torch.nn.utils.parametrize` parametrization
of the weight; :func:`merge_adapters` folds it into the weight, which leaves a plain
model of the architecture (a checkpoint that ``predict`` reads as any other).

Layers that are not ``nn.Linear`` (e3nn's equivariant linears in SevenNet, embedding
tables) get no adapter; the head always trains in full.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils import parametrize


class LowRankUpdate(nn.Module):
    """The parametrization W ↦ W + (α/r)·B·A of one linear layer's weight."""

    def __init__(self, out_features: int, in_features: int, rank: int, alpha: float):
        super().__init__()
        self.A = nn.Parameter(torch.empty(rank, in_features))
        self.B = nn.Parameter(torch.zeros(out_features, rank))
        # A as nn.Linear initialises its weight; B = 0: no change until B learns
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))
        self.scale = alpha / rank

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight + self.scale * (self.B @ self.A)


def add_adapters(modules: list[nn.Module], rank: int, alpha: float) -> list[nn.Parameter]:
    """A rank-``rank`` adapter on every ``nn.Linear`` inside ``modules`` (the frozen
    groups); returns the adapters' parameters (A and B of each), which alone train
    there. A layer that already has one keeps it."""
    trained: list[nn.Parameter] = []
    for group in modules:
        for layer in group.modules():
            if not isinstance(layer, nn.Linear):
                continue
            if not parametrize.is_parametrized(layer, "weight"):
                out_features, in_features = layer.weight.shape
                update = LowRankUpdate(out_features, in_features, rank, alpha)
                parametrize.register_parametrization(layer, "weight", update.to(layer.weight))
            for update in layer.parametrizations.weight:
                trained += [update.A, update.B]
    return trained


def merge_adapters(model: nn.Module) -> int:
    """Fold every adapter into its layer's weight (W ← W + (α/r)·B·A), leaving plain
    ``nn.Linear`` layers; returns how many were merged."""
    merged = 0
    for layer in model.modules():
        if parametrize.is_parametrized(layer, "weight"):
            parametrize.remove_parametrizations(layer, "weight", leave_parametrized=True)
            merged += 1
    return merged
