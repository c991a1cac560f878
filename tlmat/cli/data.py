"""Data commands: ``tlmat info`` and ``tlmat cache``."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
import typer
from rich.table import Table

from tlmat.cli.common import (
    Targets,
    check_early,
    console,
    fail,
    option,
    reported_errors,
    skipped_table,
    writable_output,
)
from tlmat.cli.options import DEFAULT_READING, ReadOptions, reads_structures

if TYPE_CHECKING:
    from tlmat.graphs import GraphSettings
    from tlmat.io import ReadResult
    from tlmat.io.records import ProblemLog


@dataclass
class Contents:
    """What ``info`` shows of a dataset, from either reading path: sites per structure,
    the structures holding each element (atomic number), how many are periodic, the
    targets of each and the log of what was skipped."""

    source: str
    sites: list[int]
    elements: Counter[int]
    periodic: int
    targets: list[dict[str, Any]]
    log: ProblemLog

    @classmethod
    def of_records(cls, result: ReadResult) -> Contents:
        """From pymatgen records (the path that can also export them)."""
        records = result.records
        # species may carry oxidation states (COD CIFs: "Na+"); count their elements
        elements = Counter(
            getattr(el, "element", el).Z for r in records for el in r.structure.composition
        )
        return cls(
            result.source,
            [len(r.structure) for r in records],
            elements,
            sum(r.periodic for r in records),
            [r.targets for r in records],
            result.log,
        )

    @classmethod
    def of_ingested(cls, source: str, items: list, log: ProblemLog) -> Contents:
        """From the fast first read's structures (their graphs' atoms and cells)."""
        return cls(
            source,
            [len(i.graph.z) for i in items],
            Counter(int(z) for i in items for z in np.unique(i.graph.z)),
            sum(bool(i.graph.pbc.any()) for i in items),
            [i.targets for i in items],
            log,
        )

    @property
    def target_names(self) -> list[str]:
        return list(dict.fromkeys(name for targets in self.targets for name in targets))


def units_of(given: list[str] | None, names: list[str]) -> dict[str, str]:
    """Each target's unit from ``--unit`` values: ``NAME=UNIT`` for one target, a bare
    ``UNIT`` for every target not named."""
    units, every = {}, ""
    for value in given or []:
        name, _, unit = value.rpartition("=")
        if name:
            units[name] = unit
        else:
            every = unit
    return {name: units.get(name, every) for name in names}


def documentation_beside(path: Path) -> Path | None:
    """A dataset's documentation (``SOURCE.md`` or ``README.md``) in its folder or the
    two above, where the units of a table's columns are written."""
    folder = path if path.is_dir() else path.parent
    for place in [folder, *folder.parents][:3]:
        for name in ("SOURCE.md", "README.md"):
            if (place / name).is_file():
                return place / name
    return None


def summarise(contents: Contents, units: dict[str, str] | None = None) -> list[Table]:
    """Rich tables describing a dataset: structures, elements, targets, skipped rows."""
    from ase.data import chemical_symbols

    n, sites = len(contents.sites), np.asarray(contents.sites)
    overview = Table(title=f"{contents.source}", title_justify="left", show_header=False)
    overview.add_column("what")
    overview.add_column("value")
    overview.add_row("structures read", f"{n}")
    overview.add_row("skipped", f"{contents.log.n_skipped}")
    overview.add_row("periodic / molecules", f"{contents.periodic} / {n - contents.periodic}")
    if n:
        overview.add_row(
            "sites per cell (min / median / max)",
            f"{sites.min()} / {np.median(sites):g} / {sites.max()}",
        )
    ordered = sorted(contents.elements)
    overview.add_row(f"elements ({len(ordered)})", " ".join(chemical_symbols[z] for z in ordered))
    tables = [overview]
    if contents.target_names:
        tables.append(targets_table(contents, units or {}))
    skipped = skipped_table(contents.log)
    if skipped is not None:
        tables.append(skipped)
    return tables


def targets_table(contents: Contents, units: dict[str, str]) -> Table:
    """Statistics of each target, with how many structures lack a value of it (with no
    target named, a column is optional: its empty cells are counted here, not skipped),
    in the units ``--unit`` gave (a table or JSON file carries none tlmat could read)."""
    rows = contents.targets
    # no outer border: more room for the numbers on an 80-column terminal
    table = Table(title="Targets", title_justify="left", show_edge=False)
    for column in ("target (unit)", "n", "missing", "mean", "std", "min", "median", "max"):
        first = column == "target (unit)"  # a long name folds, never cut
        table.add_column(column, justify="left" if first else "right", overflow="fold")
    for name in contents.target_names:
        label = f"{name} ({units.get(name) or '?'})"
        values = [r[name] for r in rows if name in r]
        missing = str(len(rows) - len(values))
        array = np.asarray(values, dtype=float) if values else np.zeros(0)
        if array.ndim > 1:
            vector = f"vector of {array.shape[1]}"
            table.add_row(label, str(len(values)), missing, vector, "", "", "", "")
            continue
        stats = (array.mean(), array.std(), array.min(), np.median(array), array.max())
        table.add_row(label, str(len(array)), missing, *(f"{v:.4g}" for v in stats))
    return table


