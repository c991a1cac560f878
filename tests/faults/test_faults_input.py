"""Nothing silently wrong on the way in: each real fault, made from real structures, is
skipped with its exact reason (or refuses the input) and names its file and row; the good
structures survive; ``--strict`` aborts every command that reads structures."""

from __future__ import annotations

import gzip
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pymatgen.core import Molecule
from typer.testing import CliRunner

from tlmat.cli import app
from tlmat.data import load_dataset
from tlmat.graphs import GraphSettings
from tlmat.io import InputError, Reason, read_records

runner = CliRunner()
KCL_SITE = "K1 K1+ 1 a 0. 0. 0. 1. 0 d"  # the K site of COD 1000050 (KCl)


def only_problem(log):
    assert len(log.problems) == 1, log.problems
    return log.problems[0]


def append_rows(folder: Path, *rows: str) -> None:
    with (folder / "id_prop.csv").open("a") as handle:
        handle.write("".join(f"{row}\n" for row in rows))


def output(result) -> str:
    """CLI output with rich's line wrapping undone."""
    return re.sub(r"\s+", " ", result.output)


def squashed(text: str) -> str:
    """Text without any whitespace (rich folds long paths anywhere)."""
    return re.sub(r"\s+", "", text)


# 1. unknown element symbol ----------------------------------------------------------------
def test_unknown_element_is_skipped_not_a_dummy_and_not_a_crash(
    cgcnn_folder: Path, tmp_path: Path
) -> None:
    cif = cgcnn_folder / "1000050.cif"
    cif.write_text(cif.read_text().replace(KCL_SITE, "Xx1 Xx 1 a 0. 0. 0. 1. 0 d"))
    dataset = load_dataset(cgcnn_folder, GraphSettings.preset("cgcnn"), cache_dir=tmp_path)
    assert len(dataset) == 9 and "1000050" not in dataset.ids
    problem = only_problem(dataset.log)
    assert problem.reason is Reason.NOT_AN_ELEMENT and problem.reason.value == "unknown element"
    assert (problem.where, problem.id) == ("sample/id_prop.csv:line 2", "1000050")
    assert problem.detail == "'Xx' is no chemical element"


# 2. byte-order marks and UTF-16 -----------------------------------------------------------
@pytest.fixture()
def perov_rows(data: Path) -> pd.DataFrame:
    return pd.read_csv(data / "perov_5" / "test.csv.gz", nrows=4)[
        ["material_id", "cif", "heat_ref"]
    ]


def test_utf8_bom_keeps_the_id_column(perov_rows: pd.DataFrame, cgcnn_folder: Path, tmp_path):
    path = tmp_path / "excel.csv"
    perov_rows.to_csv(path, index=False, encoding="utf-8-sig")  # as Excel saves CSV
    assert path.read_bytes().startswith(b"\xef\xbb\xbf")
    result = read_records(path, ["heat_ref"])
    assert [r.id for r in result] == [str(i) for i in perov_rows.material_id]
    # an id_prop.csv with a BOM keeps its first id
    id_prop = cgcnn_folder / "id_prop.csv"
    id_prop.write_bytes(b"\xef\xbb\xbf" + id_prop.read_bytes())
    folder = read_records(cgcnn_folder)
    assert folder.records[0].id == "1000041" and not folder.log.problems


def test_utf16_is_decoded_and_utf16_without_bom_is_refused(perov_rows: pd.DataFrame, tmp_path):
    path = tmp_path / "utf16.csv.gz"
    with gzip.open(path, "wt", encoding="utf-16", newline="") as handle:
        perov_rows.to_csv(handle, index=False)
    result = read_records(path, ["heat_ref"])
    assert [r.id for r in result] == [str(i) for i in perov_rows.material_id]
    assert [r.targets["heat_ref"] for r in result] == list(perov_rows.heat_ref)
    bare = tmp_path / "utf16le.csv"
    perov_rows.to_csv(bare, index=False, encoding="utf-16-le")  # no byte-order mark
    with pytest.raises(ValueError, match=r"utf16le\.csv: .*UTF-16 without a byte-order mark"):
        read_records(bare, ["heat_ref"])


