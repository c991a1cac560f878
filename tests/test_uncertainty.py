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
                                 "--ensemble-workers", "2",
                                 "--run-dir", str(tmp_path / "ens"), *cache])  # fmt: skip
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    assert "3 members, 2 side by side" in said
    assert "ensemble of 3: test MAE" in said and "≤ 2σ for" in said
    out = tmp_path / "pred.csv"
    result = runner.invoke(app, ["predict", str(tmp_path / "ens"), str(table), "-o", str(out),
                                 *cache])  # fmt: skip
    assert result.exit_code == 0, result.output
    frame = pd.read_csv(out)
    assert list(frame.columns) == ["id", "heat_ref (eV/cell)", "sigma_a (eV/cell)",
                                   "sigma_e (eV/cell)", "sigma (eV/cell)"]  # fmt: skip
    assert len(frame) == 60 and (frame["sigma (eV/cell)"] >= frame["sigma_a (eV/cell)"]).all()
    # the spelling, `predict --ensemble DIR STRUCTURES…`, gives the same table
    again = tmp_path / "pred-again.csv"
    result = runner.invoke(app, ["predict", "--ensemble", str(tmp_path / "ens"), str(table),
                                 "-o", str(again), *cache])  # fmt: skip
    assert result.exit_code == 0, result.output
    pd.testing.assert_frame_equal(pd.read_csv(again), frame)


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


# --- recalibration, figures, members side by side ---------------------------------------


def quick_config(**overrides) -> TrainConfig:
    base = dict(target="heat_ref", unit="eV/cell", epochs=2, batch_size=16, progress_bar=False,
                early_stopping_patience=None, scheduler="none")  # fmt: skip
    return TrainConfig(**{**base, **overrides})


def scratch_small(seed: int):
    return fresh_model("cgcnn-small", seed), None


@pytest.fixture(scope="module")
def small_ensemble(perovskites, tmp_path_factory) -> Path:
    """Three small CGCNN members on the first 60 perovskites' splits (2 epochs each)."""
    from functools import partial

    folder = tmp_path_factory.mktemp("ensemble") / "ens"
    pool = np.arange(60)
    train_ensemble(scratch_small, perovskites, partial(seeded_split, pool, train_size=30),
                   quick_config(), folder, n_members=3)  # fmt: skip
    return folder


def held_out(perovskites):
    """Perovskites 60–119: none of the members trained or validated on them."""
    return perovskites.subset(np.arange(60, 120))


def test_sigma_scale_against_a_hand_computation() -> None:
    from tlmat.uncertainty import fit_sigma_scale

    y, mean, sigma = np.array([1.0, -2.0, 3.0]), np.zeros(3), np.array([1.0, 1.0, 3.0])
    # z = (1, -2, 1): s² = (1 + 4 + 1) / 3 = 2
    assert fit_sigma_scale(y, mean, sigma) == pytest.approx(np.sqrt(2), rel=1e-12)

    def nll(s: float) -> float:
        return float(np.mean(np.log(s * sigma) + (y - mean) ** 2 / (2 * (s * sigma) ** 2)))

    best = np.sqrt(2)
    assert nll(best) < nll(best * 0.99) and nll(best) < nll(best * 1.01), "the NLL minimum"
    with pytest.raises(ValueError, match="σ > 0"):
        fit_sigma_scale(y, mean, np.array([1.0, 0.0, 1.0]))
    with pytest.raises(ValueError, match="at least 2"):
        fit_sigma_scale(y[:1], mean[:1], sigma[:1])
    with pytest.raises(ValueError, match="exact"):
        fit_sigma_scale(mean, mean, sigma)