Limit = option(int | None, "Read only the first N items.")
Units = option(
    list[str] | None,
    "Unit of the targets, shown beside their statistics: 'eV/cell' for all, or "
    "NAME=UNIT per target (repeatable); files carry none tlmat could read.",
    "--unit",
)
SkippedCsv = option(Path | None, "Write every skipped item with its reason here.")
Export = option(
    Path | None, "Write the cleaned dataset: .extxyz/.xyz, or .csv (with a CIF column)."
)
Cutoff = option(float | None, "Neighbour cutoff in Å, instead of the model's.")
MaxNeighbors = option(
    int | None, "Nearest neighbours kept per atom (0: all), instead of the model's."
)
LineGraph = option(bool | None, "Bond-angle line graph.", "--line-graph/--no-line-graph")
Workers = option(int | None, "Processes for parsing and building (default: every core).")


def checks(reading: ReadOptions) -> dict[str, Any]:
    """The options by which structures are checked as they are read."""
    return {
        "strict": reading.strict,
        "disorder": reading.disorder,
        "on_duplicate": reading.on_duplicate,
    }


@reads_structures("strict", "disorder", "on_duplicate", "overwrite")
def info(
    path: Annotated[Path, typer.Argument(metavar="PATH", help="File or folder of structures.")],
    target: Targets = None,
    limit: Limit = None,
    skipped_csv: SkippedCsv = None,
    export: Export = None,
    unit: Units = None,
    reading: ReadOptions = DEFAULT_READING,
) -> None:
    """Summarise a dataset: count, elements, sites per cell, target statistics, skipped
    rows by reason.

    Reads CGCNN/ALIGNN folders (id_prop.csv), folders of CIF/POSCAR files, CSV with a CIF
    or POSCAR column, Matbench/pymatgen/JARVIS JSON, extended XYZ and ASE databases
    (.gz and .zip too).

    Example:

        tlmat info ../shared/data/perov_5/test.csv.gz --target heat_ref --unit eV/cell

        tlmat info my_cifs/ --disorder majority --export clean.extxyz
    """
    from tlmat.io import write_csv, write_extxyz

    check_early(data=path)
    for output in (skipped_csv, export):
        if output is not None:
            writable_output(output, reading.overwrite)
    with reported_errors():
        # the fast first read, unless the cleaned structures are to be written
        read = _read_records if export is not None else _read_fast
        contents, result = read(path, target, limit, reading)
    for table in summarise(contents, units_of(unit, contents.target_names)):
        console.print(table)
    documentation = documentation_beside(path)
    if contents.target_names and not unit and documentation is not None:
        console.print(f"units (?): not in the file; see {documentation}, then --unit NAME=UNIT")
    if skipped_csv is not None:
        contents.log.write_csv(skipped_csv)
        console.print(f"skipped items written to {skipped_csv}")
    if export is not None:
        writer = write_csv if export.suffix == ".csv" else write_extxyz
        try:
            n = writer(result.records, export, overwrite=reading.overwrite)
        except FileExistsError as error:
            fail(error)
        console.print(f"{n} cleaned structures written to {export}")


def _read_records(path: Path, target, limit, reading: ReadOptions):
    """The dataset as pymatgen records (what --export writes), described."""
    from tlmat.io import read_records
    from tlmat.machine import granted_cpus

    result = read_records(
        path, target, limit=limit, progress=True, workers=granted_cpus(), **checks(reading)
    )
    return Contents.of_records(result), result


def _read_fast(path: Path, target, limit, reading: ReadOptions):
    """The dataset through the fast first read (the same records and skips as the
    pymatgen path, 24–48× faster), described; the structures are not kept."""
    from tlmat.data.ingest import iter_ingested
    from tlmat.graphs import GraphSettings
    from tlmat.io.readers import nothing_read
    from tlmat.io.records import ProblemLog

    log = ProblemLog(strict=reading.strict)  # strict: the first bad structure raises
    options = dict(disorder=reading.disorder, on_duplicate=reading.on_duplicate)
    items = list(
        iter_ingested(path, GraphSettings(), target, log=log, limit=limit, progress=True, **options)
    )
    if not items:
        raise nothing_read(path, log)
    return Contents.of_ingested(str(path), items, log), None


ModelNames = option(
    list[str] | None,
    "Build the graphs this model reads (repeatable): an architecture or preset "
    "(cgcnn-mp, schnet-small, alignn …), a registered source (chgnet/0.3.0, "
    "tlmat/mp-eform-cgcnn, cgcnn/formation-energy-per-atom), a checkpoint, a run or "
    "an ensemble folder. Default: the model tlmat train uses. --preset is an alias.",
    "--model",
    "--preset",
)


