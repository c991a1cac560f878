"""Benchmark: training speed and peak memory of every registered architecture on the same
real perovskites, and tlmat against the reference packages at equal size in the same run.

Run:  python benchmarks/models.py [--train 1000] [--val 500] [--epochs 3]
                                  [--out benchmarks/results/models.json]

Measured, each in a fresh subprocess (so peak memory is the architecture's own):
- ``tlmat``: seconds per training epoch through ``tlmat.training.fit`` (the path users get:
  Lightning, validation every epoch) and peak RSS, for each architecture at its default
  size and at the sizes the model-zoo grids train (``*-small`` presets are not timed);
- ``loop``: seconds per epoch of a plain forward/backward/Adam loop over the same batches,
  for tlmat's model and for the reference at the same size in the same process:
  PyG's ``torch_geometric.nn.models.SchNet`` (fed tlmat's periodic edges) and the
  ``alignn`` package's pure-torch ALIGNN (fed its own graphs);
- graph construction: tlmat's builder with line graphs against ``alignn``'s
  ``build_pure_torch_graph`` on the same structures.
Ratios are reference time / tlmat time (> 1: tlmat is faster).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import tlmat
from tlmat.data import Split, load_dataset
from tlmat.datasets import data_dir
from tlmat.models import registry
from tlmat.training import TrainConfig, fit
from tlmat.transfer.sources import fresh_model

#: what is timed through fit(): architecture defaults and the zoo grids' sizes
CONFIGS = ["cgcnn", "cgcnn-mp", "schnet", "schnet-arch2", "alignn", "alignn-zoo", "cgat"]


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def perovskites(settings, n: int, cache: Path):
    path = data_dir() / "perov_5" / "train.csv.gz"
    return load_dataset(path, settings, ["heat_ref"], cache_dir=cache, limit=n)


def time_fit(spec: str, n_train: int, n_val: int, epochs: int, cache: Path) -> dict:
    """Seconds per epoch and peak memory of tlmat's training path for one model."""
    torch.set_num_threads(2)
    trained = fresh_model(registry.model_config(spec), seed=0)
    model = trained.model
    start = time.perf_counter()
    dataset = perovskites(model.graph_settings, n_train + n_val, cache)
    graphs_s = time.perf_counter() - start
    split = Split(np.arange(n_train), np.arange(n_train, n_train + n_val), np.arange(0))
    config = TrainConfig(
        target="heat_ref", epochs=epochs, early_stopping_patience=None, progress_bar=False
    )
    with tempfile.TemporaryDirectory() as run_dir:
        result = fit(trained, dataset, split, config, run_dir)
    return {
        "model": spec,
        "architecture": model.architecture,
        "parameters": sum(p.numel() for p in model.parameters()),
        "graph_seconds": graphs_s,
        "seconds_per_epoch": result.seconds / max(result.epochs, 1),
        "peak_rss_mib": peak_rss_mib(),
    }


def subprocess_json(*args: str) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, *args], capture_output=True, text=True, check=False
    )
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr else "failed"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=1000)
    parser.add_argument("--val", type=int, default=500)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/models.json"))
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "tlmat-bm")
    args = parser.parse_args()
    if args.one:
        print(json.dumps(time_fit(args.one, args.train, args.val, args.epochs, args.cache)))
        return
    sizes = ["--train", str(args.train), "--val", str(args.val), "--epochs", str(args.epochs)]
    common = [*sizes, "--cache", str(args.cache)]
    # graphs first, untimed, so that every run below reads a warm cache
    for spec in CONFIGS:
        perovskites(registry.model_config(spec).graph_settings(), args.train + args.val, args.cache)
    rows = [subprocess_json("--one", spec, *common) for spec in CONFIGS]
    results = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpu_count": __import__("os").cpu_count(),
            "torch": torch.__version__,
            "tlmat": tlmat.__version__,
        },
        "data": f"perov_5/train.csv.gz: first {args.train} train + {args.val} validation",
        "fit": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    for row in rows:
        print(row)
    print(f"→ {args.out}")


if __name__ == "__main__":
    main()
