"""Model selection: the best honest model for a small dataset, chosen by validation
within a time budget (``tlmat fit``).

The candidates are every usable source (foundation backbones, shipped tlmat sources,
the user's own checkpoints) with the strategies that suit a small dataset on a CPU,
and scratch. A probe measures, on the user's own structures and machine, the seconds
per structure per epoch of each; the candidates are then ordered (tlmat's measured
ranking first) and those that do not fit the budget are left out, with the reason.

Selection sees only the training data: k-fold cross-validation inside it (repeated on
request), every candidate on the same folds, each fold a :class:`RunSpec` run whose
early stopping uses a validation part of the fold's training data and whose score is
the held-out fold. The best mean CV MAE wins; its gain over scratch is given as an
effect size with a confidence interval and the corrected resampled t-test (Nadeau &
Bengio), since the folds share data.

The winner is refit on all training data as a deep ensemble; σ is calibrated on
out-of-fold predictions (per fold, an ensemble trained without the fold), never on
data the members trained on. The test data, when given, are read once, at the end, to
score the chosen model and scratch: they cannot influence the choice.

Every stage is written as it finishes (folds, plan, runs, ensembles), so the same
command after an interruption resumes and gives the same choice and numbers.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property, partial
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field, model_validator

from tlmat.catalogue import split_candidate
from tlmat.data.dataset import GraphDataset, Reading
from tlmat.data.splits import Split, kfold_splits
from tlmat.experiments.runspec import (
    SCRATCH_MODEL,
    Say,
    Settings,
    logged,
    quiet,
    scaled_defaults,
)
from tlmat.models.pooling import MEAN, MOMENTS
from tlmat.training.config import TrainConfig
from tlmat.transfer.strategies import FEATURE_METHODS, FEATURE_STRATEGIES

#: sources whose pooled features feed an MLP when none are named (their weights ship
#: with their packages or with tlmat: nothing is downloaded)
FEATURE_SOURCES = (
    "chgnet/0.3.0",
    "m3gnet/mp-2018.6.1-eform",
    "megnet/mp-2018.6.1-eform",
    "tlmat/mp-eform-cgcnn",
)
#: sources fine-tuned whole when none are named (fine-tuning a foundation model on a
#: 2-core laptop rarely fits a 10-minute budget; the probe decides)
FINETUNE_SOURCES = ("tlmat/mp-eform-cgcnn", "chgnet/0.3.0")
#: the order candidates are tried in: tlmat's own measurements, best first (Castelli
#: perovskites at N = 100 and 500, benchmarks/results/perovskites-foundation: CHGNet
#: features + MLP 0.180 / 0.109 eV/cell, M3GNet 0.186 / 0.126, fine-tuned CHGNet 0.185 /
#: 0.118, fine-tuned tlmat source 0.293 / 0.143, scratch 0.370 / 0.164;
#: benchmarks/results/concat-perovskites: CHGNet features + ridge 0.172 / 0.126, seconds
#: where the MLP takes a minute)
PRIOR = (
    "features+mlp [chgnet/0.3.0]",
    "features+ridge [chgnet/0.3.0]",
    "features+mlp [m3gnet/mp-2018.6.1-eform]",
    "full [chgnet/0.3.0]",
    "full [tlmat/mp-eform-cgcnn]",
    "features+mlp [megnet/mp-2018.6.1-eform]",
    "features+mlp [tlmat/mp-eform-cgcnn]",
)
#: strategies a candidate may use: each gives a model that predicts from structures
USABLE = (
    "scratch", "full", "freeze-embedding", "head-only", "discriminative", "l2-sp",
    "lora", "features+mlp", "moments+mlp", "features+ridge", "moments+ridge",
)  # fmt: skip
#: share of the budget the cross-validated search may plan for; the rest refits the
#: winner, calibrates its σ and scores the test set
SEARCH_SHARE = 0.45


@dataclass(frozen=True)
class Candidate:
    """A method the search may choose: a strategy and its source (none for scratch)."""

    strategy: str
    source: str | None = None

    @property
    def label(self) -> str:
        return self.strategy if self.source is None else f"{self.strategy} [{self.source}]"

    @property
    def slug(self) -> str:
        """The label as a folder name."""
        return slug(self.label)

    @property
    def on_features(self) -> bool:
        return self.strategy in FEATURE_STRATEGIES

    @property
    def head(self) -> str:
        """The regressor on the features (``mlp`` or ``ridge``) of a feature candidate."""
        return FEATURE_METHODS[self.strategy][1]

    @property
    def features(self) -> tuple[str, tuple[str, ...]]:
        """The source and the statistics its features are pooled by (features+ and
        moments+ candidates)."""
        return self.source, FEATURE_METHODS[self.strategy][0]

    @classmethod
    def parse(cls, text: str) -> Candidate:
        """``"scratch"``, ``"full [tlmat/mp-eform-cgcnn]"`` or ``"features+mlp chgnet/0.3.0"``."""
        strategy, source = split_candidate(text)
        if strategy not in USABLE:
            raise ValueError(f"candidate {text!r}: strategy must be one of {', '.join(USABLE)}")
        if (strategy == "scratch") != (source is None):
            raise ValueError(f"candidate {text!r}: scratch takes no source, every other one does")
        return cls(strategy, source)


def slug(text: str) -> str:
    """``text`` as a file or folder name."""
    return "".join(c if c.isalnum() or c in "+-." else "_" for c in text)


def default_candidates(sources: list[str] | None = None) -> list[Candidate]:
    """Scratch, the foundation and shipped sources' features + MLP, CHGNet's features +
    ridge, full fine-tuning of the shipped source and CHGNet, and full fine-tuning and
    features + MLP of each of ``sources`` (the user's own checkpoints or other names)."""
    out = [Candidate("features+mlp", s) for s in FEATURE_SOURCES]
    # a linear probe of the strongest features: the best at N = 100 in seconds
    out.append(Candidate("features+ridge", FEATURE_SOURCES[0]))
    out += [Candidate("full", s) for s in FINETUNE_SOURCES]
    for source in sources or []:
        out += [Candidate("full", source), Candidate("features+mlp", source)]
    out.append(Candidate("scratch"))
    return list(dict.fromkeys(out))


class FitSpec(Settings):
    """Everything that decides a model selection: the training data and target, the
    budget (minutes of wall time), the folds, the ensemble the winner is refit as, the
    candidates (default: :func:`default_candidates`) and the test data, read only at
    the end. Training settings may stand at the top level, as in a RunSpec."""

    data: str
    test: str | None = None
    training: TrainConfig = Field(default_factory=TrainConfig)
    budget: float = Field(10.0, gt=0)
    folds: int = Field(5, ge=2)
    repeats: int = Field(1, ge=1)
    ensemble: int = Field(5, ge=2)
    candidates: list[str] | None = None
    sources: list[str] = Field(default_factory=list)
    #: the architecture scratch trains
    model: str = SCRATCH_MODEL
    run_dir: Path = Path("runs/fit")
    overwrite: bool = False
    cache_dir: Path | None = None
    strict: bool = False
    on_duplicate: str = "error"
    disorder: str = "skip"

    @model_validator(mode="after")
    def _checked(self) -> FitSpec:
        for text in self.candidates or []:
            Candidate.parse(text)
        if self.training.loss == "gaussian_nll":
            raise ValueError("fit chooses among methods that train on loss l1 or mse")
        return self

    def chosen_candidates(self) -> list[Candidate]:
        """The candidates, scratch always among them (the gain is measured against it)."""
        if self.candidates is None:
            return default_candidates(self.sources)
        chosen = [Candidate.parse(text) for text in self.candidates]
        return list(dict.fromkeys([*chosen, Candidate("scratch")]))

    @property
    def reading(self) -> Reading:
        return Reading(self.cache_dir, self.strict, self.on_duplicate, self.disorder, None, True)


@dataclass
class CandidateRow:
    """One candidate's fate: its CV MAE per fold (target unit), the seconds spent and
    estimated, and whether it ran (``ran``), was left out (``left_out``: why)."""

    label: str
    maes: list[float] = field(default_factory=list)
    seconds: float = 0.0
    estimated: float = 0.0
    left_out: str | None = None

    @property
    def mean(self) -> float:
        return float(np.mean(self.maes)) if self.maes else float("nan")

    @property
    def std(self) -> float:
        return float(np.std(self.maes, ddof=1)) if len(self.maes) > 1 else float("nan")


@dataclass
class FitResult:
    """A finished selection: every candidate's row, the chosen one, its gain over
    scratch (:class:`~tlmat.evaluation.statistics.Gain`), the calibrated ensemble's
    folder, the test scores (chosen and scratch; ``None`` without test data) and the
    report's files."""

    spec: FitSpec
    rows: list[CandidateRow]
    chosen: str
    gain: Any
    model_dir: Path
    calibration: dict[str, Any]
    test: dict[str, dict[str, float]] | None
    n_train: int
    seconds: float
    #: the training size scratch would need to match the chosen model (its CV MAE)
    equivalent: dict[str, Any] = field(default_factory=dict)
    paths: dict[str, Path] = field(default_factory=dict)


class Clock:
    """The budget: seconds since the start, and what is left of ``minutes``."""

    def __init__(self, minutes: float):
        self.total, self.start = minutes * 60.0, time.perf_counter()

    @property
    def spent(self) -> float:
        return time.perf_counter() - self.start

    @property
    def left(self) -> float:
        return self.total - self.spent


#: what a selection reports while it works: (what runs, runs done, runs planned)
Progress = Callable[[str, int, int], None]


class Pool:
    """The training data as each candidate reads it (its source's graph settings and
    elements), restricted to the structures every candidate can use, and each source's
    pooled features, computed once and kept in the run folder."""

    def __init__(self, spec: FitSpec, candidates: list[Candidate], say: Say):
        from tlmat.models.hub import load_source
        from tlmat.models.registry import build, model_config

        self.spec, self.say = spec, say
        self.models: dict[str | None, Any] = {None: build(model_config(spec.model))}
        for source in dict.fromkeys(c.source for c in candidates if c.source is not None):
            self.models[source] = load_source(source)
        self._data: dict[str, GraphDataset] = {}
        self._features: dict[str, np.ndarray] = {}
        read = [self.dataset(source) for source in self.models]
        common = set(read[0].ids).intersection(*(set(d.ids) for d in read[1:]))
        self.ids = [i for i in read[0].ids if i in common]
        dropped = len(read[0].ids) - len(self.ids)
        if dropped:
            say(f"{dropped} structures left out: not every candidate can use them")

    def model(self, source: str | None):
        """The source's trained model, or the scratch architecture's (random) model."""
        return self.models[source]

    def network(self, source: str | None):
        """The network of ``source`` (or of scratch), whose graphs and elements it reads."""
        model = self.models[source]
        return model.model if hasattr(model, "model") else model

    def rows(self, source: str | None) -> np.ndarray:
        """Where the structures every candidate uses stand in ``source``'s dataset."""
        where = {name: i for i, name in enumerate(self.dataset(source).ids)}
        return np.array([where[i] for i in self.ids], dtype=np.int64)

    @cached_property
    def folds(self) -> dict[str, Path]:
        """The folds' ``split.json`` files (:func:`fold_splits`, written once)."""
        return write_folds(self.spec, fold_splits(self.spec, self.ids))

    def dataset(self, source: str | None) -> GraphDataset:
        """The training data with the graphs ``source`` (or scratch) needs."""
        net = self.network(source)
        key = json.dumps([net.graph_settings.model_dump(mode="json"), net.elements])
        if key not in self._data:
            target = self.spec.training.target
            loaded = self.spec.reading.load(
                self.spec.data, net.graph_settings, [target], net.elements
            )
            if self.spec.training.log10:
                loaded = loaded.require_positive(target, self.spec.strict)
            self._data[key] = loaded
        return self._data[key]

    def features(
        self, source: str, statistics: Sequence[str] = MEAN
    ) -> tuple[np.ndarray, list[str]]:
        """The source's layer features pooled by ``statistics`` for every structure of
        its dataset (rows of structures no candidate uses are NaN), and the pooled layers
        they come from (``<layer>`` or ``<layer>@<statistic>``). Extracted once, pooled by
        every statistic, and kept in the run folder."""
        from tlmat.transfer.features import feature_table, iter_layer_features, statistic_columns

        if source not in self._features:
            dataset = self.dataset(source)
            cache = self.spec.run_dir / "features" / f"{slug(source)}-moments.npz"
            rows = self.rows(source)
            if cache.exists():
                stored = np.load(cache, allow_pickle=False)
                table, names = stored["table"], [str(n) for n in stored["names"]]
            else:
                net = self.models[source]
                table, names = feature_table(
                    iter_layer_features(net, dataset, rows, None, statistics=MOMENTS)
                )
                _save_npz(cache, self.spec.run_dir, table=table, names=np.array(names))
            full = np.full((len(dataset), table.shape[1]), np.nan, dtype=np.float32)
            full[rows] = table
            self._features[source] = (full, names)
        full, names = self._features[source]
        columns = statistic_columns(names, statistics)
        kept = [name for name, keep in zip(names, columns, strict=True) if keep]
        return full[:, columns], list(dict.fromkeys(n.rsplit(":", 1)[0] for n in kept))


def _save_npz(path: Path, run_dir: Path, **arrays: np.ndarray) -> None:
    """``arrays`` to ``path`` in one step, recorded in the run folder's ledger."""
    from tlmat.training.rundir import record

    record(run_dir, path.relative_to(run_dir).parts[0])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)


