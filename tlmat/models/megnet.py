"""MEGNet (Chen et al., Chem. Mater. 31, 3564, 2019) as a transferable backbone: matgl's
MEGNet formation-energy model (Materials Project 2018.6.1) and its multi-fidelity band-gap
model (Materials Project 2019.4.1; Chen et al., Nat. Comput. Sci. 1, 46, 2021), with
their published weights, under tlmat's model contract.

The layers are the ``matgl`` package's own PyTorch Geometric modules (matgl ≥ 4.1,
``pip install 'tlmat[foundation]'``); tlmat feeds them its cached graphs and names their
parameter groups in forward order:

- ``embedding``: the element embedding (and the fidelity embedding of the band-gap
  model), then the input MLPs of the atom, bond and state features; the Gaussian
  expansion of the bond length (centres 0 … cutoff + 1 Å, width 0.5) is fixed (a buffer
  here, as matgl never trains it) and in no group;
- ``interactions.0`` … ``interactions.{nblocks-1}``: matgl's MEGNet blocks (dense
  layers, then the bond, atom and state updates, with a skip connection);
- ``readout``: the Set2Set readouts of the atoms and of the bonds;
  :meth:`CrystalModel.embed` gives them with the state: (2 + 2 + 1) × 32 = 160 numbers;
- ``head``: tlmat's :class:`Head` holding matgl's output MLP (160 → 32 → 16 → 1,
  softplus − ln 2).

Graphs. MEGNet's graph is every neighbour within ``cutoff`` (4 Å for the formation-energy
model, 5 Å for the band-gap model; model.json), no line graph: tlmat's graph with
``max_neighbors=None``. matgl's ``edge_index`` is (centre, neighbour), tlmat's
(neighbour, centre): flipped. Structures with an atom that has no neighbour within the
cutoff have no graph (tlmat's data layer reports and skips them; matgl gives NaN).

The state (MEGNet's global features). The formation-energy model has no state input:
matgl feeds the constant [0, 0], as here (``dim_state_embedding`` zeros). The band-gap
model embeds the fidelity of the band gap it predicts (``ntypes_state`` = 4): config field
``fidelity``, 0 = PBE (the default), 1 = GLLB-SC, 2 = HSE, 3 = SCAN.

Where the atom messages go (``node_aggregation``): as for M3GNet
(:mod:`tlmat.models.m3gnet`), the published weights were trained with matgl's DGL code,
which averages the bond messages into each bond's destination atom, while matgl ≥ 4
averages them into the source atom. ``"destination"`` (default) gives the published
models' accuracy: on 300 Materials Project crystals (mp_cgcnn_36k) the formation energies
miss MP's by 0.027 eV/atom on average, against 0.230 with matgl 4's forward (PBE band
gaps: 0.22 against 0.27 eV); ``"source"`` runs matgl 4's block as it is.

Published weights (:func:`load_published`, names ``megnet/mp-2018.6.1-eform`` and
``megnet/mp-2019.4.1-bandgap``): matgl's ``MEGNet-MP-2018.6.1-Eform`` and
``MEGNet-MP-2019.4.1-BandGap-mfi`` folders, read as :mod:`tlmat.models.matgl` describes (no
matgl class unpickled); their state-dict names are matgl ≥ 4's. Targets: the formation
energy in eV/atom and the band gap in eV (both intensive), with the published models'
normalisation (``model.pt``).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal

import torch
from pydantic import Field, model_validator
from torch import nn
from torch_geometric.data import Batch

from tlmat.graphs.settings import GraphSettings
from tlmat.models.base import CrystalModel, ModelConfig, TrainedModel
from tlmat.models.foundation import NetworkPart, all_neighbours, matgl_sources, published_names
from tlmat.models.foundation import config_from_arguments as checked_config
from tlmat.models.foundation import published_source as source_of
from tlmat.models.matgl import (
    Aggregation,
    MatGLBackbone,
    MatGLSource,
    read_published,
    trained_from_published,
)
from tlmat.models.pooling import MEAN, pooled_layers
from tlmat.models.registry import Architecture

#: the fidelities of the multi-fidelity band-gap model, in the order of its state embedding
FIDELITIES = ("PBE", "GLLB-SC", "HSE", "SCAN")

#: the published models, by version
PUBLISHED: dict[str, MatGLSource] = {
    "mp-2018.6.1-eform": MatGLSource(
        folder="MEGNet-MP-2018.6.1-Eform",
        description=(
            "matgl MEGNet: formation energy per atom of Materials Project 2018.6.1 "
            "(62,315 crystals; test MAE 0.028 eV/atom)"
        ),
        target="formation_energy_per_atom",
        unit="eV/atom",
        sha256={
            "model.json": "d858219134667d55e3c183435475ba248231a67311573373ed7298191f05d0a4",
            "model.pt": "2cafe3234e3ab5987f22b6d2cb6be15a68121046571129ace5ed3fcad1c19624",
            "state.pt": "35381368b17a2783f9ee09af5556cf1d84b74bf786b82d3fadd4acb38c51d040",
        },
    ),
    "mp-2019.4.1-bandgap": MatGLSource(
        folder="MEGNet-MP-2019.4.1-BandGap-mfi",
        description=(
            "matgl multi-fidelity MEGNet: band gaps of Materials Project 2019.4.1 at four "
            "fidelities (0 PBE, 1 GLLB-SC, 2 HSE, 3 SCAN; validation MAE 0.31 eV)"
        ),
        target="band_gap",
        unit="eV",
        sha256={
            "model.json": "9f8f4b8709e97c6ce25353f6b6c322ce3b5e031c71115cf6b94d5cd794f39bc2",
            "model.pt": "2bf11f0548fc3c0d52718d9f4ca4ccd40c2b6c831b9d5e2c249e5270257eb201",
            "state.pt": "2927ab9646ec3e099a3e42b1358a3c477db7356e2413bfa540fe0106cde628f9",
        },
    ),
}


class MEGNetConfig(ModelConfig):
    """MEGNet hyperparameters; names are matgl's, defaults those of the published
    formation-energy model."""

    architecture = "megnet"

    dim_node_embedding: int = Field(16, ge=1)
    dim_edge_embedding: int = Field(100, ge=1)  # Gaussians of the bond length
    dim_state_embedding: int = Field(2, ge=1)
    #: number of fidelities the state embeds (band-gap model: 4); None: no state input
    #: (the constant zeros matgl feeds)
    ntypes_state: int | None = Field(None, ge=1)
    #: the fidelity predicted, with ``ntypes_state``: 0 PBE, 1 GLLB-SC, 2 HSE, 3 SCAN
    fidelity: int = Field(0, ge=0)
    nblocks: int = Field(3, ge=1)
    hidden_layer_sizes_input: list[int] = Field(default_factory=lambda: [64, 32])
    hidden_layer_sizes_conv: list[int] = Field(default_factory=lambda: [64, 64, 32])
    hidden_layer_sizes_output: list[int] = Field(default_factory=lambda: [32, 16])
    nlayers_set2set: int = Field(1, ge=1)
    niters_set2set: int = Field(2, ge=1)
    activation_type: Literal["softplus2", "swish"] = "softplus2"
    cutoff: float = Field(4.0, gt=0)  # Å
    gauss_width: float = Field(0.5, gt=0)  # Å
    #: where bond messages are averaged: "destination" (matgl's DGL code, with which the
    #: published weights were trained) or "source" (matgl ≥ 4); see the module docstring
    node_aggregation: Aggregation = "destination"

    @model_validator(mode="after")
    def _fidelity_known(self) -> MEGNetConfig:
        if self.fidelity >= (self.ntypes_state or 1):
            raise ValueError(
                f"fidelity {self.fidelity}: the model embeds {self.ntypes_state or 'no'} "
                "fidelities (band-gap model: 0 PBE, 1 GLLB-SC, 2 HSE, 3 SCAN)"
            )
        return self

    def graph_settings(self) -> GraphSettings:
        return all_neighbours(self.cutoff)


class MEGNetEmbedding(NetworkPart):
    """Element (and fidelity) embedding and the input MLPs (``embedding``)."""

    parts = ("embedding", "edge_encoder", "node_encoder", "state_encoder")


class MEGNetReadout(NetworkPart):
    """Set2Set of the atoms and of the bonds (``readout``)."""

    parts = ("node_s2s", "edge_s2s")


def _fixed(expansion: nn.Module) -> nn.Module:
    """matgl's Gaussian expansion with its (never trained) centres as a buffer, so no
    transfer strategy unfreezes them."""
    rbf = expansion.rbf
    centres = rbf.centers.detach().clone()
    del rbf.centers
    rbf.register_buffer("centers", centres)
    return expansion


class MEGNetBackbone(MatGLBackbone):
    """matgl's MEGNet layers on tlmat graphs: the readouts' output with the state."""

    def __init__(self, config: MEGNetConfig):
        super().__init__()
        tlmat_only = {"node_aggregation", "fidelity"}
        net = self._matgl_network("MEGNet", config, tlmat_only, include_state=True, dropout=None)
        self.config = config
        self.bond_expansion = _fixed(net.bond_expansion)
        self.embedding = MEGNetEmbedding(net)
        self.interactions = net.blocks
        self.readout = MEGNetReadout(net)
        self._take_output_mlp(net.output_proj)

    def _state(self, n_crystals: int, like: torch.Tensor) -> torch.Tensor:
        if self.config.ntypes_state:
            return torch.full((n_crystals,), self.config.fidelity, device=like.device)
        return like.new_zeros(n_crystals, self.config.dim_state_embedding)

    def _features(
        self, batch: Batch
    ) -> Iterator[tuple[str, torch.Tensor, torch.Tensor, torch.Tensor]]:
        """(group name, atom, bond and state features) after the embedding and after each
        block; the order of operations is matgl's ``MEGNet.forward``."""
        neighbour, centre = batch.edge_index
        edge_index = torch.stack([centre, neighbour])  # matgl: (source, destination)
        # the index whose first row says where a bond's message is averaged
        gather = edge_index if self.config.node_aggregation == "source" else batch.edge_index
        n_atoms, n_crystals = batch.num_nodes, batch.ptr.numel() - 1
        node_batch = batch.batch
        edge_batch = node_batch.index_select(0, centre)
        e = self.embedding
        types = self._types(batch.z)
        expanded = self.bond_expansion(batch.edge_dist)
        atoms, bonds, state = e.embedding(types, expanded, self._state(n_crystals, expanded))
        bonds, atoms, state = e.edge_encoder(bonds), e.node_encoder(atoms), e.state_encoder(state)
        yield "embedding", atoms, bonds, state
        for k, block in enumerate(self.interactions):
            if self.config.node_aggregation == "source":
                bonds, atoms, state = block(
                    edge_index, bonds, atoms, state, node_batch, edge_batch, n_atoms, n_crystals
                )
            else:
                inputs = bonds, atoms, state
                bonds, atoms, state = (
                    block.edge_func(bonds),
                    block.node_func(atoms),
                    block.state_func(state),
                )
                conv = block.conv
                bonds = conv.edge_update_(edge_index, bonds, atoms, state[edge_batch])
                atoms = conv.node_update_(gather, bonds, atoms, state[node_batch], n_atoms)
                state = conv.state_update_(bonds, atoms, state, edge_batch, node_batch, n_crystals)
                state = state.reshape(n_crystals, -1)
                if block.skip:
                    bonds, atoms, state = bonds + inputs[0], atoms + inputs[1], state + inputs[2]
            state = state.reshape(n_crystals, -1)
            yield f"interactions.{k}", atoms, bonds, state

    def forward(self, batch: Batch) -> torch.Tensor:
        *_, (_, atoms, bonds, state) = self._features(batch)
        n_crystals = batch.ptr.numel() - 1
        edge_batch = batch.batch.index_select(0, batch.edge_index[1])
        r = self.readout
        return torch.cat(
            [
                r.node_s2s(atoms, batch.batch).reshape(n_crystals, -1),
                r.edge_s2s(bonds, edge_batch, num_graphs=n_crystals).reshape(n_crystals, -1),
                state.reshape(n_crystals, -1),
            ],
            dim=-1,
        )

    def layer_features(
        self, batch: Batch, statistics: Sequence[str] = MEAN
    ) -> OrderedDict[str, torch.Tensor]:
        atoms = ((name, atoms) for name, atoms, _, _ in self._features(batch))
        return pooled_layers(atoms, batch, statistics)


