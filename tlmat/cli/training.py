"""Training commands: ``tlmat train``, ``tlmat finetune``, ``tlmat compare``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import numpy as np
import typer

from tlmat.cli.common import (
    CacheDir,
    OnDuplicate,
    Overwrite,
    Strict,
    console,
    fail,
    metrics_table,
    skipped_table,
)

if TYPE_CHECKING:
    from tlmat.data import GraphDataset, Split
    from tlmat.graphs import GraphSettings
    from tlmat.models import ModelConfig
    from tlmat.training import TrainConfig

ALL_STRATEGIES = (
    "scratch",
    "full",
    "freeze-embedding",
    "head-only",
    "freeze-first-k",
    "discriminative",
    "features+mlp",
    "features+rf",
)

Target = Annotated[str, typer.Option("--target", "-t", help="Property to learn (column/key).")]
RunDir = Annotated[Path, typer.Option(help="Folder for checkpoints, metrics and the manifest.")]
Config = Annotated[
    Path | None, typer.Option(help="YAML file with training settings (flags override it).")
]
Epochs = Annotated[int | None, typer.Option(help="Maximum epochs [300].")]
LR = Annotated[float | None, typer.Option("--lr", help="Learning rate [1e-3].")]
BatchSize = Annotated[int | None, typer.Option(help="Batch size [64].")]
Optimizer = Annotated[str | None, typer.Option(help="adam, adamw or sgd [adam].")]
Scheduler = Annotated[str | None, typer.Option(help="plateau, cyclic or none [plateau].")]
Loss = Annotated[str | None, typer.Option(help="l1 or mse [l1].")]
WeightDecay = Annotated[float | None, typer.Option(help="L2 penalty [0].")]
Normalization = Annotated[str | None, typer.Option(help="standard, tanh or none [standard].")]
Log10 = Annotated[bool, typer.Option("--log10", help="Learn log10 of the target.")]
Patience = Annotated[int | None, typer.Option(help="Early-stopping patience in epochs [50].")]
Seed = Annotated[int, typer.Option(help="Seed for the split, initialisation and order.")]
TrainSize = Annotated[
    int | None, typer.Option(help="Use only this many training structures (data-scarce runs).")
]
ValSize = Annotated[float, typer.Option(help="Validation size: fraction or count.")]
TestSize = Annotated[
    float | None,
    typer.Option(help="Test size: fraction or count [0.1 of DATA; all of --test]."),
]
TestData = Annotated[
    str | None, typer.Option("--test", help="Separate test set (file, folder or name).")
]
Unit = Annotated[str, typer.Option(help="Unit of the target, for tables and checkpoints.")]
Extensive = Annotated[
    bool,
    typer.Option(
        "--extensive", help="The target scales with the cell (eV/cell): sum atoms, not average."
    ),
]
Model = Annotated[
    str,
    typer.Option(
        "--model",
        help="Architecture or preset (tlmat models): cgcnn, cgcnn-mp, schnet, "
        "schnet-arch1, schnet-arch2, alignn, cgat …",
    ),
]
ModelConfigFile = Annotated[
    Path | None,
    typer.Option(
        "--model-config",
        help="YAML with the architecture's settings (e.g. 'n_interactions: 4'); may name "
        "'architecture' or 'preset' itself.",
    ),
]


def model_from_options(model: str, model_config_file: Path | None) -> ModelConfig:
    """The model configuration of ``--model`` and ``--model-config``."""
    import yaml

    from tlmat.models.registry import model_config

    fields = {}
    if model_config_file is not None:
        fields = yaml.safe_load(model_config_file.read_text()) or {}
        if not isinstance(fields, dict):
            raise ValueError(f"{model_config_file}: expected a mapping of model settings")
    if "architecture" in fields or "preset" in fields:
        return model_config(fields)  # the file names its own architecture or preset
    return model_config(model, **fields)


def read_ids(path: Path) -> set[str]:
    """Ids from a ``split.json`` (its test ids), a JSON list, or a text file (one a line)."""
    text = path.read_text()
    if path.suffix == ".json":
        data = json.loads(text)
        return {str(i) for i in (data["test"] if isinstance(data, dict) else data)}
    return {line.strip() for line in text.splitlines() if line.strip()}


def training_config(
    config: Path | None, target: str, seed: int, log10: bool, unit: str, **flags
) -> TrainConfig:
    from tlmat.training import TrainConfig

    overrides = {k: v for k, v in flags.items() if v is not None}
    overrides["log10"] = log10
    overrides.update(target=target, seed=seed, unit=unit)
    for switch in ("log10", "extensive"):
        if overrides.pop(switch, False):
            overrides[switch] = True
    if config is not None:
        return TrainConfig.from_yaml(config, **overrides)
    return TrainConfig(**overrides)


def dataset_and_split(
    data: str,
    test: str | None,
    target: str,
    settings: GraphSettings,
    elements,
    cache_dir,
    train_size,
    val_size,
    test_size,
    seed,
    exclude: set[str] | None = None,
    *,
    strict: bool = False,
    on_duplicate: str = "error",
    log10: bool = False,
) -> tuple[GraphDataset, Split]:
    """Load the data (and a separate test set), and split it with the seed; ids in
    ``exclude`` never enter training or validation. With ``log10``, rows whose target is
    ≤ 0 are skipped by id (refused when ``strict``)."""
    from tlmat.data import Split, concat, load_dataset, random_split, subsample
    from tlmat.datasets import resolve

    dataset = load_dataset(
        resolve(data),
        settings,
        [target],
        cache_dir=cache_dir,
        elements=elements,
        progress=True,
        strict=strict,
        on_duplicate=on_duplicate,
    )
    if log10:
        dataset = dataset.require_positive(target, strict)
    if test is not None:
        test_set = load_dataset(
            resolve(test),
            settings,
            [target],
            cache_dir=cache_dir,
            elements=elements,
            progress=True,
            strict=strict,
            on_duplicate=on_duplicate,
        )
        if log10:
            test_set = test_set.require_positive(target, strict)
        n = len(dataset)
        val_count = int(val_size if val_size >= 1 else round(val_size * n))
        inner = random_split(n, (n - val_count, val_count, 0), seed)
        test_idx = np.arange(len(test_set))
        if test_size is not None:
            count = int(test_size if test_size >= 1 else round(test_size * len(test_set)))
            test_idx = np.sort(subsample(test_idx, count, seed=0))  # the same for every seed
        split = Split(inner.train, inner.val, test_idx + n)
        dataset = concat(dataset, test_set)
    else:
        n = len(dataset)
        test_size = 0.1 if test_size is None else test_size
        test_count = int(test_size if test_size >= 1 else round(test_size * n))
        val_count = int(val_size if val_size >= 1 else round(val_size * n))
        split = random_split(n, (n - val_count - test_count, val_count, test_count), seed)
    if exclude:
        keep = np.array([i not in exclude for i in dataset.ids])
        split = Split(split.train[keep[split.train]], split.val[keep[split.val]], split.test)
        console.print(f"{int((~keep).sum())} structures excluded from training and validation")
    if train_size is not None:
        split = Split(subsample(split.train, train_size, seed), split.val, split.test)
    table = skipped_table(dataset.log)
    if table is not None:
        console.print(table)
    return dataset, split


def common_split(first: GraphDataset, split: Split, second: GraphDataset) -> tuple[Split, Split]:
    """``split`` of ``first`` restricted to the ids ``second`` also holds, and the same
    split expressed in ``second``'s indices (two graph settings, one set of materials)."""
    from tlmat.data import Split

    where = {}
    for index, name in enumerate(second.ids):
        where.setdefault(name, index)
    parts_a, parts_b = [], []
    for part in (split.train, split.val, split.test):
        kept = np.array([i for i in part if first.ids[i] in where], dtype=np.int64)
        parts_a.append(kept)
        parts_b.append(np.array([where[first.ids[i]] for i in kept], dtype=np.int64))
    dropped = sum(len(p) for p in (split.train, split.val, split.test)) - sum(map(len, parts_a))
    if dropped:
        console.print(f"{dropped} structures left out: the scratch model cannot use them")
    return Split(*parts_a), Split(*parts_b)


