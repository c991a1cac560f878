"""The first read of a structure source in one pass per structure: parse, check and
build the graph in the same worker process, on every core.

Reading through pymatgen objects walks each structure three times (CIF parser, the
overlap check's neighbour search, the graph's neighbour search) and ships whole
``Structure`` objects between processes. Here a worker turns a raw item straight into
what a dataset keeps — id, formula, targets, structure key and graph arrays — with one
neighbour search serving both the overlap check and the graph, and plain P1 CIFs read
by :func:`tlmat.io.cif.read_plain_cif`. Every other payload, and every structure whose
checks find a fault, goes through the pymatgen path (:func:`tlmat.io.checks.make_record`),
so records, skips and their messages are the same as that path's, which
``tests/test_ingest.py`` proves on every dataset in ``TLMAT_DATA_DIR``.
"""

from __future__ import annotations

import gc
import hashlib
from collections import deque
from collections.abc import Collection, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from itertools import chain, islice
from pathlib import Path
from typing import Any

import numpy as np

from tlmat.data.memory import paused_gc
from tlmat.graphs.builder import (
    GraphArrays,
    add_line_graphs,
    atom_graphs,
    checked_graph,
    element_problem,
    structure_arrays,
)
from tlmat.graphs.cache import (
    GraphCache,
    arrays_key,
    pack_graphs,
    structure_key,
    unpack_graphs,
)
from tlmat.graphs.neighbors import Neighbors
from tlmat.graphs.settings import GraphSettings
from tlmat.io.checks import CheckOptions, RawItem, checked_targets, make_record
from tlmat.io.cif import CifArrays, read_plain_cif
from tlmat.io.parse import Text, detect_text_format
from tlmat.io.readers import (
    READ_VERSION,
    DuplicatePolicy,
    check_duplicate_policy,
    iter_raw,
    logged,
    unique_ids,
)
from tlmat.io.records import Problem, ProblemLog, Target
from tlmat.machine import granted_cpus
from tlmat.progress import track

#: items a worker takes at once (large enough to amortise the transfer, small enough to
#: keep every core busy to the end)
CHUNK = 128
#: texts whose digests are written to the cache's index in one transaction (a commit per
#: chunk cost 50 µs a structure)
REMEMBER_EVERY = 8192


@dataclass
class Ingested:
    """What a dataset keeps of one structure that parsed and passed the checks: its
    graph, or the reason it has none (reported once duplicate ids are settled)."""

    id: str
    where: str
    formula: str
    targets: dict[str, Target]
    key: str
    graph: GraphArrays | None
    problem: Problem | None = None


def _cif_text(payload: Any) -> str | None:
    if isinstance(payload, Path):
        if payload.suffix.lower() != ".cif":
            return None
        try:  # as the pymatgen path reads it
            return payload.read_text(errors="replace")
        except OSError:  # that path says what is wrong, in its words
            return None
    if isinstance(payload, Text):
        return payload.text if payload.fmt == "cif" else None
    if isinstance(payload, str) and "\n" in payload and detect_text_format(payload) == "cif":
        return payload
    return None


def _graph(
    item: RawItem, z, pos, cell, pbc, settings: GraphSettings, elements, built=None
) -> tuple[GraphArrays | None, Neighbors | None, Problem | None]:
    """:func:`~tlmat.graphs.builder.checked_graph` as the three fields :class:`Ingested`
    and the line graph need."""
    found = checked_graph(z, pos, cell, pbc, settings, elements, item.where, item.id, built)
    return (None, None, found) if isinstance(found, Problem) else (*found, None)


def _parse(
    item: RawItem | Problem, options: CheckOptions, fast: bool
) -> Problem | tuple[dict[str, Target], CifArrays | None]:
    """An item's checked targets and, for a plain CIF, its structure as arrays; or the
    :class:`Problem` that skips it."""
    if isinstance(item, Problem):
        return item
    targets = checked_targets(item, options)
    if isinstance(targets, Problem):
        return targets
    text = _cif_text(item.payload) if fast else None
    return targets, read_plain_cif(text) if text is not None else None


def _ingest(
    item: RawItem,
    targets: dict[str, Target],
    plain: CifArrays | None,
    built: tuple[GraphArrays, Neighbors] | None,
    options: CheckOptions,
    settings: GraphSettings,
    elements: Collection[int] | None,
) -> tuple[Ingested | Problem, Neighbors | None]:
    """One parsed item → :class:`Ingested` (with the float64 neighbour list its line graph
    needs), or the :class:`Problem` that skips it. ``built``: the graph of ``plain``."""
    if plain is not None and built is not None:
        distances = built[1].distances
        # the overlap check needs every pair nearer than min_distance, which the nearest
        # neighbours include whenever the cutoff reaches that far; a fault is reported by
        # the pymatgen path below, in its words
        if settings.cutoff >= options.min_distance and not (
            len(distances) and distances.min() < options.min_distance
        ):
            pbc = built[0].pbc
            graph, neighbors, problem = _graph(
                item, plain.z, plain.pos, plain.cell, pbc, settings, elements, built
            )
            key = arrays_key(plain.z, plain.pos, plain.cell, pbc)
            found = Ingested(item.id, item.where, plain.formula, targets, key, graph, problem)
            return found, neighbors
    record = make_record(item, options)
    if isinstance(record, Problem):
        return record, None
    z, pos, cell, pbc = structure_arrays(record.structure)
    graph, neighbors, problem = _graph(item, z, pos, cell, pbc, settings, elements)
    key = structure_key(record.structure)
    found = Ingested(record.id, record.where, record.formula, record.targets, key, graph, problem)
    return found, neighbors