def test_recalibration_scales_every_sigma_and_round_trips(
    small_ensemble, perovskites, tmp_path
) -> None:
    import shutil

    from tlmat.uncertainty import calibration, recalibrate

    folder = tmp_path / "ens"
    shutil.copytree(small_ensemble, folder)
    data = held_out(perovskites)
    y = data.targets["heat_ref"]
    ensemble = load_ensemble(folder)
    assert ensemble.sigma_scale == 1.0 and ensemble.recalibration is None
    raw = ensemble.predict(data)
    by_hand = np.sqrt(np.mean((y - raw["mean"]) ** 2 / raw["sigma"] ** 2))
    fitted = recalibrate(folder, ensemble, data, "heat_ref", "perov_5/val[60:120]")
    assert fitted.sigma_scale == pytest.approx(by_hand, rel=1e-6)
    manifest = json.loads((folder / "ensemble.json").read_text())
    assert manifest["sigma_scale"] == pytest.approx(by_hand, rel=1e-6)
    about = manifest["recalibration"]
    assert about["n"] == 60 and about["data"] == "perov_5/val[60:120]"
    assert about["target"] == "heat_ref" and len(about["sha256"]) == 64
    assert about["nll_recalibrated"] <= about["nll_uncalibrated"]
    assert manifest["val_mse"] == json.loads((small_ensemble / "ensemble.json").read_text())[
        "val_mse"], "the members' own numbers are kept"  # fmt: skip

    loaded = load_ensemble(folder)  # the manifest round trip
    assert loaded.sigma_scale == pytest.approx(by_hand, rel=1e-6)
    assert loaded.recalibration == about
    scaled = loaded.predict(data)
    np.testing.assert_allclose(scaled["mean"], raw["mean"], rtol=1e-6)
    for name in ("sigma_a", "sigma_e", "sigma"):
        np.testing.assert_allclose(scaled[name], by_hand * raw[name], rtol=1e-6)
    parts = scaled["sigma_a"] ** 2 + scaled["sigma_e"] ** 2
    np.testing.assert_allclose(scaled["sigma"] ** 2, parts, rtol=1e-6)
    np.testing.assert_allclose(loaded.predict(data, calibrated=False)["sigma"], raw["sigma"],
                               rtol=1e-6)  # fmt: skip
    after = calibration(y, scaled["mean"], scaled["sigma"])
    assert after["nll"] == pytest.approx(about["nll_recalibrated"], rel=1e-6)
    # on the data it was fitted on, s·σ has mean squared z-score 1 by construction
    assert np.mean(((y - scaled["mean"]) / scaled["sigma"]) ** 2) == pytest.approx(1.0, rel=1e-5)

    again = recalibrate(folder, loaded, data, "heat_ref")  # replaces, never compounds
    assert again.sigma_scale == pytest.approx(by_hand, rel=1e-6)

    old = {k: v for k, v in manifest.items() if k not in ("sigma_scale", "recalibration")}
    (folder / "ensemble.json").write_text(json.dumps(old))  # a manifest from before
    assert load_ensemble(folder).sigma_scale == 1.0


def test_the_same_ensemble_again_keeps_its_recalibration(
    small_ensemble, perovskites, tmp_path
) -> None:
    """Every member finished: the same command again reuses them (no training) and keeps
    the σ scale fitted for exactly these members."""
    import shutil
    from functools import partial

    from tlmat.uncertainty import recalibrate

    folder = tmp_path / "ens"
    shutil.copytree(small_ensemble, folder)
    fitted = recalibrate(folder, load_ensemble(folder), held_out(perovskites), "heat_ref")
    before = {k: (folder / f"member-{k}" / "model.pt").stat().st_mtime_ns for k in range(3)}
    again = train_ensemble(scratch_small, perovskites, partial(seeded_split, np.arange(60),
                           train_size=30), quick_config(), folder, n_members=3)  # fmt: skip
    after = {k: (folder / f"member-{k}" / "model.pt").stat().st_mtime_ns for k in range(3)}
    assert after == before, "finished members were reused, not trained again"
    assert again.sigma_scale == pytest.approx(fitted.sigma_scale)
    assert load_ensemble(folder).sigma_scale == pytest.approx(fitted.sigma_scale)


def _png_with_content(path: Path) -> None:
    import matplotlib.image

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    pixels = matplotlib.image.imread(path)[..., :3]
    assert pixels.shape[0] > 300 and pixels.shape[1] > 300
    colours = np.unique((pixels.reshape(-1, 3) * 255).astype(np.uint8), axis=0)
    assert len(colours) > 50 and pixels.std() > 0.05, f"{path} looks empty"


def _held_out_table(data: Path, tmp_path: Path) -> Path:
    from tlmat.io import read_records, write_csv

    table = tmp_path / "held-out.csv"
    write_csv(read_records(data / "perov_5" / "test.csv.gz", ["heat_ref"], limit=40), table)
    return table


def test_figures_are_written_and_are_pngs(small_ensemble, perovskites, tmp_path) -> None:
    from tlmat.evaluation.calibration import calibration_figures

    data = held_out(perovskites)
    arrays = load_ensemble(small_ensemble).predict(data)
    paths = calibration_figures(data.targets["heat_ref"], arrays["mean"], arrays["sigma"],
                                tmp_path / "figs", "eV/cell", "held-out",
                                sigma_before=arrays["sigma"] / 2)  # fmt: skip
    figs = tmp_path / "figs"
    assert paths == {"calibration": figs / "calibration-held-out.png",
                     "error_vs_sigma": figs / "error-vs-sigma-held-out.png"}  # fmt: skip
    for path in paths.values():
        _png_with_content(path)


