"""Training commands: ``tlmat train``, ``tlmat finetune``, ``tlmat compare``, ``tlmat
benchmark``. Each turns its flags into a library object (a RunSpec, a comparison of
RunSpecs, a benchmark config), runs it and prints the result."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from tlmat import catalogue
from tlmat.cli.common import (
    CacheDir,
    Strict,
    check_early,
    console,
    fail,
    metrics_table,
    note_run_dir,
    option,
    reported_errors,
    run_folder,
    skipped_table,
)
from tlmat.cli.options import (
    DATA,
    ENSEMBLE,
    READING,
    SETTINGS,
    TRAINING,
    Config,
    Model,
    RunDir,
    Target,
    model_choice,
    option_group,
    with_options,
)

if TYPE_CHECKING:
    from tlmat.experiments.runspec import RunResult

#: the architecture every command trains from scratch unless told otherwise, the
#: strategies and compare's default ones, from the catalogue so that --help needs no torch
SCRATCH_MODEL = catalogue.load()["scratch_model"]
STRATEGY_NAMES = ", ".join(catalogue.load()["strategies"])
DEFAULT_STRATEGIES = ",".join(catalogue.load()["default_strategies"])

Data = Annotated[
    str, typer.Argument(metavar="DATA", help="Training data: file, folder or registered name.")
]
Source = option(str, "Source: registered name (tlmat models), tlmat or CGCNN file, run folder.")
FreezeK = option(int, "Interactions frozen by freeze-first-k.")
KeepHead = option(bool, "Keep the source head even for a new target.", "--keep-head")
Members = option(
    int,
    "Train a deep ensemble of this many members, each with its own split, "
    "initialisation and seed; predict then gives σ (Ekström et al.) [1].",
    min=1,
)
ExcludeIds = option(
    Path | None,
    "Ids never to train on: a split.json (its test ids), a JSON list, "
    "or one id per line (e.g. a target's test materials).",
)
ScratchTwin = option(
    str | None,
    "With --strategy scratch: the architecture or preset trained from random "
    "weights [the source's], on the materials both models can use.",
    "--model",
)
FinetuneMembers = option(
    int,
    "Fine-tune a deep ensemble of this many members, each with its own split, "
    "new head and seed; predict then gives σ (Ekström et al.) [1].",
    min=1,
)
Strategies = option(str, f"Comma-separated strategies, or 'all' [{DEFAULT_STRATEGIES}].")
Seeds = option(
    int,
    "Repeats with seeds SEED, SEED+1, …: new training draws, validation "
    "sets and initialisations, one test set.",
    min=1,
)
CompareFolds = option(
    int | None,
    "Repeated k-fold cross-validation inside DATA instead of one test set: --seeds "
    "repeats × K folds, p-values and gains from the corrected resampled t-test.",
    min=2,
)
ScratchRow = option(
    str | None,
    "Architecture or preset trained from scratch for the 'scratch' row "
    "[the source's]; structures it cannot use are left out of every row.",
    "--model",
)


def say(message) -> None:
    """What a run says while it works: text, or a table of the structures it skipped."""
    if isinstance(message, str):
        console.print(message, markup=False)  # labels such as "full [chgnet/0.3.0]"
    elif (table := skipped_table(message)) is not None:
        console.print(table)


def command_spec(
    default_dir: Path, config: Path | None = None, model_config_file: Path | None = None, **fields
):
    """The RunSpec of a command's ``--config`` file and flags (flags win); ``model`` and
    ``model_config_file`` (``--model``, ``--model-config``) give its model. Says where
    results go when the default folder would land inside a git checkout."""
    strategy = fields.get("strategy")
    check_early(
        data=fields.get("data"),
        test=fields.get("test"),
        model=fields.get("model"),
        sources=[fields.get("source")],
        strategies=[strategy] if strategy else [],
        files=(config, model_config_file, fields.get("exclude_ids"), fields.get("val"),
               fields.get("split")),
        config=config,
    )  # fmt: skip
    from tlmat.experiments.runspec import RunSpec

    note_run_dir(fields["run_dir"], Path(default_dir))
    with reported_errors():
        fields["model"] = model_choice(fields.get("model"), model_config_file)
        return RunSpec.from_options(config, **fields)


@with_options(DATA, TRAINING, SETTINGS, ENSEMBLE, READING)
def train(
    data: Data,
    target: Target,
    run_dir: RunDir = None,
    model: Model = SCRATCH_MODEL,
    ensemble: Members = 1,
    exclude_ids: ExcludeIds = None,
    options: dict | None = None,
) -> None:
    """Train a model of any registered architecture from scratch (an interrupted run
    resumes from its last checkpoint). The graphs are built as the model needs them.

    Examples:

        tlmat train ../shared/data/mp_cgcnn_36k/mp_cgcnn_36k.csv.gz
            -t formation_energy_per_atom --unit eV/atom --run-dir runs/mp-eform --epochs 100

        tlmat train perov_5/val -t heat_ref --unit eV/cell --model schnet-arch2
            --run-dir runs/perov-schnet --epochs 50
    """
    default = run_folder(options.get("config"), "train", target, model)
    run_dir = run_dir or default
    given = dict(data=data, target=target, run_dir=run_dir, model=model, ensemble=ensemble)
    spec = command_spec(default, exclude_ids=exclude_ids, **given, **options)
    from tlmat.experiments.runspec import run

    with reported_errors():
        result = run(spec, say)
    if result.ensemble is not None:
        return print_ensemble(result)
    if result.reused:
        console.print(f"{run_dir} holds this run, finished: reusing it")
    unit = spec.training.unit
    console.print(metrics_table(f"{target}: test set", {"scratch": result.test}, unit))
    console.print(
        f"{result.epochs} epochs, {result.seconds / max(result.epochs, 1):.2f} s/epoch;"
        f" model → {Path(run_dir) / 'model.pt'}"
    )


def print_ensemble(result: RunResult) -> None:
    """The ensemble's test MAE, mean σ and the coverage of its ±1σ and ±2σ intervals."""
    s, unit = result.ensemble, result.spec.training.unit
    u = f" {unit}" if unit else ""
    console.print(
        f"ensemble of {s['n_members']}: test MAE {s['mae']:.4f}{u}, mean σ "
        f"{s['mean_sigma']:.4f}{u}; |error| ≤ σ for {s['coverage_1sigma']:.0%} "
        f"and ≤ 2σ for {s['coverage_2sigma']:.0%} of {s['n_test']} test structures "
        "(68 % and 95 % if σ is calibrated)"
    )
    run_dir = result.spec.run_dir
    console.print(f"ensemble → {run_dir} (tlmat predict {run_dir} STRUCTURES… gives σ)")


