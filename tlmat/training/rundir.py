"""Run folders that tlmat owns: what it wrote there is listed in a ledger, so that
``--overwrite`` removes exactly that and never a file the user put there, and a resumed
run is checked against the settings it was started with.

Ledger (``.tlmat-files.json``): the top-level names tlmat created in the folder, each
recorded *before* it is written, so that a run killed half-way still owns its files.
Settings (``settings.json``): what decides the numbers of a run (training config,
strategy, model, split ids, data fingerprint), written when the run starts.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

LEDGER = ".tlmat-files.json"
SETTINGS = "settings.json"
#: the lock a writing run holds on its folder, and who holds it (pid, host, command)
LOCK, HOLDER = ".tlmat.lock", ".tlmat.lock.json"
#: files whose presence means a run (or a method's run) finished
FINISHED = ("model.pt", "result.json")
#: training options a resume may change: they decide how long or where, not what, an
#: epoch computes (the manifest records the values in effect); ``devices`` and
#: ``num_nodes`` are not among them: the number of processes sets the optimiser's batch
RESUMABLE_CHANGES = (
    "epochs",
    "early_stopping_patience",
    "progress_bar",
    "accelerator",
    "ddp_strategy",
)

logger = logging.getLogger("tlmat")


class RunExistsError(FileExistsError):
    """A finished run, or files tlmat did not write, are in the way."""


class RunFolderError(RunExistsError):
    """A run folder that cannot be written, or that another run is writing."""


class ResumeMismatchError(ValueError):
    """An interrupted run was started again with different settings."""


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder that is
    flushed to disk and renamed over it: a kill or a full disk leaves the old file (or
    none), never a truncated one under the real name."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    payload = data.encode() if isinstance(data, str) else data
    try:
        with open(tmp, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def replaced(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write, renamed over ``path`` when the block
    ends without error (removed otherwise): for writers that want a file name."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: Path, payload: Any) -> None:
    """``payload`` as indented JSON, written atomically (:func:`write_atomic`)."""
    write_atomic(path, json.dumps(payload, indent=2, default=str))


#: run folders this process holds locked, with how many nested holds each
_held: dict[Path, list] = {}


@contextlib.contextmanager
def run_lock(run_dir: str | Path) -> Iterator[None]:
    """Hold ``run_dir`` for this process while a run writes it: another process that asks
    is refused at once (:class:`RunFolderError`, naming the holder). Nested holds by one
    process are counted; the operating system frees the lock of a killed process."""
    from filelock import FileLock, Timeout

    run_dir = Path(run_dir).resolve()
    if run_dir in _held:
        _held[run_dir][1] += 1
        try:
            yield
        finally:
            _held[run_dir][1] -= 1
        return
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        lock = FileLock(run_dir / LOCK, timeout=0)
        lock.acquire()
    except Timeout:
        raise RunFolderError(
            f"{run_dir} is being written by another tlmat run ({_holder(run_dir)}); wait "
            "for it to finish or choose another --run-dir"
        ) from None
    except OSError as error:
        raise RunFolderError(f"cannot write the run folder {run_dir}: {error.strerror}") from None
    _held[run_dir] = [lock, 1]
    try:
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
        write_json(run_dir / HOLDER, {**holder, "command": " ".join(sys.argv)})
        yield
    finally:
        del _held[run_dir]
        (run_dir / HOLDER).unlink(missing_ok=True)
        lock.release()


def _holder(run_dir: Path) -> str:
    try:
        who = json.loads((run_dir / HOLDER).read_text())
        since = time.strftime("%H:%M:%S", time.localtime(who["since"]))
        return f"process {who['pid']} on {who['host']} since {since}: {who['command']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "holder unknown"


def owned(run_dir: Path) -> set[str]:
    """The names tlmat wrote in ``run_dir`` (empty when it has no ledger)."""
    try:
        return set(json.loads((run_dir / LEDGER).read_text())["files"])
    except (OSError, ValueError, KeyError, TypeError):
        return set()


def record(run_dir: str | Path, *names: str) -> None:
    """Add top-level ``names`` to the ledger of ``run_dir`` (call before writing them);
    a name that stands there already and that tlmat did not write is refused
    (:class:`RunExistsError`): tlmat never replaces a file the user put there."""
    run_dir = Path(run_dir)
    mine = owned(run_dir)
    new = {Path(n).parts[0] for n in names} - mine
    taken = sorted(n for n in new if (run_dir / n).exists() or (run_dir / n).is_symlink())
    if taken:
        raise RunExistsError(
            f"{run_dir / taken[0]} was not written by tlmat and would be replaced; move it "
            "away or choose another --run-dir (--overwrite never replaces your files)"
        )
    try:
        write_atomic(run_dir / LEDGER, json.dumps({"files": sorted(mine | new)}, indent=1))
    except OSError as error:
        raise RunFolderError(f"cannot write the run folder {run_dir}: {error.strerror}") from None


def owned_path(run_dir: str | Path, name: str) -> Path:
    """``run_dir / name``, recorded in the ledger first."""
    record(run_dir, name)
    return Path(run_dir) / name


def foreign(run_dir: Path) -> list[str]:
    """Entries of ``run_dir`` that tlmat did not write."""
    mine = owned(run_dir) | {LEDGER, LOCK, HOLDER}
    return sorted(p.name for p in run_dir.iterdir() if p.name not in mine and ".tmp-" not in p.name)


def remove_owned(run_dir: Path) -> list[str]:
    """Delete what the ledger lists (and nothing else); returns the names left behind."""
    for name in sorted(owned(run_dir)):
        path = run_dir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
    (run_dir / LEDGER).unlink(missing_ok=True)
    return foreign(run_dir)


def check_run_dir(run_dir: str | Path, overwrite: bool = False, finished_ok: bool = False) -> None:
    """Raise :class:`RunExistsError` if ``run_dir`` cannot be used as a run folder
    without ``overwrite``: it holds files tlmat did not write, or a finished run (unless
    ``finished_ok``: a command that reuses a finished run made with its settings). Changes
    nothing: commands call it before the slow work."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise RunExistsError(f"{run_dir} is a file, not a run folder")
    if not run_dir.is_dir():
        return
    others = foreign(run_dir)
    if others and not overwrite:
        raise RunExistsError(
            f"{run_dir} holds {len(others)} file(s) tlmat did not write ({_shown(others)}); "
            "choose a new or empty --run-dir, or pass --overwrite to replace what tlmat "
            "wrote there (it never deletes files it did not write)"
        )
    finished = [n for n in FINISHED if (run_dir / n).exists()]
    if finished and not overwrite and not finished_ok:
        raise RunExistsError(
            f"{run_dir} holds a finished run ({finished[0]}); choose another folder "
            "or pass overwrite=True (--overwrite) to replace it"
        )


