"""M3GNet (Chen & Ong, Nat. Comput. Sci. 2, 718, 2022) as a transferable backbone: matgl's
M3GNet formation-energy model (Materials Project 2018.6.1, 89 elements), with its
published weights, under tlmat's model contract.

The layers are the ``matgl`` package's own PyTorch Geometric modules (matgl ≥ 4.1,
``pip install 'tlmat[foundation]'``); tlmat feeds them its cached graphs and names their
parameter groups in forward order:

- ``embedding``: the element embedding and the edge embedding (an MLP of the radial
  basis); the fixed bases themselves (spherical Bessel functions of the bond length, and
  their products with spherical harmonics of the bond angle for the three-body terms)
  have no parameters;
- ``interactions.0`` … ``interactions.{nblocks-1}``: a three-body interaction (the bond
  update from the angles to the neighbours within the three-body cutoff) then a graph
  convolution (gated edge and atom updates);
- ``readout``: the crystal readout (Set2Set of the atom features for the published
  model): :meth:`CrystalModel.embed` gives its output;
- ``head``: tlmat's :class:`Head` holding matgl's final MLP (2·64 → 64 → 64 → 1, swish).

Graphs. M3GNet's graph is every neighbour within ``cutoff`` (5 Å) and its three-body line
graph the ordered pairs of distinct bonds i→j, i→k that share their centre i, both no
longer than ``threebody_cutoff`` (5 Å in the published model; matgl's default is 4 Å):
exactly tlmat's graph with ``max_neighbors=None`` and a line graph cut at
``threebody_cutoff``, built once and cached. matgl's ``edge_index`` is (centre, neighbour)
and its bond vector r_j + S·cell − r_i, tlmat's (neighbour, centre) with the same vector:
the index is flipped, the vector kept; the angles, bases and cutoff weights come from
matgl's own functions.

Where the atom messages go (``node_aggregation``). The published weights were trained
with matgl's DGL code (2023), whose graph convolution sums each edge's message
φ(v_src, v_dst, e) into the edge's *destination* atom; matgl ≥ 4 (PyG) sums it into the
*source* atom. On matgl's symmetric graphs the two differ (the roles of the two atoms in
φ swap), and matgl 4's own forward with these weights is far off: on 300 Materials
Project crystals (mp_cgcnn_36k) its formation energies miss MP's by 0.42 eV/atom on
average (median 0.18), against 0.066 (median 0.015) with the destination sum.
``"destination"`` (the default, the convention the weights were trained with) runs
matgl's convolution modules with the sum into the destination atom; ``"source"`` runs
matgl 4's block as it is (and gives matgl 4's own predictions).

Which bond of a pair brings the neighbour (``three_body_bond``). The three-body update
of a bond i→j sums, over the other bonds i→k of its centre, the basis of the angle jik
and of one bond's length times σ(W·v) of that bond's far atom, weighted by
f_c(r_ij)·f_c(r_ik). matgl ≥ 0.8.4 (and matgl 4, and the M3GNet paper's Eq. 2) take the
length and the atom from the partner bond i→k (r_ik, v_k). The published weights were
uploaded on 2023-07-28 (matgl commit 0bab0b17), when ``matgl/graph/compute.py``
enumerated each centre's bond pairs with ``torch.meshgrid(r, r)`` (``indexing="ij"``,
torch's default) and ``c = torch.stack([y.ravel(), x.ravel()], dim=1)``: the line-graph
edges (src bond, dst bond) come grouped by their *destination* bond, while
``ThreeBodyInteractions`` summed them in consecutive blocks of ``n_triple_ij``
(``segment_ids=get_segment_indices_from_n(line_graph.ndata["n_triple_ij"])``) and took
the atom and the length from the destination bond too
(``end_atom_index = torch.gather(graph.edges()[1], 0, line_graph.edges()[1])``,
``"triple_bond_lengths": edges.dst["bond_dist"]``). So with these weights bond i→j
receives Σ_k basis(r_ij, θ_jik)·σ(W·v_j)·f_c(r_ij)·f_c(r_ik): the length and atom of the
*receiving* bond itself. matgl switched to ``np.meshgrid(…, indexing="xy")`` on
2023-08-28 (commit 0b408105, "fix the np.meshgrid", matgl 0.8.4) without retraining this model.
``"receiving"`` (the default) runs that sum with matgl's own sub-networks
(``update_network_atom``, ``update_network_bond``); ``"partner"`` runs matgl 4's
``ThreeBodyInteractions`` as it is. On the same 300 crystals the published model's mean
(median) error is 0.066 (0.015) eV/atom with "partner" and 0.024 (0.010) with
"receiving" (published test MAE 0.019); the difference is largest for crystals of light
elements with many short bonds: Li(CN)2 (mp-1001079) is off by 1.19 eV/atom with
"partner" and right within 0.01 with "receiving", H2CO3 by 0.57 and Si(CO)2 by 0.43.

Published weights (:func:`load_published`, name ``m3gnet/mp-2018.6.1-eform``): matgl's
``M3GNet-MP-2018.6.1-Eform`` folder, read as :mod:`tlmat.models.matgl` describes (no
matgl class unpickled). matgl ≥ 4 names the Set2Set's LSTM ``readout.lstm``; the DGL-era
file has ``readout.set2set.lstm``, mapped here (which is also why ``matgl.load_model``
refuses the folder). The target is the formation energy in eV/atom (intensive), with the
published model's normalisation (mean −1.655, std 1.073 eV/atom from ``model.pt``).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn
from torch_geometric.data import Batch
from torch_geometric.utils import scatter

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

#: the published models, by version
PUBLISHED: dict[str, MatGLSource] = {
    "mp-2018.6.1-eform": MatGLSource(
        folder="M3GNet-MP-2018.6.1-Eform",
        description=(
            "matgl M3GNet: formation energy per atom of Materials Project 2018.6.1 "
            "(62,315 crystals; test MAE 0.019 eV/atom)"
        ),
        target="formation_energy_per_atom",
        unit="eV/atom",
        sha256={
            "model.json": "a99ca70012706a09434617a793556bbd100423dafaa9f9ebb8708fd20e226575",
            "model.pt": "d4d6a8b5c871fff515db4948ea7439d8c7825a9ee3240567afeedabadd686b58",
            "state.pt": "166d4dba4aadbc5feb27e8aa047145facbcdadb9c5de067768e00515be3b3c1f",
        },
    ),
}

ThreeBodyBond = Literal["receiving", "partner"]


class M3GNetConfig(ModelConfig):
    """M3GNet hyperparameters; names are matgl's, defaults those of the published
    formation-energy model."""

    architecture = "m3gnet"

    dim_node_embedding: int = Field(64, ge=1)
    dim_edge_embedding: int = Field(64, ge=1)
    units: int = Field(64, ge=1)  # width of the gated MLPs and of the final MLP
    max_n: int = Field(3, ge=1)  # radial functions
    max_l: int = Field(3, ge=1)  # angular functions
    nblocks: int = Field(3, ge=1)
    cutoff: float = Field(5.0, gt=0)  # Å, the atom graph
    threebody_cutoff: float = Field(5.0, gt=0)  # Å, bonds in the three-body terms
    readout_type: Literal["set2set", "weighted_atom", "reduce_atom"] = "set2set"
    niters_set2set: int = Field(3, ge=1)
    nlayers_set2set: int = Field(3, ge=1)
    activation_type: Literal["swish", "softplus2"] = "swish"
    #: where atom messages are summed: "destination" (matgl's DGL code, with which the
    #: published weights were trained) or "source" (matgl ≥ 4); see the module docstring
    node_aggregation: Aggregation = "destination"
    #: which bond of each three-body pair brings the length and the neighbour atom:
    #: "receiving" (matgl's code of July 2023, with which the published weights were
    #: trained) or "partner" (matgl ≥ 0.8.4 and 4); see the module docstring
    three_body_bond: ThreeBodyBond = "receiving"

    def graph_settings(self) -> GraphSettings:
        return all_neighbours(self.cutoff, self.threebody_cutoff)


class M3GNetEmbedding(NetworkPart):
    """Element embedding and edge embedding (``embedding``)."""

    parts = ("embedding",)


class M3GNetInteraction(nn.Module):
    """A three-body bond update, then a graph convolution (``interactions.k``)."""

    def __init__(self, three_body: nn.Module, block: nn.Module):
        super().__init__()
        self.three_body = three_body
        self.block = block


def _convolve_to_destination(
    conv: Any, edge_index: torch.Tensor, edges: torch.Tensor, atoms: torch.Tensor, rbf: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """matgl's M3GNet graph convolution (no state) with each edge's atom message summed
    into its destination atom, as matgl's DGL code did (matgl 4 sums into the source)."""
    edges = edges + conv.edge_update_(edge_index, edges, atoms, rbf, None)
    source, destination = edge_index
    inputs = torch.hstack([atoms[source], atoms[destination], edges])
    message = conv.node_update_func(inputs) * conv.node_weight_func(rbf)
    atoms = atoms + scatter(message, destination, dim=0, dim_size=atoms.shape[0], reduce="sum")
    return edges, atoms