@with_options(DATA, TRAINING, SETTINGS, ENSEMBLE, READING)
def finetune(
    data: Data,
    target: Target,
    source: Source = "cgcnn/formation-energy-per-atom",
    strategy: Annotated[str, typer.Option(help=f"One of {STRATEGY_NAMES}.")] = "full",
    freeze_k: FreezeK = 1,
    keep_head: KeepHead = False,
    run_dir: RunDir = None,
    model: ScratchTwin = None,
    ensemble: FinetuneMembers = 1,
    options: dict | None = None,
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
    named = ("finetune", target, strategy, source, model)
    default = run_folder(options.get("config"), *named)
    run_dir = run_dir or default
    given = dict(data=data, target=target, run_dir=run_dir, model=model, ensemble=ensemble)
    transfer = dict(source=source, strategy=strategy, freeze_k=freeze_k, keep_head=keep_head)
    spec = command_spec(default, **given, **transfer, **options)
    from tlmat.experiments.runspec import run

    with reported_errors():
        result = run(spec, say)
    if result.ensemble is not None:
        return print_ensemble(result)
    rows = result.rows
    if result.source_unit is not None and "zero-shot" in rows:
        rows = {f"zero-shot (raw output, {result.source_unit})": rows.pop("zero-shot"), **rows}
    title = f"{target}: test set ({len(result.split.train)} training structures)"
    console.print(metrics_table(title, rows, spec.training.unit))
    console.print(f"run → {run_dir}")


def chosen_strategies(strategies: str) -> tuple[str, ...]:
    """``--strategies`` as names, every one checked before anything is imported."""
    from tlmat.hints import did_you_mean

    known = catalogue.load()["strategies"]
    chosen = (
        tuple(known)
        if strategies == "all"
        else tuple(s.strip() for s in strategies.split(",") if s.strip())
    )
    unknown = [s for s in chosen if s not in known]
    if unknown or not chosen:
        hint = did_you_mean(unknown[0], known) if unknown else ""
        fail(
            f"unknown strategy {', '.join(map(repr, unknown)) or '(none given)'}{hint}; "
            f"choose from {STRATEGY_NAMES} or 'all'"
        )
    return chosen


def comparison_table(
    summary: dict[str, dict],
    title: str,
    unit: str,
    raw_zero_shot_unit: str | None,
    folds: int | None = None,
):
    """The compare table: test MAE as mean ± std over seeds, the validation MAE, the gain
    over scratch with its 95 % interval and the p-value; ★ marks the method with the
    lowest validation MAE (chosen before the test set is looked at; its test MAE is
    reported, not used to choose). RMSE and R² are in comparison.json."""
    from rich.table import Table

    from tlmat.experiments.comparison import best_by_validation

    best = best_by_validation(summary)
    runs = max(e["n_seeds"] for e in summary.values())
    what = f"{runs} folds" if folds else f"{runs} seeds"
    spread = f", mean ± std over {what}" if runs > 1 else ""
    test = "the corrected resampled t-test (folds share data)" if folds else "its t-test"
    table = Table(
        title=f"{title}\nMAE{f' in {unit}' if unit else ''}{spread}",
        title_justify="left",
        caption=_CAPTION.format(test=test),
        caption_justify="left",
    )
    table.add_column("method", no_wrap=True)
    for column in ("test MAE", "val MAE", "gain [95 % CI]", "p"):
        table.add_column(column, justify="right")
    for label, e in summary.items():
        table.add_row(*_comparison_cells(label, e, best, raw_zero_shot_unit))
    return table


_CAPTION = (
    "★ lowest validation MAE: chosen without the test set, whose MAE is only reported. "
    "gain = 1 − MAE / MAE of scratch, p: {test} against scratch"
)


def _comparison_cells(label: str, e: dict, best: str | None, raw_unit: str | None) -> list[str]:
    name = label
    if label == "zero-shot" and raw_unit:
        name = f"zero-shot (raw, {raw_unit})"
    if label == best:
        name = f"★ {name}"
    mae = f"{e['mae_mean']:.4f}"
    if e["n_seeds"] > 1:
        mae += f" ± {e['mae_std']:.4f}"
    # the raw zero-shot output is in the source's unit: no test against scratch
    p = None if name.startswith("zero-shot (raw") else e.get("p_vs_scratch")
    val = e.get("val_mae_mean", float("nan"))
    gain = e.get("gain_vs_scratch") if p is not None else None
    return [
        name,
        mae,
        "" if val != val else f"{val:.4f}",
        "" if gain is None else "{:+.0f} % [{:+.0f}, {:+.0f}]".format(*(100 * g for g in gain)),
        "" if p is None else f"{p:.3g}",
    ]


@with_options(DATA, TRAINING, SETTINGS, READING)
def compare(
    data: Data,
    target: Target,
    source: Source = "cgcnn/formation-energy-per-atom",
    strategies: Strategies = DEFAULT_STRATEGIES,
    seeds: Seeds = 3,
    folds: CompareFolds = None,
    run_dir: RunDir = None,
    model: ScratchRow = None,
    options: dict | None = None,
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
    chosen = chosen_strategies(strategies)
    default = run_folder(options.get("config"), "compare", target, source, model)
    run_dir = run_dir or default
    given = dict(data=data, target=target, source=source, run_dir=run_dir, model=model)
    base = command_spec(default, progress_bar=False, **given, **options)
    from tlmat.experiments.comparison import compare as run_comparison

    with reported_errors(), _progress("compare", seeds * (folds or 1) * len(chosen)) as progress:
        result = run_comparison(base, chosen, seeds, say, progress, folds)
    split, unit = result.split, base.training.unit
    title = (
        f"{target}: {len(split.train)} training, {len(split.val)} validation, "
        f"{len(split.test)} test structures; source {source}"
    )
    console.print(comparison_table(result.summary, title, unit, result.source_unit, folds))
    report = f"tlmat report {run_dir}" + (f" --unit {unit}" if unit else "")
    console.print(f"results → {run_dir} (comparison.json, one folder per seed and method)")
    console.print(f"report: {report}")


def _progress(what: str, total: float):
    """The command's progress display (:class:`tlmat.progress.Display`) on its console."""
    from tlmat.progress import Display

    return Display(what, total, console=console)


FitTest = option(
    str | None,
    "Test data (file, folder or name): read once, after the choice, to score the chosen "
    "model and scratch; never used to choose.",
    "--test",
)
Budget = option(
    float | None, "Wall-time budget in minutes for the whole search, refit included [10]."
)
Folds = option(int | None, "Cross-validation folds inside the training data [5].", min=2)
Repeats = option(int | None, "Repeats of the k-fold cross-validation (new folds each) [1].", min=1)
FitMembers = option(
    int | None, "Members of the deep ensemble the chosen method is refit as [5].", min=2
)
FitCandidates = option(
    list[str] | None,
    "A candidate 'STRATEGY [SOURCE]' (repeatable), e.g. 'features+mlp [chgnet/0.3.0]', "
    "'full [tlmat/mp-eform-cgcnn]'; scratch is always one [every usable source].",
    "--candidate",
)
FitSources = option(
    list[str] | None,
    "Another source to consider (repeatable): your checkpoint, run folder or a name "
    "(tlmat models); fine-tuned and used for features.",
    "--source",
)
#: fit's search, FitSpec fields: left out, a --config file's value (or FitSpec's default)
SEARCH = option_group(
    test=(FitTest, None),
    budget=(Budget, None),
    folds=(Folds, None),
    repeats=(Repeats, None),
    ensemble=(FitMembers, None),
    candidates=(FitCandidates, None),
    sources=(FitSources, None),
)


@with_options(SEARCH, TRAINING, READING)
def fit(
    data: Data,
    target: Target,
    model: Model = SCRATCH_MODEL,
    run_dir: RunDir = None,
    config: Config = None,
    options: dict | None = None,
) -> None:
    """The best honest model for your data: candidates (foundation-model features + MLP,
    fine-tuned sources, scratch) compared by k-fold cross-validation inside the training
    data within --budget minutes, the winner refit as a deep ensemble with σ calibrated
    on out-of-fold predictions; --test is scored once, at the end. Writes report.md and
    the model folder (run-dir/model: tlmat predict gives σ). Interrupted, the same
    command resumes.

    Examples:

        tlmat fit perov_5/val -t heat_ref --unit eV/cell --test perov_5/test --budget 10

        tlmat fit my_moduli.csv -t K_VRH --log10 --source runs/my-source/model.pt
            --candidate "features+mlp [chgnet/0.3.0]" --budget 30 --repeats 2
    """
    check_early(
        data=data,
        test=options.get("test"),
        model=model,
        sources=options.get("sources") or (),
        candidates=options.get("candidates") or (),
        files=[config],
        config=config,
        spec="FitSpec",
    )
    from tlmat.experiments.selection import FitSpec, select_model

    default = run_folder(config, "fit", target)
    run_dir = run_dir or default
    note_run_dir(run_dir, default)
    with reported_errors():
        given = dict(data=data, target=target, model=model, run_dir=run_dir)
        spec = FitSpec.from_options(config, **given, **options)
        with _progress("fit", 1) as progress:
            result = select_model(spec, say, progress)
    console.print(fit_table(result))
    summary = result.paths["report"].read_text().split("\n\n", 2)[-1]
    console.print(summary.split("|\n\n", 1)[-1].strip(), markup=False)
    console.print(f"report → {result.paths['report']}")


def fit_table(result):
    """The candidates of a selection: CV MAE ± std, time, and the chosen one marked."""
    from rich.markup import escape
    from rich.table import Table

    unit = result.spec.training.unit
    k = result.spec.folds * result.spec.repeats
    table = Table(
        title=f"{result.spec.training.target}: {result.n_train} training structures, {k} folds",
        title_justify="left",
        caption="★ lowest cross-validated MAE inside the training data",
        caption_justify="left",
    )
    for column in ("candidate", f"CV MAE {unit}".strip(), "time (s)", "note"):
        table.add_column(column, justify="left" if column in ("candidate", "note") else "right")
    for row in result.rows:
        mae = f"{row.mean:.4f} ± {row.std:.4f}" if row.maes else "—"
        name = f"★ {row.label}" if row.label == result.chosen else row.label
        table.add_row(escape(name), mae, f"{row.seconds:.0f}", escape(row.left_out or ""))
    return table


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
        with strict_reading(strict), _progress(cfg.name, 1) as progress:
            # the grid loads its datasets (and sources') inside
            report = run_benchmark(cfg, results or Path("results") / cfg.name, cache_dir, progress)
    console.print(f"report → {report}")
