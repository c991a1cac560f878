"""Training commands: ``tlmat train``, ``tlmat finetune``, ``tlmat compare``."""

from __future__ import annotations

import json
import os
import time
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import numpy as np
import typer

from tlmat.cli.common import (
    CacheDir,
    Disorder,
    OnDuplicate,
    Overwrite,
    Strict,
    console,
    fail,
    metrics_table,
    note_run_dir,
    reported_errors,
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
Epochs = Annotated[
    int | None,
    typer.Option(
        help="Maximum epochs; early stopping may end sooner (--early-stopping-patience) "
        "[60,000 / N training structures, within 30–300]."
    ),
]
LR = Annotated[float | None, typer.Option("--lr", help="Learning rate [1e-3].")]
BatchSize = Annotated[int | None, typer.Option(help="Batch size [64].")]
Optimizer = Annotated[str | None, typer.Option(help="adam, adamw or sgd [adam].")]
Scheduler = Annotated[
    str | None, typer.Option(help="plateau, cyclic, onecycle (warm-up + cosine) or none [plateau].")
]
Loss = Annotated[
    str | None,
    typer.Option(
        help="l1, mse or gaussian_nll (the Gaussian negative log-likelihood: a head of "
        "width 2 predicts each structure's mean and variance; with --ensemble, σ_a per "
        "structure) [l1]."
    ),
]
WeightDecay = Annotated[float | None, typer.Option(help="L2 penalty [0].")]
Normalization = Annotated[str | None, typer.Option(help="standard, tanh or none [standard].")]
Log10 = Annotated[bool, typer.Option("--log10", help="Learn log10 of the target.")]
Patience = Annotated[
    int | None,
    typer.Option(
        help="Stop after this many epochs without a better validation MAE [epochs / 5, "
        "at least 10]; 0 trains every epoch."
    ),
]
Seed = Annotated[int, typer.Option(help="Seed for the split, initialisation and order.")]
TrainSize = Annotated[
    int | None, typer.Option(help="Use only this many training structures (data-scarce runs).")
]
ValSize = Annotated[
    float | None,
    typer.Option(
        help="Validation size: fraction or count [a quarter of the training set, "
        "20–1,000; all of --val]."
    ),
]
TestSize = Annotated[
    float | None,
    typer.Option(help="Test size: fraction or count [0.1 of DATA; all of --test]."),
]
TestData = Annotated[
    str | None,
    typer.Option("--test", help="Your own test set (file, folder or name); all its rows."),
]
ValData = Annotated[
    str | None,
    typer.Option("--val", help="Your own validation set (file, folder or name); all its rows."),
]
SplitFile = Annotated[
    Path | None,
    typer.Option(
        "--split",
        help="Your own split: a split.json with train/val/test id lists, as tlmat writes "
        "them (every id must be in the data).",
    ),
]
Accelerator = Annotated[
    str | None, typer.Option(help="auto, cpu, gpu or mps (Lightning's accelerator) [auto].")
]
Devices = Annotated[
    int | None,
    typer.Option(
        help="Processes per node, one per GPU (or CPU processes with --accelerator cpu); "
        "more than one trains data-parallel (DDP) with --batch-size per process [1]."
    ),
]
NumNodes = Annotated[
    int | None, typer.Option(help="Machines of a DDP run, e.g. SLURM nodes under srun [1].")
]
DistributedStrategy = Annotated[
    str | None,
    typer.Option(
        "--ddp-strategy",
        help="How a DDP run's processes start: ddp (Lightning relaunches this command "
        "per device, or srun started them), ddp_spawn (one machine) or auto [auto].",
    ),
]
Precision = Annotated[
    str | None,
    typer.Option(help="32-true, 64-true, 16-mixed (GPUs) or bf16-mixed [32-true]."),
]
EnsembleWorkers = Annotated[
    int | None,
    typer.Option(
        min=1,
        help="With --ensemble: members trained side by side in local processes, the cores "
        "shared between them [one per core, at most N; 1 on a GPU].",
    ),
]
EnsembleExecutor = Annotated[
    str,
    typer.Option(
        help="With --ensemble: where members train: 'local' (processes here), 'slurm' (one "
        "submitit job per member, as tlmat benchmark's executor) or 'debug' (submitit "
        "in this process, to try a setup).",
    ),
]
Slurm = Annotated[
    list[str] | None,
    typer.Option(
        "--slurm",
        help="A submitit SLURM parameter KEY=VALUE (repeatable), e.g. --slurm "
        "partition=cpu --slurm timeout_min=120 --slurm cpus_per_task=4.",
    ),
]


def slurm_parameters(items: list[str] | None) -> dict:
    """``["partition=cpu", "timeout_min=120"]`` → ``{"partition": "cpu", "timeout_min":
    120}`` (integers and decimals become numbers, as YAML would read them)."""
    import yaml

    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--slurm {item!r}: expected KEY=VALUE, e.g. partition=cpu")
        out[key.strip()] = yaml.safe_load(value)
    return out


#: the architecture every command trains from scratch unless told otherwise: the shape of
#: the published Materials Project CGCNNs (64/4/32), so that scratch and transfer compare
#: like with like (= tlmat.experiments.pretraining.DEFAULT_MODEL, which a test checks)
SCRATCH_MODEL = "cgcnn-mp"
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


def target_data(
    data: str,
    target: str,
    settings: GraphSettings,
    elements,
    cache_dir,
    *,
    test: str | None = None,
    val: str | None = None,
    strict: bool = False,
    on_duplicate: str = "error",
    disorder: str = "skip",
    log10: bool = False,
) -> tuple[GraphDataset, dict[str, np.ndarray]]:
    """The data, and the user's own validation and test sets, as one dataset with the
    positions of each part (``pool``, ``val``, ``test``). With ``log10``, rows whose
    target is ≤ 0 are skipped by id (refused when ``strict``)."""
    from tlmat.data import concat, load_dataset
    from tlmat.datasets import resolve

    dataset, parts = None, {}
    for part, spec in (("pool", data), ("val", val), ("test", test)):
        if spec is None:
            continue
        loaded = load_dataset(
            resolve(spec),
            settings,
            [target],
            cache_dir=cache_dir,
            elements=elements,
            progress=True,
            strict=strict,
            on_duplicate=on_duplicate,
            disorder=disorder,
            workers=os.cpu_count() or 1,  # a first read parses on every core
        )
        if log10:
            loaded = loaded.require_positive(target, strict)
        offset = 0 if dataset is None else len(dataset)
        parts[part] = np.arange(offset, offset + len(loaded))
        dataset = loaded if dataset is None else concat(dataset, loaded)
    table = skipped_table(dataset.log)
    if table is not None:
        console.print(table)
    return dataset, parts


def split_of(
    dataset: GraphDataset,
    parts: dict[str, np.ndarray],
    seed: int,
    train_size: int | None = None,
    val_size: float | None = None,
    test_size: float | None = None,
    exclude: set[str] | None = None,
    split_file: Path | None = None,
) -> Split:
    """The split for one seed (:func:`tlmat.data.seeded_split`), or the user's own
    ``split.json`` (id lists, as tlmat writes them)."""
    from tlmat.data import Split, seeded_split

    if split_file is not None:
        split = Split.load(split_file, dataset.ids)
    else:
        excluded = None
        if exclude:
            excluded = np.array([i for i, x in enumerate(dataset.ids) if x in exclude])
            console.print(f"{len(excluded)} structures excluded from training and validation")
        split = seeded_split(
            parts["pool"],
            seed,
            parts.get("val"),
            parts.get("test"),
            train_size,
            val_size,
            test_size,
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


def announce(config: TrainConfig, split: Split) -> TrainConfig:
    """Say what will be trained, with the stopping rule, before the long part."""
    patience = config.early_stopping_patience
    stop = (
        f"early stopping after {patience} epochs without improvement"
        if patience
        else ("no early stopping")
    )
    console.print(
        f"{len(split.train)} training, {len(split.val)} validation, {len(split.test)} test "
        f"structures; up to {config.epochs} epochs, {stop}"
    )
    return config


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
    data: Annotated[
        str, typer.Argument(metavar="DATA", help="Training data: file, folder or registered name.")
    ],
    target: Target,
    run_dir: RunDir = Path("runs/train"),
    config: Config = None,
    test: TestData = None,
    val: ValData = None,
    split_file: SplitFile = None,
    train_size: TrainSize = None,
    val_size: ValSize = None,
    test_size: TestSize = None,
    model: Model = SCRATCH_MODEL,
    model_config_file: ModelConfigFile = None,
    ensemble: Annotated[
        int,
        typer.Option(
            min=1,
            help="Train a deep ensemble of this many members, each with its own split, "
            "initialisation and seed; predict then gives σ (Ekström et al.) [1].",
        ),
    ] = 1,
    ensemble_workers: EnsembleWorkers = None,
    ensemble_executor: EnsembleExecutor = "local",
    slurm: Slurm = None,
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
    accelerator: Accelerator = None,
    devices: Devices = None,
    num_nodes: NumNodes = None,
    ddp_strategy: DistributedStrategy = None,
    precision: Precision = None,
    seed: Seed = 0,
    unit: Unit = "",
    cache_dir: CacheDir = None,
    overwrite: Overwrite = False,
    strict: Strict = False,
    on_duplicate: OnDuplicate = "error",
    disorder: Disorder = "skip",
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
    from tlmat.training import fit, predict
    from tlmat.training.fit import finished_run
    from tlmat.training.rundir import check_run_dir, owned_path
    from tlmat.transfer.sources import fresh_model

    note_run_dir(run_dir, Path("runs/train"))
    with reported_errors():
        check_run_dir(run_dir, overwrite, finished_ok=True)  # before the slow work
        executor, slurm_options = _executor(ensemble_executor), slurm_parameters(slurm)
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
            accelerator=accelerator,
            devices=devices,
            num_nodes=num_nodes,
            ddp_strategy=ddp_strategy,
            precision=precision,
        )
        out_dim = cfg.target_spec().out_dim  # 2 with --loss gaussian_nll: mean, variance
        trained = fresh_model(model_from_options(model, model_config_file), seed, out_dim=out_dim)
        settings = trained.model.graph_settings
        elements = trained.model.elements
        excluded = read_ids(exclude_ids) if exclude_ids is not None else None
        dataset, parts = target_data(
            data,
            target,
            settings,
            elements,
            cache_dir,
            test=test,
            val=val,
            strict=strict,
            on_duplicate=on_duplicate,
            disorder=disorder,
            log10=cfg.log10,
        )
        split = split_of(
            dataset, parts, seed, train_size, val_size, test_size, excluded, split_file
        )
        cfg = announce(scaled_defaults(cfg, len(split.train)), split)
        if ensemble > 1:
            from tlmat.uncertainty import train_ensemble

            spec = model_from_options(model, model_config_file)
            members = train_ensemble(
                partial(scratch_member, spec, out_dim=out_dim),
                dataset,
                partial(split_of, dataset, parts, train_size=train_size, val_size=val_size,
                        test_size=test_size, exclude=excluded, split_file=split_file),
                cfg,
                run_dir,
                ensemble,
                overwrite,
                workers=ensemble_side_by_side(ensemble, ensemble_workers, cfg),
                executor=executor,
                slurm=slurm_options,
            )  # fmt: skip
            _ensemble_summary(members, dataset, split, target, unit, run_dir)
            return
        done = None if overwrite else finished_run(run_dir, trained, dataset, split, cfg)
        if done is None:
            result = fit(trained, dataset, split, cfg, run_dir, overwrite=overwrite)
            model, epochs, seconds = result.trained, result.epochs, result.seconds
        else:  # the same command again: the finished run, not a new one
            manifest = json.loads((Path(run_dir) / "run.json").read_text())
            model, epochs, seconds = done, manifest["epochs"], manifest["seconds"]
            console.print(f"{run_dir} holds this run, finished: reusing it")
    y = dataset.targets[target]
    metrics = regression_metrics(y[split.test], predict(model, dataset, split.test))
    owned_path(run_dir, "test_metrics.json").write_text(json.dumps(metrics, indent=2))
    console.print(metrics_table(f"{target}: test set", {"scratch": metrics}, unit))
    console.print(
        f"{epochs} epochs, {seconds / max(epochs, 1):.2f} s/epoch;"
        f" model → {Path(run_dir) / 'model.pt'}"
    )


def scratch_member(config: ModelConfig, seed: int, out_dim: int = 1):
    """An ensemble member trained from scratch: ``config``'s architecture initialised
    with ``seed`` and a head of ``out_dim`` outputs, no transfer strategy (module-level,
    so that it pickles)."""
    from tlmat.transfer.sources import fresh_model

    return fresh_model(config, seed, out_dim=out_dim), None


def _executor(name: str):
    if name not in ("local", "slurm", "debug"):
        raise ValueError(f"--ensemble-executor {name!r}: one of local, slurm, debug")
    return name


def ensemble_side_by_side(n_members: int, workers: int | None, config: TrainConfig) -> int:
    """``--ensemble-workers``, or its default (:func:`tlmat.uncertainty.default_workers`),
    said before the long part."""
    from tlmat.uncertainty import default_workers, local_cores

    workers = min(workers or default_workers(n_members, config), n_members)
    if workers > 1:
        console.print(
            f"{n_members} members, {workers} side by side with "
            f"{max(1, local_cores() // workers)} torch thread(s) each"
        )
    return workers


def _ensemble_summary(members, dataset, split, target: str, unit: str, run_dir) -> None:
    """The ensemble's test MAE, mean σ and the coverage of its ±1σ and ±2σ intervals."""
    from tlmat.training.rundir import owned_path
    from tlmat.uncertainty import calibration

    arrays = members.predict(dataset, split.test)
    y = dataset.targets[target][split.test]
    scores = calibration(y, arrays["mean"], arrays["sigma"])
    summary = {
        "n_members": len(members.members),
        "mae": float(np.abs(arrays["mean"] - y).mean()),
        "mean_sigma": float(arrays["sigma"].mean()),
        "coverage_1sigma": scores["coverage_1sigma"],
        "coverage_2sigma": scores["coverage_2sigma"],
        "n_test": len(y),
    }
    owned_path(run_dir, "test_metrics.json").write_text(json.dumps(summary, indent=2))
    u = f" {unit}" if unit else ""
    console.print(
        f"ensemble of {summary['n_members']}: test MAE {summary['mae']:.4f}{u}, mean σ "
        f"{summary['mean_sigma']:.4f}{u}; |error| ≤ σ for {summary['coverage_1sigma']:.0%} "
        f"and ≤ 2σ for {summary['coverage_2sigma']:.0%} of {len(y)} test structures "
        "(68 % and 95 % if σ is calibrated)"
    )
    console.print(f"ensemble → {run_dir} (tlmat predict {run_dir} STRUCTURES… gives σ)")


def scratch_data(
    config: ModelConfig,
    source_model,
    dataset: GraphDataset,
    data: str,
    test: str | None,
    val: str | None,
    target: str,
    cache_dir: Path | None,
    strict: bool,
    on_duplicate: str,
    disorder: str = "skip",
) -> tuple[ModelConfig, GraphDataset | None]:
    """Another architecture for the ``scratch`` row, with its own graphs of the same data
    (``None`` when it uses the source's graphs)."""
    from tlmat.models.registry import build

    probe = build(config)
    if probe.graph_settings == source_model.model.graph_settings:
        return config, None
    other, _ = target_data(
        data,
        target,
        probe.graph_settings,
        probe.elements,
        cache_dir,
        test=test,
        val=val,
        strict=strict,
        on_duplicate=on_duplicate,
        disorder=disorder,
    )
    return config, other


def finetune(
    data: Annotated[
        str, typer.Argument(metavar="DATA", help="Target data: file, folder or registered name.")
    ],
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
    val: ValData = None,
    split_file: SplitFile = None,
    train_size: TrainSize = None,
    val_size: ValSize = None,
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
    accelerator: Accelerator = None,
    devices: Devices = None,
    num_nodes: NumNodes = None,
    ddp_strategy: DistributedStrategy = None,
    precision: Precision = None,
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
    ensemble: Annotated[
        int,
        typer.Option(
            min=1,
            help="Fine-tune a deep ensemble of this many members, each with its own split, "
            "new head and seed; predict then gives σ (Ekström et al.) [1].",
        ),
    ] = 1,
    ensemble_workers: EnsembleWorkers = None,
    ensemble_executor: EnsembleExecutor = "local",
    slurm: Slurm = None,
    cache_dir: CacheDir = None,
    overwrite: Overwrite = False,
    strict: Strict = False,
    on_duplicate: OnDuplicate = "error",
    disorder: Disorder = "skip",
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
    from tlmat.training.rundir import check_run_dir
    from tlmat.transfer.sources import fresh_model, load_source

    note_run_dir(run_dir, Path("runs/finetune"))
    with reported_errors():
        executor, slurm_options = _executor(ensemble_executor), slurm_parameters(slurm)
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
            accelerator=accelerator,
            devices=devices,
            num_nodes=num_nodes,
            ddp_strategy=ddp_strategy,
            precision=precision,
        )
        check_run_dir(run_dir, overwrite, finished_ok=True)  # before the slow work
        source_model = load_source(source)
        dataset, parts = target_data(
            data,
            target,
            source_model.model.graph_settings,
            source_model.model.elements,
            cache_dir,
            test=test,
            val=val,
            strict=strict,
            on_duplicate=on_duplicate,
            disorder=disorder,
            log10=cfg.log10,
        )
        split = split_of(
            dataset, parts, seed, train_size, val_size, test_size, split_file=split_file
        )
        cfg = announce(scaled_defaults(cfg, len(split.train)), split)
        if ensemble > 1:
            if model is not None or model_config_file is not None:
                raise ValueError("--ensemble transfers the source: it takes no --model")
            from tlmat.transfer.sources import prepare_transfer
            from tlmat.uncertainty import train_ensemble

            members = train_ensemble(
                partial(prepare_transfer, strategy, source_model, target, keep_head, freeze_k,
                        out_dim=cfg.target_spec().out_dim),
                dataset,
                partial(split_of, dataset, parts, train_size=train_size, val_size=val_size,
                        test_size=test_size, split_file=split_file),
                cfg,
                run_dir,
                ensemble,
                overwrite,
                workers=ensemble_side_by_side(ensemble, ensemble_workers, cfg),
                executor=executor,
                slurm=slurm_options,
            )  # fmt: skip
            _ensemble_summary(members, dataset, split, target, unit, run_dir)
            return
        origin, on, part = source_model, dataset, split
        if model is not None or model_config_file is not None:
            if strategy != "scratch":
                raise ValueError(
                    f"--model applies to --strategy scratch; {strategy!r} transfers the "
                    f"source, whose architecture ({source_model.model.architecture}) it keeps"
                )
            twin_config, twin_data = scratch_data(
                model_from_options(model or SCRATCH_MODEL, model_config_file),
                source_model,
                dataset,
                data,
                test,
                val,
                target,
                cache_dir,
                strict,
                on_duplicate,
                disorder,
            )
            origin = fresh_model(twin_config, seed)
            if twin_data is not None:
                split, part = common_split(dataset, split, twin_data)
                on = twin_data
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
            reuse=True,  # the same command again prints the finished run's table
        )
    label = result.strategy
    if origin is not source_model:
        label = f"scratch [{origin.model.architecture}]"
    rows[label] = result.test
    console.print(
        metrics_table(f"{target}: test set ({len(split.train)} training structures)", rows, unit)
    )
    console.print(f"run → {run_dir}")


