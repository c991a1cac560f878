"""A frozen prefix computed once per structure (tlmat.training.frozen): where a strategy
freezes it, which structures it keeps, and that training with it gives what training
without it gives."""

from __future__ import annotations

import copy
from pathlib import Path

import pandas as pd
import pytest
import torch

from tlmat.data import random_split
from tlmat.training import TrainConfig, fit
from tlmat.training.frozen import FrozenPrefix, frozen_split
from tlmat.training.module import PropertyModule
from tlmat.transfer import apply_strategy, preset
from tlmat.transfer.sources import load_source, prepare_transfer


@pytest.fixture(scope="module")
def source():
    return load_source("cgcnn/formation-energy-per-atom")


@pytest.mark.parametrize(
    ("strategy", "split"),
    [("head-only", "readout"), ("full", None), ("freeze-embedding", None), ("lora", None)],
)
def test_the_split_is_the_frozen_prefix_of_interactions(source, strategy, split) -> None:
    """Head-only splits after the whole backbone; nothing is cached where an interaction
    trains, where only the embedding is frozen, or where adapters train inside it."""
    model = copy.deepcopy(source.model)
    apply_strategy(model, preset(strategy), lr=1e-3)
    assert frozen_split(model) == split


def test_head_only_with_the_cache_trains_as_without_it(
    source, perovskites, tmp_path, monkeypatch
) -> None:
    """Head-only fine-tuning of the MP CGCNN on real perovskites: with the frozen
    backbone cached (every training and validation structure once, in memory or, with
    no room there, on disk), the per-epoch validation MAEs and the test predictions are
    those of the uncached run to float32 rounding."""
    import tlmat.training.frozen

    split = random_split(len(perovskites), (60, 30, 30), seed=0)
    logs, results = {}, {}
    for tier in ("memory", "disk", "none"):
        monkeypatch.setattr(tlmat.training.frozen, "MAX_BYTES", 0 if tier == "disk" else 2**31)
        config = TrainConfig(
            target="heat_ref", epochs=4, batch_size=16, early_stopping_patience=None,
            cache_frozen=tier != "none",
        )  # fmt: skip
        trained, strategy = prepare_transfer("head-only", source, "heat_ref")
        folder = tmp_path / tier
        results[tier] = fit(trained, perovskites, split, config, folder, strategy)
        logs[tier] = pd.read_csv(folder / "metrics.csv")["val_mae"].dropna().to_numpy()
    for tier in ("memory", "disk"):
        assert logs[tier] == pytest.approx(logs["none"], rel=1e-5)
        assert results[tier].best_val_mae == pytest.approx(results["none"].best_val_mae, rel=1e-5)
    written = list(perovskites.graphs.cache.directory.parent.glob("frozen-*/*/*.pt"))
    assert len(written) >= 90  # the disk tier held every training and validation structure


def test_the_cache_keeps_each_structure_once(source, perovskites) -> None:
    model = copy.deepcopy(source.model)
    groups = apply_strategy(model, preset("head-only"), lr=1e-3)
    module = PropertyModule(model, source.target, TrainConfig(target="heat_ref"), groups, 1)
    assert isinstance(module.frozen, FrozenPrefix)
    for indices in ([0, 1, 2], [2, 3], [0, 3]):
        batch = perovskites.batch(indices)
        batch.index = torch.tensor(indices)
        module(batch)
    assert sorted(module.frozen.rows) == [0, 1, 2, 3]
    assert module.frozen.bytes == 4 * model.backbone.embedding_dim * 4  # float32 rows


def test_no_cache_when_turned_off(source, tmp_path: Path) -> None:
    model = copy.deepcopy(source.model)
    groups = apply_strategy(model, preset("head-only"), lr=1e-3)
    config = TrainConfig(target="heat_ref", cache_frozen=False)
    assert PropertyModule(model, source.target, config, groups, 1).frozen is None


def test_all_but_the_last_chgnet_block_frozen_splits_before_it() -> None:
    """CHGNet splits after any block: freezing all but the last interaction caches the
    state after the one before it."""
    pytest.importorskip("chgnet", reason="CHGNet needs tlmat[foundation]")
    from tlmat.models import registry
    from tlmat.transfer.sources import fresh_model

    model = fresh_model(registry.model_config("chgnet-small"), seed=0).model
    n = len(model.backbone.interactions)
    apply_strategy(model, preset("freeze-first-k", k=n - 1), lr=1e-3)
    assert frozen_split(model) == f"interactions.{n - 2}"


def test_a_structures_state_does_not_depend_on_the_batch_it_came_in(source, perovskites) -> None:
    """Each structure's frozen state is computed alone, so two runs that meet the
    structures in other batches (a resumed run) keep the same states, bit for bit."""
    model = copy.deepcopy(source.model)
    apply_strategy(model, preset("head-only"), lr=1e-3)
    model.eval()
    kept = []
    for order in ([[0, 1, 2], [2, 3]], [[3, 2], [1, 0, 2]]):
        prefix = FrozenPrefix.of(model)
        for indices in order:
            batch = perovskites.batch(indices)
            batch.index = torch.tensor(indices)
            group, state = prefix.state(batch, perovskites)
            assert group == "readout"
            assert state["out"].shape[0] == len(indices)
        kept.append(prefix.rows)
    assert sorted(kept[0]) == sorted(kept[1]) == [0, 1, 2, 3]
    assert all(torch.equal(kept[0][k]["out"], kept[1][k]["out"]) for k in range(4))


def test_states_beyond_memory_go_to_disk_beside_the_graph_cache(source, perovskites) -> None:
    """With no room in memory, each structure's state is written once beside the graph
    cache and read back, bit for bit what the memory tier keeps; another source's weights
    get another folder; a damaged file is computed again, not trusted."""
    model = copy.deepcopy(source.model)
    with torch.no_grad():  # weights of this test only: a folder no other test wrote
        next(model.backbone.parameters()).add_(0.5)
    apply_strategy(model, preset("head-only"), lr=1e-3)
    model.eval()
    indices = [0, 1, 2, 3]
    batch = perovskites.batch(indices)
    batch.index = torch.tensor(indices)
    in_memory = FrozenPrefix.of(model)
    _, expected = in_memory.state(batch, perovskites)
    on_disk = FrozenPrefix(model, "readout", max_bytes=0)
    _, first = on_disk.state(batch, perovskites)
    folder = on_disk.folder(perovskites)
    assert folder.parent.parent == perovskites.graphs.cache.directory.parent
    assert len(list(folder.glob("*.pt"))) == 4 and not on_disk.rows
    again = FrozenPrefix(model, "readout", max_bytes=0)
    computed = []
    original = model.backbone.state_after
    model.backbone.state_after = lambda *a: computed.append(a) or original(*a)
    try:
        _, second = again.state(batch, perovskites)
        assert not computed  # read back, not computed
        for name in expected:
            assert torch.equal(first[name], expected[name])
            assert torch.equal(second[name], expected[name])
        damaged = sorted(folder.glob("*.pt"))[0]
        damaged.write_bytes(damaged.read_bytes()[:40])
        _, third = again.state(batch, perovskites)
        assert len(computed) == 1 and torch.equal(third["out"], expected["out"])
        assert torch.load(damaged, weights_only=True)["out"].shape[0] == 1  # rewritten
    finally:
        model.backbone.state_after = original
    other = copy.deepcopy(model)
    with torch.no_grad():
        next(other.backbone.parameters()).add_(1.0)
    assert FrozenPrefix(other, "readout", max_bytes=0).folder(perovskites) != folder
