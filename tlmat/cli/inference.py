"""Inference commands: ``tlmat predict``, ``tlmat embed``, ``tlmat evaluate``, ``tlmat models``."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import numpy as np
import typer
from rich.markup import escape
from rich.table import Table

from tlmat.cli.common import (
    Overwrite,
    check_early,
    console,
    fail,
    metrics_table,
    reported_errors,
    skipped_table,
    writable_output,
)
from tlmat.cli.options import DEFAULT_READING, ReadOptions, reads_structures
from tlmat.machine import granted_cpus

if TYPE_CHECKING:
    from tlmat.data import GraphDataset
    from tlmat.models import TrainedModel

Checkpoint = Annotated[
    str,
    typer.Argument(
        metavar="CHECKPOINT", help="tlmat checkpoint, registered name or original CGCNN .pth.tar."
    ),
]


def _finite(
    values: np.ndarray, dataset: GraphDataset, checkpoint: str, positions=None, total=None
) -> None:
    """Fail (exit 1, nothing written) if the model gave NaN or infinite predictions;
    ``positions``: the rows of ``dataset`` that ``values`` are for (default: all)."""
    rows = ~np.isfinite(values.reshape(len(values), -1)).all(axis=1)
    if rows.any():
        where = np.flatnonzero(rows) if positions is None else positions[rows]
        ids = [dataset.ids[i] for i in where[:3]]
        chunk = "" if total in (None, len(values)) else f" of a chunk, {total} in all"
        fail(
            f"{checkpoint} gave predictions that are not finite for {int(rows.sum())} of "
            f"{len(values)} structures{chunk} (e.g. {', '.join(ids)}); nothing was written "
            "— the model's weights are probably damaged or diverged"
        )


def _table_suffix(output: Path, default: str = ".csv") -> str:
    """The table format of ``output``: its suffix when tlmat writes that format."""
    from tlmat.io.writers import TABLE_SUFFIXES

    return output.suffix if output.suffix in TABLE_SUFFIXES else default


def _model_or_ensemble(checkpoint: str):
    """(the model, ``None``), or for an ensemble folder (its first member, the ensemble):
    graphs and elements are the same for every member."""
    from tlmat.transfer.sources import load_source
    from tlmat.uncertainty import is_ensemble, load_ensemble

    if is_ensemble(checkpoint):
        members = load_ensemble(checkpoint)
        return members.members[0], members
    return load_source(checkpoint), None


@reads_structures()
def predict(
    checkpoint: Checkpoint,
    structures: Annotated[
        list[str] | None,
        typer.Argument(metavar="STRUCTURES", help="Files or folders of structures."),
    ] = None,
    output: Annotated[
        Path,
        typer.Option("--output", "-o", help="CSV to write (.parquet, .npz: in those formats)."),
    ] = Path("predictions.csv"),
    ensemble: Annotated[
        str | None,
        typer.Option(
            help="An ensemble folder (train/finetune --ensemble N); then every argument "
            "is a structure source (the same as giving the folder as CHECKPOINT)."
        ),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(help="Processes that parse and build graphs not yet cached [all cores]."),
    ] = None,
    inverse_transform: Annotated[
        bool,
        typer.Option(
            "--inverse-transform",
            help="For a model that predicts log10 of a quantity (cgcnn/bulk-moduli: log10 "
            "GPa), write the quantity itself (GPa).",
        ),
    ] = False,
    reading: ReadOptions = DEFAULT_READING,
) -> None:
    """Predict a property for new structures: ``id`` and the prediction per row, the
    header naming the unit (``K_VRH (log10 GPa)``); a classifier writes one probability
    per class label (``p(metal)``). CHECKPOINT may be an ensemble folder (``train
    --ensemble N``): then the mean and its σ_a, σ_e and σ are written.

    Examples:

        tlmat predict cgcnn/formation-energy-per-atom my_cifs/ -o eform.csv

        tlmat predict cgcnn/bulk-moduli my_cifs/ --inverse-transform -o bulk_GPa.csv

        tlmat predict --ensemble runs/ens my_cifs/ -o pred.csv   # mean, σ_a, σ_e, σ
    """
    if ensemble is not None:  # `--ensemble DIR A B`: A is a structure source, not a model
        structures, checkpoint = [checkpoint, *(structures or [])], ensemble
    if not structures:
        fail("no STRUCTURES to predict: give files or folders after the model")
    writable_output(output, reading.overwrite)
    trained, members, dataset = _model_and_structures(
        checkpoint, structures, reading, workers=workers or granted_cpus()
    )
    if members is not None:  # an ensemble folder: the mean and σ_a, σ_e, σ
        _predict_ensemble(checkpoint, members, dataset, output)
    else:
        _write_predictions(checkpoint, trained, dataset, output, inverse_transform)


@reads_structures()
def label(
    structures: Annotated[
        list[str], typer.Argument(metavar="STRUCTURES", help="Files or folders of structures.")
    ],
    model: Annotated[
        str,
        typer.Option("--with", help="An energy model: chgnet/0.3.0, sevennet/0, or a checkpoint."),
    ] = "chgnet/0.3.0",
    output: Annotated[Path, typer.Option("--output", "-o", help="CSV to write.")] = Path(
        "labels.csv"
    ),
    references: Annotated[
        str,
        typer.Option(
            help="Structure table whose elemental crystals give each element's reference "
            "energy (the model's own, lowest per element; cached)."
        ),
    ] = "mp_cgcnn_36k/mp_cgcnn_36k.csv.gz",
    reading: ReadOptions = DEFAULT_READING,
) -> None:
    """Cheap labels: the energy and formation energy per atom (eV/atom) of any structures,
    predicted by an energy model, with what each structure cost — to grow a pretraining
    set beyond the DFT-labelled structures.

    Examples:

        tlmat label my_cifs/ --with chgnet/0.3.0 -o chgnet_labels.csv

        tlmat label perov_5/test --with sevennet/0 --references my_elements.csv -o e.csv
    """
    from tlmat.labelling import check_energy_model, elemental_references
    from tlmat.labelling import label as label_structures

    writable_output(output, reading.overwrite)
    check_early(data=references)
    trained, _, dataset = _model_and_structures(model, structures, reading)
    with reported_errors():
        check_energy_model(trained, model)
        refs = elemental_references(trained, model, references, reading.reading())
        labels = label_structures(trained, dataset, refs)
    labels.table.to_csv(output, index=False)
    missing = int(labels.table["formation_energy_per_atom (eV/atom)"].isna().sum())
    console.print(
        f"{len(labels.table)} structures labelled by {model} in {labels.seconds:.1f} s "
        f"({labels.seconds_per_structure * 1000:.1f} ms a structure; "
        f"{dataset.log.n_skipped} skipped; {missing} without a formation energy, an "
        f"element lacking its reference) → {output}",
        soft_wrap=True,
    )


def _model_and_structures(
    checkpoint: str, sources: list[str], reading: ReadOptions, workers: int | None = None
):
    """The model (its first member for an ensemble, which shares graphs and elements),
    the ensemble or ``None``, and the structures of ``sources`` read for it; a user's
    error ends the command with its line."""
    for structures in sources:
        check_early(data=structures)
    check_early(sources=[checkpoint])
    with reported_errors():
        trained, members = _model_or_ensemble(checkpoint)
        trained.model.to(reading.device)
        dataset = _read_for(trained, sources, reading, workers=workers)
    return trained, members, dataset


def _read_for(
    trained: TrainedModel,
    sources: list[str],
    options: ReadOptions,
    targets=(),
    workers: int | None = None,
) -> GraphDataset:
    """Every structure source as one dataset, built with the model's graph settings and
    element checks; the structures skipped are printed as a table."""
    model = trained.model
    dataset = options.reading(workers).load(
        sources, model.graph_settings, list(targets), model.elements
    )
    table = skipped_table(dataset.log)
    if table is not None:
        console.print(table)
    return dataset


def _predict_ensemble(checkpoint: str, members, dataset: GraphDataset, output: Path) -> None:
    """An ensemble's mean and σ_a, σ_e, σ per structure, to ``output`` (CSV)."""
    arrays = members.predict(dataset)
    _finite(arrays["sigma"], dataset, checkpoint)
    members.table(dataset.ids, arrays).to_csv(output, index=False)
    scaled = ""
    if members.sigma_scale != 1:
        fitted_on = (members.recalibration or {}).get("data", "validation data")
        scaled = f" (σ × {members.sigma_scale:.4f}, recalibrated on {fitted_on})"
    console.print(f"{len(dataset)} predictions with σ{scaled} → {output}", soft_wrap=True)