#: compare's default methods: the reference (scratch), the two strategies that win most
#: often in the papers, and frozen source features with a random forest (fast, robust)
DEFAULT_STRATEGIES = "scratch,full,freeze-embedding,features+rf"


def chosen_strategies(strategies: str) -> tuple[str, ...]:
    """``--strategies`` as names, every one checked before anything trains."""
    chosen = (
        ALL_STRATEGIES
        if strategies == "all"
        else tuple(s.strip() for s in strategies.split(",") if s.strip())
    )
    unknown = [s for s in chosen if s not in ALL_STRATEGIES]
    if unknown or not chosen:
        fail(
            f"unknown strategy {', '.join(map(repr, unknown)) or '(none given)'}; "
            f"choose from {', '.join(ALL_STRATEGIES)} or 'all'"
        )
    return chosen


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


def comparison_table(
    summary: dict[str, dict], title: str, unit: str, raw_zero_shot_unit: str | None
):
    """The compare table: mean ± std over seeds, the p-value against scratch, the best
    method (lowest mean MAE) marked."""
    from rich.table import Table

    comparable = [k for k in summary if not (k == "zero-shot" and raw_zero_shot_unit)]
    best = min(comparable, key=lambda k: summary[k]["mae_mean"]) if comparable else None
    seeds = max(e["n_seeds"] for e in summary.values())
    table = Table(title=title, title_justify="left")
    table.add_column("method")
    suffix = f" {unit}" if unit else ""
    spread = f" (mean ± std, {seeds} seeds)" if seeds > 1 else ""
    for column in (f"MAE{suffix}{spread}", f"RMSE{suffix}", "R²", "p vs scratch"):
        table.add_column(column, justify="right")
    for label, e in summary.items():
        name = label
        if label == "zero-shot" and raw_zero_shot_unit:
            name = f"zero-shot (raw output, {raw_zero_shot_unit})"
        if label == best:
            name = f"★ {name}"
        mae = f"{e['mae_mean']:.4f}"
        if e["n_seeds"] > 1:
            mae += f" ± {e['mae_std']:.4f}"
        # the raw zero-shot output is in the source's unit: no test against scratch
        p = None if name.startswith("zero-shot (raw") else e.get("p_vs_scratch")
        table.add_row(
            name,
            mae,
            f"{e['rmse_mean']:.4f}",
            f"{e['r2_mean']:.3f}",
            "" if p is None else f"{p:.3g}",
        )
    return table


