"""tlmat's ALIGNN against alignn's own pure-PyTorch model, on real crystals.

Reference: ``alignn.models.alignn_atomwise_pure.ALIGNNAtomWisePure`` (alignn's DGL-free
ALIGNN, config ``alignn_atomwise_pure``, ``atom_input_features=92``, no forces), on graphs
from ``alignn.torch_graph_builder.build_pure_torch_graph`` (12 nearest neighbours within
8 Å, its line graph, CGCNN atom features). Its weights, randomised, are copied into
tlmat's model through the name map below, and its ``out`` (mean-pooled atoms → ``fc``) is
compared with tlmat's prediction.

Why tlmat's model is fed alignn's graph for the exact comparison: the two libraries build
different graphs of the same crystal (the model itself reads only indices and runs on
either).

- Orientation. alignn's edges run from the centre atom to each of its 12 nearest
  neighbours (``r`` = neighbour − centre), so an atom aggregates messages from the atoms
  that count it among *their* nearest (6–18 of them here). tlmat's run from the neighbour
  to the centre (``edge_vec`` = neighbour − centre, the same vectors), so an atom
  aggregates over its own 12 nearest, as in CGCNN.
- Line graph. alignn joins bond A = (u → v) to every bond B = (v → w) leaving v
  (``cos = −r_A·r_B``, the angle u–v–w at v), backtracking pairs included (w = u:
  cos = 1); it has Σ_v in(v)·out(v) pairs. tlmat joins every two distinct bonds of one
  centre atom i (the angle j–i–k at i, no backtracking), Σ_i d_i(d_i − 1) pairs.
- Ties. Both keep the 12 nearest; neighbours at exactly the 12th distance are chosen
  differently (pymatgen's search order vs ``torch.argsort``).

So three comparisons: tlmat's model on alignn's graph (exact, all 20 crystals, layer and
batch normalisation); tlmat's model on tlmat's *own* neighbour list, turned into alignn's
orientation and line graph, for the crystals without a tie at the 12th neighbour (exact);
and the graphs themselves (same per-atom distances everywhere, same edges without ties,
the line graph sizes above). The batch-normalised case stands in for alignn's original
``alignn.models.alignn.ALIGNN``, which needs DGL: its forward is the pure model's with
``BatchNorm1d`` where the pure one has ``LayerNorm``, so the reference's norms are
swapped for batch norms with random statistics (eval mode).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch_geometric.data import Batch

from tlmat.graphs.builder import GraphArrays, graph_arrays, structure_arrays
from tlmat.graphs.cache import collate
from tlmat.io import read_records
from tlmat.models import registry
from tlmat.models.alignn import (
    ALIGNNConfig,
    build_alignn,
    concatenate_features,
    gupta_feature_sets,
)

CONV = {
    "src_gate": "gate_source",
    "dst_gate": "gate_target",
    "edge_gate": "gate_edge",
    "src_update": "update_self",
    "dst_update": "update_neighbor",
    "bn_nodes": "norm_nodes",
    "bn_edges": "norm_edges",
}


def tlmat_key(key: str) -> str | None:
    """alignn's parameter or buffer name → tlmat's (``None``: nothing to copy)."""
    part = key.split(".")
    if part[0] == "atom_embedding":  # atom_embedding.layer.<i>.<tensor>
        return "backbone.embedding.atom." + ".".join(part[2:])
    if part[0] in ("edge_embedding", "angle_embedding"):  # <name>.<block>.layer.<i>.<t>
        if part[1] == "0":  # the radial basis: compared, not copied
            return None
        kind = "bond" if part[0] == "edge_embedding" else "angle"
        return f"backbone.embedding.{kind}.{int(part[1]) - 1}." + ".".join(part[3:])
    if part[0] == "alignn_layers":
        conv = {"node_update": "atom_update", "edge_update": "bond_update"}[part[2]]
        return f"backbone.alignn_layers.{part[1]}.{conv}.{CONV[part[3]]}.{part[4]}"
    if part[0] == "gcn_layers":
        return f"backbone.gcn_layers.{part[1]}.{CONV[part[2]]}.{part[3]}"
    if part[0] == "fc":
        return f"head.out.{part[1]}"
    return None  # _species_table: alignn's element lookup for LAMMPS


@pytest.fixture(scope="module")
def structures(data: Path):
    records = read_records(data / "mp_elasticity_3k" / "mp_elasticity_3k.csv.gz", [], limit=20)
    return [r.structure for r in records]


@pytest.fixture(scope="module")
def alignn_graphs(structures):
    """alignn's (g, lg) of every structure, as its pure-PyTorch pipeline builds them."""
    builder = pytest.importorskip("alignn.torch_graph_builder")
    atoms = pytest.importorskip("jarvis.core.atoms")
    return [
        builder.build_pure_torch_graph(atoms.pmg_to_atoms(s), two_body_cutoff=8.0, max_neighbors=12)
        for s in structures
    ]


