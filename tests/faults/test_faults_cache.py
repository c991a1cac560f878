"""Faults fed to the graph cache and dataset manifests: each is detected, reported once,
repaired or worked around, and never gives a wrong graph."""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

from tlmat.data import load_dataset
from tlmat.graphs import GraphCache, GraphSettings, graph_or_problem, structure_key
from tlmat.io import read_records

N = 40


@pytest.fixture(scope="module")
def source(data: Path) -> Path:
    return data / "perov_5" / "train.csv.gz"


@pytest.fixture(scope="module")
def records(source: Path):
    return read_records(source, limit=N).records


def graph_dir(root: Path, settings: GraphSettings) -> Path:
    return root / f"graphs-{settings.key()}"


def assert_same_graphs(cached, records, settings: GraphSettings) -> None:
    """Every cached graph equals the graph built afresh from its own structure."""
    built = [graph_or_problem(r, settings) for r in records]
    assert len(cached) == len(built)
    for i, graph in enumerate(built):
        assert cached.arrays(i).equals(graph), f"graph {i} is not its structure's graph"


def assert_same_dataset(got, want) -> None:
    assert got.ids == want.ids and got.formulas == want.formulas
    np.testing.assert_array_equal(got.targets["heat_ref"], want.targets["heat_ref"])
    x, y = got.batch(range(len(got))), want.batch(range(len(want)))
    for name in ("z", "pos", "cell", "edge_index", "edge_dist", "edge_vec", "edge_shift"):
        assert torch.equal(getattr(x, name), getattr(y, name)), name


