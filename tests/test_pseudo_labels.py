"""The pseudo-labelled pretraining set (benchmarks/pseudo_labels.py) on real Materials
Project crystals: perturbed copies are seeded, strained by a few % and displaced by the
asked distances; the target grid's held-out ids and formulas never reach the table; a
pretraining source may name the table by a path outside the data folder."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pymatgen.core import Structure

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location(
    "pseudo_labels", REPO / "benchmarks" / "pseudo_labels.py"
)
pseudo_labels = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(pseudo_labels)


@pytest.fixture(scope="module")
def mp(data: Path) -> pd.DataFrame:
    """60 real MP crystals with their DFT formation energies (eV/atom)."""
    frame = pd.read_csv(data / "mp_cgcnn_36k" / "mp_cgcnn_36k.csv.gz", nrows=260).iloc[200:]
    return frame.assign(row=np.arange(200, 260)).reset_index(drop=True)


def test_a_copy_is_strained_and_displaced_as_asked(mp: pd.DataFrame) -> None:
    for cif in mp["cif"][:8]:
        parent = Structure.from_str(cif, fmt="cif")
        text = pseudo_labels.perturbed_cif(cif, np.random.default_rng([0, 1]), 0.03, (0.05, 0.1))
        copy = Structure.from_str(text, fmt="cif")
        assert copy.composition == parent.composition and len(copy) == len(parent)
        # |ε| ≤ 3 % isotropic + 1.5 % anisotropic per axis: the volume within (1 ± 4.5 %)³
        ratio = copy.volume / parent.volume
        assert 0.955**3 < ratio < 1.045**3 and abs(ratio - 1) > 1e-4
        # each site moved 0.05–0.10 Å from where the strain alone put it (CIF rounding aside)
        moved = [
            copy.lattice.get_distance_and_image(p.frac_coords, c.frac_coords)[0]
            for p, c in zip(parent, copy, strict=True)
        ]
        assert min(moved) > 0.049 and max(moved) < 0.101


def test_copies_are_reproducible_from_the_seed(mp: pd.DataFrame) -> None:
    rows = mp.iloc[:3]
    first = pseudo_labels.perturb(rows, 0, 0.03, (0.05, 0.1))
    again = pseudo_labels.perturb(rows.iloc[[2, 0, 1]], 0, 0.03, (0.05, 0.1))
    other = pseudo_labels.perturb(rows, 1, 0.03, (0.05, 0.1))
    # a row's copy depends on the seed and its row in MP, not on which others are drawn
    assert first.set_index("material_id").loc[again["material_id"], "cif"].tolist() == (
        again["cif"].tolist()
    )
    assert not set(first["cif"]) & set(other["cif"])
    assert first["parent_id"].tolist() == rows["material_id"].tolist()
    assert all(i.endswith("~chgnet-s0") for i in first["material_id"])


def test_held_out_ids_and_formulas_never_reach_the_table(
    mp: pd.DataFrame, monkeypatch, tmp_path: Path
) -> None:
    formulas = pseudo_labels.reduced_formulas(mp["cif"])
    held_ids, held_formula = {mp["material_id"][0], mp["material_id"][1]}, formulas[5]
    monkeypatch.setattr(pseudo_labels, "held_out", lambda grid, cache: (held_ids, {held_formula}))
    args = pseudo_labels.parse(["--cache-dir", str(tmp_path)])
    kept, counts = pseudo_labels.parents(args, mp.drop(columns="row"))
    assert not held_ids & set(kept["material_id"]) and held_formula not in set(kept["formula"])
    assert counts["removed_same_id"] == 2 and counts["removed_same_formula"] >= 1
    assert len(kept) == len(mp) - 2 - counts["removed_same_formula"]
    # the table: every DFT row with MP's value, CHGNet rows only where a label exists
    copies = pseudo_labels.perturb(kept.iloc[:2], 0, 0.03, (0.05, 0.1))
    column = "formation_energy_per_atom (eV/atom)"
    labelled = copies.assign(**{column: [-1.0, np.nan]})
    table = pseudo_labels.write_table(kept, labelled, tmp_path / "t.csv.gz")
    read = pd.read_csv(tmp_path / "t.csv.gz")
    assert len(read) == len(table) == len(kept) + 1
    dft = read[read["label_source"] == "dft"].set_index("material_id")
    np.testing.assert_allclose(
        dft.loc[kept["material_id"], "formation_energy_per_atom"], kept["formation_energy_per_atom"]
    )
    chgnet = read[read["label_source"] == "chgnet"]
    assert chgnet["material_id"].tolist() == [copies["material_id"][0]]
    assert chgnet["formation_energy_per_atom"].tolist() == [-1.0]


def test_a_pretraining_table_outside_the_data_folder_is_found(
    mp: pd.DataFrame, tmp_path: Path, monkeypatch
) -> None:
    from tlmat.experiments.pretraining import PretrainConfig, table_path

    path = tmp_path / "pseudo.csv"
    mp[["material_id", "cif", "formation_energy_per_atom"]].to_csv(path, index=False)
    spec = PretrainConfig(data=str(path), target="formation_energy_per_atom")
    assert table_path(spec.data, None, spec.join_on, tmp_path) == path
    monkeypatch.chdir(tmp_path)  # and relative to where the grid runs
    assert table_path("pseudo.csv", None, "material_id", tmp_path).resolve() == path
    with pytest.raises(FileNotFoundError):
        table_path("nowhere.csv", None, "material_id", tmp_path)


def test_chgnet_rates_a_perturbed_copy_above_its_relaxed_parent(
    mp: pd.DataFrame, tmp_path: Path
) -> None:
    pytest.importorskip("chgnet")
    from tlmat.transfer.sources import load_source

    trained = load_source("chgnet/0.3.0")
    rows = mp.iloc[:4]
    parents = rows[["material_id", "cif"]].assign(parent_id=rows["material_id"])
    copies = pseudo_labels.perturb(rows, 0, 0.03, (0.05, 0.1))
    column = "energy_per_atom (eV/atom)"
    energies = [
        pseudo_labels.label_chunk(frame, tmp_path / f"{name}.csv", trained, {}, tmp_path)
        and pd.read_csv(tmp_path / f"{name}.csv")[column].to_numpy()
        for name, frame in (("parents", parents), ("copies", copies))
    ]
    # MP's crystals are DFT-relaxed: straining and displacing them costs energy
    rise = energies[1] - energies[0]
    assert np.isfinite(rise).all() and (rise > -0.005).all() and rise.mean() > 0.005
