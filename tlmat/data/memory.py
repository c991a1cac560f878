"""Giving memory back during long passes over a dataset, so that reading, training on
and predicting for 10⁶ structures stays flat in memory (``benchmarks/scale.py``)."""

from __future__ import annotations

import ctypes
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
