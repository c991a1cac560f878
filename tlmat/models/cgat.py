"""CGAT: crystal graph attention networks with a Roost composition context
(Schmidt et al., Sci. Adv. 7, eabi7948 (2021); as used by Hoffmann et al., Digital
Discovery 2023), written on PyTorch Geometric.

- **embedding**: a learned element table (by default initialised from the matscholar
  word embeddings that matminer ships) projected to ``atom_fea_len``, and a learned
  embedding of every edge's *neighbour rank* — the only geometric input. The rank of the
  edge i←j is the number of i's neighbours strictly closer than j (within
  ``rank_tolerance`` Å), so equal distances share a rank and the ranks do not depend on
  the order of sites, images or edges; unrelaxed geometries with the same neighbour order
  give the same input.
- **interactions.t**: multi-head attention message passing with edge updates (Hoffmann
  et al. eqs. 1–2). For every head n, one-hidden-layer networks of
  ``[h_i ‖ h_j ‖ e_ij]`` give attention scores s and messages m; node attention is a
  softmax over each centre's neighbours (per feature with ``vector_attention``), edge
  attention a softmax over the heads. The node update is a gated residual whose gate a
  small tanh hypernetwork computes from the change h^t − h^(t−1); the edge update is a
  plain residual. The last step does not update edges (nothing would read them).
- **composition**: Roost (Goodall & Lee 2020) on the *fractional* composition: the
  elements of each crystal are nodes with weights w = n_el / n_atoms (so a supercell has
  the same context), fully connected (self-pairs included, so elements work), weighted
  soft attention a_ij ∝ w_j^p exp(s_ij), then weighted attention pooling to a context
  vector, concatenated to every atom's final features.
- **readout**: attention pooling over the atoms of each crystal; then the head, a
  residual MLP.
"""

from __future__ import annotations

import importlib.util
import json
import math
import warnings
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn
from torch_geometric.data import Batch
from torch_geometric.utils import scatter, softmax

from tlmat.graphs.settings import GraphSettings
from tlmat.models.base import Backbone, CrystalModel, Head, ModelConfig
from tlmat.models.layers import reset_all
from tlmat.models.pooling import MEAN, pooled_layers
from tlmat.models.registry import Architecture

#: rows of a learned element table (atomic numbers 0…118)
N_ELEMENTS = 119


def matscholar_path() -> Path | None:
    """matminer's ``matscholar_els.json`` (Tshitoyan et al. 2019), without importing
    matminer; ``None`` when matminer or the file is missing."""
    spec = importlib.util.find_spec("matminer")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = Path(folder) / "utils" / "data_files" / "matscholar_els.json"
        if path.is_file():
            return path
    return None


def matscholar_available() -> bool:
    return matscholar_path() is not None


def load_matscholar(path: str | Path | None = None) -> torch.Tensor:
    """The matscholar element vectors as a (max Z + 1, 200) table indexed by atomic
    number (row 0 and absent elements are zeros; present rows have unit norm)."""
    from pymatgen.core import Element

    path = Path(path) if path is not None else matscholar_path()
    if path is None:
        raise FileNotFoundError("matminer's matscholar_els.json not found (install matminer)")
    vectors = {Element(symbol).Z: values for symbol, values in json.loads(path.read_text()).items()}
    out = torch.zeros(max(vectors) + 1, len(next(iter(vectors.values()))))
    for z, values in vectors.items():
        out[z] = torch.tensor(values, dtype=torch.float32)
    return out


