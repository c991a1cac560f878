"""The one-pass first read (tlmat.data.ingest, tlmat.io.cif) gives exactly the dataset the
pymatgen path gives: the same ids, formulas, targets, skips with their messages, and
graphs bit for bit, on every structure source in TLMAT_DATA_DIR (the three largest
files on their first rows; benchmarks/first_read.py compares them whole)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tlmat.data import load_dataset
from tlmat.graphs import GraphSettings
from tlmat.io.cif import read_plain_cif
from tlmat.io.parse import structure_from_text

#: every structure source of the data folder (file, rows read: None = all)
SOURCES = [
    ("perov_5/train.csv.gz", 1500),
    ("perov_5/val.csv.gz", 600),
    ("perov_5/test.csv.gz", 600),
    ("perov_5/perov_5_all_structures.csv.gz", 600),
    ("perov_5/jarvis_leaderboard_perov5_heat_ref.json.zip", 300),
    ("carbon_24/carbon_24_all_structures.csv.gz", 600),
    ("carbon_24/val.csv.gz", 400),
    ("carbon_24/test.csv.gz", 400),
    ("carbon_24/jarvis_leaderboard_carbon24_energy_per_atom.json.zip", 200),
    ("mp_cgcnn_36k/mp_cgcnn_36k.csv.gz", 2500),
    ("mp_elasticity_3k/mp_elasticity_3k.csv.gz", None),
    ("cgcnn_sample_regression", None),
    ("jarvis_alignn_samples/sample_data", None),
    ("jarvis_tc_supercon/jarvis_tc_supercon_merged.csv.gz", None),
    ("matbench_dielectric/matbench_dielectric.json.gz", 1000),
    ("matbench_phonons/matbench_phonons.json.gz", None),
    ("matcalc_benchmark_data/wbm-random-pbe52-equilibrium-2025.1.json.gz", None),
    ("matminer_dielectric_constant/dielectric_constant.json.gz", None),
    ("matminer_elastic_tensor_2015/elastic_tensor_2015.json.gz", None),
    ("mp_dielectric_mace_field/dielectric-test.xyz.gz", None),
    ("taata_nitrides_sample/examples.json", None),
]


def _read(path: Path, limit: int | None, fast: bool, cache: Path, settings: GraphSettings):
    options = {"limit": limit} if limit is not None else {}
    dataset = load_dataset(path, settings, cache_dir=cache, fast=fast, workers=2, **options)
    graphs = [dataset.graphs.arrays(i) for i in range(len(dataset))]
    skips = sorted((p.where, p.reason.value, p.detail) for p in dataset.log.problems)
    return dataset, graphs, skips


@pytest.mark.integration
@pytest.mark.parametrize(("source", "limit"), SOURCES, ids=[s for s, _ in SOURCES])
def test_fast_first_read_equals_the_pymatgen_path(
    data: Path, tmp_path: Path, source: str, limit: int | None
) -> None:
    settings = GraphSettings(cutoff=8.0, max_neighbors=12)
    fast = _read(data / source, limit, True, tmp_path / "fast", settings)
    slow = _read(data / source, limit, False, tmp_path / "slow", settings)
    assert fast[0].ids == slow[0].ids and len(fast[0]) > 0
    assert fast[0].formulas == slow[0].formulas
    assert fast[0].targets.keys() == slow[0].targets.keys()
    for name, values in fast[0].targets.items():
        assert np.array_equal(values, slow[0].targets[name], equal_nan=True), name
    assert fast[2] == slow[2]
    assert all(a.equals(b) for a, b in zip(fast[1], slow[1], strict=True))


def test_line_graphs_and_skips_match(data: Path, tmp_path: Path) -> None:
    """ALIGNN-style line graphs, a vocabulary that skips elements and a cutoff that
    leaves atoms isolated take the same decisions on both paths."""
    settings = GraphSettings(cutoff=3.0, max_neighbors=12, line_graph=True, min_neighbors=2)
    source = data / "mp_cgcnn_36k" / "mp_cgcnn_36k.csv.gz"
    vocabulary = [z for z in range(1, 84) if z not in (8, 26)]  # no O, no Fe
    found = []
    for fast in (True, False):
        dataset = load_dataset(
            source,
            settings,
            ["band_gap"],
            cache_dir=tmp_path / str(fast),
            fast=fast,
            elements=vocabulary,
            workers=1,
            limit=400,
        )
        problems = sorted((p.where, p.reason.value, p.detail) for p in dataset.log.problems)
        found.append((dataset, problems))
    (fast_set, fast_skips), (slow_set, slow_skips) = found
    reasons = {reason for _, reason, _ in fast_skips}
    assert {"element outside vocabulary", "atom without neighbours"} <= reasons, reasons
    assert fast_skips == slow_skips and fast_set.ids == slow_set.ids
    for i in range(len(fast_set)):
        assert fast_set.graphs.arrays(i).equals(slow_set.graphs.arrays(i))


def test_plain_cif_reader_takes_only_what_it_reads_exactly(data: Path) -> None:
    """Symmetry to apply, partial occupancy, an oxidation state or a label that is no
    element send the file to pymatgen (None); a plain P1 file gives pymatgen's arrays."""
    import pandas as pd

    text = pd.read_csv(data / "perov_5" / "test.csv.gz", nrows=1)["cif"][0]
    plain = read_plain_cif(text)
    reference = structure_from_text(text, "cif")
    assert plain is not None
    assert np.array_equal(plain.z, reference.atomic_numbers)
    assert np.array_equal(plain.pos, reference.cart_coords)
    assert plain.formula == reference.composition.reduced_formula
    symmetric = text.replace("'x, y, z'", "'x, y, z'\n  2  '-x, -y, -z'")
    disordered = text.replace(" 1\n", " 0.5\n")
    labelled = text.replace("\n  O  O", "\n  O2-  O")
    for changed in (symmetric, disordered, labelled, "data_x\n_cell_length_a 3\n"):
        assert changed != text or changed.startswith("data_x")
        assert read_plain_cif(changed) is None