def reference_model(norm: str, **sizes):
    """alignn's pure model with random weights (norms too); ``norm="batch"``: its
    LayerNorms swapped for BatchNorm1d with random running statistics."""
    pure = pytest.importorskip("alignn.models.alignn_atomwise_pure")
    config = pure.ALIGNNAtomWisePureConfig(
        name="alignn_atomwise_pure", atom_input_features=92, gradwise_weight=0.0, **sizes
    )
    torch.manual_seed(0)
    ref = pure.ALIGNNAtomWisePure(config)
    if norm == "batch":
        for module in list(ref.modules()):
            for name, child in module.named_children():
                if isinstance(child, nn.LayerNorm):
                    bn = nn.BatchNorm1d(child.normalized_shape[0])
                    bn.running_mean.normal_(0.0, 0.3)
                    bn.running_var.uniform_(0.5, 2.0)
                    setattr(module, name, bn)
    with torch.no_grad():
        for parameter in ref.parameters():
            parameter.add_(0.2 * torch.randn_like(parameter))
    return ref.eval()


def copy_weights(ref, model) -> None:
    """alignn's weights into tlmat's model; the map must cover every tensor, one to one."""
    state = {tlmat_key(k): v for k, v in ref.state_dict().items() if tlmat_key(k)}
    expected = model.state_dict()
    own = {"backbone.atom_features", *(k for k in expected if k.endswith("_basis.centers"))}
    assert set(state) == set(expected) - own
    assert all(state[k].shape == expected[k].shape for k in state)
    model.load_state_dict(state, strict=False)
    model.eval()


def batch_of(g, lg) -> Batch:
    """A tlmat batch carrying alignn's graph exactly: its edges (src → dst), its line
    graph (A → B) and its cosines."""
    counts = g.batch_num_nodes
    return Batch(
        z=g.ndata["Z"],
        edge_index=torch.stack([g.src, g.dst]),
        edge_dist=g.edata["r"].norm(dim=1),
        line_index=torch.stack([lg.src, lg.dst]),
        line_cos=lg.edata["h"],
        batch=torch.repeat_interleave(torch.arange(len(counts)), counts),
        ptr=torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)]),
        num_nodes=int(counts.sum()),
    )


def alignn_oriented(a: GraphArrays) -> GraphArrays:
    """tlmat's neighbour list in alignn's convention: edges centre → neighbour, and the
    line graph joining bond A to every bond leaving A's neighbour, cos = −r_A·r_B."""
    centre, neighbour = a.edge_index[1].astype(np.int64), a.edge_index[0].astype(np.int64)
    leaving = [np.flatnonzero(centre == i) for i in range(a.num_nodes)]
    first = np.concatenate([np.full(len(leaving[v]), e) for e, v in enumerate(neighbour)])
    second = np.concatenate([leaving[v] for v in neighbour])
    va, vb = a.edge_vec[first].astype(np.float64), a.edge_vec[second].astype(np.float64)
    cos = -np.einsum("ij,ij->i", va, vb) / (a.edge_dist[first] * a.edge_dist[second])
    return GraphArrays(
        z=a.z,
        pos=a.pos,
        cell=a.cell,
        pbc=a.pbc,
        edge_index=np.stack([centre, neighbour]).astype(np.int32),
        edge_dist=a.edge_dist,
        edge_vec=a.edge_vec,
        edge_shift=a.edge_shift,
        line_index=np.stack([first, second]).astype(np.int32),
        line_cos=np.clip(cos, -1.0, 1.0).astype(np.float32),
    )


def tie_free(structure, k: int = 12, cutoff: float = 8.0) -> bool:
    """No atom's k-th and (k+1)-th neighbour distances within 1e-4 Å."""
    for neighbours in structure.get_all_neighbors(cutoff):
        d = np.sort([n.nn_distance for n in neighbours])
        if len(d) > k and d[k] - d[k - 1] < 1e-4:
            return False
    return True


def tlmat_arrays(model, structures) -> list[GraphArrays]:
    return [graph_arrays(*structure_arrays(s), model.graph_settings) for s in structures]


# -- against alignn ---------------------------------------------------------------------