def fold_splits(spec: FitSpec, ids: list[str]) -> list[tuple[str, dict[str, list[str]]]]:
    """The folds of the training data: ``repeats`` × ``folds`` (name, train/val/test
    ids), each fold's test part held out and 15 % of the rest for early stopping;
    drawn with the training seed, the same for every candidate."""
    out = []
    for repeat in range(spec.repeats):
        seed = spec.training.seed + 1000 * repeat
        for k, split in enumerate(kfold_splits(len(ids), spec.folds, seed, 0.15)):
            parts = {
                part: [ids[i] for i in getattr(split, part)] for part in ("train", "val", "test")
            }
            out.append((f"r{repeat}-k{k}", parts))
    return out


def logged_say(say: Say | None) -> Say:
    return say or logged


def _expected_epochs(spec: FitSpec, n_train: int) -> tuple[TrainConfig, float]:
    """The training settings for ``n_train`` structures and the epochs a run is expected
    to last: half the maximum, since early stopping usually ends it sooner."""
    config = scaled_defaults(spec.training, n_train)
    return config, 0.5 * config.epochs


def _train_step_seconds(candidate: Candidate, pool: Pool, rows: np.ndarray) -> float:
    """Measured seconds per structure of one training step (forward, backward, update)
    of ``candidate``'s network on ``rows`` of its dataset (the second of two steps: the
    first pays for allocation)."""
    import torch

    from tlmat.transfer.sources import fresh_model, prepare_transfer

    target = pool.spec.training.target
    if candidate.source is None:
        trained = fresh_model(pool.model(None).config, pool.spec.training.seed)
    else:
        trained, _ = prepare_transfer(candidate.strategy, pool.model(candidate.source), target)
    model = trained.model.train()
    batch = pool.dataset(candidate.source).batch(rows, target=target)
    optimizer = torch.optim.Adam(p for p in model.parameters() if p.requires_grad)
    seconds = 0.0
    for _ in range(2):
        start = time.perf_counter()
        optimizer.zero_grad()
        model(batch).float().abs().mean().backward()
        optimizer.step()
        seconds = time.perf_counter() - start
    return seconds / len(rows)