def prepare_run_dir(run_dir: str | Path, overwrite: bool = False) -> bool:
    """Create or take over ``run_dir`` (:func:`check_run_dir`; with ``overwrite`` a
    finished run is removed, only what tlmat wrote); ``True`` when an interrupted run
    there should be resumed."""
    run_dir = Path(run_dir)
    check_run_dir(run_dir, overwrite)
    if run_dir.is_dir() and any((run_dir / n).exists() for n in FINISHED):
        kept = remove_owned(run_dir)
        if kept:
            logger.warning(
                "%s: replaced tlmat's earlier run; kept %d file(s) tlmat did not write (%s)",
                run_dir,
                len(kept),
                _shown(kept),
            )
    run_dir.mkdir(parents=True, exist_ok=True)
    record(run_dir)
    return (run_dir / "checkpoints" / "last.ckpt").exists()


def claim(run_dir: str | Path, *names: str) -> None:
    """Use ``run_dir`` as a folder of several runs (``compare``): refuse files tlmat did
    not write, then own ``names`` (the runs' folders and the summary files)."""
    run_dir = Path(run_dir)
    others = foreign(run_dir) if run_dir.is_dir() else []
    if others:
        raise RunExistsError(
            f"{run_dir} holds {len(others)} file(s) tlmat did not write ({_shown(others)}); "
            "choose a new or empty --run-dir"
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    record(run_dir, *names)


def _shown(names: list[str]) -> str:
    return ", ".join(names[:3]) + (" …" if len(names) > 3 else "")


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): value}


