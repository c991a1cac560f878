"""The graph cache: built once, loaded after; damage is detected and rebuilt, never used."""

from __future__ import annotations

import json
import logging
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from tlmat.graphs import GraphCache, GraphSettings, graph_or_problem, structure_key
from tlmat.io import read_records


@pytest.fixture(scope="module")
def records(data: Path):
    return read_records(data / "carbon_24" / "val.csv.gz", limit=120).records


def fresh(records, settings):
    return [graph_or_problem(r, settings) for r in records]


def assert_same(cached, built) -> None:
    assert len(cached) == len(built)
    assert all(cached.arrays(i).equals(b) for i, b in enumerate(built))


def test_second_run_loads_instead_of_building(records, tmp_path: Path) -> None:
    settings = GraphSettings.preset("alignn")
    first = GraphCache(tmp_path, settings)
    graphs = first.graphs(records)
    assert first.n_built == len(records)
    again = GraphCache(tmp_path, settings)
    loaded = again.graphs(records)
    assert again.n_built == 0
    assert_same(loaded, fresh(records, settings))
    assert loaded[3].num_edges == graphs[3].num_edges


def test_only_new_structures_are_built(records, tmp_path: Path) -> None:
    cache = GraphCache(tmp_path, GraphSettings())
    cache.graphs(records[:50])
    cache.graphs(records)
    assert cache.n_built == len(records) - 50 and len(cache) == len(records)


def test_same_structure_content_shares_one_entry(records, tmp_path: Path) -> None:
    moved = records[0].structure.copy()
    assert structure_key(moved) == structure_key(records[0].structure)
    moved.translate_sites([0], [0.01, 0, 0])
    assert structure_key(moved) != structure_key(records[0].structure)


def test_corrupted_entry_is_detected_and_rebuilt(records, tmp_path, caplog) -> None:
    settings = GraphSettings()
    GraphCache(tmp_path, settings).graphs(records)
    shard = next((tmp_path / f"graphs-{settings.key()}").glob("shard-*"))
    distances = shard / "edge_dist.npy"
    raw = bytearray(distances.read_bytes())
    raw[-40:-36] = np.float32(123.0).tobytes()  # flip one distance of the last graph
    distances.write_bytes(bytes(raw))

    cache = GraphCache(tmp_path, settings)
    with caplog.at_level(logging.WARNING, logger="tlmat"):
        graphs = cache.graphs(records)
    assert cache.n_built == 1
    assert "checksum mismatch" in caplog.text
    assert_same(graphs, fresh(records, settings))


def test_truncated_or_missing_shard_is_rebuilt(records, tmp_path, caplog) -> None:
    settings = GraphSettings()
    GraphCache(tmp_path, settings).graphs(records)
    shard = next((tmp_path / f"graphs-{settings.key()}").glob("shard-*"))
    (shard / "edge_vec.npy").write_bytes((shard / "edge_vec.npy").read_bytes()[:1000])
    cache = GraphCache(tmp_path, settings)
    with caplog.at_level(logging.WARNING, logger="tlmat"):
        graphs = cache.graphs(records)
    assert cache.n_built == len(records) and "unreadable" in caplog.text
    assert_same(graphs, fresh(records, settings))


def test_settings_change_never_reuses_graphs(records, tmp_path: Path) -> None:
    GraphCache(tmp_path, GraphSettings(cutoff=8.0)).graphs(records[:10])
    other = GraphCache(tmp_path, GraphSettings(cutoff=6.0))
    graphs = other.graphs(records[:10])
    assert other.n_built == 10
    assert float(graphs[0].edge_dist.max()) <= 6.0


def test_tampered_settings_file_clears_the_cache(records, tmp_path: Path) -> None:
    settings = GraphSettings()
    GraphCache(tmp_path, settings).graphs(records[:10])
    meta = tmp_path / f"graphs-{settings.key()}" / "settings.json"
    meta.write_text(json.dumps({"format": 0, "settings": {}}))
    cache = GraphCache(tmp_path, settings)
    cache.graphs(records[:10])
    assert cache.n_built == 10


def test_shards_without_row_checksums_are_still_checked(records, tmp_path, caplog) -> None:
    """Shards written before ``row_crc``/``keys`` existed: rows are hashed from their bytes."""
    settings = GraphSettings()
    GraphCache(tmp_path, settings).graphs(records)
    directory = tmp_path / f"graphs-{settings.key()}"
    shard = next(directory.glob("shard-*"))
    checksums = json.loads((shard / "checksums.json").read_text())
    for name in ("row_crc", "keys"):
        (shard / f"{name}.npy").unlink()
        del checksums[name]
    (shard / "checksums.json").write_text(json.dumps(checksums))
    cache = GraphCache(tmp_path, settings)
    cache.graphs(records)
    assert cache.n_built == 0  # an old shard is still served

    with sqlite3.connect(directory / "index.sqlite") as db:
        keys = [structure_key(r.structure) for r in records[:2]]
        rows = [
            db.execute("SELECT row FROM entries WHERE key = ?", (k,)).fetchone()[0] for k in keys
        ]
        db.execute("UPDATE entries SET row = ? WHERE key = ?", (rows[1], keys[0]))
        db.execute("UPDATE entries SET row = ? WHERE key = ?", (rows[0], keys[1]))
    db.close()
    cache = GraphCache(tmp_path, settings)
    with caplog.at_level(logging.WARNING, logger="tlmat"):
        graphs = cache.graphs(records)
    assert cache.n_built == 2 and "checksum mismatch" in caplog.text
    assert_same(graphs, fresh(records, settings))


def test_cached_graphs_cross_processes_by_pickle(records, tmp_path: Path) -> None:
    """Worker processes (ensemble members side by side) get the graphs pickled: mapped
    shards are mapped again from the folder (their bytes do not travel), graphs held in
    memory (a cache that could not be written) travel with them."""
    import pickle

    settings = GraphSettings()
    on_disk = GraphCache(tmp_path / "disk", settings).graphs(records)
    sent = pickle.dumps(on_disk)
    assert len(sent) < 50_000, "the shards' bytes were copied"
    assert_same(pickle.loads(sent), fresh(records, settings))

    held = GraphCache(tmp_path / "memory", settings)
    held.unwritable = "as if read-only"  # new graphs are kept in memory
    in_memory = held.graphs(records[:30])
    assert all(entry[0].startswith("memory-") for entry in in_memory.entries)
    assert_same(pickle.loads(pickle.dumps(in_memory)), fresh(records[:30], settings))


def test_released_pages_read_back_the_same_graphs(data: Path, tmp_path: Path) -> None:
    """Letting go of the mapped pages (a long pass does it every 64 batches) changes no
    graph read afterwards."""
    from tlmat.data import load_dataset
    from tlmat.data.loader import GraphLoader
    from tlmat.data.memory import release_memory

    settings = GraphSettings(cutoff=8.0, max_neighbors=12)
    dataset = load_dataset(
        data / "perov_5" / "test.csv.gz", settings, cache_dir=tmp_path, limit=300
    )
    before = [dataset.graphs.arrays(i) for i in range(len(dataset))]
    release_memory(dataset)
    after = [dataset.graphs.arrays(i) for i in range(len(dataset))]
    assert all(a.equals(b) for a, b in zip(before, after, strict=True))
    batches = list(GraphLoader(dataset, batch_size=2))  # 150 batches: releases twice
    assert sum(b.num_graphs for b in batches) == len(dataset)
