"""The contract every architecture keeps, so every transfer strategy, command and benchmark
works on every model.

A :class:`CrystalModel` is a backbone and a head:

- the **backbone** lists its parameters in named groups in forward order. ``embedding``
  and ``interactions.0`` … ``interactions.k`` are required; an architecture may add its own
  (``readout``, ``composition`` …). The head is always the group ``head``; "the backbone"
  is every group but the head.
- the **readout** is declared by the backbone: ``atomwise = False`` means the backbone
  pools atoms into a crystal embedding and the head maps it to the targets (CGCNN,
  ALIGNN, CGAT); ``atomwise = True`` means the head maps every atom's features to an
  atom contribution, which the model then aggregates (SchNet, schnetpack-style).
- a head may instead read **pooled layer features** (``Head.pooled_layers``: names of
  :meth:`CrystalModel.layer_features`, concatenated): the frozen backbone + MLP of the
  ``features+mlp`` strategy as one model, which predicts, ensembles and screens as any
  other; such a head is crystal-level whatever the readout.
- the **pooling** follows the target (:attr:`TargetSpec.pooling`): atom contributions are
  averaged for intensive targets (eV/atom, eV, GPa) and summed for extensive ones
  (eV/cell); a crystal-level head's output is multiplied by the atom count for extensive
  targets, so it learns the per-atom value.

Model outputs are in the normalised target space; :class:`TrainedModel` holds the
:class:`TargetSpec` that maps them to physical units.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn
from torch_geometric.data import Batch
from torch_geometric.utils import scatter

from tlmat.graphs.settings import GraphSettings
from tlmat.models.layers import activation, reset_all
from tlmat.models.pooling import MEAN, statistics_of
from tlmat.models.targets import TargetSpec

REQUIRED_GROUPS = ("embedding", "interactions.0")


class ModelConfig(BaseModel):
    """Hyperparameters that rebuild an architecture (stored in every checkpoint), and the
    graph settings the architecture needs."""

    model_config = ConfigDict(extra="forbid")
    architecture: ClassVar[str] = ""

    def graph_settings(self) -> GraphSettings:
        """How structures must be turned into graphs for this model."""
        raise NotImplementedError


class Backbone(nn.Module):
    """Structure graph → crystal embedding (or per-atom features when ``atomwise``)."""

    #: width of what the head receives
    embedding_dim: int
    #: ``True``: ``forward`` returns per-atom features and the head runs per atom
    atomwise: bool = False
    #: cost of a bond pair relative to an edge in a forward pass, for sizing inference
    #: batches (:func:`~tlmat.data.loader.batch_size_for`)
    pair_cost: float = 1.0

    @property
    def elements(self) -> list[int] | None:
        """Atomic numbers the model has features for (``None``: any)."""
        return None

    def groups(self) -> OrderedDict[str, nn.Module]:
        """Named parameter groups in forward order (``embedding``, ``interactions.i``, …).

        The default serves a backbone built as ``self.embedding``, the blocks
        ``self.interactions`` and, when it has one, ``self.readout``; a backbone laid out
        otherwise names its own groups."""
        groups: OrderedDict[str, nn.Module] = OrderedDict(embedding=self.embedding)
        for k, block in enumerate(self.interactions):
            groups[f"interactions.{k}"] = block
        readout = getattr(self, "readout", None)
        if readout is not None:
            groups["readout"] = readout
        return groups

    def forward(self, batch: Batch) -> torch.Tensor:
        raise NotImplementedError

    def split_points(self) -> list[str]:
        """Groups after which the forward pass can be split in two: :meth:`state_after`
        gives what the layers after such a group need, :meth:`resume` finishes from it
        (a frozen prefix is then computed once per structure). Every backbone splits after
        its last group, where the state is its output; an architecture may add others."""
        return [next(reversed(self.groups()))]

    def state_after(self, batch: Batch, group: str) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """What the layers after ``group`` need of ``batch``: name → (values, the crystal
        of each row), each tensor's rows grouped by crystal in batch order."""
        out = self(batch)
        n_crystals = batch.ptr.numel() - 1
        owner = batch.batch if self.atomwise else torch.arange(n_crystals, device=out.device)
        return {"out": (out, owner)}

    def resume(self, batch: Batch, group: str, state: dict[str, torch.Tensor]) -> torch.Tensor:
        """:meth:`forward` of ``batch`` from its :meth:`state_after` ``group`` (values)."""
        return state["out"]

    def layer_features(
        self, batch: Batch, statistics: Sequence[str] = MEAN
    ) -> OrderedDict[str, torch.Tensor]:
        """Crystal-level features after each named layer, each (n_crystals, d), pooled by
        each of ``statistics`` (Gupta et al.'s layer-wise feature extraction; the mean
        alone by default): :func:`pooled_layers` of the layers' atom features."""
        raise NotImplementedError

    def reset_parameters(self) -> None:
        reset_all(self)


