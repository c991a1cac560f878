"""What the commands share: the console, error exits, option types, tables."""

from __future__ import annotations

import contextlib
import signal
import sys
import tempfile
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

console = Console()


def option(kind: Any, help: str, *names: str, **settings: Any) -> Any:
    """A typer option as a type annotation, ``Annotated[kind, typer.Option(*names,
    help=help, **settings)]``: one declaration, its type and help first."""
    return Annotated[kind, typer.Option(*names, help=help, **settings)]


Targets = option(list[str] | None, "Property column/key to keep (repeatable).", "--target", "-t")
Strict = option(bool, "Abort at the first bad structure instead of skipping it.", "--strict")
OnDuplicate = option(
    str,
    "An id seen twice in one dataset: 'error' refuses the dataset, 'first' keeps "
    "the first row of each id and skips the others.",
    "--on-duplicate",
)
Disorder = option(
    str, "Partially occupied sites: 'skip' the structure or keep each site's 'majority' species."
)
CacheDir = option(Path | None, "Graph cache folder (default $TLMAT_CACHE_DIR or ~/.cache/tlmat).")
Overwrite = option(bool, "Replace an existing output instead of stopping.", "--overwrite")


def fail(message: str | BaseException) -> NoReturn:
    """Print the error (a settings error as one line per bad field) and exit 1."""
    text = message if isinstance(message, str) else describe_error(message)
    # escaped: ids and paths in brackets ("[mp-1234]", "[/data/x]") are no rich markup
    console.print(f"[bold red]error:[/] {escape(text)}")
    raise typer.Exit(1)


def check_early(
    *,
    data: str | Path | None = None,
    test: str | Path | None = None,
    model: Any = None,
    sources: Iterable[str | Path | None] = (),
    strategies: Iterable[str] = (),
    candidates: Iterable[str] = (),
    files: Iterable[Path | None] = (),
    config: Path | None = None,
    spec: str = "RunSpec",
) -> None:
    """What a command was given that needs no model and no structure read — data and
    test files or names, model, source and strategy names, fit's candidates, settings
    files — checked before torch is imported (1–2 s alone), so that a mistake is said
    within a second, with the closest names."""
    from tlmat import catalogue, datasets

    try:
        for given in (data, test):
            if given is not None:
                datasets.check(given)
        for path in files:
            if path is not None and not Path(path).exists():
                raise FileNotFoundError(f"{path}: no such file")
        if isinstance(model, str):
            catalogue.check_model(model)
        for text in candidates:  # "STRATEGY [SOURCE]"
            strategy, source = catalogue.split_candidate(text)
            catalogue.check_methods([strategy], kind="candidate strategy")
            catalogue.check_source(source)
        for source in sources:
            catalogue.check_source(source)
        catalogue.check_methods(strategies)
        if config is not None:
            catalogue.check_settings(config, spec)
    except (ValueError, FileNotFoundError) as error:
        fail(error)


def _fields_of(model_name: str) -> list[str]:
    """The fields of the pydantic model called ``model_name`` and of the models nested
    in it (a RunSpec's training settings), for spelling hints."""
    from pydantic import BaseModel

    stack = [BaseModel]
    while stack:
        cls = stack.pop()
        if cls.__name__ == model_name and cls is not BaseModel:
            nested = [
                f.annotation
                for f in cls.model_fields.values()
                if isinstance(f.annotation, type) and issubclass(f.annotation, BaseModel)
            ]
            return [*cls.model_fields, *(n for m in nested for n in m.model_fields)]
        stack += cls.__subclasses__()
    return []


def describe_error(error: BaseException) -> str:
    """An exception as a message; pydantic's validation errors as one line per field with
    the value given and what is allowed, instead of its raw text with a URL."""
    errors = getattr(error, "errors", None)
    if type(error).__name__ != "ValidationError" or not callable(errors):
        return str(error)
    from tlmat.hints import did_you_mean

    where = " ".join(getattr(error, "__notes__", []))
    lines = []
    for item in errors(include_url=False):
        field = ".".join(str(part) for part in item["loc"]) or "(settings)"
        if item["type"] == "extra_forbidden":
            hint = did_you_mean(str(item["loc"][-1]), _fields_of(error.title))
            lines.append(f"{field}: unknown setting{hint}")
        elif item["type"] == "literal_error":
            allowed = item.get("ctx", {}).get("expected", "")
            lines.append(f"{field}: {item['input']!r} is not one of {allowed}")
        elif not item["loc"] and item["type"] == "value_error":  # a check across fields
            lines.append(str(item.get("ctx", {}).get("error", item["msg"])))
        else:
            lines.append(f"{field}: {item['msg'].lower()} (got {item['input']!r})")
    head = f"invalid {error.title} settings" + (f" {where}" if where else "")
    return head + ":\n  " + "\n  ".join(lines)