def test_cli_evaluate_writes_figures_and_recalibrates(small_ensemble, data, tmp_path) -> None:
    import shutil

    folder = tmp_path / "ens"
    shutil.copytree(small_ensemble, folder)
    table = _held_out_table(data, tmp_path)
    cache = ["--cache-dir", str(tmp_path / "cache")]
    args = ["evaluate", str(folder), str(table), "-t", "heat_ref", *cache]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    for kind, name in (("calibration", "calibration"), ("error-vs-sigma", "error-vs-sigma")):
        path = folder / "figures" / f"{name}-held-out.png"
        assert f"{kind} figure → {path}" in said
        _png_with_content(path)
    assert "figures" in json.loads((folder / ".tlmat-files.json").read_text())["files"]
    assert "sigma_scale" not in json.loads((folder / "ensemble.json").read_text())

    out, figures = tmp_path / "rows.csv", tmp_path / "mine"
    result = CliRunner().invoke(app, [*args, "--recalibrate", "-o", str(out), "--figures",
                                      str(figures)])  # fmt: skip
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    assert "before recalibration: MAE" in said and "after recalibration: MAE" in said
    manifest = json.loads((folder / "ensemble.json").read_text())
    assert manifest["recalibration"]["data"] == str(table) and manifest["recalibration"]["n"] == 40
    assert f"σ scale {manifest['sigma_scale']:.4f} fitted on" in said
    rows = pd.read_csv(out)
    assert list(rows.columns) == ["id", "true (eV/cell)", "predicted (eV/cell)",
                                  "error (eV/cell)", "sigma_a (eV/cell)", "sigma_e (eV/cell)",
                                  "sigma (eV/cell)"]  # fmt: skip
    z2 = np.mean((rows["error (eV/cell)"] / rows["sigma (eV/cell)"]) ** 2)
    assert z2 == pytest.approx(1.0, rel=1e-4), "the rows carry the recalibrated σ"
    for name in ("calibration-held-out.png", "error-vs-sigma-held-out.png"):
        _png_with_content(figures / name)
    again = CliRunner().invoke(app, [*args, "--figures", str(figures)])
    assert again.exit_code == 1 and "exists; pass --overwrite" in " ".join(again.output.split())


