"""CGCNN (Xie & Grossman, PRL 120, 145301, 2018) exactly as published, on edge lists.

Atoms start from the 92-d ``atom_init.json`` features → linear embedding; each
convolution gates messages z_ij = [v_i, v_j, g(d_ij)] with
σ(z W_f + b_f) ⊙ softplus(z W_s + b_s), batch-normalised, summed over the (up to 12)
neighbours, batch-normalised and added to v_i through a softplus; crystals are mean-pooled,
passed through softplus → linear → softplus (the ``readout``), then the head.
Parameter names follow the original code so its checkpoints map one to one, and the
original checkpoints import through this module's :data:`ARCHITECTURE` importer.
"""

from __future__ import annotations

import argparse
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch_geometric.data import Batch
from torch_geometric.nn import global_mean_pool
from torch_geometric.utils import scatter

from tlmat.graphs.expansions import GaussianExpansion
from tlmat.graphs.settings import GraphSettings
from tlmat.models.atom_features import load_atom_init
from tlmat.models.base import Backbone, CrystalModel, Head, ModelConfig, TrainedModel
from tlmat.models.pooling import MEAN, pooled_layers
from tlmat.models.registry import Architecture, Importer
from tlmat.models.targets import TargetSpec


class CGCNNConfig(ModelConfig):
    """CGCNN hyperparameters. Defaults are the original code's; the published Materials
    Project checkpoints use ``atom_fea_len=64, n_conv=4, h_fea_len=32, n_h=1``."""

    architecture = "cgcnn"

    atom_fea_len: int = 64
    n_conv: int = 3
    h_fea_len: int = 128
    n_h: int = 1
    n_out: int = 1
    task: Literal["regression", "classification"] = "regression"
    gaussian_start: float = 0.0  # Å
    gaussian_stop: float = 8.0  # Å
    gaussian_step: float = 0.2  # Å, also the width
    cutoff: float = 8.0  # Å, neighbour search radius
    max_neighbors: int = 12  # the nearest this many within the cutoff

    def graph_settings(self) -> GraphSettings:
        return GraphSettings(cutoff=self.cutoff, max_neighbors=self.max_neighbors)


class CGCNNConv(nn.Module):
    """One edge-gated graph convolution (``ConvLayer`` of the original code)."""

    def __init__(self, atom_fea_len: int, nbr_fea_len: int):
        super().__init__()
        self.atom_fea_len = atom_fea_len
        self.fc_full = nn.Linear(2 * atom_fea_len + nbr_fea_len, 2 * atom_fea_len)
        self.bn1 = nn.BatchNorm1d(2 * atom_fea_len)
        self.bn2 = nn.BatchNorm1d(atom_fea_len)

    def forward(
        self, atom_fea: torch.Tensor, edge_index: torch.Tensor, edge_fea: torch.Tensor
    ) -> torch.Tensor:
        neighbor, center = edge_index
        # fc_full acts on [x_center, x_neighbor, e_edge]; its atom columns are applied once
        # per atom and gathered, rather than once per edge (12× fewer products, same map)
        n = self.atom_fea_len
        weight = self.fc_full.weight
        own = atom_fea @ weight[:, :n].T
        other = atom_fea @ weight[:, n : 2 * n].T
        edge = F.linear(edge_fea, weight[:, 2 * n :], self.fc_full.bias)
        gated = self.bn1(own[center] + other[neighbor] + edge)
        nbr_filter, nbr_core = gated.chunk(2, dim=1)
        messages = torch.sigmoid(nbr_filter) * F.softplus(nbr_core)
        summed = scatter(messages, center, dim=0, dim_size=atom_fea.size(0), reduce="sum")
        return F.softplus(atom_fea + self.bn2(summed))


class CGCNNBackbone(Backbone):
    def __init__(self, config: CGCNNConfig, atom_features: torch.Tensor):
        super().__init__()
        self.register_buffer("atom_features", atom_features.clone().float())
        self.expansion = GaussianExpansion(
            config.gaussian_start, config.gaussian_stop, config.gaussian_step
        )
        self.embedding = nn.Linear(atom_features.shape[1], config.atom_fea_len)
        self.convs = nn.ModuleList(
            CGCNNConv(config.atom_fea_len, self.expansion.num_features)
            for _ in range(config.n_conv)
        )
        self.conv_to_fc = nn.Linear(config.atom_fea_len, config.h_fea_len)
        self.embedding_dim = config.h_fea_len

    @property
    def elements(self) -> list[int]:
        return torch.nonzero(self.atom_features.abs().sum(dim=1)).flatten().tolist()

    def groups(self) -> OrderedDict[str, nn.Module]:
        groups: OrderedDict[str, nn.Module] = OrderedDict(embedding=self.embedding)
        for k, conv in enumerate(self.convs):
            groups[f"interactions.{k}"] = conv
        groups["readout"] = self.conv_to_fc
        return groups

    def _atoms(self, batch: Batch):
        edge_fea = self.expansion(batch.edge_dist)
        atom_fea = self.embedding(self.atom_features[batch.z])
        yield "embedding", atom_fea
        for k, conv in enumerate(self.convs):
            atom_fea = conv(atom_fea, batch.edge_index, edge_fea)
            yield f"interactions.{k}", atom_fea

    def forward(self, batch: Batch) -> torch.Tensor:
        *_, (_, atom_fea) = self._atoms(batch)
        pooled = global_mean_pool(atom_fea, batch.batch)
        return F.softplus(self.conv_to_fc(F.softplus(pooled)))

    def layer_features(
        self, batch: Batch, statistics: Sequence[str] = MEAN
    ) -> OrderedDict[str, torch.Tensor]:
        return pooled_layers(self._atoms(batch), batch, statistics)


