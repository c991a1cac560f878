"""Multi-fidelity band gaps (PBE and HSE, Chen et al. 2021, on Materials Project
structures): one row per (structure, fidelity) label, a split whose validation and test
materials are never seen at any fidelity, a model trained on both fidelities that
predicts each, and Δ-learning's target."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tlmat.data import load_dataset
from tlmat.data.fidelity import FIDELITY, fidelity_of, fidelity_split, stack_fidelities, with_delta
from tlmat.graphs import GraphSettings


@pytest.fixture(scope="module")
def gaps(data: Path, tmp_path_factory) -> Path:
    """The first 600 structures of mp_cgcnn_36k joined to their multi-fidelity gaps (eV)."""
    structures = pd.read_csv(data / "mp_cgcnn_36k" / "mp_cgcnn_36k.csv.gz", nrows=600)
    labels = pd.read_csv(
        data / "megnet_multifidelity_bandgaps" / "mf_bandgaps_joined_to_mp_cgcnn_36k.csv.gz"
    )
    joined = structures[["material_id", "cif"]].merge(labels, on="material_id")
    path = tmp_path_factory.mktemp("mf") / "gaps.csv"
    joined[["material_id", "cif", "gap_pbe", "gap_hse"]].to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def levels(gaps: Path, tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    settings = GraphSettings.preset("cgcnn")
    return {
        name: (load_dataset(gaps, settings, [column], cache_dir=cache), column)
        for name, column in (("pbe", "gap_pbe"), ("hse", "gap_hse"))
    }


def test_each_label_is_a_row_with_its_fidelity(levels) -> None:
    stacked = stack_fidelities(levels, target="gap")
    pbe, hse = levels["pbe"][0], levels["hse"][0]
    assert 40 < len(hse) < len(pbe)  # HSE is the scarce fidelity
    assert len(stacked) == len(pbe) + len(hse)
    level = fidelity_of(stacked)
    np.testing.assert_array_equal(np.bincount(level), [len(pbe), len(hse)])
    np.testing.assert_array_equal(stacked.targets["gap"][level == 1], hse.targets["gap_hse"])
    assert [stacked.ids[i] for i in np.flatnonzero(level == 1)] == hse.ids
    batch = stacked.batch([0, len(pbe)], "gap")
    assert batch.fidelity.tolist() == [0, 1]
    with pytest.raises(ValueError, match="no column 'gap_scan'"):
        stack_fidelities({"scan": (pbe, "gap_scan")})


def test_split_never_shows_a_tested_material_at_any_fidelity(levels) -> None:
    stacked = stack_fidelities(levels, target="gap")
    split = fidelity_split(stacked, n_train=20, n_val=10, n_test=15, seed=3)
    level = fidelity_of(stacked)
    assert (level[split.val] == 1).all() and (level[split.test] == 1).all()
    assert (level[split.train] == 1).sum() == 20
    held = np.concatenate([split.val, split.test])
    ids = {stacked.ids[i] for i in held}
    formulas = {stacked.formulas[i] for i in held}
    train_ids = [stacked.ids[i] for i in split.train]
    assert not ids & set(train_ids)
    assert not formulas & {stacked.formulas[i] for i in split.train}
    # the 20 HSE materials bring their PBE labels; other PBE labels fill the rest
    assert (level[split.train] == 0).sum() > 20 * 5
    assert len(fidelity_split(stacked, 20, 10, 15, seed=3, low_limit=30).train) <= 20 + 20 + 30
    with pytest.raises(ValueError, match="have fidelity 1"):
        fidelity_split(stacked, n_train=10_000, n_val=10, n_test=10)


def test_a_joint_model_learns_both_fidelities(levels, tmp_path: Path) -> None:
    from tlmat.models import load_checkpoint
    from tlmat.models.registry import model_config
    from tlmat.training import TrainConfig, fit, predict
    from tlmat.transfer.sources import fresh_model

    stacked = stack_fidelities(levels, target="gap")
    split = fidelity_split(stacked, n_train=30, n_val=10, n_test=15, seed=0, low_limit=150)
    trained = fresh_model(model_config("cgcnn-small"), 0)
    trained.model.add_fidelities(["pbe", "hse"])
    config = TrainConfig(target="gap", unit="eV", epochs=4, batch_size=32, progress_bar=False)
    result = fit(trained, stacked, split, config, tmp_path / "run")
    loaded = load_checkpoint(tmp_path / "run" / "model.pt")
    assert loaded.model.head.fidelities == ["pbe", "hse"]
    at_hse = predict(loaded, stacked, split.test)
    np.testing.assert_allclose(at_hse, predict(result.trained, stacked, split.test), rtol=1e-5)
    as_pbe = stacked.subset(split.test)
    as_pbe.targets[FIDELITY] = np.zeros(len(as_pbe))
    # the same structures, asked for the cheaper fidelity, get other numbers
    assert np.abs(predict(loaded, as_pbe) - at_hse).max() > 1e-4


def test_delta_is_high_minus_baseline(levels) -> None:
    pbe_of = dict(zip(levels["pbe"][0].ids, levels["pbe"][0].targets["gap_pbe"], strict=True))
    hse = levels["hse"][0]
    hse = hse.subset([k for k, i in enumerate(hse.ids) if i in pbe_of])  # both labels
    baseline = np.array([pbe_of[i] for i in hse.ids])
    delta = with_delta(hse, "gap_hse", baseline)
    np.testing.assert_allclose(delta.targets["gap_hse-delta"] + baseline, hse.targets["gap_hse"])
    assert (delta.targets["gap_hse-delta"] > -1e-9).mean() > 0.9  # HSE opens the PBE gap
    with pytest.raises(ValueError, match="baseline values"):
        with_delta(hse, "gap_hse", baseline[:-1])
