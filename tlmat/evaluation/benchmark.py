"""Benchmark grids from a YAML file: training-set sizes × seeds × sources × methods on a
fixed test set, run in parallel, resumable, reported.

Methods that need no source (``base``, ``scratch``, the descriptor baselines) run once
per (size, seed) under ``common/``; transfer methods run once per source under
``<source>/``. A source is a published checkpoint or is pretrained inside the grid
(:mod:`tlmat.evaluation.pretraining`) on data with the target's held-out materials
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
"""

from __future__ import annotations

import json
import logging
import resource
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from tlmat.evaluation.baselines import BASELINES
from tlmat.evaluation.pretraining import PretrainConfig

logger = logging.getLogger("tlmat")


class ExecutorConfig(BaseModel):
    """Where jobs run: ``local`` processes (``workers`` at a time), ``slurm`` through
    submitit (``slurm`` holds its parameters, e.g. partition, timeout_min), or ``debug``
    (in this process, one after the other)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["local", "slurm", "debug"] = "local"
    workers: int = Field(2, ge=1)
    threads_per_job: int = Field(1, ge=1)
    slurm: dict[str, Any] = Field(default_factory=dict)


#: Methods that use no source: run once per (size, seed), in ``common/``.
SOURCE_FREE = ("base", "scratch", *BASELINES)
COMMON = "common"


class SourceConfig(BaseModel):
    """A published ``checkpoint`` (registered name or file) or a source to ``pretrain``;
    ``methods`` overrides the grid's transfer methods for this source; ``saw_test`` says
    why the source has seen test materials (its rows are marked, not headline numbers)."""

    model_config = ConfigDict(extra="forbid")

    checkpoint: str | None = None
    pretrain: PretrainConfig | None = None
    methods: list[str] | None = None
    saw_test: str | None = None

    @model_validator(mode="after")
    def _one_origin(self) -> SourceConfig:
        if (self.checkpoint is None) == (self.pretrain is None):
            raise ValueError("a source needs exactly one of checkpoint: or pretrain:")
        return self


class BenchmarkConfig(BaseModel):
    """One benchmark grid (see the module docstring for a YAML example)."""

    model_config = ConfigDict(extra="forbid")

    name: str
    data: str
    target: str
    #: ``fixed-test``: one test set for every job; ``matbench``: Matbench v0.1's 5 folds,
    #: seed i testing on fold i (the data in its shipped order, no row skipped)
    protocol: Literal["fixed-test", "matbench"] = "fixed-test"
    unit: str = ""
    log10: bool = False
    #: optional label-only table joined to ``data`` on ``join_on`` (e.g. HSE band gaps)
    labels: str | None = None
    join_on: str = "material_id"
    #: keep only targets in [target_min, target_max] (before log10), e.g. non-metals
    target_min: float | None = None
    target_max: float | None = None
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
    methods: list[str] = Field(default_factory=lambda: ["scratch", "full"])
    #: the network ``scratch`` trains from random weights (and the pretraining template)
    architecture: str = "cgcnn/formation-energy-per-atom"
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
    executor: ExecutorConfig = Field(default_factory=ExecutorConfig)

    @field_validator("sources", mode="before")
    @classmethod
    def _checkpoint_names(cls, value: Any) -> Any:
        # ``name: cgcnn/…`` is short for ``name: {checkpoint: cgcnn/…}``
        if isinstance(value, dict):
            return {k: {"checkpoint": v} if isinstance(v, str) else v for k, v in value.items()}
        return value

    @classmethod
    def from_yaml(cls, path: str | Path) -> BenchmarkConfig:
        return cls(**(yaml.safe_load(Path(path).read_text()) or {}))

    def quick(self) -> BenchmarkConfig:
        """A few-minute version for CI: two smallest sizes, one seed, two epochs."""
        return self.model_copy(
            update={
                "sizes": sorted(self.sizes)[:2],
                "seeds": self.seeds[:1],
                "training": {**self.training, "epochs": 2, "early_stopping_patience": None},
                "test_size": 200
                if self.test_size is None or self.test_size > 200
                else self.test_size,
                "val_size": min(self.val_size, 50) if self.val_size >= 1 else self.val_size,
                "sources": {
                    name: source.model_copy(update={"pretrain": _quick_pretrain(source.pretrain)})
                    for name, source in self.sources.items()
                },
            }
        )


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


def jobs(config: BenchmarkConfig) -> list[Job]:
    """Every (size, seed, source, method); source-free methods once, under ``common``."""
    grid = [(size, seed) for size in sorted(config.sizes) for seed in repeats(config, size)]
    common = [m for m in config.methods if m in SOURCE_FREE]
    out = [Job(size, seed, COMMON, m) for size, seed in grid for m in common]
    for name, source in config.sources.items():
        methods = [m for m in (source.methods or config.methods) if m not in SOURCE_FREE]
        out += [Job(size, seed, name, m) for size, seed in grid for m in methods]
    return out


def _data(config: BenchmarkConfig, cache_dir: Path | None):
    """The dataset (pool [+ val] [+ test]) and the fixed split every job draws from."""
    from tlmat.data import Split, concat, load_dataset, random_split, subsample
    from tlmat.evaluation.pretraining import table_path
    from tlmat.graphs import GraphSettings

    settings = GraphSettings.preset("cgcnn")

    def load(spec: str):
        path = table_path(spec, config.labels, config.join_on, cache_dir)
        return load_dataset(path, settings, [config.target], cache_dir=cache_dir)

    pool = load(config.data)
    n_pool = len(pool)
    dataset, parts = pool, {"pool": np.arange(n_pool)}
    for part in ("val", "test"):
        spec = getattr(config, part)
        if spec is not None:
            extra = load(spec)
            parts[part] = np.arange(len(dataset), len(dataset) + len(extra))
            dataset = concat(dataset, extra)
    if config.target_min is not None or config.target_max is not None:
        if config.protocol == "matbench":
            raise ValueError("the matbench protocol keeps every row: drop target_min/max")
        y = dataset.targets[config.target]
        inside = (y >= (config.target_min if config.target_min is not None else -np.inf)) & (
            y <= (config.target_max if config.target_max is not None else np.inf)
        )
        parts = {name: index[inside[index]] for name, index in parts.items()}

    def count(size: float, n: int) -> int:
        return int(size if size >= 1 else round(size * n))

    rest = parts["pool"]
    if config.protocol == "matbench":  # folds are drawn per job
        empty = np.empty(0, dtype=np.int64)
        if config.log10:
            dataset.targets[config.target] = np.log10(dataset.targets[config.target])
        return dataset, Split(rest, empty, empty)
    if "test" in parts:
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
    if config.log10:
        dataset.targets[config.target] = np.log10(dataset.targets[config.target])
    return dataset, Split(rest, np.sort(val), test)


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


def source_path(config: BenchmarkConfig, name: str, root: Path) -> str | Path:
    """A source's checkpoint: the published one, or the one pretrained under ``root``."""
    if name == COMMON:
        return config.architecture
    source = config.sources[name]
    return source.checkpoint if source.pretrain is None else root / "sources" / name / "model.pt"


