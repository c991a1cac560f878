"""Benchmark: do transferability scores, computed before any fine-tuning, rank the sources
as fine-tuning does? (issue 27, point 4)

For each Lee & Asahi grid in benchmarks/results (their fine-tuning results already there),
each source whose weights are at hand (shipped or published checkpoints, and random
weights standing for scratch) is scored on every seed's training set at the largest size
— LogME and the 5-fold ridge probe's MAE on its crystal embedding
(:mod:`tlmat.transfer.transferability`) — and set beside the test MAE fine-tuning from it
reached (``full [source]``; ``scratch`` for random weights). Spearman's ρ over the
sources of each target, and over every (target, source) pair of the three targets with
each target's MAEs divided by its scratch MAE.

Run:  python3 benchmarks/transferability.py [--cache-dir .tlmat-cache]
Writes benchmarks/results/transferability.json and .md (the command and machine in them).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tlmat.evaluation.report import load_runs  # noqa: E402
from tlmat.experiments.benchmark import BenchmarkConfig, grid_data  # noqa: E402
from tlmat.machine import describe  # noqa: E402
from tlmat.models.registry import model_config  # noqa: E402
from tlmat.transfer.sources import fresh_model, load_source  # noqa: E402
from tlmat.transfer.transferability import transferability  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
TASKS = ("lee-asahi-bandgap", "lee-asahi-bulk", "lee-asahi-dielectric")
RANDOM = "random weights (scratch)"


def sources_of(config: BenchmarkConfig) -> dict[str, object]:
    """Sources with weights at hand: checkpoints by name, and random weights."""
    found = {RANDOM: None}
    for name, source in config.sources.items():
        if source.checkpoint is not None:
            found[name] = source.checkpoint
    return found


def outcome(runs, name: str, size: int) -> float | None:
    """Mean test MAE of fine-tuning from ``name`` (scratch for random weights)."""
    methods = {"scratch"} if name == RANDOM else {f"full [{name}]", f"full [{name}†]"}
    picked = runs[(runs["size"] == size) & runs["method"].isin(methods)]
    return float(picked["mae"].mean()) if len(picked) else None


def score_task(task: str, cache: Path | None) -> list[dict]:
    root = RESULTS / task
    config = BenchmarkConfig.from_yaml(root / "benchmark.yaml")
    runs, size = load_runs(root), max(config.sizes)
    trains = {
        seed: json.loads(
            (root / "common" / f"n{size}-s{seed}" / "scratch" / "result.json").read_text()
        )["split_ids"]["train"]
        for seed in config.seeds
    }
    rows = []
    for name, checkpoint in sources_of(config).items():
        start = time.perf_counter()
        scores = []
        for seed in config.seeds:
            source = (
                fresh_model(model_config(config.model), seed)
                if checkpoint is None
                else load_source(checkpoint)
            )
            # the structures as this source's graphs
            settings = source.model.graph_settings
            dataset, _ = grid_data(config, cache, settings, every_model=False)
            position = {structure_id: k for k, structure_id in enumerate(dataset.ids)}
            train = [position[i] for i in trains[seed]]
            scores.append(transferability(source, dataset, config.target, train, seed=seed))
        rows.append({
            "task": task, "source": name, "size": size,
            "logme": float(np.mean([s.logme for s in scores])),
            "probe_mae": float(np.mean([s.probe_mae for s in scores])),
            "finetuned_mae": outcome(runs, name, size),
            "seconds": time.perf_counter() - start,
        })  # fmt: skip
        print(f"{task} {name}: {rows[-1]}", flush=True)
    scratch = next(r["finetuned_mae"] for r in rows if r["source"] == RANDOM)
    for row in rows:
        row["relative_mae"] = row["finetuned_mae"] / scratch if row["finetuned_mae"] else None
    return rows


def spearman(rows: list[dict], key: str, sign: float) -> float:
    """ρ between ``sign`` × score and the fine-tuned relative MAE (1: perfect ranking)."""
    from scipy.stats import spearmanr

    kept = [r for r in rows if r["relative_mae"] is not None]
    return float(spearmanr([sign * r[key] for r in kept], [r["relative_mae"] for r in kept])[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", type=Path, default=REPO / ".tlmat-cache")
    args = parser.parse_args()
    rows = [row for task in TASKS for row in score_task(task, args.cache_dir)]
    # a higher LogME and a lower probe MAE should mean a lower fine-tuned MAE
    summary = {
        task: {"logme": spearman(part, "logme", -1.0), "probe": spearman(part, "probe_mae", 1.0)}
        for task in TASKS
        if (part := [r for r in rows if r["task"] == task])
    }
    summary["all"] = {
        "logme": spearman(rows, "logme", -1.0),
        "probe": spearman(rows, "probe_mae", 1.0),
    }
    result = {
        "command": " ".join(["python3", *sys.argv]),
        "machine": describe(),
        "rows": rows,
        "spearman": summary,
    }
    (RESULTS / "transferability.json").write_text(json.dumps(result, indent=1))
    lines = [
        "# Transferability before fine-tuning against fine-tuning itself",
        "",
        "Each source scored on the training sets of the largest size (mean over seeds): "
        "LogME (nats per structure, higher: better) and the 5-fold ridge probe's MAE on "
        "its crystal embedding; fine-tuned: test MAE of full fine-tuning from it (scratch "
        "for random weights), and that over scratch's. Command: "
        f"`{result['command']}`.",
        "",
        "| target | source | LogME | probe MAE | fine-tuned MAE | / scratch |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        tuned = f"{r['finetuned_mae']:.4f}" if r["finetuned_mae"] else "—"
        rel = f"{r['relative_mae']:.3f}" if r["relative_mae"] else "—"
        lines.append(f"| {r['task']} | {r['source']} | {r['logme']:.3f} | {r['probe_mae']:.4f} "
                     f"| {tuned} | {rel} |")  # fmt: skip
    lines += ["", "Spearman ρ between each score and the fine-tuned MAE (1: the score ranks "
              "the sources as fine-tuning does):", "", "| over | LogME | probe |",
              "|---|---|---|"]  # fmt: skip
    lines += [f"| {k} | {v['logme']:.2f} | {v['probe']:.2f} |" for k, v in summary.items()]
    (RESULTS / "transferability.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
