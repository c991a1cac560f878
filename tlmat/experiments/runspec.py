"""A run as a library object: ``RunSpec`` → :func:`run` → :class:`RunResult`.

"Data + target + model or source + strategy + split + training settings → run →
scores" lives here once. Every training command is flags → ``RunSpec`` → ``run`` →
print; a comparison (:mod:`tlmat.experiments.comparison`) is a list of ``RunSpec``;
a YAML file (``--config``) and a run's record (``run.yaml`` in its folder) are a
``RunSpec`` too, so a run is repeated by ``RunSpec.from_yaml(folder / "run.yaml")``.

``run`` owns the split policy (:func:`split_for`), the defaults that scale with the
data (:func:`scaled_defaults`), the head width the target needs, ensembles, the run
folder's lock (a second run is refused at once) and resume: a run stopped at any moment
(SIGKILL, SIGINT, SIGTERM) finishes on the same spec with the same numbers.
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal, Self

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from tlmat.data.dataset import GraphDataset, Reading
from tlmat.data.splits import Split
from tlmat.machine import granted_cpus
from tlmat.models.base import ModelConfig
from tlmat.models.checkpoint import TrainedModel
from tlmat.training.config import TrainConfig, yaml_settings
from tlmat.training.fit import folder_lock
from tlmat.training.rundir import check_run_dir, record, write_atomic, write_json
from tlmat.transfer.strategies import FEATURE_STRATEGIES, PRESETS

logger = logging.getLogger("tlmat")

#: the architecture trained from scratch unless told otherwise: the shape of the
#: published Materials Project CGCNNs (64/4/32), so that scratch and transfer compare
#: like with like (= tlmat.experiments.pretraining.DEFAULT_MODEL, which a test checks)
SCRATCH_MODEL = "cgcnn-mp"

STRATEGIES = (*PRESETS, *FEATURE_STRATEGIES)


def methods() -> tuple[str, ...]:
    """Every method a run can carry out: the transfer strategies (and scratch), the
    training mean ``base`` and the descriptor baselines, which need no source."""
    from tlmat.experiments.baselines import BASELINES

    return (*STRATEGIES, "base", *BASELINES)


#: what a run says while it works (text, or a dataset's ProblemLog of skipped rows)
Say = Callable[[Any], None]

#: a run's record of its own spec, beside its results
RECORD = "run.yaml"


class Settings(BaseModel):
    """Settings read from flags and a YAML file, written back as the YAML that reads
    them: a :class:`RunSpec`, a model selection's spec. Training settings (a
    ``training:`` mapping) may also stand at the top level (a flat ``--config`` file)."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _training_at_the_top(cls, data: Any) -> Any:
        """Training settings may stand at the top level (a flat ``--config`` file)."""
        return _lifted(data) if isinstance(data, dict) else data

    def to_yaml(self) -> str:
        """The settings that were given (defaults left out, so that defaults that scale
        with the data scale again), as YAML that :meth:`from_yaml` reads back; without
        ``overwrite``."""
        # overwrite is an instruction about the folder, not a setting: a record read
        # back reuses the finished run rather than replacing it
        given = self.model_dump(mode="json", exclude_unset=True, exclude={"overwrite"})
        return yaml.safe_dump(given, sort_keys=False)

    @classmethod
    def from_options(cls, config: Path | None = None, **options: Any) -> Self:
        """A spec from a YAML file (``config``; flat or with ``training:``) and options
        that override it (``None``: not given)."""
        data = yaml_settings(config) if config is not None else {}
        given = {k: v for k, v in options.items() if v is not None}
        try:
            return cls(**{**_lifted(data), **given})
        except ValueError as error:  # pydantic's ValidationError: say which file
            if config is not None:
                error.add_note(f"in {config}")
            raise

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> Self:
        """The spec a YAML file holds (a run's ``run.yaml`` or a ``--config``)."""
        return cls.from_options(Path(path), **overrides)


