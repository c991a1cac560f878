"""Fault cases of runs and files: a resume never changes settings silently, a diverged run
is never saved as a result, and nothing the user wrote is overwritten or deleted.

Every case trains a small CGCNN on real Castelli perovskites (perov_5) and asserts the
exact outcome."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from tlmat.cli import app
from tlmat.data import load_dataset, random_split
from tlmat.graphs import GraphSettings
from tlmat.models import CheckpointError, TargetSpec, TrainedModel, load_checkpoint
from tlmat.models.atom_features import load_atom_init
from tlmat.models.cgcnn import CGCNNConfig, build_cgcnn
from tlmat.models.checkpoint import save_checkpoint
from tlmat.training import (
    DivergedError,
    ResumeMismatchError,
    RunExistsError,
    TrainConfig,
    fit,
)
from tlmat.transfer.strategies import preset

runner = CliRunner()


def said(result) -> str:
    """A command's output with rich's line wrapping undone."""
    return " ".join(result.output.split())


def small_cgcnn(seed: int = 0) -> TrainedModel:
    torch.manual_seed(seed)
    config = CGCNNConfig(atom_fea_len=32, n_conv=2, h_fea_len=32)
    return TrainedModel(build_cgcnn(config, load_atom_init()), TargetSpec())


def quick(**overrides) -> TrainConfig:
    base = dict(
        target="heat_ref",
        unit="eV/cell",
        epochs=2,
        batch_size=16,
        progress_bar=False,
        early_stopping_patience=None,
        scheduler="none",
    )
    return TrainConfig(**{**base, **overrides})


def interrupted_run(perovskites, run_dir: Path, split, config: TrainConfig) -> None:
    """A run killed after its last epoch's checkpoint: model.pt and run.json not written."""
    fit(small_cgcnn(), perovskites, split, config, run_dir)
    for name in ("model.pt", "run.json"):
        (run_dir / name).unlink()


# --- resume -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"seed": 7}, "config.seed: 0 → 7"),
        ({"lr": 3e-3}, "config.lr: 0.001 → 0.003"),
        ({"batch_size": 8}, "config.batch_size: 16 → 8"),
        ({"split": (50, 20, 40)}, "data.sizes: [60, 20, 40] → [50, 20, 40]"),
        ({"data": "other targets"}, "data.fingerprint:"),
        ({"strategy": "head-only"}, "strategy.name: scratch → head-only"),
    ],
    ids=["seed", "lr", "batch-size", "split-sizes", "data", "strategy"],
)
def test_resume_with_changed_settings_is_refused(
    data, perovskites, tmp_path, change, expected
) -> None:
    split = random_split(len(perovskites), (60, 20, 40), seed=0)
    interrupted_run(perovskites, tmp_path / "run", split, quick())
    before = sorted(p.name for p in (tmp_path / "run").rglob("*"))
    config, dataset, strategy = quick(), perovskites, None
    if "split" in change:
        split = random_split(len(perovskites), change["split"], seed=0)
    elif "data" in change:
        dataset = load_dataset(
            data / "perov_5" / "test.csv.gz",
            GraphSettings.preset("cgcnn"),
            ["heat_ref"],
            cache_dir=tmp_path / "cache",
            limit=120,
        )
    elif "strategy" in change:
        strategy = preset("head-only")
    else:
        config = quick(**change)
    with pytest.raises(ResumeMismatchError, match="cannot resume") as refused:
        fit(small_cgcnn(), dataset, split, config, tmp_path / "run", strategy)
    assert expected in str(refused.value)
    # nothing was touched: the interrupted run can still be resumed as it was
    assert sorted(p.name for p in (tmp_path / "run").rglob("*")) == before


def test_resume_with_the_same_settings_records_them(perovskites, tmp_path) -> None:
    split = random_split(len(perovskites), (60, 20, 40), seed=0)
    interrupted_run(perovskites, tmp_path / "run", split, quick(epochs=2))
    # more epochs is not a change of what an epoch computes: allowed, and recorded
    fit(small_cgcnn(), perovskites, split, quick(epochs=3), tmp_path / "run")
    manifest = json.loads((tmp_path / "run" / "run.json").read_text())
    assert manifest["resumed"] is True and manifest["resumed_from_epoch"] == 2
    assert manifest["command_config"]["epochs"] == 3 and manifest["epochs"] == 3