def test_conventions_and_sizes_match_alignn(alignn_graphs) -> None:
    """Same CGCNN element table, the same radial bases, and the same parameter counts."""
    ref = reference_model("layer")
    model = registry.build(registry.model_config("alignn-atomwise-pure"))
    g, _ = alignn_graphs[0]
    torch.testing.assert_close(
        model.backbone.atom_features[g.ndata["Z"]], g.ndata["atom_features"], rtol=0, atol=0
    )
    for ours, theirs in [
        (model.backbone.embedding.bond_basis, ref.edge_embedding[0]),
        (model.backbone.embedding.angle_basis, ref.angle_embedding[0]),
    ]:
        torch.testing.assert_close(ours.centers, theirs.centers, rtol=0, atol=0)
        assert ours.gamma == pytest.approx(theirs.gamma, rel=1e-6)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(model) == count(ref) == 149_121
    paper = reference_model("layer", alignn_layers=4, gcn_layers=4, hidden_features=256)
    assert count(registry.build(ALIGNNConfig())) == count(paper) == 4_026_753


@pytest.mark.parametrize("norm", ["layer", "batch"])
def test_same_predictions_as_alignn_on_its_graph(alignn_graphs, norm: str) -> None:
    builder = pytest.importorskip("alignn.torch_graph_builder")
    ref = reference_model(norm)
    model = build_alignn(ALIGNNConfig(alignn_layers=2, gcn_layers=2, hidden_features=64, norm=norm))
    copy_weights(ref, model)
    g, lg = builder.batch_torch_graph_pairs(alignn_graphs)
    with torch.no_grad():
        expected = ref((g, lg, None))["out"]
        got = model(batch_of(g, lg)).squeeze(-1)
    assert expected.shape == (len(alignn_graphs),) and expected.std() > 0.1
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_graphs_agree_with_alignn_up_to_orientation_line_graph_and_ties(
    structures, alignn_graphs
) -> None:
    settings = registry.model_config("alignn-small").graph_settings()
    free = 0
    for s, (g, lg) in zip(structures, alignn_graphs, strict=True):
        a = graph_arrays(*structure_arrays(s), settings)
        theirs_d = g.edata["r"].norm(dim=1).numpy()
        for i in range(len(s)):  # each atom: the same 12 distances
            np.testing.assert_allclose(
                np.sort(a.edge_dist[a.edge_index[1] == i]),
                np.sort(theirs_d[g.src.numpy() == i]),
                atol=1e-4,
            )
        if tie_free(s):  # … and the same neighbours, images and bond vectors
            free += 1
            ours = {
                (int(i), int(j), *map(int, shift)): vec
                for j, i, shift, vec in zip(*a.edge_index, a.edge_shift, a.edge_vec, strict=True)
            }
            theirs = {
                (int(i), int(j), *map(int, shift.round())): vec
                for i, j, shift, vec in zip(
                    g.src, g.dst, g.edata["images"], g.edata["r"].numpy(), strict=True
                )
            }
            assert ours.keys() == theirs.keys()
            assert all(np.allclose(ours[k], theirs[k], atol=1e-4) for k in ours)
        # the line graphs: distinct bonds of one centre here; chains u → v → w there
        degree = np.bincount(a.edge_index[1], minlength=len(s))
        assert a.line_index.shape[1] == int((degree * (degree - 1)).sum())
        inward = np.bincount(g.dst.numpy(), minlength=len(s))
        outward = np.bincount(g.src.numpy(), minlength=len(s))
        assert lg.src.numel() == int((inward * outward).sum())
        assert (lg.edata["h"] > 1.0 - 1e-6).any()  # backtracking: u → v → u
    assert free >= 3, "too few crystals without ties at the 12th neighbour"


def test_same_predictions_as_alignn_on_tlmat_neighbours(structures, alignn_graphs) -> None:
    """tlmat's own neighbour list, turned into alignn's orientation and line graph, gives
    alignn's predictions wherever no tie at the 12th neighbour lets the two differ."""
    builder = pytest.importorskip("alignn.torch_graph_builder")
    ref = reference_model("layer")
    model = registry.build(registry.model_config("alignn-atomwise-pure"))
    copy_weights(ref, model)
    chosen = [k for k, s in enumerate(structures) if tie_free(s)]
    ours = collate(
        [alignn_oriented(a) for a in tlmat_arrays(model, [structures[k] for k in chosen])]
    )
    g, lg = builder.batch_torch_graph_pairs([alignn_graphs[k] for k in chosen])
    with torch.no_grad():
        expected = ref((g, lg, None))["out"]
        got = model(ours).squeeze(-1)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


# -- layer-wise features (Gupta et al.) -------------------------------------------------