def run_folder(config: Path | None, command: str, *words: Any) -> Path:
    """The run folder when ``--run-dir`` is not given: the ``run_dir`` of the ``--config``
    file, else ``runs/<command>-<words…>`` named after what the run is (target, strategy,
    source, model), so that two different runs started with the defaults never meet in
    one folder, and the same command finds its own run again to resume or reuse it."""
    if config is not None:
        import yaml

        with contextlib.suppress(OSError, yaml.YAMLError):
            written = yaml.safe_load(Path(config).read_text())
            if isinstance(written, dict) and written.get("run_dir"):
                return Path(written["run_dir"])
    parts = [command, *(str(w) for w in words if w)]
    name = "-".join("".join(c if c.isalnum() or c in "+-._" else "_" for c in p) for p in parts)
    return Path("runs") / name


def note_run_dir(run_dir: Path, default: Path) -> None:
    """Say where results go when the default run folder lands inside a git checkout and
    git does not ignore it (results would show up as untracked files of that project)."""
    if run_dir != default:
        return
    here = Path.cwd().resolve()
    checkout = next((p for p in (here, *here.parents) if (p / ".git").exists()), None)
    if checkout is None:
        return
    import subprocess

    try:
        ignored = (
            subprocess.run(
                ["git", "-C", str(checkout), "check-ignore", "-q", str(here / run_dir)],
                capture_output=True,
                timeout=5,
            ).returncode
            == 0
        )
    except (OSError, subprocess.SubprocessError):
        ignored = False
    if not ignored:
        console.print(
            f"note: results go to {here / run_dir}, inside the git checkout {checkout} "
            "(not ignored by git); pass --run-dir to put them elsewhere",
            soft_wrap=True,  # a path broken over two lines cannot be copied
        )


#: errors a user can act on, by class name (so that this check imports nothing): each
#: becomes "error: …" and exit status 1 instead of a traceback
USER_ERRORS = ("InputError", "CacheWriteError", "RunExistsError", "CheckpointError")
USER_ERRORS += ("DivergedError",)

#: set by ``tlmat --debug``: show the traceback of every error, not only its message
debug = False


def _named(error: BaseException, names) -> bool:
    return any(
        c.__name__ in names and c.__module__.startswith("tlmat.") for c in type(error).__mro__
    )


def _user_message(error: BaseException) -> str | None:
    """What a user needs to act on ``error``, or ``None`` for an internal error.

    OS errors are the user's to act on (a path that cannot be read or written, a full
    disk): they are named by path and reason, without Python's ``[Errno n]``."""
    if isinstance(error, OSError) and error.strerror:
        return f"{error.filename}: {error.strerror}" if error.filename else error.strerror
    if isinstance(error, OSError | ValueError) or _named(error, USER_ERRORS):
        return describe_error(error)
    return None


@contextlib.contextmanager
def reported_errors() -> Iterator[None]:
    """Run a command's work: the errors a user can act on (bad input, a refused run
    folder or checkpoint, a diverged run, a file that cannot be read or written, a bad
    value) end it with ``error: …`` and exit status 1; a run stopped by SIGTERM or
    SIGINT with its resume hint and 128 + the signal. Any other exception is a fault of
    tlmat: one ``error: internal error: …`` line and exit 1 as well, since a traceback
    helps no user; ``tlmat --debug`` shows every traceback (and lets internal errors
    propagate, for a debugger)."""
    import click

    _forget_stops()
    try:
        with _ctrl_c_recorded():
            yield
    except (typer.Exit, typer.Abort, click.exceptions.Exit, click.ClickException, click.Abort):
        raise  # an exit already decided (fail() inside, --help, a usage error)
    except KeyboardInterrupt:  # Ctrl-C before a run's own handler was set (reading data)
        _stopped_by_ctrl_c()
    except Exception as error:
        if _named(error, ("RunInterrupted",)):
            interrupted(error)
        if (stop := _stop_received()) is not None:
            interrupted(stop)
        if _ctrl_c_seen:
            _stopped_by_ctrl_c()
        message = _user_message(error)
        if debug:
            if message is None:
                raise
            console.print_exception()
        if message is None:
            message = (
                f"internal error: {type(error).__name__}: {error} "
                "(run with --debug for the traceback)"
            )
        fail(message)


