"""Scratch against transfer strategies from one source, repeated over seeds, on one
held-out test set: a list of :class:`~tlmat.experiments.runspec.RunSpec`, one per seed and
method, each carried out by :func:`~tlmat.experiments.runspec.run`.

The folder is a results grid that ``tlmat report`` reads::

    comparison.json           per method: MAE mean ± std over seeds, p-value vs scratch
    n<N>-s<seed>/split.json   the seed's split (ids), which every method's spec names
    n<N>-s<seed>/zero-shot.json
    n<N>-s<seed>/<method>/    one run folder (run.yaml: its RunSpec)

Running it again reuses the finished runs and resumes an interrupted one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tlmat.data.splits import Split
from tlmat.experiments.runspec import (
    RunModels,
    RunSpec,
    Say,
    common_split,
    logged,
    prepared_data,
    run,
    split_for,
)
from tlmat.training.fit import folder_lock
from tlmat.training.rundir import claim, record, replaced, write_json

#: the default methods: the reference (scratch), the two strategies that win most often
#: in the papers, and frozen source features with a random forest (fast, robust)
DEFAULT_STRATEGIES = ("scratch", "full", "freeze-embedding", "features+rf")

#: called before each run with (what runs, runs done, runs in all)
Progress = Callable[[str, int, int], None]


@dataclass
class ComparisonResult:
    """Per method, the test scores of every seed, their summary (mean ± std, p-value
    against scratch), the last seed's split and the source's unit if not the target's."""

    rows: dict[str, list[dict[str, float]]]
    summary: dict[str, dict]
    split: Split
    source_unit: str | None
    run_dir: Path


def comparison_specs(base: RunSpec, strategies: tuple[str, ...], seed: int, job: Path):
    """The runs of one seed: each strategy on the seed's split (``job/split.json``)."""
    return [
        base.with_seed(
            seed,
            strategy=name,
            model=base.model if name == "scratch" else None,
            run_dir=job / name,
            split=job / "split.json",
            train_size=None,
            val_size=None,
            test_size=None,
            exclude_ids=None,
            zero_shot=False,
        )
        for name in strategies
    ]


def compare(
    base: RunSpec,
    strategies: tuple[str, ...] = DEFAULT_STRATEGIES,
    seeds: int = 3,
    say: Say | None = None,
    progress: Progress | None = None,
) -> ComparisonResult:
    """Run every strategy of ``strategies`` for seeds ``base.training.seed`` … + ``seeds``
    − 1 (new training draws, validation sets and initialisations; one test set) from
    ``base.source``; ``base.model``, if given, is the architecture of the scratch row."""
    say, root = say or logged, base.run_dir
    comparison_specs(base, strategies, base.training.seed, root)  # checked before any run
    with folder_lock(root):
        claim(root, "comparison.json")
        models = RunModels.of(base)
        rows: dict[str, list[dict[str, float]]] = {}
        timer = _Timer(seeds * len(strategies), say)
        for seed in range(base.training.seed, base.training.seed + seeds):
            split, job = _seed_split(base, models, seed, strategies, say)
            _zero_shot(base, models, split, job, rows)
            for spec in comparison_specs(base, strategies, seed, job):
                if progress is not None:
                    progress(f"seed {seed}: {spec.strategy}", timer.done, timer.total)
                started = time.perf_counter()
                result = run(spec, say if timer.done == 0 else _quiet)
                timer.tick(time.perf_counter() - started)
                rows.setdefault(result.label, []).append(result.test)
        summary = comparison_rows(rows, "scratch" if "scratch" in rows else next(iter(rows)))
        write_json(root / "comparison.json", summary)
    source = models.source.target.unit if models.source is not None else None
    unit = source if source != base.training.unit else None
    return ComparisonResult(rows, summary, split, unit, root)


def _quiet(message) -> None:
    """Runs after the first say nothing new (the same data and stopping rule)."""


def _seed_split(
    base: RunSpec, models: RunModels, seed: int, strategies: tuple[str, ...], say: Say
) -> tuple[Split, Path]:
    """The split of ``seed`` (restricted to the materials the scratch architecture can
    use, when it reads other graphs), saved as its job folder's ``split.json``."""
    dataset, parts = prepared_data(base, models.source_or_model, say)
    split = split_for(base, dataset, parts, seed, say if seed == base.training.seed else None)
    if models.source is not None and models.scratch is not None:
        from tlmat.models.registry import build

        twin = build(models.scratch)
        if twin.graph_settings != models.source.model.graph_settings:
            other, _ = prepared_data(base, twin, say)
            split, _, dropped = common_split(dataset, split, other)
            if dropped and seed == base.training.seed:
                say(f"{dropped} structures left out: the scratch model cannot use them")
    job = base.run_dir / f"n{len(split.train)}-s{seed}"
    claim(base.run_dir, job.name)
    claim(job, "split.json", "zero-shot.json", *strategies)
    with replaced(job / "split.json") as path:
        split.save(path, dataset.ids)
    return split, job


def _zero_shot(base: RunSpec, models: RunModels, split: Split, job: Path, rows) -> None:
    """The source's own predictions on the seed's test set, raw and recalibrated."""
    from tlmat.experiments.runs import zero_shot

    if models.source is None:
        return
    dataset, _ = prepared_data(base, models.source.model, _quiet)
    zero = zero_shot(models.source, dataset, split, base.training.target)
    record(job, "zero-shot.json")
    write_json(job / "zero-shot.json", zero)
    for label, metrics in zero.items():
        rows.setdefault(label, []).append(metrics)


class _Timer:
    """Counts finished runs; once, says how long the rest will take when it is long."""

    def __init__(self, total: int, say: Say, limit: float = 600.0):
        self.total, self.say, self.limit = total, say, limit
        self.done, self.spent, self.warned = 0, 0.0, False

    def tick(self, seconds: float) -> None:
        self.done += 1
        self.spent += seconds
        left = self.total - self.done
        per_run = self.spent / self.done
        if not self.warned and left * per_run > self.limit:
            self.warned = True
            self.say(
                f"note: at {per_run:.0f} s per method, the {left} runs left take about "
                f"{left * per_run / 60:.0f} min; --seeds, --strategies or --epochs make it "
                "shorter"
            )


def comparison_rows(
    rows: dict[str, list[dict[str, float]]], baseline: str = "scratch"
) -> dict[str, dict]:
    """Per method: MAE, RMSE and R² as mean and sample std (ddof = 1) over seeds, and a
    paired t-test of the MAE against ``baseline`` over the same seeds."""
    from tlmat.evaluation.statistics import paired_t_test

    base = [m["mae"] for m in rows.get(baseline, [])]
    summary = {}
    for label, metrics in rows.items():
        mae = np.array([m["mae"] for m in metrics])
        entry = {
            "mae_mean": float(mae.mean()),
            "mae_std": float(mae.std(ddof=1)) if len(mae) > 1 else float("nan"),
            "rmse_mean": float(np.mean([m["rmse"] for m in metrics])),
            "r2_mean": float(np.mean([m["r2"] for m in metrics])),
            "n_seeds": len(mae),
            "n_test": int(metrics[0]["n"]),
            "per_seed": metrics,
        }
        if label != baseline and len(mae) >= 2 and len(base) == len(mae):
            test = paired_t_test(mae, np.array(base))
            entry["p_vs_" + baseline] = float(test.p_value)
        summary[label] = entry
    return summary