def test_last_checkpoint_is_the_last_finished_epoch(perovskites, tmp_path) -> None:
    split = random_split(len(perovskites), (60, 20, 40), seed=0)
    # a learning rate so high that the best epoch is not the last one
    fit(small_cgcnn(), perovskites, split, quick(epochs=5, lr=0.05), tmp_path / "run")
    checkpoints = tmp_path / "run" / "checkpoints"
    last = torch.load(checkpoints / "last.ckpt", weights_only=True)
    best = torch.load(checkpoints / "best.ckpt", weights_only=True)
    assert last["epoch"] == 4, "a resume must continue after the last epoch, not the best"
    assert best["epoch"] < last["epoch"]


# --- run folders and the user's files ---------------------------------------------------


def test_run_dir_with_the_users_files_is_refused(perovskites, tmp_path) -> None:
    folder = tmp_path / "analysis"
    folder.mkdir()
    (folder / "notes.txt").write_text("my notes")
    split = random_split(len(perovskites), (40, 20, 20), seed=0)
    with pytest.raises(RunExistsError, match=r"1 file\(s\) tlmat did not write \(notes.txt\)"):
        fit(small_cgcnn(), perovskites, split, quick(epochs=1), folder)
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]


def test_overwrite_removes_only_what_tlmat_wrote(perovskites, tmp_path) -> None:
    run = tmp_path / "run"
    split = random_split(len(perovskites), (40, 20, 20), seed=0)
    fit(small_cgcnn(), perovskites, split, quick(epochs=1), run)
    (run / "my-plot.png").write_bytes(b"\x89PNG user's figure")
    (run / "checkpoints" / "keep.txt").write_text("inside a folder tlmat wrote")
    with pytest.raises(RunExistsError, match=r"my-plot\.png"):
        fit(small_cgcnn(), perovskites, split, quick(epochs=1), run)
    fit(small_cgcnn(), perovskites, split, quick(epochs=1), run, overwrite=True)
    assert (run / "my-plot.png").read_bytes() == b"\x89PNG user's figure"
    assert (run / "model.pt").exists()
    # tlmat's own folder went as a whole: it listed "checkpoints", which it created
    assert not (run / "checkpoints" / "keep.txt").exists()


def test_cli_refuses_a_foreign_run_dir_before_reading_data(data, tmp_path) -> None:
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "draft.tex").write_text("\\section{Results}")
    cache = tmp_path / "cache"
    result = runner.invoke(
        app,
        [
            "train",
            str(data / "perov_5" / "val.csv.gz"),
            "-t",
            "heat_ref",
            "--run-dir",
            str(folder),
            "--cache-dir",
            str(cache),
            "--epochs",
            "1",
        ],
    )
    assert result.exit_code == 1
    assert "draft.tex" in said(result) and "did not write" in said(result)
    assert not cache.exists(), "the refusal came after building graphs"


# --- output files ----------------------------------------------------------------------


def _output_commands(data: Path, model: Path, out: Path) -> dict[str, list[str]]:
    sample = str(data / "cgcnn_sample_regression")
    return {
        "predict -o": ["predict", str(model), sample, "-o", str(out)],
        "embed -o": ["embed", str(model), sample, "-o", str(out)],
        "evaluate -o": ["evaluate", str(model), sample, "-t", "target", "-o", str(out)],
        "info --skipped-csv": ["info", sample, "--skipped-csv", str(out)],
    }


def _cache(command: str, tmp_path: Path) -> list[str]:
    # info only reads: it has no graph cache (the work it does is reading)
    return [] if command.startswith("info") else ["--cache-dir", str(tmp_path / "cache")]


