"""One entry point for every format: ``read_records(path)`` finds the right reader,
parses and checks each item (optionally on several processes), skips bad ones with a
reason, and returns the records with the log of what was skipped."""

from __future__ import annotations

import gzip
import logging
import zipfile
import zlib
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Literal, TypedDict, TypeVar

from ase import Atoms
from pymatgen.core import Molecule, Structure

from tlmat.datasets import resolve
from tlmat.io.ase_formats import iter_ase_db, iter_extxyz
from tlmat.io.checks import CheckOptions, DisorderPolicy, RawItem, make_record
from tlmat.io.folder import (
    ID_PROP,
    iter_id_prop_folder,
    iter_structure_file,
    iter_structure_files,
)
from tlmat.io.records import InputError, Problem, ProblemLog, ReadResult, Reason, Record
from tlmat.io.table import iter_table
from tlmat.progress import track

if TYPE_CHECKING:
    from typing_extensions import Unpack

logger = logging.getLogger("tlmat")

#: Bumped when reading changes what a source yields, so that datasets remembered by an
#: older reader are read again (2: UTF-8 byte-order marks stripped, unknown elements,
#: paths leaving a folder and repeated ids caught; 3: with no target named, an empty
#: value no longer skips its row, id columns are no targets, non-finite coordinates and
#: files of several structures are named as such, a CIF file's blocks are all read).
READ_VERSION = 3

#: What a compressed source that ends early or is no archive raises while it is read.
DAMAGED = (EOFError, gzip.BadGzipFile, zlib.error, zipfile.BadZipFile)

#: What to do with an id seen twice in one source: refuse the source, or keep the first.
DuplicatePolicy = Literal["error", "first"]
DUPLICATE_POLICIES: tuple[str, ...] = ("error", "first")

T = TypeVar("T")


class ReadOptions(TypedDict, total=False):
    """How a source is read (see :func:`read_records`)."""

    disorder: DisorderPolicy
    min_distance: float
    structure_column: str | None
    id_column: str | None
    limit: int | None
    workers: int
    progress: bool
    on_duplicate: DuplicatePolicy


def _strip(name: str) -> str:
    for suffix in (".gz", ".zip"):
        name = name.removesuffix(suffix)
    return name


def detect_format(path: Path) -> str:
    """``folder``, ``files``, ``csv``, ``json``, ``extxyz``, ``asedb`` or ``file``."""
    if path.is_dir():
        return "folder" if (path / ID_PROP).is_file() else "files"
    name = _strip(path.name.lower())
    if name.endswith(".csv"):
        return "csv"
    if name.endswith(".json"):
        return "json"
    if name.endswith((".xyz", ".extxyz")):
        return "extxyz"
    if name.endswith(".db"):
        return "asedb"
    return "file"


def iter_raw(
    path: str | Path,
    targets: Sequence[str] | None = None,
    structure_column: str | None = None,
    id_column: str | None = None,
) -> Iterator[RawItem | Problem]:
    """Raw (unparsed, unchecked) items of any supported source; an item a reader already
    knows to be bad (an id_prop.csv path leaving its folder) comes as a ``Problem``.
    A compressed source that ends early or is damaged raises :class:`InputError`."""
    # a registered name (perov_5/train) or a path inside $TLMAT_DATA_DIR works as well
    path = resolve(path)
    try:
        yield from _raw_items(path, detect_format(path), targets, structure_column, id_column)
    except DAMAGED as error:
        raise InputError(
            f"{path}: truncated or damaged compressed file ({error}); download or copy it again"
        ) from error


def _raw_items(path: Path, fmt: str, targets, structure_column, id_column):
    if fmt == "folder":
        yield from iter_id_prop_folder(path, targets)
    elif fmt == "files":
        yield from iter_structure_files(path)
    elif fmt in ("csv", "json"):
        yield from iter_table(path, structure_column, id_column, targets, fmt)
    elif fmt == "extxyz":
        yield from iter_extxyz(path, targets)
    elif fmt == "asedb":
        yield from iter_ase_db(path, targets)
    else:
        yield from iter_structure_file(path)


def _check(item: RawItem | Problem, options: CheckOptions) -> Record | Problem:
    return item if isinstance(item, Problem) else make_record(item, options)


def _check_chunk(args: tuple[list[RawItem | Problem], CheckOptions]) -> list[Record | Problem]:
    items, options = args
    return [_check(item, options) for item in items]


def _chunks(items: Iterable[RawItem | Problem], size: int) -> Iterator[list[RawItem | Problem]]:
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


def check_items(
    items: Iterable[RawItem | Problem], options: CheckOptions, log: ProblemLog, workers: int = 1
) -> Iterator[Record]:
    """Parse and check raw items in order, on ``workers`` processes; faults go to ``log``."""
    if workers <= 1:
        results: Iterable[Record | Problem] = (_check(item, options) for item in items)
    else:
        pool = ProcessPoolExecutor(workers)
        chunked = pool.map(_check_chunk, ((c, options) for c in _chunks(items, 64)))
        results = (r for chunk in chunked for r in chunk)
    try:
        yield from logged(results, log)
    finally:
        if workers > 1:
            pool.shutdown(cancel_futures=True)


def logged(results: Iterable[T | Problem], log: ProblemLog) -> Iterator[T]:
    """The results that are no :class:`Problem`, counted as read; problems go to ``log``."""
    for result in results:
        if isinstance(result, Problem):
            log.skip(result)
        else:
            log.n_ok += 1
            yield result


