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
    quiet,
    split_for,
)
from tlmat.experiments.side_by_side import run_all
from tlmat.progress import Update
from tlmat.training.fit import folder_lock
from tlmat.training.rundir import claim, record, replaced, write_json

#: the default methods: the reference (scratch), the two strategies that win most often
#: in the papers, and frozen source features with a random forest (fast, robust)
DEFAULT_STRATEGIES = ("scratch", "full", "freeze-embedding", "features+rf")


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
    progress: Update | None = None,
    folds: int | None = None,
) -> ComparisonResult:
    """Run every strategy of ``strategies`` for seeds ``base.training.seed`` … + ``seeds``
    − 1 (new training draws, validation sets and initialisations; one test set) from
    ``base.source``; ``base.model``, if given, is the architecture of the scratch row.

    With ``folds`` K: repeated K-fold cross-validation inside ``base.data`` instead,
    ``seeds`` repeats × K folds, each fold the test set of its job; the p-values and
    the gains' intervals then use the corrected resampled t-test (Nadeau & Bengio),
    since the folds' training sets overlap."""
    say, root = say or logged, base.run_dir
    comparison_specs(base, strategies, base.training.seed, root)  # checked before any run
    with folder_lock(root):
        claim(root, "comparison.json")
        models = RunModels.of(base)
        rows: dict[str, list[dict[str, float]]] = {}
        specs: list[RunSpec] = []
        for seed, split, job in _jobs(base, models, strategies, seeds, folds, say):
            _zero_shot(base, models, split, job, rows)
            specs += comparison_specs(base, strategies, seed, job)
        timer = _Timer(len(specs), say)
        for result in run_all(specs, say, progress, lambda _: timer.tick()):
            # the validation MAE chooses the best method; the test MAE only reports it
            scores = {**result.test, "val_mae": result.val_mae}
            rows.setdefault(result.label, []).append(scores)
        sizes = (len(split.train) + len(split.val), len(split.test)) if folds else None
        baseline = "scratch" if "scratch" in rows else next(iter(rows))
        summary = comparison_rows(rows, baseline, sizes)
        write_json(root / "comparison.json", summary)
    source = models.source.target.unit if models.source is not None else None
    unit = source if source != base.training.unit else None
    return ComparisonResult(rows, summary, split, unit, root)


def _jobs(base, models: RunModels, strategies, seeds: int, folds: int | None, say: Say):
    """(training seed, split, job folder) of every job: one per seed, or per repeat and
    fold with ``folds``."""
    if folds is None:
        for seed in range(base.training.seed, base.training.seed + seeds):
            yield (seed, *_seed_split(base, models, seed, strategies, say))
        return
    if base.test is not None or base.val is not None or base.split is not None:
        raise ValueError("folds cross-validate inside the data: give no test, val or split")
    for repeat in range(seeds):
        for split, job in _fold_splits(base, models, repeat, folds, strategies, say):
            yield base.training.seed + repeat, split, job


def _seed_split(
    base: RunSpec, models: RunModels, seed: int, strategies: tuple[str, ...], say: Say
) -> tuple[Split, Path]:
    """The split of ``seed`` (restricted to the materials the scratch architecture can
    use, when it reads other graphs), saved as its job folder's ``split.json``."""
    first = seed == base.training.seed
    dataset, parts = prepared_data(base, models.source_or_model, say)
    split = split_for(base, dataset, parts, seed, say if first else None)
    split = _usable(base, models, dataset, split, say if first else quiet)
    return split, _saved(base, dataset, split, f"n{len(split.train)}-s{seed}", strategies)


def _fold_splits(
    base: RunSpec, models: RunModels, repeat: int, folds: int, strategies, say: Say
) -> list[tuple[Split, Path]]:
    """The ``folds`` splits of one repeat of k-fold cross-validation inside the data
    (fold k the test set, 15 % of the rest for early stopping), each saved."""
    from tlmat.data.splits import kfold_splits

    dataset, parts = prepared_data(base, models.source_or_model, say)
    empty = np.array([], dtype=np.int64)
    whole = _usable(base, models, dataset, Split(parts["pool"], empty, empty), say)
    pool, seed = whole.train, base.training.seed + repeat
    out = []
    for k, fold in enumerate(kfold_splits(len(pool), folds, seed, 0.15)):
        split = Split(pool[fold.train], pool[fold.val], pool[fold.test])
        out.append((split, _saved(base, dataset, split, f"k{folds}-r{repeat}-f{k}", strategies)))
    return out