def _head_epoch_seconds(kind: str, width: int, n_train: int) -> float:
    """Measured seconds of one epoch of the feature regressor ``kind`` (``mlp``: two
    epochs timed; ``ridge``, which has no epochs: its whole fit) on ``n_train`` random
    rows of ``width`` features."""
    from tlmat.transfer.features import feature_regressor

    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(n_train, width)), rng.normal(size=n_train)
    regressor = feature_regressor(kind, epochs=2, patience=2)
    start = time.perf_counter()
    regressor.fit(X.astype(np.float32), y, X[:8].astype(np.float32), y[:8])
    return (time.perf_counter() - start) / (2 if kind == "mlp" else 1)


def probe(candidate: Candidate, pool: Pool, n_train: int) -> dict[str, float]:
    """What one cross-validation fold of ``candidate`` costs on this machine and data:
    the measured seconds per structure per epoch (and, for features, per structure to
    extract them), and the estimated seconds of one fold."""
    from tlmat.transfer.features import feature_table, iter_layer_features, statistic_columns

    dataset = pool.dataset(candidate.source)
    rows = pool.rows(candidate.source)[:32]
    _, epochs = _expected_epochs(pool.spec, n_train)
    if not candidate.on_features:
        per_structure = _train_step_seconds(candidate, pool, rows)
        # validation passes cost about a fifth of the training ones
        return {
            "seconds_per_structure_epoch": per_structure,
            "fold_seconds": 1.2 * per_structure * n_train * epochs,
        }
    start = time.perf_counter()
    net = pool.model(candidate.source)
    _, names = feature_table(iter_layer_features(net, dataset, rows, statistics=MOMENTS))
    extract = (time.perf_counter() - start) / len(rows)
    width = int(statistic_columns(names, candidate.features[1]).sum())
    per_epoch = _head_epoch_seconds(candidate.head, width, n_train)
    return {
        "feature_seconds_per_structure": extract,
        "seconds_per_structure_epoch": per_epoch / n_train,
        "extract_seconds": extract * len(pool.ids),
        "fold_seconds": per_epoch * (epochs if candidate.head == "mlp" else 1),
    }