def build_megnet(config: MEGNetConfig) -> CrystalModel:
    """A MEGNet with random weights and matgl's output MLP as a crystal-level head."""
    return MEGNetBackbone(config).with_head()


def _build(config: MEGNetConfig, state: Mapping[str, torch.Tensor] | None) -> CrystalModel:
    return build_megnet(config)


#: matgl's MEGNet state-dict names → tlmat's, but the head's: (start of a name, its
#: replacement)
RENAMES = (
    (r"bond_expansion\.", "backbone.bond_expansion."),
    (r"(embedding|edge_encoder|node_encoder|state_encoder)\.", r"backbone.embedding.\1."),
    (r"blocks\.", "backbone.interactions."),
    (r"(node_s2s|edge_s2s)\.", r"backbone.readout.\1."),
)


def tlmat_names(state: Mapping[str, torch.Tensor]) -> dict[str, str]:
    """matgl's MEGNet state-dict names → tlmat's."""
    return published_names(state, "output_proj", RENAMES)


def config_from_arguments(arguments: Mapping[str, Any], where: str) -> MEGNetConfig:
    """The tlmat config of matgl's MEGNet constructor arguments (model.json)."""
    from tlmat.models.checkpoint import CheckpointError

    if arguments.get("dropout"):  # None or 0: no dropout
        raise CheckpointError(f"{where}: MEGNet with dropout is not supported")
    supported = {
        "include_state": True,
        "is_classification": False,
        "graph_transformations": None,
        "bond_expansion": None,
    }
    return checked_config(MEGNetConfig, arguments, supported, where, "MEGNet")


