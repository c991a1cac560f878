"""CGAT on real structures: tie-invariant neighbour ranks as the only geometry, a Roost
context that sees only the fractional composition, and matscholar element embeddings."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from pymatgen.core import Element, Structure

from tlmat.graphs.builder import graph_arrays, structure_arrays
from tlmat.graphs.cache import collate
from tlmat.io import read_records
from tlmat.models import registry
from tlmat.models.cgat import matscholar_path, neighbour_ranks
from tlmat.transfer.sources import fresh_model

ELASTICITY = ("mp_elasticity_3k", "mp_elasticity_3k.csv.gz")


@pytest.fixture(scope="module")
def model():
    model = fresh_model(registry.model_config("cgat-small"), seed=0).model
    model.eval()
    return model


@pytest.fixture(scope="module")
def elasticity(data: Path) -> list[Structure]:
    """The first 120 Materials Project crystals (rows 70 and 118 are two ZnS polymorphs)."""
    records = read_records(data.joinpath(*ELASTICITY), [], limit=120)
    return [r.structure for r in records]


@pytest.fixture(scope="module")
def cubic_perovskite(data: Path) -> Structure:
    """YHgN3 (perov_5 validation row 13): ideal cubic, every coordinate 0 or ½."""
    structure = list(read_records(data / "perov_5" / "val.csv.gz", [], limit=14))[13].structure
    assert structure.composition.reduced_formula == "YHgN3"
    assert np.allclose(structure.frac_coords * 2, np.round(structure.frac_coords * 2))
    return structure


def batch_of(model, structures: list[Structure]):
    settings = model.graph_settings
    return collate([graph_arrays(*structure_arrays(s), settings) for s in structures])


def ranks_by_centre(model, structure: Structure) -> list[list[int]]:
    batch = batch_of(model, [structure])
    ranks = model.backbone.ranks(batch)
    centre = batch.edge_index[1]
    return [sorted(ranks[centre == i].tolist()) for i in range(len(structure))]


def test_neighbour_ranks_count_strictly_closer_neighbours() -> None:
    centre = torch.tensor([1, 0, 0, 1, 0, 0, 1])
    distance = torch.tensor([2.0, 3.0, 1.0, 2.0, 3.0, 3.0005, 1.5])
    ranks = neighbour_ranks(centre, distance, 2, tolerance=1e-3)
    assert ranks.tolist() == [1, 1, 0, 1, 1, 1, 0]
    # any order of the edges gives each edge the same rank
    order = torch.randperm(7, generator=torch.Generator().manual_seed(0))
    assert neighbour_ranks(centre[order], distance[order], 2).tolist() == ranks[order].tolist()


def test_ranks_are_tie_invariant_on_a_cubic_perovskite(model, cubic_perovskite) -> None:
    s = cubic_perovskite
    batch = batch_of(model, [s])
    ranks = model.backbone.ranks(batch)
    centre, dist = batch.edge_index[1], batch.edge_dist.double()
    for i in range(len(s)):
        mine = centre == i
        d, r = dist[mine], ranks[mine]
        assert len(d) == 24
        # rank = number of strictly closer neighbours; equal distances share a rank
        closer = (d.unsqueeze(0) < d.unsqueeze(1) - 1e-3).sum(1)
        assert r.tolist() == closer.tolist()
        same = (d.unsqueeze(0) - d.unsqueeze(1)).abs() < 1e-4
        assert torch.equal(r.unsqueeze(0) == r.unsqueeze(1), same)
    # shells: Y (B site) sees 6 N, 8 Hg, 6 Y, then 4 of the 24 N at a√5/2; Hg (A site)
    # sees 12 N, 8 Y, then 4 of the 6 Hg at a
    by_centre = ranks_by_centre(model, s)
    symbols = [site.specie.symbol for site in s]
    assert by_centre[symbols.index("Y")] == [0] * 6 + [6] * 8 + [14] * 6 + [20] * 4
    assert by_centre[symbols.index("Hg")] == [0] * 12 + [12] * 8 + [20] * 4
    # reordered sites and a supercell give every atom the same ranks
    per_atom = sorted(map(tuple, by_centre))
    permuted = Structure.from_sites(list(reversed(s.sites)))
    assert sorted(map(tuple, ranks_by_centre(model, permuted))) == per_atom
    supercell = sorted(map(tuple, ranks_by_centre(model, s * (2, 1, 1))))
    assert supercell == sorted(per_atom * 2)


def test_prediction_depends_on_neighbour_order_only(model, elasticity) -> None:
    """Lattice vectors ×1.03 change every distance but no neighbour's rank: same output."""
    chosen = [s for s in elasticity[:24] if len(s) <= 12][:6]
    expanded = []
    for s in chosen:
        t = s.copy()
        t.scale_lattice(s.volume * 1.03**3)
        expanded.append(t)
    a, b = batch_of(model, chosen), batch_of(model, expanded)
    assert a.edge_index.shape == b.edge_index.shape
    assert not torch.allclose(a.edge_dist, b.edge_dist)
    assert torch.equal(model.backbone.ranks(a), model.backbone.ranks(b))
    with torch.no_grad():
        torch.testing.assert_close(model(a), model(b), rtol=1e-6, atol=1e-6)


