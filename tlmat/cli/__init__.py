"""The ``tlmat`` command line: a thin layer over the library, one command per user task."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Annotated

import typer
from rich.console import Console
from rich.logging import RichHandler
from typer.core import TyperOption

from tlmat import __version__
from tlmat.cli import common
from tlmat.cli.common import console, reported_errors
from tlmat.cli.data import cache, info
from tlmat.cli.inference import embed, evaluate, label, models, predict, report
from tlmat.cli.screening import screen
from tlmat.cli.training import benchmark, compare, finetune, fit, train
from tlmat.machine import share_cores


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
    debug: Annotated[
        bool, typer.Option("--debug", help="Show the full traceback of every error.")
    ] = False,
) -> None:
    common.debug = debug  # set on every invocation: one test's --debug is not the next's
    share_cores()  # threads sized to the CPUs granted, before torch starts
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


def _guarded(command: Callable[..., None]) -> Callable[..., None]:
    """``command`` with all of its work inside :func:`reported_errors`, so that no
    error, even outside a command's own guarded block, reaches the user as a traceback
    (typer reads the signature through ``functools.wraps``)."""

    @functools.wraps(command)
    def run(*args, **kwargs) -> None:
        with reported_errors():
            command(*args, **kwargs)

    return run


for command in (
    info,
    cache,
    train,
    finetune,
    compare,
    fit,
    benchmark,
    predict,
    label,
    embed,
    evaluate,
    models,
    report,
    screen,
):
    app.command()(_guarded(command))

__all__ = ["app"]