def make_plan(spec: FitSpec, pool: Pool, runs: int, n_train: int, say: Say) -> dict:
    """Each candidate probed (its measured cost and the estimated seconds of its
    cross-validation) and the order they are tried in: tlmat's measured ranking, then
    the cheapest first. Written to ``plan.json``, and the search's decisions with it,
    so a resumed run makes the same choice."""
    from tlmat.training.rundir import record, write_json

    path = spec.run_dir / "plan.json"
    if path.exists():
        return json.loads(path.read_text())
    rows: dict[str, dict[str, Any]] = {}
    for candidate in spec.chosen_candidates():
        say(f"probing {candidate.label} …")
        costs = probe(candidate, pool, n_train)
        estimated = costs.get("extract_seconds", 0.0) + runs * costs["fold_seconds"]
        rows[candidate.label] = {**costs, "estimated_seconds": estimated, "left_out": None}
    order = sorted(rows, key=lambda label: (_order(label), rows[label]["estimated_seconds"]))
    plan = {"order": order, "rows": rows, "n_train": n_train}
    record(spec.run_dir, "plan.json")
    write_json(path, plan)
    return plan


def _order(label: str) -> int:
    return PRIOR.index(label) if label in PRIOR else len(PRIOR)


def _kind(label: str) -> str:
    return "features" if Candidate.parse(label).on_features else "network"


def _fits(plan: dict, label: str, clock: Clock, measured: dict[str, float]) -> str | None:
    """Why ``label`` cannot run in the search's share of the budget (``None``: it can).
    Its estimate is corrected by what the candidates of its kind that ran took against
    their own estimates (the probe times single steps: it errs, by a factor it learns)."""
    row = plan["rows"][label]
    estimated = row["estimated_seconds"] * measured.get(_kind(label), 1.0)
    left = SEARCH_SHARE * clock.total - clock.spent
    if estimated <= left:
        return None
    return (
        f"estimated {estimated / 60:.1f} min of cross-validation; "
        f"{max(left, 0) / 60:.1f} min of the search's budget were left"
    )


def write_folds(spec: FitSpec, folds: list[tuple[str, dict[str, list[str]]]]) -> dict[str, Path]:
    """Each fold's ``split.json`` under ``folds/`` (kept: a resumed run uses them)."""
    from tlmat.training.rundir import record, write_json

    record(spec.run_dir, "folds")
    paths = {}
    for name, parts in folds:
        path = spec.run_dir / "folds" / f"{name}.json"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            write_json(path, parts)
        paths[name] = path
    return paths


def cv_run(spec: FitSpec, pool: Pool, candidate: Candidate, name: str, split_file: Path):
    """One fold of ``candidate``: a :class:`RunSpec` run on the fold's training part
    (early stopping on its validation part), scored on the held-out fold."""
    from tlmat.experiments.runspec import RunSpec, run

    training = spec.training.model_copy(update={"progress_bar": False})
    run_spec = RunSpec(
        data=spec.data,
        split=split_file,
        strategy=candidate.strategy,
        source=candidate.source,
        model=spec.model if candidate.source is None else None,
        training=training,
        run_dir=spec.run_dir / "cv" / candidate.slug / name,
        zero_shot=False,
        cache_dir=spec.cache_dir,
        strict=spec.strict,
    )
    features = pool.features(*candidate.features)[0] if candidate.on_features else None
    return run(run_spec, quiet, pool.dataset(candidate.source), features)


def cross_validate(
    spec: FitSpec, pool: Pool, plan: dict, clock: Clock, say: Say, progress: Progress | None
) -> list[CandidateRow]:
    """Scratch, then every candidate in the plan's order whose corrected estimate fits
    what is left of the search's budget, on every fold; each decision is recorded in
    the plan."""
    folds = pool.folds
    order = ["scratch", *[label for label in plan["order"] if label != "scratch"]]
    measured: dict[str, list[float]] = {}
    rows = []
    for count, label in enumerate(order):
        planned = plan["rows"][label]
        if planned["left_out"] is None and label != "scratch" and "ran" not in planned:
            factors = {kind: float(np.mean(v)) for kind, v in measured.items()}
            planned["left_out"] = _fits(plan, label, clock, factors)
        planned["ran"] = planned["left_out"] is None
        _save_plan(spec, plan)
        row = CandidateRow(label, [], 0.0, planned["estimated_seconds"], planned["left_out"])
        rows.append(row)
        if row.left_out is not None:
            say(f"left out {label}: {row.left_out}")
            continue
        candidate = Candidate.parse(label)
        for name, split_file in folds.items():
            if progress is not None:
                left = f"{max(clock.left, 0) / 60:.1f} of {clock.total / 60:.0f} min left"
                progress(f"{label} · fold {name} · {left}", count, len(order))
            result = cv_run(spec, pool, candidate, name, split_file)
            row.maes.append(float(result.test["mae"]))
            row.seconds += result.seconds
        measured.setdefault(_kind(label), []).append(row.seconds / planned["estimated_seconds"])
        say(f"{label}: CV MAE {row.mean:.4g} ± {row.std:.2g} ({row.seconds:.0f} s)")
    return rows