#: structures predicted between updates of the progress display (and writes of the table)
PROGRESS_ROWS = 2_000


def _write_predictions(
    checkpoint: str,
    trained: TrainedModel,
    dataset: GraphDataset,
    output: Path,
    inverse_transform: bool,
) -> None:
    """One model's predictions, written a chunk at a time to a temporary file renamed into
    place at the end: 10⁶ predictions never sit in memory as one table, and a failure
    leaves nothing behind."""
    from tlmat.inference import prediction_table
    from tlmat.io.writers import TableWriter
    from tlmat.models.prediction import iter_predictions
    from tlmat.progress import Display

    writer = TableWriter(output, len(dataset), "predictions", _table_suffix(output))
    with writer as written, Display("predicting", len(dataset), console=console) as shown:
        for positions, values in iter_predictions(trained, dataset, rows=PROGRESS_ROWS):
            shown("predicting", written.rows + len(positions))
            _finite(values, dataset, checkpoint, positions, len(dataset))
            ids = [dataset.ids[i] for i in positions]
            try:
                table = prediction_table(ids, values, trained.target, inverse_transform)
            except ValueError as error:
                fail(error)
            written.write(table)
    console.print(f"{len(dataset)} predictions → {output} ({dataset.log.n_skipped} skipped)")


@reads_structures()
def embed(
    checkpoint: Checkpoint,
    data: Annotated[
        str, typer.Argument(metavar="DATA", help="Structures: file, folder or registered name.")
    ],
    output: Annotated[
        Path, typer.Option("--output", "-o", help=".npz, .parquet or .csv file.")
    ] = Path("embeddings.npz"),
    layers: Annotated[
        str | None,
        typer.Option(
            "--layers",
            help="Per-layer pooled features (Gupta et al.): 'all', or comma-separated layer "
            "names or prefixes, e.g. 'interactions.7' (an ALIGNN's last atom, bond and "
            "angle features). Default: the crystal embedding only.",
        ),
    ] = None,
    reading: ReadOptions = DEFAULT_READING,
) -> None:
    """Pooled crystal embeddings of a dataset, batched, for your own models; with
    ``--layers``, the pooled features after the chosen layers, one column per feature
    named ``<layer>:<k>``.

    Examples:

        tlmat embed cgcnn/band-gap perov_5/test -o perov_test.parquet

        tlmat embed runs/alignn/model.pt perov_5/test --layers interactions.7 -o f.parquet
    """
    check_early(data=data, sources=[checkpoint])
    import pandas as pd

    from tlmat.io.writers import TableWriter
    from tlmat.transfer.features import iter_layer_features

    if output.suffix not in (".npz", ".parquet", ".csv"):
        # np.savez would quietly write OUTPUT.npz beside the name given
        fail(f"{output}: embeddings are written as .npz, .parquet or .csv")
    writable_output(output, reading.overwrite)
    # an ensemble: its first member's features
    trained, _, dataset = _model_and_structures(checkpoint, [data], reading)
    # a chunk at a time into a temporary file, renamed into place when all is written
    with TableWriter(output, len(dataset), "embeddings") as written:
        try:
            for positions, features, columns in iter_layer_features(
                trained, dataset, layers=layers or "embedding_out"
            ):
                _finite(features, dataset, checkpoint, positions, len(dataset))
                frame = pd.DataFrame(features, columns=columns)
                frame.insert(0, "id", [dataset.ids[i] for i in positions])
                written.write(frame)
        except ValueError as error:
            fail(error)
    width = len(written.columns or [])
    console.print(f"{written.rows} × {width} embeddings → {output}")