def train(
    data: Annotated[str, typer.Argument(help="Training data: file, folder or registered name.")],
    target: Target,
    run_dir: RunDir = Path("runs/train"),
    config: Config = None,
    test: TestData = None,
    train_size: TrainSize = None,
    val_size: ValSize = 0.1,
    test_size: TestSize = None,
    model: Model = "cgcnn",
    model_config_file: ModelConfigFile = None,
    exclude_ids: Annotated[
        Path | None,
        typer.Option(
            help="Ids never to train on: a split.json (its test ids), a JSON list, "
            "or one id per line (e.g. a target's test materials)."
        ),
    ] = None,
    epochs: Epochs = None,
    lr: LR = None,
    batch_size: BatchSize = None,
    optimizer: Optimizer = None,
    scheduler: Scheduler = None,
    loss: Loss = None,
    weight_decay: WeightDecay = None,
    normalization: Normalization = None,
    log10: Log10 = False,
    extensive: Extensive = False,
    early_stopping_patience: Patience = None,
    seed: Seed = 0,
    unit: Unit = "",
    cache_dir: CacheDir = None,
    overwrite: Overwrite = False,
    strict: Strict = False,
    on_duplicate: OnDuplicate = "error",
) -> None:
    """Train a model of any registered architecture from scratch (an interrupted run
    resumes from its last checkpoint). The graphs are built as the model needs them.

    Examples:

        tlmat train ../shared/data/mp_cgcnn_36k/mp_cgcnn_36k.csv.gz
            -t formation_energy_per_atom --unit eV/atom --run-dir runs/mp-eform --epochs 100

        tlmat train perov_5/val -t heat_ref --unit eV/cell --model schnet-arch2
            --run-dir runs/perov-schnet --epochs 50
    """
    from tlmat.evaluation import regression_metrics
    from tlmat.graphs.cache import CacheWriteError
    from tlmat.io import InputError
    from tlmat.training import DivergedError, RunExistsError, fit, predict
    from tlmat.training.rundir import check_run_dir, owned_path
    from tlmat.transfer.sources import fresh_model

    try:
        check_run_dir(run_dir, overwrite)  # before the slow work
        cfg = training_config(
            config,
            target,
            seed,
            log10,
            unit,
            extensive=extensive,
            epochs=epochs,
            lr=lr,
            batch_size=batch_size,
            optimizer=optimizer,
            scheduler=scheduler,
            loss=loss,
            weight_decay=weight_decay,
            normalization=normalization,
            early_stopping_patience=early_stopping_patience,
        )
        trained = fresh_model(model_from_options(model, model_config_file), seed)
        settings = trained.model.graph_settings
        elements = trained.model.elements
        excluded = read_ids(exclude_ids) if exclude_ids is not None else None
        dataset, split = dataset_and_split(
            data,
            test,
            target,
            settings,
            elements,
            cache_dir,
            train_size,
            val_size,
            test_size,
            seed,
            excluded,
            strict=strict,
            on_duplicate=on_duplicate,
            log10=cfg.log10,
        )
        result = fit(trained, dataset, split, cfg, run_dir, overwrite=overwrite)
    except (
        InputError,
        CacheWriteError,
        FileNotFoundError,
        ValueError,
        RunExistsError,
        DivergedError,
    ) as error:
        fail(str(error))
    y = dataset.targets[target]
    metrics = regression_metrics(y[split.test], predict(result.trained, dataset, split.test))
    owned_path(run_dir, "test_metrics.json").write_text(json.dumps(metrics, indent=2))
    console.print(metrics_table(f"{target}: test set", {"scratch": metrics}, unit))
    console.print(
        f"{result.epochs} epochs, {result.seconds / max(result.epochs, 1):.2f} s/epoch;"
        f" model → {Path(run_dir) / 'model.pt'}"
    )


