"""ALIGNN (Choudhary & DeCost, npj Comput Mater 7, 185, 2021): graph convolutions on the
atom graph and on its line graph, so that bond angles shape the bond features.

Three embeddings start the network: the atoms' 92-d CGCNN features (or a learned element
embedding) through Linear → norm → SiLU; bond lengths expanded in 80 radial basis
functions on 0–8 Å, and bond-angle cosines in 40 on −1…1, each through two such blocks
(to 64, then to the hidden width). Every ALIGNN layer runs an edge-gated graph convolution
on the atom graph (updating atom and bond features), then one on the line graph, whose
nodes are the bonds and edges the bond pairs (updating those bond features and the angle
features). This is the order of alignn's code, which its published models were trained
with; the paper's prose describes the line-graph update first. The GCN layers that follow
run on the atom graph only. Atoms are mean-pooled into the crystal embedding (optionally
through a linear ``readout`` with SiLU), which the head maps to the targets.

The edge-gated convolution (Bresson & Laurent 2017; Dwivedi et al. 2020), for an edge
from node j to node i with features e_ij::

    m_ij  = A h_j + B h_i + C e_ij
    η_ij  = σ(m_ij) / (Σ_k σ(m_ik) + 1e-6)
    h_i  ← h_i + SiLU(N(U h_i + Σ_j η_ij ⊙ V h_j))
    e_ij ← e_ij + SiLU(N(m_ij))

with N batch normalisation as in the paper (``norm="layer"`` gives the layer
normalisation of alignn's later pure-PyTorch models). The radial basis is alignn's:
exp(−(x − μ_k)²/Δ), Δ the spacing of the centres μ_k.

On tlmat's graphs (:class:`~tlmat.graphs.GraphSettings` with ``line_graph=True``) messages
flow from ``edge_index[0]`` (neighbour) to ``edge_index[1]`` (centre), and on the line
graph from bond ``line_index[0]`` to bond ``line_index[1]`` (two bonds of one centre atom;
``line_cos`` the cosine of the angle between them at that atom). The model reads only
these indices, so it runs unchanged on graphs of any other orientation.

Layer-wise features (Gupta et al.) are the mean-pooled atom, bond and angle features
after the embedding and after every layer (``embedding.atom``, ``embedding.bond``,
``embedding.angle``, ``interactions.0.atom`` …; GCN layers have no angle features);
:func:`concatenate_features` joins those of the last layer (3 × 256 = 768 at the default
width); :func:`gupta_feature_sets` names the sets Gupta et al. compare.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn
from torch_geometric.data import Batch
from torch_geometric.utils import scatter

from tlmat.graphs.expansions import RadialBasis
from tlmat.graphs.settings import GraphSettings
from tlmat.models.atom_features import load_atom_init
from tlmat.models.base import Backbone, CrystalModel, Head, ModelConfig
from tlmat.models.pooling import MEAN, pool, pooled_name
from tlmat.models.registry import Architecture

#: what each layer's pooled features describe, in the order layer_features gives them
KINDS = ("atom", "bond", "angle")
#: atomic numbers a learned element embedding covers (1 … 118)
LEARNED_ELEMENTS = 118


class ALIGNNConfig(ModelConfig):
    """ALIGNN hyperparameters; field names follow alignn's config. Defaults are the
    paper's (and alignn's ``alignn`` model's): 4 ALIGNN + 4 GCN layers, 256 hidden
    features, embeddings through 64, batch normalisation, CGCNN atom features."""

    architecture = "alignn"

    alignn_layers: int = Field(4, ge=0)
    gcn_layers: int = Field(4, ge=0)
    hidden_features: int = Field(256, ge=1)
    embedding_features: int = Field(64, ge=1)
    #: "cgcnn": the 92-d atom_init.json table; "learned": a trained element embedding
    atom_features: Literal["cgcnn", "learned"] = "cgcnn"
    atom_input_features: int = Field(92, ge=1)
    edge_input_features: int = Field(80, ge=2)  # radial basis functions of the bond length
    triplet_input_features: int = Field(40, ge=2)  # … of the bond-angle cosine
    bond_basis_max: float = Field(8.0, gt=0)  # Å, the last bond-length centre
    norm: Literal["batch", "layer"] = "batch"
    #: width of a linear + SiLU layer between pooling and head (0: none, as published)
    readout_features: int = Field(0, ge=0)
    n_out: int = Field(1, ge=1)
    task: Literal["regression", "classification"] = "regression"
    cutoff: float = Field(8.0, gt=0)  # Å, neighbour search radius
    max_neighbors: int = Field(12, ge=1)  # the nearest this many within the cutoff
    line_graph_cutoff: float | None = Field(None, gt=0)  # Å, bonds in the line graph

    @model_validator(mode="after")
    def _consistent(self) -> ALIGNNConfig:
        if self.alignn_layers + self.gcn_layers == 0:
            raise ValueError("ALIGNN needs at least one ALIGNN or GCN layer")
        if self.atom_features == "cgcnn" and self.atom_input_features != 92:
            raise ValueError("the CGCNN atom features are 92-d: atom_input_features=92")
        return self

    def graph_settings(self) -> GraphSettings:
        return GraphSettings(
            cutoff=self.cutoff,
            max_neighbors=self.max_neighbors,
            line_graph=self.alignn_layers > 0,
            line_graph_cutoff=self.line_graph_cutoff if self.alignn_layers > 0 else None,
        )


def _norm(kind: str, width: int) -> nn.Module:
    return nn.BatchNorm1d(width) if kind == "batch" else nn.LayerNorm(width)


def dense(in_features: int, out_features: int, norm: str) -> nn.Sequential:
    """Linear → normalisation → SiLU (alignn's ``MLPLayer``)."""
    return nn.Sequential(nn.Linear(in_features, out_features), _norm(norm, out_features), nn.SiLU())


def alignn_basis(start: float, stop: float, bins: int) -> RadialBasis:
    """alignn's radial basis: ``bins`` centres from ``start`` to ``stop``, γ = 1/Δ."""
    return RadialBasis(start, stop, bins, gamma=(bins - 1) / (stop - start))


class EdgeGatedConv(nn.Module):
    """One edge-gated graph convolution, updating node and edge features (module doc)."""

    def __init__(self, width: int, norm: str = "batch"):
        super().__init__()
        self.gate_source = nn.Linear(width, width)  # A: the sending node
        self.gate_target = nn.Linear(width, width)  # B: the receiving node
        self.gate_edge = nn.Linear(width, width)  # C
        self.update_self = nn.Linear(width, width)  # U
        self.update_neighbor = nn.Linear(width, width)  # V
        self.norm_nodes = _norm(norm, width)
        self.norm_edges = _norm(norm, width)

    def forward(
        self, nodes: torch.Tensor, edges: torch.Tensor, index: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``index`` (2, E): messages flow from ``index[0]`` to ``index[1]``."""
        source, target = index
        n, width = nodes.shape
        # A, V and B act on nodes: one product over the nodes, split there and gathered
        # per edge with index_select, so that no edge-sized tensor is concatenated or
        # sliced (a slice's backward fills an edge-sized zero tensor) and the sums are
        # index_add, whose backward is a plain index_select (scatter's is a gather)
        on_nodes = F.linear(
            nodes,
            torch.cat(
                [self.gate_source.weight, self.update_neighbor.weight, self.gate_target.weight]
            ),
            torch.cat([self.gate_source.bias, self.update_neighbor.bias, self.gate_target.bias]),
        )
        sending, neighbor, receiving = on_nodes.split(width, dim=1)
        logits = torch.addmm(
            sending.index_select(0, source) + receiving.index_select(0, target),
            edges,
            self.gate_edge.weight.t(),
        ).add_(self.gate_edge.bias)
        gate = torch.sigmoid(logits)
        zeros = nodes.new_zeros(n, width)
        numerator = zeros.index_add(0, target, gate * neighbor.index_select(0, source))
        denominator = zeros.index_add(0, target, gate)
        update = self.update_self(nodes) + numerator / (denominator + 1e-6)
        nodes = nodes + F.silu(self.norm_nodes(update))
        edges = edges + F.silu(self.norm_edges(logits))
        return nodes, edges


class ALIGNNLayer(nn.Module):
    """The atom-graph convolution (atoms, bonds), then the line-graph convolution (bonds,
    angles) on the bonds it produced."""

    def __init__(self, width: int, norm: str = "batch"):
        super().__init__()
        self.atom_update = EdgeGatedConv(width, norm)
        self.bond_update = EdgeGatedConv(width, norm)

    def forward(
        self,
        atoms: torch.Tensor,
        bonds: torch.Tensor,
        angles: torch.Tensor,
        edge_index: torch.Tensor,
        line_index: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        atoms, bonds = self.atom_update(atoms, bonds, edge_index)
        bonds, angles = self.bond_update(bonds, angles, line_index)
        return atoms, bonds, angles


class ALIGNNEmbedding(nn.Module):
    """Atom, bond and angle embeddings (the ``embedding`` group)."""

    def __init__(self, config: ALIGNNConfig):
        super().__init__()
        width, middle, norm = config.hidden_features, config.embedding_features, config.norm
        self.elements = (
            nn.Embedding(LEARNED_ELEMENTS + 1, config.atom_input_features)
            if config.atom_features == "learned"
            else None
        )
        self.atom = dense(config.atom_input_features, width, norm)
        self.bond_basis = alignn_basis(0.0, config.bond_basis_max, config.edge_input_features)
        self.bond = nn.Sequential(
            dense(config.edge_input_features, middle, norm), dense(middle, width, norm)
        )
        self.angle_basis = alignn_basis(-1.0, 1.0, config.triplet_input_features)
        self.angle = (
            nn.Sequential(
                dense(config.triplet_input_features, middle, norm), dense(middle, width, norm)
            )
            if config.alignn_layers > 0
            else None
        )


class ALIGNNBackbone(Backbone):
    def __init__(self, config: ALIGNNConfig, atom_features: torch.Tensor | None = None):
        super().__init__()
        if config.atom_features == "cgcnn":
            if atom_features is None:
                raise ValueError("CGCNN atom features: pass the atom_init table")
            self.register_buffer("atom_features", atom_features.clone().float())
        else:
            self.register_buffer("atom_features", None)
        width = config.hidden_features
        self.embedding = ALIGNNEmbedding(config)
        self.alignn_layers = nn.ModuleList(
            ALIGNNLayer(width, config.norm) for _ in range(config.alignn_layers)
        )
        self.gcn_layers = nn.ModuleList(
            EdgeGatedConv(width, config.norm) for _ in range(config.gcn_layers)
        )
        self.readout = (
            nn.Linear(width, config.readout_features) if config.readout_features else None
        )
        self.embedding_dim = config.readout_features or width

    @property
    def elements(self) -> list[int]:
        if self.atom_features is None:
            return list(range(1, LEARNED_ELEMENTS + 1))
        return torch.nonzero(self.atom_features.abs().sum(dim=1)).flatten().tolist()

    def groups(self) -> OrderedDict[str, nn.Module]:
        groups: OrderedDict[str, nn.Module] = OrderedDict(embedding=self.embedding)
        for k, layer in enumerate([*self.alignn_layers, *self.gcn_layers]):
            groups[f"interactions.{k}"] = layer
        if self.readout is not None:
            groups["readout"] = self.readout
        return groups

    def _states(
        self, batch: Batch
    ) -> Iterator[tuple[str, torch.Tensor, torch.Tensor, torch.Tensor | None]]:
        """(group name, atom, bond, angle features) after the embedding and each layer;
        angles are ``None`` after a GCN layer (it does not update them)."""
        embedding = self.embedding
        if embedding.elements is not None:
            atoms = embedding.atom(embedding.elements(batch.z))
        else:
            atoms = embedding.atom(self.atom_features[batch.z])
        bonds = embedding.bond(embedding.bond_basis(batch.edge_dist))
        angles = None
        if embedding.angle is not None:
            angles = embedding.angle(embedding.angle_basis(batch.line_cos))
        yield "embedding", atoms, bonds, angles
        for k, layer in enumerate(self.alignn_layers):
            atoms, bonds, angles = layer(atoms, bonds, angles, batch.edge_index, batch.line_index)
            yield f"interactions.{k}", atoms, bonds, angles
        for k, conv in enumerate(self.gcn_layers, start=len(self.alignn_layers)):
            atoms, bonds = conv(atoms, bonds, batch.edge_index)
            yield f"interactions.{k}", atoms, bonds, None

    def forward(self, batch: Batch) -> torch.Tensor:
        *_, (_, atoms, _, _) = self._states(batch)
        n_crystals = batch.ptr.numel() - 1
        pooled = scatter(atoms, batch.batch, 0, dim_size=n_crystals, reduce="mean")
        return pooled if self.readout is None else F.silu(self.readout(pooled))

    def layer_features(
        self, batch: Batch, statistics: Sequence[str] = MEAN
    ) -> OrderedDict[str, torch.Tensor]:
        n_crystals = batch.ptr.numel() - 1
        atom_crystal = batch.batch
        bond_crystal = atom_crystal[batch.edge_index[1]]
        angle_crystal = bond_crystal[batch.line_index[1]] if self.alignn_layers else None
        out: OrderedDict[str, torch.Tensor] = OrderedDict()
        for name, *features in self._states(batch):
            for kind, values, crystal in zip(
                KINDS, features, (atom_crystal, bond_crystal, angle_crystal), strict=True
            ):
                if values is None:
                    continue
                for statistic, pooled in pool(values, crystal, n_crystals, statistics):
                    out[pooled_name(f"{name}.{kind}", statistic)] = pooled
        return out


def last_layer_names(names: Sequence[str]) -> list[str]:
    """The atom, bond and angle feature names of the last layer in ``names`` (keys of
    :meth:`ALIGNNBackbone.layer_features`). After GCN layers the angle features are those
    the last ALIGNN layer passed on unchanged, so they come from that layer."""
    layers = list(dict.fromkeys(n.rsplit(".", 1)[0] for n in names if n.endswith(".atom")))
    if not layers:
        raise ValueError(f"no atom features among {list(names)}")
    last = layers[-1]
    chosen = [f"{last}.atom", f"{last}.bond"]
    angles = [n for n in names if n.endswith(".angle")]
    return chosen + angles[-1:]


def gupta_feature_sets(names: Sequence[str]) -> OrderedDict[str, list[str]]:
    """Gupta et al.'s feature sets (their Table 1) of the layer features ``names`` (keys
    of :meth:`ALIGNNBackbone.layer_features`; other statistics' ``@std`` … names and
    ``embedding_out`` count as their plain layer or not at all): for each checkpoint
    (``embedding``, ``interactions.k``) its ``.atom``, ``.bond`` and ``.angle`` features
    alone, ``.atom+bond`` and ``.atom+bond+angle`` where it has those; then
    ``last.atom+bond+angle`` (:func:`last_layer_names`) and ``all``, every checkpoint's
    features together. Each set is a list of layer names, in forward order, for
    :func:`concatenate_features` or :func:`tlmat.transfer.features.select_layers`."""
    plain = [
        n for n in dict.fromkeys(n.split("@")[0] for n in names) if n.rsplit(".", 1)[-1] in KINDS
    ]
    sets: OrderedDict[str, list[str]] = OrderedDict()
    for checkpoint in dict.fromkeys(n.rsplit(".", 1)[0] for n in plain):
        kinds = [k for k in KINDS if f"{checkpoint}.{k}" in plain]
        for kind in kinds:
            sets[f"{checkpoint}.{kind}"] = [f"{checkpoint}.{kind}"]
        # Gupta's combinations start from the atom features: atom+bond, atom+bond+angle
        for size in (2, 3):
            if kinds[:size] == list(KINDS[:size]):
                combined = KINDS[:size]
                sets[f"{checkpoint}.{'+'.join(combined)}"] = [f"{checkpoint}.{k}" for k in combined]
    last = last_layer_names(plain)
    sets["last." + "+".join(n.rsplit(".", 1)[1] for n in last)] = last
    sets["all"] = plain
    return sets


def concatenate_features(
    layers: Mapping[str, torch.Tensor], names: str | Sequence[str] | None = None
) -> torch.Tensor:
    """Pooled features joined along the feature axis, in the order named: exact names or
    prefixes (``interactions.3`` → its atom, bond and angle features); ``None``: the last
    layer's (:func:`last_layer_names`, 768-d at the default width)."""
    available = list(layers)
    if names is None:
        chosen = last_layer_names(available)
    else:
        wanted = [names] if isinstance(names, str) else list(names)
        chosen = []
        for name in wanted:
            matches = [a for a in available if a == name or a.startswith(name + ".")]
            if not matches:
                raise ValueError(f"no layer features {name!r}; there are: {', '.join(available)}")
            chosen += [m for m in matches if m not in chosen]
    return torch.cat([layers[n] for n in chosen], dim=1)


def build_alignn(config: ALIGNNConfig, atom_features: torch.Tensor | None = None) -> CrystalModel:
    """An ALIGNN with random weights (CGCNN features: ``atom_features`` or atom_init.json)."""
    table = None
    if config.atom_features == "cgcnn":
        table = atom_features if atom_features is not None else load_atom_init()
    backbone = ALIGNNBackbone(config, table)
    n_out = 2 if config.task == "classification" else config.n_out
    head = Head(backbone.embedding_dim, [], n_out)
    return CrystalModel(backbone, head, config)


def _build(config: ALIGNNConfig, state: Mapping[str, torch.Tensor] | None) -> CrystalModel:
    # a checkpoint carries its element table: no need to read atom_init.json
    table = state.get("backbone.atom_features") if state is not None else None
    return build_alignn(config, table)


ARCHITECTURE = Architecture(
    name="alignn",
    config=ALIGNNConfig,
    build=_build,
    summary="edge-gated convolutions on the atom graph and its bond-angle line graph, "
    "12 nearest neighbours within 8 Å, mean pooling",
    reference="Choudhary & DeCost, npj Comput. Mater. 7, 185 (2021)",
    presets={
        # the paper's and alignn's own defaults (also ALIGNNConfig's)
        "alignn-paper": {"alignn_layers": 4, "gcn_layers": 4, "hidden_features": 256},
        # the defaults of alignn's pure-PyTorch ALIGNNAtomWisePure (with CGCNN features)
        "alignn-atomwise-pure": {
            "alignn_layers": 2,
            "gcn_layers": 2,
            "hidden_features": 64,
            "embedding_features": 64,
            "norm": "layer",
        },
        # for tests and quick looks
        "alignn-small": {
            "alignn_layers": 1,
            "gcn_layers": 1,
            "hidden_features": 32,
            "embedding_features": 16,
            "edge_input_features": 40,
            "triplet_input_features": 20,
        },
    },
)