def _data_label(data: str) -> str:
    """A file-name part for a dataset: ``test`` for ``…/test.csv.gz``, ``perov_5-test``
    for the registered ``perov_5/test``."""
    import re

    path = Path(data)
    if path.exists():
        name = path.name
        for suffix in (".gz", ".bz2", ".xz", ".zip", ".csv", ".json", ".parquet", ".extxyz"):
            name = name.removesuffix(suffix)
    else:
        name = data.strip("/").replace("/", "-")
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "data"


def _figure_paths(
    ensemble_dir: Path, figures: Path | None, label: str, overwrite: bool
) -> dict[str, Path]:
    """Where the calibration figures go, checked before the work: ``--figures DIR``
    (an existing file is kept unless ``--overwrite``), or the ensemble's own ``figures/``
    folder, which tlmat owns (its earlier figures of the same data are replaced)."""
    from tlmat.evaluation.calibration import figure_paths
    from tlmat.training.rundir import owned, record

    if figures is not None:
        paths = figure_paths(figures, label)
        for path in paths.values():
            writable_output(path, overwrite)
        return paths
    folder = ensemble_dir / "figures"
    if folder.exists() and "figures" not in owned(ensemble_dir):
        fail(f"{folder} was not written by tlmat; pass --figures DIR to put the figures elsewhere")
    try:
        record(ensemble_dir, "figures")  # before anything is written there
    except OSError as error:
        fail(
            f"cannot write the figures into {folder} ({error.strerror or error}); pass "
            "--figures DIR"
        )
    paths = figure_paths(folder, label)
    writable_output(paths["calibration"], overwrite=True)
    return paths