def scratch_twin(
    model: str | None,
    model_config_file: Path | None,
    seed: int,
    source_model,
    dataset: GraphDataset,
    split: Split,
    data: str,
    test: str | None,
    target: str,
    cache_dir: Path | None,
    strict: bool,
    on_duplicate: str,
) -> tuple[Split, tuple]:
    """A model of another architecture for the ``scratch`` row, with its own graphs of the
    same materials: (the source's split restricted to the materials both can use,
    (model, dataset, split) for scratch)."""
    from tlmat.data import concat, load_dataset
    from tlmat.datasets import resolve
    from tlmat.transfer.sources import fresh_model

    template = fresh_model(model_from_options(model or "cgcnn", model_config_file), seed)
    other = template.model.graph_settings
    if other == source_model.model.graph_settings:
        return split, (template, dataset, split)
    parts = [
        load_dataset(
            resolve(spec),
            other,
            [target],
            cache_dir=cache_dir,
            elements=template.model.elements,
            strict=strict,
            on_duplicate=on_duplicate,
        )
        for spec in (data, test)
        if spec is not None
    ]
    scratch_data = parts[0] if len(parts) == 1 else concat(*parts)
    split, scratch_split = common_split(dataset, split, scratch_data)
    return split, (template, scratch_data, scratch_split)


