"""Fault cases of `tlmat screen`: every bad input ends with `error: …` naming the file,
row or id and the reason (exit 1), never with a traceback or a silently wrong screen.

The ensembles are fine-tuned for one epoch on the real Hf–Zn–N sample (TAATA) and, for
the wrong-unit case, trained on real Castelli perovskites (eV/cell)."""

from __future__ import annotations

import csv

import pytest
from typer.testing import CliRunner

from tlmat.cli import app


def _run(args: list[str]):
    result = CliRunner().invoke(app, args)
    return result, " ".join(result.output.split())


@pytest.fixture(scope="module")
def setup(data, tmp_path_factory):
    from tlmat.io import read_records, write_csv, write_extxyz

    tmp = tmp_path_factory.mktemp("screen-faults")
    sample = data / "taata_nitrides_sample"
    records = read_records(sample / "examples.json", targets=["E_f"]).records
    write_extxyz(records[:40], tmp / "labelled.extxyz")
    write_extxyz(records[40:50], tmp / "candidates.extxyz")
    cache = ["--cache-dir", str(tmp / "cache")]
    result, _ = _run(["finetune", str(tmp / "labelled.extxyz"), "--source",
                      "cgcnn/formation-energy-per-atom", "-t", "E_f", "--unit", "eV/atom",
                      "--ensemble", "2", "--epochs", "1", "--run-dir", str(tmp / "ens"),
                      *cache])  # fmt: skip
    assert result.exit_code == 0, result.output
    perovskites = tmp / "perov40.csv"
    write_csv(read_records(data / "perov_5" / "val.csv.gz", ["heat_ref"], limit=40), perovskites)
    result, _ = _run(["train", str(perovskites), "-t", "heat_ref", "--unit", "eV/cell",
                      "--model", "cgcnn-small", "--ensemble", "2", "--epochs", "1",
                      "--run-dir", str(tmp / "ens-cell"), *cache])  # fmt: skip
    assert result.exit_code == 0, result.output
    ids = [r.id for r in records[40:50]]
    return tmp, sample, ids, cache


def _screen(setup, *extra: str, ensemble: str = "ens", oracle: str | None = None):
    tmp, sample, _, cache = setup
    oracle = oracle or str(sample / "examples.csv")
    out = tmp / f"out-{len(list(tmp.iterdir()))}"
    return _run(["screen", str(tmp / "candidates.extxyz"), "--ensemble", str(tmp / ensemble),
                 "--oracle", oracle, "--oracle-id", "material_id", "--oracle-energy", "E_f",
                 "-o", str(out), *cache, *extra])  # fmt: skip


def test_a_single_model_is_refused_because_screening_needs_sigma(setup) -> None:
    result, text = _screen(setup, ensemble="ens/member-0")
    assert result.exit_code == 1 and "not an ensemble folder" in text and "needs σ" in text


def test_an_ensemble_of_another_unit_is_refused(setup) -> None:
    result, text = _screen(setup, ensemble="ens-cell")
    assert result.exit_code == 1
    assert "formation energies per atom (eV/atom)" in text and "eV/cell" in text


def test_an_oracle_table_lacking_a_survivor_names_it(setup, tmp_path) -> None:
    _, sample, ids, _ = setup
    table = tmp_path / "dft.csv"
    with (sample / "examples.csv").open() as source, table.open("w", newline="") as out:
        rows = list(csv.DictReader(source))
        writer = csv.DictWriter(out, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(r for r in rows if r["material_id"] != ids[0])
    result, text = _screen(setup, "-k", "1000", oracle=str(table))  # everything survives
    assert result.exit_code == 1 and "no formation energy for 1 id(s)" in text
    assert ids[0] in text and "Traceback" not in result.output


def test_an_oracle_table_with_a_repeated_id_or_a_bad_energy_is_refused(setup, tmp_path) -> None:
    _, sample, _, _ = setup
    lines = (sample / "examples.csv").read_text().splitlines()
    repeated = tmp_path / "repeated.csv"
    repeated.write_text("\n".join([*lines, lines[1]]) + "\n")
    result, text = _screen(setup, oracle=str(repeated))
    assert result.exit_code == 1 and "repeated in the oracle table" in text
    bad = tmp_path / "bad.csv"
    header, first, *rest = lines
    cells = first.split(",")
    cells[2] = "n/a"
    bad.write_text("\n".join([header, ",".join(cells), *rest]) + "\n")
    result, text = _screen(setup, oracle=str(bad))
    assert result.exit_code == 1 and f"row 2 ({cells[0]})" in text and "not a number" in text


def test_a_known_phases_table_without_its_columns_is_refused(setup, tmp_path) -> None:
    known = tmp_path / "known.csv"
    known.write_text("composition,E_f\nHf,0.0\n")
    result, text = _screen(setup, "--known", str(known), "--known-energy", "E_f")
    assert result.exit_code == 1 and "no column 'formula'" in text and str(known) in text


def test_prototypes_need_exactly_one_of_system_and_substitute(setup) -> None:
    tmp, _, _, cache = setup
    args = ["screen", "--prototypes", str(tmp / "candidates.extxyz"), "--ensemble",
            str(tmp / "ens"), "--oracle", "chgnet", "--references", str(tmp / "labelled.extxyz"),
            "-o", str(tmp / "proto-out"), *cache]  # fmt: skip
    result, text = _run(args)
    assert result.exit_code == 1 and "exactly one of --system and --substitute" in text
    result, text = _run([*args, "--substitute", "Ti"])
    assert result.exit_code == 1 and "expected e.g. Ti=Hf" in text


def test_config_and_command_line_levels_are_not_mixed(setup, tmp_path) -> None:
    tmp, _, _, _ = setup
    config = tmp_path / "screen.yaml"
    config.write_text("levels: []\n")
    result, text = _run(["screen", str(tmp / "candidates.extxyz"), "--config", str(config),
                         "-o", str(tmp_path / "out")])  # fmt: skip
    assert result.exit_code == 1 and "give no CANDIDATES" in text
    result, text = _run(["screen", "--config", str(config), "-o", str(tmp_path / "out")])
    assert result.exit_code == 1 and "levels" in text  # at least one level
    result, text = _run(["screen", "-o", str(tmp_path / "out")])
    assert (
        result.exit_code == 1 and "missing CANDIDATES or --prototypes, --ensemble, --oracle" in text
    )


def test_a_negative_k_is_refused_before_any_work(setup, tmp_path) -> None:
    result, text = _screen(setup, "-k", "-1")
    assert result.exit_code == 2 and "greater than or equal to 0" in text  # typer's min=0


def test_results_land_only_in_an_empty_or_tlmat_folder(setup, tmp_path) -> None:
    tmp, sample, _, cache = setup
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("my notes")
    result, text = _run(["screen", str(tmp / "candidates.extxyz"), "--ensemble", str(tmp / "ens"),
                         "--oracle", str(sample / "examples.csv"), "--oracle-id", "material_id",
                         "--oracle-energy", "E_f", "-o", str(mine), *cache])  # fmt: skip
    assert result.exit_code == 1 and "--overwrite" in text
    assert (mine / "notes.txt").read_text() == "my notes"
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