def _calibration_line(scores: dict, unit: str) -> str:
    return (
        f"MAE {scores['mae']:.4f} {unit}; |error| ≤ σ for {scores['coverage_1sigma']:.1%} "
        f"(68.3 % if calibrated), ≤ 2σ for {scores['coverage_2sigma']:.1%} (95.4 %); "
        f"miscalibration area {scores['miscalibration_area']:.3f}; NLL "
        f"{scores['nll']:.3f}; Spearman(|error|, σ) {scores['spearman_error_sigma']:.2f}"
    )


@reads_structures("cache_dir", "overwrite", "strict", "on_duplicate", "disorder")
def evaluate(
    checkpoint: Checkpoint,
    data: Annotated[
        str, typer.Argument(metavar="DATA", help="Labelled structures: file, folder or name.")
    ],
    target: Annotated[str, typer.Option("--target", "-t", help="Column with true values.")],
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Per-structure CSV.")
    ] = None,
    figures: Annotated[
        Path | None,
        typer.Option(
            help="An ensemble: folder for the calibration and error-vs-σ figures "
            "[ENSEMBLE_DIR/figures].",
        ),
    ] = None,
    recalibrate: Annotated[
        bool,
        typer.Option(
            "--recalibrate",
            help="An ensemble: fit the σ scale s (s² = mean(error²/σ²), the Gaussian NLL "
            "minimum) on DATA — held-out labelled data, not the training data — and store "
            "it in the ensemble; predict and evaluate then use s·σ.",
        ),
    ] = False,
    allow_seen: Annotated[
        bool,
        typer.Option(
            "--allow-seen",
            help="An ensemble: go on although some of DATA was in a member's training or "
            "validation set (refused otherwise: such scores are not held-out ones); "
            "a recalibration records it.",
        ),
    ] = False,
    reading: ReadOptions = DEFAULT_READING,
) -> None:
    """Score a model on labelled data (MAE, RMSE, R², max error). An ensemble folder is
    also scored on its σ: coverage of ±1σ and ±2σ, miscalibration area, NLL, Spearman
    correlation of |error| with σ, and two figures (calibration curve, |error| against
    σ); ``--recalibrate`` fits σ's scale on DATA and stores it in the ensemble. DATA
    that a member trained or validated on is refused unless ``--allow-seen``.

    Examples:

        tlmat evaluate runs/train/model.pt perov_5/test -t heat_ref

        tlmat evaluate runs/ensemble perov_5/val -t heat_ref --recalibrate
    """
    check_early(data=data, sources=[checkpoint])
    if output is not None:
        writable_output(output, reading.overwrite)
    with reported_errors():
        trained, members = _model_or_ensemble(checkpoint)
        paths = _ensemble_outputs(checkpoint, members, data, figures, recalibrate, reading)
        dataset = _read_for(trained, [data], reading, [target])
    if members is None:
        _evaluate_model(checkpoint, trained, dataset, data, target, output)
        return
    seen = _seen(checkpoint, dataset, data, allow_seen)
    _evaluate_ensemble(checkpoint, members, dataset, data, target, output, paths, recalibrate, seen)


def _ensemble_outputs(
    checkpoint: str,
    members,
    data: str,
    figures: Path | None,
    recalibrate: bool,
    reading: ReadOptions,
) -> dict[str, Path]:
    """Where an ensemble's figures go, and whether its manifest may be recalibrated,
    checked before the data is read; a single model refuses both options."""
    from tlmat.uncertainty import check_own_manifest

    if members is None:
        if recalibrate or figures is not None:
            fail(f"--recalibrate and --figures need an ensemble folder; {checkpoint} is a model")
        return {}
    if recalibrate:  # refused before the data is read, not after
        check_own_manifest(Path(checkpoint))
    return _figure_paths(Path(checkpoint), figures, _data_label(data), reading.overwrite)