def load_published(
    version: str = "mp-2018.6.1-eform",
    fidelity: int = 0,
    node_aggregation: Aggregation = "destination",
) -> TrainedModel:
    """matgl's published MEGNet as a tlmat model predicting its published target;
    ``fidelity`` (band-gap model): 0 PBE, 1 GLLB-SC, 2 HSE, 3 SCAN."""
    source = source_of("MEGNet", version, PUBLISHED)
    files = read_published(source)
    config = config_from_arguments(files.init_args, str(files.folder / "model.json"))
    try:
        config = MEGNetConfig(
            **{**config.model_dump(), "fidelity": fidelity, "node_aggregation": node_aggregation}
        )
    except ValueError as error:
        raise ValueError(f"megnet/{version}: {error}") from None
    settings: dict[str, Any] = {"node_aggregation": node_aggregation}
    if config.ntypes_state:
        settings["fidelity"] = FIDELITIES[fidelity] if fidelity < len(FIDELITIES) else fidelity
    model, names = build_megnet(config), tlmat_names(files.state)
    return trained_from_published("megnet", version, source, files, model, names, settings)


ARCHITECTURE = Architecture(
    name="megnet",
    config=MEGNetConfig,
    build=_build,
    summary=(
        "foundation model (MP formation energies; multi-fidelity band gaps): graph network "
        "blocks updating bonds, atoms and a global state on all pairs within 4–5 Å; "
        "Set2Set readouts"
    ),
    reference="Chen et al., Chem. Mater. 31, 3564 (2019); matgl package",
    presets={
        # for tests and quick looks
        "megnet-small": {
            "dim_node_embedding": 16,
            "dim_edge_embedding": 32,
            "nblocks": 2,
            "hidden_layer_sizes_input": [32, 16],
            "hidden_layer_sizes_conv": [32, 16],
            "hidden_layer_sizes_output": [16],
            "cutoff": 4.0,
        },
    },
    sources=matgl_sources("megnet", PUBLISHED),
    load_source=load_published,
    foundation=True,
    package="matgl",
)
