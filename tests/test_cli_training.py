"""train / finetune / compare / predict / embed / evaluate / models from the command line,
end to end on small real subsets."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from tlmat.cli import app

runner = CliRunner()
QUICK = ["--epochs", "2", "--batch-size", "16"]


def run(args: list[str]):
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def small_perov(data: Path, tmp_path_factory) -> Path:
    """60 real Castelli perovskites as a CSV with a CIF column."""
    from tlmat.io import read_records, write_csv

    path = tmp_path_factory.mktemp("data") / "perov60.csv"
    write_csv(read_records(data / "perov_5" / "val.csv.gz", ["heat_ref"], limit=60), path)
    return path


@pytest.mark.parametrize(
    "command", ["train", "finetune", "compare", "predict", "embed", "evaluate", "models"]
)
def test_help_has_a_real_example(command: str) -> None:
    output = run([command, "--help"])
    assert "Example" in output


def test_train_then_evaluate_predict_embed(small_perov: Path, tmp_path: Path) -> None:
    cache = ["--cache-dir", str(tmp_path / "cache")]
    (tmp_path / "model.yaml").write_text("n_conv: 2\n")
    out = run(
        [
            "train",
            str(small_perov),
            "-t",
            "heat_ref",
            "--unit",
            "eV/cell",
            "--run-dir",
            str(tmp_path / "run"),
            "--model-config",
            str(tmp_path / "model.yaml"),
            *QUICK,
            *cache,
        ]
    )
    assert "scratch" in out and "s/epoch" in out
    model = tmp_path / "run" / "model.pt"
    assert json.loads((tmp_path / "run" / "test_metrics.json").read_text())["n"] == 6

    out = run(
        [
            "evaluate",
            str(model),
            str(small_perov),
            "-t",
            "heat_ref",
            "-o",
            str(tmp_path / "eval.csv"),
            *cache,
        ]
    )
    assert "MAE" in out
    rows = list(csv.DictReader((tmp_path / "eval.csv").open()))
    header = ["id", "true (eV/cell)", "predicted (eV/cell)", "error (eV/cell)"]
    assert list(rows[0]) == header and len(rows) == 60

    run(["predict", str(model), str(small_perov), "-o", str(tmp_path / "pred.csv"), *cache])
    pred = pd.read_csv(tmp_path / "pred.csv")
    assert list(pred.columns) == ["id", "heat_ref (eV/cell)"] and len(pred) == 60
    np.testing.assert_allclose(
        pred["heat_ref (eV/cell)"], [float(r["predicted (eV/cell)"]) for r in rows], rtol=1e-5
    )

    run(["embed", str(model), str(small_perov), "-o", str(tmp_path / "emb.parquet"), *cache])
    emb = pd.read_parquet(tmp_path / "emb.parquet")
    # the scratch default is cgcnn-mp (the published MP CGCNNs' shape): a 32-d embedding
    assert emb.shape == (60, 1 + 32) and emb.columns[0] == "id"
    run(
        [
            "embed",
            str(model),
            str(small_perov),
            "-o",
            str(tmp_path / "emb.npz"),
            "--layers",
            "all",
            *cache,
        ]
    )
    with np.load(tmp_path / "emb.npz") as npz:
        assert npz["embeddings"].shape == (60, 64 * 3 + 32)


def test_predict_with_original_cgcnn_file_and_never_overwrites(data: Path, tmp_path) -> None:
    original = data / "cgcnn_pretrained" / "pre-trained" / "band-gap.pth.tar"
    out_file = tmp_path / "gaps.csv"
    run(
        [
            "predict",
            str(original),
            str(data / "cgcnn_sample_regression"),
            "-o",
            str(out_file),
            "--cache-dir",
            str(tmp_path / "cache"),
        ]
    )
    assert list(pd.read_csv(out_file).columns) == ["id", "band_gap"]
    out_file.write_text("mine\n")
    result = runner.invoke(
        app, ["predict", str(original), str(data / "cgcnn_sample_regression"), "-o", str(out_file)]
    )
    assert result.exit_code == 1 and "--overwrite" in result.output
    assert out_file.read_text() == "mine\n"


def test_finetune_reports_zero_shot(small_perov: Path, tmp_path: Path) -> None:
    out = run(
        [
            "finetune",
            str(small_perov),
            "-t",
            "heat_ref",
            "--strategy",
            "freeze-first-k",
            "--freeze-k",
            "2",
            "--run-dir",
            str(tmp_path / "ft"),
            "--cache-dir",
            str(tmp_path / "cache"),
            *QUICK,
        ]
    )
    assert "zero-shot" in out and "freeze-first-2" in out
    manifest = json.loads((tmp_path / "ft" / "run.json").read_text())
    assert manifest["strategy"]["freeze"] == ["embedding", "interactions.0", "interactions.1"]
    assert manifest["provenance"]["name"] == "cgcnn/formation-energy-per-atom"


def test_finetune_with_yaml_config(small_perov: Path, tmp_path: Path) -> None:
    config = tmp_path / "ft.yaml"
    config.write_text("epochs: 1\nlr: 0.0005\noptimizer: adamw\nscheduler: cyclic\n")
    run(
        [
            "finetune",
            str(small_perov),
            "-t",
            "heat_ref",
            "--config",
            str(config),
            "--run-dir",
            str(tmp_path / "ft"),
            "--cache-dir",
            str(tmp_path / "cache"),
        ]
    )
    saved = json.loads((tmp_path / "ft" / "run.json").read_text())["command_config"]
    assert saved["optimizer"] == "adamw" and saved["lr"] == 0.0005 and saved["epochs"] == 1


def test_compare_prints_every_method(small_perov: Path, tmp_path: Path) -> None:
    out = run(
        [
            "compare",
            str(small_perov),
            "-t",
            "heat_ref",
            "--strategies",
            "scratch,full,head-only,features+rf",
            "--seeds",
            "2",
            "--run-dir",
            str(tmp_path / "cmp"),
            "--cache-dir",
            str(tmp_path / "cache"),
            *QUICK,
        ]
    )
    for method in ("zero-shot", "zero-shot+linear", "scratch", "full", "head-only", "features+rf"):
        assert method in out
    said = " ".join(out.split())
    assert "★" in said and "p: its t-test against scratch" in said
    assert f"report: tlmat report {tmp_path / 'cmp'}" in said
    table = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    assert set(table) == {
        "zero-shot",
        "zero-shot+linear",
        "scratch",
        "full",
        "head-only",
        "features+rf",
    }
    assert table["full"]["n_seeds"] == 2 and "p_vs_scratch" in table["full"]
    # ★ marks the lowest validation MAE (zero-shot rows have none), whatever the test says
    scored = {k: e["val_mae_mean"] for k, e in table.items() if np.isfinite(e["val_mae_mean"])}
    assert set(scored) == {"scratch", "full", "head-only", "features+rf"}
    assert f"★ {min(scored, key=scored.get)}" in said
    maes = [m["mae"] for m in table["full"]["per_seed"]]
    assert table["full"]["mae_std"] == pytest.approx(np.std(maes, ddof=1))
    # the same command again reuses every finished run and prints the same table
    again = run(
        ["compare", str(small_perov), "-t", "heat_ref", "--strategies",
         "scratch,full,head-only,features+rf", "--seeds", "2", "--run-dir",
         str(tmp_path / "cmp"), "--cache-dir", str(tmp_path / "cache"), *QUICK]
    )  # fmt: skip
    assert json.loads((tmp_path / "cmp" / "comparison.json").read_text()) == table
    assert (
        again.split("results →")[0].split("\n")[-12:] == out.split("results →")[0].split("\n")[-12:]
    )
    # and it is a results grid the report reads
    run(["report", str(tmp_path / "cmp")])
    assert (tmp_path / "cmp" / "report" / "report.md").exists()


def test_compare_checks_strategy_names_before_training(small_perov: Path, tmp_path) -> None:
    result = runner.invoke(
        app,
        ["compare", str(small_perov), "-t", "heat_ref", "--strategies", "scratch,fulll",
         "--run-dir", str(tmp_path / "cmp"), "--cache-dir", str(tmp_path / "cache")],
    )  # fmt: skip
    assert result.exit_code == 1 and "unknown strategy 'fulll'" in result.output
    assert not (tmp_path / "cache").exists() and not (tmp_path / "cmp").exists()


def test_models_lists_the_cgcnn_checkpoints() -> None:
    out = run(["models"])
    assert "cgcnn/formation-energy-per-atom" in out and "weights_only=True" in out
    # the shipped tlmat sources, with their test error and model card
    assert "tlmat/mp-eform-cgcnn" in out and "pretrained/mp-eform-cgcnn/card.md" in out


def test_errors_are_clear(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["finetune", "no/such/data", "-t", "x", "--run-dir", str(tmp_path / "r")]
    )
    assert result.exit_code == 1 and "no such file" in result.output
    result = runner.invoke(app, ["predict", "not-a-model", str(tmp_path)])
    assert result.exit_code == 1 and "registered model" in result.output


def test_train_excludes_given_ids(small_perov: Path, tmp_path: Path) -> None:
    import pandas as pd

    ids = pd.read_csv(small_perov)["id"].astype(str).tolist()
    held_out = tmp_path / "target_split.json"
    held_out.write_text(json.dumps({"train": [], "val": [], "test": ids[:25]}))
    out = run(
        [
            "train",
            str(small_perov),
            "-t",
            "heat_ref",
            "--exclude-ids",
            str(held_out),
            "--run-dir",
            str(tmp_path / "run"),
            "--model",
            "cgcnn-mp",
            "--test-size",
            "5",
            "--cache-dir",
            str(tmp_path / "cache"),
            *QUICK,
        ]
    )
    assert "excluded from training" in out
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    assert not set(ids[:25]) & set(split["train"] + split["val"])


@pytest.mark.parametrize("model", ["schnet-small", "alignn-small", "cgat-small"])
def test_train_any_architecture(model: str, small_perov: Path, tmp_path: Path) -> None:
    """`tlmat train --model NAME` works like the CGCNN default; the checkpoint knows its
    architecture and `tlmat predict` builds the graphs that model needs."""
    from tlmat.models import load_checkpoint

    cache = ["--cache-dir", str(tmp_path / "cache")]
    run(["train", str(small_perov), "-t", "heat_ref", "--unit", "eV/cell", "--model", model,
         "--run-dir", str(tmp_path / "run"), *QUICK, *cache])  # fmt: skip
    trained = load_checkpoint(tmp_path / "run" / "model.pt")
    assert f"{trained.model.architecture}-small" == model
    out = tmp_path / "pred.csv"
    run(["predict", str(tmp_path / "run" / "model.pt"), str(small_perov), "-o", str(out), *cache])
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 60 and all(np.isfinite(float(r["heat_ref (eV/cell)"])) for r in rows)


def test_compare_scratch_row_with_another_architecture(small_perov: Path, tmp_path: Path) -> None:
    """`compare --model schnet-small`: the scratch row is a SchNet (other graphs), scored
    on the same test materials as the CGCNN source's rows."""
    out = run(
        [
            "compare",
            str(small_perov),
            "-t",
            "heat_ref",
            "--strategies",
            "scratch,full",
            "--model",
            "schnet-small",
            "--run-dir",
            str(tmp_path / "cmp"),
            "--cache-dir",
            str(tmp_path / "cache"),
            *QUICK,
        ]
    )
    assert "scratch" in out and "full" in out
    rows = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    assert {"scratch [schnet]", "full", "zero-shot"} <= set(rows)

    job = next((tmp_path / "cmp").glob("n*-s0"))  # a results grid: n<size>-s<seed>/<method>
    scratch = pd.read_csv(job / "scratch" / "predictions.csv")
    full = pd.read_csv(job / "full" / "predictions.csv")
    assert list(scratch["id"]) == list(full["id"]) and len(scratch) == 6
    run_json = json.loads((job / "scratch" / "run.json").read_text())
    assert run_json["model"]["architecture"] == "schnet"
    assert run_json["graph_settings"]["max_neighbors"] is None  # SchNet: all within 6 Å


