"""Giving memory back during long passes over a dataset, so that reading, training on
and predicting for 10⁶ structures stays flat in memory (``benchmarks/scale.py``)."""

from __future__ import annotations

import ctypes
import gc
from collections.abc import Iterator
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


#: growth of the resident memory (page-cache maps and freed heap) after which a pass gives
#: memory back. Giving back costs: ``malloc_trim`` walks the heap (≈ 75 ms with a CHGNet
#: training step's buffers) and the freed pages fault in again at the next batch; every
#: 256 graphs it had cost M3GNet and CHGNet 3–10 % of an epoch on 1,500 perovskites, whose
#: whole pass grows the process by 50 MB. A pass over 10⁶ graphs (≈ 1 MB of maps a graph)
#: gives back every few hundred graphs, as before.
RELEASE_BYTES = 256 * 2**20
#: without /proc (macOS, Windows): give back every this many graphs
RELEASE_GRAPHS = 256


def resident_bytes() -> int | None:
    """This process's resident memory (Linux ``/proc/self/statm``), or ``None``."""
    try:
        with open("/proc/self/statm", "rb") as handle:
            return int(handle.read().split()[1]) * _page_size()
    except (OSError, ValueError, IndexError):
        return None


@lru_cache(maxsize=1)
def _page_size() -> int:
    import os

    return os.sysconf("SC_PAGE_SIZE")


class Releaser:
    """Gives back the memory a pass over ``dataset`` accumulates, once the process has
    grown by :data:`RELEASE_BYTES` since it last did (every :data:`RELEASE_GRAPHS`
    graphs where the resident size cannot be read). Call it with the graphs just read."""

    def __init__(self, dataset: Any, grown: int = RELEASE_BYTES):
        self.dataset, self.grown = dataset, grown
        self.base, self.read = resident_bytes(), 0

    def __call__(self, graphs: int) -> None:
        self.read += graphs
        if self.base is None:
            if self.read >= RELEASE_GRAPHS:
                release_memory(self.dataset)
                self.read = 0
            return
        now = resident_bytes()
        if now is not None and now - self.base > self.grown:
            release_memory(self.dataset)
            self.base = resident_bytes() or now


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