class CGATConfig(ModelConfig):
    """CGAT hyperparameters; the defaults are Hoffmann et al.'s (Digital Discovery 2023):
    24 neighbours, 5 message-passing steps, 6 heads, 128 atom features, neighbour
    embedding 512, FCNNs with one hidden layer of 512, hypernetwork of 3 × 128 (tanh),
    vector attention, updated edges, Roost with 3 message-passing steps and its defaults."""

    architecture = "cgat"

    atom_fea_len: int = Field(128, ge=1)
    edge_fea_len: int = Field(512, ge=1)  # "nbr-embedding-size": rank embedding width
    n_graph: int = Field(5, ge=1)  # message-passing steps
    msg_heads: int = Field(6, ge=1)
    fcnn_hidden: int = Field(512, ge=1)  # hidden width of the attention/message networks
    hyper_hidden: list[int] = Field(default_factory=lambda: [128, 128, 128])
    vector_attention: bool = True
    update_edges: bool = True
    #: start the element table from matscholar (default: when matminer ships the file)
    matscholar: bool = Field(default_factory=matscholar_available)
    # Roost (Goodall & Lee 2020 defaults, 3 message-passing steps as in Hoffmann et al.)
    roost_fea_len: int = Field(64, ge=2)
    roost_n_graph: int = Field(3, ge=0)
    roost_heads: int = Field(3, ge=1)
    roost_hidden: int = Field(256, ge=1)
    roost_pool_heads: int = Field(3, ge=1)
    # attention pooling over atoms and the residual output network
    readout_heads: int = Field(3, ge=1)
    readout_hidden: int = Field(256, ge=1)
    head_hidden: list[int] = Field(default_factory=lambda: [256, 128, 64])
    head_activation: str = "silu"
    n_out: int = Field(1, ge=1)
    # graph
    cutoff: float = Field(8.0, gt=0)  # Å, neighbour search radius
    max_neighbors: int = Field(24, ge=1)  # the nearest this many within the cutoff
    rank_tolerance: float = Field(1e-3, ge=0)  # Å: closer by less than this is a tie

    def graph_settings(self) -> GraphSettings:
        return GraphSettings(cutoff=self.cutoff, max_neighbors=self.max_neighbors)


# -- building blocks --------------------------------------------------------------------


@torch.no_grad()
def neighbour_ranks(
    centre: torch.Tensor, distance: torch.Tensor, num_nodes: int, tolerance: float = 1e-3
) -> torch.Tensor:
    """For every edge, the number of edges of the same centre that are shorter by more than
    ``tolerance``: 0 for the nearest shell, equal for equal distances, independent of the
    order of edges (so of sites, images and supercells)."""
    if centre.numel() == 0:
        return centre.new_zeros(0)
    order = torch.argsort(centre, stable=True)
    counts = torch.bincount(centre, minlength=num_nodes)
    start = torch.cumsum(counts, 0) - counts
    sorted_centre = centre[order]
    slot = torch.arange(centre.numel(), device=centre.device) - start[sorted_centre]
    table = distance.new_full((num_nodes, int(counts.max())), math.inf)
    table[sorted_centre, slot] = distance[order]
    return (table[centre] < (distance - tolerance).unsqueeze(1)).sum(dim=1)


def _uniform_(tensor: torch.Tensor, fan_in: int) -> None:
    bound = 1.0 / math.sqrt(fan_in)
    nn.init.uniform_(tensor, -bound, bound)


class HeadwiseOutputs(nn.Module):
    """The second layers of ``heads`` independent one-hidden-layer networks: (M, H·hidden)
    hidden activations → one (M, H, out) tensor per output width in ``outs``."""

    def __init__(self, heads: int, hidden: int, outs: list[int]):
        super().__init__()
        self.heads, self.hidden, self.outs = heads, hidden, list(outs)
        self.weight = nn.Parameter(torch.empty(heads, hidden, sum(outs)))
        self.bias = nn.Parameter(torch.empty(heads, sum(outs)))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        _uniform_(self.weight, self.hidden)
        _uniform_(self.bias, self.hidden)

    def forward(self, hidden: torch.Tensor) -> list[torch.Tensor]:
        hidden = hidden.view(hidden.shape[0], self.heads, self.hidden)
        out = torch.einsum("mhk,hko->mho", hidden, self.weight) + self.bias
        return list(out.split(self.outs, dim=-1))


