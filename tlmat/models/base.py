"""The contract every architecture keeps, so every transfer strategy works on every model.

A :class:`CrystalModel` is a backbone (structure → pooled crystal embedding) and a head
(embedding → targets). The backbone lists its parameters in named groups in forward
order — ``embedding``, ``interactions.0`` … ``interactions.k``, ``readout`` — and the head
is the group ``head``. Strategies freeze or rescale groups by name, never by reaching
into a particular architecture.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn
from torch_geometric.data import Batch

from tlmat.graphs.settings import GraphSettings


class ModelConfig(BaseModel):
    """Hyperparameters that rebuild an architecture (stored in every checkpoint)."""

    model_config = ConfigDict(extra="forbid")
    architecture: ClassVar[str] = ""


class Backbone(nn.Module):
    """Structure graph → pooled crystal embedding."""

    #: width of the pooled embedding
    embedding_dim: int

    def groups(self) -> OrderedDict[str, nn.Module]:
        """Named parameter groups in forward order (embedding, interactions.i, readout)."""
        raise NotImplementedError

    def forward(self, batch: Batch) -> torch.Tensor:
        raise NotImplementedError

    def layer_features(self, batch: Batch) -> OrderedDict[str, torch.Tensor]:
        """Pooled atom features after each group (Gupta et al.'s feature extraction)."""
        raise NotImplementedError


class Head(nn.Module):
    """MLP from the crystal embedding to the targets: hidden layers with softplus, then a
    linear output (the CGCNN layout: ``fcs`` then ``fc_out``)."""

    def __init__(self, in_dim: int, hidden: list[int], out_dim: int):
        super().__init__()
        layers: list[nn.Module] = []
        width = in_dim
        for size in hidden:
            layers += [nn.Linear(width, size), nn.Softplus()]
            width = size
        self.hidden = nn.Sequential(*layers)
        self.out = nn.Linear(width, out_dim)
        self.in_dim, self.hidden_sizes, self.out_dim = in_dim, list(hidden), out_dim

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.out(self.hidden(embedding))

    def reset_parameters(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear):
                module.reset_parameters()


class CrystalModel(nn.Module):
    """Backbone + head; predictions are in the normalised target space (the training
    module's normaliser maps them to physical units)."""

    def __init__(
        self, backbone: Backbone, head: Head, config: ModelConfig, graph_settings: GraphSettings
    ):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.config = config
        self.graph_settings = graph_settings

    def forward(self, batch: Batch) -> torch.Tensor:
        return self.head(self.backbone(batch))

    def embed(self, batch: Batch) -> torch.Tensor:
        """The pooled crystal embedding (batch, embedding_dim)."""
        return self.backbone(batch)

    def groups(self) -> OrderedDict[str, nn.Module]:
        """All parameter groups in forward order, the head last."""
        groups = self.backbone.groups()
        groups["head"] = self.head
        return groups

    @property
    def elements(self) -> list[int] | None:
        """Atomic numbers the model has features for (``None``: any)."""
        return getattr(self.backbone, "elements", None)

    def describe(self) -> dict[str, Any]:
        return {
            "architecture": self.config.architecture,
            "config": self.config.model_dump(),
            "groups": {
                name: sum(p.numel() for p in m.parameters()) for name, m in self.groups().items()
            },
        }
