"""Formats read through ASE: extended XYZ (properties in ``atoms.info``) and ASE databases."""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms

from tlmat.io.checks import RawItem
from tlmat.io.parse import Text
from tlmat.io.table import open_text

#: ``atoms.info`` keys that name a frame rather than measure it.
ID_KEYS = ("material_id", "mp_id", "jid", "id", "name")


def _numeric_info(info: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in info.items():
        if isinstance(value, bool) or key in ID_KEYS:
            continue
        if isinstance(value, int | float | np.integer | np.floating):
            out[key] = float(value)
        elif isinstance(value, np.ndarray) and value.dtype.kind in "if":
            out[key] = value.astype(float).ravel()
    return out


def _frame_item(atoms: Atoms, item_id: str, where: str, targets: Sequence[str] | None) -> RawItem:
    info = dict(atoms.info)
    for key in ID_KEYS:
        if key in info:
            item_id = str(info[key])
            break
    numeric = _numeric_info(info)
    raw = numeric if targets is None else {t: info.get(t) for t in targets}
    meta = {k: str(v) for k, v in info.items() if k not in numeric and isinstance(v, str)}
    return RawItem(item_id, where, atoms, raw, meta)


def split_xyz_frames(text: str) -> Iterator[tuple[int, str]]:
    """(first line number, frame text) for every frame of an XYZ file; a broken atom-count
    line ends the split with the rest of the file as one (unparsable) frame."""
    lines = text.splitlines(keepends=True)
    start = 0
    while start < len(lines):
        if not lines[start].strip():
            start += 1
            continue
        try:
            count = int(lines[start].split()[0])
        except (ValueError, IndexError):
            yield start + 1, "".join(lines[start:])
            return
        yield start + 1, "".join(lines[start : start + count + 2])
        start += count + 2


def iter_extxyz(path: Path, targets: Sequence[str] | None = None) -> Iterator[RawItem]:
    """Frames of an (optionally gzipped) extended XYZ file, one at a time so that a broken
    frame is reported and skipped rather than ending the read."""
    import ase.io

    with open_text(path) as handle:
        text = handle.read()
    for index, (line, frame) in enumerate(split_xyz_frames(text)):
        where = f"{path.name}:frame {index} (line {line})"
        try:
            atoms = ase.io.read(io.StringIO(frame), format="extxyz")
        except Exception:
            # make_record parses the text again and reports the parser's own message
            yield RawItem(f"{path.stem}#{index}", where, Text(frame, "extxyz"))
            continue
        yield _frame_item(atoms, f"{path.stem}#{index}", where, targets)


def iter_ase_db(path: Path, targets: Sequence[str] | None = None) -> Iterator[RawItem]:
    """Rows of an ASE database (SQLite ``.db`` or ``.json``): key-value pairs and ``data``
    arrays are the targets."""
    import ase.db

    with ase.db.connect(str(path)) as db:
        for row in db.select():
            atoms = row.toatoms()
            atoms.info.update(row.key_value_pairs)
            atoms.info.update({k: np.asarray(v) for k, v in (row.get("data") or {}).items()})
            yield _frame_item(atoms, f"{path.stem}:{row.id}", f"{path.name}:id {row.id}", targets)