def _save_plan(spec: FitSpec, plan: dict) -> None:
    from tlmat.training.rundir import write_json

    write_json(spec.run_dir / "plan.json", plan)


def _fit_heads(kind: str, X, y, train, val, seeds: list[int], config: TrainConfig):
    """Feature regressors ``kind`` (``mlp``, ``ridge``), one per seed, on rows ``train``
    (early stopping, or the ridge penalty, chosen on ``val``), with their validation
    MSE (target unit²)."""
    from tlmat.transfer.features import feature_regressor

    out = []
    for seed in seeds:
        regressor = feature_regressor(
            kind,
            seed,
            epochs=config.epochs,
            patience=config.early_stopping_patience or config.epochs,
        )
        regressor.fit(X[train], y[train], X[val], y[val])
        out.append((regressor, float(np.mean((regressor.predict(X[val]) - y[val]) ** 2))))
    return out


def _out_of_fold_features(spec: FitSpec, pool: Pool, candidate: Candidate, members: int):
    """Out-of-fold (y, mean, σ) of a feature ensemble: per fold, ``members`` MLPs (ridges)
    trained without the fold predict it (σ as the deep ensemble defines it)."""
    dataset = pool.dataset(candidate.source)
    X, _ = pool.features(*candidate.features)
    y = np.asarray(dataset.targets[spec.training.target], dtype=np.float64)
    seeds = [spec.training.seed + m for m in range(members)]
    parts: list[tuple[np.ndarray, ...]] = []
    for _, split_file in pool.folds.items():
        split = Split.load(split_file, dataset.ids)
        config, _ = _expected_epochs(spec, len(split.train))
        fitted = _fit_heads(candidate.head, X, y, split.train, split.val, seeds, config)
        values = np.stack([regressor.predict(X[split.test]) for regressor, _ in fitted])
        sigma = np.sqrt(np.mean([mse for _, mse in fitted]) + values.var(axis=0))
        parts.append((y[split.test], values.mean(axis=0), sigma))
    return tuple(np.concatenate(column) for column in zip(*parts, strict=True))


def _final_features(spec: FitSpec, pool: Pool, candidate: Candidate, folder: Path):
    """The feature winner refit on all training data: ``ensemble`` MLPs (ridges), each with
    its own 15 % validation part, each joined to the source's backbone as one model."""
    from tlmat.transfer.features import feature_model
    from tlmat.uncertainty import save_ensemble

    dataset = pool.dataset(candidate.source)
    X, layers = pool.features(*candidate.features)
    y = np.asarray(dataset.targets[spec.training.target], dtype=np.float64)
    # the MLP learns the value as given (as features+mlp does in a run)
    target = spec.training.target_spec().model_copy(update={"log10": False})
    members, val_mse, seeds = [], [], []
    for m in range(spec.ensemble):
        seed = spec.training.seed + m
        split = _own_split(pool, candidate.source, seed)
        config, _ = _expected_epochs(spec, len(split.train))
        [(regressor, mse)] = _fit_heads(
            candidate.head, X, y, split.train, split.val, [seed], config
        )
        source = pool.model(candidate.source)
        members.append(feature_model(source, regressor, layers, target, candidate.strategy))
        val_mse.append(mse)
        seeds.append(seed)
    return save_ensemble(members, val_mse, seeds, folder)


def _member_maker(spec: FitSpec, pool: Pool, candidate: Candidate):
    """What makes one member of ``candidate`` (a module-level callable: it pickles)."""
    from tlmat.experiments.runspec import scratch_member
    from tlmat.transfer.sources import prepare_transfer

    if candidate.source is None:
        return partial(scratch_member, pool.model(None).config, out_dim=1)
    return partial(
        prepare_transfer, candidate.strategy, pool.model(candidate.source), spec.training.target
    )


def _network_ensemble(spec, pool, candidate, split_for, folder: Path, members: int):
    """A deep ensemble of ``candidate``'s networks in ``folder`` (resumable)."""
    from tlmat.uncertainty import train_ensemble

    dataset = pool.dataset(candidate.source)
    n_train = len(split_for(spec.training.seed).train)
    config, _ = _expected_epochs(spec, n_train)
    config = config.model_copy(update={"progress_bar": False})
    make = _member_maker(spec, pool, candidate)
    return train_ensemble(make, dataset, split_for, config, folder, members)


def _out_of_fold_networks(spec: FitSpec, pool: Pool, candidate: Candidate, members: int):
    """Out-of-fold (y, mean, σ) of ``candidate``'s deep ensembles, one per fold, trained
    without the fold."""
    dataset = pool.dataset(candidate.source)
    y = np.asarray(dataset.targets[spec.training.target], dtype=np.float64)
    parts = []
    for name, split_file in pool.folds.items():
        split = Split.load(split_file, dataset.ids)
        folder = spec.run_dir / "calibration" / name
        ensemble = _network_ensemble(
            spec, pool, candidate, lambda seed, s=split: s, folder, members
        )
        arrays = ensemble.predict(dataset, split.test, calibrated=False)
        parts.append((y[split.test], arrays["mean"], arrays["sigma"]))
    return tuple(np.concatenate(column) for column in zip(*parts, strict=True))