def compare(
    data: Annotated[
        str, typer.Argument(metavar="DATA", help="Target data: file, folder or registered name.")
    ],
    target: Target,
    source: Annotated[str, typer.Option(help="Source model.")] = "cgcnn/formation-energy-per-atom",
    strategies: Annotated[
        str,
        typer.Option(help=f"Comma-separated strategies, or 'all' [{DEFAULT_STRATEGIES}]."),
    ] = DEFAULT_STRATEGIES,
    seeds: Annotated[
        int,
        typer.Option(
            min=1,
            help="Repeats with seeds SEED, SEED+1, …: new training draws, validation "
            "sets and initialisations, one test set.",
        ),
    ] = 3,
    run_dir: RunDir = Path("runs/compare"),
    config: Config = None,
    test: TestData = None,
    val: ValData = None,
    split_file: SplitFile = None,
    train_size: TrainSize = None,
    val_size: ValSize = None,
    test_size: TestSize = None,
    epochs: Epochs = None,
    lr: LR = None,
    batch_size: BatchSize = None,
    log10: Log10 = False,
    extensive: Extensive = False,
    early_stopping_patience: Patience = None,
    accelerator: Accelerator = None,
    devices: Devices = None,
    num_nodes: NumNodes = None,
    ddp_strategy: DistributedStrategy = None,
    precision: Precision = None,
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
    disorder: Disorder = "skip",
) -> None:
    """Scratch against transfer strategies from one source, repeated over seeds, on one
    held-out test set: mean ± std, a paired t-test against scratch, the best marked. The
    run folder is a results grid (``n<size>-s<seed>/<method>/``) that ``tlmat report``
    reads; running the command again reuses the finished runs and prints the same table.

    Examples (fine-tune the MP formation-energy CGCNN on 300 Castelli perovskites; then
    the same against a SchNet trained from scratch):

        tlmat compare perov_5/train -t heat_ref --unit eV/cell --test perov_5/test
            --test-size 1000 --train-size 300 --val-size 100 --epochs 60

        tlmat compare perov_5/train -t heat_ref --unit eV/cell --test perov_5/test
            --test-size 1000 --train-size 300 --val-size 100 --epochs 60
            --strategies scratch,full --model schnet-arch2 --run-dir runs/compare-schnet
    """
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from tlmat.experiments.runs import run_strategy, zero_shot
    from tlmat.training.rundir import claim, owned_path
    from tlmat.transfer.sources import fresh_model, load_source

    chosen = chosen_strategies(strategies)
    rows: dict[str, list[dict[str, float]]] = {}
    note_run_dir(run_dir, Path("runs/compare"))
    with reported_errors():
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
            accelerator=accelerator,
            devices=devices,
            num_nodes=num_nodes,
            ddp_strategy=ddp_strategy,
            precision=precision,
        )
        cfg = cfg.model_copy(update={"progress_bar": False})
        headless = [s for s in chosen if s.startswith("features+")]
        if cfg.loss == "gaussian_nll" and headless:  # before any method trains
            raise ValueError(
                f"loss gaussian_nll trains a network's heteroscedastic head; "
                f"{', '.join(headless)} fit no network head: leave them out of --strategies"
            )
        claim(run_dir, "comparison.json")
        source_model = load_source(source)
        dataset, parts = target_data(
            data,
            target,
            source_model.model.graph_settings,
            source_model.model.elements,
            cache_dir,
            test=test,
            val=val,
            strict=strict,
            on_duplicate=on_duplicate,
            disorder=disorder,
            log10=cfg.log10,
        )
        twin = None
        if model is not None or model_config_file is not None:
            twin = scratch_data(
                model_from_options(model or SCRATCH_MODEL, model_config_file),
                source_model,
                dataset,
                data,
                test,
                val,
                target,
                cache_dir,
                strict,
                on_duplicate,
                disorder,
            )
        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("left"),
            TimeRemainingColumn(),
        )
        with Progress(*columns, console=console, transient=True) as progress:
            task = progress.add_task("compare", total=seeds * len(chosen))
            fits, spent, warned = 0, 0.0, False
            for s in range(seed, seed + seeds):
                split = split_of(
                    dataset, parts, s, train_size, val_size, test_size, split_file=split_file
                )
                run_cfg = scaled_defaults(cfg.model_copy(update={"seed": s}), len(split.train))
                if s == seed:
                    announce(run_cfg, split)
                twin_split = None
                if twin is not None and twin[1] is not None:
                    split, twin_split = common_split(dataset, split, twin[1])
                job = Path(run_dir) / f"n{len(split.train)}-s{s}"
                claim(run_dir, job.name)
                claim(job, *chosen, "zero-shot.json")
                zero = zero_shot(source_model, dataset, split, target)
                owned_path(job, "zero-shot.json").write_text(json.dumps(zero, indent=2))
                for label, metrics in zero.items():
                    rows.setdefault(label, []).append(metrics)
                for name in chosen:
                    progress.update(task, description=f"seed {s}: {name}")
                    origin, on, part = source_model, dataset, split
                    label = name
                    if name == "scratch" and twin is not None:
                        origin = fresh_model(twin[0], s)
                        label = f"scratch [{origin.model.architecture}]"
                        if twin[1] is not None:
                            on, part = twin[1], twin_split
                    started = time.perf_counter()
                    result = run_strategy(
                        name,
                        origin,
                        on,
                        part,
                        run_cfg,
                        job / name,
                        overwrite=overwrite,
                        reuse=True,
                    )
                    fits += 1
                    spent += time.perf_counter() - started
                    left = seeds * len(chosen) - fits
                    if not warned and fits >= 1 and left * spent / fits > 600:
                        warned = True
                        progress.console.print(
                            f"note: at {spent / fits:.0f} s per method, the {left} runs left "
                            f"take about {left * spent / fits / 60:.0f} min; --seeds, "
                            "--strategies or --epochs make it shorter"
                        )
                    rows.setdefault(label if label != name else result.strategy, []).append(
                        result.test
                    )
                    progress.advance(task)
    summary = comparison_rows(rows, "scratch" if "scratch" in rows else next(iter(rows)))
    raw_unit = source_model.target.unit if source_model.target.unit != unit else None
    title = (
        f"{target}: {len(split.train)} training, {len(split.val)} validation, "
        f"{len(split.test)} test structures; source {source}"
    )
    console.print(comparison_table(summary, title, unit, raw_unit))
    owned_path(run_dir, "comparison.json").write_text(json.dumps(summary, indent=2))
    report = f"tlmat report {run_dir}" + (f" --unit {unit}" if unit else "")
    console.print(f"results → {run_dir} (comparison.json, one folder per seed and method)")
    console.print(f"report: {report}")


def benchmark(
    config: Annotated[
        Path, typer.Argument(metavar="CONFIG", help="Benchmark YAML (see benchmarks/configs/).")
    ],
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

    with reported_errors():
        cfg = BenchmarkConfig.from_yaml(config)
        if quick:
            cfg = cfg.quick()
        if workers is not None:
            cfg = cfg.model_copy(
                update={"executor": cfg.executor.model_copy(update={"workers": workers})}
            )
        with strict_reading(strict):  # the grid loads its datasets (and sources') inside
            report = run_benchmark(cfg, results or Path("results") / cfg.name, cache_dir)
    console.print(f"report → {report}")
