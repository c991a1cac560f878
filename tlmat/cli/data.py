"""Data commands: ``tlmat info`` and ``tlmat cache``."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import numpy as np
import typer
from rich.table import Table

from tlmat.cli.common import (
    CacheDir,
    Disorder,
    OnDuplicate,
    Overwrite,
    Strict,
    Targets,
    console,
    fail,
    reported_errors,
    skipped_table,
    writable_output,
)

if TYPE_CHECKING:
    from tlmat.io import ReadResult


def summarise(result: ReadResult) -> list[Table]:
    """Rich tables describing a dataset: structures, elements, targets, skipped rows."""
    records = result.records
    sites = np.array([len(r.structure) for r in records])
    # species may carry oxidation states (COD CIFs: "Na+"); list their elements
    elements = Counter(
        getattr(el, "element", el) for r in records for el in r.structure.composition.elements
    )
    periodic = sum(r.periodic for r in records)

    overview = Table(title=f"{result.source}", title_justify="left", show_header=False)
    overview.add_column("what")
    overview.add_column("value")
    overview.add_row("structures read", f"{len(records)}")
    overview.add_row("skipped", f"{result.log.n_skipped}")
    overview.add_row("periodic / molecules", f"{periodic} / {len(records) - periodic}")
    overview.add_row(
        "sites per cell (min / median / max)",
        f"{sites.min()} / {np.median(sites):g} / {sites.max()}",
    )
    ordered = sorted(elements, key=lambda e: e.Z)
    overview.add_row(f"elements ({len(ordered)})", " ".join(str(e) for e in ordered))
    tables = [overview]

    if result.target_names:
        tables.append(targets_table(result))
    skipped = skipped_table(result.log)
    if skipped is not None:
        tables.append(skipped)
    return tables


def targets_table(result: ReadResult) -> Table:
    """Statistics of each target, with how many structures lack a value of it (with no
    target named, a column is optional: its empty cells are counted here, not skipped)."""
    records = result.records
    table = Table(title="Targets (units as in the source)", title_justify="left")
    for column in ("target", "n", "missing", "mean", "std", "min", "median", "max"):
        table.add_column(column, justify="left" if column == "target" else "right")
    for name in result.target_names:
        values = [r.targets[name] for r in records if name in r.targets]
        missing = str(len(records) - len(values))
        array = np.asarray(values, dtype=float) if values else np.zeros(0)
        if array.ndim > 1:
            vector = f"vector of {array.shape[1]}"
            table.add_row(name, str(len(values)), missing, vector, "", "", "", "")
            continue
        stats = (array.mean(), array.std(), array.min(), np.median(array), array.max())
        table.add_row(name, str(len(array)), missing, *(f"{v:.4g}" for v in stats))
    return table


def info(
    path: Annotated[Path, typer.Argument(metavar="PATH", help="File or folder of structures.")],
    target: Targets = None,
    strict: Strict = False,
    disorder: Disorder = "skip",
    on_duplicate: OnDuplicate = "error",
    limit: Annotated[int | None, typer.Option(help="Read only the first N items.")] = None,
    skipped_csv: Annotated[
        Path | None, typer.Option(help="Write every skipped item with its reason here.")
    ] = None,
    export: Annotated[
        Path | None,
        typer.Option(help="Write the cleaned dataset: .extxyz/.xyz, or .csv (with a CIF column)."),
    ] = None,
    overwrite: Overwrite = False,
) -> None:
    """Summarise a dataset: count, elements, sites per cell, target statistics, skipped
    rows by reason.

    Reads CGCNN/ALIGNN folders (id_prop.csv), folders of CIF/POSCAR files, CSV with a CIF
    or POSCAR column, Matbench/pymatgen/JARVIS JSON, extended XYZ and ASE databases
    (.gz and .zip too).

    Example:

        tlmat info ../shared/data/perov_5/test.csv.gz --target heat_ref

        tlmat info my_cifs/ --disorder majority --export clean.extxyz
    """
    from tlmat.data.ingest import default_workers
    from tlmat.io import read_records, write_csv, write_extxyz

    for output in (skipped_csv, export):
        if output is not None:
            writable_output(output, overwrite)
    with reported_errors():
        result = read_records(
            path,
            target,
            strict=strict,
            disorder=disorder,
            limit=limit,
            progress=True,
            on_duplicate=on_duplicate,
            workers=default_workers(),
        )
    for table in summarise(result):
        console.print(table)
    if skipped_csv is not None:
        result.log.write_csv(skipped_csv)
        console.print(f"skipped items written to {skipped_csv}")
    if export is not None:
        writer = write_csv if export.suffix == ".csv" else write_extxyz
        try:
            n = writer(result.records, export, overwrite=overwrite)
        except FileExistsError as error:
            fail(error)
        console.print(f"{n} cleaned structures written to {export}")


def cache(
    data: Annotated[Path, typer.Argument(metavar="DATA", help="File or folder of structures.")],
    preset: Annotated[
        str, typer.Option(help="Graph convention: cgcnn (8 Å, 12 nearest), schnet, alignn.")
    ] = "cgcnn",
    cutoff: Annotated[float | None, typer.Option(help="Neighbour cutoff in Å.")] = None,
    max_neighbors: Annotated[
        int | None, typer.Option(help="Nearest neighbours kept per atom; 0 keeps all.")
    ] = None,
    line_graph: Annotated[
        bool | None, typer.Option("--line-graph/--no-line-graph", help="Bond-angle line graph.")
    ] = None,
    target: Targets = None,
    cache_dir: CacheDir = None,
    workers: Annotated[
        int | None,
        typer.Option(help="Processes for parsing and building (default: every core)."),
    ] = None,
    strict: Strict = False,
    disorder: Disorder = "skip",
    on_duplicate: OnDuplicate = "error",
) -> None:
    """Build and store the graphs of a dataset ahead of training (preprocess once on a
    cluster, train many times); a second run only loads them.

    Example:

        tlmat cache ../shared/data/perov_5/train.csv.gz --preset cgcnn --workers 2
    """
    from tlmat.data import load_dataset
    from tlmat.graphs import GraphSettings

    with reported_errors():
        settings = GraphSettings.preset(preset)
        overrides = {}
        if cutoff is not None:
            overrides["cutoff"] = cutoff
        if max_neighbors is not None:
            overrides["max_neighbors"] = max_neighbors or None
        if line_graph is not None:
            overrides["line_graph"] = line_graph
        settings = settings.model_copy(update=overrides)
        settings = GraphSettings(**settings.model_dump())  # re-validate the overrides
        start = time.perf_counter()
        dataset = load_dataset(
            data,
            settings,
            target,
            cache_dir=cache_dir,
            strict=strict,
            disorder=disorder,
            on_duplicate=on_duplicate,
            workers=workers,
            progress=True,
        )
        seconds = time.perf_counter() - start
    where = dataset.graphs.cache.directory
    how = "loaded from cache" if dataset.from_cache else "built"
    console.print(
        f"{len(dataset)} graphs {how} in {seconds:.2f} s "
        f"([bold]{len(dataset) / seconds:,.0f} structures/s[/]); "
        f"{dataset.log.n_skipped} skipped"
    )
    skipped = skipped_table(dataset.log)
    if skipped is not None:
        console.print(skipped)
    console.print(f"settings {settings.model_dump()}  →  {where}")
