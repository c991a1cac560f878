"""Tables of structures: CSV with a CIF/POSCAR column, and JSON in the shapes the field
ships (pandas/Matbench "split", column dicts, lists of records, JARVIS-Leaderboard
``{split: {id: POSCAR}}``), plain, gzipped or zipped."""

from __future__ import annotations

import codecs
import csv
import gzip
import io
import json
import math
import sys
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from tlmat.hints import did_you_mean
from tlmat.io.checks import RawItem

#: Column names that hold a structure, in order of preference.
STRUCTURE_COLUMNS = ("cif", "poscar", "structure", "atoms", "initial_structure")
#: Column names that hold an id, in order of preference.
ID_COLUMNS = ("material_id", "mp_id", "mpid", "jid", "id", "name", "filename")
#: Numeric columns that describe a row rather than measure a property.
_NOT_TARGETS = ("index", "unnamed", "spacegroup", "space_group", "spg", "nsites", "split")

csv.field_size_limit(sys.maxsize)  # whole CIFs live in single cells


def text_encoding(head: bytes, path: Path) -> str:
    """The encoding of a text file from its first bytes: UTF-8 without its byte-order mark
    (Excel writes one; left in, it renames the first column and loses the id column),
    UTF-16/32 when their mark says so. A wide encoding without a mark is refused."""
    if head.startswith((codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)):
        return "utf-32"
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"
    if b"\0" in head:  # UTF-8 text never holds NUL bytes; UTF-16 text is full of them
        raise ValueError(
            f"{path}: not UTF-8 text (NUL bytes), probably UTF-16 without a byte-order "
            "mark; save it as UTF-8"
        )
    return "utf-8-sig"