def _three_body_on_receiving_bond(
    three_body: Any,
    neighbour: torch.Tensor,
    line: torch.Tensor,
    n_bonds: int,
    basis: torch.Tensor,
    cutoff: torch.Tensor,
    atoms: torch.Tensor,
    edges: torch.Tensor,
) -> torch.Tensor:
    """matgl's three-body bond update (its ``update_network_atom`` and
    ``update_network_bond``) as matgl's code computed it when the published weights were
    trained: each pair (i→j, i→k) adds basis(r_ij, θ_jik)·σ(W·v_j)·f_c(r_ij)·f_c(r_ik) to
    bond i→j, the length and atom of the receiving bond (matgl 4 takes r_ik and v_k);
    ``basis`` holds the receiving bonds' lengths."""
    receiving, partner = line
    weights = cutoff[receiving] * cutoff[partner]
    terms = basis * three_body.update_network_atom(atoms)[neighbour[receiving]] * weights[:, None]
    update = scatter(terms, receiving, dim=0, dim_size=n_bonds, reduce="sum")
    return edges + three_body.update_network_bond(update)


class M3GNetBackbone(MatGLBackbone):
    """matgl's M3GNet layers on tlmat graphs: the crystal readout's output."""

    # a three-body pair is a few scalar products, not a convolution: counted as an edge,
    # validation batches of perovskites were 2–11 graphs and ran at 0.7–0.9× the speed
    # of 64 (4 and 5 Å three-body cutoffs, 1,900 and 8,300 pairs a structure)
    pair_cost = 0.05

    def __init__(self, config: M3GNetConfig):
        super().__init__()
        tlmat_only = {"node_aggregation", "three_body_bond"}
        net = self._matgl_network("M3GNet", config, tlmat_only, rbf_type="SphericalBessel")
        self.config = config
        # fixed bases: buffers only, in no parameter group
        self.bond_expansion = net.bond_expansion
        self.basis_expansion = net.basis_expansion
        self.embedding = M3GNetEmbedding(net)
        self.interactions = nn.ModuleList(
            [
                M3GNetInteraction(three_body, block)
                for three_body, block in zip(
                    net.three_body_interactions, net.graph_layers, strict=True
                )
            ]
        )
        self.readout = net.readout
        self._take_output_mlp(net.final_layer)

    def _atoms(self, batch: Batch) -> Iterator[tuple[str, torch.Tensor]]:
        """(group name, atom features) after the embedding and after each block; the
        order of operations is matgl's ``M3GNet.forward``."""
        from matgl.graph._compute import compute_theta_and_phi
        from matgl.utils.cutoff import polynomial_cutoff

        neighbour, centre = batch.edge_index
        edge_index = torch.stack([centre, neighbour])  # matgl: (source, destination)
        n_atoms, n_bonds = batch.num_nodes, centre.numel()
        n_crystals = batch.ptr.numel() - 1
        node_batch = batch.batch
        edge_batch = node_batch.index_select(0, centre)
        vectors, lengths = batch.edge_vec, batch.edge_dist
        line = batch.line_index  # (receiving bond i→j, partner bond i→k)
        receiving = self.config.three_body_bond == "receiving"
        rbf = self.bond_expansion(lengths)
        # the basis's bond length is that of the line's second row: the partner's for
        # matgl 4, the receiving bond's as the weights were trained
        angles = compute_theta_and_phi(vectors, lengths, line.flip(0) if receiving else line)
        three_basis = self.basis_expansion(
            angles["triple_bond_lengths"], angles["cos_theta"], angles["phi"]
        )
        three_cutoff = polynomial_cutoff(lengths, self.config.threebody_cutoff)
        triples = torch.bincount(line[0], minlength=n_bonds)
        types = self._types(batch.z)
        atoms, edges, _ = self.embedding.embedding(types, rbf, None)
        yield "embedding", atoms
        for k, interaction in enumerate(self.interactions):
            if receiving:
                edges = _three_body_on_receiving_bond(
                    interaction.three_body,
                    neighbour,
                    line,
                    n_bonds,
                    three_basis,
                    three_cutoff,
                    atoms,
                    edges,
                )
            else:
                edges = interaction.three_body(
                    neighbour, line, triples, n_bonds, three_basis, three_cutoff, atoms, edges
                )
            if self.config.node_aggregation == "source":
                edges, atoms, _ = interaction.block(
                    edge_index, edges, atoms, None, rbf, node_batch, edge_batch, n_atoms, n_crystals
                )
            else:
                edges, atoms = _convolve_to_destination(
                    interaction.block.conv, edge_index, edges, atoms, rbf
                )
            yield f"interactions.{k}", atoms

    def forward(self, batch: Batch) -> torch.Tensor:
        *_, (_, atoms) = self._atoms(batch)
        return self.readout(atoms, batch.batch)

    def layer_features(
        self, batch: Batch, statistics: Sequence[str] = MEAN
    ) -> OrderedDict[str, torch.Tensor]:
        return pooled_layers(self._atoms(batch), batch, statistics)


