"""Distance and angle expansions, applied by models to the raw distances a graph stores
(so one cached graph serves every model's choice of basis)."""

from __future__ import annotations

import torch
from torch import nn


class GaussianExpansion(nn.Module):
    """exp(−(d − μ_k)² / σ²) on centres μ_k = start, start + step, …, stop (Å).

    CGCNN: ``GaussianExpansion(0.0, 8.0, 0.2)`` → 41 features, σ = step = 0.2 Å.
    """

    def __init__(
        self, start: float = 0.0, stop: float = 8.0, step: float = 0.2, width: float | None = None
    ):
        super().__init__()
        n = round((stop - start) / step) + 1
        self.register_buffer("centers", torch.linspace(start, start + step * (n - 1), n))
        self.width = float(width if width is not None else step)

    @property
    def num_features(self) -> int:
        return self.centers.numel()

    def forward(self, distances: torch.Tensor) -> torch.Tensor:
        return torch.exp(-((distances.unsqueeze(-1) - self.centers) ** 2) / self.width**2)


class RadialBasis(nn.Module):
    """SchNet's radial basis exp(−γ (d − μ_k)²), μ_k evenly from ``start`` to ``stop`` Å.

    Krawczuk & Venturi: μ_k from 0 to 30 Å, γ = 10 Å⁻².
    """

    def __init__(self, start: float = 0.0, stop: float = 30.0, num: int = 300, gamma: float = 10.0):
        super().__init__()
        self.register_buffer("centers", torch.linspace(start, stop, num))
        self.gamma = float(gamma)

    @property
    def num_features(self) -> int:
        return self.centers.numel()

    def forward(self, distances: torch.Tensor) -> torch.Tensor:
        return torch.exp(-self.gamma * (distances.unsqueeze(-1) - self.centers) ** 2)
