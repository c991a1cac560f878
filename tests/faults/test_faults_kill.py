"""Never lost: every kind of run (train, finetune, compare, an ensemble, a benchmark grid,
a model selection by fit), stopped by SIGKILL, SIGINT or SIGTERM at random moments several
times in a row, finishes on the same command with the numbers of an uninterrupted run, and
the log of the finished epochs is kept. Small data and few epochs, with early stopping on."""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest

SIGNALS = (signal.SIGKILL, signal.SIGINT, signal.SIGTERM)
QUICK = ["--batch-size", "16", "--early-stopping-patience", "2"]


def _commands(perov60: Path, grid: Path) -> dict[str, list[str]]:
    data = [str(perov60), "-t", "heat_ref"]
    return {
        "train": ["train", *data, "--model", "cgcnn-small", "--epochs", "8", *QUICK],
        "finetune": ["finetune", *data, "--strategy", "freeze-embedding", "--epochs", "6", *QUICK],
        "compare": ["compare", *data, "--strategies", "scratch,full", "--seeds", "2",
                    "--epochs", "4", *QUICK],
        "ensemble": ["train", *data, "--model", "cgcnn-small", "--ensemble", "2",
                     "--ensemble-workers", "2", "--epochs", "6", *QUICK],
        "benchmark": ["benchmark", str(grid)],
        "fit": ["fit", *data, "--candidate", "features+mlp [tlmat/mp-eform-cgcnn]",
                "--folds", "2", "--ensemble", "2", "--epochs", "4", *QUICK],
    }  # fmt: skip


def _output_flag(kind: str) -> str:
    return "--results" if kind == "benchmark" else "--run-dir"


def _numbers(kind: str, folder: Path) -> dict:
    """What a run reports: test scores (and the per-epoch log of a single run)."""
    if kind == "compare":
        summary = json.loads((folder / "comparison.json").read_text())
        return {k: [m["mae"] for m in v["per_seed"]] for k, v in summary.items()}
    if kind == "fit":
        report = json.loads((folder / "report.json").read_text())
        labels = [c["label"] for c in report["candidates"]]
        return {
            "cv": {c["label"]: c["cv_mae"] or [] for c in report["candidates"]},
            "chosen": labels.index(report["chosen"]),
            "sigma_scale": report["calibration"].get("sigma_scale", float("nan")),
        }
    if kind == "benchmark":
        return {
            str(p.relative_to(folder)): json.loads(p.read_text())["test"]
            for p in sorted(folder.rglob("result.json"))
        }
    numbers = {"test": json.loads((folder / "test_metrics.json").read_text())}
    if kind != "ensemble":
        log = pd.read_csv(folder / "metrics.csv")
        numbers["log"] = log.drop(columns="step").to_dict("list")
    return numbers


def _flat(value, prefix: str = "") -> dict[str, float]:
    """Nested scores as ``path → number``, to compare with a tolerance: a member trained
    alone after a resume uses more torch threads than side by side, which moves sums in
    their last digits (1e-8 relative), never a score a user reads."""
    if isinstance(value, dict):
        return {
            k: v for key, item in value.items() for k, v in _flat(item, f"{prefix}{key}/").items()
        }
    if isinstance(value, list):
        return {
            k: v for i, item in enumerate(value) for k, v in _flat(item, f"{prefix}{i}/").items()
        }
    return {prefix: float(value)}


def _start(command: list[str], cache: Path) -> subprocess.Popen:
    """The command in a process whose output is no terminal, a progress line at every
    update (instead of every 30 s)."""
    return subprocess.Popen(
        [sys.executable, "-m", "tlmat", *command, "--cache-dir", str(cache)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "TLMAT_PROGRESS_SECONDS": "0"},
    )


def _orphans(children: list[psutil.Process]) -> list[int]:
    """Children of a stopped run still alive after 30 s (a member left training)."""
    _, alive = psutil.wait_procs(children, timeout=30)
    return [p.pid for p in alive]


