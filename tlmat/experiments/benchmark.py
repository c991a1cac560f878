"""Benchmark grids from a YAML file: training-set sizes × seeds × sources × methods on a
fixed test set, run in parallel, resumable, reported.

Methods that need no source (``base``, ``scratch``, the descriptor baselines) run once
per (size, seed) under ``common/``; transfer methods run once per source under
``<source>/``. A source is a published checkpoint or is pretrained inside the grid
(:mod:`tlmat.experiments.pretraining`) on data with the target's held-out materials
removed; a checkpoint known to have seen them is declared with ``saw_test`` and marked in
the report, never a headline number.

Jobs run on the local cores through the standard library's process pool, or on a SLURM
cluster through submitit (``executor: slurm``). A job whose ``result.json`` exists is
skipped, so an interrupted grid continues where it stopped. Every job folder holds its
manifest (``result.json``: config, seed, versions, data source and fingerprint, split
ids, wall time, peak memory) and its test-set predictions; ``sources.json`` describes the
sources, and ``report/`` holds one report comparing everything.

Example ``perov.yaml``::

    name: perov-transfer
    data: perov_5/train          # training pool (file, folder or registered name)
    val: perov_5/val             # optional fixed validation source
    test: perov_5/test           # fixed test set (else test_size from the pool)
    target: heat_ref
    unit: eV/cell
    sizes: [50, 100, 250]
    seeds: [0, 1, 2]
    val_size: 200
    test_size: 1000
    sources:
      cgcnn-mp: cgcnn/formation-energy-per-atom      # a published checkpoint
      mp-10k:                                        # pretrained here, leakage-free
        pretrain: {data: mp_cgcnn_36k/mp_cgcnn_36k.csv.gz,
                   target: formation_energy_per_atom, size: 10000}
    methods: [base, scratch, magpie+rf, full, freeze-embedding, head-only, features+rf]
    training: {epochs: 60, early_stopping_patience: 15}

Architectures are compared in one grid by giving each source its ``model`` (pretrained
sources) and each extra scratch method its own (``benchmarks/configs/model-zoo-*.yaml``)::

    model: cgcnn-mp                       # what "scratch" trains
    sources:
      mp-schnet: {pretrain: {data: …, target: …, size: 4000, model: schnet-arch2}}
    methods:
      - scratch
      - {name: scratch-schnet, strategy: scratch, model: schnet-arch2}
      - full

Every graph setting the grid's models need is built once, and only the structures that
every model can use are kept, so all methods are scored on the same materials.

Several sources' features, side by side, are one more source (``concat``): it runs the
feature methods only, on its members' pooled features (each member's computed once), and
is marked when a member saw test materials (``benchmarks/configs/concat-*.yaml``)::

    sources:
      chgnet: chgnet/0.3.0
      sevennet: sevennet/0
      both: {concat: [chgnet, sevennet], methods: [moments+mlp, moments+ridge]}

A method can carry its own training settings, merged over the grid's ``training`` for
that method only; a named recipe (:data:`METHOD_PRESETS`) is such a method, and an entry
whose ``strategy`` names one starts from it (here with fewer epochs)::

    methods:
      - scratch                                   # the grid's training settings
      - lee-asahi-scratch                         # Lee & Asahi's recipe, from scratch
      - lee-asahi                                 # ... fine-tuning the source
      - {name: full-sgd, strategy: full, training: {optimizer: sgd, lr: 0.005}}
      - {name: lee-asahi-150, strategy: lee-asahi, training: {epochs: 150}}
"""

from __future__ import annotations

import json
import logging
import resource
import time
from collections.abc import Callable
from concurrent.futures import as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from tlmat.experiments.baselines import BASELINES
from tlmat.experiments.pretraining import DEFAULT_MODEL, PretrainConfig
from tlmat.machine import granted_cpus
from tlmat.progress import Update

if TYPE_CHECKING:
    from tlmat.training import TrainConfig

logger = logging.getLogger("tlmat")