def _seen(checkpoint: str, dataset: GraphDataset, data: str, allow_seen: bool) -> dict | None:
    """What of DATA the members trained or validated on: refused (one ``error:`` line)
    unless ``allow_seen``, then said in a warning and returned, to be recorded."""
    from tlmat.uncertainty import check_unseen

    with reported_errors():
        seen = check_unseen(checkpoint, list(dataset.ids), data, allow_seen)
    if seen is not None:
        console.print(
            f"[bold yellow]warning:[/] {seen['n']} of the {seen['of']} structures of "
            f"{escape(data)} were in a member's training or validation set (e.g. "
            f"{', '.join(seen['examples'])}); the scores below are not held-out scores",
            soft_wrap=True,
        )
    return seen


def _evaluate_model(
    checkpoint: str,
    trained: TrainedModel,
    dataset: GraphDataset,
    data: str,
    target: str,
    output: Path | None,
) -> None:
    """One model on labelled data: its errors and, with ``output``, one row per structure."""
    from tlmat.evaluation import regression_metrics
    from tlmat.models.prediction import predict as predict_values

    truth = dataset.targets[target]
    values = predict_values(trained, dataset)
    _finite(values, dataset, checkpoint)
    metrics = regression_metrics(truth, values)
    console.print(
        metrics_table(
            f"{checkpoint} on {data}", {trained.target.name: metrics}, trained.target.unit
        )
    )
    # MAE, RMSE and max error in the target's unit (R² has none), said with the numbers
    unit = trained.target.unit
    console.print_json(json.dumps({"target": trained.target.name, "unit": unit, **metrics}))
    if output is not None:
        with output.open("w", newline="") as handle:
            writer = csv.writer(handle)
            unit = f" ({unit})" if unit else ""
            writer.writerow(["id", f"true{unit}", f"predicted{unit}", f"error{unit}"])
            writer.writerows(
                [i, float(t), float(p), float(p - t)]
                for i, t, p in zip(dataset.ids, truth, values, strict=True)
            )


def _evaluate_ensemble(
    checkpoint: str,
    members,
    dataset: GraphDataset,
    data: str,
    target: str,
    output: Path | None,
    paths: dict[str, Path],
    recalibrate: bool,
    seen: dict | None = None,
) -> None:
    """An ensemble on labelled data: the mean's errors, how far σ can be trusted (before
    and after ``recalibrate``), the figures and, with ``output``, one row per structure;
    ``seen``: what of the data the members trained on, allowed by the user."""
    from tlmat.evaluation import regression_metrics
    from tlmat.evaluation.calibration import calibration_figures
    from tlmat.uncertainty import calibration

    truth = dataset.targets[target]
    unit = members.target.unit
    raw = members.predict(dataset, calibrated=False)
    _finite(raw["sigma"], dataset, checkpoint)
    arrays = before = _scaled(raw, members.sigma_scale)
    scores = {**regression_metrics(truth, arrays["mean"]),
              **calibration(truth, arrays["mean"], arrays["sigma"])}  # fmt: skip
    head = f"ensemble of {len(members.members)} on {data}"
    if recalibrate:
        members, scores = _recalibrated(checkpoint, members, dataset, data, target, raw,
                                        scores, head, seen is not None)  # fmt: skip
        arrays = _scaled(raw, members.sigma_scale)
    else:
        console.print(f"{head}: {_calibration_line(scores, unit)}")
    scores["sigma_scale"] = members.sigma_scale
    if seen is not None:
        scores["seen"] = seen
    written = calibration_figures(
        truth, arrays["mean"], arrays["sigma"], paths["calibration"].parent, unit,
        _data_label(data), before["sigma"] if recalibrate else None,
    )  # fmt: skip
    for kind, path in written.items():
        console.print(f"{kind.replace('_', '-')} figure → {path}", soft_wrap=True)
    console.print_json(json.dumps(scores))
    if output is not None:
        _write_ensemble_rows(output, dataset.ids, truth, arrays, unit)


def _scaled(raw: dict[str, np.ndarray], scale: float) -> dict[str, np.ndarray]:
    """The members' mean, and their three σ times ``scale``."""
    return {k: v if k == "mean" else scale * v for k, v in raw.items()}


