"""Nothing corrupted: a run folder is locked while a run writes it, every file is written
to a temporary name and renamed (a full disk never leaves a truncated file under its real
name), a damaged checkpoint or grid result is set aside and its work done again, and
``--overwrite`` never replaces a file the user put there."""

from __future__ import annotations

import errno
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from typer.testing import CliRunner

from tlmat.cli import app
from tlmat.training.durable import readable_checkpoint

runner = CliRunner()
QUICK = ["--model", "cgcnn-small", "--batch-size", "16", "--epochs", "5",
         "--early-stopping-patience", "2"]  # fmt: skip


def said(result) -> str:
    return re.sub(r"\s+", " ", result.output)


def train(perov60: Path, run_dir: Path, *extra: str):
    cache = ["--cache-dir", str(run_dir.parent / "cache")]
    args = ["train", str(perov60), "-t", "heat_ref", *QUICK, *cache, "--run-dir", str(run_dir)]
    return runner.invoke(app, [*args, *extra])


def test_a_second_run_into_a_folder_being_written_is_refused_at_once(perov60, tmp_path) -> None:
    folder = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom tlmat.training.rundir import run_lock\n"
         f"with run_lock({str(folder)!r}):\n    print('held', flush=True)\n    time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        started = time.monotonic()
        result = train(perov60, folder)
        text = said(result)
        assert result.exit_code == 1 and "is being written by another tlmat run" in text
        assert f"process {holder.pid}" in text
        assert time.monotonic() - started < 30  # refused before reading or training
        assert not (folder / "metrics.csv").exists()
    finally:
        holder.kill()
        holder.wait()
    assert train(perov60, folder).exit_code == 0  # the lock dies with its holder


def test_overwrite_never_replaces_a_file_the_user_put_in_the_run_folder(perov60, tmp_path) -> None:
    folder = tmp_path / "run"
    folder.mkdir()
    mine = folder / "metrics.csv"
    mine.write_text("my own measurements\n")
    result = train(perov60, folder, "--overwrite")
    assert result.exit_code == 1 and "metrics.csv was not written by tlmat" in said(result)
    assert mine.read_text() == "my own measurements\n"


def test_a_full_disk_leaves_whole_files_and_the_same_command_finishes(
    perov60, tmp_path, monkeypatch
) -> None:
    whole = train(perov60, tmp_path / "whole")
    assert whole.exit_code == 0, whole.output
    real_fsync, calls = os.fsync, []

    def full(fd: int) -> None:  # the 6th flush to disk finds it full
        calls.append(fd)
        if len(calls) >= 6:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", full)
    folder = tmp_path / "cut"
    result = train(perov60, folder)
    assert result.exit_code == 1 and "No space left on device" in said(result)
    assert [p.name for p in folder.rglob("*.tmp-*")] == []
    assert not (folder / "model.pt").exists()
    for checkpoint in (folder / "checkpoints").glob("*.ckpt"):
        assert readable_checkpoint(checkpoint), checkpoint
    monkeypatch.setattr(os, "fsync", real_fsync)  # space freed
    again = train(perov60, folder)
    assert again.exit_code == 0, again.output
    metrics = json.loads((folder / "test_metrics.json").read_text())
    assert metrics == json.loads((tmp_path / "whole" / "test_metrics.json").read_text())


def test_a_truncated_last_checkpoint_is_set_aside_and_the_run_done_again(perov60, tmp_path) -> None:
    whole = train(perov60, tmp_path / "whole")
    assert whole.exit_code == 0, whole.output
    folder = tmp_path / "cut"
    assert train(perov60, folder).exit_code == 0
    for name in ("model.pt", "run.json", "test_metrics.json", "result.json"):
        (folder / name).unlink()
    (folder / "checkpoints" / "trained.json").unlink()
    last = folder / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])  # cut short by hand
    result = train(perov60, folder)
    assert result.exit_code == 0, result.output
    assert list((folder / "checkpoints").glob("last.ckpt.damaged-*"))
    metrics = json.loads((folder / "test_metrics.json").read_text())
    assert metrics == json.loads((tmp_path / "whole" / "test_metrics.json").read_text())


def test_a_run_folder_that_cannot_be_written_is_one_error_line(
    perov60, tmp_path, monkeypatch
) -> None:
    import filelock

    def read_only(self, *args, **kwargs):  # as a read-only folder answers (root ignores
        raise PermissionError(errno.EACCES, "Permission denied")  # chmod, so it is faked)

    monkeypatch.setattr(filelock.BaseFileLock, "acquire", read_only)
    result = train(perov60, tmp_path / "run")
    text = said(result)
    assert result.exit_code == 1 and text.startswith("error: cannot write the run folder")
    assert "Permission denied" in text


def test_a_damaged_grid_result_is_set_aside_and_its_job_run_again(tiny_grid, tmp_path) -> None:
    config = tiny_grid(methods=["scratch"], training={"epochs": 1, "batch_size": 16})
    args = ["benchmark", str(config), "--results", str(tmp_path / "grid"), "--cache-dir",
            str(tmp_path / "cache")]  # fmt: skip
    assert runner.invoke(app, args).exit_code == 0
    (result,) = (tmp_path / "grid").rglob("result.json")
    before = json.loads(result.read_text())["test"]
    result.write_text(result.read_text()[:40])  # a disk that filled up mid-write
    again = runner.invoke(app, args)
    assert again.exit_code == 0, again.output
    assert json.loads(result.read_text())["test"] == before
    assert list(result.parent.glob("result.json.damaged-*"))
