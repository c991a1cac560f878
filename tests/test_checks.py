"""Every class of bad input, made from real files, skipped with its exact reason while
the good structures survive; ``strict`` turns the first fault into an error."""

from __future__ import annotations

import csv
import gzip
from pathlib import Path

import pytest

from tlmat.io import InputError, Reason, read_records

KCL_SITE = "K1 K1+ 1 a 0. 0. 0. 1. 0 d"  # the K site of COD 1000050 (KCl, a = 3.634 Å)


def mutate(folder: Path, cif_id: str, old: str, new: str) -> None:
    path = folder / f"{cif_id}.cif"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


def only_problem(result):
    assert len(result.log.problems) == 1, result.log.problems
    return result.log.problems[0]


def test_clean_folder_has_no_problems(cgcnn_folder: Path) -> None:
    assert read_records(cgcnn_folder).log.summary() == "read 10, skipped 0"


def test_unparsable_cif_is_skipped_and_named(cgcnn_folder: Path) -> None:
    path = cgcnn_folder / "1000050.cif"
    path.write_text(path.read_text()[:600])  # cut off before the cell and atoms
    result = read_records(cgcnn_folder)
    problem = only_problem(result)
    assert problem.reason is Reason.UNPARSABLE
    assert problem.id == "1000050" and problem.where == "sample/id_prop.csv:line 2"
    assert len(result) == 9 and "1000050" not in {r.id for r in result}
    assert result.log.summary() == "read 9, skipped 1 (unparsable structure: 1)"


def test_missing_structure_file(cgcnn_folder: Path) -> None:
    (cgcnn_folder / "9000046.cif").unlink()
    problem = only_problem(read_records(cgcnn_folder))
    assert problem.reason is Reason.MISSING_FILE and "9000046.cif" in problem.detail


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("", Reason.MISSING_TARGET),
        ("n/a", Reason.NON_NUMERIC_TARGET),
        ("nan", Reason.NON_FINITE_TARGET),
        ("inf", Reason.NON_FINITE_TARGET),
        ("-inf", Reason.NON_FINITE_TARGET),
    ],
)
def test_bad_target_values(cgcnn_folder: Path, value: str, reason: Reason) -> None:
    id_prop = cgcnn_folder / "id_prop.csv"
    lines = id_prop.read_text().splitlines()
    lines[3] = f"1507756,{value}"
    id_prop.write_text("\n".join(lines) + "\n")
    # a bad value of the target asked for skips the row (with no target named, every row
    # is kept: tests/faults/test_faults_input.py)
    result = read_records(cgcnn_folder, ["target"])
    problem = only_problem(result)
    assert problem.reason is reason
    assert problem.where == "sample/id_prop.csv:line 4" and problem.id == "1507756"
    assert len(result) == 9


def test_bad_targets_in_a_real_csv(data: Path, tmp_path: Path) -> None:
    with gzip.open(data / "perov_5" / "test.csv.gz", "rt", newline="") as handle:
        rows = list(csv.DictReader(handle))[:20]
    rows[2]["heat_ref"] = "NaN"
    rows[5]["heat_ref"] = "--"
    rows[7]["cif"] = rows[7]["cif"].replace("_cell_length_a", "_cell_length_q")
    path = tmp_path / "perov.csv"
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    result = read_records(path, targets=["heat_ref"])
    assert len(result) == 17
    assert [(p.where, p.reason) for p in result.log.problems] == [
        ("perov.csv:row 3", Reason.NON_FINITE_TARGET),
        ("perov.csv:row 6", Reason.NON_NUMERIC_TARGET),
        ("perov.csv:row 8", Reason.UNPARSABLE),
    ]


def test_partial_occupancy_skipped_by_default_majority_on_request(cgcnn_folder: Path) -> None:
    mutate(
        cgcnn_folder,
        "1000050",
        KCL_SITE,
        "K1 K1+ 1 a 0. 0. 0. 0.7 0 d\nNa1 Na1+ 1 a 0. 0. 0. 0.3 0 d",
    )
    problem = only_problem(read_records(cgcnn_folder))
    assert problem.reason is Reason.PARTIAL_OCCUPANCY and problem.id == "1000050"
    assert "1 disordered site" in problem.detail

    result = read_records(cgcnn_folder, disorder="majority")
    assert result.log.n_skipped == 0
    kcl = next(r for r in result if r.id == "1000050").structure
    assert kcl.is_ordered and kcl.composition.reduced_formula == "KCl"


def test_overlapping_atoms(cgcnn_folder: Path) -> None:
    # a second K 0.05 a = 0.182 Å from the first (Pm-3m makes six such copies)
    mutate(cgcnn_folder, "1000050", KCL_SITE, KCL_SITE + "\nK2 K1+ 6 e 0.05 0. 0. 1. 0 d")
    problem = only_problem(read_records(cgcnn_folder))
    assert problem.reason is Reason.OVERLAPPING_ATOMS
    assert problem.detail.endswith("are 0.182 Å apart")


def test_strict_stops_at_the_first_fault(cgcnn_folder: Path) -> None:
    mutate(cgcnn_folder, "1000050", KCL_SITE, KCL_SITE + "\nK2 K1+ 6 e 0.05 0. 0. 1. 0 d")
    with pytest.raises(InputError, match=r"sample/id_prop.csv:line 2 \[1000050\].*overlapping"):
        read_records(cgcnn_folder, strict=True)


def test_nothing_readable_is_an_error(cgcnn_folder: Path) -> None:
    for path in cgcnn_folder.glob("*.cif"):
        path.write_text("garbage")
    with pytest.raises(InputError, match="no structure could be read"):
        read_records(cgcnn_folder)


def test_broken_extxyz_frame_loses_only_itself(data: Path, tmp_path: Path) -> None:
    with gzip.open(data / "mp_dielectric_mace_field" / "dielectric-test.xyz.gz", "rt") as f:
        lines = f.read().splitlines(keepends=True)
    # frame 1 starts after frame 0's count line, comment line and atoms
    n0 = int(lines[0])
    atom_line = n0 + 2 + 2  # the first atom line of frame 1
    lines[atom_line] = lines[atom_line].replace(lines[atom_line].split()[1], "x.yz", 1)
    path = tmp_path / "dielectric.xyz"
    path.write_text("".join(lines))
    result = read_records(path)
    problem = only_problem(result)
    assert problem.reason is Reason.UNPARSABLE and problem.where.startswith(
        "dielectric.xyz:frame 1"
    )
    assert len(result) == 562