@pytest.mark.parametrize("command", ["predict -o", "embed -o", "evaluate -o", "info --skipped-csv"])
def test_output_is_never_replaced_without_overwrite(data, tmp_path, command) -> None:
    model = save_checkpoint(small_cgcnn(), tmp_path / "model.pt")
    out = tmp_path / "mine.csv"
    out.write_text("the user's own results\n")
    args = _output_commands(data, model, out)[command] + _cache(command, tmp_path)
    result = runner.invoke(app, args)
    assert result.exit_code == 1 and "exists; pass --overwrite" in said(result)
    assert out.read_text() == "the user's own results\n"
    assert not (tmp_path / "cache").exists(), "refused only after the work"
    replaced = runner.invoke(app, [*args, "--overwrite"])
    assert replaced.exit_code == 0, replaced.output
    assert out.read_text() != "the user's own results\n"


@pytest.mark.parametrize("command", ["predict -o", "embed -o", "evaluate -o", "info --skipped-csv"])
def test_unwritable_output_is_found_before_the_work(data, tmp_path, command) -> None:
    model = save_checkpoint(small_cgcnn(), tmp_path / "model.pt")
    (tmp_path / "a-file").write_text("not a folder")
    out = tmp_path / "a-file" / "out.csv"  # its parent is a file: nothing can be written
    args = _output_commands(data, model, out)[command] + _cache(command, tmp_path)
    result = runner.invoke(app, args)
    assert result.exit_code == 1 and f"cannot write {out}: {out.parent} is a file" in said(result)
    assert not (tmp_path / "cache").exists()


def test_report_folder_is_never_replaced_without_overwrite(data, tmp_path) -> None:
    out = tmp_path / "paper-figures"
    out.mkdir()
    (out / "figure1.png").write_bytes(b"the user's figure")
    result = runner.invoke(app, ["report", str(tmp_path / "results"), "--out", str(out)])
    assert result.exit_code == 1 and "is not empty; pass --overwrite" in said(result)
    assert (out / "figure1.png").read_bytes() == b"the user's figure"


# --- benchmark results folders ---------------------------------------------------------


def test_benchmark_refuses_a_results_folder_made_with_other_settings(data, tmp_path) -> None:
    from tlmat.experiments.benchmark import BenchmarkConfig, jobs, run_benchmark
    from tlmat.io import read_records, write_csv

    table = tmp_path / "perov60.csv"
    write_csv(read_records(data / "perov_5" / "val.csv.gz", ["heat_ref"], limit=60), table)
    raw = {
        "name": "tiny",
        "data": str(table),
        "target": "heat_ref",
        "sizes": [20],
        "seeds": [0],
        "val_size": 10,
        "test_size": 20,
        "methods": ["scratch", "base"],
        "training": {"epochs": 1, "batch_size": 16, "early_stopping_patience": None},
        "executor": {"kind": "debug"},
    }
    results, cache = tmp_path / "results", tmp_path / "cache"
    run_benchmark(BenchmarkConfig(**raw), results, cache)
    finished = {
        j.folder(results): (j.folder(results) / "result.json").read_bytes()
        for j in jobs(BenchmarkConfig(**raw))
    }
    changed = {**raw, "training": {**raw["training"], "lr": 0.01}}
    with pytest.raises(ValueError, match="2 finished job") as refused:
        run_benchmark(BenchmarkConfig(**changed), results, cache)
    assert "training.lr: 0.001 → 0.01" in str(refused.value)
    assert all((f / "result.json").read_bytes() == b for f, b in finished.items())
    # more seeds is more jobs of the same grid: the finished ones are reused
    run_benchmark(BenchmarkConfig(**{**raw, "seeds": [0, 1]}), results, cache)
    assert all((f / "result.json").read_bytes() == b for f, b in finished.items())


# --- divergence -------------------------------------------------------------------------


def test_diverged_run_exits_with_a_message_and_saves_no_model(perovskites, tmp_path) -> None:
    run = tmp_path / "run"
    split = random_split(len(perovskites), (60, 20, 40), seed=0)
    # plain SGD at lr 700: batch-norm statistics overflow after the first epoch
    config = quick(epochs=6, optimizer="sgd", lr=700.0)
    with pytest.raises(DivergedError, match=r"training diverged — epoch \d+: .* is not finite"):
        fit(small_cgcnn(), perovskites, split, config, run)
    assert not (run / "model.pt").exists() and not (run / "run.json").exists()
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert all(t.isfinite().all() for t in last["state_dict"].values() if t.is_floating_point())


