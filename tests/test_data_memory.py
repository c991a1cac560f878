"""A pass over a dataset gives back the cache's maps every 256 graphs, and the freed heap
at most once a minute: a trim every 256 graphs had cost a CHGNet or M3GNet epoch 3–10 %."""

from __future__ import annotations

from pathlib import Path

from tlmat.data import load_dataset, memory
from tlmat.data.loader import GraphLoader
from tlmat.graphs import GraphSettings


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 35.0  # seconds between two readings: a slow pass
        return self.now


def test_a_pass_releases_maps_often_and_trims_the_heap_rarely(
    data: Path, tmp_path: Path, monkeypatch
) -> None:
    dataset = load_dataset(data / "perov_5" / "val.csv.gz", GraphSettings.preset("cgcnn"),
                           ["heat_ref"], cache_dir=tmp_path, limit=1100)  # fmt: skip
    released, trimmed = [], []
    monkeypatch.setattr(dataset.graphs.cache, "release", lambda: released.append(1))
    monkeypatch.setattr(memory, "trim_heap", lambda: trimmed.append(1))
    for _ in GraphLoader(dataset, batch_size=16):
        pass
    assert len(released) == 1100 // 256 and trimmed == []  # a pass of seconds: no trim
    clock = _Clock()
    monkeypatch.setattr(memory.Releaser.__init__, "__defaults__", (clock,))
    for _ in GraphLoader(dataset, batch_size=32):
        pass
    # releases at 256, 512, 768 and 1024 graphs, 35 s apart: a trim when 60 s have
    # passed since the last (or the start): at the 2nd and the 4th
    assert len(released) == 2 * (1100 // 256) and len(trimmed) == 2
