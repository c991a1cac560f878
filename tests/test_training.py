"""Training on real structures: it learns, it resumes exactly, it records what it did."""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from tlmat.data import random_split
from tlmat.models import TargetSpec, TrainedModel, load_checkpoint
from tlmat.models.atom_features import load_atom_init
from tlmat.models.cgcnn import CGCNNConfig, build_cgcnn
from tlmat.training import RunExistsError, RunInterrupted, TrainConfig, fit, predict


def small_cgcnn(seed: int = 0) -> TrainedModel:
    torch.manual_seed(seed)
    config = CGCNNConfig(atom_fea_len=32, n_conv=2, h_fea_len=32)
    return TrainedModel(build_cgcnn(config, load_atom_init()), TargetSpec())


def quick(**overrides) -> TrainConfig:
    base = dict(
        target="heat_ref",
        unit="eV/cell",
        epochs=4,
        batch_size=16,
        progress_bar=False,
        early_stopping_patience=None,
        scheduler="none",
    )
    return TrainConfig(**{**base, **overrides})


def test_overfits_fifty_real_structures(perovskites, tmp_path: Path) -> None:
    split = random_split(len(perovskites), (50, 0, 0), seed=0)
    split.val = split.train  # judge on the training structures themselves
    fit(
        small_cgcnn(),
        perovskites,
        split,
        quick(epochs=100, lr=1e-2, batch_size=50),
        tmp_path / "run",
    )
    losses = pd.read_csv(tmp_path / "run" / "metrics.csv")["train_loss"].dropna().to_numpy()
    assert losses[0] / losses[-5:].min() > 10, losses[[0, -1]]


def test_run_folder_records_everything(perovskites, tmp_path: Path) -> None:
    split = random_split(len(perovskites), (60, 20, 40), seed=1)
    result = fit(small_cgcnn(), perovskites, split, quick(seed=1), tmp_path / "run")
    run = tmp_path / "run"
    manifest = json.loads((run / "run.json").read_text())
    assert manifest["seed"] == 1 and manifest["command_config"]["target"] == "heat_ref"
    assert manifest["versions"]["torch"] == torch.__version__
    assert manifest["data"] == {
        "source": perovskites.source,
        "n_train": 60,
        "n_val": 20,
        "n_test": 40,
    }
    saved = json.loads((run / "split.json").read_text())
    assert saved["test"] == [perovskites.ids[i] for i in split.test]
    assert (run / "checkpoints" / "last.ckpt").exists() and (run / "model.pt").exists()
    # the checkpoint alone reproduces the predictions
    loaded = load_checkpoint(run / "model.pt")
    np.testing.assert_allclose(
        predict(loaded, perovskites, split.test),
        predict(result.trained, perovskites, split.test),
        rtol=1e-6,
    )
    assert loaded.target.name == "heat_ref" and loaded.target.unit == "eV/cell"
    assert loaded.target.mean == pytest.approx(perovskites.targets["heat_ref"][split.train].mean())


def test_same_seed_same_numbers(perovskites, tmp_path: Path) -> None:
    split = random_split(len(perovskites), (60, 20, 40), seed=2)
    a = fit(small_cgcnn(), perovskites, split, quick(seed=3), tmp_path / "a")
    b = fit(small_cgcnn(), perovskites, split, quick(seed=3), tmp_path / "b")
    assert a.best_val_mae == b.best_val_mae


def _interrupt_at_epoch(monkeypatch, epoch: int, signum: int = signal.SIGINT) -> None:
    """Send this process ``signum`` as training epoch ``epoch`` starts: a real stop
    of an unfinished run (as Ctrl-C or a cluster's SIGTERM), caught by fit."""
    from tlmat.training.module import PropertyModule

    original = PropertyModule.on_train_epoch_start

    def start(self) -> None:
        if self.current_epoch == epoch:
            os.kill(os.getpid(), signum)
        original(self)

    monkeypatch.setattr(PropertyModule, "on_train_epoch_start", start)


