"""Deep ensembles on real perovskites: members differ in split, initialisation and seed;
σ_e is the spread of their predictions, σ_a their mean validation error, σ both."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from tlmat.cli import app
from tlmat.data import seeded_split
from tlmat.models.prediction import predict
from tlmat.training import TrainConfig
from tlmat.transfer.sources import fresh_model
from tlmat.uncertainty import is_ensemble, load_ensemble, train_ensemble


def test_ensemble_members_and_sigma(perovskites, tmp_path) -> None:
    pool = np.arange(len(perovskites))
    config = TrainConfig(
        target="heat_ref",
        unit="eV/cell",
        epochs=3,
        batch_size=16,
        progress_bar=False,
        early_stopping_patience=None,
        scheduler="none",
    )
    ensemble = train_ensemble(
        lambda seed: (fresh_model("cgcnn-small", seed), None),
        perovskites,
        lambda seed: seeded_split(pool, seed, train_size=60),
        config,
        tmp_path / "ens",
        n_members=3,
    )
    manifest = json.loads((tmp_path / "ens" / "ensemble.json").read_text())
    assert manifest["seeds"] == [0, 1, 2] and len(manifest["val_mse"]) == 3
    vals = [json.loads((tmp_path / "ens" / f"member-{k}" / "split.json").read_text())["val"]
            for k in range(3)]  # fmt: skip
    assert vals[0] != vals[1], "each member validates on its own structures"
    test = seeded_split(pool, 0, train_size=60).test
    arrays = ensemble.predict(perovskites, test)
    members = np.stack([predict(m, perovskites, test) for m in ensemble.members])
    np.testing.assert_allclose(arrays["mean"], members.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(arrays["sigma_e"], members.std(axis=0), rtol=1e-5)
    np.testing.assert_allclose(arrays["sigma_a"], np.sqrt(np.mean(manifest["val_mse"])))
    np.testing.assert_allclose(
        arrays["sigma"] ** 2, arrays["sigma_a"] ** 2 + arrays["sigma_e"] ** 2, rtol=1e-6
    )
    assert (arrays["sigma_e"] > 0).all()
    assert is_ensemble(tmp_path / "ens")
    again = load_ensemble(tmp_path / "ens").predict(perovskites, test)
    np.testing.assert_allclose(again["sigma"], arrays["sigma"], rtol=1e-6)


def test_cli_train_ensemble_then_predict_with_sigma(data: Path, tmp_path) -> None:
    from tlmat.io import read_records, write_csv

    table = tmp_path / "perov60.csv"
    write_csv(read_records(data / "perov_5" / "val.csv.gz", ["heat_ref"], limit=60), table)
    runner = CliRunner()
    cache = ["--cache-dir", str(tmp_path / "cache")]
    result = runner.invoke(app, ["train", str(table), "-t", "heat_ref", "--unit", "eV/cell",
                                 "--model", "cgcnn-small", "--ensemble", "3", "--epochs", "2",
                                 "--run-dir", str(tmp_path / "ens"), *cache])  # fmt: skip
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    assert "ensemble of 3: test MAE" in said and "≤ 2σ for" in said
    out = tmp_path / "pred.csv"
    result = runner.invoke(app, ["predict", str(tmp_path / "ens"), str(table), "-o", str(out),
                                 *cache])  # fmt: skip
    assert result.exit_code == 0, result.output
    frame = pd.read_csv(out)
    assert list(frame.columns) == ["id", "heat_ref (eV/cell)", "sigma_a (eV/cell)",
                                   "sigma_e (eV/cell)", "sigma (eV/cell)"]  # fmt: skip
    assert len(frame) == 60 and (frame["sigma (eV/cell)"] >= frame["sigma_a (eV/cell)"]).all()


def test_cli_finetune_ensemble_of_transferred_members(data: Path, tmp_path) -> None:
    """The normal case: an ensemble of fine-tuned models, each from the same source with
    its own split, new head and seed."""
    from tlmat.io import read_records, write_csv

    table = tmp_path / "perov60.csv"
    write_csv(read_records(data / "perov_5" / "val.csv.gz", ["heat_ref"], limit=60), table)
    runner = CliRunner()
    cache = ["--cache-dir", str(tmp_path / "cache")]
    args = ["finetune", str(table), "-t", "heat_ref", "--unit", "eV/cell", "--strategy",
            "freeze-embedding", "--ensemble", "2", "--epochs", "2"]  # fmt: skip
    result = runner.invoke(app, [*args, "--run-dir", str(tmp_path / "ens"), *cache])
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "ens" / "ensemble.json").read_text())
    assert manifest["members"] == ["member-0", "member-1"]
    run = json.loads((tmp_path / "ens" / "member-1" / "run.json").read_text())
    assert run["strategy"]["name"] == "freeze-embedding" and run["seed"] == 1
    members = load_ensemble(tmp_path / "ens").members
    assert all(m.target.unit == "eV/cell" for m in members)


def test_calibration_of_a_gaussian_sigma_and_of_a_too_small_one() -> None:
    from tlmat.uncertainty import calibration

    rng = np.random.default_rng(0)
    sigma = rng.uniform(0.05, 0.5, 20_000)
    y = rng.normal(0.0, sigma)
    calibrated = calibration(y, np.zeros_like(y), sigma)
    assert calibrated["coverage_1sigma"] == pytest.approx(0.683, abs=0.01)
    assert calibrated["coverage_2sigma"] == pytest.approx(0.954, abs=0.01)
    assert calibrated["miscalibration_area"] < 0.01 and calibrated["spearman_error_sigma"] > 0.3
    overconfident = calibration(y, np.zeros_like(y), sigma / 3)
    assert overconfident["coverage_1sigma"] < 0.35
    assert overconfident["miscalibration_area"] > 0.2 and overconfident["nll"] > calibrated["nll"]


def test_cli_evaluate_an_ensemble_reports_calibration(data: Path, tmp_path) -> None:
    from tlmat.io import read_records, write_csv

    table = tmp_path / "perov60.csv"
    write_csv(read_records(data / "perov_5" / "val.csv.gz", ["heat_ref"], limit=60), table)
    runner = CliRunner()
    cache = ["--cache-dir", str(tmp_path / "cache")]
    trained = runner.invoke(app, ["train", str(table), "-t", "heat_ref", "--model",
                                  "cgcnn-small", "--ensemble", "2", "--epochs", "2",
                                  "--run-dir", str(tmp_path / "ens"), *cache])  # fmt: skip
    assert trained.exit_code == 0, trained.output
    held_out = tmp_path / "test.csv"
    write_csv(read_records(data / "perov_5" / "test.csv.gz", ["heat_ref"], limit=40), held_out)
    result = runner.invoke(app, ["evaluate", str(tmp_path / "ens"), str(held_out), "-t",
                                 "heat_ref", *cache])  # fmt: skip
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    assert "ensemble of 2" in said and "miscalibration area" in said and "Spearman" in said