def build_m3gnet(config: M3GNetConfig) -> CrystalModel:
    """An M3GNet with random weights and matgl's final MLP as a crystal-level head."""
    return M3GNetBackbone(config).with_head()


def _build(config: M3GNetConfig, state: Mapping[str, torch.Tensor] | None) -> CrystalModel:
    return build_m3gnet(config)


#: matgl's M3GNet state-dict names (DGL-era or matgl ≥ 4) → tlmat's, but the head's:
#: (start of a name, its replacement)
RENAMES = (
    (r"(bond_expansion|basis_expansion)\.", r"backbone.\1."),
    (r"embedding\.", "backbone.embedding.embedding."),
    (r"three_body_interactions\.([^.]*)\.", r"backbone.interactions.\1.three_body."),
    (r"graph_layers\.([^.]*)\.", r"backbone.interactions.\1.block."),
    # DGL-era matgl wrapped DGL's Set2Set as readout.set2set; matgl ≥ 4 is PyG's
    (r"readout\.(set2set\.)?", "backbone.readout."),
)


def tlmat_names(state: Mapping[str, torch.Tensor]) -> dict[str, str]:
    """matgl's M3GNet state-dict names (DGL-era or matgl ≥ 4) → tlmat's."""
    return published_names(state, "final_layer", RENAMES)