def test_resume_equals_uninterrupted(perovskites, tmp_path: Path, monkeypatch) -> None:
    split = random_split(len(perovskites), (60, 20, 40), seed=4)
    # early stopping on (as by default) and a plateau schedule: both carry state
    config = quick(epochs=8, scheduler="plateau", plateau_patience=1, early_stopping_patience=3)
    whole = fit(small_cgcnn(), perovskites, split, config, tmp_path / "whole")

    with monkeypatch.context() as patch:
        _interrupt_at_epoch(patch, 3)
        with pytest.raises(RunInterrupted, match="resume"):
            fit(small_cgcnn(), perovskites, split, config, tmp_path / "cut")
    assert not (tmp_path / "cut" / "model.pt").exists()
    # the finished epochs' log survives the interruption and the resume
    assert sorted(pd.read_csv(tmp_path / "cut" / "metrics.csv")["epoch"].unique()) == [0, 1, 2]
    resumed = fit(small_cgcnn(seed=99), perovskites, split, config, tmp_path / "cut")
    assert json.loads((tmp_path / "cut" / "run.json").read_text())["resumed"] is True
    assert resumed.epochs == whole.epochs and resumed.best_val_mae == whole.best_val_mae
    logged = pd.read_csv(tmp_path / "cut" / "metrics.csv")
    pd.testing.assert_frame_equal(logged, pd.read_csv(tmp_path / "whole" / "metrics.csv"))
    for key, value in whole.trained.model.state_dict().items():
        torch.testing.assert_close(
            resumed.trained.model.state_dict()[key], value, rtol=0, atol=0, msg=key
        )


def test_a_finished_run_trains_on_when_given_more_epochs(perovskites, tmp_path: Path) -> None:
    split = random_split(len(perovskites), (60, 20, 40), seed=4)
    config = quick(epochs=6, scheduler="plateau", plateau_patience=1)
    whole = fit(small_cgcnn(), perovskites, split, config, tmp_path / "whole")
    short = config.model_copy(update={"epochs": 3})
    fit(small_cgcnn(), perovskites, split, short, tmp_path / "cut")
    for name in ("model.pt", "run.json"):
        (tmp_path / "cut" / name).unlink()
    resumed = fit(small_cgcnn(seed=99), perovskites, split, config, tmp_path / "cut")
    assert resumed.epochs == whole.epochs == 6
    logged = pd.read_csv(tmp_path / "cut" / "metrics.csv")["epoch"].dropna().unique()
    assert sorted(logged) == list(range(6))
    for key, value in whole.trained.model.state_dict().items():
        torch.testing.assert_close(
            resumed.trained.model.state_dict()[key], value, rtol=0, atol=0, msg=key
        )


def test_finished_run_is_not_overwritten(perovskites, tmp_path: Path) -> None:
    split = random_split(len(perovskites), (40, 20, 20), seed=0)
    fit(small_cgcnn(), perovskites, split, quick(epochs=1), tmp_path / "run")
    before = (tmp_path / "run" / "model.pt").read_bytes()
    with pytest.raises(RunExistsError, match="finished run"):
        fit(small_cgcnn(), perovskites, split, quick(epochs=1), tmp_path / "run")
    assert (tmp_path / "run" / "model.pt").read_bytes() == before
    fit(small_cgcnn(), perovskites, split, quick(epochs=1), tmp_path / "run", overwrite=True)


@pytest.mark.parametrize("normalization", ["standard", "tanh", "none"])
@pytest.mark.parametrize("log10", [False, True])
def test_target_normalisation_round_trips(normalization: str, log10: bool) -> None:
    k_vrh = np.array([4.0, 60.0, 117.0, 250.0, 401.0])  # GPa, the range of mp_elasticity_3k
    spec = TargetSpec(name="K_VRH", log10=log10, normalization=normalization).fit(k_vrh)
    y = torch.tensor(k_vrh, dtype=torch.float64)
    torch.testing.assert_close(spec.decode(spec.encode(y)), y, rtol=1e-6, atol=1e-6)
    if normalization == "tanh":  # Lee & Asahi eq. 6 maps into (0, 1) around 1/2
        assert bool(((spec.encode(y) > 0) & (spec.encode(y) < 1)).all())


def test_cyclic_schedule_and_sgd_run(perovskites, tmp_path: Path) -> None:
    split = random_split(len(perovskites), (40, 20, 20), seed=0)
    result = fit(
        small_cgcnn(),
        perovskites,
        split,
        quick(
            epochs=2,
            optimizer="sgd",
            scheduler="cyclic",
            cyclic_period=2,
            loss="mse",
            weight_decay=1e-3,
        ),
        tmp_path / "run",
    )
    assert np.isfinite(result.best_val_mae)


