"""The ``tlmat`` command line: a thin layer over the library, one command per user task."""

from __future__ import annotations

import logging
from typing import Annotated

import typer
from rich.console import Console
from rich.logging import RichHandler
from typer.core import TyperOption

from tlmat import __version__
from tlmat.cli.common import console
from tlmat.cli.data import cache, info
from tlmat.cli.inference import embed, evaluate, models, predict, report
from tlmat.cli.screening import screen
from tlmat.cli.training import benchmark, compare, finetune, train


def _flag_without_type(self, ctx):
    # Typer prints "<bool>" beside on/off flags, which take no value: show nothing there
    return None if getattr(self, "is_flag", False) else _display_type(self, ctx)


_display_type = TyperOption.display_type_rich
TyperOption.display_type_rich = _flag_without_type

app = typer.Typer(
    help="Transfer learning of graph neural networks for crystal properties.",
    no_args_is_help=True,
    invoke_without_command=True,  # so that `tlmat --version` works alone
    rich_markup_mode="markdown",
)


@app.callback()
def main(
    ctx: typer.Context,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="More messages.")] = False,
    version: Annotated[bool, typer.Option("--version", help="Print the version.")] = False,
) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=Console(stderr=True), show_time=False, show_path=False)],
        force=True,
    )
    if version:
        console.print(f"tlmat {__version__}")
        raise typer.Exit()
    if ctx.invoked_subcommand is None:
        console.print(ctx.get_help())
        raise typer.Exit()


for command in (
    info,
    cache,
    train,
    finetune,
    compare,
    benchmark,
    predict,
    embed,
    evaluate,
    models,
    report,
    screen,
):
    app.command()(command)

__all__ = ["app"]