class Head(nn.Module):
    """MLP to the targets: hidden layers with an activation (``residual``: each hidden
    layer adds its input, projected when the width changes), then a linear output. With
    softplus and no residual this is CGCNN's ``fcs`` then ``fc_out``. ``pooled_layers``: the
    pooled layer features the head reads, concatenated in this order (``None``: what
    the backbone returns).

    ``fidelities``: the levels of theory the head predicts (e.g. ``["pbe", "hse"]``); a
    learned ``fidelity_dim``-wide embedding of each crystal's fidelity is joined to its
    representation, as in MEGNet's multi-fidelity models (Chen et al. 2021). A crystal
    without one is predicted at the last fidelity, the target."""

    def __init__(
        self,
        in_dim: int,
        hidden: list[int],
        out_dim: int,
        activation_name: str = "softplus",
        residual: bool = False,
        pooled_layers: list[str] | None = None,
        fidelities: list[str] | None = None,
        fidelity_dim: int = 8,
    ):
        super().__init__()
        layers: list[nn.Module] = []
        skips: list[nn.Module] = []
        self.fidelities = list(fidelities) if fidelities else None
        self.fidelity_dim = fidelity_dim
        self.fidelity = (
            nn.Embedding(len(self.fidelities), fidelity_dim) if self.fidelities else None
        )
        width = in_dim + (fidelity_dim if self.fidelities else 0)
        for size in hidden:
            layers += [nn.Linear(width, size), activation(activation_name)]
            skips.append(nn.Identity() if size == width else nn.Linear(width, size, bias=False))
            width = size
        self.hidden = nn.Sequential(*layers)
        self.skips = nn.ModuleList(skips) if residual else None
        self.out = nn.Linear(width, out_dim)
        self.in_dim, self.hidden_sizes, self.out_dim = in_dim, list(hidden), out_dim
        self.activation_name, self.residual = activation_name, residual
        self.pooled_layers = list(pooled_layers) if pooled_layers is not None else None

    def layout(self) -> dict[str, Any]:
        """What rebuilds this head (a checkpoint stores it beside the weights)."""
        return {
            "in_dim": self.in_dim,
            "hidden": self.hidden_sizes,
            "out_dim": self.out_dim,
            "activation_name": self.activation_name,
            "residual": self.residual,
            "pooled_layers": self.pooled_layers,
            "fidelities": self.fidelities,
            "fidelity_dim": self.fidelity_dim,
        }

    def forward(self, x: torch.Tensor, fidelity: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` (rows, in_dim); ``fidelity``: each row's index into :attr:`fidelities`."""
        if self.fidelity is not None:
            if fidelity is None:
                fidelity = torch.full((x.shape[0],), len(self.fidelities) - 1, device=x.device)
            x = torch.cat([x, self.fidelity(fidelity.long())], dim=-1)
        if self.skips is None:
            return self.out(self.hidden(x))
        for k, skip in enumerate(self.skips):
            x = self.hidden[2 * k + 1](self.hidden[2 * k](x)) + skip(x)
        return self.out(x)

    def rebuilt(self, out_dim: int) -> Head:
        """A freshly initialised head of the same layout with ``out_dim`` outputs."""
        return Head(**{**self.layout(), "out_dim": out_dim})

    def reset_parameters(self) -> None:
        reset_all(self)


class CrystalModel(nn.Module):
    """Backbone + head; predictions are in the normalised target space."""

    def __init__(self, backbone: Backbone, head: Head, config: ModelConfig):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.config = config
        #: set from the target (:attr:`TargetSpec.pooling`): mean or sum over atoms
        self.pooling: Literal["mean", "sum"] = "mean"

    @property
    def architecture(self) -> str:
        return self.config.architecture

    @property
    def graph_settings(self) -> GraphSettings:
        return self.config.graph_settings()

    @property
    def elements(self) -> list[int] | None:
        """Atomic numbers the model has features for (``None``: any)."""
        return self.backbone.elements

    @property
    def pair_cost(self) -> float:
        """A bond pair's cost relative to an edge (:attr:`Backbone.pair_cost`)."""
        return self.backbone.pair_cost

    def forward(
        self, batch: Batch, resume: tuple[str, dict[str, torch.Tensor]] | None = None
    ) -> torch.Tensor:
        """The normalised prediction of each crystal of ``batch``; ``resume``: a group and
        the backbone's :meth:`~Backbone.state_after` it, which stand in for the layers up
        to that group (their outputs computed once, for a frozen prefix)."""
        reads = self.head.pooled_layers
        fidelity = getattr(batch, "fidelity", None)
        if reads is not None:
            pooled = self.layer_features(batch, statistics_of(reads))
            out = self.head(torch.cat([pooled[name] for name in reads], dim=-1), fidelity)
        else:
            x = self.backbone(batch) if resume is None else self.backbone.resume(batch, *resume)
            if fidelity is not None and self.backbone.atomwise:
                fidelity = fidelity[batch.batch]  # the head runs on each atom
            out = self.head(x, fidelity)
        n_crystals = batch.ptr.numel() - 1
        if self.backbone.atomwise and reads is None:
            return scatter(out, batch.batch, dim=0, dim_size=n_crystals, reduce=self.pooling)
        if self.pooling == "sum":
            counts = batch.ptr.diff().to(out.dtype)
            out = out * counts.unsqueeze(-1)
        return out

    def embed(self, batch: Batch) -> torch.Tensor:
        """The crystal embedding (n_crystals, embedding_dim): what the head sees, averaged
        over atoms for an atom-wise readout."""
        features = self.backbone(batch)
        if self.backbone.atomwise:
            n_crystals = batch.ptr.numel() - 1
            return scatter(features, batch.batch, dim=0, dim_size=n_crystals, reduce="mean")
        return features

    def layer_features(
        self, batch: Batch, statistics: Sequence[str] = MEAN
    ) -> OrderedDict[str, torch.Tensor]:
        """Features after every named layer pooled by each of ``statistics``, then the
        crystal embedding (already one vector per crystal: not pooled again)."""
        layers = self.backbone.layer_features(batch, statistics)
        layers["embedding_out"] = self.embed(batch)
        return layers

    def groups(self) -> OrderedDict[str, nn.Module]:
        """All parameter groups in forward order, the head last."""
        groups = self.backbone.groups()
        groups["head"] = self.head
        return groups

    def replace_head(self, out_dim: int) -> None:
        """A new, freshly initialised head with ``out_dim`` outputs (a new target)."""
        self.head = self.head.rebuilt(out_dim)

    def add_fidelities(self, fidelities: list[str], dim: int = 8) -> None:
        """Make the head predict at each of ``fidelities`` (levels of theory, cheapest
        first, the target last) from a learned embedding joined to the crystal's
        representation. The head's weights are kept and the embedding's columns of its
        first layer start at zero, so a pretrained head predicts as before until
        training tells the fidelities apart."""
        old = self.head
        if old.fidelities:
            raise ValueError(f"the head already predicts fidelities {old.fidelities}")
        new = Head(**{**old.layout(), "fidelities": list(fidelities), "fidelity_dim": dim})
        state, before = new.state_dict(), old.state_dict()
        for name, value in state.items():
            if name.startswith("fidelity."):
                continue
            # the first layer: the old columns, then zeros for the embedding (a residual
            # head's identity skip becomes a projection that is the identity on them)
            if name in before:
                kept = before[name]
            else:
                kept = torch.eye(value.shape[0], value.shape[1] - dim)
            if kept.shape != value.shape:
                kept = torch.cat([kept, torch.zeros_like(value[:, -dim:])], 1)
            state[name] = kept
        new.load_state_dict(state)
        self.head = new.to(next(old.parameters()).device)

    def reset_parameters(self) -> None:
        """Fresh random weights everywhere (buffers such as element tables are kept)."""
        self.backbone.reset_parameters()
        self.head.reset_parameters()

    def describe(self) -> dict[str, Any]:
        return {
            "architecture": self.architecture,
            "config": self.config.model_dump(),
            "readout": "atom-wise" if self.backbone.atomwise else "crystal",
            "pooling": self.pooling,
            "groups": {
                name: sum(p.numel() for p in m.parameters()) for name, m in self.groups().items()
            },
        }


def check_groups(model: CrystalModel) -> list[str]:
    """The model's group names, after checking the contract: the required groups, the
    head last, and every parameter in exactly one group."""
    groups = model.groups()
    names = list(groups)
    for required in REQUIRED_GROUPS:
        if required not in names:
            raise TypeError(f"{model.architecture}: no parameter group {required!r} ({names})")
    if names[-1] != "head":
        raise TypeError(f"{model.architecture}: the head must be the last group ({names})")
    seen: dict[int, str] = {}
    for name, module in groups.items():
        for parameter in module.parameters():
            if id(parameter) in seen:
                raise TypeError(f"a parameter is in both {seen[id(parameter)]!r} and {name!r}")
            seen[id(parameter)] = name
    orphans = [n for n, p in model.named_parameters() if id(p) not in seen]
    if orphans:
        raise TypeError(f"{model.architecture}: parameters in no group: {orphans[:3]}")
    return names


@dataclass
class TrainedModel:
    """A model with its target spec and provenance: what a checkpoint holds."""

    model: CrystalModel
    target: TargetSpec
    provenance: dict[str, Any] = field(default_factory=dict)
    #: the source this copy was transferred from, for strategies that still read it
    #: while training (source replay); in memory only, never saved
    origin: TrainedModel | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.model.pooling = self.target.pooling

    @torch.no_grad()
    def predict_batch(self, batch: Batch) -> torch.Tensor:
        """Predictions in physical units for a PyG batch (model in eval mode)."""
        self.model.eval()
        self.model.pooling = self.target.pooling
        return self.target.decode(self.model(batch), batch)