def test_onecycle_schedule_warms_up_then_decays_over_the_epochs(perovskites, tmp_path) -> None:
    """The one-cycle schedule peaks at lr after warmup_fraction of the steps and ends
    near zero at the last step of the last epoch; a short run with it trains."""
    from tlmat.training.module import PropertyModule

    config = quick(epochs=10, scheduler="onecycle", lr=3e-3, warmup_fraction=0.2)
    model = small_cgcnn().model
    groups = [{"params": list(model.parameters()), "lr": config.lr}]
    module = PropertyModule(model, TargetSpec(), config, groups, steps_per_epoch=5)
    scheduler = module.configure_optimizers()["lr_scheduler"]["scheduler"]
    rates = []
    for _ in range(50):
        rates.append(scheduler.get_last_lr()[0])
        scheduler.optimizer.step()
        scheduler.step()
    # peak at the last warm-up step: 20 % of 10 epochs × 5 steps, counted from 0
    assert int(np.argmax(rates)) == 9
    assert rates[9] == pytest.approx(3e-3)
    assert rates[0] == pytest.approx(3e-3 / 25) and rates[-1] < 1e-5
    split = random_split(len(perovskites), (40, 20, 20), seed=0)
    result = fit(small_cgcnn(), perovskites, split, quick(epochs=2, scheduler="onecycle"), tmp_path)
    assert np.isfinite(result.best_val_mae)


def test_step_schedule_decays_after_each_milestone_epoch(perovskites, tmp_path) -> None:
    """CGCNN's MultiStepLR (Lee & Asahi: ×0.1 after epoch 100), counted in epochs however
    many steps an epoch has, and kept by a real run's checkpoint."""
    from tlmat.training.module import PropertyModule

    config = quick(scheduler="step", lr=0.01, step_milestones=(2, 4), step_factor=0.1)
    model = small_cgcnn().model
    groups = [{"params": list(model.parameters()), "lr": config.lr}]
    module = PropertyModule(model, TargetSpec(), config, groups, steps_per_epoch=3)
    scheduler = module.configure_optimizers()["lr_scheduler"]["scheduler"]
    rates = []
    for _ in range(18):  # 6 epochs of 3 steps
        rates.append(scheduler.get_last_lr()[0])
        scheduler.optimizer.step()
        scheduler.step()
    assert rates == pytest.approx([0.01] * 6 + [0.001] * 6 + [0.0001] * 6)
    split = random_split(len(perovskites), (40, 20, 20), seed=0)
    settings = quick(epochs=2, optimizer="sgd", scheduler="step", step_milestones=(1,), lr=0.01)
    result = fit(small_cgcnn(), perovskites, split, settings, tmp_path / "run")
    assert np.isfinite(result.best_val_mae)
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["optimizer_states"][0]["param_groups"][0]["lr"] == pytest.approx(0.001)


def test_yaml_config_equals_flags(tmp_path: Path) -> None:
    path = tmp_path / "train.yaml"
    path.write_text("target: heat_ref\nlr: 0.0001\nweight_decay: 0.001\nscheduler: plateau\n")
    config = TrainConfig.from_yaml(path, epochs=7)
    assert config == TrainConfig(target="heat_ref", lr=1e-4, weight_decay=1e-3, epochs=7)
    path.write_text("target: heat_ref\nlearning_rate: 0.1\n")
    with pytest.raises(ValueError, match="learning_rate"):
        TrainConfig.from_yaml(path)


def test_copying_a_run_folder_keeps_it_loadable(perovskites, tmp_path: Path) -> None:
    split = random_split(len(perovskites), (40, 20, 20), seed=0)
    fit(small_cgcnn(), perovskites, split, quick(epochs=1), tmp_path / "run")
    shutil.copytree(tmp_path / "run", tmp_path / "moved")
    assert load_checkpoint(tmp_path / "moved" / "model.pt").model.config.n_conv == 2