class PairNetworks(nn.Module):
    """Per-head networks of ``[h_i ‖ h_j ‖ e_ij]`` on the edges (i the centre, j the
    neighbour): a hidden layer of ``hidden`` per head and output group g, leaky ReLU, then
    the output widths ``outs[g]``. The first layer is split by input, so its atom columns
    are applied once per atom and gathered rather than once per edge (the same map)."""

    def __init__(
        self, node_dim: int, edge_dim: int, heads: int, hidden: int, outs: list[list[int]]
    ):
        super().__init__()
        width = heads * hidden * len(outs)
        self.fan_in = 2 * node_dim + edge_dim
        self.centre = nn.Parameter(torch.empty(width, node_dim))
        self.neighbour = nn.Parameter(torch.empty(width, node_dim))
        self.edge = nn.Parameter(torch.empty(width, edge_dim)) if edge_dim else None
        self.bias = nn.Parameter(torch.empty(width))
        self.second = nn.ModuleList(HeadwiseOutputs(heads, hidden, o) for o in outs)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # as one Linear on the concatenation would be
        for weight in (self.centre, self.neighbour, self.edge, self.bias):
            if weight is not None:
                _uniform_(weight, self.fan_in)
        reset_all(self)

    def forward(
        self, h: torch.Tensor, edge_index: torch.Tensor, e: torch.Tensor | None = None
    ) -> list[list[torch.Tensor]]:
        neighbour, centre = edge_index
        z = F.linear(h, self.centre, self.bias)[centre] + F.linear(h, self.neighbour)[neighbour]
        if self.edge is not None:
            z = z + F.linear(e, self.edge)
        z = F.leaky_relu(z)
        parts = z.chunk(len(self.second), dim=-1)
        return [net(part) for net, part in zip(self.second, parts, strict=True)]


class NodeNetworks(nn.Module):
    """Per-head one-hidden-layer networks of single nodes (``PairNetworks`` without j)."""

    def __init__(self, in_dim: int, heads: int, hidden: int, outs: list[int]):
        super().__init__()
        self.first = nn.Linear(in_dim, heads * hidden)
        self.second = HeadwiseOutputs(heads, hidden, outs)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.second(F.leaky_relu(self.first(x)))


class AttentionPool(nn.Module):
    """Multi-head (weighted) soft-attention pooling of nodes into their graphs:
    Σ_i a_i m(x_i) with a_i = w_i^p exp(s(x_i)) / Σ_k w_k^p exp(s(x_k)), averaged over heads
    (Roost's pooling; without weights the plain attention pooling of CGAT)."""

    def __init__(self, in_dim: int, out_dim: int, heads: int, hidden: int, weighted: bool = False):
        super().__init__()
        self.nets = NodeNetworks(in_dim, heads, hidden, [1, out_dim])
        self.power = nn.Parameter(torch.empty(heads)) if weighted else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        reset_all(self, power=nn.init.ones_)

    def forward(
        self,
        x: torch.Tensor,
        index: torch.Tensor,
        size: int,
        weights: torch.Tensor | None = None,
    ) -> torch.Tensor:
        score, message = self.nets(x)
        if self.power is not None and weights is not None:
            score = score + self.power.view(1, -1, 1) * weights.log().view(-1, 1, 1)
        attention = softmax(score, index, num_nodes=size, dim=0)
        return scatter(attention * message, index, dim=0, dim_size=size, reduce="sum").mean(1)


# -- the backbone's groups --------------------------------------------------------------