def test_finetune_scratch_with_another_architecture(small_perov: Path, tmp_path: Path) -> None:
    """`finetune --strategy scratch --model schnet-small` trains a SchNet on the split the
    source's zero-shot row is scored on; with a transfer strategy --model is refused."""
    common = ["finetune", str(small_perov), "-t", "heat_ref", "--cache-dir",
              str(tmp_path / "cache"), *QUICK]  # fmt: skip
    out = run([*common, "--strategy", "scratch", "--model", "schnet-small",
               "--run-dir", str(tmp_path / "ft")])  # fmt: skip
    assert "zero-shot" in out  # the table (rich truncates labels on narrow terminals)
    run_json = json.loads((tmp_path / "ft" / "run.json").read_text())
    assert run_json["model"]["architecture"] == "schnet"
    result = runner.invoke(app, [*common, "--strategy", "full", "--model", "schnet-small",
                                 "--run-dir", str(tmp_path / "ft2")])  # fmt: skip
    assert result.exit_code == 1
    assert "model applies to strategy scratch" in " ".join(result.output.split())


def test_train_takes_the_users_split_and_scales_its_defaults(
    small_perov: Path, tmp_path: Path
) -> None:
    """`--split split.json` trains on exactly those ids; without `--epochs` the epochs
    and patience scale with the training set and the run says so and records them."""
    from tlmat.cli.training import SCRATCH_MODEL
    from tlmat.experiments.pretraining import DEFAULT_MODEL

    assert SCRATCH_MODEL == DEFAULT_MODEL  # one scratch architecture for every command
    ids = pd.read_csv(small_perov)["id"].astype(str).tolist()
    split = {"train": ids[:30], "val": ids[30:40], "test": ids[40:60]}
    (tmp_path / "split.json").write_text(json.dumps(split))
    cache = ["--cache-dir", str(tmp_path / "cache")]
    out = run(["train", str(small_perov), "-t", "heat_ref", "--split",
               str(tmp_path / "split.json"), "--batch-size", "16", "--early-stopping-patience",
               "1", "--run-dir", str(tmp_path / "run"), *cache])  # fmt: skip
    said = " ".join(out.split())
    assert "30 training, 10 validation, 20 test structures; up to 300 epochs" in said
    assert "early stopping after 1 epochs without improvement" in said
    assert json.loads((tmp_path / "run" / "split.json").read_text()) == split
    manifest = json.loads((tmp_path / "run" / "run.json").read_text())
    assert manifest["command_config"]["epochs"] == 300  # 60,000 / 30, capped at 300
    assert manifest["command_config"]["early_stopping_patience"] == 1