def test_reduced_formulas_are_pymatgens(data: Path) -> None:
    """The plain reader's formulas skip building a Composition: they must still be
    pymatgen's, special cases (peroxides, diatomic gases) and polyanions included."""
    from pymatgen.core import Composition

    from tlmat.io.cif import reduced_formula

    counts = [
        (("O", 2),),
        (("H", 2),),
        (("H", 2), ("O", 2)),
        (("Li", 2), ("O", 2)),
        (("Fe", 4), ("Li", 4), ("O", 16), ("P", 4)),
        (("H", 4), ("N", 2), ("O", 6)),
        (("C", 2), ("H", 4)),
    ]
    import pandas as pd

    for text in pd.read_csv(data / "mp_cgcnn_36k" / "mp_cgcnn_36k.csv.gz", nrows=300)["cif"]:
        structure = structure_from_text(text, "cif")
        amounts = structure.composition.get_el_amt_dict()
        counts.append(tuple(sorted((s, int(n)) for s, n in amounts.items())))
    for count in counts:
        expected = Composition({s: float(n) for s, n in count}).reduced_formula
        assert reduced_formula(count) == expected, count


def test_a_second_read_with_other_options_parses_nothing(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cache remembers which structure each text gave: a later read of the same file
    with other targets and another model's elements parses none of them, and still gives
    exactly the pymatgen path's dataset for those options."""
    from tlmat.data import ingest

    source = data / "mp_cgcnn_36k" / "mp_cgcnn_36k.csv.gz"
    settings = GraphSettings(cutoff=8.0, max_neighbors=12)
    options = {"cache_dir": tmp_path / "cache", "workers": 1, "limit": 300}
    load_dataset(source, settings, ["band_gap"], **options)
    parsed = []
    counting = ingest.ingest_chunk
    monkeypatch.setattr(
        ingest, "ingest_chunk", lambda args: parsed.extend(args[0]) or counting(args)
    )
    no_oxygen = [z for z in range(1, 84) if z != 8]
    again = load_dataset(source, settings, ["efermi"], elements=no_oxygen, **options)
    assert parsed == []
    reference = load_dataset(
        source,
        settings,
        ["efermi"],
        elements=no_oxygen,
        cache_dir=tmp_path / "reference",
        fast=False,
        limit=300,
    )
    assert again.ids == reference.ids and again.formulas == reference.formulas
    assert np.array_equal(again.targets["efermi"], reference.targets["efermi"])
    skips = [sorted((p.where, p.detail) for p in d.log.problems) for d in (again, reference)]
    assert skips[0] == skips[1] and len(skips[0]) > 0  # oxides skipped by their element
    for i in range(len(again)):
        assert again.graphs.arrays(i).equals(reference.graphs.arrays(i))
