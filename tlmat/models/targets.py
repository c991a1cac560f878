"""What a model predicts and how targets are normalised for training.

``TargetSpec`` maps physical values (e.g. eV/atom, GPa) to the network's space and back:
optional log10, then standardisation, Lee & Asahi's tanh normalisation
y' = ½{tanh(0.01 (y − μ)/s) + 1}, or nothing. It is fitted on a training split only and
travels in the checkpoint.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict

Normalization = Literal["standard", "tanh", "none"]


class TargetSpec(BaseModel):
    """Name, unit and normalisation of one predicted property."""

    model_config = ConfigDict(extra="forbid")

    name: str = "target"
    unit: str = ""
    log10: bool = False
    normalization: Normalization = "standard"
    mean: float = 0.0
    std: float = 1.0
    task: Literal["regression", "classification"] = "regression"

    def fit(self, values: np.ndarray | torch.Tensor) -> TargetSpec:
        """A copy with mean/std fitted to (training) ``values`` in physical units."""
        y = np.asarray(values, dtype=np.float64)
        if self.log10:
            if np.any(y <= 0):
                raise ValueError(f"log10 of {self.name!r} needs positive values")
            y = np.log10(y)
        std = float(y.std()) if y.size > 1 else 1.0
        return self.model_copy(update={"mean": float(y.mean()), "std": std if std > 0 else 1.0})

    def encode(self, y: torch.Tensor) -> torch.Tensor:
        """Physical units → network space."""
        if self.task == "classification":
            return y
        if self.log10:
            y = torch.log10(y)
        if self.normalization == "standard":
            return (y - self.mean) / self.std
        if self.normalization == "tanh":
            return 0.5 * (torch.tanh(0.01 * (y - self.mean) / self.std) + 1.0)
        return y

    def decode(self, out: torch.Tensor) -> torch.Tensor:
        """Network space → physical units (class probabilities for classification)."""
        if self.task == "classification":
            return torch.softmax(out, dim=-1)
        if self.normalization == "standard":
            y = out * self.std + self.mean
        elif self.normalization == "tanh":
            inner = (2.0 * out - 1.0).clamp(-1 + 1e-7, 1 - 1e-7)
            y = self.mean + self.std * torch.atanh(inner) / 0.01
        else:
            y = out
        return torch.pow(10.0, y) if self.log10 else y
