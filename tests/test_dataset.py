"""Datasets through the cache: a second load parses nothing; changed input is re-read."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import tlmat.data.dataset as dataset_module
from tlmat.data import load_dataset
from tlmat.graphs import GraphSettings


def test_second_load_parses_nothing(data: Path, tmp_path: Path, monkeypatch) -> None:
    source = data / "perov_5" / "val.csv.gz"
    first = load_dataset(source, targets=["heat_ref"], cache_dir=tmp_path, limit=300)
    assert not first.from_cache and len(first) == 300

    def no_parsing(*args, **kwargs):
        raise AssertionError("the source was parsed again")

    monkeypatch.setattr(dataset_module, "iter_records", no_parsing)
    second = load_dataset(source, targets=["heat_ref"], cache_dir=tmp_path, limit=300)
    assert second.from_cache
    assert second.ids == first.ids and second.formulas == first.formulas
    np.testing.assert_array_equal(second.targets["heat_ref"], first.targets["heat_ref"])
    a, b = first.batch(range(32), "heat_ref"), second.batch(range(32), "heat_ref")
    assert torch.equal(a.edge_index, b.edge_index) and torch.equal(a.y, b.y)


def test_changed_source_is_read_again(data: Path, tmp_path: Path) -> None:
    source = tmp_path / "sample"
    shutil.copytree(data / "cgcnn_sample_regression", source)
    (source / "id_prop.csv").chmod(0o644)
    first = load_dataset(source, cache_dir=tmp_path / "cache")
    id_prop = source / "id_prop.csv"
    id_prop.write_text(id_prop.read_text().replace("1000041,1.0", "1000041,42.0"))
    second = load_dataset(source, cache_dir=tmp_path / "cache")
    assert not second.from_cache
    assert first.targets["target"][0] == 1.0 and second.targets["target"][0] == 42.0


def test_skipped_items_are_remembered_by_the_cache(data: Path, tmp_path: Path) -> None:
    source = data / "jarvis_tc_supercon" / "jarvis_tc_supercon_merged.csv.gz"
    first = load_dataset(source, targets=["Tc_K"], cache_dir=tmp_path)
    second = load_dataset(source, targets=["Tc_K"], cache_dir=tmp_path)
    assert len(first) == len(second) == 616
    assert (
        second.log.summary() == first.log.summary() == "read 616, skipped 440 (missing target: 440)"
    )


def test_subset_and_vector_targets(data: Path, tmp_path: Path) -> None:
    ds = load_dataset(
        data / "jarvis_alignn_samples" / "sample_data_multi_prop_edos",
        GraphSettings.preset("alignn"),
        cache_dir=tmp_path,
    )
    assert ds.targets["target"].shape == (50, 300)
    part = ds.subset([4, 2])
    assert part.ids == [ds.ids[4], ds.ids[2]]
    assert part.batch([0, 1], "target").y.shape == (2, 300)
    assert part[0].num_triplets > 0


def test_strict_mode_raises_even_when_cached(data: Path, tmp_path: Path) -> None:
    source = data / "jarvis_tc_supercon" / "jarvis_tc_supercon_merged.csv.gz"
    load_dataset(source, targets=["Tc_K"], cache_dir=tmp_path)
    with pytest.raises(ValueError, match="missing target"):
        load_dataset(source, targets=["Tc_K"], cache_dir=tmp_path, strict=True)


def test_streaming_in_chunks_equals_one_pass(data: Path, tmp_path: Path) -> None:
    source = data / "jarvis_tc_supercon" / "jarvis_tc_supercon_merged.csv.gz"
    whole = load_dataset(source, targets=["Tc_K"], cache_dir=tmp_path / "a", limit=200)
    chunked = load_dataset(
        source, targets=["Tc_K"], cache_dir=tmp_path / "b", limit=200, chunk_size=7
    )
    assert chunked.ids == whole.ids and chunked.log.summary() == whole.log.summary()
    np.testing.assert_array_equal(chunked.targets["Tc_K"], whole.targets["Tc_K"])
    shards = list((tmp_path / "b").glob("graphs-*/shard-*"))
    assert len(shards) > 5  # built a chunk at a time, never all structures at once
    a, b = whole.batch(range(len(whole))), chunked.batch(range(len(chunked)))
    assert torch.equal(a.edge_index, b.edge_index) and torch.equal(a.edge_dist, b.edge_dist)