def finetune(
    data: Annotated[str, typer.Argument(help="Target data: file, folder or registered name.")],
    target: Target,
    source: Annotated[
        str, typer.Option(help="Source: registered name (tlmat models), tlmat or CGCNN file.")
    ] = "cgcnn/formation-energy-per-atom",
    strategy: Annotated[str, typer.Option(help=f"One of {', '.join(ALL_STRATEGIES)}.")] = "full",
    freeze_k: Annotated[int, typer.Option(help="Interactions frozen by freeze-first-k.")] = 1,
    keep_head: Annotated[
        bool, typer.Option("--keep-head", help="Keep the source head even for a new target.")
    ] = False,
    run_dir: RunDir = Path("runs/finetune"),
    config: Config = None,
    test: TestData = None,
    train_size: TrainSize = None,
    val_size: ValSize = 0.1,
    test_size: TestSize = None,
    epochs: Epochs = None,
    lr: LR = None,
    batch_size: BatchSize = None,
    optimizer: Optimizer = None,
    scheduler: Scheduler = None,
    loss: Loss = None,
    weight_decay: WeightDecay = None,
    normalization: Normalization = None,
    log10: Log10 = False,
    extensive: Extensive = False,
    early_stopping_patience: Patience = None,
    seed: Seed = 0,
    unit: Unit = "",
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            help="With --strategy scratch: the architecture or preset trained from random "
            "weights [the source's], on the materials both models can use.",
        ),
    ] = None,
    model_config_file: ModelConfigFile = None,
    cache_dir: CacheDir = None,
    overwrite: Overwrite = False,
    strict: Strict = False,
    on_duplicate: OnDuplicate = "error",
) -> None:
    """Fine-tune a pretrained model on a (small) target set; prints the source's zero-shot
    score beside the fine-tuned one.

    Examples (freeze the embedding of the MP formation-energy CGCNN; then, for the same
    split, a SchNet from scratch):

        tlmat finetune perov_5/train -t heat_ref --test perov_5/test --train-size 300
            --source cgcnn/formation-energy-per-atom --strategy freeze-embedding

        tlmat finetune perov_5/train -t heat_ref --test perov_5/test --train-size 300
            --strategy scratch --model schnet-arch2 --run-dir runs/finetune-schnet
    """
    from tlmat.experiments.runs import run_strategy, zero_shot
    from tlmat.graphs.cache import CacheWriteError
    from tlmat.io import InputError
    from tlmat.models import CheckpointError
    from tlmat.training import DivergedError, RunExistsError
    from tlmat.training.rundir import check_run_dir
    from tlmat.transfer.sources import load_source

    try:
        cfg = training_config(
            config,
            target,
            seed,
            log10,
            unit,
            extensive=extensive,
            epochs=epochs,
            lr=lr,
            batch_size=batch_size,
            optimizer=optimizer,
            scheduler=scheduler,
            loss=loss,
            weight_decay=weight_decay,
            normalization=normalization,
            early_stopping_patience=early_stopping_patience,
        )
        check_run_dir(run_dir, overwrite)  # before the slow work
        source_model = load_source(source)
        dataset, split = dataset_and_split(
            data,
            test,
            target,
            source_model.model.graph_settings,
            source_model.model.elements,
            cache_dir,
            train_size,
            val_size,
            test_size,
            seed,
            strict=strict,
            on_duplicate=on_duplicate,
            log10=cfg.log10,
        )
        origin, on, part = source_model, dataset, split
        if model is not None or model_config_file is not None:
            if strategy != "scratch":
                raise ValueError(
                    f"--model applies to --strategy scratch; {strategy!r} transfers the "
                    f"source, whose architecture ({source_model.model.architecture}) it keeps"
                )
            split, (origin, on, part) = scratch_twin(
                model,
                model_config_file,
                seed,
                source_model,
                dataset,
                split,
                data,
                test,
                target,
                cache_dir,
                strict,
                on_duplicate,
            )
        rows = zero_shot(source_model, dataset, split, target)
        result = run_strategy(
            strategy,
            origin,
            on,
            part,
            cfg,
            run_dir,
            keep_head=keep_head,
            freeze_k=freeze_k,
            overwrite=overwrite,
        )
    except (
        InputError,
        CacheWriteError,
        FileNotFoundError,
        ValueError,
        RunExistsError,
        CheckpointError,
        DivergedError,
    ) as error:
        fail(str(error))
    label = result.strategy
    if origin is not source_model:
        label = f"scratch [{origin.model.architecture}]"
    rows[label] = result.test
    console.print(
        metrics_table(f"{target}: test set ({len(split.train)} training structures)", rows, unit)
    )
    console.print(f"run → {run_dir}")


