"""Benchmark: start-up time of the command line — `tlmat --version`, `tlmat --help` and
every subcommand's `--help` — beside `python -c "import torch"`, in fresh processes.

Run:  python benchmarks/startup.py [--repeats 5] [--out benchmarks/results/startup.json]

Each command runs ``repeats`` times; the table gives the fastest and the median wall time
(seconds), so a busy machine shows in the median, not the minimum. Goals (issue 10):
``--help`` and ``--version`` under 1 s, every subcommand's ``--help`` under 1.5 s.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

SUBCOMMANDS = [
    "info",
    "cache",
    "train",
    "finetune",
    "compare",
    "benchmark",
    "predict",
    "embed",
    "evaluate",
    "models",
    "report",
]


def seconds(command: list[str], repeats: int) -> dict[str, float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return {"min": min(times), "median": statistics.median(times)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/startup.json"))
    args = parser.parse_args()
    tlmat = [
        shutil.which("tlmat") or sys.executable,
        *([] if shutil.which("tlmat") else ["-m", "tlmat"]),
    ]
    commands = {
        'python -c "import torch"': [sys.executable, "-c", "import torch"],
        "tlmat --version": [*tlmat, "--version"],
        "tlmat --help": [*tlmat, "--help"],
        **{f"tlmat {name} --help": [*tlmat, name, "--help"] for name in SUBCOMMANDS},
    }
    rows = {label: seconds(command, args.repeats) for label, command in commands.items()}
    results = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count()},
        "repeats": args.repeats,
        "seconds": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    width = max(map(len, rows))
    for label, row in rows.items():
        print(f"{label:<{width}}  min {row['min']:.2f} s  median {row['median']:.2f} s")
    print(f"→ {args.out}")


if __name__ == "__main__":
    main()