class ExecutorConfig(BaseModel):
    """Where jobs run: ``local`` processes (``workers`` at a time), ``slurm`` through
    submitit (``slurm`` holds its parameters, e.g. partition, timeout_min), ``ray`` (a
    Ray cluster, or a local one; ``ray`` holds ``ray.init``'s arguments, e.g.
    ``address: auto`` to join a running cluster; each job asks for ``threads_per_job``
    CPUs), or ``debug`` (in this process, one after the other)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["local", "slurm", "ray", "debug"] = "local"
    #: local jobs at a time: one per CPU granted (tlmat.machine.granted_cpus)
    workers: int = Field(default_factory=granted_cpus, ge=1)
    threads_per_job: int = Field(1, ge=1)
    slurm: dict[str, Any] = Field(default_factory=dict)
    ray: dict[str, Any] = Field(default_factory=dict)


#: Methods that use no source: run once per (size, seed), in ``common/``.
SOURCE_FREE = ("base", "scratch", *BASELINES)
COMMON = "common"


class MethodConfig(BaseModel):
    """A method with its own name and settings, e.g. scratch with another architecture::

    {name: scratch-schnet, strategy: scratch, model: schnet-arch2}
    """

    model_config = ConfigDict(extra="forbid")

    name: str
    strategy: str
    #: the architecture a source-free network method trains (name, preset or mapping)
    model: str | dict[str, Any] | None = None
    #: run only at training-set sizes up to this (e.g. full fine-tuning of a foundation
    #: model, too slow on a CPU at thousands of structures)
    max_size: int | None = Field(None, ge=1)
    #: training settings of this method only, over the grid's ``training`` (any
    #: TrainConfig field but those the grid sets per job, :data:`PER_JOB`)
    training: dict[str, Any] = Field(default_factory=dict)

    @field_validator("training")
    @classmethod
    def _known_settings(cls, value: dict[str, Any]) -> dict[str, Any]:
        from tlmat.training.config import TrainConfig

        allowed = sorted(set(TrainConfig.model_fields) - set(PER_JOB))
        unknown = sorted(set(value) - set(allowed))
        if unknown:
            raise ValueError(
                f"a method's training cannot set {', '.join(map(repr, unknown))}: "
                f"the grid sets {', '.join(PER_JOB)} per job; allowed: {', '.join(allowed)}"
            )
        TrainConfig(**value)  # each value checked now, not when its job runs
        return value

    @property
    def source_free(self) -> bool:
        return self.strategy in SOURCE_FREE


#: training settings the grid sets for each job, which a method cannot override
PER_JOB = ("target", "unit", "seed", "progress_bar")
#: Lee & Asahi's TL-CGCNN recipe (Comput. Mater. Sci. 190, 110314 (2021), Table S1, and
#: the CGCNN code's defaults it keeps): SGD with momentum 0.9 and no weight decay,
#: minibatches of 256, tanh target normalisation, the LR ×0.1 after epoch 100, up to 500
#: epochs with the best epoch by validation MAE (no early stop). Not reproduced: the
#: narrower FC layer of their transferred models (128 → 64; "full" keeps the source's).
LEE_ASAHI = {
    "optimizer": "sgd", "momentum": 0.9, "weight_decay": 0.0, "batch_size": 256,
    "normalization": "tanh", "scheduler": "step", "step_milestones": (100,),
    "step_factor": 0.1, "epochs": 500, "early_stopping_patience": None,
}  # fmt: skip
#: named recipes: a method name that stands for a strategy with its training settings
#: (learning rate 0.01 from scratch, 0.005 when fine-tuning, as Lee & Asahi's Table S1)
METHOD_PRESETS: dict[str, MethodConfig] = {
    "lee-asahi-scratch": MethodConfig(
        name="lee-asahi-scratch", strategy="scratch", training={**LEE_ASAHI, "lr": 0.01}
    ),
    "lee-asahi": MethodConfig(
        name="lee-asahi", strategy="full", training={**LEE_ASAHI, "lr": 0.005}
    ),
}


class SourceConfig(BaseModel):
    """A published ``checkpoint`` (registered name or file), a source to ``pretrain``, or
    the ``concat``-enation of other sources of the grid (their pooled features joined
    side by side, for the feature methods only); ``methods`` overrides the grid's
    transfer methods for this source; ``saw_test`` says why the source has seen test
    materials (its rows are marked, not headline numbers)."""

    model_config = ConfigDict(extra="forbid")

    checkpoint: str | None = None
    pretrain: PretrainConfig | None = None
    #: names of other sources of this grid whose features this one joins, in order
    concat: list[str] | None = Field(None, min_length=2)
    methods: list[str | MethodConfig] | None = None
    saw_test: str | None = None
    #: the error-vs-pretraining-size curve the source is a point of (default: what it
    #: was pretrained on: its pretraining target, or a shipped source's card's target)
    series: str | None = None

    @model_validator(mode="after")
    def _one_origin(self) -> SourceConfig:
        origins = [self.checkpoint, self.pretrain, self.concat]
        if sum(origin is not None for origin in origins) != 1:
            raise ValueError("a source needs exactly one of checkpoint:, pretrain: or concat:")
        return self


class BenchmarkConfig(BaseModel):
    """One benchmark grid (see the module docstring for a YAML example)."""

    model_config = ConfigDict(extra="forbid")

    name: str
    data: str
    target: str
    #: ``fixed-test``: one test set for every job; ``matbench``: Matbench v0.1's 5 folds,
    #: seed i testing on fold i (the data in its shipped order, no row skipped);
    #: ``extrapolation``: the test set is the ``test_size`` fraction (default 10 %) with
    #: the lowest target, which no training or validation structure reaches (Gupta et al.)
    protocol: Literal["fixed-test", "matbench", "extrapolation"] = "fixed-test"
    unit: str = ""
    log10: bool = False
    #: a repeated id in a data file: refuse the file ("error") or keep its first row
    on_duplicate: Literal["error", "first"] = "error"
    #: optional label-only table joined to ``data`` on ``join_on`` (e.g. HSE band gaps)
    labels: str | None = None
    join_on: str = "material_id"
    #: keep only targets in [target_min, target_max] (before log10), e.g. non-metals
    target_min: float | None = None
    target_max: float | None = None
    #: keep only rows whose other columns lie in ranges (before log10), e.g. the formation
    #: energies of non-metals: ``{band_gap: [0.1, null]}`` (eV; null: no bound)
    where: dict[str, tuple[float | None, float | None]] = Field(default_factory=dict)
    test: str | None = None
    val: str | None = None
    sizes: list[int]
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2])
    val_size: float = 0.1
    test_size: float | None = None
    sources: dict[str, SourceConfig] = Field(
        default_factory=lambda: {
            "cgcnn-mp": SourceConfig(checkpoint="cgcnn/formation-energy-per-atom")
        }
    )
    methods: list[str | MethodConfig] = Field(default_factory=lambda: ["scratch", "full"])
    #: the architecture ``scratch`` trains from random weights: a name (``schnet``), a
    #: preset (``cgcnn-mp``, ``schnet-arch2``) or a mapping ``{architecture: …, field: …}``
    model: str | dict[str, Any] = DEFAULT_MODEL
    freeze_k: int = 1
    #: Krawczuk & Venturi's protocol instead of seeded draws: the first ``disjoint_pool``
    #: training structures are cut into disjoint blocks of each size (400 → 2×200 →
    #: 4×100), one job per block, and the blocks' results are averaged; ``seeds`` is then
    #: ignored (the block index takes the seed's place)
    disjoint_pool: int | None = Field(None, ge=2)
    #: fewer repeats for large, expensive sizes (Lee & Asahi: 10 trials at 500, 5 up to
    #: 10k, 2 above): ``{2500: 2, 10000: 1}`` runs the first 2 seeds from N = 2,500 on and
    #: the first one from N = 10,000 on
    fewer_seeds: dict[int, int] = Field(default_factory=dict)
    training: dict[str, Any] = Field(default_factory=dict)
    threshold: float | None = None
    #: published test MAEs on the same task, in ``unit`` (leaderboard rows), which the
    #: report sets beside this grid's results: ``{"ALIGNN (Matbench v0.1)": 0.0288}``
    references: dict[str, float] = Field(default_factory=dict)
    executor: ExecutorConfig = Field(default_factory=ExecutorConfig)

    @field_validator("sources", mode="before")
    @classmethod
    def _checkpoint_names(cls, value: Any) -> Any:
        # ``name: cgcnn/…`` is short for ``name: {checkpoint: cgcnn/…}``
        if isinstance(value, dict):
            return {k: {"checkpoint": v} if isinstance(v, str) else v for k, v in value.items()}
        return value

    @model_validator(mode="after")
    def _unique_methods(self) -> BenchmarkConfig:
        names = [m.name for m in method_configs(self.methods)]
        if len(set(names)) != len(names):
            raise ValueError(f"method names must be unique: {names}")
        return self

    @model_validator(mode="after")
    def _concatenations(self) -> BenchmarkConfig:
        """A concatenation joins sources of the grid that have weights, runs feature
        methods only (there is no one network to fine-tune), and is marked when one of
        its members saw test materials."""
        from tlmat.transfer.strategies import FEATURE_STRATEGIES

        for name, source in self.sources.items():
            if source.concat is None:
                continue
            for member in source.concat:
                if member not in self.sources or self.sources[member].concat is not None:
                    raise ValueError(
                        f"source {name} concatenates {member!r}, which is not a checkpoint "
                        f"or pretrained source of this grid ({', '.join(self.sources)})"
                    )
            methods = method_configs(source.methods or self.methods)
            trained = [m.name for m in methods if m.strategy not in FEATURE_STRATEGIES]
            if trained and source.methods is not None:
                raise ValueError(
                    f"source {name} concatenates features: it runs feature methods only "
                    f"({', '.join(FEATURE_STRATEGIES)}), not {', '.join(trained)}"
                )
            if source.saw_test is None:
                seen = [m for m in source.concat if self.sources[m].saw_test]
                if seen:
                    source.saw_test = f"joins {', '.join(seen)}: {self.sources[seen[0]].saw_test}"
        return self

    @classmethod
    def from_yaml(cls, path: str | Path) -> BenchmarkConfig:
        """The grid a YAML file describes; a file that is no YAML mapping of plain values
        (a python tag, a list, broken syntax) is a ``ValueError`` naming the file."""
        from tlmat.training.config import yaml_settings

        try:
            return cls(**yaml_settings(path))
        except ValueError as error:  # pydantic's ValidationError: say which file
            error.add_note(f"in {path}")
            raise

    def quick(self) -> BenchmarkConfig:
        """A few-minute version for CI: two smallest sizes, one seed, two epochs (a
        method's own epochs too)."""
        short = {"epochs": 2, "early_stopping_patience": None}
        return self.model_copy(
            update={
                "sizes": sorted(self.sizes)[:2],
                "seeds": self.seeds[:1],
                "training": {**self.training, **short},
                "methods": _quick_methods(self.methods, short),
                "test_size": 200
                if self.test_size is None or self.test_size > 200
                else self.test_size,
                "val_size": min(self.val_size, 50) if self.val_size >= 1 else self.val_size,
                "sources": {
                    name: source.model_copy(
                        update={
                            "pretrain": _quick_pretrain(source.pretrain),
                            "methods": source.methods and _quick_methods(source.methods, short),
                        }
                    )
                    for name, source in self.sources.items()
                },
            }
        )


def _quick_methods(methods: list[str | MethodConfig], short: dict) -> list[str | MethodConfig]:
    """The methods with ``short`` over the training settings of those that have their own."""
    return [
        m.model_copy(update={"training": {**m.training, **short}}) if m.training else m
        for m in method_configs(methods)
    ]


def _quick_pretrain(spec: PretrainConfig | None) -> PretrainConfig | None:
    if spec is None:
        return None
    size = min(spec.size or 400, 400)
    training = {**spec.training, "epochs": 1, "early_stopping_patience": None}
    return spec.model_copy(update={"size": size, "training": training})


@dataclass(frozen=True)
class Job:
    size: int
    seed: int
    source: str
    method: str

    def folder(self, root: Path) -> Path:
        # one grid per source, so that every report compares methods of one source
        return root / self.source / f"n{self.size}-s{self.seed}" / self.method


def repeats(config: BenchmarkConfig, size: int) -> list[int]:
    """The seeds of one training-set size (block indices under ``disjoint_pool``)."""
    if config.disjoint_pool is None:
        limits = [n for above, n in config.fewer_seeds.items() if size >= above]
        return list(config.seeds)[: min(limits)] if limits else list(config.seeds)
    if size > config.disjoint_pool:
        raise ValueError(f"size {size} exceeds disjoint_pool {config.disjoint_pool}")
    return list(range(config.disjoint_pool // size))


def training_subset(config: BenchmarkConfig, pool: np.ndarray, size: int, seed: int) -> np.ndarray:
    """The training structures of one job: a seeded draw (nested across sizes), or block
    ``seed`` of the disjoint sub-splits of the first ``disjoint_pool`` structures."""
    from tlmat.data import disjoint_subsplits, subsample

    if config.disjoint_pool is None:
        return subsample(pool, size, seed)
    if config.disjoint_pool > len(pool):
        raise ValueError(f"disjoint_pool {config.disjoint_pool} exceeds the {len(pool)} available")
    return disjoint_subsplits(subsample(pool, config.disjoint_pool, 0), size, seed=0)[seed]


def method_configs(methods: list[str | MethodConfig]) -> list[MethodConfig]:
    """Method entries as :class:`MethodConfig` (a plain name is its own strategy); a
    strategy that names a recipe of :data:`METHOD_PRESETS` becomes the recipe's strategy
    and training settings, the entry's own training settings winning."""
    entries = [MethodConfig(name=m, strategy=m) if isinstance(m, str) else m for m in methods]
    return [_expanded(m) for m in entries]


def _expanded(method: MethodConfig) -> MethodConfig:
    recipe = METHOD_PRESETS.get(method.strategy)
    if recipe is None:
        return method
    training = {**recipe.training, **method.training}
    return method.model_copy(update={"strategy": recipe.strategy, "training": training})


def method_config(config: BenchmarkConfig, job: Job) -> MethodConfig:
    """The settings of a job's method."""
    source = config.sources.get(job.source)
    entries = (source.methods if source is not None and source.methods else []) + config.methods
    for method in method_configs(entries):
        if method.name == job.method:
            return method
    raise ValueError(f"no method {job.method!r} in {config.name}")


def jobs(config: BenchmarkConfig) -> list[Job]:
    """Every (size, seed, source, method); source-free methods once, under ``common``."""
    grid = [(size, seed) for size in sorted(config.sizes) for seed in repeats(config, size)]

    def fits(method: MethodConfig, size: int) -> bool:
        return method.max_size is None or size <= method.max_size

    common = [m for m in method_configs(config.methods) if m.source_free]
    out = [Job(size, seed, COMMON, m.name) for size, seed in grid for m in common if fits(m, size)]
    for name, source in config.sources.items():
        entries = method_configs(source.methods or config.methods)
        methods = [m for m in entries if not m.source_free]
        if source.concat is not None:  # joined features train no network
            from tlmat.transfer.strategies import FEATURE_STRATEGIES

            methods = [m for m in methods if m.strategy in FEATURE_STRATEGIES]
        out += [
            Job(size, seed, name, m.name) for size, seed in grid for m in methods if fits(m, size)
        ]
    return out


def model_settings(model: str | dict[str, Any]):
    """The graph settings a model specification needs."""
    from tlmat.models.registry import model_config

    return model_config(model).graph_settings()


def job_settings(config: BenchmarkConfig, job: Job, root: Path):
    """The graph settings of a job's network: its method's model under ``common``, else
    its source's."""
    if job.source == COMMON:
        return model_settings(method_config(config, job).model or config.model)
    source = config.sources[job.source]
    if source.concat is not None:  # its jobs read features only: its first member's graphs
        return job_settings(config, Job(job.size, job.seed, source.concat[0], job.method), root)
    if source.pretrain is not None:
        return model_settings(source.pretrain.model)
    return checkpoint_settings(source.checkpoint)


def checkpoint_settings(checkpoint: str):
    """The graph settings of a published or shipped checkpoint (a shipped tlmat source's
    from its model card, without loading it)."""
    from tlmat.models.registry import model_config
    from tlmat.transfer.sources import load_source, shipped

    if checkpoint in shipped():
        card = shipped()[checkpoint]
        return model_config(
            {"architecture": card["architecture"], **card["model"]}
        ).graph_settings()
    return load_source(checkpoint).model.graph_settings


def grid_settings(config: BenchmarkConfig) -> list:
    """Every distinct graph setting the grid's models need (the grid's model first)."""
    found = [model_settings(config.model)]
    found += [model_settings(m.model) for m in method_configs(config.methods) if m.model]
    for source in config.sources.values():
        if source.pretrain is not None:
            found.append(model_settings(source.pretrain.model))
        elif source.checkpoint is not None:  # a concatenation's members are listed
            found.append(checkpoint_settings(source.checkpoint))
    unique = {settings.key(): settings for settings in found}
    return list(unique.values())


def grid_data(
    config: BenchmarkConfig, cache_dir: Path | None, settings=None, every_model: bool = True
):
    """The dataset (pool [+ val] [+ test]) built with ``settings`` (default: the grid
    model's) and the fixed split every job draws from. Only structures that every model
    of the grid can use are kept, so every job sees the same ids in the same order
    (``every_model=False``: those the grid's model can use, without building the other
    models' graphs)."""
    from tlmat.data import concat

    everything = grid_settings(config) if every_model else [model_settings(config.model)]
    settings = settings or everything[0]
    dataset = _usable(config, config.data, settings, everything, cache_dir)
    parts = {"pool": np.arange(len(dataset))}
    for part in ("val", "test"):
        spec = getattr(config, part)
        if spec is not None:
            extra = _usable(config, spec, settings, everything, cache_dir)
            parts[part] = np.arange(len(dataset), len(dataset) + len(extra))
            dataset = concat(dataset, extra)
    inside = _inside(config, dataset)
    if inside is not None:
        parts = {name: index[inside[index]] for name, index in parts.items()}
    split = _fixed_split(config, parts, dataset.targets[config.target])
    if config.log10:
        dataset.targets[config.target] = np.log10(dataset.targets[config.target])
    return dataset, split


def _inside(config: BenchmarkConfig, dataset) -> np.ndarray | None:
    """Which rows lie inside ``target_min``/``target_max`` and every ``where`` range
    (``None``: the grid keeps every row)."""
    ranges = dict(config.where)
    if config.target_min is not None or config.target_max is not None:
        ranges[config.target] = (config.target_min, config.target_max)
    if not ranges:
        return None
    if config.protocol == "matbench":
        raise ValueError("the matbench protocol keeps every row: drop target_min/max and where")
    inside = np.ones(len(dataset), dtype=bool)
    for column, (low, high) in ranges.items():
        values = dataset.targets[column]
        inside &= (values >= (-np.inf if low is None else low)) & (
            values <= (np.inf if high is None else high)
        )
    return inside


def _usable(config: BenchmarkConfig, spec: str, settings, everything, cache_dir):
    """The structures of ``spec`` read with ``settings``, less those another model of
    the grid cannot use (``everything``: every graph setting of the grid)."""
    from tlmat.data import load_dataset
    from tlmat.experiments.pretraining import table_path

    path = table_path(spec, config.labels, config.join_on, cache_dir)
    loaded = {
        s.key(): load_dataset(
            path,
            s,
            [config.target, *config.where],
            cache_dir=cache_dir,
            on_duplicate=config.on_duplicate,
        )
        for s in [settings, *everything]
    }
    chosen = loaded[settings.key()]
    usable = set.intersection(*(set(d.ids) for d in loaded.values()))
    if len(usable) < len(chosen):
        if config.protocol == "matbench":
            raise ValueError(
                f"{spec}: {len(chosen) - len(usable)} structures are unusable by some "
                "model of the grid; the matbench protocol needs every row"
            )
        logger.warning(
            "%s: %d structures kept out, unusable by some model of the grid",
            spec,
            len(chosen) - len(usable),
        )
        chosen = chosen.subset([i for i, x in enumerate(chosen.ids) if x in usable])
    if config.log10:  # rows ≤ 0 have no log10: skipped by id, never NaN targets
        chosen = chosen.require_positive(config.target)
    return chosen


def _fixed_split(config: BenchmarkConfig, parts: dict[str, np.ndarray], y: np.ndarray):
    """The grid's fixed split of the positions in ``parts``: the test set (given, drawn
    with a fixed seed, or the lowest targets ``y`` under the extrapolation protocol), the
    validation set, and the pool jobs draw training sets from (under the matbench
    protocol, the whole pool: folds are drawn per job)."""
    from tlmat.data import Split, extrapolation_split, random_split, subsample

    def count(size: float, n: int) -> int:
        return int(size if size >= 1 else round(size * n))

    rest = parts["pool"]
    if config.protocol == "matbench":
        empty = np.empty(0, dtype=np.int64)
        return Split(rest, empty, empty)
    if config.protocol == "extrapolation":
        if "test" in parts:
            raise ValueError("the extrapolation protocol draws its own test set: drop test")
        fraction = config.test_size or 0.1
        fraction = fraction if fraction < 1 else fraction / len(rest)
        lowest = extrapolation_split(y[rest], fraction, 0.0).test
        test = rest[lowest]
        rest = np.setdiff1d(rest, test)
    elif "test" in parts:
        test = parts["test"]
        if config.test_size is not None and count(config.test_size, len(test)) < len(test):
            test = np.sort(subsample(test, count(config.test_size, len(test)), seed=0))
    else:
        cut = random_split(len(rest), (0, 0, count(config.test_size or 0.1, len(rest))), 12345)
        test = rest[cut.test]
        rest = np.setdiff1d(rest, test)
    if "val" in parts:
        val = subsample(
            parts["val"], min(count(config.val_size, len(parts["val"])), len(parts["val"])), seed=0
        )
    else:
        val = subsample(rest, count(config.val_size, len(rest)), seed=0)
        rest = np.setdiff1d(rest, val)
    return Split(rest, np.sort(val), test)


def _matbench_fold(config: BenchmarkConfig, dataset, fold: int):
    """Matbench fold ``fold`` as train pool / validation (from the training folds) / test."""
    from tlmat.data import Split, matbench_folds, subsample

    if dataset.log.n_skipped or config.val or config.test:
        raise ValueError(
            "the matbench protocol needs the whole task in its shipped order: "
            "no skipped rows and no separate val/test files"
        )
    if not 0 <= fold < 5:
        raise ValueError(f"matbench seeds are folds 0–4, got {fold}")
    split = matbench_folds(len(dataset))[fold]
    n_val = int(
        config.val_size if config.val_size >= 1 else round(config.val_size * len(split.train))
    )
    val = np.sort(subsample(split.train, n_val, seed=0))
    return Split(np.setdiff1d(split.train, val), val, split.test)


def held_out_materials(config: BenchmarkConfig, dataset, fixed) -> tuple[list[str], list[str]]:
    """Ids and formulas no source may train on: the fixed test set, or every material of
    a Matbench task (each fold tests on another fifth)."""
    index = np.arange(len(dataset)) if config.protocol == "matbench" else fixed.test
    return [dataset.ids[i] for i in index], [dataset.formulas[i] for i in index]


def grid_held_out(
    configs: list[BenchmarkConfig], cache_dir: Path | None = None
) -> dict[str, dict[str, list[str]]]:
    """Each grid's held-out materials (``{name: {"ids": …, "formulas": …}}``): a source
    shared by these grids must not train on the union. Computed exactly as the grid
    computes them, or, where the held-out set is a fixed table or a whole Matbench task,
    as its superset (before structures some model of the grid cannot use are dropped),
    which needs only the graphs of the grid's scratch model, not a foundation model's."""
    out = {}
    for config in configs:
        fixed_table = config.test is not None or config.protocol == "matbench"
        dataset, fixed = grid_data(config, cache_dir, every_model=not fixed_table)
        ids, formulas = held_out_materials(config, dataset, fixed)
        out[config.name] = {"ids": ids, "formulas": formulas}
    return out


def source_path(config: BenchmarkConfig, name: str, root: Path) -> str | Path:
    """A source's checkpoint: the published one, or the one pretrained under ``root``
    (a concatenation's: its first member's, the featuriser its runs record)."""
    source = config.sources[name]
    if source.concat is not None:
        return source_path(config, source.concat[0], root)
    return source.checkpoint if source.pretrain is None else root / "sources" / name / "model.pt"


def clean_source_check(
    config: BenchmarkConfig, name: str, source: SourceConfig, ids: list[str], formulas: list[str]
) -> dict[str, Any]:
    """Refuse a shipped tlmat source that trained on this grid's held-out materials (a
    grid it was not built for), unless the grid declares it with ``saw_test``."""
    from tlmat.transfer.sources import seen_materials

    n_ids, n_formulas = seen_materials(source.checkpoint, ids, formulas)
    if (n_ids or n_formulas) and source.saw_test is None:
        raise ValueError(
            f"{config.name}: source {name} ({source.checkpoint}) trained on {n_ids} of this "
            f"grid's {len(ids)} held-out materials and {n_formulas} of their reduced "
            "formulas; rebuild it with this grid in benchmarks/configs "
            "(python3 benchmarks/sources.py), or declare saw_test: to keep it as a marked row"
        )
    return {"held_out_seen": {"ids": n_ids, "formulas": n_formulas}}


def prepare_sources(
    config: BenchmarkConfig,
    root: Path,
    cache_dir: Path | None,
    dataset,
    fixed,
    todo: list[Job] | None = None,
) -> dict[str, dict[str, Any]]:
    """Pretrain the sources that need it (leakage-free), then describe every source in
    ``sources.json``. A source none of ``todo`` (the unfinished jobs; ``None``: all) uses
    is not pretrained again when its summary matches: a results folder keeps the
    summaries, not the weights."""
    from tlmat.experiments.pretraining import pretrain_source, pretrained_summary
    from tlmat.transfer.sources import shipped

    ids, formulas = held_out_materials(config, dataset, fixed)
    used = None if todo is None else {job.source for job in todo}
    cards = shipped()
    described = {}
    for name, source in config.sources.items():
        entry: dict[str, Any] = {"saw_test": source.saw_test}
        if source.concat is not None:
            entry.update(kind="concatenation", concat=list(source.concat))
        elif source.pretrain is None:
            entry.update(kind="checkpoint", checkpoint=source.checkpoint)
            if source.checkpoint in cards:
                entry.update(clean_source_check(config, name, source, ids, formulas))
                # its model card says how many structures it trained on: a point of the
                # error-vs-pretraining-size curve beside the sources pretrained here
                card = cards[source.checkpoint]
                entry.update(n_pretrain=card.get("n_train"), series=card.get("target"))
        else:
            folder = root / "sources" / name
            summary = pretrained_summary(source.pretrain, ids, formulas, folder)
            if summary is None or used is None or name in used:
                pretrain_source(source.pretrain, ids, formulas, folder, cache_dir)
                summary = json.loads((folder / "pretrain.json").read_text())
            entry.update(
                kind="pretrained",
                series=source.pretrain.target,
                checkpoint=str(folder / "model.pt"),
                **{k: summary[k] for k in summary if k.startswith("n_")},
                pretrain_test=summary["test"],
            )
        if source.series is not None:
            entry["series"] = source.series
        described[name] = entry
    (root / "sources.json").write_text(json.dumps(described, indent=2))
    return described


OUTPUTS = "outputs.npz"


def source_outputs(
    config: BenchmarkConfig, name: str, root: Path, source, dataset
) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Source ``name``'s layer features (pooled by every statistic of
    :data:`~tlmat.models.base.MOMENTS`), their column names and raw predictions for every
    structure of the grid (row i ↔ ``dataset[i]``), computed once and kept in
    ``<root>/<name>/outputs.npz`` for the zero-shot rows and every features+MLP/RF job: a
    foundation model takes 7–30 ms per structure on a CPU, too slow to repeat for each
    size and seed. A table written for other structures or another source is computed
    again. ``source``: the loaded source, or ``None`` to load it only when the table
    must be computed. A concatenation's table joins its members' (each computed once),
    columns named ``<member>/<layer>…``, with no predictions of its own (no columns)."""

    from tlmat.models.pooling import MOMENTS
    from tlmat.models.prediction import predict
    from tlmat.training.rundir import replaced
    from tlmat.transfer.features import feature_table, iter_layer_features
    from tlmat.transfer.sources import load_source

    members = config.sources[name].concat
    if members is not None:
        parts = [source_outputs(config, member, root, None, dataset) for member in members]
        names = [
            f"{m}/{column}" for m, part in zip(members, parts, strict=True) for column in part[1]
        ]
        features = np.concatenate([part[0] for part in parts], axis=1)
        return features, names, np.zeros((len(dataset), 0), dtype=np.float32)
    path = root / name / OUTPUTS
    origin = str(source_path(config, name, root))
    if path.exists():
        with np.load(path, allow_pickle=False) as stored:
            same = str(stored["source"]) == origin and stored["ids"].tolist() == list(dataset.ids)
            if same and "names" in stored:
                names = [str(n) for n in stored["names"]]
                return stored["features"], names, stored["predictions"]
        logger.info("%s: written for other structures or another source; computing again", path)
    source = source if source is not None else load_source(origin)
    features, names = feature_table(
        iter_layer_features(source, dataset, None, None, statistics=MOMENTS)
    )
    predictions = predict(source, dataset, None).reshape(len(dataset), -1)
    _check_outputs(name, dataset, features, predictions)
    path.parent.mkdir(parents=True, exist_ok=True)
    # a reader never sees a half-written table
    with replaced(path) as partial, partial.open("wb") as handle:
        np.savez(
            handle,
            features=features,
            names=np.array(names),
            predictions=predictions,
            ids=np.array(dataset.ids),
            source=np.array(origin),
        )
    return features, names, predictions


def _check_outputs(name: str, dataset, features: np.ndarray, predictions: np.ndarray) -> None:
    """Refuse a source's table with values that are not numbers: every job of the grid
    would read them (a foundation model once gave NaN and 1e29 for most structures in
    one long grid process)."""
    broken = ~np.isfinite(features).all(axis=1) | ~np.isfinite(predictions).all(axis=1)
    if broken.any():
        first = dataset.ids[int(np.flatnonzero(broken)[0])]
        raise ValueError(
            f"source {name}: non-finite features or predictions for {int(broken.sum())} of "
            f"{len(broken)} structures (e.g. {first}); nothing was stored: run the grid again"
        )


def prepare_outputs(config: BenchmarkConfig, root: Path, cache_dir: Path | None, todo) -> None:
    """Compute each source's outputs table before the jobs that share it run in parallel."""

    for name in sorted({j.source for j in todo if j.source != COMMON}):
        dataset, _ = grid_data(config, cache_dir, job_settings(config, Job(0, 0, name, ""), root))
        start = time.perf_counter()
        features, _, _ = source_outputs(config, name, root, None, dataset)
        logger.info(
            "%s: %d features of %d structures in %.0f s",
            name,
            features.shape[1],
            len(dataset),
            time.perf_counter() - start,
        )


def run_job(config: BenchmarkConfig, job: Job, root: Path, cache_dir: Path | None) -> dict:
    """Train and evaluate one (size, seed, source, method): a RunSpec on the job's split
    (``split.json`` beside the methods' folders), run on the grid's data; writes its
    folder (``run.yaml``: the spec; ``result.json``: scores and the job's provenance)."""
    import torch

    from tlmat.data import Split, source_fingerprint
    from tlmat.datasets import resolve
    from tlmat.experiments.runspec import loaded_source, run
    from tlmat.transfer.features import statistic_columns
    from tlmat.transfer.strategies import FEATURE_METHODS

    torch.set_num_threads(config.executor.threads_per_job)  # several jobs share the cores
    start = time.perf_counter()
    dataset, fixed = grid_data(config, cache_dir, job_settings(config, job, root))
    if config.protocol == "matbench":
        fixed = _matbench_fold(config, dataset, job.seed)
    # a size beyond the pool means "all of it" (Matbench's full-data point)
    size = min(job.size, len(fixed.train))
    split = Split(training_subset(config, fixed.train, size, job.seed), fixed.val, fixed.test)
    spec = job_spec(config, job, root, _job_split(job, root, split, dataset), cache_dir)
    features = None
    if job.source != COMMON:
        source = loaded_source(spec.source)
        features, names, predictions = source_outputs(config, job.source, root, source, dataset)
        if predictions.shape[1]:  # a concatenation predicts nothing of its own
            _job_zero_shot(config, job, root, source, dataset, split, predictions)
        if spec.strategy in FEATURE_METHODS:
            features = features[:, statistic_columns(names, FEATURE_METHODS[spec.strategy][0])]
    result = run(spec, dataset=dataset, features=features)
    folder = job.folder(root)
    manifest = json.loads((folder / "result.json").read_text())
    method = method_config(config, job)
    if method.name != method.strategy:  # reports label rows by this
        manifest["strategy"] = method.name
    manifest.update(
        {
            "job": job.__dict__,
            "signature": job_signature(config, job),
            "source": spec.source or str(spec.model),
            "model": _described(spec),
            "data_fingerprint": source_fingerprint(resolve(config.data)),
            "split_ids": {
                "train": [dataset.ids[i] for i in split.train],
                "val": [dataset.ids[i] for i in split.val],
            },
            "wall_seconds": time.perf_counter() - start,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        }
    )
    from tlmat.training.rundir import write_json

    write_json(folder / "result.json", manifest)
    return {"job": job.__dict__, "mae": result.test["mae"]}


def job_spec(config: BenchmarkConfig, job: Job, root: Path, split_file: Path, cache_dir):
    """The RunSpec of one job: its method from its source (or the grid's scratch model)
    on the job's split, with the grid's training settings as they are (every one set:
    a grid's epochs do not scale with the size)."""
    from tlmat.experiments.runspec import RunSpec

    method = method_config(config, job)
    training = _train_config(config, job)
    scratch = job.source == COMMON
    return RunSpec(
        data=str(config.data),
        split=split_file,
        source=None if scratch else str(source_path(config, job.source, root)),
        model=(method.model or config.model) if scratch else None,
        strategy=method.strategy,
        freeze_k=config.freeze_k,
        training=type(training).model_validate(training.model_dump()),
        run_dir=job.folder(root),
        overwrite=True,  # a job whose result.json is missing is done again
        zero_shot=False,
        cache_dir=cache_dir,
        provenance={"benchmark": config.name, "job": job.__dict__},
    )


def _job_split(job: Job, root: Path, split, dataset) -> Path:
    """The job's split as ids, shared by the methods of one source, size and seed."""
    from tlmat.training.rundir import replaced

    path = job.folder(root).parent / "split.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    with replaced(path) as tmp:
        split.save(tmp, dataset.ids)
    return path


def _job_zero_shot(config, job: Job, root: Path, source, dataset, split, predictions) -> None:
    """The source's own predictions on the job's test set, once per size and seed."""
    from tlmat.experiments.runs import zero_shot
    from tlmat.training.rundir import write_json

    path = job.folder(root).parent / "zero-shot.json"
    if not path.exists():
        write_json(path, zero_shot(source, dataset, split, config.target, predictions))


def _described(spec) -> dict:
    """The model a job starts from: its source, or the grid's scratch architecture."""
    from tlmat.experiments.runspec import RunModels

    return RunModels.of(spec).source_or_model.describe()


#: settings that say which jobs a grid has, or how it is run and reported, not what a
#: job computes: a finished job is reused whatever their values
GRID_ONLY = ("name", "unit", "sizes", "seeds", "sources", "methods", "fewer_seeds")
GRID_ONLY += ("threshold", "executor", "references")


#: what a source's entry says that decides no job's numbers: the curve it is drawn on,
#: the other methods run from it, why its rows are marked
SOURCE_LABELS = {"series", "methods", "saw_test"}


def job_signature(config: BenchmarkConfig, job: Job) -> dict[str, Any]:
    """Everything that decides one job's numbers: a finished job is reused only when the
    signature recorded in its ``result.json`` equals this."""
    return {
        "grid": config.model_dump(exclude={*GRID_ONLY, "training"}),
        "training": _train_config(config, job).model_dump(exclude={"unit"}),
        "method": method_config(config, job).model_dump(),
        "source": None if job.source == COMMON else _source_signature(config.sources[job.source]),
        "job": job.__dict__,
    }


def _source_signature(source: SourceConfig) -> dict[str, Any]:
    # ``concat`` joined the fields after grids were run: absent, a signature is as before
    labels = SOURCE_LABELS if source.concat is not None else {*SOURCE_LABELS, "concat"}
    return source.model_dump(exclude=labels)


def _train_config(config: BenchmarkConfig, job: Job) -> TrainConfig:
    from tlmat.training import TrainConfig

    # the method's own settings over the grid's
    training = {**config.training, **method_config(config, job).training}
    return TrainConfig(
        target=config.target, unit=config.unit, seed=job.seed, progress_bar=False, **training
    )


def set_aside_damaged(config: BenchmarkConfig, root: Path) -> list[Path]:
    """Rename each job's ``result.json`` that cannot be read (a disk that filled up, a
    file cut short by hand) to ``result.json.damaged-<time>``, so that the job runs again
    instead of blocking the grid; returns the files set aside."""
    aside = []
    for job in jobs(config):
        path = job.folder(root) / "result.json"
        try:
            if path.exists():
                json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError):
            target = path.with_name(f"result.json.damaged-{time.strftime('%Y%m%dT%H%M%S')}")
            path.rename(target)
            logger.warning("%s is unreadable; set aside as %s, the job runs again", path, target)
            aside.append(target)
    return aside


def changed_jobs(config: BenchmarkConfig, root: Path) -> dict[str, list[str]]:
    """Finished jobs under ``root`` whose recorded settings differ from ``config``'s:
    job folder → the differences."""
    from tlmat.training.rundir import differences

    changed = {}
    for job in jobs(config):
        path = job.folder(root) / "result.json"
        if not path.exists():
            continue
        try:
            manifest = json.loads(path.read_text())
        except ValueError:
            changed[str(job.folder(root))] = ["result.json is unreadable"]
            continue
        if "signature" in manifest:
            recorded = manifest["signature"]
            if isinstance(recorded.get("source"), dict):  # written before SOURCE_LABELS
                recorded["source"] = {
                    k: v for k, v in recorded["source"].items() if k not in SOURCE_LABELS
                }
            found = differences(recorded, job_signature(config, job))
        else:  # results written before signatures: their training settings and source
            before, now = manifest.get("config", {}), _train_config(config, job).model_dump()
            shared = set(before) & set(now)
            found = differences({k: before[k] for k in shared}, {k: now[k] for k in shared})
            if job.source != COMMON and "source" in manifest:
                source = config.sources[job.source]
                recorded = Path(manifest["source"])
                same = (
                    recorded.parts[-3:] == ("sources", job.source, "model.pt")
                    if source.pretrain is not None  # wherever the results folder was then
                    else str(recorded) == source.checkpoint
                )
                if not same:
                    now = source.checkpoint or f"pretrained {job.source}"
                    found.append(f"source: {manifest['source']} → {now}")
        if found:
            changed[str(job.folder(root))] = found
    return changed


def _run_on_ray(config: BenchmarkConfig, todo: list[Job], root: Path, cache: Path | None) -> None:
    """Run ``todo`` as Ray tasks; they read the graph cache ``run_benchmark`` built."""
    try:
        import ray
    except ImportError:
        raise ImportError("executor kind ray needs Ray: pip install 'tlmat[ray]'") from None
    started = not ray.is_initialized()
    if started:
        options = {"num_cpus": config.executor.workers * config.executor.threads_per_job}
        options = config.executor.ray or options  # a cluster's address says its own size
        ray.init(**options, include_dashboard=False, log_to_driver=False)
    try:
        task = ray.remote(num_cpus=config.executor.threads_per_job)(run_job)
        ray.get([task.remote(config, job, root, cache) for job in todo])
    finally:
        if started:
            ray.shutdown()


def _ticker(todo: list[Job], progress: Update | None) -> Callable[[Job], None]:
    """What tells ``progress`` of each finished job: its size, of the sizes of all."""
    total, done = float(sum(job.size for job in todo)) or 1.0, [0.0]
    if progress is not None:
        progress(f"{len(todo)} jobs to run", 0.0, total)

    def tick(job: Job) -> None:
        done[0] += job.size
        if progress is not None:
            progress(f"{job.source} n{job.size}-s{job.seed} {job.method} done", done[0], total)

    return tick


def run_benchmark(
    config: BenchmarkConfig,
    root: str | Path,
    cache_dir: str | Path | None = None,
    progress: Update | None = None,
) -> Path:
    """Pretrain the sources that need it, run every unfinished job, then write the
    report; returns ``report/report.md``. ``progress`` hears of every finished job, in
    training structures (a job's work grows with its size)."""
    import torch

    from tlmat.evaluation.report import write_report

    root = Path(root)
    set_aside_damaged(config, root)
    changed = changed_jobs(config, root) if root.is_dir() else {}
    if changed:
        shown = [f"{job}: {'; '.join(d[:3])}" for job, d in list(changed.items())[:5]]
        raise ValueError(
            f"{root} holds {len(changed)} finished job(s) run with other settings, which "
            "would be mixed into this grid's tables:\n  "
            + "\n  ".join(shown)
            + "\nuse a new --results folder (or move those jobs away) to run these settings"
        )
    root.mkdir(parents=True, exist_ok=True)
    (root / "benchmark.yaml").write_text(yaml.safe_dump(config.model_dump(), sort_keys=False))
    cache = Path(cache_dir) if cache_dir is not None else None
    todo = [j for j in jobs(config) if not (j.folder(root) / "result.json").exists()]
    logger.info("%s: %d jobs, %d to run", config.name, len(jobs(config)), len(todo))
    # build the graph cache of every graph setting (``_data`` loads them all to keep the
    # materials every model can use) once, before jobs read it in parallel
    dataset, fixed = grid_data(config, cache)
    threads = torch.get_num_threads()
    torch.set_num_threads(config.executor.workers * config.executor.threads_per_job)
    try:
        prepare_sources(config, root, cache, dataset, fixed, todo)
        prepare_outputs(config, root, cache, todo)
    finally:
        torch.set_num_threads(threads)
    kind = config.executor.kind
    tick = _ticker(todo, progress)
    if kind == "debug" or (kind == "local" and config.executor.workers == 1):
        for job in todo:
            run_job(config, job, root, cache)
            tick(job)
    elif kind == "local":
        from tlmat.training.pool import worker_pool

        with worker_pool(config.executor.workers) as pool:
            futures = {pool.submit(run_job, config, job, root, cache): job for job in todo}
            for future in as_completed(futures):
                future.result()
                tick(futures[future])
    elif kind == "ray":
        _run_on_ray(config, todo, root, cache)
    else:
        import submitit

        executor = submitit.AutoExecutor(folder=root / ".submitit", cluster="slurm")
        executor.update_parameters(**config.executor.slurm)
        # one SLURM job array for the grid (slurm_array_parallelism caps how many run)
        with executor.batch():
            submitted = [executor.submit(run_job, config, job, root, cache) for job in todo]
        for job in submitted:
            job.result()
    return write_report(
        root,
        unit=config.unit,
        threshold=config.threshold,
        title=config.name,
        references=config.references,
    )