def test_context_sees_only_the_fractional_composition(model, elasticity) -> None:
    zns = [elasticity[70], elasticity[118]]  # mp-10281 and mp-10695
    assert {s.composition.reduced_formula for s in zns} == {"ZnS"}
    assert len(zns[0]) != len(zns[1])
    s = elasticity[0]
    batch = batch_of(model, [s, s * (2, 1, 1), *zns])
    with torch.no_grad():
        context = model.backbone.context(batch)
        out = model(batch).flatten()
        layers = model.layer_features(batch)
    torch.testing.assert_close(layers["composition"], context)
    assert torch.equal(context[0], context[1])  # a supercell
    assert torch.equal(context[2], context[3])  # two polymorphs
    assert not torch.equal(context[0], context[2])
    torch.testing.assert_close(out[0], out[1], rtol=1e-4, atol=1e-4)
    assert (out[2] - out[3]).abs() > 1e-4  # the structures differ, the predictions too


def test_element_table_starts_from_matscholar(model, elasticity, tmp_path: Path) -> None:
    path = matscholar_path()
    assert path is not None and model.config.matscholar
    vectors = json.loads(path.read_text())
    present = sorted({z for s in elasticity[:24] for z in s.atomic_numbers})
    expected = torch.tensor([vectors[Element.from_Z(z).symbol] for z in present])
    rows = model.backbone.embedding.elements.detach()[present]
    torch.testing.assert_close(rows, expected)
    assert model.elements == list(range(1, 104))
    # re-initialisation starts from matscholar again
    copy = fresh_model(registry.model_config("cgat-small"), seed=1).model
    with torch.no_grad():
        copy.backbone.embedding.elements.add_(1.0)
    copy.reset_parameters()
    torch.testing.assert_close(copy.backbone.embedding.elements.detach()[present], expected)


def test_a_checkpoint_brings_its_element_table(model, monkeypatch) -> None:
    import tlmat.models.cgat as cgat

    state = model.state_dict()
    monkeypatch.setattr(cgat, "matscholar_path", lambda: None)  # no file to read
    rebuilt = registry.build(model.config, state)
    torch.testing.assert_close(rebuilt.backbone.embedding.table, model.backbone.embedding.table)


def test_learned_element_table_without_matscholar(elasticity) -> None:
    config = registry.model_config("cgat-small", matscholar=False)
    model = fresh_model(config, seed=0).model
    assert model.elements is None and model.backbone.embedding.table is None
    with torch.no_grad():
        out = model(batch_of(model, elasticity[:4]))
    assert out.shape == (4, 1) and torch.isfinite(out).all()


def test_defaults_are_the_published_hyperparameters() -> None:
    default, paper = registry.model_config("cgat"), registry.model_config("cgat-hoffmann")
    assert default == paper
    published = (paper.max_neighbors, paper.n_graph, paper.msg_heads, paper.atom_fea_len)
    assert published == (24, 5, 6, 128)
