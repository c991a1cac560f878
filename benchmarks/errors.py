"""Benchmark: how long a mistake takes to be said — a misspelt model, source, strategy,
candidate, data file, training setting or YAML key, a number out of range — each in a
fresh process, beside ``python -c "import torch"`` and ``tlmat models``.

Run:  python benchmarks/errors.py [--repeats 3] [--out benchmarks/results/errors.json]

Each command runs ``repeats`` times; the table gives the fastest and the median wall time
(seconds) and the first line said. Goal (issue 28): every mistake said within 1 s, with a
"did you mean" for every kind of name; ``tlmat models`` in about a second.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tlmat.datasets import resolve


def _cases(data: str, folder: Path) -> dict[str, list[str]]:
    bad_yaml = folder / "bad.yaml"
    bad_yaml.write_text("epochs: 3\ntraining:\n  batchsize: 4\n")
    run = ["-t", "heat_ref", "--run-dir", str(folder / "run")]
    return {
        "unknown --model": ["train", data, *run, "--model", "cgcn"],
        "missing data file": ["train", data + "x", *run],
        "unknown --strategy": ["finetune", data, *run, "--strategy", "ful"],
        "unknown --source": ["finetune", data, *run, "--source", "chgnet/0.3"],
        "unknown --strategies entry": ["compare", data, *run, "--strategies", "scratch,lroa"],
        "unknown fit --candidate": ["fit", data, *run, "--candidate", "features+mpl [sevennet/0]"],
        "unknown --loss": ["train", data, *run, "--loss", "l3"],
        "--epochs out of range": ["train", data, *run, "--epochs", "0"],
        "unknown YAML key": ["train", data, *run, "--config", str(bad_yaml)],
        "missing --config file": ["train", data, *run, "--config", str(folder / "no.yaml")],
        "unknown predict model": ["predict", "tlmat/mp-eform", data],
        "tlmat models (no mistake)": ["models"],
    }


def _time(argv: list[str], repeats: int) -> dict:
    times, said = [], ""
    for _ in range(repeats):
        start = time.perf_counter()
        done = subprocess.run(argv, capture_output=True, text=True)
        times.append(time.perf_counter() - start)
        said = " ".join((done.stdout + done.stderr).split())[:160]
    return {"min": min(times), "median": statistics.median(times), "said": said}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/errors.json"))
    args = parser.parse_args()
    data = str(resolve("perov_5/val"))
    seconds = {'python -c "import torch"': _time([sys.executable, "-c", "import torch"], 1)}
    with tempfile.TemporaryDirectory() as folder:
        for name, argv in _cases(data, Path(folder)).items():
            seconds[name] = _time([sys.executable, "-m", "tlmat", *argv], args.repeats)
    result = {
        "command": " ".join(["python3", *sys.argv]),
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count()},
        "repeats": args.repeats,
        "seconds": seconds,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    width = max(map(len, seconds))
    for name, t in seconds.items():
        print(f"{name:<{width}}  {t['min']:.2f} s (median {t['median']:.2f} s)  {t['said'][:70]}")


if __name__ == "__main__":
    main()
