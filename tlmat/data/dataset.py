"""A dataset of cached graphs with their ids, formulas and targets, loaded from any
structure source in one call; a second call on unchanged input parses nothing."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import zipfile
from collections.abc import Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import asdict, dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch_geometric.data import Batch

from tlmat.data.ingest import iter_ingested
from tlmat.data.memory import paused_gc, trim_heap
from tlmat.datasets import resolve
from tlmat.graphs.cache import UNWRITABLE, CachedGraphs, CacheWriteError, GraphCache, set_aside
from tlmat.graphs.data import CrystalGraph
from tlmat.graphs.settings import GraphSettings
from tlmat.io.readers import (
    READ_VERSION,
    DuplicatePolicy,
    check_duplicate_policy,
    iter_records,
    nothing_read,
)
from tlmat.io.records import InputError, Problem, ProblemLog, Reason

#: Bumped when the manifest layout changes.
MANIFEST_VERSION = 1

logger = logging.getLogger("tlmat")

#: ``strict`` of :func:`load_dataset` calls that do not pass it (see :func:`strict_reading`).
_STRICT: ContextVar[bool] = ContextVar("tlmat_strict_reading", default=False)


@contextmanager
def strict_reading(strict: bool = True) -> Iterator[None]:
    """Make every :func:`load_dataset` call inside that does not pass ``strict`` itself
    strict, for code that loads datasets deep inside (benchmark grids, pretraining)."""
    token = _STRICT.set(strict)
    try:
        yield
    finally:
        _STRICT.reset(token)


def default_cache_dir() -> Path:
    """``$TLMAT_CACHE_DIR``, else ``~/.cache/tlmat`` (point it at shared disk on a cluster)."""
    return Path(os.environ.get("TLMAT_CACHE_DIR", Path.home() / ".cache" / "tlmat"))


def source_fingerprint(path: Path) -> str:
    """SHA-256 of a file's bytes, or of every file (name and bytes) under a folder."""
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        digest.update(str(file.relative_to(path) if file != path else file.name).encode())
        with file.open("rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


#: the target column of a multi-fidelity dataset that holds each row's fidelity (its
#: position among the fidelities, :mod:`tlmat.data.fidelity`); batches carry it
FIDELITY = "fidelity"


@dataclass
class GraphDataset(Sequence[CrystalGraph]):
    """Graphs plus what describes them: ``ids``, reduced ``formulas`` and ``targets``
    (name → array of shape (n,) or (n, k), units as in the source)."""

    graphs: CachedGraphs
    ids: list[str]
    formulas: list[str]
    targets: dict[str, np.ndarray]
    log: ProblemLog = field(default_factory=ProblemLog)
    source: str = ""
    from_cache: bool = False

    def __len__(self) -> int:
        return len(self.graphs)

    def __getitem__(self, index: int) -> CrystalGraph:  # type: ignore[override]
        graph = self.graphs[index]
        graph.id = self.ids[index]
        return graph

    @property
    def target_names(self) -> list[str]:
        return list(self.targets)

    def batch(self, indices: Sequence[int], target: str | None = None) -> Batch:
        """A PyG ``Batch`` of the given graphs, with ``y`` from ``target`` when named."""
        batch = self.graphs.batch(indices)
        if target is not None:
            batch.y = torch.as_tensor(self.targets[target][list(indices)], dtype=torch.float32)
        if FIDELITY in self.targets:
            batch.fidelity = torch.as_tensor(self.targets[FIDELITY][list(indices)]).long()
        return batch

    def require_positive(
        self, target: str, strict: bool = False, why: str = "log10"
    ) -> GraphDataset:
        """The rows whose ``target`` is positive (the domain of a log10 target); the
        others are skipped with their ids (``Reason.NON_POSITIVE_TARGET``) in the returned
        dataset's log, or, when ``strict``, the dataset is refused naming every such id."""
        values = np.asarray(self.targets[target], dtype=np.float64)
        bad = ~(values > 0)  # NaN too
        if values.ndim > 1:
            bad = bad.any(axis=tuple(range(1, values.ndim)))
        if not bad.any():
            return self
        index = np.flatnonzero(bad)
        ids = [self.ids[i] for i in index]
        shown = ", ".join(ids[:20]) + (", …" if len(ids) > 20 else "")
        message = f"{why} of {target!r} needs positive values; {len(ids)} row(s) are ≤ 0: {shown}"
        if strict:
            raise InputError(f"{self.source}: aborted, {message}")
        logger.warning("%s: skipped, %s", self.source, message)
        kept = self.subset(np.flatnonzero(~bad))
        log = ProblemLog(problems=list(self.log.problems), n_ok=len(kept))
        for i in index:
            value = values[i] if values.ndim == 1 else values[i].min()
            detail = f"{target!r} = {value:g}; {why} needs a positive value"
            log.problems.append(
                Problem(self.source, Reason.NON_POSITIVE_TARGET, detail, self.ids[i])
            )
        kept.log = log
        return kept

    def subset(self, indices: Sequence[int]) -> GraphDataset:
        idx = list(indices)
        graphs = CachedGraphs(
            self.graphs.cache,
            [self.graphs.entries[i] for i in idx],
            [self.graphs.source_index[i] for i in idx],
        )
        return GraphDataset(
            graphs,
            [self.ids[i] for i in idx],
            [self.formulas[i] for i in idx],
            {k: v[idx] for k, v in self.targets.items()},
            self.log,
            self.source,
            self.from_cache,
        )


def concat(first: GraphDataset, second: GraphDataset) -> GraphDataset:
    """Two datasets built with the same graph settings as one (targets both have)."""
    if first.graphs.cache.directory != second.graphs.cache.directory:
        raise ValueError("datasets built with different graph settings cannot be joined")
    names = [n for n in first.targets if n in second.targets]
    graphs = CachedGraphs(first.graphs.cache, first.graphs.entries + second.graphs.entries)
    log = ProblemLog()
    log.problems = first.log.problems + second.log.problems
    log.n_ok = len(first) + len(second)
    return GraphDataset(
        graphs,
        first.ids + second.ids,
        first.formulas + second.formulas,
        {n: np.concatenate([first.targets[n], second.targets[n]]) for n in names},
        log,
        f"{first.source} + {second.source}",
    )


def _targets_array(values: list[Any], name: str) -> np.ndarray:
    try:
        return np.asarray(values, dtype=np.float64)
    except ValueError as error:  # ragged vectors
        raise ValueError(f"target {name!r} has rows of different lengths") from error


def _manifest_key(path: Path, options: dict[str, Any], settings: GraphSettings) -> str:
    """What names a dataset's manifest: the source's bytes, the reading options and the
    graph settings."""
    payload = json.dumps(
        {
            "v": MANIFEST_VERSION,
            "source": source_fingerprint(path),
            "options": options,
            "graphs": settings.key(),
        },
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


def load_dataset(
    path: str | Path,
    settings: GraphSettings | None = None,
    targets: Sequence[str] | None = None,
    *,
    cache_dir: str | Path | None = None,
    strict: bool | None = None,
    disorder: str = "skip",
    on_duplicate: DuplicatePolicy = "error",
    elements: Collection[int] | None = None,
    workers: int | None = None,
    progress: bool = False,
    chunk_size: int = 20_000,
    fast: bool = True,
    **read_options: Any,
) -> GraphDataset:
    """Read a structure source and return its graphs, through the on-disk cache.

    The first call parses, checks and builds; later calls with the same file contents
    and options load the ids, targets and graphs from the cache without parsing.
    ``strict`` (default: as set by :func:`strict_reading`, else off) stops at the first
    bad structure; ``on_duplicate`` is ``"error"`` (refuse a source with a repeated id)
    or ``"first"`` (keep the first row of each id, skip the others). A first read runs
    on ``workers`` processes (default: every core), parsing, checking and building each
    structure in one pass (:mod:`tlmat.data.ingest`); ``fast=False`` reads through
    pymatgen ``Structure`` objects instead, which gives the same dataset, more slowly.

    Example:
        >>> ds = load_dataset("perov_5/train.csv.gz", GraphSettings(cutoff=8.0, max_neighbors=12),
        ...                   targets=["heat_ref"])
        >>> ds.batch(range(64), target="heat_ref")
    """
    path = resolve(path)  # a registered name (perov_5/train) works as well
    strict = _STRICT.get() if strict is None else strict
    check_duplicate_policy(on_duplicate)
    settings = settings or GraphSettings()
    cache = GraphCache(cache_dir or default_cache_dir(), settings)
    options = {
        "targets": list(targets) if targets is not None else None,
        "disorder": disorder,
        "on_duplicate": on_duplicate,
        "reader": READ_VERSION,  # what an older reader remembered is not reused
        "elements": sorted(elements) if elements is not None else None,
        **{k: v for k, v in read_options.items() if k != "workers"},
    }
    manifest_dir = cache.directory / "datasets" / _manifest_key(path, options, settings)
    cached = _read_manifest(manifest_dir, cache, strict)
    if cached is not None:
        cached.source = str(path)
        return cached

    # Stream: parse, check and build a chunk at a time, keeping only ids, formulas,
    # targets and cache entries, so that no dataset has to fit in memory as structures.
    log = ProblemLog(strict=strict)
    reading = dict(disorder=disorder, on_duplicate=on_duplicate, progress=progress)
    reading.update(read_options)
    rows = _rows(path, settings, targets, log, cache, elements, workers, chunk_size, fast, reading)
    gathered = _Gathered.of(rows)
    if not gathered.ids:
        raise nothing_read(path, log)
    log.n_ok = len(gathered.ids)
    dataset = gathered.dataset(cache, log, str(path))
    _write_manifest(manifest_dir, dataset, gathered.keys)
    return dataset


@dataclass(frozen=True)
class Reading:
    """How a command or run reads its structure sources: the reading options of
    :func:`load_dataset`, held once and passed on as one object."""

    cache_dir: str | Path | None = None
    #: stop at the first bad structure (``None``: as :func:`strict_reading` says)
    strict: bool | None = None
    on_duplicate: DuplicatePolicy = "error"
    disorder: str = "skip"
    #: processes of a first read (``None``: every core)
    workers: int | None = None
    progress: bool = False

    def load(
        self,
        sources: str | Path | Sequence[str | Path],
        settings: GraphSettings | None = None,
        targets: Sequence[str] | None = None,
        elements: Collection[int] | None = None,
    ) -> GraphDataset:
        """One dataset of ``sources`` (a path or registered name, or several joined in
        order), built with ``settings`` and checked against ``elements`` (atomic numbers
        a model knows)."""
        paths = [sources] if isinstance(sources, str | Path) else list(sources)
        if not paths:
            raise ValueError("no structure source to read")
        datasets = [
            load_dataset(path, settings, targets, elements=elements, **asdict(self))
            for path in paths
        ]
        joined = datasets[0]
        for other in datasets[1:]:
            joined = concat(joined, other)
        return joined


Row = tuple[str, str, str, tuple[str, int, int], dict[str, Any]]


def _rows(path, settings, targets, log, cache, elements, workers, chunk_size, fast, reading):
    """The rows of a first read: in one pass per structure (``fast``), or through
    pymatgen records."""
    if fast:
        chosen = list(targets) if targets is not None else None
        found = iter_ingested(
            path,
            settings,
            chosen,
            log=log,
            elements=elements,
            workers=workers,
            cache=cache,
            **reading,
        )
        return _ingested_rows(found, cache, chunk_size)
    records = iter_records(path, targets, log=log, workers=workers or 1, **reading)
    return _record_rows(records, cache, log, elements, workers or 1, chunk_size)


@dataclass
class _Gathered:
    """A dataset's rows as columns: ids, formulas, graph keys, cache entries, and a
    column per target (a dict per row took ten times the memory at 10⁶ structures)."""

    ids: list[str] = field(default_factory=list)
    formulas: list[str] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    entries: list[tuple[str, int, int]] = field(default_factory=list)
    columns: dict[str, list[Any]] = field(default_factory=dict)

    @classmethod
    def of(cls, rows: Iterable[Row]) -> _Gathered:
        gathered = cls()
        ids, columns = gathered.ids, gathered.columns
        with paused_gc():
            for id_, formula, key, entry, row_targets in rows:
                for name, value in row_targets.items():
                    column = columns.get(name)
                    if column is None:  # not setdefault: it would build the padding every
                        # row, a list as long as the dataset so far (quadratic: 7 min at 10⁶)
                        column = columns[name] = [np.nan] * len(ids)
                    column.append(value)
                ids.append(id_)
                gathered.formulas.append(formula)
                gathered.keys.append(key)
                gathered.entries.append(entry)
                for column in columns.values():
                    if len(column) < len(ids):  # this row lacks that target
                        column.append(np.nan)
        return gathered

    def dataset(self, cache: GraphCache, log: ProblemLog, source: str) -> GraphDataset:
        targets = {n: _targets_array(column, n) for n, column in self.columns.items()}
        graphs = CachedGraphs(cache, self.entries)
        return GraphDataset(graphs, self.ids, self.formulas, targets, log, source)


def _ingested_rows(found, cache: GraphCache, chunk_size: int) -> Iterator[Row]:
    """(id, formula, key, cache entry, targets) of the one-pass read, stored a chunk at
    a time."""
    while chunk := list(islice(found, chunk_size)):
        stored = cache.add([i.key for i in chunk], [i.graph for i in chunk])
        rows = [(i.id, i.formula, i.key, e, i.targets) for i, e in zip(chunk, stored, strict=True)]
        del chunk, stored
        trim_heap()  # the chunk's graphs, freed, would stay in the heap: 4 kB a structure
        yield from rows


def _record_rows(
    records, cache: GraphCache, log: ProblemLog, elements, workers: int, chunk_size: int
) -> Iterator[Row]:
    """The same rows through pymatgen records and :meth:`GraphCache.graphs`."""
    while chunk := list(islice(records, chunk_size)):
        graphs = cache.graphs(chunk, log, elements, workers)
        rows = [
            (chunk[n].id, chunk[n].formula, key, entry, chunk[n].targets)
            for n, entry, key in zip(graphs.source_index, graphs.entries, graphs.keys, strict=True)
        ]
        del chunk, graphs
        trim_heap()
        yield from rows


def _write_manifest(directory: Path, dataset: GraphDataset, keys: list[str]) -> None:
    """Write the manifest to a temporary folder, then rename it into place. A cache that
    cannot be written is reported once (the dataset is still returned); a full disk
    raises :class:`CacheWriteError`, with the temporary folder removed."""
    tmp = directory.with_name(directory.name + f".tmp{os.getpid()}")
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        arrays = {f"target:{k}": v for k, v in dataset.targets.items()}
        np.savez(
            tmp / "arrays.npz",
            ids=np.array(dataset.ids),
            formulas=np.array(dataset.formulas),
            keys=np.array(keys),
            **arrays,
        )
        problems = [
            {"where": p.where, "reason": p.reason.value, "detail": p.detail, "id": p.id}
            for p in dataset.log.problems
        ]
        (tmp / "manifest.json").write_text(
            json.dumps({"version": MANIFEST_VERSION, "n": len(dataset), "problems": problems})
        )
        shutil.rmtree(directory, ignore_errors=True)
        os.replace(tmp, directory)
    except OSError as error:
        shutil.rmtree(tmp, ignore_errors=True)
        if error.errno not in UNWRITABLE:
            raise CacheWriteError(
                error.errno,
                f"dataset manifest {directory} could not be written ({error.strerror or error});"
                " nothing partial was left behind. Free space or set TLMAT_CACHE_DIR to"
                " another disk",
            ) from error
        cache = dataset.graphs.cache
        if cache.unwritable is None:  # the cache has not said so already: say it once
            cache.unwritable = error.strerror or str(error)
            logger.warning(
                "dataset manifest %s cannot be written (%s); the dataset will be read"
                " from its source again next run",
                directory,
                cache.unwritable,
            )


class _DamagedManifest(Exception):
    """A manifest that exists but cannot be read back as written."""


def _read_manifest(directory: Path, cache: GraphCache, strict: bool) -> GraphDataset | None:
    """The dataset a manifest describes, or ``None`` when there is none, its graphs are no
    longer cached, or it is damaged (then it is set aside once, and rebuilt)."""
    if not directory.is_dir():
        return None
    try:
        try:
            manifest = json.loads((directory / "manifest.json").read_text())
        except FileNotFoundError:  # another process is replacing it right now
            return None
        except (OSError, ValueError) as error:  # truncated or garbage JSON
            raise _DamagedManifest(f"manifest.json: {error}") from error
        try:
            with np.load(directory / "arrays.npz", allow_pickle=False) as arrays:
                ids = arrays["ids"].tolist()
                formulas = arrays["formulas"].tolist()
                keys = arrays["keys"].tolist()
                targets = {
                    k.removeprefix("target:"): arrays[k] for k in arrays if k.startswith("target:")
                }
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
            raise _DamagedManifest(f"arrays.npz: {error}") from error
        if not isinstance(manifest, dict) or manifest.get("version") != MANIFEST_VERSION:
            raise _DamagedManifest("manifest.json: unknown manifest version")
        if not len(ids) == len(formulas) == len(keys) == manifest.get("n"):
            raise _DamagedManifest(f"arrays.npz: {len(ids)} ids for {manifest.get('n')} graphs")
        try:
            problems = [
                Problem(p["where"], Reason(p["reason"]), p["detail"], p["id"])
                for p in manifest["problems"]
            ]
        except (KeyError, TypeError, ValueError) as error:
            raise _DamagedManifest(f"manifest.json: unreadable problems ({error})") from error
    except _DamagedManifest as damage:
        set_aside(directory, damage, "reading the dataset from its source again")
        return None
    entries = cache.entries_for(keys)
    if entries is None:  # graphs evicted or damaged: rebuild from the source
        return None
    log = ProblemLog(strict=strict)
    for problem in problems:
        log.skip(problem)
    log.n_ok = len(ids)
    return GraphDataset(CachedGraphs(cache, entries), ids, formulas, targets, log, from_cache=True)