# 3. duplicate ids -------------------------------------------------------------------------
def test_duplicate_ids_refuse_the_dataset_by_default(cgcnn_folder: Path, tmp_path: Path) -> None:
    append_rows(cgcnn_folder, "1000041,99.0")  # same material, another target
    expected = (
        r"refused, 1 duplicate id\(s\): '1000041' at sample/id_prop.csv:line 1 and "
        r"sample/id_prop.csv:line 11\. .*on_duplicate='first'"
    )
    with pytest.raises(InputError, match=expected):
        read_records(cgcnn_folder)
    with pytest.raises(InputError, match=expected):
        load_dataset(cgcnn_folder, GraphSettings.preset("cgcnn"), cache_dir=tmp_path)


def test_duplicate_ids_first_keeps_the_first_row(cgcnn_folder: Path, tmp_path: Path) -> None:
    append_rows(cgcnn_folder, "1000041,99.0")
    dataset = load_dataset(
        cgcnn_folder, GraphSettings.preset("cgcnn"), cache_dir=tmp_path, on_duplicate="first"
    )
    assert len(dataset) == 10 and dataset.ids.count("1000041") == 1
    assert dataset.targets["target"][dataset.ids.index("1000041")] == 1.0
    problem = only_problem(dataset.log)
    assert problem.reason is Reason.DUPLICATE_ID
    assert (problem.where, problem.id) == ("sample/id_prop.csv:line 11", "1000041")
    assert problem.detail == "id already read at sample/id_prop.csv:line 1"
    refused = runner.invoke(app, ["info", str(cgcnn_folder)])
    assert refused.exit_code == 1 and "duplicate id" in output(refused)
    kept = runner.invoke(app, ["info", str(cgcnn_folder), "--on-duplicate", "first"])
    assert kept.exit_code == 0, kept.output
    assert "duplicate id" in output(kept) and "line 11" in output(kept)