@pytest.mark.parametrize("kind", ["train", "finetune", "compare", "ensemble", "benchmark", "fit"])
def test_a_run_killed_at_random_moments_finishes_with_the_same_numbers(
    perov60: Path, tiny_grid, tmp_path: Path, kind: str
) -> None:
    grid = tiny_grid(
        methods=["scratch", "full"],
        training={"epochs": 5, "batch_size": 16, "early_stopping_patience": 2},
    )
    command = _commands(perov60, grid)[kind]
    cache, flag = tmp_path / "cache", _output_flag(kind)
    started = time.monotonic()
    reference = _start([*command, flag, str(tmp_path / "whole")], cache)
    output, _ = reference.communicate(timeout=600)
    assert reference.returncode == 0, output
    seconds = time.monotonic() - started
    # off a terminal, every long command says its progress in plain lines as it goes
    progress = [line for line in output.splitlines() if " % done · " in line]
    assert len(progress) >= 2 and any("left" in line for line in progress), output

    rng = random.Random(int.from_bytes(os.urandom(4), "little"))
    stops = []
    for signum in SIGNALS:
        process = _start([*command, flag, str(tmp_path / "cut")], cache)
        delay = rng.uniform(0.3, 0.9) * seconds
        stops.append(f"{signal.Signals(signum).name} after {delay:.1f} s")
        time.sleep(delay)
        children = []
        with contextlib.suppress(psutil.NoSuchProcess):
            children = psutil.Process(process.pid).children(recursive=True)
        process.send_signal(signum)
        said, _ = process.communicate(timeout=120)
        assert "Traceback" not in said, (stops, said)
        assert process.returncode in (0, 128 + signum, -signum), (stops, said)
        assert _orphans(children) == [], stops
    finish = _start([*command, flag, str(tmp_path / "cut")], cache)
    said, _ = finish.communicate(timeout=600)
    assert finish.returncode == 0, (stops, said)
    whole = _flat(_numbers(kind, tmp_path / "whole"))
    assert _flat(_numbers(kind, tmp_path / "cut")) == pytest.approx(whole, rel=1e-6, nan_ok=True), (
        stops
    )


_KILL_AFTER_STOPPING_CHECKPOINT = """
import os, signal, sys
from tlmat.training import durable

save = durable.AtomicCheckpointIO.save_checkpoint

def save_then_die(self, checkpoint, path, storage_options=None):
    save(self, checkpoint, path, storage_options)
    stopping = [s for k, s in checkpoint["callbacks"].items() if "EarlyStopping" in k]
    if path.endswith("last.ckpt") and stopping[0]["wait_count"] >= stopping[0]["patience"]:
        os.kill(os.getpid(), signal.SIGKILL)

durable.AtomicCheckpointIO.save_checkpoint = save_then_die
from tlmat.cli import app
app(prog_name="tlmat")
"""


def test_a_run_killed_as_its_last_epoch_is_saved_finishes_as_the_whole(
    perov60: Path, tmp_path: Path
) -> None:
    """Killed in the instant between the checkpoint of the epoch where early stopping
    decided to stop and the end of that epoch (where Lightning logs its training loss):
    the resumed run neither trains an epoch more nor loses that epoch's log row."""
    command = _commands(perov60, tmp_path / "unused.yaml")["train"]
    cache = tmp_path / "cache"
    reference = _start([*command, "--run-dir", str(tmp_path / "whole")], cache)
    output, _ = reference.communicate(timeout=600)
    assert reference.returncode == 0, output
    killed = subprocess.run(
        [sys.executable, "-c", _KILL_AFTER_STOPPING_CHECKPOINT, *command,
         "--run-dir", str(tmp_path / "cut"), "--cache-dir", str(cache)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    assert not (tmp_path / "cut" / "test_metrics.json").exists()
    finish = _start([*command, "--run-dir", str(tmp_path / "cut")], cache)
    said, _ = finish.communicate(timeout=600)
    assert finish.returncode == 0 and "resuming" in said, said
    whole = _flat(_numbers("train", tmp_path / "whole"))
    assert _flat(_numbers("train", tmp_path / "cut")) == pytest.approx(whole, rel=0, nan_ok=True)


def test_an_error_after_a_swallowed_stop_still_ends_as_the_stop() -> None:
    """Found by CI: a SIGINT that lands inside an import is swallowed by a library trying
    an optional import (pybind11 turns the stop into an ImportError), and the next import
    of that module fails with an unrelated ImportError. The command must still end as
    stopped (exit 128 + the signal, the resume hint), not as an internal error."""
    import typer
    from typer.testing import CliRunner

    from tlmat.cli.common import reported_errors
    from tlmat.training.fit import stopped_by_signals

    def command(stop: bool, training: bool = True) -> typer.Typer:
        tiny = typer.Typer()

        @tiny.command()
        def go() -> None:
            # in training, fit's handler raises RunInterrupted; outside, Ctrl-C raises
            # KeyboardInterrupt (a swallowed one: a library catching BaseException)
            handler = stopped_by_signals() if training else contextlib.nullcontext()
            with reported_errors(), handler:
                with contextlib.suppress(ImportError, RuntimeError, KeyboardInterrupt):
                    if stop:
                        signal.raise_signal(signal.SIGINT)
                raise ImportError('generic_type: type "ObjSense" is already registered!')

        return tiny

    for training in (True, False):
        result = CliRunner().invoke(command(stop=True, training=training), [])
        assert result.exit_code == 128 + signal.SIGINT, (training, result.output)
        assert "stopped:" in result.output and "internal error" not in result.output
    # the next command in the same process starts afresh: with no stop, an internal error
    after = CliRunner().invoke(command(stop=False), [])
    assert after.exit_code == 1 and "internal error: ImportError" in after.output