def _own_split(pool: Pool, source: str | None, seed: int) -> Split:
    """A member's split of all the training data: 15 % (seeded) for early stopping."""
    order = np.random.default_rng(seed).permutation(pool.rows(source))
    n_val = max(1, round(0.15 * len(order)))
    return Split(np.sort(order[n_val:]), np.sort(order[:n_val]), np.array([], dtype=np.int64))


def calibrated_model(
    spec: FitSpec, pool: Pool, rows: list[CandidateRow], chosen: str, clock: Clock, say: Say
):
    """The winner as a deep ensemble refit on all training data (``model/``), its σ
    scaled to the out-of-fold errors of ensembles trained without each fold; and what
    the calibration was fitted on. The folds' ensembles have as many members as the
    budget left allows once the refit and the test's scratch run are set aside (at
    least 2; σ stays uncalibrated when not even that fits, and the report says so)."""
    from tlmat.uncertainty import calibration, fit_sigma_scale, store_sigma_scale

    candidate, folder = Candidate.parse(chosen), spec.run_dir / "model"
    members = _calibration_members(spec, rows, chosen, clock)
    oof = None
    if members >= 2:
        say(f"calibrating σ: {members} members per fold, each trained without the fold …")
        out_of_fold = _out_of_fold_features if candidate.on_features else _out_of_fold_networks
        oof = out_of_fold(spec, pool, candidate, members)
    say(f"refitting {chosen} as {spec.ensemble} members on all {len(pool.ids)} structures …")
    if candidate.on_features:
        ensemble = _final_features(spec, pool, candidate, folder)
    else:
        split_for = partial(_own_split, pool, candidate.source)
        ensemble = _network_ensemble(spec, pool, candidate, split_for, folder, spec.ensemble)
    if oof is None:
        return ensemble, {"calibrated": False, "why": "the budget left no room for it"}
    y, mean, sigma = oof
    scale = fit_sigma_scale(y, mean, sigma)
    about = {
        "calibrated": True,
        "on": "out-of-fold predictions of ensembles trained without each fold (k-fold "
        "inside the training data)",
        "members_per_fold": members,
        "n": len(y),
        "sigma_scale": scale,
        "nll_uncalibrated": calibration(y, mean, sigma)["nll"],
        "nll_recalibrated": calibration(y, mean, scale * sigma)["nll"],
        "coverage_1sigma_out_of_fold": calibration(y, mean, scale * sigma)["coverage_1sigma"],
        "method": "sigma scaling: s^2 = mean((y - mean)^2 / sigma^2) (Levi et al. 2022)",
    }
    manifest = json.loads((folder / "ensemble.json").read_text())
    ensemble = store_sigma_scale(folder, ensemble, scale, {**manifest, "recalibration": about})
    return ensemble, about


def _calibration_members(spec: FitSpec, rows: list[CandidateRow], chosen: str, clock: Clock) -> int:
    """Members per fold the calibration can afford: the budget left, less the refit
    (``ensemble`` fits) and, with test data, scratch on all the data, each costed by
    what one cross-validation fold of it took. Recorded in the plan, so a resumed run
    calibrates as the first did."""
    plan = json.loads((spec.run_dir / "plan.json").read_text())
    if "members_per_fold" in plan:
        return int(plan["members_per_fold"])
    # one member on every fold costs what the candidate's cross-validation cost
    one_pass = next(row.seconds for row in rows if row.label == chosen)
    affordable = (clock.left - _reserve(spec, rows, chosen)) / max(one_pass, 1e-9)
    plan["members_per_fold"] = members = int(min(spec.ensemble, max(affordable, 0)))
    _save_plan(spec, plan)
    return members


def equivalent_size(
    spec: FitSpec, pool: Pool, rows: list[CandidateRow], chosen: str, clock: Clock, say: Say
) -> dict[str, Any]:
    """How many structures scratch would need to reach the chosen model's CV MAE: scratch
    is also cross-validated on half of each fold's training part, and the log-log
    learning curve through both sizes is inverted (Lee & Asahi 2021, Table 2). The last
    step: skipped when scratch won or the budget left does not cover it (a resumed run
    whose half-size runs finished reuses them)."""
    from tlmat.evaluation.statistics import equivalent_training_size, loglog_fit
    from tlmat.training.rundir import write_json

    scratch = next(row for row in rows if row.label == "scratch")
    if chosen == "scratch":
        return {"measured": False, "why": "scratch was chosen"}
    plan = json.loads((spec.run_dir / "plan.json").read_text())
    # scratch on half the data, every fold: decided once, so a resumed run decides alike
    plan.setdefault("equivalent_size", clock.left >= 0.6 * scratch.seconds)
    _save_plan(spec, plan)
    if not plan["equivalent_size"]:
        return {"measured": False, "why": "the budget left no room for it"}
    say("scratch on half the data, for the equivalent training size …")
    sizes, errors = [], []
    for k, ((name, split_file), full) in enumerate(
        zip(pool.folds.items(), scratch.maes, strict=True)
    ):
        parts = json.loads(split_file.read_text())
        half = {**parts, "train": _random_half(parts["train"], (spec.training.seed, k))}
        path = split_file.with_name(f"{name}-half.json")
        write_json(path, half)
        result = cv_run(spec, pool, Candidate("scratch"), f"{name}-half", path)
        sizes += [len(half["train"]), len(parts["train"])]
        errors += [float(result.test["mae"]), full]
    best = next(row for row in rows if row.label == chosen)
    curve = loglog_fit(sizes, errors)
    if not curve.slope < 0:  # scratch did no better on more data: nothing to invert
        return {"measured": False, "why": "scratch's error did not fall with training size"}
    size = equivalent_training_size(curve, best.mean)
    return {
        "measured": True,
        "size": size.size,
        "low": size.low,
        "high": size.high,
        "extrapolated": size.extrapolated,
        "n_train_per_fold": int(np.mean(sizes[1::2])),
        "scratch_half_mae": float(np.mean(errors[0::2])),
    }