def compare(
    data: Annotated[str, typer.Argument(help="Target data: file, folder or registered name.")],
    target: Target,
    source: Annotated[str, typer.Option(help="Source model.")] = "cgcnn/formation-energy-per-atom",
    strategies: Annotated[str, typer.Option(help="Comma-separated strategies, or 'all'.")] = "all",
    run_dir: RunDir = Path("runs/compare"),
    config: Config = None,
    test: TestData = None,
    train_size: TrainSize = None,
    val_size: ValSize = 0.1,
    test_size: TestSize = None,
    epochs: Epochs = None,
    lr: LR = None,
    batch_size: BatchSize = None,
    log10: Log10 = False,
    extensive: Extensive = False,
    early_stopping_patience: Patience = None,
    seed: Seed = 0,
    unit: Unit = "",
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            help="Architecture or preset trained from scratch for the 'scratch' row "
            "[the source's]; structures it cannot use are left out of every row.",
        ),
    ] = None,
    model_config_file: ModelConfigFile = None,
    cache_dir: CacheDir = None,
    overwrite: Overwrite = False,
    strict: Strict = False,
    on_duplicate: OnDuplicate = "error",
) -> None:
    """Scratch against every transfer strategy from one source, on one held-out test set.

    Examples (fine-tune the MP formation-energy CGCNN on 300 Castelli perovskites; then
    the same against a SchNet trained from scratch):

        tlmat compare perov_5/train -t heat_ref --unit eV/cell --test perov_5/test
            --test-size 1000 --train-size 300 --val-size 100 --epochs 60

        tlmat compare perov_5/train -t heat_ref --unit eV/cell --test perov_5/test
            --test-size 1000 --train-size 300 --val-size 100 --epochs 60
            --strategies scratch,full --model schnet-arch2 --run-dir runs/compare-schnet
    """
    from tlmat.experiments.runs import run_strategy, zero_shot
    from tlmat.graphs.cache import CacheWriteError
    from tlmat.io import InputError
    from tlmat.models import CheckpointError
    from tlmat.training import DivergedError, RunExistsError
    from tlmat.training.rundir import check_run_dir, claim, owned_path
    from tlmat.transfer.sources import load_source

    chosen = ALL_STRATEGIES if strategies == "all" else tuple(strategies.split(","))
    try:
        cfg = training_config(
            config,
            target,
            seed,
            log10,
            unit,
            extensive=extensive,
            epochs=epochs,
            lr=lr,
            batch_size=batch_size,
            early_stopping_patience=early_stopping_patience,
        )
        cfg = cfg.model_copy(update={"progress_bar": False})
        # one folder per method inside run_dir: all checked before anything trains
        claim(run_dir, *chosen, "comparison.json")
        for name in chosen:
            check_run_dir(Path(run_dir) / name, overwrite)
        source_model = load_source(source)
        dataset, split = dataset_and_split(
            data,
            test,
            target,
            source_model.model.graph_settings,
            source_model.model.elements,
            cache_dir,
            train_size,
            val_size,
            test_size,
            seed,
            strict=strict,
            on_duplicate=on_duplicate,
            log10=cfg.log10,
        )
        scratch = None
        if model is not None or model_config_file is not None:
            split, scratch = scratch_twin(
                model,
                model_config_file,
                seed,
                source_model,
                dataset,
                split,
                data,
                test,
                target,
                cache_dir,
                strict,
                on_duplicate,
            )
        rows = zero_shot(source_model, dataset, split, target)
        for name in chosen:
            console.print(f"[bold]{name}[/] …")
            origin, on, part = source_model, dataset, split
            if name == "scratch" and scratch is not None:
                origin, on, part = scratch
            result = run_strategy(
                name, origin, on, part, cfg, Path(run_dir) / name, overwrite=overwrite
            )
            label = result.strategy
            if origin is not source_model:
                label = f"scratch [{origin.model.architecture}]"
            rows[label] = result.test
    except (
        InputError,
        CacheWriteError,
        FileNotFoundError,
        ValueError,
        RunExistsError,
        CheckpointError,
        DivergedError,
    ) as error:
        fail(str(error))
    title = (
        f"{target}: {len(split.train)} training, {len(split.val)} validation, "
        f"{len(split.test)} test structures; source {source}"
    )
    console.print(metrics_table(title, rows, unit))
    owned_path(run_dir, "comparison.json").write_text(json.dumps(rows, indent=2))


