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
