"""What the commands share: the console, error exits, option types, tables."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.table import Table

console = Console()

Targets = Annotated[
    list[str] | None,
    typer.Option("--target", "-t", help="Property column/key to keep (repeatable)."),
]
Strict = Annotated[bool, typer.Option("--strict", help="Stop at the first bad structure.")]
Disorder = Annotated[
    str,
    typer.Option(
        help="Partially occupied sites: 'skip' the structure or keep each site's 'majority' "
        "species."
    ),
]
CacheDir = Annotated[
    Path | None,
    typer.Option(help="Graph cache folder (default $TLMAT_CACHE_DIR or ~/.cache/tlmat)."),
]
Overwrite = Annotated[
    bool, typer.Option("--overwrite", help="Replace an existing output instead of stopping.")
]


def fail(message: str) -> NoReturn:
    console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(1)


def skipped_table(log) -> Table | None:
    """Skipped items by reason, with the first example of each."""
    if not log.problems:
        return None
    table = Table(title="Skipped", title_justify="left")
    table.add_column("reason")
    table.add_column("count", justify="right")
    table.add_column("first example")
    first = {}
    for problem in log.problems:
        first.setdefault(problem.reason, problem)
    for reason, count in log.by_reason().most_common():
        table.add_row(reason.value, str(count), str(first[reason]))
    return table


def metrics_table(title: str, rows: dict[str, dict[str, float]], unit: str = "") -> Table:
    """One row per method: test MAE, RMSE, R² (units of the target)."""
    table = Table(title=title, title_justify="left")
    for column in ("method", f"MAE {unit}".strip(), f"RMSE {unit}".strip(), "R²", "n"):
        table.add_column(column, justify="left" if column == "method" else "right")
    for name, m in rows.items():
        table.add_row(name, f"{m['mae']:.4f}", f"{m['rmse']:.4f}", f"{m['r2']:.3f}", str(m["n"]))
    return table