def test_layer_features_names_shapes_and_last_layer(structures) -> None:
    torch.manual_seed(0)
    model = build_alignn(ALIGNNConfig()).eval()  # the paper's size: 4 + 4 layers, 256 wide
    batch = collate(tlmat_arrays(model, structures[:4]))
    with torch.no_grad():
        layers = model.layer_features(batch)
    expected = [f"embedding.{k}" for k in ("atom", "bond", "angle")]
    for i in range(4):
        expected += [f"interactions.{i}.{k}" for k in ("atom", "bond", "angle")]
    for i in range(4, 8):
        expected += [f"interactions.{i}.{k}" for k in ("atom", "bond")]
    assert list(layers) == [*expected, "embedding_out"]
    assert all(f.shape == (4, 256) and torch.isfinite(f).all() for f in layers.values())
    # the last layer's atom and bond features, and the angle features it was passed
    last = concatenate_features(layers)
    assert last.shape == (4, 768)
    torch.testing.assert_close(
        last,
        torch.cat(
            [
                layers["interactions.7.atom"],
                layers["interactions.7.bond"],
                layers["interactions.3.angle"],
            ],
            dim=1,
        ),
    )
    assert concatenate_features(layers, "interactions.3").shape == (4, 768)
    assert concatenate_features(layers, ["embedding.atom", "interactions.7"]).shape == (4, 768)
    # atom features pooled here are what the head sees
    torch.testing.assert_close(layers["interactions.7.atom"], layers["embedding_out"])
    with pytest.raises(ValueError, match="no layer features"):
        concatenate_features(layers, "interactions.8")


def test_gupta_feature_sets_of_a_two_plus_two_alignn(structures) -> None:
    """Gupta et al.'s sets of alignn-atomwise-pure (2 ALIGNN + 2 GCN layers) pooled by
    every moment: atom, bond and angle of each checkpoint (GCN layers have no angles),
    atom+bond, atom+bond+angle, the last atom+bond+angle and all; each set's features
    are those of its layers."""
    from tlmat.models.pooling import MOMENTS

    torch.manual_seed(0)
    model = registry.build(registry.model_config("alignn-atomwise-pure")).eval()
    with torch.no_grad():
        layers = model.layer_features(collate(tlmat_arrays(model, structures[:3])), MOMENTS)
    sets = gupta_feature_sets(list(layers))
    with_angles = ["embedding", "interactions.0", "interactions.1"]
    expected = [
        f"{c}.{k}"
        for c in with_angles
        for k in ("atom", "bond", "angle", "atom+bond", "atom+bond+angle")
    ]
    expected += [f"interactions.{i}.{k}" for i in (2, 3) for k in ("atom", "bond", "atom+bond")]
    assert list(sets) == [*expected, "last.atom+bond+angle", "all"]
    assert sets["interactions.0.atom+bond+angle"] == [
        "interactions.0.atom",
        "interactions.0.bond",
        "interactions.0.angle",
    ]
    assert sets["last.atom+bond+angle"] == [
        "interactions.3.atom",
        "interactions.3.bond",
        "interactions.1.angle",
    ]
    assert len(sets["all"]) == 3 * 3 + 2 * 2 and "embedding_out" not in sets["all"]
    assert concatenate_features(layers, sets["all"]).shape == (3, 13 * 64)
    torch.testing.assert_close(
        concatenate_features(layers, sets["interactions.2.atom+bond"]),
        torch.cat([layers["interactions.2.atom"], layers["interactions.2.bond"]], dim=1),
    )


def test_batched_layer_features_equal_per_structure(structures) -> None:
    torch.manual_seed(0)
    model = build_alignn(ALIGNNConfig(readout_features=64)).eval()
    arrays = tlmat_arrays(model, structures[:6])
    with torch.no_grad():
        batched = model.layer_features(collate(arrays))
        single = [model.layer_features(collate([a])) for a in arrays]
    for name, features in batched.items():
        alone = torch.cat([s[name] for s in single])
        torch.testing.assert_close(features, alone, rtol=1e-4, atol=1e-5, msg=name)
    assert batched["embedding_out"].shape == (6, 64)


def test_variants_learned_elements_readout_and_gcn_only(structures) -> None:
    learned = registry.model_config("alignn-small", atom_features="learned", readout_features=8)
    model = registry.build(learned)
    assert "atom_features" not in dict(model.named_buffers())
    assert list(model.groups()) == [
        "embedding",
        "interactions.0",
        "interactions.1",
        "readout",
        "head",
    ]
    assert model.elements == list(range(1, 119))
    gcn_only = registry.model_config("alignn-small", alignn_layers=0, gcn_layers=2)
    assert not gcn_only.graph_settings().line_graph
    for config in (learned, gcn_only):
        model = registry.build(config).eval()
        batch = collate(tlmat_arrays(model, structures[:3]))
        with torch.no_grad():
            assert model(batch).shape == (3, 1)
            has_angles = any(n.endswith(".angle") for n in model.layer_features(batch))
        assert has_angles == (config.alignn_layers > 0)
    with pytest.raises(ValueError, match="92-d"):
        ALIGNNConfig(atom_input_features=16)
    with pytest.raises(ValueError, match="at least one"):
        ALIGNNConfig(alignn_layers=0, gcn_layers=0)