def ingest_chunk(
    args: tuple[list[RawItem | Problem], CheckOptions, GraphSettings, Collection[int] | None, bool],
) -> list[Ingested | Problem]:
    """Raw items → :class:`Ingested` or the :class:`Problem` that skips each, the graphs
    of the plain CIFs (and all line graphs) built together."""
    items, options, settings, elements, fast = args
    parsed = [_parse(item, options, fast) for item in items]
    plain = [n for n, p in enumerate(parsed) if not isinstance(p, Problem) and p[1] is not None]
    structures = [parsed[n][1] for n in plain]  # type: ignore[index]
    graphs = atom_graphs(
        [c.z for c in structures],
        [c.pos for c in structures],
        [c.cell for c in structures],
        settings,
    )
    built = dict(zip(plain, graphs, strict=True))
    results = [
        (p, None)
        if isinstance(p, Problem)
        else _ingest(item, *p, built.get(n), options, settings, elements)  # type: ignore[arg-type]
        for n, (item, p) in enumerate(zip(items, parsed, strict=True))
    ]
    if settings.line_graph:
        kept = [(r.graph, n) for r, n in results if isinstance(r, Ingested) and r.graph is not None]
        add_line_graphs([g for g, _ in kept], [n for _, n in kept], settings)
    return [r for r, _ in results]


def _ingest_packed(args) -> tuple[list[Ingested | Problem], dict[str, np.ndarray]]:
    """:func:`ingest_chunk` in a worker: the graphs travel back packed into a few arrays
    (pickling eight small arrays per structure cost as much as parsing it)."""
    with paused_gc():  # collections found nothing in a chunk's records: 15 % of a worker
        results = ingest_chunk(args)
    built = [r for r in results if isinstance(r, Ingested) and r.graph is not None]
    packed = pack_graphs([r.graph for r in built])
    for r in built:
        r.graph = None
    return results, packed


def _unpacked(returned: tuple[list[Ingested | Problem], dict[str, np.ndarray]]):
    results, packed = returned
    graphs = iter(unpack_graphs(packed))
    for r in results:
        if isinstance(r, Ingested) and r.problem is None:
            r.graph = next(graphs)
    return results


def _chunks(items: Iterable[RawItem | Problem]) -> Iterator[list[RawItem | Problem]]:
    iterator = iter(items)
    while chunk := list(islice(iterator, CHUNK)):
        yield chunk


def text_digest(item: RawItem | Problem, options: CheckOptions) -> str | None:
    """What decides a text item's structure (its text, format and the reading options),
    hashed; ``None`` for payloads that are not text (files, dicts, ASE atoms)."""
    if not isinstance(item, RawItem):
        return None
    payload = item.payload
    if isinstance(payload, Text):
        text, fmt = payload.text, payload.fmt
    elif isinstance(payload, str):
        text, fmt = payload, ""
    else:
        return None
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{READ_VERSION}|{options.disorder}|{options.min_distance!r}|{fmt}|".encode())
    digest.update(text.encode("utf-8", "surrogatepass"))
    return digest.hexdigest()


@dataclass
class _Chunk:
    """A chunk of raw items: those answered from the cache's record of texts read
    before, and the positions still to parse."""

    items: list[RawItem | Problem]
    done: list[Ingested | Problem | None]
    todo: list[int]
    digests: list[str | None]


def _known(
    chunk: list[RawItem | Problem],
    options: CheckOptions,
    elements: Collection[int] | None,
    cache: GraphCache | None,
) -> _Chunk:
    """Answer the items whose text was read before and whose graph is cached (intact)
    without parsing: targets are checked as ever, elements on the cached graph."""
    digests = [text_digest(item, options) for item in chunk] if cache is not None else []
    known = cache.parsed_texts([d for d in digests if d]) if cache is not None else {}
    entries = cache._verified(sorted({k for k, _ in known.values()})) if known else {}
    done: list[Ingested | Problem | None] = [None] * len(chunk)
    todo = []
    for n, item in enumerate(chunk):
        hit = known.get(digests[n]) if digests and digests[n] else None
        if hit is None or hit[0] not in entries:
            todo.append(n)
            continue
        targets = checked_targets(item, options)
        if isinstance(targets, Problem):
            done[n] = targets
            continue
        key, formula = hit
        problem = None
        if elements is not None:
            entry = entries[key]
            fault = element_problem(cache.load(key, entry, verify=False).z, elements)
            if fault is not None:
                problem = Problem(item.where or item.id, fault[0], fault[1], item.id)
        done[n] = Ingested(item.id, item.where, formula, targets, key, None, problem)
    return _Chunk(chunk, done, todo, digests)


