"""Every error a user can cause ends in one ``error:`` line naming the file or option and
the reason, exit status 1, no traceback; ``--debug`` shows the traceback; an internal
error says what it was and how to see more. The guard of tests/faults/conftest.py is
shown to fail on a planted traceback."""

from __future__ import annotations

import errno
import gzip
import re
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from tlmat.cli import app, common
from tlmat.cli.common import reported_errors

runner = CliRunner()


def one_error(result, *needles: str) -> str:
    """The single ``error:`` line of a failed command, checked to hold ``needles``."""
    assert result.exit_code == 1, result.output
    starts = [n for n, line in enumerate(result.output.splitlines()) if line.startswith("error:")]
    assert len(starts) == 1, result.output
    text = re.sub(r"\s+", " ", result.output)
    line = text[text.index("error:") :]
    for needle in needles:
        assert needle in line, result.output
    return line


@pytest.fixture()
def perov_csv(data: Path) -> bytes:
    return (data / "perov_5" / "test.csv.gz").read_bytes()


def train_args(path: Path, tmp_path: Path, *extra: str) -> list[str]:
    run = ["--epochs", "1", "--run-dir", str(tmp_path / "run")]
    return ["train", str(path), "-t", "heat_ref", *run, "--cache-dir", str(tmp_path), *extra]


# --- the guard --------------------------------------------------------------------------
def _tiny_app(error: BaseException | None, printed: str = "") -> typer.Typer:
    tiny = typer.Typer()

    @tiny.command()
    def go() -> None:
        print(printed)
        if error is not None:
            raise error

    return tiny


def test_the_guard_fails_on_a_planted_traceback() -> None:
    with pytest.raises(AssertionError, match="RuntimeError escaped"):
        runner.invoke(_tiny_app(RuntimeError("planted")), [])
    with pytest.raises(AssertionError, match="Traceback"):
        runner.invoke(_tiny_app(None, "Traceback (most recent call last):"), [])
    assert runner.invoke(_tiny_app(None, "fine"), []).exit_code == 0


# --- empty, header-only and truncated tables ---------------------------------------------
@pytest.mark.parametrize("command", ["info", "train"])
def test_empty_and_header_only_csv_are_one_error(
    command: str, perov_csv: bytes, tmp_path: Path
) -> None:
    header = gzip.decompress(perov_csv).split(b"\n", 1)[0] + b"\n"
    for name, content in (("empty.csv", b""), ("header.csv", header)):
        path = tmp_path / name
        path.write_bytes(content)
        args = ["info", str(path)] if command == "info" else train_args(path, tmp_path)
        one_error(runner.invoke(app, args), name, "no structure")


def test_truncated_gzip_is_one_error(perov_csv: bytes, tmp_path: Path) -> None:
    path = tmp_path / "cut.csv.gz"
    path.write_bytes(perov_csv[: len(perov_csv) // 3])
    result = runner.invoke(app, ["info", str(path)])
    line = one_error(result, "cut.csv.gz", "truncated or damaged")
    assert "Aborted" not in result.output, line
    one_error(runner.invoke(app, train_args(path, tmp_path)), "cut.csv.gz", "truncated")


# --- a cache path that is a file ----------------------------------------------------------
def test_cache_dir_that_is_a_file_is_one_error(data: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file")
    source = str(data / "cgcnn_sample_regression")
    result = runner.invoke(app, ["cache", source, "--cache-dir", str(blocker)])
    one_error(result, str(blocker), "is a file")
    assert blocker.read_text() == "a file"


# --- YAML configs -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ('!!python/object/apply:os.system ["echo hi"]\n', "python/object"),
        ("- 1\n- 2\n", "not a mapping"),
        ("epochs: [1\n", "not valid YAML"),
    ],
)
def test_bad_yaml_config_is_one_error(
    text: str, reason: str, cgcnn_folder: Path, tmp_path: Path
) -> None:
    config = tmp_path / "train.yaml"
    config.write_text(text)
    args = train_args(cgcnn_folder, tmp_path, "--config", str(config))
    args[3] = "target"  # the sample folder's one column
    result = runner.invoke(app, args)
    one_error(result, str(config), reason)
    assert "hi\n" not in result.output  # nothing ran


# --- OS errors, internal errors and --debug -----------------------------------------------
def _failing_command(error: BaseException) -> typer.Typer:
    tiny = typer.Typer()

    @tiny.command()
    def go() -> None:
        with reported_errors():
            raise error

    return tiny


def test_os_errors_name_the_path_and_the_reason() -> None:
    denied = PermissionError(errno.EACCES, "Permission denied", "/data/run/last.ckpt")
    result = runner.invoke(_failing_command(denied), [])
    assert one_error(result) == "error: /data/run/last.ckpt: Permission denied "
    full = OSError(errno.ENOSPC, "No space left on device")
    assert one_error(runner.invoke(_failing_command(full), [])).startswith(
        "error: No space left on device"
    )


def test_internal_errors_are_one_line_with_a_debug_hint(monkeypatch) -> None:
    monkeypatch.setattr(common, "debug", False)
    result = runner.invoke(_failing_command(KeyError("planted")), [])
    one_error(result, "internal error: KeyError: 'planted'", "--debug")


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    path = tmp_path / "empty.csv"
    path.write_bytes(b"")
    command = [sys.executable, "-m", "tlmat", "--debug", "info", str(path)]
    shown = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert shown.returncode == 1
    assert "Traceback" in shown.stderr + shown.stdout
    assert "error: " in shown.stdout and "no structure" in shown.stdout
    # and without --debug, no traceback
    plain = subprocess.run(command[:3] + command[4:], capture_output=True, text=True, timeout=120)
    assert plain.returncode == 1 and "Traceback" not in plain.stderr + plain.stdout


def test_ctrl_c_while_the_data_is_read_stops_with_the_signals_status(
    monkeypatch, tmp_path: Path
) -> None:
    """Ctrl-C before a run's own handler is set (Python raises KeyboardInterrupt) ends a
    command as a stop: the resume hint and 128 + SIGINT, not click's 'Aborted!' and 1."""
    import tlmat.experiments.runspec as runspec

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(runspec, "prepared_data", interrupted)
    data = tmp_path / "x.csv"
    data.write_text("id,y\n")  # the file must exist: a missing one is said before any reading
    run = ["--run-dir", str(tmp_path / "run")]
    result = CliRunner().invoke(app, ["train", str(data), "-t", "y", *run])
    assert result.exit_code == 130 and "stopped: by SIGINT before training began" in " ".join(
        result.output.split()
    )