def _usable(base: RunSpec, models: RunModels, dataset, split: Split, say: Say) -> Split:
    """``split`` restricted to the materials the scratch architecture can use, when it
    reads other graphs than the source."""
    if models.source is None or models.scratch is None:
        return split
    from tlmat.models.registry import build

    twin = build(models.scratch)
    if twin.graph_settings == models.source.model.graph_settings:
        return split
    other, _ = prepared_data(base, twin, say)
    split, _, dropped = common_split(dataset, split, other)
    if dropped:
        say(f"{dropped} structures left out: the scratch model cannot use them")
    return split


def _saved(base: RunSpec, dataset, split: Split, name: str, strategies) -> Path:
    """The job folder ``name`` with the split saved as its ``split.json``."""
    job = base.run_dir / name
    claim(base.run_dir, job.name)
    claim(job, "split.json", "zero-shot.json", *strategies)
    with replaced(job / "split.json") as path:
        split.save(path, dataset.ids)
    return job


def _zero_shot(base: RunSpec, models: RunModels, split: Split, job: Path, rows) -> None:
    """The source's own predictions on the seed's test set, raw and recalibrated."""
    from tlmat.experiments.runs import zero_shot

    if models.source is None:
        return
    dataset, _ = prepared_data(base, models.source.model, quiet)
    zero = zero_shot(models.source, dataset, split, base.training.target)
    record(job, "zero-shot.json")
    write_json(job / "zero-shot.json", zero)
    for label, metrics in zero.items():
        rows.setdefault(label, []).append(metrics)


class _Timer:
    """Counts finished runs; once, says how long the rest will take when it is long."""

    def __init__(self, total: int, say: Say, limit: float = 600.0):
        self.total, self.say, self.limit = total, say, limit
        self.done, self.started, self.warned = 0, time.perf_counter(), False

    def tick(self) -> None:
        self.done += 1
        left = self.total - self.done
        per_run = (time.perf_counter() - self.started) / self.done  # runs side by side
        if not self.warned and left * per_run > self.limit:
            self.warned = True
            self.say(
                f"note: at {per_run:.0f} s per method, the {left} runs left take about "
                f"{left * per_run / 60:.0f} min; --seeds, --strategies or --epochs make it "
                "shorter"
            )


def _mean_or_nan(values: list[float]) -> float:
    finite = [float(v) for v in values if np.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def best_by_validation(summary: dict[str, dict]) -> str | None:
    """The method with the lowest mean validation MAE: chosen without the test set."""
    scored = {
        k: e["val_mae_mean"]
        for k, e in summary.items()
        if np.isfinite(e.get("val_mae_mean", np.nan))
    }
    return min(scored, key=scored.get) if scored else None


def comparison_rows(
    rows: dict[str, list[dict[str, float]]],
    baseline: str = "scratch",
    resampled: tuple[int, int] | None = None,
) -> dict[str, dict]:
    """Per method: MAE, RMSE and R² as mean and sample std (ddof = 1) over seeds, the
    mean validation MAE (NaN for rows without one, such as zero-shot), and against
    ``baseline`` over the same seeds a t-test of the MAE and the gain (relative: 1 −
    MAE/MAE_baseline, with its 95 % interval). ``resampled``: (training, test)
    structures per fold of k-fold runs, whose overlapping training sets call for the
    corrected resampled t-test; otherwise the paired t-test."""
    from tlmat.evaluation.statistics import corrected_gain, paired_gain

    base = np.array([m["mae"] for m in rows.get(baseline, [])])
    summary = {}
    for label, metrics in rows.items():
        mae = np.array([m["mae"] for m in metrics])
        entry = {
            "mae_mean": float(mae.mean()),
            "mae_std": float(mae.std(ddof=1)) if len(mae) > 1 else float("nan"),
            "rmse_mean": float(np.mean([m["rmse"] for m in metrics])),
            "r2_mean": float(np.mean([m["r2"] for m in metrics])),
            "val_mae_mean": _mean_or_nan([m.get("val_mae", np.nan) for m in metrics]),
            "n_seeds": len(mae),
            "n_test": int(metrics[0]["n"]),
            "per_seed": metrics,
        }
        if label != baseline and len(mae) >= 2 and len(base) == len(mae):
            gain = corrected_gain(mae, base, *resampled) if resampled else paired_gain(mae, base)
            entry["p_vs_" + baseline] = float(gain.test.p_value)
            entry["gain_vs_" + baseline] = [gain.relative, gain.relative_low, gain.relative_high]
            entry["test"] = "corrected resampled t-test" if resampled else "paired t-test"
        summary[label] = entry
    return summary