def test_accelerator_devices_and_precision_flags(small_perov: Path, tmp_path: Path) -> None:
    """The GPU flags reach Lightning and the manifest (run here on the CPU)."""
    cache = ["--cache-dir", str(tmp_path / "cache")]
    flags = ["--accelerator", "cpu", "--devices", "1", "--precision", "bf16-mixed"]
    run(["train", str(small_perov), "-t", "heat_ref", *flags, "--run-dir",
         str(tmp_path / "run"), *QUICK, *cache])  # fmt: skip
    manifest = json.loads((tmp_path / "run" / "run.json").read_text())["command_config"]
    assert (manifest["accelerator"], manifest["devices"], manifest["precision"]) == (
        "cpu", 1, "bf16-mixed",
    )  # fmt: skip
    out = tmp_path / "pred.csv"
    run(["predict", str(tmp_path / "run" / "model.pt"), str(small_perov), "--device", "cpu",
         "-o", str(out), *cache])  # fmt: skip
    assert len(pd.read_csv(out)) == 60


def test_train_and_finetune_again_reuse_the_finished_run(small_perov: Path, tmp_path) -> None:
    """The same command twice prints the same table without training again; other
    settings on a finished run are refused, naming them."""
    cache = ["--cache-dir", str(tmp_path / "cache")]
    train = ["train", str(small_perov), "-t", "heat_ref", "--run-dir", str(tmp_path / "run"),
             *QUICK, *cache]  # fmt: skip
    first = run(train)
    model = (tmp_path / "run" / "model.pt").read_bytes()
    again = run(train)
    assert "reusing it" in " ".join(again.split())
    assert (tmp_path / "run" / "model.pt").read_bytes() == model
    table = [line for line in first.splitlines() if "scratch" in line]
    assert table == [line for line in again.splitlines() if "scratch" in line]
    other = runner.invoke(app, [*train, "--seed", "1"])
    assert other.exit_code == 1 and "other settings" in " ".join(other.output.split())

    finetune = ["finetune", str(small_perov), "-t", "heat_ref", "--run-dir",
                str(tmp_path / "ft"), *QUICK, *cache]  # fmt: skip
    first = run(finetune)
    again = run(finetune)
    rows = [line for line in first.splitlines() if "full" in line]
    assert rows and rows == [line for line in again.splitlines() if "full" in line]