def test_a_long_run_says_how_long_after_its_first_epoch(perovskites, tmp_path, monkeypatch, caplog):
    import importlib
    import logging

    fit_module = importlib.import_module("tlmat.training.fit")  # the module, not fit()
    monkeypatch.setattr(fit_module, "LONG_RUN_S", 0.0)  # every run is "long"
    split = random_split(len(perovskites), (40, 20, 20), seed=0)
    with caplog.at_level(logging.WARNING, logger="tlmat"):
        fit(small_cgcnn(), perovskites, split, quick(epochs=3), tmp_path / "run")
    said = [r.getMessage() for r in caplog.records if "more epochs may take" in r.getMessage()]
    assert len(said) == 1 and "up to 2 more epochs" in said[0] and "--epochs caps it" in said[0]


@pytest.mark.integration
def test_ddp_on_two_cpu_processes_matches_one_process_and_resumes(data, tmp_path) -> None:
    """Data-parallel training through Lightning's DDP on 2 CPU processes (gloo), launched
    as on a cluster: Lightning relaunches the command for the second process. Each
    process takes half of every batch, so 2 × 16 sees the batches of 1 × 32; the
    tolerance (5 % of the validation MAE) covers batch-norm statistics, which each process
    computes on its half. An interrupted DDP run resumes to exactly the uninterrupted
    one's numbers."""
    import os
    import subprocess
    import sys

    from tlmat.io import read_records, write_csv

    table = tmp_path / "perov300.csv"
    write_csv(read_records(data / "perov_5" / "val.csv.gz", ["heat_ref"], limit=300), table)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def train(run: str, epochs: int, processes: int) -> dict:
        command = [sys.executable, "-m", "tlmat", "train", str(table), "-t", "heat_ref",
                   "--unit", "eV/cell", "--accelerator", "cpu", "--epochs", str(epochs),
                   "--early-stopping-patience", "0", "--cache-dir", str(tmp_path / "cache"),
                   "--run-dir", str(tmp_path / run)]  # fmt: skip
        command += ["--batch-size", str(32 // processes)]
        if processes > 1:
            command += ["--devices", str(processes), "--ddp-strategy", "ddp"]
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        return json.loads((tmp_path / run / "run.json").read_text())

    one, two = train("one", 3, 1), train("two", 3, 2)
    assert (one["processes"], two["processes"]) == (1, 2)
    assert two["epochs"] == 3
    assert two["best_val_mae"] == pytest.approx(one["best_val_mae"], rel=0.05)

    train("resumed", 1, 2)
    # as if killed after epoch 1: none of the files a run writes at its end
    for name in ("model.pt", "run.json", "result.json", "predictions.csv", "test_metrics.json"):
        (tmp_path / "resumed" / name).unlink()
    resumed = train("resumed", 3, 2)
    assert (resumed["resumed"], resumed["resumed_from_epoch"]) == (True, 1)
    assert resumed["best_val_mae"] == pytest.approx(two["best_val_mae"], rel=1e-6)
    assert len(pd.read_csv(tmp_path / "resumed" / "metrics.csv").dropna(subset=["val_mae"])) == 3


def test_gradient_clipping_bounds_every_step(perovskites, tmp_path: Path) -> None:
    """A training option added in two files (TrainConfig, the trainer): with plain SGD,
    each step moves the weights by at most lr × the clipped gradient norm."""
    split = random_split(len(perovskites), (48, 20, 20), seed=0)
    config = quick(epochs=1, optimizer="sgd", momentum=0.0, lr=0.1, gradient_clip_val=1e-3)
    start = small_cgcnn()
    before = torch.cat([p.detach().flatten().clone() for p in start.model.parameters()])
    fitted = fit(start, perovskites, split, config, tmp_path / "clipped").trained.model
    after = torch.cat([p.detach().flatten() for p in fitted.parameters()])
    steps = 48 // 16
    moved = float((after - before).norm())
    assert 0 < moved <= steps * 0.1 * 1e-3 * 1.001
    # an older run's record without the setting did what its default does
    from tlmat.training.rundir import differences

    old = {"config": {"epochs": 1}}
    assert differences(old, {"config": {"epochs": 1, "gradient_clip_val": None}}) == []
    assert differences(old, {"config": {"epochs": 1, "gradient_clip_val": 0.5}}) != []
