"""CHGNet (Deng et al., Nat. Mach. Intell. 5, 1031, 2023) as a transferable backbone: the
foundation model trained on the Materials Project trajectories (MPtrj), with its
published weights from the ``chgnet`` wheel, under tlmat's model contract.

The layers are the ``chgnet`` package's own (``pip install 'tlmat[foundation]'``); tlmat
feeds them its cached graphs and names their parameter groups:

- ``embedding``: the element embedding (atomic numbers 1–94), the learnable Bessel basis
  of bond lengths (atom graph: 6 Å; bond graph: 3 Å) and Fourier basis of bond angles,
  and their linear embeddings;
- ``interactions.0`` … ``interactions.{n_conv-2}``: an atom convolution, then a bond
  convolution and an angle update on the bond graph; ``interactions.{n_conv-1}``: the last
  atom convolution;
- ``readout``: the layer normalisation of the atom features;
- ``head``: CHGNet's energy MLP (64 → 64 → 64 → 64 → 1, SiLU), run on every atom
  (CHGNet's ``mlp_first`` readout): the atom contributions are summed for extensive
  targets and averaged for intensive ones.

Graphs. CHGNet's atom graph is every neighbour within 6 Å and its bond graph the pairs of
bonds shorter than 3 Å that share an atom: tlmat's graph with ``max_neighbors=None`` and
a line graph cut at 3 Å, built once and cached like any other. Per batch the directed
edges are paired with their reverse (the same bond seen from the other atom, image −S)
into CHGNet's undirected bonds, which carry the bond features; angles come from the
cached cosines as arccos(cos·(1 − 10⁻⁶)), as in ``chgnet``.

Published weights (:func:`load_published`, names ``chgnet/0.3.0`` and ``chgnet/r2scan``)
are read from the files inside the ``chgnet`` wheel, checked against their SHA-256, with
``torch.load(weights_only=True)``: tensors and plain containers only, nothing unpickled
(chgnet's own loader uses ``weights_only=False``). What they predict becomes the source
target: the total energy in eV/cell, the sum of the atom contributions plus CHGNet's
fitted per-element reference energies (its ``AtomRef`` composition model, kept as
:attr:`TargetSpec.atom_refs`). CHGNet's magnetic-moment head (``site_wise``) predicts
no property tlmat transfers and is not loaded.
"""

from __future__ import annotations

import contextlib
import io
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from pydantic import Field
from torch import nn
from torch_geometric.data import Batch

from tlmat.graphs.settings import GraphSettings
from tlmat.models.base import Backbone, CrystalModel, Head, ModelConfig, TrainedModel
from tlmat.models.foundation import (
    NetworkPart,
    all_neighbours,
    foundation_module,
    package_version,
    packaged_sources,
    packaged_weights,
    published_names,
    published_source,
)
from tlmat.models.foundation import config_from_arguments as checked_config
from tlmat.models.pooling import MEAN, pooled_layers
from tlmat.models.registry import Architecture
from tlmat.models.targets import TargetSpec

#: atomic numbers CHGNet's element embedding covers (H … Pu)
ELEMENTS = list(range(1, 95))

#: every CHGNet weights file inside the ``chgnet`` wheel, by version: file and SHA-256
WEIGHTS: dict[str, tuple[str, str]] = {
    "0.3.0": (
        "pretrained/0.3.0/chgnet_0.3.0_e29f68s314m37.pth.tar",
        "d14ab7c0f093efe64b60a7bcd540bca10e74fb7f46c86108a079af60524659d1",
    ),
    "r2scan": (
        "pretrained/r2scan/chgnet_r2scan_transfer_learning_e15f36s161m23.pth.tar",
        "8eba3db0f35a2788bb3ae22885ad340591e27996f213c6643af522a633b50dad",
    ),
    # the older potential, which the screening oracle may relax with; not a source
    "0.2.0": (
        "pretrained/0.2.0/chgnet_0.2.0_e30f77s348m32.pth.tar",
        "ef624f78b6db9d315b4ef256f1bb3207449924191b91720dc17d3f60c5df980e",
    ),
}