def test_predict_with_a_non_finite_model_exits_non_zero(data, tmp_path) -> None:
    trained = small_cgcnn()
    with torch.no_grad():
        trained.model.head.out.weight.fill_(float("nan"))
    save_checkpoint(trained, tmp_path / "nan.pt")
    result = runner.invoke(
        app,
        [
            "predict",
            str(tmp_path / "nan.pt"),
            str(data / "cgcnn_sample_regression"),
            "-o",
            str(tmp_path / "pred.csv"),
            "--cache-dir",
            str(tmp_path / "cache"),
        ],
    )
    assert result.exit_code == 1
    assert "not finite for 10 of 10 structures" in said(result)
    assert not (tmp_path / "pred.csv").exists()


# --- checkpoint messages ----------------------------------------------------------------


def test_refused_checkpoint_names_the_class(tmp_path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {}, "hook": Path("/tmp")}, path)  # a pickled PosixPath
    with pytest.raises(CheckpointError, match=r"needs the class pathlib\.PosixPath"):
        load_checkpoint(path)


def test_checkpoint_missing_a_field_names_it(tmp_path) -> None:
    save_checkpoint(small_cgcnn(), tmp_path / "model.pt")
    payload = torch.load(tmp_path / "model.pt", weights_only=True)
    del payload["target"]
    torch.save(payload, tmp_path / "broken.pt")
    with pytest.raises(CheckpointError, match="lacks the field 'target'"):
        load_checkpoint(tmp_path / "broken.pt")


# --- signals ----------------------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_stops_the_run_with_a_resume_hint_and_exit_status(data, tmp_path, signum) -> None:
    """A cluster's time limit (SIGTERM) or Ctrl-C (SIGINT) ends `tlmat train` with 128 +
    the signal's number and says how to resume; the same command then resumes."""
    from tlmat.io import read_records, write_csv

    table = tmp_path / "perov60.csv"
    write_csv(read_records(data / "perov_5" / "val.csv.gz", ["heat_ref"], limit=60), table)
    run = tmp_path / "run"
    command = [sys.executable, "-m", "tlmat", "train", str(table), "-t", "heat_ref",
               "--model", "cgcnn-small", "--batch-size", "16", "--early-stopping-patience", "0",
               "--run-dir", str(run), "--cache-dir", str(tmp_path / "cache")]  # fmt: skip
    process = subprocess.Popen([*command, "--epochs", "300"], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)  # fmt: skip
    deadline = time.monotonic() + 120
    while not (run / "checkpoints" / "last.ckpt").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(0.5)
    process.send_signal(signum)
    output, _ = process.communicate(timeout=60)
    said = " ".join(output.split())
    assert process.returncode == 128 + signum, output
    assert f"stopped by {signal.Signals(signum).name}" in said
    assert "run the same command again to resume" in said
    assert not (run / "model.pt").exists()
    finished = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] + 1
    resumed = subprocess.run([*command, "--epochs", str(finished + 1)], capture_output=True,
                             text=True)  # fmt: skip
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    manifest = json.loads((run / "run.json").read_text())
    assert manifest["resumed"] is True and manifest["resumed_from_epoch"] == finished


# --- ensembles: resume member by member, recalibration only of tlmat's own manifest -----


def _member_split(seed: int):
    return random_split(60, (30, 15, 15), seed=seed)


def _small_member(seed: int):
    return small_cgcnn(seed), None


@pytest.fixture(scope="module")
def tiny_ensemble(perovskites, tmp_path_factory) -> Path:
    from tlmat.uncertainty import train_ensemble

    folder = tmp_path_factory.mktemp("faults-ensemble") / "ens"
    train_ensemble(_small_member, perovskites, _member_split, quick(), folder, n_members=2)
    return folder


def _copy(folder: Path, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(folder, tmp_path / "ens"))


