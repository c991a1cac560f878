"""A pass over a dataset gives memory back when the process has grown, not on a fixed
count of graphs (which cost a CHGNet epoch 3–10 % for nothing on a small dataset)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tlmat.data import load_dataset, memory
from tlmat.data.loader import GraphLoader
from tlmat.graphs import GraphSettings


def _passes(dataset, monkeypatch, **patched) -> int:
    """Releases during one pass of a loader over ``dataset`` with ``patched`` settings."""
    calls = []
    monkeypatch.setattr("tlmat.data.memory.release_memory", lambda d: calls.append(d))
    for name, value in patched.items():
        monkeypatch.setattr(memory, name, value)
    for _ in GraphLoader(dataset, batch_size=16):
        pass
    return len(calls)


def test_memory_is_given_back_as_the_process_grows(data: Path, tmp_path: Path, monkeypatch):
    dataset = load_dataset(data / "perov_5" / "val.csv.gz", GraphSettings.preset("cgcnn"),
                           ["heat_ref"], cache_dir=tmp_path, limit=400)  # fmt: skip
    assert memory.resident_bytes() > 10 * 2**20  # this process, read from /proc
    # 400 graphs grow the process by far less than the threshold: nothing to give back
    assert _passes(dataset, monkeypatch) == 0
    # a process that grows past the threshold (here 0 bytes: every batch) gives back
    grown = []

    def growing() -> int:
        grown.append(len(grown))
        return 2**30 + 2**20 * len(grown)

    monkeypatch.setattr(memory, "resident_bytes", growing)
    monkeypatch.setattr(memory.Releaser.__init__, "__defaults__", (2**19,))
    assert _passes(dataset, monkeypatch) == 25  # 400 graphs, batches of 16


def test_without_proc_memory_is_given_back_every_256_graphs(data: Path, tmp_path: Path,
                                                            monkeypatch):  # fmt: skip
    dataset = load_dataset(data / "perov_5" / "val.csv.gz", GraphSettings.preset("cgcnn"),
                           ["heat_ref"], cache_dir=tmp_path, limit=600)  # fmt: skip
    monkeypatch.setattr(memory, "resident_bytes", lambda: None)
    assert _passes(dataset, monkeypatch) == np.floor(600 / 256)