def prepare_sources(
    config: BenchmarkConfig, root: Path, cache_dir: Path | None, dataset, fixed
) -> dict[str, dict[str, Any]]:
    """Pretrain the sources that need it (leakage-free), then describe every source in
    ``sources.json``."""
    from tlmat.evaluation.pretraining import pretrain_source

    ids, formulas = held_out_materials(config, dataset, fixed)
    described = {}
    for name, source in config.sources.items():
        entry: dict[str, Any] = {"saw_test": source.saw_test}
        if source.pretrain is None:
            entry.update(kind="checkpoint", checkpoint=source.checkpoint)
        else:
            folder = root / "sources" / name
            pretrain_source(source.pretrain, ids, formulas, folder, cache_dir)
            summary = json.loads((folder / "pretrain.json").read_text())
            entry.update(
                kind="pretrained",
                checkpoint=str(folder / "model.pt"),
                **{k: summary[k] for k in summary if k.startswith("n_")},
                pretrain_test=summary["test"],
            )
        described[name] = entry
    (root / "sources.json").write_text(json.dumps(described, indent=2))
    return described


def run_job(config: BenchmarkConfig, job: Job, root: Path, cache_dir: Path | None) -> dict:
    """Train and evaluate one (size, seed, source, method); writes its folder."""
    import torch

    from tlmat.data import Split, source_fingerprint
    from tlmat.datasets import resolve
    from tlmat.evaluation.experiments import run_strategy, zero_shot
    from tlmat.training import TrainConfig
    from tlmat.transfer.sources import load_source

    torch.set_num_threads(config.executor.threads_per_job)  # several jobs share the cores
    start = time.perf_counter()
    dataset, fixed = _data(config, cache_dir)
    if config.protocol == "matbench":
        fixed = _matbench_fold(config, dataset, job.seed)
    # a size beyond the pool means "all of it" (Matbench's full-data point)
    size = min(job.size, len(fixed.train))
    split = Split(training_subset(config, fixed.train, size, job.seed), fixed.val, fixed.test)
    source = load_source(source_path(config, job.source, root))
    folder = job.folder(root)
    zero = folder.parent / "zero-shot.json"
    if job.source != COMMON and not zero.exists():
        folder.parent.mkdir(parents=True, exist_ok=True)
        zero.write_text(json.dumps(zero_shot(source, dataset, split, config.target), indent=2))
    train_config = TrainConfig(
        target=config.target, unit=config.unit, seed=job.seed, progress_bar=False, **config.training
    )
    result = run_strategy(
        job.method,
        source,
        dataset,
        split,
        train_config,
        folder,
        freeze_k=config.freeze_k,
        overwrite=True,
    )
    manifest = json.loads((folder / "result.json").read_text())
    manifest.update(
        {
            "job": job.__dict__,
            "source": str(source_path(config, job.source, root)),
            "data_fingerprint": source_fingerprint(resolve(config.data)),
            "split_ids": {
                "train": [dataset.ids[i] for i in split.train],
                "val": [dataset.ids[i] for i in split.val],
            },
            "wall_seconds": time.perf_counter() - start,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        }
    )
    (folder / "result.json").write_text(json.dumps(manifest, indent=2, default=str))
    return {"job": job.__dict__, "mae": result.test["mae"]}