def build_cgcnn(config: CGCNNConfig, atom_features: torch.Tensor | None = None) -> CrystalModel:
    """A CGCNN with the given element feature table (default: ``atom_init.json``)."""
    features = atom_features if atom_features is not None else load_atom_init()
    backbone = CGCNNBackbone(config, features)
    n_out = 2 if config.task == "classification" else config.n_out
    head = Head(config.h_fea_len, [config.h_fea_len] * (config.n_h - 1), n_out)
    return CrystalModel(backbone, head, config)


def _build(config: CGCNNConfig, state: Mapping[str, torch.Tensor] | None) -> CrystalModel:
    # a checkpoint carries its element table: no need to read atom_init.json
    table = state.get("backbone.atom_features") if state is not None else None
    return build_cgcnn(config, table)


# -- the original checkpoints (Xie & Grossman 2018) -------------------------------------

#: Classes the original CGCNN checkpoints pickle besides tensors and builtins.
CGCNN_ALLOWLIST: tuple[Any, ...] = (
    argparse.Namespace,
    (np._core.multiarray.scalar, "numpy.core.multiarray.scalar"),
    np.dtype,
    type(np.dtype(np.float64)),
)


def _is_original(data: dict[str, Any]) -> bool:
    return "state_dict" in data and "args" in data and "format" not in data


def _original_key(key: str) -> str:
    """Original CGCNN parameter name → tlmat's."""
    if key.startswith(("embedding.", "convs.", "conv_to_fc.")):
        return f"backbone.{key}"
    if key.startswith("fc_out."):
        return key.replace("fc_out.", "head.out.", 1)
    if key.startswith("fcs."):
        _, index, rest = key.split(".", 2)
        return f"head.hidden.{2 * int(index)}.{rest}"
    return key


def import_original(data: dict[str, Any], source: str | Path = "") -> TrainedModel:
    """Map an original CGCNN checkpoint onto tlmat's CGCNN (weights, normaliser, args)."""
    from tlmat.models.checkpoint import load_state

    args = data["args"] if isinstance(data["args"], dict) else vars(data["args"])
    config = CGCNNConfig(
        atom_fea_len=int(args.get("atom_fea_len", 64)),
        n_conv=int(args.get("n_conv", 3)),
        h_fea_len=int(args.get("h_fea_len", 128)),
        n_h=int(args.get("n_h", 1)),
        task=args.get("task", "regression"),
    )
    model = build_cgcnn(config)
    state = {_original_key(k): v for k, v in data["state_dict"].items()}
    state["backbone.atom_features"] = model.backbone.atom_features
    state["backbone.expansion.centers"] = model.backbone.expansion.centers
    names = {_original_key(k): k for k in data["state_dict"]}
    load_state(model, state, source, original_names=names)
    normalizer = data.get("normalizer") or {"mean": 0.0, "std": 1.0}
    property_name = "target"
    options = args.get("data_options")
    if isinstance(options, list | tuple) and options:
        property_name = str(options[-1])
    target = TargetSpec(
        name=property_name,
        normalization="standard",
        mean=float(normalizer["mean"]),
        std=float(normalizer["std"]),
        task=config.task,
    )
    provenance = {
        "source": str(source),
        "imported_from": "original CGCNN checkpoint (Xie & Grossman 2018)",
        "source_epoch": int(data.get("epoch", -1)),
        "source_best_mae": float(data.get("best_mae_error", float("nan"))),
        "imported_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    return TrainedModel(model, target, provenance)


ARCHITECTURE = Architecture(
    name="cgcnn",
    config=CGCNNConfig,
    build=_build,
    summary="crystal graph convolutions, 12 nearest neighbours within 8 Å, mean pooling",
    reference="Xie & Grossman, PRL 120, 145301 (2018)",
    presets={
        # the size of the published Materials Project checkpoints
        "cgcnn-mp": {"atom_fea_len": 64, "n_conv": 4, "h_fea_len": 32, "n_h": 1},
        # for tests and quick looks
        "cgcnn-small": {"atom_fea_len": 32, "n_conv": 2, "h_fea_len": 32, "n_h": 1},
    },
    importer=Importer(
        description="original CGCNN checkpoint (.pth.tar, Xie & Grossman 2018)",
        allowlist=CGCNN_ALLOWLIST,
        recognise=_is_original,
        load=import_original,
    ),
)