def warnings_of(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def load(source: Path, root: Path, limit: int = N):
    return load_dataset(source, GraphSettings(), ["heat_ref"], cache_dir=root, limit=limit)


# --- 1. an index row that points at another structure's graph ------------------------------


def swap_entries(index: Path, a: str, b: str, columns: tuple[str, ...]) -> None:
    """Exchange ``columns`` of two index rows (the shards are left untouched)."""
    names = ", ".join(columns)
    sets = ", ".join(f"{c} = ?" for c in columns)
    with sqlite3.connect(index) as db:
        first = db.execute(f"SELECT {names} FROM entries WHERE key = ?", (a,)).fetchone()
        second = db.execute(f"SELECT {names} FROM entries WHERE key = ?", (b,)).fetchone()
        db.execute(f"UPDATE entries SET {sets} WHERE key = ?", (*second, a))
        db.execute(f"UPDATE entries SET {sets} WHERE key = ?", (*first, b))
    db.close()


@pytest.mark.parametrize(
    "columns", [("row",), ("shard", "row", "crc")], ids=["row offsets", "whole entries"]
)
def test_index_row_pointing_at_another_graph_is_rebuilt(
    records, tmp_path: Path, caplog, columns
) -> None:
    settings = GraphSettings()
    GraphCache(tmp_path, settings).graphs(records)
    a, b = structure_key(records[3].structure), structure_key(records[7].structure)
    swap_entries(graph_dir(tmp_path, settings) / "index.sqlite", a, b, columns)

    cache = GraphCache(tmp_path, settings)
    with caplog.at_level(logging.WARNING, logger="tlmat"):
        graphs = cache.graphs(records)
    assert cache.n_built == 2
    (message,) = warnings_of(caplog)
    assert "2 entries are damaged (checksum mismatch" in message
    assert a in message and b in message
    assert_same_graphs(graphs, records, settings)
    again = GraphCache(tmp_path, settings)
    assert_same_graphs(again.graphs(records), records, settings)
    assert again.n_built == 0  # the index was repaired


def test_dataset_over_a_lying_index_is_read_again(source, records, tmp_path, caplog) -> None:
    first = load(source, tmp_path)
    a, b = structure_key(records[0].structure), structure_key(records[1].structure)
    swap_entries(graph_dir(tmp_path, GraphSettings()) / "index.sqlite", a, b, ("row",))
    with caplog.at_level(logging.WARNING, logger="tlmat"):
        second = load(source, tmp_path)
    assert not second.from_cache  # its manifest's graphs failed the check
    assert len(warnings_of(caplog)) == 1
    assert_same_dataset(second, first)


# --- 2. a damaged index database or dataset manifest ---------------------------------------


def garbage(path: Path) -> None:
    path.write_bytes(np.random.default_rng(0).bytes(path.stat().st_size))


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize("damage", [garbage, truncate], ids=["garbage", "truncated"])
def test_damaged_index_is_set_aside_and_rebuilt(source, tmp_path, caplog, damage) -> None:
    first = load(source, tmp_path)
    index = graph_dir(tmp_path, GraphSettings()) / "index.sqlite"
    damage(index)
    damaged_bytes = index.read_bytes()

    with caplog.at_level(logging.WARNING, logger="tlmat"):
        second = load(source, tmp_path)
    (message,) = warnings_of(caplog)
    assert str(index) in message and "set aside as index.sqlite.damaged-" in message
    (aside,) = index.parent.glob("index.sqlite.damaged-*")
    assert aside.read_bytes() == damaged_bytes  # kept, not deleted
    assert_same_dataset(second, first)
    assert second.from_cache  # the index was rebuilt from the intact shards: nothing rebuilt
    cache = GraphCache(tmp_path, GraphSettings())
    assert len(cache) == N


@pytest.mark.parametrize("damage", [garbage, truncate], ids=["garbage", "truncated"])
def test_damaged_manifest_is_set_aside_and_rebuilt(source, tmp_path, caplog, damage) -> None:
    first = load(source, tmp_path)
    (manifest,) = graph_dir(tmp_path, GraphSettings()).glob("datasets/*/manifest.json")
    damage(manifest)

    with caplog.at_level(logging.WARNING, logger="tlmat"):
        second = load(source, tmp_path)
    (message,) = warnings_of(caplog)
    folder = manifest.parent
    assert str(folder) in message and "manifest.json" in message
    assert f"set aside as {folder.name}.damaged-" in message
    (aside,) = folder.parent.glob(f"{folder.name}.damaged-*")
    assert (aside / "manifest.json").exists()
    assert not second.from_cache
    assert_same_dataset(second, first)
    third = load(source, tmp_path)
    assert third.from_cache  # a good manifest was written in its place
    assert_same_dataset(third, first)


# --- 3. a read-only cache, a full disk -----------------------------------------------------


def make_read_only(root: Path, monkeypatch) -> None:
    """chmod the cache read-only; where that does not stop writes (root), refuse every
    folder creation under it, which is where each cache write starts."""
    for path in [root, *root.rglob("*")]:
        mode = path.stat().st_mode
        path.chmod(mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    probe = root / "probe"
    try:
        probe.mkdir()
    except PermissionError:
        return
    probe.rmdir()
    mkdir = Path.mkdir

    def refused(self: Path, *args, **kwargs) -> None:
        if self.is_relative_to(root) and not self.exists():
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
        mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", refused)


@pytest.fixture()
def writable_again(tmp_path: Path):
    yield
    for path in [tmp_path, *tmp_path.rglob("*")]:
        path.chmod(path.stat().st_mode | stat.S_IWUSR)


def test_read_only_cache_serves_what_it_holds(
    source, records, tmp_path, caplog, monkeypatch, writable_again
) -> None:
    root = tmp_path / "cache"
    load(source, root, limit=N // 2)
    shards = sorted(graph_dir(root, GraphSettings()).glob("shard-*"))
    make_read_only(root, monkeypatch)

    with caplog.at_level(logging.WARNING, logger="tlmat"):
        dataset = load(source, root)
    (message,) = warnings_of(caplog)
    assert str(graph_dir(root, GraphSettings())) in message and "cannot be written" in message
    assert "kept in memory" in message
    assert len(dataset) == N
    assert_same_graphs(dataset.graphs, records, GraphSettings())
    held = [entry[0] for entry in dataset.graphs.entries]
    assert held[: N // 2] == [shards[0].name] * (N // 2)  # served from disk
    assert all(name.startswith("memory-") for name in held[N // 2 :])  # built in memory
    assert sorted(graph_dir(root, GraphSettings()).glob("shard-*")) == shards


def test_full_disk_is_one_clear_error_and_leaves_nothing(
    records, tmp_path, caplog, monkeypatch
) -> None:
    settings = GraphSettings()
    GraphCache(tmp_path, settings).graphs(records[:10])
    directory = graph_dir(tmp_path, settings)
    before = sorted(p.name for p in directory.iterdir())

    def disk_full(file, array, *args, **kwargs) -> None:
        Path(file).write_bytes(b"\x93NUMPY")  # a partial write, then the disk is full
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(file))

    monkeypatch.setattr(np, "save", disk_full)
    cache = GraphCache(tmp_path, settings)
    with caplog.at_level(logging.WARNING, logger="tlmat"), pytest.raises(OSError) as raised:
        cache.graphs(records)
    assert type(raised.value).__name__ == "CacheWriteError"
    assert raised.value.errno == errno.ENOSPC
    text = str(raised.value)
    assert str(directory) in text and "No space left on device" in text
    assert "nothing partial was left behind" in text
    assert warnings_of(caplog) == []  # the error is the one message
    assert sorted(p.name for p in directory.iterdir()) == before  # no .tmp-shard-* left
    assert len(GraphCache(tmp_path, settings)) == 10


def test_a_remembered_text_whose_graph_is_gone_is_parsed_again(
    source: Path, tmp_path: Path
) -> None:
    """The cache's record of texts read before points at graphs; when a graph's shard is
    damaged, the text is parsed and its graph built again, never taken on trust."""
    settings = GraphSettings(cutoff=8.0, max_neighbors=12)
    first = load_dataset(source, settings, ["heat_ref"], cache_dir=tmp_path, limit=N)
    expected = [first.graphs.arrays(i) for i in range(len(first))]  # copies
    shard = next(p for p in graph_dir(tmp_path, settings).iterdir() if p.name.startswith("shard-"))
    z = np.load(shard / "z.npy")
    np.save(shard / "z.npy", (z % 50) + 1)  # other elements, same length
    again = load_dataset(source, settings, ["heat_ref", "dir_gap"], cache_dir=tmp_path, limit=N)
    assert again.ids == first.ids
    for i in range(len(again)):
        assert again.graphs.arrays(i).equals(expected[i])
