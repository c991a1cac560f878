"""Benchmark: the epoch time of training with a frozen prefix computed once per
structure (tlmat.training.frozen) against computing it every epoch, on foundation
backbones: CHGNet 0.3.0 and SevenNet-0 head-only, and CHGNet with every block but the
last frozen (freeze-first-k, k = 3 of 4); the states kept in memory, or on disk beside the
graph cache (the tier used when they do not fit in memory). Castelli perovskites
(perov_5 train, heat_ref, eV per cell), through ``tlmat.training.fit`` (the path users
get: Lightning, validation every epoch).

An epoch's time is (wall time of a run of E epochs − that of a run of 1 epoch) / (E − 1):
the first epoch, which fills the cache, and the run's setup are left out of it (they are
reported apart: the first epoch costs what an uncached one does, plus the copy).

Run:  python benchmarks/frozen.py [--structures 200] [--epochs 4]
Writes benchmarks/results/frozen/summary.{json,md} (numbers, the command, machine).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from tlmat.data import Split, load_dataset
from tlmat.datasets import data_dir
from tlmat.training import TrainConfig, fit, frozen
from tlmat.transfer.sources import load_source, prepare_transfer

RESULTS = Path("benchmarks/results/frozen")
MEMORY = frozen.MAX_BYTES
CASES = [
    ("chgnet/0.3.0", "head-only", 1),
    ("chgnet/0.3.0", "freeze-first-k", 3),
    ("sevennet/0", "head-only", 1),
]


def timed(source, dataset, split, strategy: str, k: int, epochs: int, tier: str) -> float:
    """Wall seconds of one fit of ``epochs`` epochs (a fresh folder each time) with the
    frozen prefix computed every epoch (``uncached``), kept in memory (``cached``) or
    written to disk beside the graph cache and read back (``disk``: no memory for it;
    the states of an earlier run are removed first, so the first epoch writes them)."""
    frozen.MAX_BYTES = 0 if tier == "disk" else MEMORY
    for folder in dataset.graphs.cache.directory.parent.glob("frozen-*"):
        shutil.rmtree(folder)
    config = TrainConfig(
        target="heat_ref", epochs=epochs, batch_size=32, early_stopping_patience=None,
        cache_frozen=tier != "uncached", progress_bar=False, seed=0,
    )  # fmt: skip
    trained, chosen = prepare_transfer(strategy, source, "heat_ref", freeze_k=k)
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        fit(trained, dataset, split, config, Path(folder) / "run", chosen)
        return time.perf_counter() - start


def case(name: str, strategy: str, k: int, args) -> dict:
    source = load_source(name)
    path = data_dir() / "perov_5" / "train.csv.gz"
    dataset = load_dataset(
        path, source.model.graph_settings, ["heat_ref"], elements=source.model.elements,
        limit=args.structures,
    )  # fmt: skip
    n = len(dataset)
    cut = [int(0.7 * n), int(0.9 * n)]
    split = Split(*(np.asarray(part) for part in np.split(np.arange(n), cut)))
    label = strategy if strategy != "freeze-first-k" else f"freeze-first-{k}"
    row = {"source": name, "strategy": label}
    for tier in ("uncached", "cached", "disk"):
        one = timed(source, dataset, split, strategy, k, 1, tier)
        many = timed(source, dataset, split, strategy, k, args.epochs, tier)
        row[f"{tier}_first_s"] = one
        row[f"{tier}_epoch_s"] = (many - one) / (args.epochs - 1)
    row["speedup"] = row["uncached_epoch_s"] / row["cached_epoch_s"]
    row["disk_speedup"] = row["uncached_epoch_s"] / row["disk_epoch_s"]
    row["n_train"], row["n_val"] = len(split.train), len(split.val)
    print(row, flush=True)
    return row


def summary(rows: list[dict], command: str) -> str:
    lines = [
        "# A frozen prefix computed once: epoch time (perov_5, heat_ref)",
        "",
        f"Command: `{command}`; machine: {platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}; {rows[0]['n_train']} training and "
        f"{rows[0]['n_val']} validation structures, batch 32.",
        "",
        "| source | strategy | epoch, computed every epoch (s) | epoch, cached in memory (s) "
        "| speed-up | epoch, cached on disk (s) | speed-up "
        "| first epoch uncached / memory / disk (s, with setup) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['source']} | {r['strategy']} | {r['uncached_epoch_s']:.2f} | "
            f"{r['cached_epoch_s']:.3f} | {r['speedup']:.1f}× | "
            f"{r['disk_epoch_s']:.3f} | {r['disk_speedup']:.1f}× | "
            f"{r['uncached_first_s']:.1f} / {r['cached_first_s']:.1f} / "
            f"{r['disk_first_s']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--structures", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=4)
    args = parser.parse_args()
    rows = [case(name, strategy, k, args) for name, strategy, k in CASES]
    command = "python benchmarks/frozen.py " + " ".join(sys.argv[1:])
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "summary.json").write_text(json.dumps(rows, indent=1))
    (RESULTS / "summary.md").write_text(summary(rows, command))
    print(summary(rows, command))


if __name__ == "__main__":
    main()
