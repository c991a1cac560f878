"""Giving memory back during long passes over a dataset, so that reading, training on
and predicting for 10⁶ structures stays flat in memory (``benchmarks/scale.py``)."""

from __future__ import annotations

import ctypes
import gc
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Any


@lru_cache(maxsize=1)
def _malloc_trim():
    """glibc's ``malloc_trim``, or ``None`` (not Linux/glibc)."""
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def trim_heap() -> None:
    """Return the heap memory glibc keeps after large temporary arrays are freed: batches
    of varying size left 1 GB after predicting 10⁵ structures, and a first read's chunks
    of packed graphs 0.4 GB per 10⁵ structures read."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


#: graphs read between releases of the cache's mapped pages (``GraphCache.release``, a
#: cheap ``madvise``): the kernel maps ≈ 64 kB of the page cache around every array a graph
#: is read from, ≈ 1 MB a graph, so a shuffled pass over 10⁶ graphs that released every
#: 64 batches of 128 grew by 4.6 GB; every 256 graphs it stays within ≈ 0.3 GB
RELEASE_GRAPHS = 256
#: seconds between returns of the freed heap (``malloc_trim``) during a pass. A trim walks
#: the heap (40–75 ms beside a CHGNet or M3GNet training step's buffers) and the pages it
#: gives back fault in again at the next batch: every 256 graphs it had cost those models
#: 3–10 % of an epoch on 1,500 perovskites, for memory the next batch takes back anyway.
#: Prediction over 10⁵ structures in batches of varying size is what leaves freed heap
#: behind (1 GB); once a minute keeps that small.
TRIM_SECONDS = 60.0


class Releaser:
    """Gives back the memory a pass over ``dataset`` accumulates: the cache's maps every
    :data:`RELEASE_GRAPHS` graphs, the freed heap at most every :data:`TRIM_SECONDS`.
    Call it with the number of graphs just read."""

    def __init__(self, dataset: Any, clock: Callable[[], float] = time.monotonic):
        self.dataset, self.clock = dataset, clock
        self.read, self.trimmed = 0, clock()

    def __call__(self, graphs: int) -> None:
        self.read += graphs
        if self.read < RELEASE_GRAPHS:
            return
        self.read = 0
        cache = getattr(self.dataset.graphs, "cache", None)
        if cache is not None:
            cache.release()
        if self.clock() - self.trimmed >= TRIM_SECONDS:
            trim_heap()
            self.trimmed = self.clock()


def release_memory(dataset: Any) -> None:
    """Give back the cache pages and freed heap a pass over ``dataset`` (a
    :class:`~tlmat.data.dataset.GraphDataset`) accumulated."""
    cache = getattr(dataset.graphs, "cache", None)
    if cache is not None:
        cache.release()
    trim_heap()


@contextmanager
def paused_gc() -> Iterator[None]:
    """The cyclic garbage collector off for a pass that makes millions of short-lived,
    acyclic objects (rows, records, tuples for the index): it finds nothing to free there
    but walks every live object each time it runs — a fifth of a first read, and a third
    of storing its graphs. Restored to its earlier state afterwards."""
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if collecting:
            gc.enable()
