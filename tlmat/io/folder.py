"""CGCNN/ALIGNN folders (``id_prop.csv`` + one CIF/POSCAR per id) and plain folders of
structure files."""

from __future__ import annotations

import csv
from collections.abc import Iterator, Sequence
from pathlib import Path

from tlmat.io.checks import RawItem

ID_PROP = "id_prop.csv"
#: File suffixes that hold one structure each.
STRUCTURE_SUFFIXES = (".cif", ".vasp", ".poscar", ".xyz", ".extxyz")


def structure_file(root: Path, item_id: str) -> Path:
    """The file an ``id_prop.csv`` id points at: the id itself (ALIGNN) or ``id.cif``
    (CGCNN) or another known suffix; a path that does not exist when none is there."""
    candidates = [root / item_id] + [root / f"{item_id}{s}" for s in STRUCTURE_SUFFIXES]
    candidates += [root / f"POSCAR-{item_id}", root / item_id / "POSCAR"]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    return root / f"{item_id}.cif"


def _numeric(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def iter_id_prop_folder(root: Path, targets: Sequence[str] | None = None) -> Iterator[RawItem]:
    """Rows of ``id_prop.csv``: ``id, value[, value…]`` (no header, as CGCNN/ALIGNN write it;
    a header row is recognised when none of its value cells is a number).

    Target names: ``targets`` when given (one per value column, or one name for a vector
    of all values); else the header's names; else ``"target"`` (a vector when a row has
    several values, as in ALIGNN's multi-output example).
    """
    with (root / ID_PROP).open(newline="") as handle:
        rows = [row for row in csv.reader(handle) if row]
    header: list[str] | None = None
    if rows and len(rows[0]) > 1 and not any(_numeric(c) for c in rows[0][1:]):
        header, rows = rows[0][1:], rows[1:]
    names = list(targets) if targets is not None else header
    for number, row in enumerate(rows, start=1 + (header is not None)):
        item_id, values = row[0].strip(), row[1:]
        if names is not None and len(names) == len(values):
            raw = dict(zip(names, values, strict=True))
        elif names is not None and len(names) == 1:
            raw = {names[0]: values}
        elif names is not None:
            raw = {name: None for name in names}  # wrong width: reported as missing targets
        elif len(values) == 1:
            raw = {"target": values[0]}
        else:
            raw = {"target": values}
        yield RawItem(
            item_id, f"{root.name}/{ID_PROP}:line {number}", structure_file(root, item_id), raw
        )


def iter_structure_files(root: Path) -> Iterator[RawItem]:
    """Every structure file in a folder (sorted by name), without targets."""
    for path in sorted(root.iterdir()):
        name = path.name.lower()
        if path.is_file() and (
            name.endswith(STRUCTURE_SUFFIXES) or name.startswith(("poscar", "contcar"))
        ):
            yield RawItem(path.stem, f"{root.name}/{path.name}", path)
