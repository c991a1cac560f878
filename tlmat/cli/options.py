"""The options the training commands share, declared once: each command names the
groups it takes (:func:`with_options`) and receives them as one mapping, which
:class:`~tlmat.experiments.runspec.RunSpec` reads (option names are its field names)."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from tlmat import catalogue
from tlmat.cli.common import CacheDir, Disorder, OnDuplicate, Overwrite, Strict, option
from tlmat.hints import did_you_mean


def _choice(field: str) -> Callable[[str | None], str | None]:
    """A flag's check that its value is one the training setting ``field`` takes (as the
    flags are read, before torch is imported), from the catalogue."""

    def check(value: str | None) -> str | None:
        known = catalogue.load()["choices"][field]
        if value is not None and value not in known:
            hint = did_you_mean(value, known)
            raise typer.BadParameter(f"{value!r} is not one of {', '.join(known)}{hint}")
        return value

    return check


if TYPE_CHECKING:
    from tlmat.data import Reading

Device = option(str, "Where the model runs: cpu, cuda, cuda:1, mps [cpu].")
Target = option(str, "Property to learn (column/key).", "--target", "-t")
RunDir = option(
    Path | None,
    "Folder for checkpoints, metrics and the manifest [runs/COMMAND-TARGET-…, named after "
    "the run: strategy, source, model].",
)
Config = option(
    Path | None,
    "YAML file with the run's settings, flags overriding it: training settings at the top or "
    "under training:, and any other RunSpec field (a run's run.yaml is one).",
)
Epochs = option(
    int | None,
    "Maximum epochs; early stopping may end sooner (--early-stopping-patience) "
    "[60,000 / N training structures, within 30–300].",
    min=1,
)
LR = option(float | None, "Learning rate [1e-3].", "--lr", min=0)
BatchSize = option(int | None, "Batch size [64].", min=1)
Optimizer = option(str | None, "adam, adamw or sgd [adam].", callback=_choice("optimizer"))
Scheduler = option(
    str | None,
    "plateau, cyclic, onecycle (warm-up + cosine), step (×step_factor at step_milestones) "
    "or none [plateau].",
    callback=_choice("scheduler"),
)
Loss = option(
    str | None,
    "l1, mse or gaussian_nll (the Gaussian negative log-likelihood: a head of "
    "width 2 predicts each structure's mean and variance; with --ensemble, σ_a per "
    "structure) [l1].",
    callback=_choice("loss"),
)
WeightDecay = option(float | None, "L2 penalty [0].", min=0)
Normalization = option(
    str | None, "standard, tanh or none [standard].", callback=_choice("normalization")
)
Log10 = option(bool, "Learn log10 of the target.", "--log10")
Patience = option(
    int | None,
    "Stop after this many epochs without a better validation MAE [epochs / 5, "
    "at least 10]; 0 trains every epoch.",
    min=0,
)
Seed = option(int, "Seed for the split, initialisation and order.")
TrainSize = option(int | None, "Use only this many training structures (data-scarce runs).", min=1)
ValSize = option(
    float | None,
    "Validation size: fraction or count [a quarter of the training set, 20–1,000; all of --val].",
    min=0,
)
TestSize = option(float | None, "Test size: fraction or count [0.1 of DATA; all of --test].", min=0)
TestData = option(str | None, "Your own test set (file, folder or name); all its rows.", "--test")
ValData = option(
    str | None, "Your own validation set (file, folder or name); all its rows.", "--val"
)
SplitFile = option(
    Path | None,
    "Your own split: a split.json with train/val/test id lists, as tlmat writes "
    "them (every id must be in the data).",
    "--split",
)
Accelerator = option(
    str | None,
    "auto, cpu, gpu or mps (Lightning's accelerator) [auto].",
    callback=_choice("accelerator"),
)
Devices = option(
    int | None,
    "Processes per node, one per GPU (or CPU processes with --accelerator cpu); "
    "more than one trains data-parallel (DDP) with --batch-size per process [1].",
    min=1,
)
NumNodes = option(int | None, "Machines of a DDP run, e.g. SLURM nodes under srun [1].", min=1)
DistributedStrategy = option(
    str | None,
    "How a DDP run's processes start: ddp (Lightning relaunches this command "
    "per device, or srun started them), ddp_spawn (one machine) or auto [auto].",
    "--ddp-strategy",
    callback=_choice("ddp_strategy"),
)
Precision = option(
    str | None,
    "32-true, 64-true, 16-mixed (GPUs) or bf16-mixed [32-true].",
    callback=_choice("precision"),
)
EnsembleWorkers = option(
    int | None,
    "With --ensemble: members trained side by side in local processes, the cores "
    "shared between them [one per core, at most N; 1 on a GPU].",
    min=1,
)
EnsembleExecutor = option(
    str,
    "With --ensemble: where members train: 'local' (processes here), 'slurm' (one "
    "submitit job per member, as tlmat benchmark's executor) or 'debug' (submitit "
    "in this process, to try a setup).",
)
Slurm = option(
    list[str] | None,
    "A submitit SLURM parameter KEY=VALUE (repeatable), e.g. --slurm "
    "partition=cpu --slurm timeout_min=120 --slurm cpus_per_task=4.",
    "--slurm",
)


Unit = option(str, "Unit of the target, for tables and checkpoints.")
Extensive = option(
    bool, "The target scales with the cell (eV/cell): sum atoms, not average.", "--extensive"
)
Model = option(
    str,
    "Architecture or preset (tlmat models): cgcnn, cgcnn-mp, schnet, "
    "schnet-arch1, schnet-arch2, alignn, cgat …",
    "--model",
)
ModelConfigFile = option(
    Path | None,
    "YAML with the architecture's settings (e.g. 'n_interactions: 4'); may name "
    "'architecture' or 'preset' itself.",
    "--model-config",
)


Settings = option(
    list[str] | None,
    "Any other setting of the run, KEY=VALUE (repeatable; values read as YAML), "
    "e.g. --set plateau_patience=10 --set warmup_fraction=0.2: every field of "
    "TrainConfig and RunSpec, a new one included, without a flag of its own.",
    "--set",
)


def slurm_parameters(items: list[str] | None, flag: str = "--slurm") -> dict:
    """``["partition=cpu", "timeout_min=120"]`` → ``{"partition": "cpu", "timeout_min":
    120}`` (integers and decimals become numbers, as YAML would read them)."""
    import yaml

    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"{flag} {item!r}: expected KEY=VALUE, e.g. partition=cpu")
        out[key.strip()] = yaml.safe_load(value)
    return out


def option_group(**annotated: Any) -> dict[str, tuple[Any, Any]]:
    """name → (annotation, default) of options declared as ``name=(Annotated, default)``."""
    return annotated


#: your own sets and the split
DATA = option_group(
    test=(TestData, None),
    val=(ValData, None),
    split=(SplitFile, None),
    train_size=(TrainSize, None),
    val_size=(ValSize, None),
    test_size=(TestSize, None),
)
#: training settings (fields of TrainConfig)
TRAINING = option_group(
    epochs=(Epochs, None),
    lr=(LR, None),
    batch_size=(BatchSize, None),
    optimizer=(Optimizer, None),
    scheduler=(Scheduler, None),
    loss=(Loss, None),
    weight_decay=(WeightDecay, None),
    normalization=(Normalization, None),
    log10=(Log10, False),
    extensive=(Extensive, False),
    early_stopping_patience=(Patience, None),
    accelerator=(Accelerator, None),
    devices=(Devices, None),
    num_nodes=(NumNodes, None),
    ddp_strategy=(DistributedStrategy, None),
    precision=(Precision, None),
    seed=(Seed, 0),
    unit=(Unit, ""),
    settings=(Settings, None),
)
#: a run's settings file and its model's
SETTINGS = option_group(config=(Config, None), model_config_file=(ModelConfigFile, None))
#: how an ensemble's members are trained
ENSEMBLE = option_group(
    ensemble_workers=(EnsembleWorkers, None),
    ensemble_executor=(EnsembleExecutor, "local"),
    slurm=(Slurm, None),
)
#: reading the structures, and the run folder
READING = option_group(
    cache_dir=(CacheDir, None),
    overwrite=(Overwrite, False),
    strict=(Strict, False),
    on_duplicate=(OnDuplicate, "error"),
    disorder=(Disorder, "skip"),
)
DEVICE = option_group(device=(Device, "cpu"))
#: switches that are off unless given: off, they leave a --config file's value alone
SWITCHES = ("log10", "extensive", "overwrite", "strict")


def with_options(
    *groups: dict[str, tuple[Any, Any]],
    into: str = "options",
    gathered: Callable[[dict[str, Any]], Any] | None = None,
) -> Callable:
    """A command with the options of ``groups`` appended to its own: typer sees them in
    the signature; the command receives them as one object in its ``into`` parameter:
    ``gathered(options)``, by default a mapping ready for ``RunSpec.from_options``."""
    shared = {name: spec for group in groups for name, spec in group.items()}
    gathered = gathered or spec_options

    def decorate(command: Callable[..., None]) -> Callable[..., None]:
        signature = inspect.signature(command, eval_str=True)
        own = [p for name, p in signature.parameters.items() if name != into]
        extra = [
            inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=kind, default=value)
            for name, (kind, value) in shared.items()
        ]

        @functools.wraps(command)
        def wrapper(*args: Any, **kwargs: Any) -> None:
            options = {name: kwargs.pop(name) for name in shared if name in kwargs}
            command(*args, **kwargs, **{into: gathered(options)})

        wrapper.__signature__ = signature.replace(parameters=[*own, *extra])  # type: ignore[attr-defined]
        return wrapper

    return decorate


@dataclass(frozen=True)
class ReadOptions:
    """How a command that applies a model reads structures: :data:`READING` and the
    device, as ``predict``, ``embed``, ``evaluate`` and ``screen`` take them."""

    device: str = "cpu"
    cache_dir: Path | None = None
    overwrite: bool = False
    strict: bool = False
    on_duplicate: str = "error"
    disorder: str = "skip"

    def checks(self) -> dict[str, Any]:
        """The options by which structures are checked as they are read."""
        return {name: getattr(self, name) for name in ("strict", "disorder", "on_duplicate")}

    def reading(self, workers: int | None = None) -> Reading:
        """These options as the library's :class:`~tlmat.data.Reading` (with progress)."""
        from tlmat.data import Reading

        return Reading(self.cache_dir, self.strict, self.on_duplicate, self.disorder, workers, True)