def open_text(path: Path) -> io.TextIOBase:
    """Open a text file, gunzipping ``.gz`` transparently; the encoding is judged by
    :func:`text_encoding` (UTF-8 bytes that do not decode are replaced)."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        head = handle.read(4096)
    encoding = text_encoding(head, path)
    return opener(path, "rt", newline="", encoding=encoding, errors="replace")


def _pick(columns: Sequence[str], preferred: Sequence[str], what: str, path: Path) -> str | None:
    lower = {c.lower(): c for c in columns}
    for name in preferred:
        if name in lower:
            return lower[name]
    if what == "structure":
        raise ValueError(
            f"{path}: no structure column; expected one of {', '.join(preferred)} "
            f"(found {', '.join(columns)}); pass structure_column="
        )
    return None


def _is_number(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int | float):
        return True
    if isinstance(value, list) and value and all(isinstance(v, int | float) for v in value):
        return True
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


def guess_target_columns(
    row: dict[str, Any], exclude: Iterable[str | None] = ()
) -> tuple[str, ...]:
    """Columns of a first row that look like properties: numeric and not id/index-like
    (an id column beside the one chosen, such as a row number ``id``, is no property)."""
    skip = {c for c in exclude if c}
    return tuple(
        name
        for name, value in row.items()
        if name
        and name not in skip
        and name.lower() not in ID_COLUMNS
        and not any(tag in name.lower() for tag in _NOT_TARGETS)
        and _is_number(value)
    )


def _structure_format(column: str) -> str | None:
    return {"cif": "cif", "poscar": "poscar"}.get(column.lower())


def rows_to_items(
    rows: Iterable[dict[str, Any]],
    path: Path,
    structure_column: str | None = None,
    id_column: str | None = None,
    targets: Sequence[str] | None = None,
    where: str = "row",
    fixed_columns: bool = False,
) -> Iterator[RawItem]:
    """Raw items from table rows (dicts); column roles are guessed from the first row.
    With ``fixed_columns`` (a CSV: every row has the header's columns) a target that is
    no column is an error naming the numeric columns, not a skip of every row."""
    from tlmat.io.parse import Text

    chosen: tuple[str, str | None, tuple[str, ...]] | None = None
    for number, row in enumerate(rows, start=1):
        if chosen is None:
            columns = list(row)
            scol = structure_column or _pick(columns, STRUCTURE_COLUMNS, "structure", path)
            icol = id_column or _pick(columns, ID_COLUMNS, "id", path)
            tcols = (
                tuple(targets) if targets is not None else guess_target_columns(row, [scol, icol])
            )
            chosen = (scol, icol, tcols)
            absent = [t for t in tcols if t not in row]
            if fixed_columns and absent:
                raise ValueError(_no_column(path, absent[0], row, [scol, icol]))
        scol, icol, tcols = chosen
        if scol not in row:
            raise ValueError(f"{path}: structure column {scol!r} not found")
        payload = row[scol]
        fmt = _structure_format(scol)
        if isinstance(payload, str) and fmt:
            payload = Text(payload.replace("\\n", "\n") if "\n" not in payload else payload, fmt)
        item_id = str(row[icol]) if icol and row.get(icol) not in (None, "") else f"{number}"
        meta = {
            k: str(v)
            for k, v in row.items()
            if k and k not in (scol, icol) and k not in tcols and not isinstance(v, dict | list)
        }
        yield RawItem(
            id=item_id,
            where=f"{path.name}:{where} {number}",
            payload=payload,
            targets={t: row.get(t) for t in tcols if t in row},
            meta=meta,
        )


def _no_column(path: Path, name: str, row: dict[str, Any], roles: list[str | None]) -> str:
    numeric = guess_target_columns(row, roles)
    hint = did_you_mean(name, row, n=3)
    return (
        f"{path}: no column {name!r} to use as a target; its numeric columns are "
        f"{', '.join(numeric) or '(none)'}{hint}"
    )


def load_json(path: Path) -> Any:
    """JSON from ``.json``, ``.json.gz`` or a ``.zip`` holding one JSON file."""
    if path.suffix == ".zip":
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if n.endswith(".json")]
            if len(names) != 1:
                raise ValueError(f"{path}: expected one .json inside the zip, found {names}")
            return json.loads(archive.read(names[0]))
    with open_text(path) as handle:
        return json.load(handle)


def _nan_to_none(value: Any) -> Any:
    return None if isinstance(value, float) and math.isnan(value) else value


def json_rows(data: Any, path: Path) -> tuple[list[dict[str, Any]], str]:
    """Normalise the JSON table shapes to a list of row dicts (and what a row is called)."""
    if isinstance(data, list):
        if not all(isinstance(row, dict) for row in data[:10]):
            raise ValueError(f"{path}: a JSON list must hold one object per structure")
        return data, "entry"
    if not isinstance(data, dict):
        raise ValueError(f"{path}: unsupported JSON layout ({type(data).__name__})")
    if {"columns", "data"} <= set(data):  # pandas orient="split" (Matbench, matminer)
        index = data.get("index", range(len(data["data"])))
        rows = []
        for idx, values in zip(index, data["data"], strict=True):
            row = dict(zip(data["columns"], values, strict=True))
            row.setdefault("id", idx)
            rows.append(row)
        return rows, "row"
    splits = {"train", "val", "test"} & set(data)
    if splits and all(isinstance(data[s], dict) for s in splits):  # JARVIS-Leaderboard
        rows = []
        for split in ("train", "val", "test"):
            for key, value in data.get(split, {}).items():
                if not isinstance(value, str | dict):
                    raise ValueError(
                        f"{path}: {split}/{key} holds {type(value).__name__}, not a structure; "
                        "this looks like a labels-only leaderboard file"
                    )
                rows.append({"id": key, "structure": value, "split": split})
        return rows, "entry"
    values = list(data.values())
    if values and all(isinstance(v, dict) for v in values):  # pandas orient="columns"
        keys = list(values[0])
        rows = [{col: _nan_to_none(data[col].get(k)) for col in data} | {"id": k} for k in keys]
        if not any(c.lower() in ID_COLUMNS for c in data):
            return rows, "row"
        for row in rows:  # a real id column wins over the pandas index
            del row["id"]
        return rows, "row"
    raise ValueError(f"{path}: unsupported JSON layout (keys: {list(data)[:8]})")


def iter_table(
    path: Path,
    structure_column: str | None = None,
    id_column: str | None = None,
    targets: Sequence[str] | None = None,
    fmt: str = "csv",
) -> Iterator[RawItem]:
    """A table with one structure per row: CSV (optionally ``.gz``) with the structure as
    CIF or POSCAR text (``fmt="csv"``), or Matbench/matminer/pymatgen/JARVIS JSON (plain,
    ``.gz`` or ``.zip``; ``fmt="json"``)."""
    if fmt == "json":
        rows, where = json_rows(load_json(path), path)
        yield from rows_to_items(rows, path, structure_column, id_column, targets, where)
        return
    with open_text(path) as handle:
        rows = csv.DictReader(handle)
        yield from rows_to_items(
            rows, path, structure_column, id_column, targets, fixed_columns=True
        )


def join_labels(structures: Path, labels: Path, on: str, out_dir: Path) -> Path:
    """A gzipped CSV of the rows of ``structures`` (a table with a structure column)
    joined to the rows of ``labels`` (a label-only table, e.g. the multi-fidelity band
    gaps keyed by Materials Project id) on the column ``on``.

    Label columns win a name clash (the structure table's copy gets ``_structures``).
    The result is written once to ``out_dir``, named by a hash of both files' bytes, so a
    changed input gives a new table and an unchanged one is not joined again.
    """
    import hashlib

    import pandas as pd

    digest = hashlib.sha256(on.encode())
    for path in (structures, labels):
        with Path(path).open("rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
    stems = "+".join(Path(p).name.split(".")[0] for p in (structures, labels))
    out = Path(out_dir) / f"{stems}-{digest.hexdigest()[:12]}.csv.gz"
    if out.exists():
        return out
    left = pd.read_csv(structures, dtype={on: str})
    right = pd.read_csv(labels, dtype={on: str})
    for name, table in (("structures", left), ("labels", right)):
        if on not in table.columns:
            raise ValueError(f"{name} table has no column {on!r} to join on")
    clash = [c for c in left.columns if c in right.columns and c != on]
    left = left.rename(columns={c: f"{c}_structures" for c in clash})
    joined = left.merge(right, on=on, how="inner")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    joined.to_csv(tmp, index=False, compression="gzip")
    tmp.replace(out)
    return out