def run_benchmark(
    config: BenchmarkConfig, root: str | Path, cache_dir: str | Path | None = None
) -> Path:
    """Pretrain the sources that need it, run every unfinished job, then write the
    report; returns ``report/report.md``."""
    import torch

    from tlmat.evaluation.report import write_report

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    (root / "benchmark.yaml").write_text(yaml.safe_dump(config.model_dump(), sort_keys=False))
    cache = Path(cache_dir) if cache_dir is not None else None
    todo = [j for j in jobs(config) if not (j.folder(root) / "result.json").exists()]
    logger.info("%s: %d jobs, %d to run", config.name, len(jobs(config)), len(todo))
    # build the graph cache once, before jobs read it in parallel
    dataset, fixed = _data(config, cache)
    threads = torch.get_num_threads()
    torch.set_num_threads(config.executor.workers * config.executor.threads_per_job)
    try:
        prepare_sources(config, root, cache, dataset, fixed)
    finally:
        torch.set_num_threads(threads)
    kind = config.executor.kind
    if kind == "debug" or (kind == "local" and config.executor.workers == 1):
        for job in todo:
            run_job(config, job, root, cache)
    elif kind == "local":
        with ProcessPoolExecutor(config.executor.workers) as pool:
            futures = [pool.submit(run_job, config, job, root, cache) for job in todo]
            for future in as_completed(futures):
                future.result()
    else:
        import submitit

        executor = submitit.AutoExecutor(folder=root / ".submitit", cluster="slurm")
        executor.update_parameters(**config.executor.slurm)
        submitted = [executor.submit(run_job, config, job, root, cache) for job in todo]
        for job in submitted:
            job.result()
    return write_report(root, unit=config.unit, threshold=config.threshold, title=config.name)
