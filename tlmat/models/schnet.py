"""SchNet (Schütt et al., J. Chem. Phys. 148, 241722, 2018) on periodic edge lists, as
used for transfer learning by Krawczuk & Venturi.

Atoms start from a learned embedding of their atomic number Z; every pair (i, j) within
the cutoff r_c (Å, periodic images included, no neighbour limit by default) is described
by a Gaussian radial basis exp(−γ (d_ij − μ_k)²) of its distance d_ij (Å). Each
interaction block runs a continuous-filter convolution — a filter-generating network
W(d_ij) = Linear → ssp → Linear of the basis, faded to zero at r_c by a cosine cutoff,
and messages x_j ⊙ W(d_ij) summed over the neighbours j of i — inside the atom-wise
layers in2f → cfconv → f2out → ssp → dense, and adds the result to the atom features
(x ← x + v). The head then maps every atom's features to an atom contribution
(Linear → ssp → Linear), which :class:`~tlmat.models.base.CrystalModel` averages for
intensive targets (eV/atom, GPa) or sums for extensive ones (eV/cell).

Layer and parameter names follow schnetpack's (``in2f``, ``f2out``, ``dense``,
``filter_network``) so that published SchNet weights map by name.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from typing import NamedTuple

import torch
from pydantic import Field
from torch import nn
from torch_geometric.data import Batch
from torch_geometric.utils import scatter

from tlmat.graphs.expansions import RadialBasis
from tlmat.graphs.settings import GraphSettings
from tlmat.models.base import Backbone, CrystalModel, Head, ModelConfig
from tlmat.models.layers import CosineCutoff, ShiftedSoftplus
from tlmat.models.pooling import MEAN, pooled_layers
from tlmat.models.registry import Architecture


class SchNetConfig(ModelConfig):
    """SchNet hyperparameters. Defaults are Krawczuk & Venturi's first architecture
    (``schnet-arch1``): 128 atom features and filters, 6 interactions, 300 Gaussians with
    centres from 0 to 30 Å and γ = 10 Å⁻², every neighbour within a 6 Å cutoff."""

    architecture = "schnet"

    n_atom_basis: int = Field(128, ge=1)  # F, width of the atom features
    n_filters: int = Field(128, ge=1)  # width of the continuous filters
    n_interactions: int = Field(6, ge=1)
    n_rbf: int = Field(300, ge=2)  # number of Gaussian centres μ_k
    rbf_start: float = Field(0.0, ge=0)  # Å, first centre
    rbf_stop: float = Field(30.0, gt=0)  # Å, last centre
    rbf_gamma: float = Field(10.0, gt=0)  # Å⁻², γ in exp(−γ (d − μ_k)²)
    cutoff: float = Field(6.0, gt=0)  # Å, neighbour radius and where the filters vanish
    max_neighbors: int | None = Field(None, ge=1)  # None: all within the cutoff
    max_z: int = Field(100, ge=1)  # largest atomic number the embedding covers

    def graph_settings(self) -> GraphSettings:
        return GraphSettings(cutoff=self.cutoff, max_neighbors=self.max_neighbors)


def _xavier(linear: nn.Linear) -> None:
    """Glorot-uniform weights and zero bias: schnetpack's (and PyG's) initialisation,
    which keeps the residual sums of deep SchNets at a stable scale."""
    nn.init.xavier_uniform_(linear.weight)
    if linear.bias is not None:
        nn.init.zeros_(linear.bias)


class Edges(NamedTuple):
    """What every interaction block reads of a batch's graph, computed once: the edge
    index (neighbour, centre), the radial basis of the distances (E, n_rbf) and their
    cosine envelope (E,)."""

    index: torch.Tensor
    rbf: torch.Tensor
    envelope: torch.Tensor


class FilterNetwork(nn.Module):
    """W(d) = (Linear → ssp → Linear)(rbf(d)) · f_cut(d): one filter vector per edge."""

    def __init__(self, n_rbf: int, n_filters: int):
        super().__init__()
        self.lin1 = nn.Linear(n_rbf, n_filters)
        self.act = ShiftedSoftplus()
        self.lin2 = nn.Linear(n_filters, n_filters)

    def forward(self, rbf: torch.Tensor, envelope: torch.Tensor) -> torch.Tensor:
        """``rbf`` (E, n_rbf), ``envelope`` (E,) the cosine cutoff → (E, n_filters)."""
        # the envelope multiplies the filter, not the basis: a neighbour crossing the
        # cutoff then contributes a message that is already zero, whatever the weights
        return self.lin2(self.act(self.lin1(rbf))) * envelope.unsqueeze(-1)

    def reset_parameters(self) -> None:
        _xavier(self.lin1)
        _xavier(self.lin2)


class CFConv(nn.Module):
    """Continuous-filter convolution: in2f → Σ_j x_j ⊙ W(d_ij) → f2out → ssp."""

    def __init__(self, n_atom_basis: int, n_filters: int, n_rbf: int):
        super().__init__()
        # no bias before the convolution: a bias would add a constant times Σ_j W(d_ij),
        # i.e. a coordination-count term the filters already express
        self.in2f = nn.Linear(n_atom_basis, n_filters, bias=False)
        self.filter_network = FilterNetwork(n_rbf, n_filters)
        self.f2out = nn.Linear(n_filters, n_atom_basis)
        self.act = ShiftedSoftplus()

    def forward(self, x: torch.Tensor, edges: Edges) -> torch.Tensor:
        neighbor, center = edges.index
        filters = self.filter_network(edges.rbf, edges.envelope)
        messages = self.in2f(x)[neighbor] * filters
        # dim_size: an atom with no neighbour inside the cutoff (a lone atom of a
        # molecule) gets a zero sum rather than shortening the output
        summed = scatter(messages, center, dim=0, dim_size=x.size(0), reduce="sum")
        return self.act(self.f2out(summed))

    def reset_parameters(self) -> None:
        _xavier(self.in2f)
        self.filter_network.reset_parameters()
        _xavier(self.f2out)


class InteractionBlock(nn.Module):
    """One residual SchNet interaction: x ← x + dense(cfconv(x))."""

    def __init__(self, n_atom_basis: int, n_filters: int, n_rbf: int):
        super().__init__()
        self.cfconv = CFConv(n_atom_basis, n_filters, n_rbf)
        self.dense = nn.Linear(n_atom_basis, n_atom_basis)

    def forward(self, x: torch.Tensor, edges: Edges) -> torch.Tensor:
        return x + self.dense(self.cfconv(x, edges))

    def reset_parameters(self) -> None:
        self.cfconv.reset_parameters()
        _xavier(self.dense)


class SchNetBackbone(Backbone):
    """Atomic numbers and pair distances → per-atom features (n_atoms, F)."""

    atomwise = True

    def __init__(self, config: SchNetConfig):
        super().__init__()
        self.max_z = config.max_z
        # row Z is element Z; row 0 is never used (no atom has Z = 0) but keeps the
        # lookup a plain index, as in schnetpack and PyG
        self.embedding = nn.Embedding(config.max_z + 1, config.n_atom_basis)
        self.rbf = RadialBasis(config.rbf_start, config.rbf_stop, config.n_rbf, config.rbf_gamma)
        self.cutoff = CosineCutoff(config.cutoff)
        self.interactions = nn.ModuleList(
            InteractionBlock(config.n_atom_basis, config.n_filters, config.n_rbf)
            for _ in range(config.n_interactions)
        )
        self.embedding_dim = config.n_atom_basis
        self.reset_parameters()

    @property
    def elements(self) -> list[int]:
        return list(range(1, self.max_z + 1))

    def _atoms(self, batch: Batch) -> Iterator[tuple[str, torch.Tensor]]:
        # the basis and the envelope depend only on the distances: computed once and
        # shared by every block (each block has its own filter network on top)
        distances = batch.edge_dist
        edges = Edges(batch.edge_index, self.rbf(distances), self.cutoff(distances))
        x = self.embedding(batch.z)
        yield "embedding", x
        for k, block in enumerate(self.interactions):
            x = block(x, edges)
            yield f"interactions.{k}", x

    def forward(self, batch: Batch) -> torch.Tensor:
        *_, (_, x) = self._atoms(batch)
        return x

    def layer_features(
        self, batch: Batch, statistics: Sequence[str] = MEAN
    ) -> OrderedDict[str, torch.Tensor]:
        return pooled_layers(self._atoms(batch), batch, statistics)

    def reset_parameters(self) -> None:
        # each block re-initialises its own layers (Glorot); the generic reset_all would
        # afterwards visit the inner nn.Linear modules and overwrite that with PyTorch's
        # default initialisation, so the blocks are reset explicitly instead
        self.embedding.reset_parameters()
        for block in self.interactions:
            block.reset_parameters()


def build_schnet(config: SchNetConfig) -> CrystalModel:
    """A SchNet with random weights and its atom-wise head F → F/2 → 1."""
    backbone = SchNetBackbone(config)
    width = config.n_atom_basis
    head = Head(width, [max(width // 2, 1)], 1, activation_name="ssp")
    return CrystalModel(backbone, head, config)


def _build(config: SchNetConfig, state: Mapping[str, torch.Tensor] | None) -> CrystalModel:
    # everything SchNet needs is in the config (no element table to take from a state)
    return build_schnet(config)


ARCHITECTURE = Architecture(
    name="schnet",
    config=SchNetConfig,
    build=_build,
    summary=(
        "continuous-filter convolutions on all pairs within 6 Å, Gaussian distance basis, "
        "atom-wise readout (mean or sum)"
    ),
    reference="Schütt et al., J. Chem. Phys. 148, 241722 (2018); Krawczuk & Venturi",
    presets={
        # Krawczuk & Venturi's two SchNet architectures
        "schnet-arch1": {"n_atom_basis": 128, "n_filters": 128, "n_interactions": 6},
        "schnet-arch2": {"n_atom_basis": 30, "n_filters": 30, "n_interactions": 4},
        # for tests and quick looks: the same 0.1 Å centre spacing, only up to the cutoff
        "schnet-small": {
            "n_atom_basis": 32,
            "n_filters": 32,
            "n_interactions": 2,
            "n_rbf": 61,
            "rbf_stop": 6.0,
        },
    },
)
