"""CGCNN/ALIGNN folders (``id_prop.csv`` + one CIF/POSCAR per id) and plain folders of
structure files."""

from __future__ import annotations

import csv
from collections.abc import Iterator, Sequence
from pathlib import Path, PurePath

from tlmat.io.checks import RawItem
from tlmat.io.parse import Text, cif_blocks
from tlmat.io.records import Problem, Reason
from tlmat.io.table import open_text

ID_PROP = "id_prop.csv"
#: File suffixes that hold one structure each.
STRUCTURE_SUFFIXES = (".cif", ".vasp", ".poscar", ".xyz", ".extxyz")


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:  # e.g. a name too long for the file system: reported when read
        return False


def structure_file(root: Path, item_id: str) -> Path:
    """The file an ``id_prop.csv`` id points at: the id itself (ALIGNN) or ``id.cif``
    (CGCNN) or another known suffix; a path that does not exist when none is there."""
    candidates = [root / item_id] + [root / f"{item_id}{s}" for s in STRUCTURE_SUFFIXES]
    candidates += [root / f"POSCAR-{item_id}", root / item_id / "POSCAR"]
    for candidate in candidates:
        if _is_file(candidate):
            return candidate
    return root / f"{item_id}.cif"


def outside_reason(item_id: str) -> str | None:
    """Why an ``id_prop.csv`` id cannot name a file inside its folder, or ``None``.

    Judged on the text alone, so that a path such as ``../x`` or ``/etc/passwd`` is
    never even looked at.
    """
    path = PurePath(item_id)
    if path.is_absolute():
        return f"{item_id!r} is an absolute path"
    if ".." in path.parts:
        return f"{item_id!r} climbs out of the folder with '..'"
    return None


def _numeric(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def iter_id_prop_folder(
    root: Path, targets: Sequence[str] | None = None
) -> Iterator[RawItem | Problem]:
    """Rows of ``id_prop.csv``: ``id, value[, value…]`` (no header, as CGCNN/ALIGNN write it;
    a header row is recognised when every value cell is a name, not a number or empty).

    Target names: ``targets`` when given (one per value column, or one name for a vector
    of all values); else the header's names; else ``"target"`` (a vector when a row has
    several values, as in ALIGNN's multi-output example). An id that would leave the
    folder comes as a :class:`Problem` instead.
    """
    with open_text(root / ID_PROP) as handle:
        rows = [row for row in csv.reader(handle) if row]
    header: list[str] | None = None
    # an empty value is a row with a missing target, not a header: a header names columns
    first = rows[0][1:] if rows else []
    if first and all(c.strip() and not _numeric(c) for c in first):
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
        where = f"{root.name}/{ID_PROP}:line {number}"
        outside = outside_reason(item_id)
        if outside is not None:
            yield Problem(where, Reason.PATH_OUTSIDE, outside, item_id)
            continue
        yield RawItem(item_id, where, structure_file(root, item_id), raw)


def iter_structure_files(root: Path) -> Iterator[RawItem]:
    """Every structure file in a folder (sorted by name), without targets."""
    for path in sorted(root.iterdir()):
        name = path.name.lower()
        if path.is_file() and (
            name.endswith(STRUCTURE_SUFFIXES) or name.startswith(("poscar", "contcar"))
        ):
            yield RawItem(path.stem, f"{root.name}/{path.name}", path)


def iter_structure_file(path: Path) -> Iterator[RawItem]:
    """A structure file given alone. A CIF of several structures is a collection: each
    data block with atom sites is one item (``stem#n``), none lost. (Where one structure
    is expected, as for an id of ``id_prop.csv``, such a file is skipped saying so.)"""
    if _strip_compression(path.name.lower()).endswith(".cif"):
        with open_text(path) as handle:
            blocks = cif_blocks(handle.read())
        if len(blocks) > 1:
            for n, block in enumerate(blocks):
                name = block.split(None, 1)[0] if block.strip() else ""
                yield RawItem(
                    f"{path.stem}#{n}", f"{path.name}:block {n} ({name})", Text(block, "cif")
                )
            return
    yield RawItem(path.stem, path.name, path)


def _strip_compression(name: str) -> str:
    return name.removesuffix(".gz")