class RunSpec(Settings):
    """Everything that decides one run (a model trained, or transferred from a source,
    on one split; or a deep ensemble of such runs).

    Data: ``data`` (file, folder or registered name) is split per seed into training,
    validation and test structures, unless ``val``/``test`` (your own sets, all their
    rows) or ``split`` (a ``split.json`` of id lists) say otherwise. The model: ``model``
    (an architecture or preset, or a mapping of its settings) trained from scratch, or
    ``source`` (any name :func:`tlmat.models.hub.resolve` knows) transferred with
    ``strategy``. Training settings are ``training``; in a YAML file they may also stand
    at the top level.
    """

    data: str
    val: str | None = None
    test: str | None = None
    split: Path | None = None
    train_size: int | None = Field(None, ge=1)
    val_size: float | None = Field(None, gt=0)
    test_size: float | None = Field(None, gt=0)
    #: ids never trained or validated on (a split.json's test ids, a JSON list, a text
    #: file of one id a line): a target's test materials, kept out of a source
    exclude_ids: Path | None = None
    model: str | dict[str, Any] | None = None
    source: str | None = None
    strategy: str = "scratch"
    keep_head: bool = False
    freeze_k: int = Field(1, ge=0)
    training: TrainConfig = Field(default_factory=TrainConfig)
    #: members of a deep ensemble (1: a single model)
    ensemble: int = Field(1, ge=1)
    ensemble_workers: int | None = Field(None, ge=1)
    ensemble_executor: Literal["local", "slurm", "debug"] = "local"
    slurm: dict[str, Any] = Field(default_factory=dict)
    run_dir: Path = Path("runs/run")
    overwrite: bool = False
    #: score the source's own predictions (raw and linearly recalibrated) beside the run
    zero_shot: bool = True
    #: what the run is for (a grid's job, a source pretrained for a benchmark), kept in
    #: its model's provenance
    provenance: dict[str, Any] = Field(default_factory=dict)
    cache_dir: Path | None = None
    strict: bool = False
    on_duplicate: Literal["error", "first"] = "error"
    disorder: Literal["skip", "majority"] = "skip"

    @field_validator("strategy")
    @classmethod
    def _known_strategy(cls, value: str) -> str:
        known = methods()
        if value not in known:
            raise ValueError(f"{value!r} is not one of {', '.join(known)}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> RunSpec:
        if self.strategy in STRATEGIES[1:] and self.source is None:
            raise ValueError(f"strategy {self.strategy!r} transfers a source: name one")
        if self.model is not None and self.source is not None and self.strategy != "scratch":
            raise ValueError(
                f"model applies to strategy scratch; {self.strategy!r} transfers the "
                "source, whose architecture it keeps"
            )
        if self.ensemble > 1 and self.model is not None and self.source is not None:
            raise ValueError("an ensemble transfers the source: it takes no model")
        if self.training.loss == "gaussian_nll" and self.strategy in FEATURE_STRATEGIES:
            raise ValueError(
                f"loss gaussian_nll trains a network's heteroscedastic head; "
                f"{self.strategy} fits no network head: use a transfer strategy or scratch"
            )
        return self

    @property
    def reading(self) -> Reading:
        """How the run reads its data; a first read parses on every core."""
        workers = granted_cpus()
        return Reading(self.cache_dir, self.strict, self.on_duplicate, self.disorder, workers, True)

    def with_seed(self, seed: int, **changes: Any) -> RunSpec:
        """This spec for another seed (new split, initialisation and order)."""
        data = self.model_dump(exclude_unset=True)
        data["training"] = {**data.get("training", {}), "seed": seed}
        return RunSpec.model_validate({**data, **changes})


def _lifted(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` with the training settings at the top moved into ``training``."""
    fields = TrainConfig.model_fields
    training = data.get("training") or {}
    if isinstance(training, TrainConfig):
        training = training.model_dump(exclude_unset=True)
    if not isinstance(training, dict):
        return data
    lifted = {k: v for k, v in data.items() if k not in fields}
    lifted["training"] = {**training, **{k: v for k, v in data.items() if k in fields}}
    return lifted


@dataclass
class RunResult:
    """What a run gives: the test scores of its method (and of the source's zero-shot
    predictions), the split, the training settings in effect and where it all is."""

    spec: RunSpec
    label: str
    test: dict[str, float]
    split: Split
    config: TrainConfig
    val_mae: float = float("nan")
    epochs: int = 0
    seconds: float = 0.0
    reused: bool = False
    zero_shot: dict[str, dict[str, float]] = field(default_factory=dict)
    #: for an ensemble: mean σ and the coverage of ±1σ and ±2σ on the test set
    ensemble: dict[str, float] | None = None
    source_unit: str | None = None

    @property
    def rows(self) -> dict[str, dict[str, float]]:
        """Zero-shot rows, then this run's, for one table."""
        return {**self.zero_shot, self.label: self.test}


def run(
    spec: RunSpec,
    say: Say | None = None,
    dataset: GraphDataset | None = None,
    features: np.ndarray | None = None,
) -> RunResult:
    """Carry out ``spec``: read the data as the model needs it, split it, train (or
    resume, or reuse the finished run with the same settings), score the test set once.
    The run folder is locked throughout; ``spec`` is recorded in it as ``run.yaml``.

    A caller that runs many specs on data it has read already (a grid) passes it as
    ``dataset`` (every id of the spec's ``split`` file must be in it) and, for feature
    strategies, the source's ``features`` of every structure of it."""
    say = say or logged
    check_run_dir(spec.run_dir, spec.overwrite, finished_ok=True)  # before the slow work
    with folder_lock(spec.run_dir):
        models = RunModels.of(spec)
        if dataset is None:
            dataset, parts = prepared_data(spec, models.source_or_model, say)
        else:
            parts = {"pool": np.arange(len(dataset))}
        split = split_for(spec, dataset, parts, spec.training.seed, say)
        config = scaled_defaults(spec.training, len(split.train))
        say(announcement(config, split))
        if spec.ensemble > 1:
            result = _ensemble(spec, models, dataset, parts, split, config, say)
        else:
            result = _single(spec, models, dataset, split, config, say, features)
        record(spec.run_dir, RECORD)
        write_atomic(spec.run_dir / RECORD, spec.to_yaml())
        return result


def logged(message: Any) -> None:
    """What a run says, when no one listens: its text to the log (INFO)."""
    if isinstance(message, str):
        logger.info(message)


def quiet(message: Any) -> None:
    """A run that is to say nothing of its own: one of many after the first (the same
    data and stopping rule), or a search's, which reports its runs itself."""


@dataclass
class RunModels:
    """The models a spec names: the source (if any) and the architecture trained from
    scratch (its config; with a source too, the scratch twin of a transfer)."""

    source: TrainedModel | None
    scratch: ModelConfig | None

    @classmethod
    def of(cls, spec: RunSpec) -> RunModels:
        from tlmat.models.registry import model_config

        source = loaded_source(spec.source) if spec.source is not None else None
        scratch = None
        if spec.source is None or spec.model is not None:
            scratch = model_config(spec.model or SCRATCH_MODEL)
        return cls(source, scratch)

    @property
    def source_or_model(self):
        """The model whose graphs the data is read for (the source's, when there is one)."""
        from tlmat.models.registry import build

        return self.source.model if self.source is not None else build(self.scratch)


_SOURCES: dict[tuple[str, int], TrainedModel] = {}


def loaded_source(name: str) -> TrainedModel:
    """The source ``name`` (:func:`tlmat.models.hub.load_source`), loaded once per
    process while its file is unchanged: a comparison's runs share it (transfer copies
    it, never changes it)."""
    from tlmat.models.hub import load_source

    path = Path(name)
    key = (name, path.stat().st_mtime_ns if path.exists() else 0)
    if key not in _SOURCES:
        _SOURCES.clear()  # one source at a time: a foundation model is large
        _SOURCES[key] = load_source(name)
    return _SOURCES[key]


#: the data read last (two: a transfer's and its scratch twin's graphs), by what
#: decides them
_DATA: OrderedDict[str, tuple[GraphDataset, dict[str, np.ndarray]]] = OrderedDict()


def prepared_data(spec: RunSpec, model, say: Say) -> tuple[GraphDataset, dict[str, np.ndarray]]:
    """The data and the user's own validation and test sets as one dataset, with the
    positions of each part (``pool``, ``val``, ``test``), read with ``model``'s graph
    settings and elements; read once per process for runs that share them."""
    key = json.dumps(
        [
            spec.model_dump(
                mode="json",
                include={"data", "val", "test", "cache_dir", "strict", "on_duplicate", "disorder"},
            ),
            spec.training.target,
            spec.training.log10,
            model.graph_settings.model_dump(mode="json"),
            list(model.elements) if model.elements is not None else None,
        ],
        default=str,
    )
    if key not in _DATA:
        while len(_DATA) > 1:  # a dataset can be large
            _DATA.popitem(last=False)
        _DATA[key] = _read_data(spec, model)
        say(_DATA[key][0].log)
    _DATA.move_to_end(key)
    return _DATA[key]


def _read_data(spec: RunSpec, model) -> tuple[GraphDataset, dict[str, np.ndarray]]:
    from tlmat.data import concat

    dataset, parts = None, {}
    for part, where in (("pool", spec.data), ("val", spec.val), ("test", spec.test)):
        if where is None:
            continue
        loaded = spec.reading.load(
            where, model.graph_settings, [spec.training.target], model.elements
        )
        if spec.training.log10:
            loaded = loaded.require_positive(spec.training.target, spec.strict)
        offset = 0 if dataset is None else len(dataset)
        parts[part] = np.arange(offset, offset + len(loaded))
        dataset = loaded if dataset is None else concat(dataset, loaded)
    return dataset, parts


def read_ids(path: Path) -> set[str]:
    """Ids from a ``split.json`` (its test ids), a JSON list, or a text file (one a line)."""
    text = Path(path).read_text()
    if Path(path).suffix == ".json":
        data = json.loads(text)
        return {str(i) for i in (data["test"] if isinstance(data, dict) else data)}
    return {line.strip() for line in text.splitlines() if line.strip()}


def split_for(
    spec: RunSpec,
    dataset: GraphDataset,
    parts: dict[str, np.ndarray],
    seed: int,
    say: Say | None = None,
) -> Split:
    """The split of one seed (:func:`tlmat.data.seeded_split`), or the spec's own
    ``split.json``; every part must hold a structure."""
    from tlmat.data import Split, seeded_split

    if spec.split is not None:
        split = Split.load(spec.split, dataset.ids)
    else:
        excluded = None
        if spec.exclude_ids is not None:
            exclude = read_ids(spec.exclude_ids)
            excluded = np.array([i for i, x in enumerate(dataset.ids) if x in exclude])
            if say is not None:
                say(f"{len(excluded)} structures excluded from training and validation")
        split = seeded_split(
            parts["pool"],
            seed,
            parts.get("val"),
            parts.get("test"),
            spec.train_size,
            spec.val_size,
            spec.test_size,
            excluded,
        )
    if min(len(split.train), len(split.val), len(split.test)) == 0:
        raise ValueError(
            f"the split has {len(split.train)} training, {len(split.val)} validation and "
            f"{len(split.test)} test structures: every part needs at least one"
        )
    return split


def scaled_defaults(config: TrainConfig, n_train: int) -> TrainConfig:
    """Epochs and early-stopping patience, unless set, scaled to the training set: about
    60,000 structure passes (``60,000 / N`` epochs, within 30–300) with patience a fifth
    of that (at least 10), so a small set trains long enough and a large one not for
    hours."""
    update = {}
    if "epochs" not in config.model_fields_set:
        update["epochs"] = int(np.clip(round(60_000 / max(n_train, 1)), 30, 300))
    epochs = update.get("epochs", config.epochs)
    if "early_stopping_patience" not in config.model_fields_set:
        update["early_stopping_patience"] = max(10, epochs // 5)
    return config.model_copy(update=update)


def announcement(config: TrainConfig, split: Split) -> str:
    """What will be trained, with the stopping rule, said before the long part."""
    patience = config.early_stopping_patience
    stop = (
        f"early stopping after {patience} epochs without improvement"
        if patience
        else "no early stopping"
    )
    return (
        f"{len(split.train)} training, {len(split.val)} validation, {len(split.test)} test "
        f"structures; up to {config.epochs} epochs, {stop}"
    )


def common_split(
    first: GraphDataset, split: Split, second: GraphDataset
) -> tuple[Split, Split, int]:
    """``split`` of ``first`` restricted to the ids ``second`` also holds, the same split
    in ``second``'s indices (two graph settings, one set of materials), and how many
    structures were left out."""
    where: dict[str, int] = {}
    for index, name in enumerate(second.ids):
        where.setdefault(name, index)
    parts_a, parts_b = [], []
    for part in (split.train, split.val, split.test):
        kept = np.array([i for i in part if first.ids[i] in where], dtype=np.int64)
        parts_a.append(kept)
        parts_b.append(np.array([where[first.ids[i]] for i in kept], dtype=np.int64))
    dropped = sum(len(p) for p in (split.train, split.val, split.test)) - sum(map(len, parts_a))
    return Split(*parts_a), Split(*parts_b), dropped


def _single(spec, models: RunModels, dataset, split, config, say: Say, features) -> RunResult:
    """One model: the source's zero-shot scores, then the strategy's run."""
    from tlmat.experiments.runs import run_strategy, zero_shot
    from tlmat.transfer.sources import fresh_model

    rows, source_unit = {}, None
    if models.source is not None and spec.zero_shot:
        rows = zero_shot(models.source, dataset, split, spec.training.target)
        if models.source.target.unit != spec.training.unit:
            source_unit = models.source.target.unit or "its own unit"
    origin, on, part, label = models.source, dataset, split, spec.strategy
    if models.scratch is not None:
        origin = fresh_model(models.scratch, config.seed)
        if models.source is not None:  # the scratch twin of a transfer
            label = f"scratch [{origin.model.architecture}]"
            if origin.model.graph_settings != models.source.model.graph_settings:
                on, _ = prepared_data(spec, origin.model, say)  # its own graphs
                split, part, dropped = common_split(dataset, split, on)
                if dropped:
                    say(f"{dropped} structures left out: the scratch model cannot use them")
    result = run_strategy(
        spec.strategy,
        origin,
        on,
        part,
        config,
        spec.run_dir,
        keep_head=spec.keep_head,
        freeze_k=spec.freeze_k,
        overwrite=spec.overwrite,
        reuse=True,  # the same spec again gives the finished run's scores
        features=features if spec.strategy in FEATURE_STRATEGIES else None,
        provenance=spec.provenance or None,
    )
    record(spec.run_dir, "test_metrics.json")
    write_json(spec.run_dir / "test_metrics.json", result.test)
    return RunResult(
        spec,
        label if label != spec.strategy else result.strategy,
        result.test,
        part,
        config,
        val_mae=result.val_mae,
        epochs=result.epochs,
        seconds=result.seconds,
        reused=bool(result.extra.get("reused")),
        zero_shot=rows,
        source_unit=source_unit,
    )


def scratch_member(config: ModelConfig, seed: int, out_dim: int = 1):
    """An ensemble member trained from scratch: ``config``'s architecture initialised
    with ``seed`` and a head of ``out_dim`` outputs, no transfer strategy (module-level,
    so that it pickles)."""
    from tlmat.transfer.sources import fresh_model

    return fresh_model(config, seed, out_dim=out_dim), None


def members_side_by_side(spec: RunSpec, config: TrainConfig) -> int:
    """How many ensemble members train at once in local processes (the spec's
    ``ensemble_workers``, or :func:`tlmat.uncertainty.default_workers`)."""
    from tlmat.uncertainty import default_workers

    return min(spec.ensemble_workers or default_workers(spec.ensemble, config), spec.ensemble)


def _ensemble(spec, models: RunModels, dataset, parts, split, config, say: Say) -> RunResult:
    """A deep ensemble: each member with its own split, initialisation and seed."""
    from tlmat.transfer.sources import prepare_transfer
    from tlmat.uncertainty import train_ensemble

    out_dim = config.target_spec().out_dim
    if models.source is None:
        make = partial(scratch_member, models.scratch, out_dim=out_dim)
    else:
        make = partial(
            prepare_transfer,
            spec.strategy,
            models.source,
            config.target,
            keep_head=spec.keep_head,
            freeze_k=spec.freeze_k,
            out_dim=out_dim,
        )
    workers = members_side_by_side(spec, config)
    if workers > 1:
        say(
            f"{spec.ensemble} members, {workers} side by side with "
            f"{max(1, granted_cpus() // workers)} torch thread(s) each"
        )
    members = train_ensemble(
        make,
        dataset,
        partial(split_for, spec, dataset, parts),
        config,
        spec.run_dir,
        spec.ensemble,
        spec.overwrite,
        workers=workers,
        executor=spec.ensemble_executor,
        slurm=spec.slurm,
    )
    summary = ensemble_scores(members, dataset, split, config.target)
    record(spec.run_dir, "test_metrics.json")
    write_json(spec.run_dir / "test_metrics.json", summary)
    test = {k: summary[k] for k in ("mae", "rmse", "r2")} | {"n": summary["n_test"]}
    return RunResult(spec, "ensemble", test, split, config, ensemble=summary)


def ensemble_scores(members, dataset: GraphDataset, split: Split, target: str) -> dict:
    """An ensemble's test MAE, RMSE, R², mean σ and the coverage of its ±1σ and ±2σ
    intervals (68 % and 95 % if σ is calibrated)."""
    from tlmat.evaluation import regression_metrics
    from tlmat.uncertainty import calibration

    arrays = members.predict(dataset, split.test)
    y = dataset.targets[target][split.test]
    scores = calibration(y, arrays["mean"], arrays["sigma"])
    metrics = regression_metrics(y, arrays["mean"])
    return {
        "n_members": len(members.members),
        "mae": float(metrics["mae"]),
        "rmse": float(metrics["rmse"]),
        "r2": float(metrics["r2"]),
        "mean_sigma": float(arrays["sigma"].mean()),
        "coverage_1sigma": scores["coverage_1sigma"],
        "coverage_2sigma": scores["coverage_2sigma"],
        "n_test": len(y),
    }