def _recalibrated(
    checkpoint: str,
    members,
    dataset: GraphDataset,
    data: str,
    target: str,
    raw: dict[str, np.ndarray],
    scores: dict,
    head: str,
    allow_seen: bool,
):
    """Fit σ's scale on DATA and store it (:func:`tlmat.uncertainty.recalibrate`), saying
    the calibration before and after: the recalibrated ensemble and the scores."""
    from tlmat.uncertainty import calibration
    from tlmat.uncertainty import recalibrate as fit_scale

    truth = dataset.targets[target]
    unit = members.target.unit
    earlier = f" (σ scale {members.sigma_scale:.4f})" if members.sigma_scale != 1 else ""
    with reported_errors():
        members = fit_scale(checkpoint, members, dataset, target, data, raw, allow_seen)
    arrays = _scaled(raw, members.sigma_scale)
    after = {**scores, **calibration(truth, arrays["mean"], arrays["sigma"])}
    console.print(f"{head}, before recalibration{earlier}: {_calibration_line(scores, unit)}")
    console.print(
        f"σ scale {members.sigma_scale:.4f} fitted on {data} (n = {len(truth)}) → "
        f"{Path(checkpoint) / 'ensemble.json'}; predict and evaluate now use it"
    )
    console.print(f"after recalibration: {_calibration_line(after, unit)}")
    console.print(
        "note: the 'after' numbers are on the data the scale was fitted on; evaluate "
        "on other held-out data to check them"
    )
    return members, {**after, "before_recalibration": scores}


def _write_ensemble_rows(
    output: Path, ids: list[str], truth: np.ndarray, arrays: dict[str, np.ndarray], unit: str
) -> None:
    """One row per structure: the true value, the mean, its error and the three σ."""
    import pandas as pd

    u = f" ({unit})" if unit else ""
    frame = pd.DataFrame({"id": ids, f"true{u}": truth, f"predicted{u}": arrays["mean"],
                          f"error{u}": arrays["mean"] - truth})  # fmt: skip
    for name in ("sigma_a", "sigma_e", "sigma"):
        frame[f"{name}{u}"] = arrays[name]
    frame.to_csv(output, index=False)
    console.print(f"{len(frame)} rows → {output}")


def models() -> None:
    """List the architectures tlmat can train (with parameter counts at their default and
    preset sizes) and the pretrained sources it can start from, with their provenance.

    Example:

        tlmat models
    """
    console.print(_architectures_table())
    console.print(_sources_table())
    _print_source_checksums()
    console.print(
        "Original CGCNN Materials Project models (Xie & Grossman, PRL 120, 145301, "
        "2018), MIT licence. Foundation models from their packages' own files "
        "(pip install 'tlmat\\[foundation]'), matgl's from $TLMAT_DATA_DIR/matgl_pretrained. "
        "All loaded with torch.load(weights_only=True); shipped tlmat sources are listed "
        "with their model cards."
    )


def _architectures_table() -> Table:
    """Every registered architecture at its default and preset sizes: parameters, graph,
    readout and reference (an architecture whose optional package is missing says so)."""
    import importlib.util

    from tlmat import catalogue

    archs = Table(title="Architectures (--model)", title_justify="left")
    for column in ("name", "parameters", "graph", "readout", "reference"):
        archs.add_column(column, justify="right" if column == "parameters" else "left")
    for name, a in catalogue.load()["architectures"].items():
        missing = a["package"] and importlib.util.find_spec(a["package"]) is None
        for row in a["rows"]:
            reference = a["reference"] if row["label"] == name else ""
            if missing and row["label"] == name:
                reference = f"needs {a['package']}: pip install 'tlmat\\[foundation]'"
            archs.add_row(
                row["label"], f"{row['parameters']:,}", row["graph"], row["readout"], reference
            )
    return archs


def _sources_table() -> Table:
    """Every pretrained source: CGCNN files, published sources and shipped tlmat models,
    with where each comes from."""
    from tlmat import catalogue
    from tlmat.datasets import data_dir

    table = Table(title="Pretrained models (--source)", title_justify="left")
    table.add_column("name", no_wrap=True)
    table.add_column("architecture")
    table.add_column("property")
    table.add_column("local copy")
    root = data_dir()
    for name, entry in catalogue.cgcnn_files().items():
        local = root is not None and (root / entry.local).is_file()
        table.add_row(
            name,
            entry.architecture or "",
            entry.description,
            "yes" if local else "downloaded on first use",
        )
    for name, entry in catalogue.load()["published"].items():
        where = "in its package"
        if entry["location"].startswith("$TLMAT_DATA_DIR"):
            where = "yes" if catalogue.local_copy(entry["location"]) else "not found"
        table.add_row(name, entry["architecture"], entry["description"], where)
    for name, card in catalogue.shipped().items():
        test = card["test"]
        table.add_row(
            name,
            card["architecture"],
            f"{card['description']}; test MAE {test['mae']:.3f} {card['unit']}",
            "shipped with tlmat",
        )
    return table


