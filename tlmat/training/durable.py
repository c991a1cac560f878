"""What lets a run survive a kill, a full disk or a resume with its numbers intact.

- :class:`AtomicCheckpointIO`: Lightning's checkpoints written to a temporary name,
  flushed to disk and renamed, so that ``last.ckpt`` is always a whole checkpoint or the
  previous one, never a truncated file under its real name;
- :class:`EpochLog`: ``metrics.csv``, one row per logged step as Lightning's CSV logger
  writes it, but kept across a resume (the finished epochs' rows survive) and rewritten
  whole through a rename at every save (Lightning's logger deletes the file when it starts
  and appends to it in place);
- :class:`ResumableEarlyStopping`: early stopping that a resume does not undo;
- :func:`readable_checkpoint`: whether a checkpoint file can be read back.
"""

from __future__ import annotations

import csv
import io
import logging
import math
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.callbacks import EarlyStopping
from lightning.pytorch.loggers.logger import Logger
from lightning.pytorch.plugins.io import TorchCheckpointIO

from tlmat.training.rundir import write_atomic

logger = logging.getLogger("tlmat")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints serialised in memory, then written to ``NAME.tmp-PID``, flushed and
    renamed over ``NAME``: a kill or a full disk while writing leaves the previous file."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None
    ) -> None:
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        write_atomic(Path(path), buffer.getvalue())


def readable_checkpoint(path: Path) -> bool:
    """Whether ``path`` holds a checkpoint torch can read (tensors and plain values)."""
    try:
        torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # truncated, zero bytes, not a checkpoint: all mean "unusable"
        return False
    return True


def _number(text: str) -> float | str:
    try:
        return float(text)
    except ValueError:
        return text


class ResumableEarlyStopping(EarlyStopping):
    """Lightning's early stopping, which also stops a run resumed from the checkpoint of
    the epoch where it had decided to stop: ``trainer.should_stop`` is not saved, so the
    resumed run would otherwise train one epoch more than the uninterrupted one."""

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        if self.wait_count >= self.patience:
            trainer.should_stop = True


class EpochLog(Logger):
    """``metrics.csv`` of a run: the rows of epochs before ``first_epoch`` are kept from
    an interrupted run's file; the whole file is rewritten through a rename at each save.
    Columns: ``epoch``, ``step`` and every metric logged, in name order.

    ``train_loss`` is the last finished epoch's mean training loss as its checkpoint kept
    it: Lightning logs that row after writing the checkpoint, so a run stopped between the
    two would otherwise lose it."""

    def __init__(self, path: str | Path, first_epoch: int = 0, train_loss: float | None = None):
        super().__init__()
        self.path = Path(path)
        self.rows: list[dict[str, Any]] = []
        if first_epoch > 0 and self.path.is_file():
            with self.path.open(newline="") as handle:
                for row in csv.DictReader(handle):
                    values = {k: _number(v) for k, v in row.items() if k and v != ""}
                    for key in ("epoch", "step"):
                        if isinstance(values.get(key), float):
                            values[key] = int(values[key])
                    if values.get("epoch", math.inf) < first_epoch:
                        self.rows.append(values)
        if first_epoch > 0 and train_loss is not None:
            self._complete(first_epoch - 1, train_loss)

    def _complete(self, epoch: int, train_loss: float) -> None:
        """Add ``epoch``'s training-loss row if the interrupted run had not written it."""
        rows = [row for row in self.rows if row.get("epoch") == epoch]
        if rows and not any("train_loss" in row for row in rows):
            step = rows[-1].get("step", len(self.rows))
            self.rows.append({"epoch": epoch, "step": step, "train_loss": train_loss})

    @property
    def name(self) -> str:
        return ""

    @property
    def version(self) -> str:
        return ""

    @property
    def save_dir(self) -> str:
        return str(self.path.parent)

    @property
    def log_dir(self) -> str:
        return str(self.path.parent)

    @rank_zero_only
    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        """The settings live in ``settings.json`` and ``run.json``; nothing to add."""

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        row = {k: float(v.item() if hasattr(v, "item") else v) for k, v in metrics.items()}
        if "epoch" in row:
            row["epoch"] = int(row["epoch"])
        row["step"] = len(self.rows) if step is None else step
        self.rows.append(row)

    @rank_zero_only
    def save(self) -> None:
        if not self.rows:
            return
        names = sorted(set().union(*self.rows) - {"epoch", "step"})
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=["epoch", "step", *names], restval="")
        writer.writeheader()
        writer.writerows(self.rows)
        write_atomic(self.path, text.getvalue().encode())

    @rank_zero_only
    def finalize(self, status: str) -> None:
        self.save()
