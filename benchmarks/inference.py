"""Benchmark: end-to-end prediction rates — `tlmat predict` on 11,356 Castelli perovskites
(perov_5 train) and on all 18,928 (train, val and test) from a cold and a warm graph
cache, each in a fresh process (start-up, reading, graphs, model, CSV), and
`tlmat.load_model(...).predict` of pymatgen structures in Python — beside the model's
forward pass alone on the same graphs. The start-up (importing torch and PyG, about 4 s
here) is paid once per command, so the rate grows with the number of structures.

Run:  python benchmarks/inference.py [--out benchmarks/results/inference.json]

Goal (issue 10): ≥ 2,000 structures/s end to end on a warm cache; a cold run bounded by
parsing, which runs on every core.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODEL = "cgcnn/formation-energy-per-atom"
DATA = "perov_5/train"
ALL = ["perov_5/train", "perov_5/val", "perov_5/test"]


def predict_seconds(cache: Path, out: Path, data: list[str] | None = None) -> float:
    command = ["tlmat", "predict", MODEL, *(data or [DATA]), "-o", str(out), "--cache-dir",
               str(cache), "--overwrite"]  # fmt: skip
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/inference.json"))
    args = parser.parse_args()

    import torch

    import tlmat
    from tlmat.data import load_dataset
    from tlmat.data.loader import GraphLoader, inference_batch_size
    from tlmat.datasets import resolve
    from tlmat.io import read_records

    torch.set_num_threads(os.cpu_count() or 1)
    work = Path(tempfile.mkdtemp(prefix="tlmat-inference-"))
    try:
        cold = predict_seconds(work / "cache", work / "cold.csv")
        warm = min(predict_seconds(work / "cache", work / "warm.csv") for _ in range(3))
        n = len((work / "warm.csv").read_text().splitlines()) - 1
        predict_seconds(work / "cache", work / "all.csv", ALL)  # the other splits, cold
        warm_all = min(predict_seconds(work / "cache", work / "all.csv", ALL) for _ in range(3))
        n_all = len((work / "all.csv").read_text().splitlines()) - 1

        model = tlmat.load_model(MODEL)
        dataset = load_dataset(
            resolve(DATA), model.trained.model.graph_settings, cache_dir=work / "cache"
        )
        batches = list(GraphLoader(dataset, None, inference_batch_size(dataset)))
        net = model.trained.model.eval()
        start = time.perf_counter()
        with torch.no_grad():
            for batch in batches:
                net(batch)
        forward = time.perf_counter() - start

        structures = [r.structure for r in read_records(resolve(DATA), limit=2000)]
        start = time.perf_counter()
        model.predict(structures)
        python = time.perf_counter() - start
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count()},
        "model": MODEL,
        "data": f"{DATA} ({n} structures)",
        "tlmat_predict_cold_per_s": n / cold,
        "tlmat_predict_warm_per_s": n / warm,
        "tlmat_predict_cold_seconds": cold,
        "tlmat_predict_warm_seconds": warm,
        "all_splits": f"{', '.join(ALL)} ({n_all} structures)",
        "tlmat_predict_all_splits_warm_per_s": n_all / warm_all,
        "tlmat_predict_all_splits_warm_seconds": warm_all,
        "forward_pass_only_per_s": n / forward,
        "python_predict_2000_structures_per_s": 2000 / python,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    for key, value in results.items():
        print(f"{key}: {value:.1f}" if isinstance(value, float) else f"{key}: {value}")
    print(f"→ {args.out}")


if __name__ == "__main__":
    main()