def test_an_interrupted_ensemble_resumes_member_by_member(perovskites, tmp_path) -> None:
    """Member 0 finished, member 1 was killed after its last epoch's checkpoint: the same
    call reuses the first untouched and resumes the second from that checkpoint."""
    from tlmat.uncertainty import train_ensemble

    folder = tmp_path / "ens"  # trained here: a checkpoint remembers its folder
    train_ensemble(_small_member, perovskites, _member_split, quick(), folder, n_members=2)
    for name in ("model.pt", "run.json"):
        (folder / "member-1" / name).unlink()
    (folder / "ensemble.json").unlink()
    stamp = (folder / "member-0" / "model.pt").stat().st_mtime_ns
    again = train_ensemble(_small_member, perovskites, _member_split, quick(), folder, n_members=2)
    assert (folder / "member-0" / "model.pt").stat().st_mtime_ns == stamp, "reused, not retrained"
    assert json.loads((folder / "member-1" / "run.json").read_text())["resumed"] is True
    manifest = json.loads((folder / "ensemble.json").read_text())
    assert manifest["members"] == ["member-0", "member-1"] and len(again.members) == 2
    with pytest.raises(RunExistsError, match="made with other settings"):  # never mixed
        train_ensemble(_small_member, perovskites, _member_split, quick(lr=3e-3), folder,
                       n_members=2)  # fmt: skip


def _evaluate(folder: Path, table: Path, tmp_path: Path, *extra: str):
    return runner.invoke(app, ["evaluate", str(folder), str(table), "-t", "heat_ref",
                               "--cache-dir", str(tmp_path / "cache"), *extra])  # fmt: skip


def _labelled(data: Path, tmp_path: Path, column: str = "heat_ref") -> Path:
    import pandas as pd

    from tlmat.io import read_records, write_csv

    table = tmp_path / "held-out.csv"
    write_csv(read_records(data / "perov_5" / "test.csv.gz", ["heat_ref"], limit=20), table)
    pd.read_csv(table).rename(columns={"heat_ref": column}).to_csv(table, index=False)
    return table


def test_recalibrate_refuses_a_manifest_tlmat_did_not_write(data, tiny_ensemble, tmp_path) -> None:
    folder = _copy(tiny_ensemble, tmp_path)
    ledger = folder / ".tlmat-files.json"
    files = [f for f in json.loads(ledger.read_text())["files"] if f != "ensemble.json"]
    ledger.write_text(json.dumps({"files": files}))  # as if the user had written it
    before = (folder / "ensemble.json").read_bytes()
    result = _evaluate(folder, _labelled(data, tmp_path), tmp_path, "--recalibrate")
    assert result.exit_code == 1
    assert "ensemble.json was not written by tlmat" in said(result)
    assert (folder / "ensemble.json").read_bytes() == before
    assert not (tmp_path / "cache").exists(), "refused only after reading the data"


def test_recalibrate_on_data_without_the_target_changes_nothing(
    data, tiny_ensemble, tmp_path
) -> None:
    folder = _copy(tiny_ensemble, tmp_path)
    before = (folder / "ensemble.json").read_bytes()
    result = _evaluate(folder, _labelled(data, tmp_path, "other"), tmp_path, "--recalibrate")
    assert result.exit_code == 1 and "heat_ref" in said(result), result.output
    assert (folder / "ensemble.json").read_bytes() == before


def test_recalibrate_and_figures_need_an_ensemble(data, tmp_path) -> None:
    model = save_checkpoint(small_cgcnn(), tmp_path / "model.pt")
    table = _labelled(data, tmp_path)
    for extra in (["--recalibrate"], ["--figures", str(tmp_path / "figs")]):
        result = _evaluate(model, table, tmp_path, *extra)
        assert result.exit_code == 1 and "need an ensemble folder" in said(result)
    assert not (tmp_path / "figs").exists()