# 4. paths that leave the folder -----------------------------------------------------------
def test_paths_leaving_the_folder_are_refused(cgcnn_folder: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside.cif"
    shutil.copy(cgcnn_folder / "1000041.cif", outside)  # a real CIF that must not be read
    append_rows(cgcnn_folder, f"{outside},2.5", "../outside,1.5")
    result = read_records(cgcnn_folder)
    assert len(result) == 10
    assert [(p.reason, p.where, p.id, p.detail) for p in result.log.problems] == [
        (
            Reason.PATH_OUTSIDE,
            "sample/id_prop.csv:line 11",
            str(outside),
            f"{str(outside)!r} is an absolute path",
        ),
        (
            Reason.PATH_OUTSIDE,
            "sample/id_prop.csv:line 12",
            "../outside",
            "'../outside' climbs out of the folder with '..'",
        ),
    ]
    # the CLI prints such an id as text: "[/tmp/…]" read as rich markup crashed it
    expected = f"sample/id_prop.csv:line 11 [{outside}]: {{}}, path outside the dataset folder"
    shown = runner.invoke(app, ["info", str(cgcnn_folder)])
    assert shown.exit_code == 0, shown.output
    assert squashed(expected.format("skipped")) in squashed(shown.output)
    strict = runner.invoke(app, ["info", str(cgcnn_folder), "--strict"])
    assert strict.exit_code == 1, strict.output
    assert squashed(expected.format("aborted")) in squashed(strict.output)


# 5. OS errors on one row ------------------------------------------------------------------
def test_id_too_long_for_a_file_name_skips_only_its_row(cgcnn_folder: Path) -> None:
    append_rows(cgcnn_folder, "9" * 300 + ",1.0")
    result = read_records(cgcnn_folder)
    assert len(result) == 10
    problem = only_problem(result.log)
    assert problem.reason is Reason.UNREADABLE_FILE
    assert (problem.where, problem.id) == ("sample/id_prop.csv:line 11", "9" * 300)
    assert problem.detail.startswith("File name too long (" + "9" * 60 + "…")


# 6. log10 of non-positive targets ---------------------------------------------------------
def test_log10_of_non_positive_targets_names_the_ids(cgcnn_folder: Path, tmp_path: Path) -> None:
    id_prop = cgcnn_folder / "id_prop.csv"
    id_prop.write_text(
        id_prop.read_text()
        .replace("1000050,2.0", "1000050,-2.0")
        .replace("1101051,3.0", "1101051,0")
    )
    dataset = load_dataset(cgcnn_folder, GraphSettings.preset("cgcnn"), cache_dir=tmp_path)
    kept = dataset.require_positive("target")
    assert len(kept) == 8 and {"1000050", "1101051"}.isdisjoint(kept.ids)
    assert [(p.reason, p.id, p.detail) for p in kept.log.problems] == [
        (Reason.NON_POSITIVE_TARGET, "1000050", "'target' = -2; log10 needs a positive value"),
        (Reason.NON_POSITIVE_TARGET, "1101051", "'target' = 0; log10 needs a positive value"),
    ]
    with pytest.raises(InputError, match=r"aborted, log10 of 'target' .* 1000050, 1101051"):
        dataset.require_positive("target", strict=True)
    # the same through `tlmat train --log10 --strict`: refused at reading, ids named
    result = runner.invoke(
        app,
        [
            "train",
            str(cgcnn_folder),
            "-t",
            "target",
            "--log10",
            "--strict",
            "--run-dir",
            str(tmp_path / "run"),
            "--cache-dir",
            str(tmp_path),
        ],
    )
    text = output(result)
    assert result.exit_code == 1, result.output
    assert "aborted" in text and "1000050" in text and "1101051" in text


def test_benchmark_log10_skips_non_positive_targets_by_id(cgcnn_folder: Path, tmp_path) -> None:
    from tlmat.experiments.benchmark import BenchmarkConfig, grid_data

    id_prop = cgcnn_folder / "id_prop.csv"
    id_prop.write_text(id_prop.read_text().replace("1000050,2.0", "1000050,0"))
    config = BenchmarkConfig(
        name="log", data=str(cgcnn_folder), target="target", log10=True, sizes=[4],
        val_size=2, test_size=2,
    )  # fmt: skip
    dataset, split = grid_data(config, tmp_path)
    assert "1000050" not in dataset.ids and len(dataset) == 9 and len(split.test) == 2
    assert all(np.isfinite(dataset.targets["target"]))


# 7. extxyz frames without a cell ----------------------------------------------------------
def test_extxyz_frame_without_cell(data: Path, tmp_path: Path) -> None:
    with gzip.open(data / "mp_dielectric_mace_field" / "dielectric-test.xyz.gz", "rt") as f:
        lines = f.read().splitlines(keepends=True)
    n = int(lines[0])
    frame = lines[: n + 2]
    no_lattice = re.sub(r'Lattice="[^"]*" ', "", frame[1])
    periodic = [frame[0], no_lattice, *frame[2:]]
    molecule = [frame[0], no_lattice.replace('pbc="T T T"', 'pbc="F F F"'), *frame[2:]]
    path = tmp_path / "frames.xyz"
    path.write_text("".join(frame + periodic + molecule))
    result = read_records(path)
    assert len(result) == 2 and not result[1].periodic
    assert isinstance(result[1].structure, Molecule)
    problem = only_problem(result.log)
    assert problem.reason is Reason.NO_CELL and problem.reason.value == "no cell"
    assert problem.where == f"frames.xyz:frame 1 (line {n + 3})"
    assert problem.detail.startswith('pbc="T T T" but the cell is missing or flat (volume 0 Å³)')
    assert "Singular" not in problem.detail


# 8. --strict everywhere, and it says "aborted" --------------------------------------------
def _strict_args(command: str, folder: Path, tmp: Path) -> list[str]:
    cache = ["--cache-dir", str(tmp / "cache")]
    source = "cgcnn/formation-energy-per-atom"
    if command == "benchmark":
        config = tmp / "grid.yaml"
        config.write_text(
            f"name: strict\ndata: {folder}\ntarget: target\nsizes: [4]\nseeds: [0]\n"
            "sources: {}\nmethods: [base]\n"
        )
        return ["benchmark", str(config), "--results", str(tmp / "results"), *cache]
    if command in ("train", "finetune", "compare"):
        return [command, str(folder), "-t", "target", "--run-dir", str(tmp / "run"), *cache]
    if command == "predict":
        return ["predict", source, str(folder), "-o", str(tmp / "p.csv"), *cache]
    if command == "evaluate":
        return ["evaluate", source, str(folder), "-t", "target", *cache]
    if command == "embed":
        return ["embed", source, str(folder), "-o", str(tmp / "e.npz"), *cache]
    if command == "cache":
        return ["cache", str(folder), *cache]
    return ["info", str(folder)]


@pytest.mark.parametrize(
    "command",
    ["info", "cache", "train", "finetune", "compare", "predict", "evaluate", "embed", "benchmark"],
)
def test_strict_aborts_every_reading_command(
    command: str, cgcnn_folder: Path, tmp_path: Path
) -> None:
    (cgcnn_folder / "1000050.cif").write_text("not a cif")
    result = runner.invoke(app, [*_strict_args(command, cgcnn_folder, tmp_path), "--strict"])
    text = output(result)
    assert result.exit_code == 1, result.output
    assert "sample/id_prop.csv:line 2 [1000050]: aborted, unparsable structure" in text
    assert "skipped" not in text


def test_first_row_without_a_target_is_a_skip_not_a_header(cgcnn_folder: Path) -> None:
    # found while testing: an empty first target made the row a "header", dropping it
    id_prop = cgcnn_folder / "id_prop.csv"
    id_prop.write_text(id_prop.read_text().replace("1000041,1.0", "1000041,", 1))
    result = read_records(cgcnn_folder)
    # no target named: the row is kept without a value (a header would have been dropped)
    assert len(result) == 10 and not result.log.problems
    assert result[0].id == "1000041" and result[0].targets == {}
    named = read_records(cgcnn_folder, ["target"])
    assert len(named) == 9 and [p.id for p in named.log.problems] == ["1000041"]
    assert named.log.problems[0].reason is Reason.MISSING_TARGET


# 9. non-finite coordinates ----------------------------------------------------------------
NAN_SITE = ("  Os  Os1  1  0.77619935", "  Os  Os1  1  nan")


def test_nan_coordinates_are_named_in_both_reading_paths(
    perov_rows: pd.DataFrame, tmp_path: Path
) -> None:
    rows = perov_rows.copy()
    first = rows.cif[0]
    assert NAN_SITE[0] in first
    rows.loc[0, "cif"] = first.replace(*NAN_SITE)
    rows.loc[1, "cif"] = re.sub(r"_cell_length_a\s+\S+", "_cell_length_a   inf", rows.cif[1])
    assert "_cell_length_a   inf" in rows.cif[1]
    path = tmp_path / "nan.csv"
    rows.to_csv(path, index=False)
    slow = read_records(path, ["heat_ref"])
    fast = load_dataset(path, GraphSettings.preset("cgcnn"), ["heat_ref"], cache_dir=tmp_path)
    for log in (slow.log, fast.log):
        assert len(log.problems) == 2, log.problems
        assert {p.reason for p in log.problems} == {Reason.NON_FINITE_COORDINATES}
        assert "NaN or infinite" in log.problems[0].detail
        assert "neighbour" not in str(log.problems)
    assert len(slow) == len(fast) == 2


# 10. several structures where one is expected -----------------------------------------------
def test_a_cif_of_two_blocks_in_a_folder_or_a_cell_is_skipped_saying_why(
    cgcnn_folder: Path, perov_rows: pd.DataFrame, tmp_path: Path
) -> None:
    two = cgcnn_folder / "1000050.cif"
    two.write_text(two.read_text() + "\n" + (cgcnn_folder / "1000041.cif").read_text())
    problem = only_problem(read_records(cgcnn_folder).log)
    assert problem.reason is Reason.MANY_STRUCTURES and problem.id == "1000050"
    assert problem.detail == "holds 2 structures (CIF data blocks); expected one"
    dataset = load_dataset(cgcnn_folder, GraphSettings.preset("cgcnn"), cache_dir=tmp_path)
    assert only_problem(dataset.log).reason is Reason.MANY_STRUCTURES
    rows = perov_rows.copy()
    rows.loc[2, "cif"] = rows.cif[2] + "\n" + rows.cif[3]  # a plain P1 pair: the fast path
    path = tmp_path / "cells.csv"
    rows.to_csv(path, index=False)
    cells = load_dataset(path, GraphSettings.preset("cgcnn"), ["heat_ref"], cache_dir=tmp_path)
    assert len(cells) == 3 and only_problem(cells.log).reason is Reason.MANY_STRUCTURES


def test_a_cif_file_of_two_blocks_given_alone_gives_both(cgcnn_folder: Path) -> None:
    two = cgcnn_folder / "two.cif"
    two.write_text(
        (cgcnn_folder / "1000050.cif").read_text() + (cgcnn_folder / "1000041.cif").read_text()
    )
    result = read_records(two)
    assert [r.id for r in result] == ["two#0", "two#1"] and not result.log.problems
    alone = [read_records(cgcnn_folder / f"{i}.cif")[0] for i in ("1000050", "1000041")]
    assert [r.formula for r in result] == [r.formula for r in alone]


def test_a_multi_frame_xyz_named_by_id_prop_is_skipped_saying_why(
    data: Path, cgcnn_folder: Path
) -> None:
    with gzip.open(data / "mp_dielectric_mace_field" / "dielectric-test.xyz.gz", "rt") as f:
        lines = f.read().splitlines(keepends=True)
    n = int(lines[0])
    first, second = lines[: n + 2], lines[n + 2 : n + 2 + int(lines[n + 2]) + 2]
    (cgcnn_folder / "frames.extxyz").write_text("".join(first + second))
    (cgcnn_folder / "one.extxyz").write_text("".join(first))
    append_rows(cgcnn_folder, "frames,1.5", "one,2.5")
    result = read_records(cgcnn_folder)
    assert "one" in [r.id for r in result]
    problem = only_problem(result.log)
    assert (problem.id, problem.reason) == ("frames", Reason.MANY_STRUCTURES)
    assert problem.detail == "holds 2 structures (frames); expected one"


# 11. a summary with no target ----------------------------------------------------------------
def test_info_without_target_counts_every_structure_and_missing_values(
    data: Path, tmp_path: Path
) -> None:
    rows = pd.read_csv(data / "mp_cgcnn_36k" / "mp_cgcnn_36k.csv.gz", nrows=5)
    assert list(rows.columns)[:2] == ["id", "material_id"]
    rows["efermi"] = rows["efermi"].astype(object)
    rows.loc[1, "efermi"] = ""  # as rows 1462 and 7783 of the full file
    path = tmp_path / "mp5.csv"
    rows.to_csv(path, index=False)
    result = runner.invoke(app, ["info", str(path)])
    assert result.exit_code == 0, result.output
    text = output(result)
    assert re.search(r"structures read\W+5\W", text) and re.search(r"skipped\W+0\W", text)
    assert re.search(r"efermi\W+4\W+1\W", text), text  # n, missing
    assert re.search(r"band_gap\W+5\W+0\W", text), text
    assert not re.search(r"│ id ", result.output), result.output
    read = read_records(path)
    assert "id" not in read.target_names and len(read) == 5