def check_duplicate_policy(on_duplicate: str) -> None:
    if on_duplicate not in DUPLICATE_POLICIES:
        raise ValueError(
            f"on_duplicate must be one of {', '.join(DUPLICATE_POLICIES)}, not {on_duplicate!r}"
        )


def unique_ids(
    records: Iterable[Record], on_duplicate: DuplicatePolicy, log: ProblemLog, source: str
) -> Iterator[Record]:
    """The records with every id once. A repeated id is a fault of the source: two rows
    claim one material, often with different targets, and both would be trained on (or
    one tested on while the other trains). ``"first"`` keeps the first and skips the rest
    with a reason; ``"error"`` refuses the source once it has been read, naming every
    repeat (at once under ``log.strict``)."""
    first: dict[str, str] = {}
    repeats: list[str] = []
    for record in records:
        if record.id not in first:
            first[record.id] = record.where
            yield record
            continue
        seen = first[record.id]
        problem = Problem(
            record.where, Reason.DUPLICATE_ID, f"id already read at {seen}", record.id
        )
        log.n_ok -= 1  # counted as read by check_items
        if on_duplicate == "first":
            log.skip(problem)
            continue
        if log.strict:
            raise InputError(problem)
        repeats.append(f"{record.id!r} at {seen} and {record.where}")
    if repeats:
        shown = "; ".join(repeats[:10]) + ("; …" if len(repeats) > 10 else "")
        raise InputError(
            f"{source}: refused, {len(repeats)} duplicate id(s): {shown}. Each id must name "
            "one material; fix the source, or keep the first row of each id with "
            "on_duplicate='first' (--on-duplicate first)"
        )


def iter_records(
    path: str | Path,
    targets: Sequence[str] | None = None,
    *,
    log: ProblemLog,
    disorder: DisorderPolicy = "skip",
    min_distance: float = CheckOptions.min_distance,
    structure_column: str | None = None,
    id_column: str | None = None,
    limit: int | None = None,
    workers: int = 1,
    progress: bool = False,
    on_duplicate: DuplicatePolicy = "error",
) -> Iterator[Record]:
    """Checked records one at a time (for datasets that should not sit in memory as
    Python objects); faults go to ``log``. Options as in :func:`read_records`."""
    check_duplicate_policy(on_duplicate)
    options = CheckOptions(disorder, min_distance, tuple(targets) if targets is not None else None)
    items = iter_raw(path, targets, structure_column, id_column)
    if limit is not None:
        items = islice(items, limit)
    checked = unique_ids(check_items(items, options, log, workers), on_duplicate, log, str(path))
    yield from track(checked, f"reading {Path(path).name}", limit, enabled=progress)


def read_records(
    path: str | Path,
    targets: Sequence[str] | None = None,
    *,
    strict: bool = False,
    **options: Unpack[ReadOptions],
) -> ReadResult:
    """Read every structure of a file or folder into checked :class:`Record` objects.

    Formats: CGCNN/ALIGNN folders (``id_prop.csv``), folders of CIF/POSCAR files, CSV with
    a CIF/POSCAR column, Matbench/pymatgen/JARVIS JSON, extended XYZ, ASE databases,
    structure files (every data block of a CIF); ``.gz``/``.zip`` are opened
    transparently.

    ``targets`` names the properties to keep (each must be a finite number); ``None``
    keeps every numeric column, a row whose value is empty or not a finite number simply
    lacking that one. Bad items are skipped with a reason (``result.log``);
    ``strict=True`` raises :class:`InputError` on the first one. An id seen twice makes
    the source an error unless ``on_duplicate="first"`` (keep the first row of each id).
    The other options (:class:`ReadOptions`) are those of :func:`iter_records`; a source
    with no structure at all is an :class:`InputError`.

    Example:
        >>> result = read_records("perov_5/test.csv.gz", targets=["heat_ref"])
        >>> print(result.log.summary())
    """
    log = ProblemLog(strict=strict)
    records = list(iter_records(path, targets, log=log, **options))
    if not records:
        raise nothing_read(path, log)
    logger.info("%s: %s", path, log.summary())
    return ReadResult(records, log, str(path))


def nothing_read(source: str | Path, log: ProblemLog) -> InputError:
    """The error of a source that gave no usable structure, saying why."""
    if not log.problems and log.n_ok == 0:
        return InputError(f"{source}: no structure to read: it holds no rows or structures")
    what = "could be read" if log.n_ok == 0 else "has a usable graph"
    return InputError(f"{source}: no structure {what} ({log.summary()})")


def records_from_structures(
    structures: Iterable[Structure | Molecule | Atoms],
    ids: Iterable[str] | None = None,
    targets: dict[str, Sequence[float]] | None = None,
    *,
    strict: bool = False,
    disorder: DisorderPolicy = "skip",
    on_duplicate: DuplicatePolicy = "error",
) -> ReadResult:
    """Records from in-memory pymatgen or ASE objects, with the same checks as files."""
    check_duplicate_policy(on_duplicate)
    structures = list(structures)
    ids = [str(i) for i in ids] if ids is not None else [str(i) for i in range(len(structures))]
    targets = targets or {}
    items = (
        RawItem(ids[i], f"structure {i}", s, {k: v[i] for k, v in targets.items()})
        for i, s in enumerate(structures)
    )
    log = ProblemLog(strict=strict)
    checked = check_items(items, CheckOptions(disorder=disorder), log)
    records = list(unique_ids(checked, on_duplicate, log, "memory"))
    return ReadResult(records, log, "memory")