def test_the_users_figures_folder_in_an_ensemble_is_never_written(
    data, tiny_ensemble, tmp_path
) -> None:
    folder = _copy(tiny_ensemble, tmp_path)
    (folder / "figures").mkdir()
    (folder / "figures" / "calibration-held-out.png").write_text("the user's own figure")
    table = _labelled(data, tmp_path)
    result = _evaluate(folder, table, tmp_path)
    assert result.exit_code == 1 and "figures was not written by tlmat" in said(result)
    assert "pass --figures DIR" in said(result)
    assert (folder / "figures" / "calibration-held-out.png").read_text() == "the user's own figure"
    elsewhere = _evaluate(folder, table, tmp_path, "--figures", str(tmp_path / "figs"))
    assert elsewhere.exit_code == 0, elsewhere.output
    assert (tmp_path / "figs" / "calibration-held-out.png").read_bytes()[:4] == b"\x89PNG"


# --- loss gaussian_nll: refused where no variance can be predicted -----------------------


def test_gaussian_nll_is_refused_where_it_cannot_give_a_variance(perovskites, tmp_path) -> None:
    """A classifier, the tanh normalisation, a head of the wrong width (also one kept with
    keep_head) and the methods without a network head are each refused before training,
    with the reason."""
    from tlmat.experiments.runs import run_strategy
    from tlmat.models.prediction import predict_variance
    from tlmat.transfer.sources import prepare_transfer

    with pytest.raises(ValueError, match="needs a regression target, not a classification"):
        TargetSpec(name="metal", task="classification", heteroscedastic=True)
    with pytest.raises(ValueError, match="needs normalization 'standard' or 'none'"):
        quick(loss="gaussian_nll", normalization="tanh")
    classifier = TrainedModel(small_cgcnn().model, TargetSpec(name="metal", task="classification"))
    classifier.model.replace_head(2)
    with pytest.raises(ValueError, match="keep_head keeps the head of a classification source"):
        prepare_transfer("full", classifier, "heat_ref", keep_head=True, out_dim=2)
    with pytest.raises(ValueError, match=r"which has 1 output\(s\), but the target needs 2"):
        prepare_transfer("full", small_cgcnn(), "heat_ref", keep_head=True, out_dim=2)
    split = random_split(len(perovskites), (40, 20, 20), seed=0)
    run = tmp_path / "run"
    with pytest.raises(ValueError, match=r"head has 1 output\(s\); loss gaussian_nll on"):
        fit(small_cgcnn(), perovskites, split, quick(loss="gaussian_nll"), run)
    assert not (run / "model.pt").exists() and not (run / "checkpoints").exists()
    with pytest.raises(ValueError, match="'features\\+rf' fits no network head"):
        run_strategy("features+rf", small_cgcnn(), perovskites, split,
                     quick(loss="gaussian_nll"), tmp_path / "rf")  # fmt: skip
    with pytest.raises(ValueError, match="predicts no variance"):
        predict_variance(small_cgcnn(), perovskites, split.test)


def test_cli_gaussian_nll_with_tanh_or_a_kept_head_exits_with_the_reason(data, tmp_path) -> None:
    from tlmat.io import read_records, write_csv

    table = tmp_path / "perov40.csv"
    write_csv(read_records(data / "perov_5" / "val.csv.gz", ["heat_ref"], limit=40), table)
    cache = ["--cache-dir", str(tmp_path / "cache")]
    base = [str(table), "-t", "heat_ref", "--loss", "gaussian_nll", "--epochs", "1", *cache]
    tanh = runner.invoke(app, ["train", *base, "--normalization", "tanh",
                               "--run-dir", str(tmp_path / "tanh")])  # fmt: skip
    assert tanh.exit_code == 1 and "needs normalization 'standard' or 'none'" in said(tanh)
    assert not (tmp_path / "tanh").exists() and not (tmp_path / "cache").exists(), "before data"
    unknown = runner.invoke(app, ["train", *base[:3], "--loss", "nll", *cache])
    assert unknown.exit_code == 2 and "gaussian_nll" in said(unknown)  # a usage error
    kept = runner.invoke(app, ["finetune", *base, "--keep-head", "--ensemble", "2",
                               "--run-dir", str(tmp_path / "kept")])  # fmt: skip
    assert kept.exit_code == 1, kept.output
    assert "keep_head keeps the source's head, which has 1 output(s)" in said(kept)
    assert not list((tmp_path / "kept").rglob("model.pt"))


