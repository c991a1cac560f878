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
