"""benchmarks/results/summary.md is what benchmarks/summary.py makes of the results now:
a result re-run without regenerating the summary fails here."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def summary_module():
    spec = importlib.util.spec_from_file_location("summary", ROOT / "benchmarks" / "summary.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_summary_is_regenerated_from_the_results() -> None:
    module = summary_module()
    written = (module.RESULTS / "summary.md").read_text()
    assert written == module.summary(), "stale: run python benchmarks/summary.py"