#: the versions that are transfer sources, and what they were fitted to
PUBLISHED: dict[str, str] = {
    "0.3.0": "CHGNet 0.3.0: energies, forces, stresses and magnetic moments of MPtrj (PBE/PBE+U)",
    "r2scan": "CHGNet r2SCAN: 0.3.0 transferred to MP r2SCAN energies (Huang et al. 2025)",
}


class CHGNetConfig(ModelConfig):
    """CHGNet hyperparameters; names and defaults are chgnet's (those of 0.3.0)."""

    architecture = "chgnet"

    atom_fea_dim: int = Field(64, ge=1)
    bond_fea_dim: int = Field(64, ge=1)
    angle_fea_dim: int = Field(64, ge=1)
    num_radial: int = Field(31, ge=1)  # Bessel functions of the bond length
    num_angular: int = Field(31, ge=1)  # Fourier terms of the bond angle (odd)
    n_conv: int = Field(4, ge=2)  # atom convolutions (bond and angle updates: n_conv − 1)
    atom_conv_hidden_dim: int = Field(64, ge=1)
    bond_conv_hidden_dim: int = Field(64, ge=1)
    angle_layer_hidden_dim: int = Field(0, ge=0)
    mlp_hidden_dims: list[int] = Field(default_factory=lambda: [64, 64, 64])
    non_linearity: str = "silu"
    gMLP_norm: str = "layer"
    readout_norm: str = "layer"
    atom_graph_cutoff: float = Field(6.0, gt=0)  # Å
    bond_graph_cutoff: float = Field(3.0, gt=0)  # Å, bonds in the bond (line) graph
    cutoff_coeff: int = Field(8, ge=1)  # smoothness of the basis at the cutoff
    learnable_rbf: bool = True

    def graph_settings(self) -> GraphSettings:
        return all_neighbours(self.atom_graph_cutoff, self.bond_graph_cutoff)


def _chgnet(config: CHGNetConfig) -> Any:
    """chgnet's own model of this size (random weights), whose layers tlmat uses."""
    model = foundation_module("chgnet.model", "the CHGNet backbone")
    with contextlib.redirect_stdout(io.StringIO()):  # chgnet prints its parameter count
        return model.CHGNet(
            composition_model=None,
            mlp_first=True,
            is_intensive=True,
            update_bond=True,
            update_angle=True,
            **config.model_dump(),
        )


class CHGNetEmbedding(NetworkPart):
    """Element embedding, bond and angle bases and their embeddings (``embedding``)."""

    parts = (
        "atom_embedding",
        "bond_basis_expansion",
        "bond_embedding",
        "bond_weights_ag",
        "bond_weights_bg",
        "angle_basis_expansion",
        "angle_embedding",
    )


class CHGNetBlock(nn.Module):
    """One atom convolution, then (except in the last block) a bond convolution and an
    angle update on the bond graph."""

    def __init__(self, atom_conv: nn.Module, bond_conv: nn.Module | None, angle: nn.Module | None):
        super().__init__()
        self.atom_conv = atom_conv
        self.bond_conv = bond_conv
        self.angle_update = angle


class BondGraph:
    """CHGNet's view of one batch of tlmat graphs: undirected bonds and bond triplets."""

    def __init__(self, batch: Batch):
        neighbour, centre = batch.edge_index
        n_edges = centre.numel()
        reverse = reverse_edges(centre, neighbour, batch.edge_shift, batch.num_nodes)
        # a bond and its reverse share one undirected index (that of the lower of the two)
        lower = torch.minimum(torch.arange(n_edges, device=centre.device), reverse)
        self.undirected2directed, self.directed2undirected = torch.unique(
            lower, sorted=True, return_inverse=True
        )
        self.atom_graph = torch.stack([centre, neighbour], dim=1)
        self.lengths = batch.edge_dist.index_select(0, self.undirected2directed)
        first, second = batch.line_index
        self.bond_graph = torch.stack(
            [
                centre.index_select(0, first),
                self.directed2undirected.index_select(0, first),
                self.directed2undirected.index_select(0, second),
            ],
            dim=1,
        )
        # chgnet's arccos guard: cos·(1 − 1e-6)
        self.angles = torch.acos(batch.line_cos * (1 - 1e-6))


