"""Train a model on a dataset split: checkpoints, early stopping, resume, run manifest.

A run folder holds everything needed to trust and repeat the result::

    run.json            config, seed, strategy, versions, data fingerprint, timings, metrics
    split.json          the train/val/test ids
    metrics.csv         per-epoch losses and validation MAE (Lightning CSV logger)
    checkpoints/        best.ckpt (lowest validation MAE) and last.ckpt (for resume)
    model.pt            the best model as a self-describing tlmat checkpoint

An interrupted run resumes from ``checkpoints/last.ckpt`` when started again with the
same folder; a finished one is never overwritten unless asked.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import platform
import resource
import signal
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

import tlmat
from tlmat.data.dataset import GraphDataset
from tlmat.data.loader import GraphLoader, inference_batch_size
from tlmat.data.splits import Split
from tlmat.models.checkpoint import TrainedModel, save_checkpoint
from tlmat.training.config import TrainConfig
from tlmat.training.durable import (
    AtomicCheckpointIO,
    EpochLog,
    ResumableEarlyStopping,
    readable_checkpoint,
)
from tlmat.training.module import NonFiniteError, PropertyModule
from tlmat.training.recalibration import linear_start
from tlmat.training.replay import Replay
from tlmat.training.rundir import (
    check_resume,
    check_run_dir,
    prepare_run_dir,
    record,
    replaced,
    require_same_settings,
    resumable_settings,
    run_lock,
    write_json,
)
from tlmat.transfer.lora import merge_adapters
from tlmat.transfer.strategies import Strategy, apply_strategy

logger = logging.getLogger("tlmat")


class DivergedError(RuntimeError):
    """The loss, a validation error or the weights became NaN or infinite."""


class RunInterrupted(RuntimeError):
    """SIGTERM (a cluster's time limit, ``kill``) or SIGINT (Ctrl-C) stopped a run; its
    last finished epoch is in ``last.ckpt`` and the same command resumes it."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum

    def __reduce__(self):
        # raised in a worker process (parallel ensemble members), it is pickled back
        return type(self), (str(self), self.signum)

    @property
    def exit_code(self) -> int:
        """The shell's convention for a process ended by a signal: 128 + its number."""
        return 128 + self.signum


#: a run estimated (after its first epoch) to need longer than this says so, in seconds
LONG_RUN_S = 600.0


class _TimeEstimate(L.Callback):
    """After the first epoch, warn when the run may take longer than ``limit`` seconds."""

    def __init__(self, epochs: int, limit: float | None = None):
        self.epochs, self.start = epochs, None
        self.limit = LONG_RUN_S if limit is None else limit

    def on_train_epoch_start(self, trainer, module) -> None:
        if self.start is None:
            self.start = (time.perf_counter(), trainer.current_epoch)

    def on_validation_epoch_end(self, trainer, module) -> None:
        if self.start is None or trainer.current_epoch != self.start[1]:
            return
        per_epoch = time.perf_counter() - self.start[0]
        left = (self.epochs - trainer.current_epoch - 1) * per_epoch
        if left > self.limit:
            logger.warning(
                "%.1f s per epoch: up to %d more epochs may take %.0f min (early stopping "
                "may end sooner; --epochs caps it)",
                per_epoch,
                self.epochs - trainer.current_epoch - 1,
                left / 60,
            )


def _on_terminal() -> bool:
    """Whether the user watches a terminal: Lightning's bar there, plain lines otherwise
    (its bar rewrites one line with carriage returns, which a log file keeps as one)."""
    return sys.stderr.isatty()


class _EpochLines(L.Callback):
    """Off a terminal, the run's progress as plain lines (:class:`tlmat.progress.Display`):
    the epoch, the share of the epochs at most left and the time left, estimated from the
    epochs this process trained (early stopping may end it sooner)."""

    def __init__(self, epochs: int):
        self.epochs, self.display = epochs, None

    def on_train_start(self, trainer, module) -> None:
        from tlmat.progress import Display

        if trainer.global_rank == 0:
            self.first = trainer.current_epoch
            self.display = Display("training", max(self.epochs - self.first, 1)).__enter__()

    def on_train_epoch_end(self, trainer, module) -> None:
        if self.display is not None:
            epoch = trainer.current_epoch + 1
            note = f"epoch {epoch} of at most {self.epochs}"
            self.display("training", epoch - self.first, note=note)

    def on_train_end(self, trainer, module) -> None:
        if self.display is not None:
            self.display.__exit__(None, None, None)
            self.display = None

    def on_exception(self, trainer, module, exception: BaseException) -> None:
        self.on_train_end(trainer, module)  # a stopped run stops its heartbeat


#: the stop a signal handler of this process last raised (see :func:`last_stop`)
_last_stop: RunInterrupted | None = None


def last_stop() -> RunInterrupted | None:
    """The stop that SIGTERM or SIGINT raised in this process, if one did. A stop raised
    inside an import can surface later as an unrelated error: a library that tries an
    optional import swallows it (pybind11 turns it into an ImportError), and the next
    import of that module fails with "type already registered". Whatever fails after a
    stop is the stop's doing."""
    return _last_stop


def forget_stop() -> None:
    """Clear :func:`last_stop` (a new command in the same process starts afresh)."""
    global _last_stop
    _last_stop = None


@contextlib.contextmanager
def stopped_by_signals():
    """Turn SIGTERM and SIGINT into :class:`RunInterrupted` while training (Lightning
    would end a SIGTERM'd run with exit status 0 and a Ctrl-C'd one silently)."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return

    def stop(signum, frame):
        global _last_stop
        _last_stop = RunInterrupted(signal.Signals(signum).name, signum)
        raise _last_stop

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@dataclass
class FitResult:
    trained: TrainedModel
    run_dir: Path
    best_val_mae: float
    epochs: int
    seconds: float
    metrics: dict[str, Any] = field(default_factory=dict)


def _trainer(config: TrainConfig, callbacks: list, log: EpochLog, steps: int) -> L.Trainer:
    return L.Trainer(
        max_epochs=config.epochs,
        accelerator=config.accelerator,
        devices=config.devices,
        num_nodes=config.num_nodes,
        strategy=config.ddp_strategy,
        precision=config.precision,
        deterministic=True,
        gradient_clip_val=config.gradient_clip_val,
        callbacks=callbacks,
        logger=log,
        plugins=[AtomicCheckpointIO()],
        enable_model_summary=False,
        enable_progress_bar=config.progress_bar and _on_terminal(),
        log_every_n_steps=max(1, min(50, steps)),
        num_sanity_val_steps=0,
    )


def launched_rank() -> int:
    """This process's global rank in a DDP run whose processes were started by a launcher
    (Lightning's relaunch, torchrun, srun), from the environment those set; 0 otherwise."""
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    return int(getattr(rank_zero_only, "rank", 0) or 0)


@contextlib.contextmanager
def _quiet_lightning():
    """Lightning announces GPUs, TPUs and cloud loggers at INFO on every fit."""
    loggers = [logging.getLogger(n) for n in ("lightning.pytorch", "lightning.fabric")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def versions() -> dict[str, str]:
    import pymatgen.core
    import torch_geometric

    return {
        "tlmat": tlmat.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_geometric": torch_geometric.__version__,
        "lightning": L.__version__,
        "pymatgen": pymatgen.core.__version__,
        "numpy": np.__version__,
    }


def finished_run(
    run_dir: str | Path,
    trained: TrainedModel,
    dataset: GraphDataset,
    split: Split,
    config: TrainConfig,
    strategy: Strategy | None = None,
) -> TrainedModel | None:
    """The model of a finished run in ``run_dir`` made with these settings (``None`` when
    there is none); a finished run made with other settings raises
    :class:`RunExistsError` listing the differences."""
    from tlmat.models.checkpoint import load_checkpoint

    run_dir = Path(run_dir)
    if not (run_dir / "model.pt").exists():
        return None
    strategy = strategy or Strategy(name="scratch", from_source=False)
    settings = run_settings(trained, dataset, split, config, strategy)
    require_same_settings(run_dir, settings, "finished run")
    return load_checkpoint(run_dir / "model.pt")


def fit(
    trained: TrainedModel,
    dataset: GraphDataset,
    split: Split,
    config: TrainConfig,
    run_dir: str | Path,
    strategy: Strategy | None = None,
    provenance: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> FitResult:
    """Train ``trained.model`` on ``dataset[split.train]``, selecting the epoch with the
    lowest validation MAE; the target normaliser is refitted on the training split.

    The run folder is locked while it is written; an interrupted run (SIGKILL, SIGINT,
    SIGTERM, a full disk) resumes from ``checkpoints/last.ckpt`` on the same call and ends
    with the numbers of an uninterrupted one."""
    run_dir = Path(run_dir)
    # in a DDP run started by a launcher (Lightning's relaunch of the command, srun), the
    # processes of rank > 0 train beside rank 0 but never touch the run folder
    if launched_rank() == 0:
        check_run_dir(run_dir, overwrite)  # a refused folder is left as it was
    with folder_lock(run_dir):
        return _fit(trained, dataset, split, config, run_dir, strategy, provenance, overwrite)


def folder_lock(run_dir: str | Path):
    """:func:`~tlmat.training.rundir.run_lock` on ``run_dir`` in the process that writes
    it; nothing in a DDP run's processes of rank > 0 (relaunched copies of the command,
    or srun's), which train beside rank 0 but never write the folder."""
    return run_lock(run_dir) if launched_rank() == 0 else contextlib.nullcontext()


def _fit(trained, dataset, split, config, run_dir, strategy, provenance, overwrite) -> FitResult:
    primary = launched_rank() == 0
    resume = _prepare(run_dir, overwrite) if primary else _last(run_dir).exists()
    strategy = strategy or Strategy(name="scratch", from_source=False)
    L.seed_everything(config.seed, workers=True, verbose=False)
    start = time.perf_counter()
    target = _fitted_target(trained, dataset, split, config)
    model = trained.model
    model.pooling = target.pooling
    if strategy.from_source and not strategy.reinit_head:
        # a kept head starts at the source's zero-shot + linear recalibration
        target = linear_start(model, target, dataset, split.train, trained.target)
    # Lightning keeps each module's mode; a source used for predictions is in eval mode,
    # and batch norm must train (frozen groups go back to eval every epoch)
    model.train()
    param_groups = apply_strategy(model, strategy, config.lr, config.weight_decay)
    if not param_groups:
        raise ValueError(f"strategy {strategy.name!r} leaves nothing to train")
    if primary:
        check_resume(run_dir, run_settings(trained, dataset, split, config, strategy))
        record(run_dir, "checkpoints", "metrics.csv", "split.json")
        with replaced(run_dir / "split.json") as path:
            split.save(path, dataset.ids)
    trainer = _trained(
        trained, strategy, target, dataset, split, config, run_dir, param_groups, resume
    )
    best_path = run_dir / "checkpoints" / trainer["best"]
    state = torch.load(best_path, map_location="cpu", weights_only=True)["state_dict"]
    model.load_state_dict(
        {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}
    )
    merge_adapters(model)  # LoRA: a plain model of the architecture from here on
    model.cpu()
    best = float(trainer["best_val_mae"])
    run_provenance = {
        **(provenance or {}),
        **(trained.provenance if strategy.from_source else {}),
        "strategy": strategy.model_dump(),
        "data_source": dataset.source,
        "trained_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    result = TrainedModel(model, target, run_provenance)
    _require_finite(model, best, run_dir)
    seconds = time.perf_counter() - start
    manifest = {
        "command_config": config.model_dump(),
        "seed": config.seed,
        "strategy": strategy.model_dump(),
        "target": target.model_dump(),
        "model": model.describe(),
        "graph_settings": model.graph_settings.model_dump(),
        "provenance": run_provenance,
        "versions": versions(),
        "data": {
            "source": dataset.source,
            "n_train": len(split.train),
            "n_val": len(split.val),
            "n_test": len(split.test),
        },
        "epochs": trainer["epochs"],
        "best_val_mae": best,
        "seconds": seconds,
        "seconds_per_epoch": seconds / max(trainer["epochs"], 1),
        "processes": config.processes,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "resumed": resume,
        "resumed_from_epoch": trainer.get("resumed_from"),
    }
    # run.json before model.pt: model.pt is what marks the run finished
    record(run_dir, "model.pt", "run.json")
    write_json(run_dir / "run.json", manifest)
    with replaced(run_dir / "model.pt") as path:
        save_checkpoint(result, path)
    return FitResult(result, run_dir, best, trainer["epochs"], seconds, manifest)


def _replay(trained: TrainedModel, strategy: Strategy) -> Replay | None:
    """The replay set of a strategy that replays its source (:mod:`~tlmat.training.replay`)."""
    if strategy.replay is None:
        return None
    if trained.origin is None:
        raise ValueError(
            f"strategy {strategy.name!r} replays its source's outputs, but the model does not "
            "carry its source: prepare it with tlmat.transfer.prepare_transfer"
        )
    return Replay.build(
        trained.model, trained.origin, strategy.replay, strategy.replay_size,
        strategy.replay_weight,
    )  # fmt: skip


def _last(run_dir: Path) -> Path:
    return run_dir / "checkpoints" / "last.ckpt"


#: written when Lightning's training of a run has ended (best checkpoint, its validation
#: MAE, epochs): a run killed after it goes straight to writing its model
TRAINED = "trained.json"


def _prepare(run_dir: Path, overwrite: bool) -> bool:
    """Take over ``run_dir``; whether an interrupted run there resumes. A ``last.ckpt``
    that cannot be read (truncated by hand or by an older tlmat) is set aside and the run
    starts afresh; a fresh start clears the checkpoints of an attempt that saved none."""
    resume = prepare_run_dir(run_dir, overwrite)
    folder = run_dir / "checkpoints"
    if resume and not (folder / TRAINED).exists() and not readable_checkpoint(_last(run_dir)):
        aside = folder / f"last.ckpt.damaged-{time.strftime('%Y%m%dT%H%M%S')}"
        _last(run_dir).rename(aside)
        logger.warning("last.ckpt cannot be read; set aside as %s, the run starts afresh", aside)
        resume = False
    if not resume and folder.is_dir():
        for path in folder.iterdir():
            if ".damaged-" not in path.name:
                path.unlink()
    return resume


def _fitted_target(trained: TrainedModel, dataset: GraphDataset, split: Split, config: TrainConfig):
    """The target specification fitted on the training split; refuses a head whose width
    does not fit the loss (before any training: it would broadcast in the loss)."""
    spec = config.target_spec()
    y_train = dataset.targets[config.target][split.train]
    atoms = (
        [dataset.graphs.arrays(i, copy=False).z for i in split.train] if spec.needs_atoms else None
    )
    target = spec.fit(y_train, atoms)
    if trained.model.head.out_dim != target.out_dim:
        needs = "the mean and log-variance" if target.heteroscedastic else "one value"
        raise ValueError(
            f"the model's head has {trained.model.head.out_dim} output(s); loss {config.loss} on "
            f"{config.target!r} needs {target.out_dim} ({needs} per structure). Build the "
            "model with that width (fresh_model(..., out_dim=config.target_spec().out_dim), "
            "prepare_transfer(..., out_dim=...)), or fine-tune without --keep-head"
        )
    return target


def _callbacks(run_dir: Path, config: TrainConfig) -> tuple[ModelCheckpoint, list]:
    """The best-epoch checkpoint (to read its path and score) and every callback."""
    best = ModelCheckpoint(
        dirpath=run_dir / "checkpoints",
        filename="best",
        monitor="val_mae",
        mode="min",
        save_on_train_epoch_end=False,
        enable_version_counter=False,
    )
    # Lightning's save_last on a monitored checkpoint skips epochs that are not the best,
    # so a resume would repeat them: last.ckpt is its own callback, written every epoch
    # (after validation, once the non-finite checks of that epoch have passed)
    latest = ModelCheckpoint(
        dirpath=run_dir / "checkpoints",
        filename="last",
        save_top_k=1,
        every_n_epochs=1,
        save_on_train_epoch_end=False,
        enable_version_counter=False,
    )
    callbacks: list = [best, latest, _TimeEstimate(config.epochs)]
    if config.progress_bar and not _on_terminal():
        callbacks.append(_EpochLines(config.epochs))
    if config.early_stopping_patience:
        # checked after validation, where last.ckpt is written: checked at the end of the
        # training epoch instead, a run resumed from last.ckpt finds no val_mae to check
        callbacks.append(
            ResumableEarlyStopping(
                monitor="val_mae",
                mode="min",
                patience=config.early_stopping_patience,
                check_on_train_epoch_end=False,
            )
        )
    return best, callbacks


def _trained(trained, strategy, target, dataset, split, config, run_dir, groups, resume) -> dict:
    """Run (or resume, or find finished) Lightning's training of a run: the best
    checkpoint's name, its validation MAE, the epochs trained and the epoch resumed from."""
    marker = run_dir / "checkpoints" / TRAINED
    limits = {"epochs": config.epochs, "patience": config.early_stopping_patience}
    if resume and marker.exists():
        done = json.loads(marker.read_text())
        if done.get("limits") == limits:  # more epochs or patience: training goes on
            return done
    train_loader = GraphLoader(
        dataset,
        split.train,
        config.batch_size,
        shuffle=True,
        target=config.target,
        seed=config.seed,
        replicas=config.processes,
    )
    val_loader = GraphLoader(
        dataset,
        split.val,
        inference_batch_size(dataset, split.val, trained.model.pair_cost),
        target=config.target,
    )
    replay = _replay(trained, strategy)
    module = PropertyModule(trained.model, target, config, groups, len(train_loader), replay)
    module.train_loader = train_loader
    best, callbacks = _callbacks(run_dir, config)
    ckpt = _last(run_dir) if resume else None
    resumed_from, train_loss = _resume_point(ckpt) if ckpt is not None else (None, None)
    if ckpt is not None:
        logger.warning(
            "%s: resuming the interrupted run from %s (epoch %d)", run_dir, ckpt, resumed_from
        )
    log = EpochLog(run_dir / "metrics.csv", first_epoch=resumed_from or 0, train_loss=train_loss)
    with _quiet_lightning():
        trainer = _trainer(config, callbacks, log, len(train_loader))
    _run_trainer(trainer, module, train_loader, val_loader, ckpt, run_dir)
    if trainer.global_rank > 0:
        # a launched process of rank > 0: evaluation, model.pt and reports are rank 0's
        raise SystemExit(0)
    best_path = Path(best.best_model_path or _last(run_dir))
    best_score, epochs = best.best_model_score, trainer.current_epoch
    if config.ddp_strategy == "ddp_spawn" and best_path.exists():
        # the spawned processes trained; this one's trainer only learns the best path
        best_score = _best_score(best_path, best)
        epochs = _epochs_done(_last(run_dir))
    done = {
        "best": best_path.name,
        "best_val_mae": float(best_score) if best_score is not None else float("nan"),
        "epochs": int(epochs),
        "resumed_from": resumed_from,
        "limits": limits,
    }
    write_json(marker, done)
    return done


def _run_trainer(trainer, module, train_loader, val_loader, ckpt, run_dir: Path) -> None:
    """``trainer.fit``, with a stop by signal or a divergence said in the run's words."""
    with warnings.catch_warnings(), _quiet_lightning():
        # our loaders are plain iterables: Lightning's worker advice does not apply
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        warnings.filterwarnings("ignore", ".*isn't an instance of `torch.utils.data.*")
        warnings.filterwarnings("ignore", ".*exists and is not empty.*")
        warnings.filterwarnings("ignore", ".*LeafSpec.*")
        try:
            with stopped_by_signals():
                trainer.fit(module, train_loader, val_loader, ckpt_path=ckpt, weights_only=True)
        except RunInterrupted as stopped:
            kept = (
                f"the last finished epoch is saved in {_last(run_dir)}; run the same command "
                "again to resume from there"
                if _last(run_dir).exists()
                else "no epoch had finished, so there is nothing to resume"
            )
            raise RunInterrupted(
                f"{run_dir}: stopped by {stopped} during epoch {trainer.current_epoch}; {kept}",
                stopped.signum,
            ) from None
        except NonFiniteError as error:
            kept = (
                f"the last finite checkpoint is {_last(run_dir)}"
                if _last(run_dir).exists()
                else "no epoch finished, so no checkpoint was kept"
            )
            raise DivergedError(
                f"{run_dir}: training diverged — {error}; {kept}; no model.pt was written. "
                "Try a lower learning rate (--lr) or another normalisation."
            ) from None


def _require_finite(model, best: float, run_dir: Path) -> None:
    """Refuse to write a model whose weights or selected validation MAE are not finite."""
    bad = [
        n for n, p in model.state_dict().items() if p.is_floating_point() and not p.isfinite().all()
    ]
    # NaN: no epoch was scored (nothing to validate); an infinite score diverged
    if bad or np.isinf(best):
        raise DivergedError(
            f"{run_dir}: the selected model is not finite (validation MAE {best}"
            + (f", non-finite weights in {bad[0]}" if bad else "")
            + "); no model.pt was written"
        )


def _best_score(checkpoint: Path, callback: ModelCheckpoint):
    """The monitored score a ModelCheckpoint callback stored in ``checkpoint``."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    return state.get("callbacks", {}).get(callback.state_key, {}).get("best_model_score")


def _epochs_done(last: Path) -> int:
    """Epochs finished, from the checkpoint written after every epoch."""
    return _resume_point(last)[0]


def _resume_point(last: Path) -> tuple[int, float | None]:
    """Epochs finished and the last one's mean training loss, from the checkpoint written
    after every epoch."""
    checkpoint = torch.load(last, map_location="cpu", weights_only=True)
    return int(checkpoint["epoch"]) + 1, checkpoint.get("tlmat_train_loss")


def data_fingerprint(dataset: GraphDataset, split: Split, target: str) -> str:
    """sha256 of the ids and target values of every split: the data a run learns from."""
    digest = hashlib.sha256()
    y = np.asarray(dataset.targets[target], dtype=np.float64)
    for part in (split.train, split.val, split.test):
        index = np.asarray(part, dtype=np.int64)
        digest.update("\x1f".join(dataset.ids[i] for i in index).encode())
        digest.update(y[index].tobytes())
    return digest.hexdigest()


def stable_provenance(provenance: dict[str, Any]) -> dict[str, Any]:
    """Provenance without its timestamps (``imported_at`` changes at every load of a
    published checkpoint, which is still the same source)."""
    return {k: v for k, v in provenance.items() if not k.endswith("_at")}


def run_settings(
    trained: TrainedModel,
    dataset: GraphDataset,
    split: Split,
    config: TrainConfig,
    strategy: Strategy,
) -> dict[str, Any]:
    """What decides a run's numbers; a resume must match it (:mod:`tlmat.training.rundir`)."""
    return {
        "config": resumable_settings(config.model_dump()),
        "strategy": strategy.model_dump(),
        "model": trained.model.config.model_dump(),
        "source": stable_provenance(trained.provenance) if strategy.from_source else None,
        "data": {
            "source": dataset.source,
            "sizes": [len(split.train), len(split.val), len(split.test)],
            "fingerprint": data_fingerprint(dataset, split, config.target),
        },
    }