def added_settings() -> dict[str, Any]:
    """Settings added after runs were recorded, with the value that does what those runs
    did (leaf key → value): every training setting's default (a setting added to
    TrainConfig keeps, by its default, what runs did before it), and a grid method's
    ``max_size``. A record without the setting is the same as one with this value."""
    from tlmat.training.config import TrainConfig
    from tlmat.transfer.strategies import Strategy

    defaults = {name: f.default for name, f in TrainConfig.model_fields.items()}
    # strategy settings added later (L2-SP, LoRA, replay): off by their defaults
    later = ("l2_sp", "lora_rank", "lora_alpha", "replay", "replay_size", "replay_weight")
    strategy = {name: Strategy.model_fields[name].default for name in later}
    return {**defaults, "max_size": None, **strategy}


#: what a user chooses, said first when a folder holds another run
CHOSEN = (
    "data.source", "config.target", "source.name", "source", "strategy.name", "data.sizes",
    "config.seed", "config.epochs",
)  # fmt: skip
#: what follows from the source: counted, not listed, when the source itself changed
FROM_SOURCE = ("source.", "model.")


def differences(before: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    """``key: old → new`` for every setting that changed (nested keys dotted), the ones
    a user chooses first (:data:`CHOSEN`: data, target, source, strategy, sizes); when
    the source changed, the settings of its model are one count, not a line each (they
    follow from it). A setting of :func:`added_settings` missing from ``before`` counts
    as its neutral value."""
    a, b = (
        _flatten(json.loads(json.dumps(before, default=str))),
        _flatten(json.loads(json.dumps(now, default=str))),
    )
    added = json.loads(json.dumps(added_settings(), default=str))
    for key, value in b.items():
        leaf = key.rsplit(".", 1)[-1]
        if key not in a and leaf in added and value == added[leaf]:
            a[key] = value
    changed = [k for k in set(a) | set(b) if a.get(k, "<unset>") != b.get(k, "<unset>")]
    changed.sort(key=lambda k: (CHOSEN.index(k) if k in CHOSEN else len(CHOSEN), k))
    hidden = []
    if "source.name" in changed or "source" in changed:
        hidden = [k for k in changed if k not in CHOSEN and k.startswith(FROM_SOURCE)]
    lines = [
        f"{key}: {a.get(key, '<unset>')} → {b.get(key, '<unset>')}"
        for key in changed
        if key not in hidden
    ]
    if hidden:
        lines.append(f"and {len(hidden)} setting(s) of the source's model, which follow from it")
    return lines


def check_resume(run_dir: Path, settings: Mapping[str, Any]) -> None:
    """Refuse to resume the interrupted run in ``run_dir`` unless it was started with
    ``settings``; otherwise (a fresh start) write them."""
    path = run_dir / SETTINGS
    resuming = (run_dir / "checkpoints" / "last.ckpt").exists()
    if not resuming:
        record(run_dir, SETTINGS)
        path.write_text(json.dumps(settings, indent=2, default=str))
        return
    try:
        before = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ResumeMismatchError(
            f"cannot resume {run_dir}: its {SETTINGS} is missing or unreadable ({error}), "
            "so the interrupted run's settings are unknown; pass --overwrite to start afresh"
        ) from None
    changed = differences(before, settings)
    if changed:
        listed = "\n  ".join(changed)
        raise ResumeMismatchError(
            f"cannot resume {run_dir} with different settings:\n  {listed}\n"
            "rerun with the original settings, choose a new --run-dir, or pass --overwrite "
            "to discard the interrupted run"
        )


def require_same_settings(run_dir: Path, settings: Mapping[str, Any], what: str) -> None:
    """Refuse to reuse the finished ``what`` in ``run_dir`` unless its ``settings.json``
    equals ``settings``: :class:`RunExistsError` listing the differences."""
    try:
        recorded = json.loads((run_dir / SETTINGS).read_text())
    except (OSError, ValueError):
        recorded = None
    changed = (
        [f"its {SETTINGS} is missing"] if recorded is None else differences(recorded, settings)
    )
    if changed:
        raise RunExistsError(
            f"{run_dir} holds a {what} made with other settings "
            f"({'; '.join(changed[:4])}); choose another --run-dir or pass --overwrite"
        )


def resumable_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` without the options a resume may change."""
    return {k: v for k, v in config.items() if k not in RESUMABLE_CHANGES}
