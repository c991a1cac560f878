"""Benchmark: the transfer strategies that keep what the source knew or train little of it
(l2-sp, lora, replay, moments+mlp) against full fine-tuning, head-only and scratch, on
Castelli perovskites (perov_5 heat_ref, eV per 5-atom cell; CDVAE train → N training and
100 validation structures per seed, CDVAE test → 1,000 test structures), from tlmat's
shipped Materials Project formation-energy CGCNN (``tlmat/mp-eform-cgcnn``, leakage-free
for perovskites: it never saw them). Each size is one ``tlmat compare`` (the same seeds,
splits and test set for every method; a paired t-test against scratch).

Run (each size's runs in benchmarks/out/strategies, kept out of git; a finished run is
read back, so the command resumes):

    python benchmarks/strategies.py --sizes 100 500 --seeds 3 --epochs 100

Writes benchmarks/results/strategies/summary.{md,json} (tables, the command, machine).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

from tlmat.experiments.comparison import compare
from tlmat.experiments.runspec import RunSpec

RESULTS = Path("benchmarks/results/strategies")
WORK = Path("benchmarks/out/strategies")
SOURCE = "tlmat/mp-eform-cgcnn"
METHODS = (
    "scratch", "full", "head-only", "l2-sp", "lora", "replay", "features+mlp", "moments+mlp",
)  # fmt: skip


def one(size: int, args) -> dict:
    """``tlmat compare`` at ``size`` training structures: its summary per method."""
    base = RunSpec(
        data="perov_5/train", test="perov_5/test", test_size=1000, train_size=size,
        val_size=100, source=SOURCE, run_dir=WORK / f"n{size}", cache_dir=args.cache_dir,
        training={"target": "heat_ref", "unit": "eV/cell", "epochs": args.epochs,
                  "progress_bar": False},
    )  # fmt: skip
    return compare(base, METHODS, args.seeds).summary


def table(size: int, rows: dict) -> list[str]:
    lines = [
        f"### N = {size}",
        "",
        "| method | test MAE (eV/cell), mean ± std | validation MAE | gain over scratch "
        "[95 % CI] | p (paired t) |",
        "|---|---|---|---|---|",
    ]
    for method, row in rows.items():
        gain = row.get("gain_vs_scratch")
        cells = [
            f"{row['mae_mean']:.4f} ± {row['mae_std']:.4f}",
            f"{row['val_mae_mean']:.4f}",
            f"{100 * gain[0]:.1f} % [{100 * gain[1]:.1f}, {100 * gain[2]:.1f}]" if gain else "—",
            f"{row['p_vs_scratch']:.3g}" if "p_vs_scratch" in row else "—",
        ]
        lines.append(f"| {method} | {' | '.join(cells)} |")
    return [*lines, ""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 500])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--cache-dir", type=Path, default=Path(".tlmat-cache"))
    args = parser.parse_args()
    results = {size: one(size, args) for size in args.sizes}
    command = "python benchmarks/strategies.py " + " ".join(sys.argv[1:])
    lines = [
        "# Strategies that keep the source, on perov_5 heat_ref",
        "",
        f"Command: `{command}`; machine: {platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}; source {SOURCE}; {args.seeds} seeds.",
        "",
    ]
    for size, rows in results.items():
        lines += table(size, rows)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "summary.json").write_text(json.dumps(results, indent=1))
    (RESULTS / "summary.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
