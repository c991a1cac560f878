"""Benchmark: the first read of a dataset (parse → checks → neighbour search → store),
tlmat against pymatgen's CIF parser plus the original CGCNN neighbour step
(``Structure.get_all_neighbors(8)``), side by side in one run on the same structures.

Run:  python benchmarks/first_read.py [--n N] [--repeats 3] [--out FILE.json]

For each source the first ``--n`` structures (default: see ``SOURCES``) are read four
ways, each into an empty graph cache: the reference (pymatgen parse, then
``get_all_neighbors(8)``, one core, as the original CGCNN loader does), tlmat's pymatgen
path (``fast=False``) and tlmat's one-pass path (``fast=True``) on one process and on
every core. The two tlmat paths must give identical datasets (ids, formulas, targets,
skips, graphs); the script fails otherwise. Rates are structures per second of wall
time; the ratio to the reference is what we report. Each measurement is repeated
(``--repeats``, interleaved) and the fastest run is reported, every run beside it: a
shared 2-core VM varies by ±30 % from minute to minute. Time it on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pymatgen.core

import tlmat
from tlmat.data import load_dataset
from tlmat.datasets import data_dir
from tlmat.graphs import GraphSettings
from tlmat.io.parse import structure_from_text
from tlmat.machine import granted_cpus

#: source → (file, structure column, structures read: the whole perov_5 training file;
#: mp_cgcnn_36k's reference alone would take 9 minutes a run on all 36,737)
SOURCES = {
    "perov_5": ("perov_5/train.csv.gz", "cif", 11356),
    "mp_cgcnn_36k": ("mp_cgcnn_36k/mp_cgcnn_36k.csv.gz", "cif", 5000),
}


def reference(texts: list[str]) -> float:
    """Seconds for pymatgen's CIF parser and ``get_all_neighbors(8)`` on every text."""
    start = time.perf_counter()
    for text in texts:
        structure = structure_from_text(text, "cif")
        structure.get_all_neighbors(8.0, include_index=True)
    return time.perf_counter() - start


def read(path: Path, n: int, fast: bool, workers: int, settings: GraphSettings):
    with tempfile.TemporaryDirectory() as cache:
        start = time.perf_counter()
        dataset = load_dataset(
            path, settings, None, cache_dir=cache, fast=fast, workers=workers, limit=n
        )
        seconds = time.perf_counter() - start
        graphs = [dataset.graphs.arrays(i) for i in range(len(dataset))]
        bytes_used = sum(f.stat().st_size for f in Path(cache).rglob("*") if f.is_file())
    skips = sorted((p.where, p.reason.value, p.detail) for p in dataset.log.problems)
    return dataset, graphs, skips, seconds, bytes_used


def identical(a, b) -> bool:
    same = a[0].ids == b[0].ids and a[0].formulas == b[0].formulas and a[2] == b[2]
    same &= all(np.array_equal(v, b[0].targets[k], equal_nan=True) for k, v in a[0].targets.items())
    return same and all(x.equals(y) for x, y in zip(a[1], b[1], strict=True))


def bench(name: str, n: int, settings: GraphSettings, repeats: int) -> dict:
    relative, column, n = SOURCES[name][0], SOURCES[name][1], n or SOURCES[name][2]
    path = data_dir() / relative
    texts = list(pd.read_csv(path, usecols=[column], nrows=n)[column])
    cores = granted_cpus()
    result: dict = {"source": relative, "structures": len(texts), "cores": cores}
    rates: dict[str, list[float]] = {}
    for _ in range(repeats):  # interleaved, so that a slow minute hits every method
        rates.setdefault("reference", []).append(len(texts) / reference(texts))
        slow = read(path, n, False, 1, settings)
        one = read(path, n, True, 1, settings)
        every = read(path, n, True, cores, settings)
        if not (identical(one, slow) and identical(every, slow)):
            raise SystemExit(f"{name}: the one-pass read differs from the pymatgen path")
        for label, run in (
            ("tlmat_pymatgen_path_1_core", slow),
            ("tlmat_one_pass_1_core", one),
            ("tlmat_one_pass_all_cores", every),
        ):
            rates.setdefault(label, []).append(len(texts) / run[3])
    result["identical_to_pymatgen_path"] = True
    result["graphs"] = len(every[0])
    result["skipped"] = every[0].log.n_skipped
    for label, values in rates.items():
        result[f"{label}_per_s"] = max(values)
        result[f"{label}_runs_per_s"] = [round(v, 1) for v in values]
    best = result["reference_per_s"]
    result["speedup_vs_reference"] = result["tlmat_one_pass_all_cores_per_s"] / best
    result["speedup_1_core_vs_reference"] = result["tlmat_one_pass_1_core_per_s"] / best
    result["cache_bytes_per_graph"] = every[4] / max(len(every[0]), 1)
    print(json.dumps(result, indent=1), flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=None, help="structures per source")
    parser.add_argument("--sources", nargs="+", default=list(SOURCES))
    parser.add_argument("--repeats", type=int, default=3, help="runs of each measurement")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/first_read.json"))
    args = parser.parse_args()
    if data_dir() is None:
        raise SystemExit("set TLMAT_DATA_DIR to the shared data folder")
    settings = GraphSettings(cutoff=8.0, max_neighbors=12)  # CGCNN's graph
    report = {
        "command": "python3 " + " ".join(sys.argv),
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpu_count": os.cpu_count(),
            "pymatgen": pymatgen.core.__version__,
            "tlmat": tlmat.__version__,
        },
        "graph_settings": settings.model_dump(),
        "sources": [bench(name, args.n, settings, args.repeats) for name in args.sources],
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"→ {args.out}")


if __name__ == "__main__":
    main()