def reverse_edges(
    centre: torch.Tensor, neighbour: torch.Tensor, shift: torch.Tensor, n_atoms: int
) -> torch.Tensor:
    """For every directed edge i → j with image S, the index of the edge j → i with image
    −S (the same bond seen from j); an edge without one is its own reverse."""
    own = torch.arange(centre.numel(), device=centre.device)
    if centre.numel() == 0:
        return own
    shift = shift.round().long()
    reach = int(shift.abs().max())
    base = 2 * reach + 1

    def key(a: torch.Tensor, b: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        code = (a * n_atoms + b) * base**3
        s = s + reach
        return code + (s[:, 0] * base + s[:, 1]) * base + s[:, 2]

    if n_atoms**2 * base**3 >= 2**62:  # would overflow int64: compare rows instead
        rows = torch.cat(
            [torch.stack([centre, neighbour], 1), torch.stack([neighbour, centre], 1)], 0
        )
        rows = torch.cat([rows, torch.cat([shift, -shift], 0)], 1)
        _, ids = torch.unique(rows, dim=0, return_inverse=True)
        forward, backward = ids.split(centre.numel())
    else:
        forward = key(centre, neighbour, shift)
        backward = key(neighbour, centre, -shift)
    order = torch.argsort(forward)
    position = torch.searchsorted(forward[order], backward).clamp(max=len(order) - 1)
    candidate = order[position]
    found = forward.index_select(0, candidate) == backward
    return torch.where(found, candidate, own)


class CHGNetBackbone(Backbone):
    """CHGNet's layers on tlmat graphs: per-atom features after the readout norm."""

    atomwise = True

    def __init__(self, config: CHGNetConfig):
        super().__init__()
        net = _chgnet(config)
        self.config = config
        self.embedding = CHGNetEmbedding(net)
        layers = zip(net.atom_conv_layers[:-1], net.bond_conv_layers, net.angle_layers, strict=True)
        self.interactions = nn.ModuleList(
            [CHGNetBlock(*layer) for layer in layers]
            + [CHGNetBlock(net.atom_conv_layers[-1], None, None)]
        )
        self.readout = net.readout_norm
        self.embedding_dim = config.atom_fea_dim

    @property
    def elements(self) -> list[int]:
        return ELEMENTS

    def _start(self, batch: Batch) -> tuple[BondGraph, dict[str, torch.Tensor | None]]:
        """The bond graph, and what the embedding makes of it: atom, bond and angle
        features and the bond weights of the two graphs (``angles`` is ``None`` for a
        batch without triplets)."""
        e = self.embedding
        g = BondGraph(batch)
        bond_basis = e.bond_basis_expansion
        basis_ag = bond_basis.rbf_expansion_ag(g.lengths)
        basis_bg = bond_basis.rbf_expansion_bg(g.lengths)
        has_angles = g.angles.numel() > 0
        angles = (
            e.angle_embedding(e.angle_basis_expansion.fourier_expansion(g.angles))
            if has_angles
            else None
        )
        return g, {
            "atoms": e.atom_embedding(batch.z - 1),  # chgnet's row 0 is hydrogen
            "bonds": e.bond_embedding(basis_ag),
            "angles": angles,
            "weights_ag": e.bond_weights_ag(basis_ag),
            "weights_bg": e.bond_weights_bg(basis_bg),
        }

    def _block(self, k: int, g: BondGraph, state: dict[str, torch.Tensor | None]) -> None:
        """Block ``k`` on ``state`` (updated in place); the order of operations is
        chgnet's ``CHGNet._compute``."""
        block = self.interactions[k]
        state["atoms"] = block.atom_conv(
            atom_feas=state["atoms"],
            bond_feas=state["bonds"],
            bond_weights=state["weights_ag"],
            atom_graph=g.atom_graph,
            directed2undirected=g.directed2undirected,
        )
        if state["angles"] is not None and block.bond_conv is not None:
            state["bonds"] = block.bond_conv(
                atom_feas=state["atoms"],
                bond_feas=state["bonds"],
                bond_weights=state["weights_bg"],
                angle_feas=state["angles"],
                bond_graph=g.bond_graph,
            )
            state["angles"] = block.angle_update(
                atom_feas=state["atoms"],
                bond_feas=state["bonds"],
                angle_feas=state["angles"],
                bond_graph=g.bond_graph,
            )

    def _atoms(self, batch: Batch) -> Iterator[tuple[str, torch.Tensor]]:
        """(group name, atom features) after the embedding and after each block."""
        g, state = self._start(batch)
        yield "embedding", state["atoms"]
        for k in range(len(self.interactions)):
            self._block(k, g, state)
            yield f"interactions.{k}", state["atoms"]

    def split_points(self) -> list[str]:
        """After any block but the last (atom, bond and angle features and the bond
        weights), and after the readout (the backbone's output)."""
        blocks = [f"interactions.{k}" for k in range(len(self.interactions) - 1)]
        return [*blocks, *super().split_points()]

    def state_after(self, batch: Batch, group: str) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        if not group.startswith("interactions."):
            return super().state_after(batch, group)
        g, state = self._start(batch)
        for k in range(int(group.split(".")[1]) + 1):
            self._block(k, g, state)
        bond_owner = batch.batch.index_select(0, g.atom_graph[g.undirected2directed, 0])
        owners = {"atoms": batch.batch, "angles": batch.batch.index_select(0, g.bond_graph[:, 0])}
        return {
            name: (values, owners.get(name, bond_owner))
            for name, values in state.items()
            if values is not None
        }

    def resume(self, batch: Batch, group: str, state: dict[str, torch.Tensor]) -> torch.Tensor:
        if not group.startswith("interactions."):
            return super().resume(batch, group, state)
        g = BondGraph(batch)
        state = {"angles": None, **state}
        for k in range(int(group.split(".")[1]) + 1, len(self.interactions)):
            self._block(k, g, state)
        return self.readout(state["atoms"])

    def forward(self, batch: Batch) -> torch.Tensor:
        *_, (_, atoms) = self._atoms(batch)
        return self.readout(atoms)

    def layer_features(
        self, batch: Batch, statistics: Sequence[str] = MEAN
    ) -> OrderedDict[str, torch.Tensor]:
        return pooled_layers(self._atoms(batch), batch, statistics)

    def reset_parameters(self) -> None:
        # chgnet's basis frequencies have no reset_parameters: take everything from a
        # freshly initialised chgnet model of the same size
        self.load_state_dict(CHGNetBackbone(self.config).state_dict())


def build_chgnet(config: CHGNetConfig) -> CrystalModel:
    """A CHGNet with random weights and its energy MLP as an atom-wise head."""
    backbone = CHGNetBackbone(config)
    head = Head(config.atom_fea_dim, list(config.mlp_hidden_dims), 1, config.non_linearity)
    return CrystalModel(backbone, head, config)


def _build(config: CHGNetConfig, state: Mapping[str, torch.Tensor] | None) -> CrystalModel:
    return build_chgnet(config)


#: chgnet's state-dict names → tlmat's, but the head's (the energy MLP ``mlp``): (start
#: of a name, its replacement); ``site_wise`` and ``composition_model`` are not part of
#: the network tlmat builds
RENAMES = (
    (rf"({'|'.join(CHGNetEmbedding.parts)})\.", r"backbone.embedding.\1."),
    (r"atom_conv_layers\.([^.]*)\.", r"backbone.interactions.\1.atom_conv."),
    (r"bond_conv_layers\.([^.]*)\.", r"backbone.interactions.\1.bond_conv."),
    (r"angle_layers\.([^.]*)\.", r"backbone.interactions.\1.angle_update."),
    (r"readout_norm\.", "backbone.readout."),
)


def tlmat_names(state: Mapping[str, torch.Tensor]) -> dict[str, str]:
    """chgnet's state-dict names → tlmat's (``site_wise`` and ``composition_model`` are
    not part of the network tlmat builds)."""
    return published_names(state, "mlp", RENAMES)


def weights_path(version: str) -> Path:
    """The weights' file of a CHGNet version inside the installed ``chgnet`` package."""
    return packaged_weights("chgnet", WEIGHTS, version, "CHGNet version", f"chgnet/{version}")


def read_weights(version: str) -> dict[str, Any]:
    """The stored weights of a CHGNet version, after checking their SHA-256, read with
    ``torch.load(weights_only=True)`` (tensors and plain containers: nothing unpickled)."""
    from tlmat.models.checkpoint import read_published_weights

    file, checksum = weights_path(version), WEIGHTS[version][1]
    return read_published_weights(file, checksum, f"CHGNet {version} weights")


def load_published(version: str = "0.3.0") -> TrainedModel:
    """CHGNet's published weights as a tlmat model whose target is the total energy
    (eV/cell): atom contributions summed, plus CHGNet's per-element reference energies."""
    from tlmat.models.checkpoint import load_state

    description = published_source("CHGNet", version, PUBLISHED)
    stored = read_weights(version)["model"]
    relative, checksum = WEIGHTS[version]
    path = f"chgnet/{relative}"
    arguments = stored["model_args"]
    supported = {"mlp_first": True, "update_bond": True, "update_angle": True}
    config = checked_config(CHGNetConfig, arguments, supported, path, "CHGNet")
    state = stored["state_dict"]
    names = tlmat_names(state)
    model = build_chgnet(config)
    load_state(model, {names[k]: v for k, v in state.items() if k in names}, path)
    references = state["composition_model.fc.weight"].flatten().double()
    target = TargetSpec(
        name="energy",
        unit="eV/cell",
        extensive=True,
        normalization="none",
        atom_refs={z: float(references[z - 1]) for z in ELEMENTS},
    )
    provenance = {
        "source": f"chgnet/{version}",
        "description": description,
        "weights": path,
        "sha256": checksum,
        "package_version": package_version("chgnet"),
    }
    return TrainedModel(model, target, provenance)


ARCHITECTURE = Architecture(
    name="chgnet",
    config=CHGNetConfig,
    build=_build,
    summary=(
        "foundation model (MPtrj): atom, bond and angle convolutions on all pairs within "
        "6 Å and bonds within 3 Å; atom-wise readout"
    ),
    reference="Deng et al., Nat. Mach. Intell. 5, 1031 (2023); chgnet package",
    presets={
        # for tests and quick looks
        "chgnet-small": {
            "atom_fea_dim": 16,
            "bond_fea_dim": 16,
            "angle_fea_dim": 16,
            "num_radial": 7,
            "num_angular": 7,
            "n_conv": 2,
            "atom_conv_hidden_dim": 16,
            "bond_conv_hidden_dim": 16,
            "mlp_hidden_dims": [16],
            "atom_graph_cutoff": 5.0,
        },
    },
    sources=packaged_sources(
        "chgnet",
        "chgnet",
        WEIGHTS,
        {version: (version, what) for version, what in PUBLISHED.items()},
    ),
    load_source=load_published,
    foundation=True,
    package="chgnet",
)