class CGATEmbedding(nn.Module):
    """Element table (matscholar-initialised or random) → ``atom_fea_len``, and the
    neighbour-rank embedding of the edges."""

    def __init__(self, config: CGATConfig, table: torch.Tensor | None):
        super().__init__()
        if table is not None:  # kept, to start from again on reset_parameters
            self.register_buffer("table", table.clone().float())
            self.elements = nn.Parameter(self.table.clone())
            self.project: nn.Module = nn.Linear(table.shape[1], config.atom_fea_len)
        else:
            self.register_buffer("table", None)
            self.elements = nn.Parameter(torch.empty(N_ELEMENTS, config.atom_fea_len))
            self.project = nn.Identity()
        self.ranks = nn.Parameter(torch.empty(config.max_neighbors, config.edge_fea_len))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            if self.table is not None:
                self.elements.copy_(self.table)  # "fresh" is matscholar again
            else:
                nn.init.normal_(self.elements)
        nn.init.normal_(self.ranks)
        reset_all(self)

    def forward(self, z: torch.Tensor, ranks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.project(self.elements[z]), self.ranks[ranks]


class CGATLayer(nn.Module):
    """One message-passing step: multi-head attention over each centre's neighbours,
    hypernetwork-gated residual node update, attention-over-heads residual edge update."""

    def __init__(self, config: CGATConfig, update_edges: bool):
        super().__init__()
        d, e = config.atom_fea_len, config.edge_fea_len
        outs = [[d if config.vector_attention else 1, d]]
        if update_edges:
            outs.append([e if config.vector_attention else 1, e])
        self.nets = PairNetworks(d, e, config.msg_heads, config.fcnn_hidden, outs)
        self.node_out = nn.Linear(d, d)
        layers: list[nn.Module] = []
        width = d
        for size in config.hyper_hidden:
            layers += [nn.Linear(width, size), nn.Tanh()]
            width = size
        self.hyper = nn.Sequential(*layers, nn.Linear(width, d))
        self.edge_out = nn.Linear(e, e) if update_edges else None

    def forward(
        self,
        h: torch.Tensor,
        e: torch.Tensor,
        h_previous: torch.Tensor,
        edge_index: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        centre = edge_index[1]
        outputs = self.nets(h, edge_index, e)
        score, message = outputs[0]  # (E, heads, d or 1), (E, heads, d)
        attention = softmax(score, centre, num_nodes=h.shape[0], dim=0)  # over neighbours
        summed = scatter(attention * message, centre, dim=0, dim_size=h.shape[0], reduce="sum")
        gate = torch.sigmoid(self.hyper(h - h_previous))
        h_new = h + gate * self.node_out(summed.mean(dim=1))
        if self.edge_out is not None:
            score, message = outputs[1]
            attention = torch.softmax(score, dim=1)  # over the heads
            e = e + self.edge_out((attention * message).sum(dim=1))
        return h_new, e


class RoostLayer(nn.Module):
    """Weighted soft-attention message passing among the elements of each composition."""

    def __init__(self, dim: int, heads: int, hidden: int):
        super().__init__()
        self.nets = PairNetworks(dim, 0, heads, hidden, [[1, dim]])
        self.power = nn.Parameter(torch.empty(heads))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.ones_(self.power)
        reset_all(self)

    def forward(
        self, h: torch.Tensor, log_weights: torch.Tensor, edge_index: torch.Tensor
    ) -> torch.Tensor:
        neighbour, centre = edge_index
        ((score, message),) = self.nets(h, edge_index)
        score = score + self.power.view(1, -1, 1) * log_weights[neighbour].view(-1, 1, 1)
        attention = softmax(score, centre, num_nodes=h.shape[0], dim=0)
        summed = scatter(attention * message, centre, dim=0, dim_size=h.shape[0], reduce="sum")
        return h + summed.mean(dim=1)


def composition_graphs(
    z: torch.Tensor, batch: torch.Tensor, n_crystals: int, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The fractional composition of every crystal as a graph: element nodes sorted by
    (crystal, Z) with their atomic numbers, crystal index and fraction n_el / n_atoms, and
    the edges (j, i) of every ordered pair of elements of one crystal, self-pairs included."""
    key = batch * 128 + z
    unique, counts = torch.unique(key, sorted=True, return_counts=True)
    crystal, element = unique // 128, unique % 128
    n_atoms = torch.bincount(batch, minlength=n_crystals)
    # integer counts divided once, correctly rounded: equal fractions are equal bits
    fraction = counts.to(dtype) / n_atoms[crystal].to(dtype)
    size = torch.bincount(crystal, minlength=n_crystals)
    start = torch.cumsum(size, 0) - size
    partners = size[crystal]
    centre = torch.repeat_interleave(torch.arange(len(unique), device=z.device), partners)
    first = torch.repeat_interleave(torch.cumsum(partners, 0) - partners, partners)
    neighbour = start[crystal[centre]] + torch.arange(len(centre), device=z.device) - first
    return element, crystal, fraction, torch.stack([neighbour, centre])


class Roost(nn.Module):
    """Composition → context vector (Goodall & Lee 2020), on element nodes with fractional
    weights: element features (the fixed matscholar table → linear, or a learned table)
    with the fraction appended, weighted-attention message passing, weighted pooling."""

    def __init__(self, config: CGATConfig, table_dim: int | None):
        super().__init__()
        dim = config.roost_fea_len
        if table_dim is not None:
            self.embed: nn.Module = nn.Linear(table_dim, dim - 1)
            self.elements = None
        else:
            self.embed = nn.Identity()
            self.elements = nn.Parameter(torch.empty(N_ELEMENTS, dim - 1))
        self.layers = nn.ModuleList(
            RoostLayer(dim, config.roost_heads, config.roost_hidden)
            for _ in range(config.roost_n_graph)
        )
        self.pool = AttentionPool(
            dim, dim, config.roost_pool_heads, config.roost_hidden, weighted=True
        )
        self.out_dim = dim
        self.reset_parameters()

    def reset_parameters(self) -> None:
        reset_all(self, elements=nn.init.normal_)

    def forward(
        self, z: torch.Tensor, batch: torch.Tensor, n_crystals: int, table: torch.Tensor | None
    ) -> torch.Tensor:
        dtype = (table if table is not None else self.elements).dtype
        element, crystal, fraction, edge_index = composition_graphs(z, batch, n_crystals, dtype)
        features = self.embed(table[element]) if table is not None else self.elements[element]
        h = torch.cat([features, fraction.unsqueeze(1)], dim=1)
        log_weights = fraction.log()
        for layer in self.layers:
            h = layer(h, log_weights, edge_index)
        return self.pool(h, crystal, n_crystals, fraction)


class CGATBackbone(Backbone):
    atomwise = False

    def __init__(self, config: CGATConfig, table: torch.Tensor | None):
        super().__init__()
        self.config = config
        self.embedding = CGATEmbedding(config, table)
        self.interactions = nn.ModuleList(
            CGATLayer(config, update_edges=config.update_edges and k < config.n_graph - 1)
            for k in range(config.n_graph)
        )
        self.composition = Roost(config, None if table is None else table.shape[1])
        self.embedding_dim = config.atom_fea_len + self.composition.out_dim
        self.readout = AttentionPool(
            self.embedding_dim, self.embedding_dim, config.readout_heads, config.readout_hidden
        )

    @property
    def elements(self) -> list[int] | None:
        table = self.embedding.table
        if table is None:
            return None
        return torch.nonzero(table.abs().sum(dim=1)).flatten().tolist()

    def groups(self) -> OrderedDict[str, nn.Module]:
        groups: OrderedDict[str, nn.Module] = OrderedDict(embedding=self.embedding)
        for k, layer in enumerate(self.interactions):
            groups[f"interactions.{k}"] = layer
        groups["composition"] = self.composition
        groups["readout"] = self.readout
        return groups

    def ranks(self, batch: Batch) -> torch.Tensor:
        """Neighbour rank of every edge (0 … max_neighbors − 1)."""
        ranks = neighbour_ranks(
            batch.edge_index[1], batch.edge_dist, batch.z.shape[0], self.config.rank_tolerance
        )
        return ranks.clamp(max=self.config.max_neighbors - 1)

    def _atoms(self, batch: Batch) -> Iterator[tuple[str, torch.Tensor]]:
        h, e = self.embedding(batch.z, self.ranks(batch))
        yield "embedding", h
        previous = torch.zeros_like(h)
        for k, layer in enumerate(self.interactions):
            h, e, previous = (*layer(h, e, previous, batch.edge_index), h)
            yield f"interactions.{k}", h

    def context(self, batch: Batch) -> torch.Tensor:
        """The Roost composition context of every crystal (n_crystals, roost_fea_len)."""
        n_crystals = batch.ptr.numel() - 1
        return self.composition(batch.z, batch.batch, n_crystals, self.embedding.table)

    def forward(self, batch: Batch) -> torch.Tensor:
        *_, (_, h) = self._atoms(batch)
        n_crystals = batch.ptr.numel() - 1
        x = torch.cat([h, self.context(batch)[batch.batch]], dim=1)
        return self.readout(x, batch.batch, n_crystals)

    def layer_features(
        self, batch: Batch, statistics: Sequence[str] = MEAN
    ) -> OrderedDict[str, torch.Tensor]:
        out = pooled_layers(self._atoms(batch), batch, statistics)
        out["composition"] = self.context(batch)
        return out


def build_cgat(config: CGATConfig, table: torch.Tensor | None = None) -> CrystalModel:
    """A CGAT; ``table``: the element table to start from (default: matscholar when
    ``config.matscholar``, else a random learned table)."""
    if config.matscholar and table is None:
        table = load_matscholar()
    backbone = CGATBackbone(config, table if config.matscholar else None)
    head = Head(
        backbone.embedding_dim,
        config.head_hidden,
        config.n_out,
        activation_name=config.head_activation,
        residual=True,
    )
    return CrystalModel(backbone, head, config)


def _build(config: CGATConfig, state: Mapping[str, torch.Tensor] | None) -> CrystalModel:
    # a checkpoint carries its element table: no need to read matminer's file
    table = state.get("backbone.embedding.table") if state is not None else None
    if config.matscholar and table is None and not matscholar_available():
        warnings.warn(
            "matscholar embeddings not found (matminer missing): CGAT starts from a random "
            "learned element table",
            stacklevel=2,
        )
        config = config.model_copy(update={"matscholar": False})
    return build_cgat(config, table)


ARCHITECTURE = Architecture(
    name="cgat",
    config=CGATConfig,
    build=_build,
    summary=(
        "crystal graph attention: 24 neighbours by rank only, multi-head attention with edge "
        "updates, Roost composition context, attention pooling"
    ),
    reference="Schmidt et al., Sci. Adv. 7, eabi7948 (2021); Hoffmann et al., Digital "
    "Discovery (2023)",
    presets={
        # the hyperparameters of Hoffmann et al. (also the defaults)
        "cgat-hoffmann": {
            "atom_fea_len": 128,
            "edge_fea_len": 512,
            "n_graph": 5,
            "msg_heads": 6,
            "fcnn_hidden": 512,
            "hyper_hidden": [128, 128, 128],
            "vector_attention": True,
            "update_edges": True,
            "roost_n_graph": 3,
            "max_neighbors": 24,
            "cutoff": 8.0,
        },
        # a CGAT a 2-core CPU trains in minutes (the model-zoo grids): the paper's layout,
        # narrower, fewer steps and heads
        "cgat-cpu": {
            "atom_fea_len": 64,
            "edge_fea_len": 64,
            "n_graph": 3,
            "msg_heads": 3,
            "fcnn_hidden": 128,
            "hyper_hidden": [64],
            "roost_n_graph": 2,
            "roost_hidden": 128,
            "readout_hidden": 128,
            "head_hidden": [128, 64],
        },
        # for tests and quick looks
        "cgat-small": {
            "atom_fea_len": 32,
            "edge_fea_len": 32,
            "n_graph": 2,
            "msg_heads": 2,
            "fcnn_hidden": 64,
            "hyper_hidden": [32],
            "roost_fea_len": 16,
            "roost_n_graph": 1,
            "roost_heads": 1,
            "roost_hidden": 32,
            "roost_pool_heads": 1,
            "readout_heads": 1,
            "readout_hidden": 64,
            "head_hidden": [64, 32],
        },
    },
)
