"""The README's Python snippets run exactly as printed, from the repository root."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SNIPPETS = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)


def test_the_readme_has_python_snippets() -> None:
    assert len(SNIPPETS) >= 2


@pytest.mark.parametrize("index", range(len(SNIPPETS)))
def test_readme_snippet_runs_from_the_repository_root(index: int, data: Path, tmp_path) -> None:
    env = {**os.environ, "TLMAT_DATA_DIR": str(data), "TLMAT_CACHE_DIR": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-c", SNIPPETS[index]], cwd=ROOT, env=env, capture_output=True,
        text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]


def readme_commands() -> list[list[str]]:
    """Every ``tlmat …`` command of the README, fenced or indented, in the order printed:
    continuation lines joined, comments and shell redirections left out."""
    import shlex

    text = (ROOT / "README.md").read_text().replace("\\\n", " ")
    commands = []
    for line in text.splitlines():
        words = line.split("#")[0].strip().removeprefix("nohup ").removeprefix("srun ")
        if words.startswith("tlmat ") and "`" not in words and "…" not in words:
            args = shlex.split(words.split(">")[0].split("&")[0])[1:]
            commands.append(args)
    return commands


COMMANDS = readme_commands()


def test_the_readme_holds_its_commands_in_order() -> None:
    names = [c[0] for c in COMMANDS]
    assert len(COMMANDS) >= 12 and names[:2] == ["fit", "compare"], names


@pytest.mark.parametrize("args", COMMANDS, ids=[" ".join(c)[:60] for c in COMMANDS])
def test_every_readme_command_is_one_the_cli_takes(args: list[str]) -> None:
    """Each command of the README names a command and flags the CLI has, with values its
    parser accepts (types, ranges, choices); nothing runs."""
    import typer

    from tlmat.cli import app

    group = typer.main.get_command(app)
    with group.make_context("tlmat", list(args)) as context:
        command = group.get_command(context, args[0])
        assert command is not None, args
        command.make_context(args[0], list(args[1:]), parent=context)


def test_the_readme_finetune_examples_run_one_after_the_other(data: Path, tmp_path) -> None:
    """The README's finetune examples on registered data, run in the order printed from
    one folder, each finish: none is refused for a folder an earlier one wrote."""
    chosen = [c for c in COMMANDS if c[0] == "finetune" and c[1].startswith("perov_5/")]
    chosen = [
        c for c in chosen if "--train-size" in c and int(c[c.index("--train-size") + 1]) <= 100
    ]
    assert len(chosen) >= 2
    env = {**os.environ, "TLMAT_DATA_DIR": str(data), "TLMAT_CACHE_DIR": str(tmp_path / "cache")}
    for args in chosen:
        done = subprocess.run(
            [sys.executable, "-m", "tlmat", *args], cwd=tmp_path, env=env,
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert done.returncode == 0, (args, done.stdout[-2000:], done.stderr[-2000:])
    assert len(list((tmp_path / "runs").iterdir())) == len(chosen)