def test_the_compare_star_follows_validation_not_test():
    """A method best on the test set but not on validation gets no ★: the test set
    reports, it does not choose (a planted table where the two disagree)."""
    from rich.console import Console

    from tlmat.cli.training import comparison_table

    def entry(test: float, val: float) -> dict:
        return {"mae_mean": test, "mae_std": 0.0, "rmse_mean": test, "r2_mean": 0.5,
                "n_seeds": 2, "val_mae_mean": val}  # fmt: skip

    summary = {
        "scratch": entry(0.30, 0.20),
        "full": entry(0.10, 0.25),
        "zero-shot": entry(0.05, np.nan),
    }
    console = Console(record=True, width=200)
    console.print(comparison_table(summary, "t", "eV", None))
    text = console.export_text()
    assert "★ scratch" in text and "★ full" not in text and "★ zero-shot" not in text
    assert "lowest validation MAE" in text


def test_compare_with_repeated_kfold_uses_the_corrected_test(small_perov: Path, tmp_path: Path):
    """--folds K: every structure is a test structure once per repeat (the folds'
    test sets partition the data), and the p-value and gain come from the corrected
    resampled t-test; a --test beside it is refused."""
    root = tmp_path / "kfold"
    args = ["compare", str(small_perov), "-t", "heat_ref", "--strategies", "scratch,features+rf"]
    args += ["--folds", "3", "--seeds", "1", "--run-dir", str(root)]
    out = run([*args, "--cache-dir", str(tmp_path / "cache"), *QUICK])
    assert "gain = 1 − MAE / MAE of scratch" in " ".join(out.split())
    table = json.loads((root / "comparison.json").read_text())
    entry = table["features+rf"]
    assert entry["n_seeds"] == 3 and entry["test"] == "corrected resampled t-test"
    low, high = entry["gain_vs_scratch"][1:]
    assert low <= entry["gain_vs_scratch"][0] <= high
    tests = [
        json.loads((root / f"k3-r0-f{k}" / "split.json").read_text())["test"] for k in range(3)
    ]
    assert sum(map(len, tests)) == len(set().union(*tests)) == 60
    refused = runner.invoke(app, [*args[:-1], str(tmp_path / "other"), "--test", str(small_perov)])
    assert refused.exit_code == 1 and "give no test" in refused.output
