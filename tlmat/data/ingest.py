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
import os
from collections import deque
from collections.abc import Collection, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from itertools import chain, islice
from pathlib import Path
from typing import Any

import numpy as np

from tlmat.graphs.builder import (
    GraphArrays,
    add_line_graphs,
    atom_graph,
    element_problem,
    graph_problem,
    structure_arrays,
)
from tlmat.graphs.cache import arrays_key, pack_graphs, structure_key, unpack_graphs
from tlmat.graphs.neighbors import Neighbors
from tlmat.graphs.settings import GraphSettings
from tlmat.io.checks import CheckOptions, RawItem, checked_targets, make_record
from tlmat.io.cif import read_plain_cif
from tlmat.io.parse import Text, detect_text_format
from tlmat.io.readers import DuplicatePolicy, check_duplicate_policy, iter_raw, unique_ids
from tlmat.io.records import Problem, ProblemLog, Target
from tlmat.progress import track

#: items a worker takes at once (large enough to amortise the transfer, small enough to
#: keep every core busy to the end)
CHUNK = 128


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


def default_workers() -> int:
    """The cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


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
    item: RawItem,
    z: np.ndarray,
    pos: np.ndarray,
    cell: np.ndarray,
    pbc: np.ndarray,
    settings: GraphSettings,
    elements: Collection[int] | None,
    pairs: tuple[GraphArrays, Neighbors] | None = None,
) -> tuple[GraphArrays | None, Neighbors | None, Problem | None]:
    """The graph of checked arrays, or why it has none (as the graph builder says it)."""
    fault = element_problem(z, elements)
    if fault is None:
        arrays, neighbors = pairs or atom_graph(z, pos, cell, pbc, settings)
        fault = graph_problem(arrays, settings)
        if fault is None:
            return arrays, neighbors, None
    return None, None, Problem(item.where or item.id, fault[0], fault[1], item.id)


def ingest_item(
    item: RawItem | Problem,
    options: CheckOptions,
    settings: GraphSettings,
    elements: Collection[int] | None = None,
    fast: bool = True,
) -> tuple[Ingested | Problem, Neighbors | None]:
    """One raw item → :class:`Ingested` (with the float64 neighbour list its line graph
    needs), or the :class:`Problem` that skips it."""
    if isinstance(item, Problem):
        return item, None
    targets = checked_targets(item, options)
    if isinstance(targets, Problem):
        return targets, None
    text = _cif_text(item.payload) if fast else None
    plain = read_plain_cif(text) if text is not None else None
    if plain is not None:
        pbc = np.ones(3, dtype=bool)
        built = atom_graph(plain.z, plain.pos, plain.cell, pbc, settings)
        distances = built[1].distances
        # the overlap check needs every pair nearer than min_distance, which the nearest
        # neighbours include whenever the cutoff reaches that far; a fault is reported by
        # the pymatgen path below, in its words
        if settings.cutoff >= options.min_distance and not (
            len(distances) and distances.min() < options.min_distance
        ):
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
    """:func:`ingest_item` for many items, their line graphs built together."""
    items, options, settings, elements, fast = args
    results = [ingest_item(item, options, settings, elements, fast) for item in items]
    if settings.line_graph:
        kept = [(r.graph, n) for r, n in results if isinstance(r, Ingested) and r.graph is not None]
        add_line_graphs([g for g, _ in kept], [n for _, n in kept], settings)
    return [r for r, _ in results]


def _ingest_packed(args) -> tuple[list[Ingested | Problem], dict[str, np.ndarray]]:
    """:func:`ingest_chunk` in a worker: the graphs travel back packed into a few arrays
    (pickling eight small arrays per structure cost as much as parsing it)."""
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


def _bounded_map(pool: ProcessPoolExecutor, fn, jobs: Iterable, window: int) -> Iterator:
    """``pool.map`` that keeps at most ``window`` jobs in flight: ``Executor.map`` submits
    every job at once, which would hold a whole dataset's text in memory."""
    pending: deque = deque()
    for job in jobs:
        pending.append(pool.submit(fn, job))
        if len(pending) >= window:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def _chunks(items: Iterable[RawItem | Problem]) -> Iterator[list[RawItem | Problem]]:
    iterator = iter(items)
    while chunk := list(islice(iterator, CHUNK)):
        yield chunk


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
) -> Iterator[Ingested]:
    """Every structure of ``path`` with a usable graph, in file order; faults go to
    ``log`` as the pymatgen path reports them. ``workers``: processes (default: every
    core; the first chunk is read here, so small sources start no processes)."""
    check_duplicate_policy(on_duplicate)
    options = CheckOptions(disorder, min_distance, tuple(targets) if targets is not None else None)
    items = iter_raw(path, targets, structure_column, id_column)
    if limit is not None:
        items = islice(items, limit)
    chunks = _chunks(items)
    first = next(chunks, [])
    head = ingest_chunk((first, options, settings, elements, fast))
    workers = default_workers() if workers is None else workers
    pool = None
    if workers > 1 and len(first) == CHUNK:
        pool = ProcessPoolExecutor(workers, initializer=gc.freeze)
    if pool is None:
        rest = (ingest_chunk((c, options, settings, elements, fast)) for c in chunks)
    else:
        jobs = ((c, options, settings, elements, fast) for c in chunks)
        rest = map(_unpacked, _bounded_map(pool, _ingest_packed, jobs, 4 * workers))
    results = chain.from_iterable(chain([head], rest))

    def parsed() -> Iterator[Ingested]:
        for result in results:
            if isinstance(result, Problem):
                log.skip(result)
            else:
                log.n_ok += 1
                yield result

    # the cyclic garbage collector finds nothing to free in these short-lived records but
    # walks every object each time it runs: off during the read, a fifth of this process
    collecting = gc.isenabled()
    gc.disable()
    try:
        tracked = track(parsed(), f"reading {Path(path).name}", limit, enabled=progress)
        for found in unique_ids(tracked, on_duplicate, log, str(path)):
            if found.problem is not None:
                log.skip(found.problem)
            else:
                yield found
    finally:
        if collecting:
            gc.enable()
        if pool is not None:
            pool.shutdown(cancel_futures=True)
