"""Every reader on real files from the shared datasets, and the writers round-trip."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import ase.db
import numpy as np
import pytest
from ase.build import molecule
from pymatgen.core import Molecule, Structure
from pymatgen.io.ase import AseAtomsAdaptor

from tlmat.io import (
    detect_format,
    read_records,
    records_from_structures,
    write_csv,
    write_extxyz,
)


def test_cgcnn_folder_reads_ids_targets_and_cifs(data: Path) -> None:
    result = read_records(data / "cgcnn_sample_regression")
    assert len(result) == 10 and result.log.n_skipped == 0
    assert [r.id for r in result][:2] == ["1000041", "1000050"]
    assert [r.targets["target"] for r in result] == [float(i) for i in range(1, 11)]
    kcl = result[1].structure
    assert kcl.composition.reduced_formula == "KCl"
    assert kcl.lattice.a == pytest.approx(3.634)


def test_alignn_folder_reads_poscars_and_vector_targets(data: Path) -> None:
    gaps = read_records(data / "jarvis_alignn_samples" / "sample_data")
    assert len(gaps) == 50  # 20 unlabelled POSCARs in the folder are not listed
    assert gaps[0].id == "POSCAR-JVASP-90856.vasp"
    assert min(r.targets["target"] for r in gaps) >= 0.0
    assert max(r.targets["target"] for r in gaps) == pytest.approx(6.15, abs=0.01)
    edos = read_records(data / "jarvis_alignn_samples" / "sample_data_multi_prop_edos")
    assert edos[0].targets["target"].shape == (300,)


def test_csv_with_cif_column_gzip(data: Path) -> None:
    result = read_records(data / "perov_5" / "test.csv.gz", targets=["heat_ref"])
    assert len(result) == 3785 and result.log.n_skipped == 0
    first = result[0]
    assert first.id == "3961" and first.formula == "TiOsNOF"
    assert first.targets == {"heat_ref": pytest.approx(1.4383314936574307)}
    assert first.meta["formula"] == "TiOsOFN"
    assert all(len(r.structure) == 5 for r in result)


def test_csv_with_poscar_column_and_auto_targets(data: Path) -> None:
    result = read_records(data / "perov_5" / "perov_5_all_structures.csv.gz", limit=50)
    assert result.target_names == ["heat_all", "heat_ref", "dir_gap", "ind_gap"]
    assert result[0].meta["split"] == "train"
    carbon = read_records(data / "carbon_24" / "test.csv.gz", limit=30)
    assert carbon.target_names == ["energy_per_atom"]
    assert {r.formula for r in carbon} == {"C"}
    assert all(-155 < r.targets["energy_per_atom"] < -154 for r in carbon)


def test_extxyz_with_tensor_properties(data: Path) -> None:
    result = read_records(data / "mp_dielectric_mace_field" / "dielectric-test.xyz.gz")
    assert len(result) == 563 and result.log.n_skipped == 0
    assert result[0].targets["REF_polarisability"].shape == (9,)
    assert result[0].periodic


def test_matbench_split_json(data: Path) -> None:
    result = read_records(data / "matbench_phonons" / "matbench_phonons.json.gz")
    assert len(result) == 1265
    peaks = np.array([r.targets["last phdos peak"] for r in result])
    assert peaks.min() == pytest.approx(59.6, abs=0.1) and peaks.max() == pytest.approx(3644, abs=1)
    assert result[0].id == "0"  # matbench order kept: official folds depend on it


def test_column_dict_json_and_records_list_json(data: Path) -> None:
    taata = read_records(data / "taata_nitrides_sample" / "examples.json", targets=["E_f"])
    assert len(taata) == 68
    assert taata[0].id == "c07b988125b3a0adc329b2449eeaac24c9e7def8"
    elastic = read_records(
        data / "matcalc_benchmark_data" / "mp-binary-pbe-elasticity-2025.1.json.gz", limit=20
    )
    assert elastic[0].id.startswith("mp-")
    assert set(elastic.target_names) == {"bulk_modulus_vrh", "shear_modulus_vrh"}


def test_jarvis_leaderboard_zip_with_escaped_poscars(data: Path) -> None:
    result = read_records(data / "jarvis_tc_supercon" / "AtomGen_dft_3d_Tc_supercon.json.zip")
    assert len(result) == 1056
    assert {r.meta["split"] for r in result} == {"train", "val", "test"}
    assert result[0].id.startswith("JVASP-")


def test_jarvis_atoms_dicts(data: Path, tmp_path: Path) -> None:
    """JARVIS dft_3d rows carry ``atoms`` dicts (lattice_mat/coords/elements); none ship in
    the shared data, so real JARVIS structures are written in that layout."""
    source = read_records(
        data / "jarvis_tc_supercon" / "jarvis_tc_supercon_merged.csv.gz", targets=["Tc_K"], limit=40
    )
    rows = []
    for record in source:
        s = record.structure
        atoms = {
            "lattice_mat": s.lattice.matrix.tolist(),
            "coords": s.frac_coords.tolist(),
            "elements": [site.specie.symbol for site in s],
            "cartesian": False,
        }
        rows.append({"jid": record.id, "atoms": atoms, "Tc_supercon": record.targets["Tc_K"]})
    path = tmp_path / "dft_3d.json.gz"
    with gzip.open(path, "wt") as handle:
        json.dump(rows, handle)
    result = read_records(path)
    assert [r.id for r in result] == [r.id for r in source]
    for got, want in zip(result, source, strict=True):
        assert got.targets["Tc_supercon"] == want.targets["Tc_K"]
        assert got.structure.matches(want.structure)


def test_ase_database_round_trip(data: Path, tmp_path: Path) -> None:
    source = read_records(data / "taata_nitrides_sample" / "examples.json", targets=["E_f"])
    path = tmp_path / "nitrides.db"
    with ase.db.connect(str(path)) as db:
        for record in source:
            atoms = AseAtomsAdaptor.get_atoms(record.structure)
            db.write(atoms, material_id=record.id, E_f=record.targets["E_f"])
    result = read_records(path, targets=["E_f"])
    assert detect_format(path) == "asedb"
    assert [r.id for r in result] == [r.id for r in source]
    assert [r.targets["E_f"] for r in result] == [r.targets["E_f"] for r in source]
    assert all(a.structure.matches(b.structure) for a, b in zip(result, source, strict=True))


def test_folder_of_structure_files(data: Path) -> None:
    result = read_records(data / "taata_nitrides_sample" / "raw_poscar")
    assert len(result) == 74 and result.target_names == []


def test_molecules_are_accepted_and_flagged_non_periodic(tmp_path: Path) -> None:
    water = molecule("H2O")  # ASE's G2 geometry, pbc=False
    result = records_from_structures([water], ids=["water"], targets={"mu": [1.85]})
    record = result[0]
    assert isinstance(record.structure, Molecule) and not record.periodic
    path = tmp_path / "water.xyz"
    write_extxyz(result, path)
    again = read_records(path)
    assert not again[0].periodic and again[0].targets["mu"] == pytest.approx(1.85)


def test_writers_round_trip_real_records(data: Path, tmp_path: Path) -> None:
    source = read_records(data / "perov_5" / "test.csv.gz", targets=["heat_ref"], limit=25)
    write_extxyz(source, tmp_path / "clean.extxyz")
    write_csv(source, tmp_path / "clean.csv")
    for path in (tmp_path / "clean.extxyz", tmp_path / "clean.csv"):
        back = read_records(path, targets=["heat_ref"])
        assert [r.id for r in back] == [r.id for r in source]
        np.testing.assert_allclose(
            [r.targets["heat_ref"] for r in back], [r.targets["heat_ref"] for r in source]
        )
        for got, want in zip(back, source, strict=True):
            assert isinstance(got.structure, Structure)
            assert got.structure.matches(want.structure)


def test_writers_never_overwrite_without_asking(data: Path, tmp_path: Path) -> None:
    source = read_records(data / "perov_5" / "test.csv.gz", limit=3)
    path = tmp_path / "mine.csv"
    path.write_text("precious\n")
    with pytest.raises(FileExistsError, match="overwrite"):
        write_csv(source, path)
    assert path.read_text() == "precious\n"
    write_csv(source, path, overwrite=True)
    assert len(read_records(path)) == 3


def test_parallel_read_matches_serial(data: Path) -> None:
    serial = read_records(data / "carbon_24" / "val.csv.gz", limit=200)
    parallel = read_records(data / "carbon_24" / "val.csv.gz", limit=200, workers=2)
    assert [r.id for r in serial] == [r.id for r in parallel]
    assert all(a.structure == b.structure for a, b in zip(serial, parallel, strict=True))


def test_missing_source_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no such file"):
        read_records(tmp_path / "nope.csv")


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".npz"])
def test_table_writer_streams_chunks_into_one_table(data: Path, tmp_path: Path, suffix) -> None:
    import pandas as pd

    from tlmat.io.writers import TableWriter

    records = read_records(data / "cgcnn_sample_regression")
    ids = [r.id for r in records]
    volumes = np.array([[r.structure.volume, r.structure.density] for r in records])
    columns = ["volume (Å³)", "density (g/cm³)"]
    path = tmp_path / f"table{suffix}"
    with TableWriter(path, len(ids), "features") as table:
        for start in range(0, len(ids), 4):  # chunks of 4, 4, 2
            frame = pd.DataFrame(volumes[start : start + 4], columns=columns)
            frame.insert(0, "id", ids[start : start + 4])
            table.write(frame)
        assert not path.exists()  # in a temporary file until closed
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]
    if suffix == ".npz":
        with np.load(path) as npz:
            assert npz["ids"].tolist() == ids and npz["columns"].tolist() == columns
            np.testing.assert_array_equal(npz["features"], volumes)
        return
    back = pd.read_csv(path, dtype={"id": str}) if suffix == ".csv" else pd.read_parquet(path)
    assert list(back.columns) == ["id", *columns] and back["id"].tolist() == ids
    np.testing.assert_allclose(back[columns].to_numpy(), volumes, rtol=1e-12)


def test_table_writer_leaves_nothing_behind_when_the_work_fails(tmp_path: Path) -> None:
    import pandas as pd

    from tlmat.io.writers import TableWriter

    path = tmp_path / "out.npz"
    with pytest.raises(RuntimeError, match="diverged"), TableWriter(path, 4) as table:
        table.write(pd.DataFrame({"id": ["a", "b"], "x": [1.0, 2.0]}))
        raise RuntimeError("diverged")
    assert list(tmp_path.iterdir()) == []
    short = TableWriter(path, 4)
    short.write(pd.DataFrame({"id": ["a"], "x": [1.0]}))
    with pytest.raises(ValueError, match="1 rows written of 4"):
        short.close()
    changed = TableWriter(tmp_path / "out.csv")
    changed.write(pd.DataFrame({"id": ["a"], "x": [1.0]}))
    with pytest.raises(ValueError, match="columns changed"):
        changed.write(pd.DataFrame({"id": ["b"], "y": [1.0]}))
    changed.abort()
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match=r"written as \.csv, \.parquet, \.npz"):
        TableWriter(tmp_path / "out.txt")
