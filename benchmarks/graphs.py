"""Benchmark: structure parsing (CIF, POSCAR), graph building (vs the original CGCNN
loader), cache loading, peak memory, line graphs — on real perovskite and carbon structures.

Run:  python benchmarks/graphs.py [--n 5000] [--out benchmarks/results/graphs.json]

The original CGCNN approach (``Structure.get_all_neighbors(8)`` per structure, sort by
distance, keep 12) is timed in the same run on the same structures; the ratio is what
we report. Numbers and the command line are written to the output file.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pymatgen.core
import torch

import tlmat
from tlmat.data import load_dataset
from tlmat.datasets import data_dir
from tlmat.graphs import GraphCache, GraphSettings, graph_or_problem
from tlmat.io import read_records


def rate(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else float("inf")


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def original_cgcnn(structure, radius: float = 8.0, max_num_nbr: int = 12):
    """The neighbour step of cgcnn/data.py (CIFData.__getitem__)."""
    all_nbrs = structure.get_all_neighbors(radius, include_index=True)
    all_nbrs = [sorted(nbrs, key=lambda x: x[1]) for nbrs in all_nbrs]
    nbr_idx, nbr_dist = [], []
    for nbr in all_nbrs:
        nbr_idx.append([x[2] for x in nbr[:max_num_nbr]])
        nbr_dist.append([x[1] for x in nbr[:max_num_nbr]])
    return np.array(nbr_idx), np.array(nbr_dist)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_source(path: Path, n: int, baseline_n: int) -> dict:
    result: dict = {"source": str(path.relative_to(path.parents[1]))}
    records, seconds = timed(lambda: read_records(path, targets=[], limit=n))
    records = records.records
    result["structures"] = len(records)
    result["structure_format"] = "poscar" if "all_structures" in path.name else "cif"
    result["parse_per_s"] = rate(len(records), seconds)
    sites = [len(r.structure) for r in records]
    result["sites_per_cell"] = [min(sites), float(np.median(sites)), max(sites)]

    settings = GraphSettings.preset("cgcnn")
    _, seconds = timed(lambda: [original_cgcnn(r.structure) for r in records[:baseline_n]])
    result["original_cgcnn_per_s"] = rate(baseline_n, seconds)
    graphs, seconds = timed(lambda: [graph_or_problem(r, settings) for r in records])
    result["tlmat_graph_per_s"] = rate(len(records), seconds)
    result["graph_speedup_vs_original"] = (
        result["tlmat_graph_per_s"] / result["original_cgcnn_per_s"]
    )
    result["edges_per_graph"] = float(np.mean([g.num_edges for g in graphs]))

    line = GraphSettings.preset("alignn")
    subset = records[: min(len(records), 2000)]
    line_graphs, seconds = timed(lambda: [graph_or_problem(r, line) for r in subset])
    result["line_graph_per_s"] = rate(len(subset), seconds)
    result["triplets_per_graph"] = float(np.mean([g.line_index.shape[1] for g in line_graphs]))

    with tempfile.TemporaryDirectory() as tmp:
        _, seconds = timed(lambda: GraphCache(tmp, settings).graphs(records))
        result["cache_build_and_store_per_s"] = rate(len(records), seconds)
        # the user's path: a second load_dataset of the same file parses nothing
        _, first = timed(lambda: load_dataset(path, settings, [], cache_dir=tmp, limit=n))
        result["load_dataset_first_per_s"] = rate(len(records), first)

        def second_run():
            dataset = load_dataset(path, settings, [], cache_dir=tmp, limit=n)
            for start in range(0, len(dataset), 256):
                dataset.batch(range(start, min(start + 256, len(dataset))))
            return dataset

        dataset, seconds = timed(second_run)
        assert dataset.from_cache
        result["cache_load_per_s"] = rate(len(dataset), seconds)
        result["cache_load_vs_graph_build"] = (
            result["cache_load_per_s"] / result["tlmat_graph_per_s"]
        )
        result["cache_load_vs_parse_and_build"] = (
            result["cache_load_per_s"] / result["load_dataset_first_per_s"]
        )
        result["cache_bytes_per_graph"] = sum(
            f.stat().st_size for f in Path(tmp).rglob("*.npy")
        ) / len(records)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5000, help="structures per source")
    parser.add_argument(
        "--baseline-n",
        type=int,
        default=500,
        help="structures timed with the (slow) original CGCNN loader",
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/graphs.json"))
    args = parser.parse_args()
    root = data_dir()
    if root is None:
        sys.exit("no datasets: set TLMAT_DATA_DIR")
    sources = [
        root / "perov_5" / "train.csv.gz",
        root / "carbon_24" / "carbon_24_all_structures.csv.gz",
    ]
    results = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpu_count": __import__("os").cpu_count(),
            "torch": torch.__version__,
            "pymatgen": pymatgen.core.__version__,
            "tlmat": tlmat.__version__,
        },
        "sources": [bench_source(p, args.n, args.baseline_n) for p in sources],
        "peak_rss_mib": peak_rss_mib(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    for source in results["sources"]:
        print(
            f"\n{source['source']}  ({source['structures']} structures, "
            f"sites {source['sites_per_cell']})"
        )
        for key, value in source.items():
            if key.endswith(("_per_s", "speedup_vs_original")) or key.startswith("cache_"):
                print(f"  {key:34s} {value:12,.1f}")
    print(f"\npeak RSS {results['peak_rss_mib']:.0f} MiB   → {args.out}")


if __name__ == "__main__":
    main()
