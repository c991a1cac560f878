"""A kept head starts where the source recalibrated by a line stands
(tlmat.training.recalibration): a fine-tuned CHGNet never starts worse than its
zero-shot + linear score."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tlmat.data import Split, load_dataset
from tlmat.models import TrainedModel
from tlmat.training import TrainConfig, fit, predict
from tlmat.transfer.sources import load_source, prepare_transfer


@pytest.fixture(scope="module")
def chgnet():
    pytest.importorskip("chgnet", reason="CHGNet needs tlmat[foundation]")
    return load_source("chgnet/0.3.0")


def test_a_kept_chgnet_head_starts_at_least_as_well_as_zero_shot_plus_linear(
    chgnet, data: Path, tmp_path: Path
) -> None:
    """CHGNet's energy head kept for the perovskites' heat of formation (eV per 5-atom
    cell): before its first step (one epoch at a learning rate of 1e-12) the model fits
    the training structures at least as well as the source's energies recalibrated by a
    line, and its validation MAE is that of the recalibration's to within 2 %; a
    normaliser fitted to the target alone (what tlmat did before) starts far worse."""
    dataset = load_dataset(
        data / "perov_5" / "val.csv.gz", chgnet.model.graph_settings, ["heat_ref"],
        elements=chgnet.model.elements, limit=60,
    )  # fmt: skip
    split = Split(np.arange(40), np.arange(40, 60), np.arange(40, 60))
    y = dataset.targets["heat_ref"]
    raw = predict(chgnet, dataset).reshape(-1)
    a, b = np.polyfit(raw[split.train], y[split.train], 1)
    line = {part: a * raw[idx] + b for part, idx in (("train", split.train), ("val", split.val))}
    config = TrainConfig(
        target="heat_ref", unit="eV/cell", extensive=True, epochs=1, lr=1e-12,
        early_stopping_patience=None,
    )  # fmt: skip
    trained, strategy = prepare_transfer("full", chgnet, "heat_ref", keep_head=True)
    result = fit(trained, dataset, split, config, tmp_path / "kept", strategy)
    start = {part: predict(result.trained, dataset, idx).reshape(-1) for part, idx in
             (("train", split.train), ("val", split.val))}  # fmt: skip
    mse = {k: float(np.mean((v - y[getattr(split, k)]) ** 2)) for k, v in start.items()}
    line_mse = {k: float(np.mean((v - y[getattr(split, k)]) ** 2)) for k, v in line.items()}
    assert mse["train"] <= line_mse["train"] * (1 + 1e-6)
    mae = np.abs(start["val"] - y[split.val]).mean()
    assert mae <= 1.02 * np.abs(line["val"] - y[split.val]).mean()
    assert result.trained.target.atom_refs  # CHGNet's references, rescaled, kept

    atoms = [dataset.graphs.arrays(i).z for i in split.train]
    plain = TrainedModel(result.trained.model, config.target_spec().fit(y[split.train], atoms))
    naive = np.abs(predict(plain, dataset, split.val).reshape(-1) - y[split.val]).mean()
    assert naive > 2 * mae