def config_from_arguments(arguments: Mapping[str, Any], where: str) -> M3GNetConfig:
    """The tlmat config of matgl's M3GNet constructor arguments (model.json)."""
    supported = {
        "is_intensive": True,
        "include_state": False,
        "task_type": "regression",
        "field": "node_feat",
        "rbf_type": "SphericalBessel",
        "use_smooth": False,
        "use_phi": False,
        "ntargets": 1,
        "dropout": None,
    }
    return checked_config(M3GNetConfig, arguments, supported, where, "M3GNet")


def load_published(
    version: str = "mp-2018.6.1-eform",
    node_aggregation: Aggregation = "destination",
    three_body_bond: ThreeBodyBond = "receiving",
) -> TrainedModel:
    """matgl's published M3GNet as a tlmat model predicting its published target; the
    defaults run it as its weights were trained (``node_aggregation="source"`` with
    ``three_body_bond="partner"`` is matgl 4's own forward)."""
    source = source_of("M3GNet", version, PUBLISHED)
    files = read_published(source)
    config = config_from_arguments(files.init_args, str(files.folder / "model.json"))
    settings = {"node_aggregation": node_aggregation, "three_body_bond": three_body_bond}
    model = build_m3gnet(config.model_copy(update=settings))
    names = tlmat_names(files.state)
    return trained_from_published("m3gnet", version, source, files, model, names, settings)


ARCHITECTURE = Architecture(
    name="m3gnet",
    config=M3GNetConfig,
    build=_build,
    summary=(
        "foundation model (MP 2018 formation energies): three-body bond updates and gated "
        "graph convolutions on all pairs within 5 Å; Set2Set readout"
    ),
    reference="Chen & Ong, Nat. Comput. Sci. 2, 718 (2022); matgl package",
    presets={
        # for tests and quick looks
        "m3gnet-small": {
            "dim_node_embedding": 16,
            "dim_edge_embedding": 16,
            "units": 16,
            "max_n": 2,
            "max_l": 2,
            "nblocks": 2,
            "cutoff": 4.0,
            "threebody_cutoff": 3.0,
            "niters_set2set": 2,
            "nlayers_set2set": 1,
        },
    },
    sources=matgl_sources("m3gnet", PUBLISHED),
    load_source=load_published,
    foundation=True,
    package="matgl",
)