def unknown_model(name: str) -> str:
    """The one-line refusal of a model name nothing knows, listing every name that works."""
    from tlmat.models import hub, registry

    return (
        f"unknown model {name!r}: not an architecture ({', '.join(registry.MODULES)}), "
        f"a preset ({', '.join(registry.presets())}), a registered source "
        f"({', '.join(hub.names())}), a checkpoint or a run folder"
    )


def model_graphs(name: str) -> tuple[GraphSettings, tuple[int, ...] | None]:
    """The graph settings and element list that ``tlmat train --model NAME`` or
    ``tlmat finetune --source NAME`` (and predict, for a checkpoint or ensemble) read a
    dataset with: those of the model itself, so the cache they look up is this one."""
    from tlmat.models import hub, registry

    if name in registry.MODULES or name in registry.presets():
        # a fresh model, as train builds it: its elements come from its feature table
        model = registry.build(registry.model_config(name))
    elif name in hub.names() or Path(name).exists():
        if hub.resolve(name).kind == "ensemble":
            from tlmat.uncertainty import load_ensemble

            model = load_ensemble(name).members[0].model  # every member reads the same
        else:
            model = hub.load_source(name).model
    else:
        raise ValueError(unknown_model(name))
    elements = tuple(model.elements) if model.elements is not None else None
    return model.graph_settings, elements


def graph_overrides(
    cutoff: float | None, max_neighbors: int | None, line_graph: bool | None
) -> dict[str, Any]:
    """The graph settings given on the command line, to replace the model's own."""
    overrides: dict[str, Any] = {}
    if cutoff is not None:
        overrides["cutoff"] = cutoff
    if max_neighbors is not None:
        overrides["max_neighbors"] = max_neighbors or None  # 0: every neighbour
    if line_graph is not None:
        overrides["line_graph"] = line_graph
    return overrides


def needed_graphs(
    names: list[str], overrides: dict[str, Any]
) -> dict[tuple[GraphSettings, tuple[int, ...] | None], list[str]]:
    """(graph settings, elements) → the model names that read graphs so: models that
    share them share one cache, built once."""
    from tlmat.graphs import GraphSettings

    wanted: dict[tuple[GraphSettings, tuple[int, ...] | None], list[str]] = {}
    for name in dict.fromkeys(names):
        settings, elements = model_graphs(name)
        if overrides:  # re-validated: a bad value is an error naming the field
            settings = GraphSettings(**{**settings.model_dump(), **overrides})
        wanted.setdefault((settings, elements), []).append(name)
    return wanted


def report_cache(dataset, seconds: float, names: list[str]) -> None:
    """How many graphs were built or loaded, how fast, what was skipped, and where."""
    how = "loaded from cache" if dataset.from_cache else "built"
    console.print(
        f"{len(dataset)} graphs {how} in {seconds:.2f} s "
        f"([bold]{len(dataset) / seconds:,.0f} structures/s[/]); "
        f"{dataset.log.n_skipped} skipped"
    )
    skipped = skipped_table(dataset.log)
    if skipped is not None:
        console.print(skipped)
    console.print(
        f"for {', '.join(names)}: settings {dataset.graphs.cache.settings.model_dump()}  →  "
        f"{dataset.graphs.cache.directory}"
    )


@reads_structures("cache_dir", "strict", "disorder", "on_duplicate")
def cache(
    data: Annotated[Path, typer.Argument(metavar="DATA", help="File or folder of structures.")],
    model: ModelNames = None,
    cutoff: Cutoff = None,
    max_neighbors: MaxNeighbors = None,
    line_graph: LineGraph = None,
    target: Targets = None,
    workers: Workers = None,
    reading: ReadOptions = DEFAULT_READING,
) -> None:
    """Build and store the graphs of a dataset ahead of training (preprocess once on a
    cluster, train many times); a second run only loads them. Give the --target that
    train or finetune will be given: the cache they look up is the one for that target.

    Example:

        tlmat cache ../shared/data/perov_5/train.csv.gz -t heat_ref --model schnet-small

        tlmat cache my_data.csv -t E_f --model cgcnn-mp --model chgnet/0.3.0 --workers 2
    """
    from tlmat.experiments.runspec import SCRATCH_MODEL

    with reported_errors():
        overrides = graph_overrides(cutoff, max_neighbors, line_graph)
        wanted = needed_graphs(model or [SCRATCH_MODEL], overrides)
    for (settings, elements), names in wanted.items():
        with reported_errors():
            start = time.perf_counter()
            dataset = reading.reading(workers).load(data, settings, target, elements)
        report_cache(dataset, time.perf_counter() - start, names)
