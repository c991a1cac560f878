"""Benchmark: the README's comparison command on a quiet machine and beside busy
processes (as on a laptop in use or a shared cluster node), each time with a cold graph
cache: wall time, CPU-seconds (user + system of the command and its children) and
involuntary context switches.

    tlmat compare perov_5/train -t heat_ref --unit eV/cell --test perov_5/test
        --test-size 1000 --train-size 300 --val-size 100 --epochs 60

Run:  python benchmarks/contention.py [--busy 2]
Writes benchmarks/results/contention.json (numbers, the command, the machine). Goals
(issue 28): beside ``--busy`` processes spinning (``yes > /dev/null``), ≤ 1.3× the quiet
CPU-seconds and ≤ 2.5× the quiet wall time; ≤ 3 minutes quiet.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

COMMAND = [
    "compare", "perov_5/train", "-t", "heat_ref", "--unit", "eV/cell", "--test",
    "perov_5/test", "--test-size", "1000", "--train-size", "300", "--val-size", "100",
    "--epochs", "60",
]  # fmt: skip


def _run(busy: int) -> dict:
    """The command once, cold cache, beside ``busy`` spinning processes."""
    spinners = [
        subprocess.Popen(["yes"], stdout=subprocess.DEVNULL) for _ in range(busy)
    ]  # fmt: skip
    try:
        with tempfile.TemporaryDirectory() as folder:
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            start = time.perf_counter()
            done = subprocess.run(
                [sys.executable, "-m", "tlmat", *COMMAND, "--run-dir", f"{folder}/run",
                 "--cache-dir", f"{folder}/cache"],
                capture_output=True, text=True,
            )  # fmt: skip
            wall = time.perf_counter() - start
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()
    if done.returncode != 0:
        raise SystemExit(done.stdout + done.stderr)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {
        "busy_processes": busy,
        "wall_s": wall,
        "cpu_s": cpu,
        "involuntary_context_switches": after.ru_nivcsw - before.ru_nivcsw,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--busy", type=int, default=2, help="spinning processes beside it")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/contention.json"))
    args = parser.parse_args()
    quiet, busy = _run(0), _run(args.busy)
    result = {
        "command": " ".join(["python3", *sys.argv]),
        "tlmat_command": "tlmat " + " ".join(COMMAND),
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count()},
        "quiet": quiet,
        "busy": busy,
        "ratios": {
            "wall": busy["wall_s"] / quiet["wall_s"],
            "cpu": busy["cpu_s"] / quiet["cpu_s"],
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for name in ("quiet", "busy"):
        r = result[name]
        print(
            f"{name:5}: {r['wall_s']:.0f} s wall, {r['cpu_s']:.0f} CPU-s, "
            f"{r['involuntary_context_switches']} involuntary switches"
        )
    print(f"busy / quiet: wall {result['ratios']['wall']:.2f}×, CPU {result['ratios']['cpu']:.2f}×")


if __name__ == "__main__":
    main()