def _print_source_checksums() -> None:
    """Where each source's file is, with its SHA-256."""
    from tlmat import catalogue

    for name, entry in catalogue.cgcnn_files().items():
        console.print(f"{name}: {entry.url} (sha256 {entry.sha256})", soft_wrap=True)
    for name, entry in catalogue.load()["published"].items():
        console.print(f"{name}: {entry['location']} (sha256 {entry['sha256']})", soft_wrap=True)
    for name, card in catalogue.shipped().items():
        folder = catalogue.shipped_folder(name)
        console.print(
            f"{name}: model card {folder / 'card.md'} (sha256 {card['model_sha256']})",
            soft_wrap=True,
        )


def report(
    results: Annotated[
        Path,
        typer.Argument(
            metavar="RESULTS",
            help="Results grid: n<size>-s<seed>/<method>/, or a benchmark folder.",
        ),
    ],
    out: Annotated[Path | None, typer.Option(help="Output folder [RESULTS/report].")] = None,
    unit: Annotated[str, typer.Option(help="Unit of the target, for tables and axes.")] = "",
    threshold: Annotated[
        float | None,
        typer.Option(help="Error threshold for the CDF, e.g. chemical accuracy 0.0434 eV."),
    ] = None,
    baseline: Annotated[str, typer.Option(help="Method the others are tested against.")] = (
        "scratch"
    ),
    title: Annotated[str | None, typer.Option(help="Report title.")] = None,
    dft_hours: Annotated[
        float | None,
        typer.Option(
            min=0.0,
            help="Hours one DFT calculation of the target costs: adds each method's training "
            "cost and break-even number of materials, and with sources of several "
            "pretraining sizes the best split of a compute budget (see --cheap-dft-hours).",
        ),
    ] = None,
    cheap_dft_hours: Annotated[
        float | None,
        typer.Option(
            min=0.0,
            help="Hours one calculation of the pretraining fidelity (PBE, say) costs: with "
            "sources of several pretraining sizes, adds the best split of a compute budget "
            "between the two fidelities. Given one cost alone, the other is taken 10x apart.",
        ),
    ] = None,
    budget_hours: Annotated[
        list[float] | None,
        typer.Option(
            min=0.0,
            help="Total compute budget for the split, in the same hours; repeatable "
            "[the cost of each training-set size in target calculations].",
        ),
    ] = None,
    overwrite: Overwrite = False,
) -> None:
    """Markdown + HTML report of a results grid: MAE tables, paired t-tests, equivalent
    training-set sizes, learning curves, parity plots, error distributions. It writes to a
    new folder (an existing one only with --overwrite) and says which figures it could not
    draw and why; a benchmark folder supplies its own unit and threshold.

    Example:

        tlmat report benchmarks/results/model-zoo-perovskites --out my-report
        tlmat report benchmarks/results/hoffmann-pbe-hse --dft-hours 50 --out hse-cost
        tlmat report benchmarks/results/hoffmann-pbe-hse --dft-hours 10 --cheap-dft-hours 1
    """
    import yaml

    from tlmat.evaluation.report import write_report

    grid = results / "benchmark.yaml"  # a benchmark folder knows its unit and threshold
    if grid.exists():
        written = yaml.safe_load(grid.read_text()) or {}
        unit = unit or written.get("unit", "")
        threshold = threshold if threshold is not None else written.get("threshold")
        title = title or written.get("name")
    references = written.get("references") if grid.exists() else None
    writable_output(out or results / "report", overwrite, folder=True)
    try:
        path = write_report(
            results,
            out,
            unit,
            threshold,
            baseline,
            title,
            references,
            dft_hours,
            cheap_dft_hours,
            budget_hours,
        )
    except (FileNotFoundError, ValueError) as error:
        fail(error)
    console.print(f"report → {path} (and report.html, figures beside it)")