def benchmark(
    config: Annotated[Path, typer.Argument(help="Benchmark YAML (see benchmarks/configs/).")],
    results: Annotated[Path | None, typer.Option(help="Results folder [results/NAME].")] = None,
    quick: Annotated[
        bool, typer.Option("--quick", help="Two smallest sizes, one seed, two epochs.")
    ] = False,
    workers: Annotated[int | None, typer.Option(help="Parallel local jobs.")] = None,
    cache_dir: CacheDir = None,
    strict: Strict = False,
) -> None:
    """Run a grid (sizes × seeds × sources × methods) in parallel, resumably (finished jobs
    are skipped), then write one report. Sources declared with ``pretrain:`` are trained
    first, without the target's test materials (same id or same reduced formula).

    Example:

        tlmat benchmark benchmarks/configs/perovskites.yaml --quick
    """
    from tlmat.data.dataset import strict_reading
    from tlmat.experiments.benchmark import BenchmarkConfig, run_benchmark
    from tlmat.graphs.cache import CacheWriteError
    from tlmat.io import InputError
    from tlmat.models import CheckpointError

    try:
        cfg = BenchmarkConfig.from_yaml(config)
        if quick:
            cfg = cfg.quick()
        if workers is not None:
            cfg = cfg.model_copy(
                update={"executor": cfg.executor.model_copy(update={"workers": workers})}
            )
        with strict_reading(strict):  # the grid loads its datasets (and sources') inside
            report = run_benchmark(cfg, results or Path("results") / cfg.name, cache_dir)
    except (InputError, CacheWriteError, FileNotFoundError, ValueError, CheckpointError) as error:
        fail(str(error))
    console.print(f"report → {report}")