#: a command's reading options before its flags are read (the signature's default)
DEFAULT_READING = ReadOptions()


def reads_structures(*names: str) -> Callable:
    """A command with the reading options ``names`` (all of :data:`READING` and
    ``--device`` when none are named), received as one :class:`ReadOptions` in its
    ``reading`` parameter."""
    chosen = {k: v for k, v in {**DEVICE, **READING}.items() if not names or k in names}
    return with_options(chosen, into="reading", gathered=lambda given: ReadOptions(**given))


def spec_options(options: dict[str, Any]) -> dict[str, Any]:
    """Flags as RunSpec fields: a switch left off is not given, ``--slurm`` items are a
    mapping."""
    out = {k: v for k, v in options.items() if not (k in SWITCHES and v is False)}
    if "slurm" in out:
        out["slurm"] = slurm_parameters(out["slurm"]) or None
    given = slurm_parameters(out.pop("settings", None), "--set")
    return {**given, **{k: v for k, v in out.items() if v is not None or k not in given}}


def model_choice(model: str | None, model_config_file: Path | None) -> str | dict | None:
    """``--model`` and ``--model-config`` as a RunSpec's ``model``: a name, or a mapping
    of settings (which may name its own architecture or preset)."""
    if model_config_file is None:
        return model
    from tlmat.training.config import yaml_settings

    fields = yaml_settings(model_config_file)
    if "architecture" in fields or "preset" in fields or model is None:
        return fields
    return {"preset": model, **fields}