def test_report_of_a_scratch_curve_that_does_not_fall_says_why_instead_of_failing(
    tmp_path,
) -> None:
    """A two-epoch grid (``--quick``) can leave scratch worse at the larger size: the report
    is still written, without equivalent sizes, and says why (it used to abort)."""
    from tlmat.evaluation.report import summary_tables, write_report

    rows = []
    for size, mae in ((100, 0.40), (500, 0.45)):
        for method, factor in (("scratch", 1.0), ("full", 0.5)):
            folder = tmp_path / f"n{size}-s0" / method
            folder.mkdir(parents=True)
            (folder / "result.json").write_text(
                json.dumps({"strategy": method, "test": {"mae": mae * factor, "n": 40}})
            )
            rows.append((method, size, mae * factor))
    import pandas as pd

    runs = pd.DataFrame(rows, columns=["method", "size", "mae"]).assign(seed=0)
    tables = summary_tables(runs)
    assert not any(name.startswith("equivalent") for name in tables)
    assert tables["_fit"].iloc[0].slope > 0
    report = write_report(tmp_path, tmp_path / "report", unit="eV/cell")
    text = report.read_text()
    assert "No equivalent scratch training-set sizes" in text and "slope +0.073" in text


def test_settings_added_later_differ_only_when_they_change_what_a_run_does() -> None:
    """A run or grid job recorded before ``num_nodes`` / ``ddp_strategy`` / ``max_size``
    existed did what their neutral values do: reused, not refused; any other value is a
    change."""
    from tlmat.training.rundir import differences

    before = {"config": {"epochs": 5, "devices": 1}, "method": {"name": "full"}}
    now = {
        "config": {"epochs": 5, "devices": 1, "num_nodes": 1, "ddp_strategy": "auto"},
        "method": {"name": "full", "max_size": None},
    }
    assert differences(before, now) == []
    now["config"]["num_nodes"] = 2
    assert differences(before, now) == ["config.num_nodes: <unset> → 2"]


def test_a_refusal_names_what_the_user_chose_before_the_models_internals() -> None:
    """Two finetune runs meeting in one folder (issue 28: the README's two examples did)
    differ first by the source and strategy; the settings of the source's model follow
    from the source and are one count, not a line each."""
    from tlmat.training.rundir import differences

    before = {
        "config": {"epochs": 60, "target": "heat_ref"},
        "strategy": {"name": "freeze-embedding"},
        "model": {"atom_fea_len": 64, "n_conv": 4},
        "source": {"name": "cgcnn/formation-energy-per-atom", "angle_fea_dim": None},
    }
    now = {
        "config": {"epochs": 60, "target": "heat_ref"},
        "strategy": {"name": "full"},
        "model": {"atom_fea_len": 64, "n_conv": 4, "angle_fea_dim": 64},
        "source": {"name": "chgnet/0.3.0", "angle_fea_dim": 64},
    }
    said = differences(before, now)
    assert said[:2] == [
        "source.name: cgcnn/formation-energy-per-atom → chgnet/0.3.0",
        "strategy.name: freeze-embedding → full",
    ]
    assert said[2:] == ["and 2 setting(s) of the source's model, which follow from it"]


def test_default_run_folders_are_named_after_the_run(tmp_path: Path) -> None:
    """Different runs started with the defaults never meet in one folder; the same
    command finds its own again; a --config file's run_dir is kept."""
    from tlmat.cli.common import run_folder

    a = run_folder(None, "finetune", "heat_ref", "freeze-embedding", "cgcnn/band-gap", None)
    b = run_folder(None, "finetune", "heat_ref", "scratch", "cgcnn/band-gap", "schnet-arch2")
    assert a == Path("runs/finetune-heat_ref-freeze-embedding-cgcnn_band-gap") and a != b
    assert run_folder(None, "fit", "heat_ref") == Path("runs/fit-heat_ref")
    config = tmp_path / "run.yaml"
    config.write_text("run_dir: runs/mine\nepochs: 3\n")
    assert run_folder(config, "train", "heat_ref", "cgcnn-mp") == Path("runs/mine")