def test_members_side_by_side_equal_the_sequential_ones(perovskites, tmp_path) -> None:
    """Same seeds, same splits, same numbers: one member at a time (with the threads a
    member gets side by side, so that even the summation order is the same), two worker
    processes, and submitit's in-process executor (the code path SLURM jobs take)."""
    from functools import partial

    import torch

    from tlmat.machine import granted_cpus

    split_for = partial(seeded_split, np.arange(60), train_size=30)
    args = (scratch_small, perovskites, split_for, quick_config())
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, granted_cpus() // 2))
    try:
        one = train_ensemble(*args, tmp_path / "one", n_members=2, workers=1)
    finally:
        torch.set_num_threads(threads)
    two = train_ensemble(*args, tmp_path / "two", n_members=2, workers=2)
    runs = {"one": one, "two": two}
    try:
        import submitit  # noqa: F401
    except ImportError:
        pass
    else:
        cores = {"cpus_per_task": max(1, granted_cpus() // 2)}  # a job's torch threads
        runs["submitit"] = train_ensemble(*args, tmp_path / "submitit", n_members=2,
                                          executor="debug", slurm=cores)  # fmt: skip
    test = np.arange(60, 120)
    reference = one.predict(perovskites, test)
    for name, ensemble in runs.items():
        np.testing.assert_allclose(ensemble.val_mse, one.val_mse, rtol=1e-6, err_msg=name)
        arrays = ensemble.predict(perovskites, test)
        for key in ("mean", "sigma"):
            np.testing.assert_allclose(arrays[key], reference[key], rtol=1e-5, err_msg=name)
    for k in range(2):
        splits = {name: json.loads((tmp_path / name / f"member-{k}" / "split.json").read_text())
                  for name in runs}  # fmt: skip
        assert all(s == splits["one"] for s in splits.values()), "the same split per member"
        assert json.loads((tmp_path / "two" / f"member-{k}" / "run.json").read_text())["seed"] == k
    manifests = [json.loads((tmp_path / n / "ensemble.json").read_text()) for n in runs]
    assert all(m["seeds"] == [0, 1] for m in manifests)
    # a second run side by side reuses the finished members
    stamp = (tmp_path / "two" / "member-1" / "model.pt").stat().st_mtime_ns
    again = train_ensemble(*args, tmp_path / "two", n_members=2, workers=2)
    assert (tmp_path / "two" / "member-1" / "model.pt").stat().st_mtime_ns == stamp
    np.testing.assert_allclose(again.val_mse, two.val_mse, rtol=1e-12)


# --- heteroscedastic members: σ_a per structure (Gaussian NLL heads) --------------------


def test_gaussian_nll_against_a_hand_computation() -> None:
    import math

    import torch

    from tlmat.models import TargetSpec
    from tlmat.training.module import PropertyModule, gaussian_nll

    mean = torch.tensor([0.0, 1.0, -1.0])
    log_variance = torch.tensor([0.0, math.log(4.0), -math.log(4.0)])
    y = torch.tensor([1.0, 3.0, -1.5])
    # ½[ln 2π + v + r²e⁻ᵛ]: r² e⁻ᵛ = 1, 4/4, 0.25·4 = 1 each, and the v cancel (0, ±ln 4)
    expected = 0.5 * (math.log(2 * math.pi) + 1.0)
    assert float(gaussian_nll(mean, log_variance, y)) == pytest.approx(expected, rel=1e-6)
    torch_nll = torch.nn.GaussianNLLLoss(full=True, eps=1e-12)(mean, y, log_variance.exp())
    assert float(gaussian_nll(mean, log_variance, y)) == pytest.approx(float(torch_nll), rel=1e-6)
    # the module's loss: the target encoded ((y − 1)/2), the head's two columns, the clamp
    target = TargetSpec(name="heat_ref", mean=1.0, std=2.0, heteroscedastic=True)
    config = quick_config(loss="gaussian_nll")
    model = fresh_model("cgcnn-small", out_dim=2).model
    module = PropertyModule(model, target, config, [], steps_per_epoch=1)
    prediction = torch.tensor([[0.0, 0.0], [0.5, 50.0]])  # 50 is clamped to 10
    observed = torch.tensor([3.0, 1.0])  # encoded: 1.0, 0.0
    by_hand = 0.5 * np.mean([np.log(2 * np.pi) + 0.0 + 1.0**2,
                             np.log(2 * np.pi) + 10.0 + 0.5**2 * np.exp(-10.0)])  # fmt: skip
    assert float(module._loss(prediction, observed, None)) == pytest.approx(by_hand, rel=1e-6)


def heteroscedastic_small(seed: int):
    return fresh_model("cgcnn-small", seed, out_dim=2), None


@pytest.fixture(scope="module")
def nll_ensemble(perovskites, tmp_path_factory) -> Path:
    """Two small heteroscedastic CGCNN members (loss gaussian_nll) on the first 60
    perovskites' splits."""
    from functools import partial

    folder = tmp_path_factory.mktemp("nll-ensemble") / "ens"
    train_ensemble(heteroscedastic_small, perovskites, partial(seeded_split, np.arange(60),
                   train_size=30), quick_config(loss="gaussian_nll", epochs=3), folder,
                   n_members=2)  # fmt: skip
    return folder


def test_heteroscedastic_members_give_sigma_a_per_structure(nll_ensemble, perovskites) -> None:
    from tlmat.models.prediction import predict_variance, predict_with_variance

    manifest = json.loads((nll_ensemble / "ensemble.json").read_text())
    assert manifest["aleatoric"] == "heteroscedastic"
    assert "predicted variances" in manifest["definition"]
    ensemble = load_ensemble(nll_ensemble)
    assert ensemble.aleatoric == "heteroscedastic"
    assert all(m.target.heteroscedastic and m.model.head.out_dim == 2 for m in ensemble.members)
    test = np.arange(60, 120)
    arrays = ensemble.predict(perovskites, test)
    variances = np.stack([predict_variance(m, perovskites, test) for m in ensemble.members])
    means = np.stack([predict(m, perovskites, test) for m in ensemble.members])
    assert variances.shape == means.shape == (2, len(test)) and (variances > 0).all()
    # σ_a² = the members' mean predicted variance (eV/cell)², per structure
    np.testing.assert_allclose(arrays["sigma_a"] ** 2, variances.mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(arrays["sigma_e"], means.std(axis=0), rtol=1e-5)
    np.testing.assert_allclose(arrays["mean"], means.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(
        arrays["sigma"] ** 2, arrays["sigma_a"] ** 2 + arrays["sigma_e"] ** 2, rtol=1e-6
    )
    assert np.ptp(arrays["sigma_a"]) > 1e-3 * arrays["sigma_a"].mean(), "varies by structure"
    # the mean is what predict gives, as for any model: every command keeps working
    mean, variance = predict_with_variance(ensemble.members[0], perovskites, test)
    np.testing.assert_array_equal(mean, means[0])
    np.testing.assert_array_equal(variance, variances[0])


def test_a_manifest_without_aleatoric_loads_as_before(small_ensemble, perovskites, tmp_path):
    """An ensemble.json from before the option: σ_a² is the mean validation MSE."""
    import shutil

    folder = Path(shutil.copytree(small_ensemble, tmp_path / "ens"))
    manifest = json.loads((folder / "ensemble.json").read_text())
    assert manifest.pop("aleatoric") == "validation_mse"
    (folder / "ensemble.json").write_text(json.dumps(manifest))
    ensemble = load_ensemble(folder)
    assert ensemble.aleatoric == "validation_mse"
    arrays = ensemble.predict(perovskites, np.arange(60, 70))
    np.testing.assert_allclose(arrays["sigma_a"], np.sqrt(np.mean(ensemble.val_mse)))
    manifest["aleatoric"] = "heteroscedastic"  # a manifest its members contradict
    (folder / "ensemble.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="members were replaced"):
        load_ensemble(folder)


def test_cli_train_and_finetune_ensembles_with_gaussian_nll(data: Path, tmp_path) -> None:
    """`--ensemble 2 --loss gaussian_nll` end to end: predict writes σ_a per structure."""
    from tlmat.io import read_records, write_csv

    table = tmp_path / "perov48.csv"
    write_csv(read_records(data / "perov_5" / "val.csv.gz", ["heat_ref"], limit=48), table)
    runner = CliRunner()
    cache = ["--cache-dir", str(tmp_path / "cache")]
    common = [str(table), "-t", "heat_ref", "--unit", "eV/cell", "--ensemble", "2", "--epochs",
              "2", "--loss", "gaussian_nll", "--ensemble-workers", "1", *cache]  # fmt: skip
    commands = {
        "train": ["train", *common, "--model", "cgcnn-small"],
        "finetune": ["finetune", *common, "--strategy", "head-only"],
    }
    for name, args in commands.items():
        result = runner.invoke(app, [*args, "--run-dir", str(tmp_path / name)])
        assert result.exit_code == 0, result.output
        manifest = json.loads((tmp_path / name / "ensemble.json").read_text())
        assert manifest["aleatoric"] == "heteroscedastic", name
        out = tmp_path / f"{name}.csv"
        result = runner.invoke(app, ["predict", str(tmp_path / name), str(table), "-o",
                                     str(out), *cache])  # fmt: skip
        assert result.exit_code == 0, result.output
        frame = pd.read_csv(out)
        sigma_a, sigma_e, sigma = (frame[f"{k} (eV/cell)"] for k in ("sigma_a", "sigma_e", "sigma"))
        assert len(frame) == 48 and sigma_a.nunique() > 1, name
        np.testing.assert_allclose(sigma**2, sigma_a**2 + sigma_e**2, rtol=1e-5)
    run = json.loads((tmp_path / "finetune" / "member-0" / "run.json").read_text())
    assert run["strategy"]["name"] == "head-only" and run["strategy"]["reinit_head"] is True


def test_cli_ensemble_through_submitit_and_slurm_parameters(data: Path, tmp_path) -> None:
    """Members go through the cluster executor's path (submitit; 'debug' runs its jobs
    here): the ensemble is complete and its members' logs are in .submitit."""
    from tlmat.cli.options import slurm_parameters
    from tlmat.io import read_records, write_csv

    assert slurm_parameters(["partition=cpu", "timeout_min=120", "mem_gb=3.5"]) == {
        "partition": "cpu",
        "timeout_min": 120,
        "mem_gb": 3.5,
    }
    with pytest.raises(ValueError, match="KEY=VALUE"):
        slurm_parameters(["partition"])
    table = tmp_path / "perov40.csv"
    write_csv(read_records(data / "perov_5" / "val.csv.gz", ["heat_ref"], limit=40), table)
    args = ["train", str(table), "-t", "heat_ref", "--unit", "eV/cell", "--model",
            "cgcnn-small", "--ensemble", "2", "--epochs", "1", "--ensemble-executor", "debug",
            "--run-dir", str(tmp_path / "ens"), "--cache-dir", str(tmp_path / "cache")]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert len(load_ensemble(tmp_path / "ens").members) == 2
    assert (tmp_path / "ens" / ".submitit").is_dir()
    bad = CliRunner().invoke(app, [*args[:-4], "--ensemble-executor", "ray", "--run-dir",
                                   str(tmp_path / "ens2"), *args[-2:]])  # fmt: skip
    assert bad.exit_code == 1 and "'ray' is not one of 'local', 'slurm' or 'debug'" in bad.output