def _random_half(ids: list[str], seed: tuple[int, int]) -> list[str]:
    """Half of ``ids`` drawn with ``seed`` (in their order): the folds list training ids
    in the data file's order, so its first half would follow however the file is sorted."""
    keep = np.random.default_rng(seed).permutation(len(ids))[: len(ids) // 2]
    return [ids[i] for i in np.sort(keep)]


def _reserve(spec: FitSpec, rows: list[CandidateRow], chosen: str) -> float:
    """Seconds to set aside for the refit (``ensemble`` fits of the chosen method) and,
    with test data, scratch on all the data: each costed by one CV fold of it."""
    runs = spec.folds * spec.repeats
    per_fit = {row.label: row.seconds / runs for row in rows if row.maes}
    reserve = spec.ensemble * per_fit[chosen]
    if spec.test is not None:
        reserve += per_fit["scratch"]
    return reserve


def score_test(spec: FitSpec, pool: Pool, candidate: Candidate, ensemble) -> dict[str, dict]:
    """The test data, read now for the first time: the chosen ensemble's scores (with
    its σ's coverage, under ``chosen``) and those of a single scratch model trained on
    all training data (under ``scratch``)."""
    from tlmat.evaluation import regression_metrics
    from tlmat.uncertainty import calibration

    net = pool.network(candidate.source)
    target = spec.training.target
    test = spec.reading.load(spec.test, net.graph_settings, [target], net.elements)
    arrays = ensemble.predict(test)
    y = test.targets[target]
    chosen = {
        **regression_metrics(y, arrays["mean"]),
        **calibration(y, arrays["mean"], arrays["sigma"]),
    }
    return {"chosen": chosen, "scratch": _scratch_on_test(spec)}


def _scratch_on_test(spec: FitSpec) -> dict[str, float]:
    """Scratch trained on all training data (15 % for early stopping), scored on the test
    data: the reference the chosen model's test score is read against."""
    from tlmat.experiments.runspec import RunSpec, run

    training = spec.training.model_copy(update={"progress_bar": False})
    run_spec = RunSpec(
        data=spec.data,
        test=spec.test,
        model=spec.model,
        val_size=0.15,
        training=training,
        run_dir=spec.run_dir / "scratch-test",
        cache_dir=spec.cache_dir,
        strict=spec.strict,
    )
    return run(run_spec, quiet).test


def select_model(
    spec: FitSpec, say: Say | None = None, progress: Progress | None = None
) -> FitResult:
    """Choose, by cross-validation inside the training data and within ``spec.budget``
    minutes, the best of the candidates; refit it as a calibrated deep ensemble in
    ``run_dir/model`` (a folder ``tlmat predict`` takes as it is); score the test data,
    when given, once at the end; write ``report.md`` and ``report.json``."""
    from tlmat.training.fit import folder_lock
    from tlmat.training.rundir import check_run_dir, record, write_atomic

    say, clock = say or logged, Clock(spec.budget)
    check_run_dir(spec.run_dir, spec.overwrite, finished_ok=True)
    with folder_lock(spec.run_dir):
        record(spec.run_dir, "fit.yaml", "features", "cv", "calibration", "model", "scratch-test")
        write_atomic(spec.run_dir / "fit.yaml", spec.to_yaml())
        pool = Pool(spec, spec.chosen_candidates(), say)
        runs = spec.folds * spec.repeats
        n_train = round(len(pool.ids) * (spec.folds - 1) / spec.folds * 0.85)
        plan = make_plan(spec, pool, runs, n_train, say)
        rows = cross_validate(spec, pool, plan, clock, say, progress)
        ran = [row for row in rows if row.maes and row.left_out is None]
        best = min(ran, key=lambda row: row.mean)
        say(f"chosen by cross-validation: {best.label} (CV MAE {best.mean:.4g})")
        ensemble, calibration = calibrated_model(spec, pool, rows, best.label, clock, say)
        chosen = Candidate.parse(best.label)
        test = score_test(spec, pool, chosen, ensemble) if spec.test is not None else None
        equivalent = equivalent_size(spec, pool, rows, best.label, clock, say)
        result = FitResult(
            spec, rows, best.label, _gain(best, rows, len(pool.ids), spec.folds),
            spec.run_dir / "model", calibration, test, len(pool.ids), clock.spent, equivalent,
        )  # fmt: skip
        result.paths = write_report(result)
        return result


def _gain(best: CandidateRow, rows: list[CandidateRow], n: int, folds: int):
    """The chosen candidate's gain over scratch on the same folds (None when the chosen
    one is scratch)."""
    from tlmat.evaluation.statistics import corrected_gain

    scratch = next(row for row in rows if row.label == "scratch")
    if best.label == "scratch":
        return None
    n_test = n / folds
    return corrected_gain(best.maes, scratch.maes, round(n - n_test), round(n_test))


def report_data(result: FitResult) -> dict[str, Any]:
    """The report as data (``report.json``)."""
    gain = result.gain
    return {
        "data": result.spec.data,
        "target": result.spec.training.target,
        "unit": result.spec.training.unit,
        "n_train": result.n_train,
        "folds": result.spec.folds,
        "repeats": result.spec.repeats,
        "budget_minutes": result.spec.budget,
        "seconds": result.seconds,
        "candidates": [
            {
                "label": row.label,
                "cv_mae": row.maes,
                "cv_mae_mean": row.mean,
                "cv_mae_std": row.std,
                "seconds": row.seconds,
                "estimated_seconds": row.estimated,
                "left_out": row.left_out,
            }
            for row in result.rows
        ],
        "chosen": result.chosen,
        "gain_over_scratch": None if gain is None else {
            "relative": gain.relative,
            "relative_ci": [gain.relative_low, gain.relative_high],
            "difference": gain.difference,
            "difference_ci": [gain.difference_low, gain.difference_high],
            "level": gain.level,
            "corrected_t": gain.test.statistic,
            "p_value": gain.test.p_value,
        },
        "calibration": result.calibration,
        "equivalent_scratch_size": result.equivalent,
        "test": result.test,
        "model": str(result.model_dir),
    }  # fmt: skip


def report_markdown(data: dict[str, Any]) -> str:
    """``report.md``: the candidates, the choice, the gain over scratch and the test."""
    unit = f" {data['unit']}" if data["unit"] else ""
    k = data["folds"] * data["repeats"]
    lines = [
        f"# tlmat fit: {data['target']} from {data['data']}",
        "",
        f"{data['n_train']} training structures; {data['folds']}-fold cross-validation "
        f"× {data['repeats']} inside them ({k} folds); budget {data['budget_minutes']:g} min, "
        f"spent {data['seconds'] / 60:.1f} min. The test data, if any, were read once, "
        "after the choice.",
        "",
        f"| candidate | CV MAE{unit} (mean ± std, {k} folds) | time (s) | estimated (s) | note |",
        "|---|---|---|---|---|",
    ]
    for row in data["candidates"]:
        mae = f"{row['cv_mae_mean']:.4f} ± {row['cv_mae_std']:.4f}" if row["cv_mae"] else "—"
        mark = "**chosen**" if row["label"] == data["chosen"] else (row["left_out"] or "")
        seconds = f"{row['seconds']:.0f} | {row['estimated_seconds']:.0f}"
        lines.append(f"| {row['label']} | {mae} | {seconds} | {mark} |")
    lines += ["", *_gain_lines(data, unit), *_test_lines(data, unit)]
    return "\n".join(lines) + "\n"


def _gain_lines(data: dict[str, Any], unit: str) -> list[str]:
    chosen = next(r for r in data["candidates"] if r["label"] == data["chosen"])
    lines = [
        f"Chosen: **{data['chosen']}**; expected error (its CV MAE) {chosen['cv_mae_mean']:.4f}"
        f"{unit} — slightly optimistic, as the best of the candidates that ran.",
        "",
    ]
    gain = data["gain_over_scratch"]
    if gain is not None:
        level = round(100 * gain["level"])
        lines += [
            f"Gain over scratch on the same folds: {100 * gain['relative']:.1f} % lower MAE "
            f"({level} % CI {100 * gain['relative_ci'][0]:.1f} to "
            f"{100 * gain['relative_ci'][1]:.1f} %), {gain['difference']:.4f}{unit} "
            f"({gain['difference_ci'][0]:.4f} to {gain['difference_ci'][1]:.4f}); corrected "
            f"resampled t-test (Nadeau & Bengio) p = {gain['p_value']:.3g}.",
            "",
        ]
    lines += _equivalent_lines(data["equivalent_scratch_size"])
    calibration = data["calibration"]
    if calibration.get("calibrated"):
        lines += [
            f"σ calibrated on {calibration['n']} out-of-fold predictions: scale "
            f"{calibration['sigma_scale']:.3f}, ±1σ coverage "
            f"{100 * calibration['coverage_1sigma_out_of_fold']:.0f} % (68 % expected).",
            "",
        ]
    else:
        lines += [f"σ not calibrated: {calibration.get('why')}.", ""]
    return lines


def _equivalent_lines(equivalent: dict[str, Any]) -> list[str]:
    if not equivalent.get("measured"):
        return [f"Equivalent scratch data size: not measured ({equivalent.get('why')}).", ""]
    beyond = ", extrapolated beyond the sizes run" if equivalent["extrapolated"] else ""
    return [
        f"Equivalent scratch data size: scratch would need ≈ {equivalent['size']:.0f} "
        f"training structures (95 % interval {equivalent['low']:.0f}–{equivalent['high']:.0f}"
        f"{beyond}) to match the chosen model trained on {equivalent['n_train_per_fold']} "
        "(log-log learning curve of scratch through half and all of each fold).",
        "",
    ]


def _test_lines(data: dict[str, Any], unit: str) -> list[str]:
    test = data["test"]
    if not test:
        return [f"Model: `{data['model']}` (`tlmat predict {data['model']} STRUCTURES` gives σ)."]
    chosen, scratch = test["chosen"], test["scratch"]
    return [
        f"Test (scored once): chosen {chosen['mae']:.4f}{unit} MAE, ±1σ coverage "
        f"{100 * chosen['coverage_1sigma']:.0f} %, ±2σ {100 * chosen['coverage_2sigma']:.0f} %; "
        f"scratch {scratch['mae']:.4f}{unit}.",
        "",
        f"Model: `{data['model']}` (`tlmat predict {data['model']} STRUCTURES` gives σ).",
    ]


def write_report(result: FitResult) -> dict[str, Path]:
    """``report.json`` and ``report.md`` in the run folder."""
    from tlmat.training.rundir import record, write_atomic, write_json

    data = report_data(result)
    folder = result.spec.run_dir
    record(folder, "report.json", "report.md")
    write_json(folder / "report.json", data)
    write_atomic(folder / "report.md", report_markdown(data))
    return {
        "report": folder / "report.md",
        "data": folder / "report.json",
        "model": result.model_dir,
    }
