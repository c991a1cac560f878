"""Neighbour graphs against pymatgen's own neighbour search and the original CGCNN
convention, on real structures; line graphs; molecules; graph-level faults."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from ase.build import molecule
from torch_geometric.data import Batch

from tlmat.graphs import (
    GaussianExpansion,
    GraphSettings,
    RadialBasis,
    build_graph,
    collate,
    graph_or_problem,
    graphs_or_problems,
    iter_graph_arrays,
)
from tlmat.io import InputError, ProblemLog, Reason, read_records, records_from_structures


@pytest.fixture(scope="module")
def phonons(data: Path):
    """Varied real crystals: 1–40 sites, many lattices and elements."""
    return read_records(data / "matbench_phonons" / "matbench_phonons.json.gz", limit=60)


def cgcnn_reference(structure, radius: float = 8.0, max_num_nbr: int = 12):
    """The original CGCNN loader: get_all_neighbors, sort by distance, first 12."""
    all_nbrs = structure.get_all_neighbors(radius)
    return [sorted(n.nn_distance for n in nbrs)[:max_num_nbr] for nbrs in all_nbrs]


def test_cgcnn_neighbours_match_the_original_selection(phonons) -> None:
    settings = GraphSettings.preset("cgcnn")
    for record in phonons:
        graph = build_graph(record, settings)
        reference = cgcnn_reference(record.structure)
        centre = graph.edge_index[1].numpy()
        for atom, expected in enumerate(reference):
            got = np.sort(graph.edge_dist.numpy()[centre == atom])
            np.testing.assert_allclose(got, expected, atol=1e-5)


def test_all_neighbours_within_cutoff_match_pymatgen(phonons) -> None:
    settings = GraphSettings.preset("schnet")
    for record in phonons[:20]:
        graph = build_graph(record, settings)
        centers, neighbors, images, _ = record.structure.get_neighbor_list(6.0)
        got = set(
            zip(
                graph.edge_index[1].tolist(),
                graph.edge_index[0].tolist(),
                map(tuple, graph.edge_shift.tolist()),
                strict=True,
            )
        )
        want = set(
            zip(
                centers.tolist(),
                neighbors.tolist(),
                map(tuple, images.astype(int).tolist()),
                strict=True,
            )
        )
        assert got == want


def test_edge_geometry_is_consistent(phonons) -> None:
    for record in phonons[:20]:
        g = build_graph(record, GraphSettings.preset("cgcnn"))
        j, i = g.edge_index
        vec = g.pos[j] + g.edge_shift.float() @ g.cell[0] - g.pos[i]
        torch.testing.assert_close(vec, g.edge_vec, atol=1e-4, rtol=1e-5)
        torch.testing.assert_close(g.edge_vec.norm(dim=1), g.edge_dist, atol=1e-5, rtol=1e-5)
        assert bool((g.edge_dist <= 8.0).all())
        assert bool((torch.bincount(i, minlength=g.num_nodes) <= 12).all())


def test_selection_is_deterministic_for_symmetric_ties(data: Path) -> None:
    # cubic perovskites: many neighbours at exactly equal distances straddle the 12th
    records = read_records(data / "perov_5" / "test.csv.gz", limit=50)
    for record in records:
        a = build_graph(record, GraphSettings.preset("cgcnn"))
        b = build_graph(record.structure.copy(), GraphSettings.preset("cgcnn"))
        assert torch.equal(a.edge_index, b.edge_index) and torch.equal(a.edge_shift, b.edge_shift)


def test_line_graph_pairs_bonds_of_the_same_atom(phonons) -> None:
    settings = GraphSettings.preset("alignn")
    for record in phonons[:10]:
        g = build_graph(record, settings)
        a, b = g.line_index
        assert bool((g.edge_index[1][a] == g.edge_index[1][b]).all()) and bool((a != b).all())
        degree = torch.bincount(g.edge_index[1], minlength=g.num_nodes)
        assert g.num_triplets == int((degree * (degree - 1)).sum())
        cos = torch.nn.functional.cosine_similarity(g.edge_vec[a], g.edge_vec[b])
        torch.testing.assert_close(cos, g.line_cos, atol=1e-5, rtol=1e-5)
    plain = build_graph(phonons[0], GraphSettings.preset("cgcnn"))
    assert getattr(plain, "line_index", None) is None  # built only when asked


@pytest.mark.parametrize(
    "settings",
    [
        GraphSettings.preset("alignn"),  # 12 nearest: the one-degree fast path
        GraphSettings(cutoff=5.0, max_neighbors=None, line_graph=True, line_graph_cutoff=3.5),
    ],
    ids=["k-nearest", "all-within-cutoff"],
)
def test_line_graphs_of_a_chunk_match_one_structure_at_a_time(phonons, settings) -> None:
    # a chunk joins every structure's bonds into one list: nothing may leak across them
    one_by_one = [graph_or_problem(r, settings) for r in phonons]
    chunk = graphs_or_problems(phonons, settings)
    assert len({a.num_edges // a.num_nodes for a in one_by_one}) > 1 or settings.max_neighbors
    for single, joined in zip(one_by_one, chunk, strict=True):
        assert single.equals(joined)
        a, b = joined.line_index
        centre = joined.edge_index[1]
        assert (centre[a] == centre[b]).all() and (a != b).all()
        if settings.line_graph_cutoff is not None:
            short = joined.edge_dist <= settings.line_graph_cutoff
            assert short[a].all() and short[b].all()
            degree = np.bincount(centre[short], minlength=joined.num_nodes)
            assert joined.line_index.shape[1] == int((degree * (degree - 1)).sum())


def test_batching_offsets_line_graph_indices(phonons) -> None:
    settings = GraphSettings.preset("alignn")
    graphs = [graph_or_problem(r, settings) for r in phonons[:5]]
    ours = collate(graphs)
    pyg = Batch.from_data_list([g.to_data() for g in graphs])
    for key in ("z", "pos", "edge_index", "edge_dist", "line_index", "line_cos", "batch", "ptr"):
        assert torch.equal(getattr(ours, key), getattr(pyg, key)), key


def test_molecule_graph_has_no_images() -> None:
    water = records_from_structures([molecule("H2O")])[0]
    g = build_graph(water, GraphSettings(cutoff=3.0, max_neighbors=None))
    assert g.num_nodes == 3 and g.num_edges == 6  # every ordered pair, no periodic copies
    assert bool((g.edge_shift == 0).all()) and not bool(g.pbc.any())


def test_atom_without_neighbours_is_reported(data: Path) -> None:
    # KCl (CsCl type, COD 1000050, a = 3.634 Å): nearest K–Cl distance a√3/2 = 3.147 Å
    records = read_records(data / "cgcnn_sample_regression").records
    kcl = [r for r in records if r.id == "1000050"]
    log = ProblemLog()
    assert list(iter_graph_arrays(kcl, GraphSettings(cutoff=3.1), log)) == []
    problem = log.problems[0]
    assert problem.reason is Reason.ISOLATED_ATOM and problem.id == "1000050"
    assert problem.detail.startswith("2 atom(s) with fewer than 1 neighbour(s) within 3.1 Å")
    assert len(list(iter_graph_arrays(kcl, GraphSettings(cutoff=3.2), ProblemLog()))) == 1


def test_element_outside_vocabulary_is_reported(data: Path) -> None:
    records = read_records(data / "perov_5" / "test.csv.gz", limit=20).records
    without_osmium = set(range(1, 101)) - {76}
    log = ProblemLog()
    kept = list(iter_graph_arrays(records, GraphSettings(), log, elements=without_osmium))
    n_os = sum("Os" in r.formula for r in records)
    assert n_os > 0 and len(kept) == 20 - n_os
    assert all(p.reason is Reason.UNKNOWN_ELEMENT for p in log.problems)
    assert log.problems[0].detail == "Os not in the model's element vocabulary"
    with pytest.raises(InputError, match="Os not in"):
        build_graph(records[0], elements=without_osmium)


def test_parallel_build_matches_serial(phonons) -> None:
    settings = GraphSettings.preset("cgcnn")
    serial = list(iter_graph_arrays(phonons, settings, ProblemLog()))
    parallel = list(iter_graph_arrays(phonons, settings, ProblemLog(), workers=2, chunk_size=16))
    assert len(serial) == len(parallel)
    assert all(a[1].equals(b[1]) for a, b in zip(serial, parallel, strict=True))


def test_distance_expansions() -> None:
    gaussian = GaussianExpansion(0.0, 8.0, 0.2)  # CGCNN
    assert gaussian.num_features == 41
    out = gaussian(torch.tensor([0.0, 4.0, 8.0]))
    assert out.shape == (3, 41)
    assert out[1, 20].item() == pytest.approx(1.0)
    assert out[1, 21].item() == pytest.approx(np.exp(-1.0), rel=1e-5)
    rbf = RadialBasis(0.0, 30.0, 300, gamma=10.0)  # SchNet, Krawczuk & Venturi
    assert rbf(torch.tensor([1.5]))[0].argmax().item() == 15


def test_settings_validation_and_keys() -> None:
    assert GraphSettings.preset("cgcnn").key() == GraphSettings().key()
    assert GraphSettings.preset("alignn").key() != GraphSettings().key()
    with pytest.raises(ValueError):
        GraphSettings(cutoff=-1)
    with pytest.raises(ValueError, match="unknown graph preset"):
        GraphSettings.preset("megnet")


@pytest.mark.parametrize(
    ("source", "limit"),
    [
        ("perov_5/train.csv.gz", 400),
        ("carbon_24/val.csv.gz", 200),
        ("mp_cgcnn_36k/mp_cgcnn_36k.csv.gz", 300),
    ],
)
def test_graphs_built_together_equal_graphs_built_one_by_one(
    data: Path, source: str, limit: int
) -> None:
    """Perovskites tie at the 12th neighbour in a third of the cells, carbon and MP
    crystals in others: the batched selection must fall back exactly where the single
    one does, and give the same arrays, bit for bit."""
    from tlmat.graphs.builder import atom_graph, atom_graphs, structure_arrays

    structures = [r.structure for r in read_records(data / source, limit=limit)]
    arrays = [structure_arrays(s) for s in structures]
    for settings in (GraphSettings.preset("cgcnn"), GraphSettings(cutoff=4.0, max_neighbors=None)):
        together = atom_graphs(
            [a[0] for a in arrays], [a[1] for a in arrays], [a[2] for a in arrays], settings
        )
        for (z, pos, cell, pbc), (graph, pairs) in zip(arrays, together, strict=True):
            alone, alone_pairs = atom_graph(z, pos, cell, pbc, settings)
            assert graph.equals(alone)
            for field in ("centers", "neighbors", "shifts", "distances", "vectors"):
                a, b = getattr(pairs, field), getattr(alone_pairs, field)
                assert a.dtype == b.dtype and np.array_equal(a, b), field