#: whether Ctrl-C reached this command outside a run's own handler (see _ctrl_c_recorded)
_ctrl_c_seen = False


def _record_ctrl_c(signum, frame) -> NoReturn:
    global _ctrl_c_seen
    _ctrl_c_seen = True
    raise KeyboardInterrupt


@contextlib.contextmanager
def _ctrl_c_recorded() -> Iterator[None]:
    """Ctrl-C still raises KeyboardInterrupt, and is remembered: a library that swallows
    it inside an import leaves a later, unrelated error that is the stop's doing (see
    :func:`tlmat.training.fit.last_stop`). A SIGINT the process ignores (a background
    job's) stays ignored."""
    global _ctrl_c_seen
    _ctrl_c_seen = False
    main = threading.current_thread() is threading.main_thread()
    if not main or signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield
        return
    signal.signal(signal.SIGINT, _record_ctrl_c)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _stopped_by_ctrl_c() -> NoReturn:
    console.print(
        "[bold yellow]stopped:[/] by SIGINT before training began; nothing was lost "
        "(graphs read so far are cached): run the same command again"
    )
    raise typer.Exit(128 + signal.SIGINT) from None


def _stop_received():
    """The stop by signal this command received during a run, if any (training is only
    imported once a run began: before that, no handler could have raised one)."""
    fit = sys.modules.get("tlmat.training.fit")
    return fit.last_stop() if fit is not None else None


def _forget_stops() -> None:
    """A command starts with no stop received (commands run one after another in one
    process, as in tests, must not inherit an earlier command's stop)."""
    if (fit := sys.modules.get("tlmat.training.fit")) is not None:
        fit.forget_stop()


def interrupted(error) -> NoReturn:
    """A run stopped by SIGTERM or SIGINT: say how to resume, exit 128 + the signal."""
    console.print(f"[bold yellow]stopped:[/] {escape(str(error))}")
    raise typer.Exit(error.exit_code)


def writable_output(path: Path, overwrite: bool, folder: bool = False) -> Path:
    """Check an output path before the work that fills it: an existing file (or, for a
    ``folder``, a non-empty folder) is kept unless ``overwrite``, and the place must be
    writable — found out now by writing a probe file there, not after an hour's work."""
    if folder:
        if path.exists() and not path.is_dir():
            fail(f"{path} is a file; the output is a folder")
        if path.is_dir() and any(path.iterdir()) and not overwrite:
            fail(f"{path} is not empty; pass --overwrite to replace what tlmat writes there")
        place = path
    else:
        if path.is_dir():
            fail(f"{path} is a folder; give a file name")
        if path.exists() and not overwrite:
            fail(f"{path} exists; pass --overwrite to replace it")
        place = path.parent
    ancestor = place
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        fail(f"cannot write {path}: {ancestor} is a file, not a folder")
    try:
        place.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=place):
            pass
    except OSError as error:
        fail(f"cannot write {path}: {error.strerror or error}")
    return path


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
        table.add_row(reason.value, str(count), escape(str(first[reason])))
    return table


def metrics_table(title: str, rows: dict[str, dict[str, float]], unit: str = "") -> Table:
    """One row per method: test MAE, RMSE, R² (units of the target)."""
    table = Table(title=title, title_justify="left")
    for column in ("method", f"MAE {unit}".strip(), f"RMSE {unit}".strip(), "R²", "n"):
        table.add_column(column, justify="left" if column == "method" else "right")
    for name, m in rows.items():
        table.add_row(name, f"{m['mae']:.4f}", f"{m['rmse']:.4f}", f"{m['r2']:.3f}", str(m["n"]))
    return table