def _merge(part: _Chunk, parsed: list[Ingested | Problem], fresh: list[tuple[str, str, str]]):
    """The chunk's results in file order; the texts just parsed join ``fresh``, to be
    remembered by the cache."""
    for n, result in zip(part.todo, parsed, strict=True):
        part.done[n] = result
        digest = part.digests[n] if part.digests else None
        if digest and isinstance(result, Ingested) and result.problem is None:
            fresh.append((digest, result.key, result.formula))
    return part.done


class _Pipeline:
    """Chunks of raw items through the cache's record of texts read before, then this
    process or a pool of workers, back in file order; the texts parsed are remembered
    by the cache in large transactions."""

    def __init__(self, options, settings, elements, fast, workers, cache) -> None:
        self.options, self.settings, self.elements, self.fast = options, settings, elements, fast
        self.workers = workers
        self.cache = cache if fast else None  # fast=False is the reference: parse everything
        self.pool: ProcessPoolExecutor | None = None
        self.fresh: list[tuple[str, str, str]] = []  # texts parsed, not yet remembered

    def _job(self, part: _Chunk):
        items = [part.items[n] for n in part.todo]
        return (items, self.options, self.settings, self.elements, self.fast)

    def _remember(self, at_least: int) -> None:
        if self.cache is not None and len(self.fresh) >= at_least:
            self.cache.remember_texts(self.fresh)
            self.fresh.clear()

    def _finish(self, part: _Chunk, future) -> list[Ingested | Problem]:
        return _merge(part, _unpacked(future.result()) if future is not None else [], self.fresh)

    def results(self, items: Iterable[RawItem | Problem]) -> Iterator[list[Ingested | Problem]]:
        """Each chunk's results, in file order."""
        pending: deque = deque()
        for n, chunk in enumerate(_chunks(items)):
            part = _known(chunk, self.options, self.elements, self.cache)
            # the pool starts only once a second chunk needs parsing in full
            if self.pool is None and n > 0 and self.workers > 1 and len(part.todo) == CHUNK:
                self.pool = ProcessPoolExecutor(self.workers, initializer=gc.freeze)
            if self.pool is None:
                parsed = ingest_chunk(self._job(part)) if part.todo else []
                yield _merge(part, parsed, self.fresh)
            else:
                # in file order: a chunk found whole in the cache waits for those before it
                future = self.pool.submit(_ingest_packed, self._job(part)) if part.todo else None
                pending.append((part, future))
                while len(pending) >= 4 * self.workers:  # bounded: never the dataset in memory
                    yield self._finish(*pending.popleft())
            self._remember(REMEMBER_EVERY)
        while pending:
            yield self._finish(*pending.popleft())
        self._remember(1)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)


def iter_ingested(
    path: str | Path,
    settings: GraphSettings,
    targets: list[str] | None = None,
    *,
    log: ProblemLog,
    elements: Collection[int] | None = None,
    disorder: str = "skip",
    min_distance: float = CheckOptions.min_distance,
    structure_column: str | None = None,
    id_column: str | None = None,
    limit: int | None = None,
    on_duplicate: DuplicatePolicy = "error",
    workers: int | None = None,
    fast: bool = True,
    progress: bool = False,
    cache: GraphCache | None = None,
) -> Iterator[Ingested]:
    """Every structure of ``path`` with a usable graph, in file order; faults go to
    ``log`` as the pymatgen path reports them. ``workers``: processes (default: every
    core; started only once a chunk of 128 needs parsing). With ``cache``, texts read
    before whose graphs it holds are not parsed again; an :class:`Ingested` from there
    has no ``graph`` (the cache holds it)."""
    check_duplicate_policy(on_duplicate)
    options = CheckOptions(disorder, min_distance, tuple(targets) if targets is not None else None)
    items = iter_raw(path, targets, structure_column, id_column)
    if limit is not None:
        items = islice(items, limit)
    workers = granted_cpus() if workers is None else workers
    pipeline = _Pipeline(options, settings, elements, fast, workers, cache)
    try:
        with paused_gc():
            found = logged(chain.from_iterable(pipeline.results(items)), log)
            tracked = track(found, f"reading {Path(path).name}", limit, enabled=progress)
            for ingested in unique_ids(tracked, on_duplicate, log, str(path)):
                if ingested.problem is not None:
                    log.skip(ingested.problem)
                else:
                    yield ingested
    finally:
        pipeline.close()
