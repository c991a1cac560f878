"""Deep ensembles with aleatoric and epistemic uncertainty (Ekström, Lindsten & Armiento):
N members, each trained on its own train/validation split with its own initialisation
and seed. For a structure,

    ŷ   = mean of the member predictions
    σ_e² = variance of the member predictions          (epistemic: the members disagree)
    σ_a² = mean over members of their validation MSE    (aleatoric: the noise they cannot fit)
    σ   = √(σ_a² + σ_e²)

all in the target's unit. With heteroscedastic members (``loss="gaussian_nll"``: each
predicts a variance per structure), σ_a² is instead the mean over members of their
predicted variances, per structure (Lakshminarayanan et al. 2017); σ_e² is unchanged. For
a log10 target a member's variance is of log10 y and is carried to the target's unit, in
which σ_e is, to first order: (ln 10 · ŷ)² · var(log10 y). ``ensemble.json`` records which
σ_a was used (``aleatoric``: ``validation_mse`` or ``heteroscedastic``; a manifest without
it is from before the option and means ``validation_mse``).

An ensemble folder holds ``ensemble.json`` (members, their
seeds and validation MSEs) and one run folder per member (``member-0/`` …), each a
complete :func:`tlmat.training.fit` run. Members train one after the other, side by side
in local processes (``workers``), or as SLURM jobs through submitit.

Recalibration (σ scaling, Levi et al. 2022): one factor s > 0 fitted on labelled data
the members did not train on (:func:`recalibrate`) is stored in the manifest
(``sigma_scale``, with what it was fitted on under ``recalibration``) and multiplies σ_a,
σ_e and σ alike, so that σ² = σ_a² + σ_e² still holds. A manifest without it means s = 1.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import as_completed
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

import tlmat
from tlmat.data.dataset import GraphDataset
from tlmat.data.splits import Split
from tlmat.machine import granted_cpus, on_gpu
from tlmat.models.base import TrainedModel
from tlmat.models.checkpoint import load_checkpoint
from tlmat.models.prediction import predict, predict_with_variance
from tlmat.progress import Display
from tlmat.training.config import TrainConfig
from tlmat.training.fit import RunInterrupted, finished_run, fit
from tlmat.training.pool import worker_pool
from tlmat.training.rundir import (
    RunExistsError,
    owned,
    owned_path,
    prepare_run_dir,
    record,
)
from tlmat.transfer.strategies import Strategy

MANIFEST = "ensemble.json"
#: where members train: ``local`` (in this process, or ``workers`` processes side by side),
#: ``slurm`` (one submitit job each) or ``debug`` (submitit's in-process executor)
Executor = Literal["local", "slurm", "debug"]

#: what σ_a² is: the members' mean validation MSE (Ekström et al.), one number for every
#: structure, or the mean of heteroscedastic members' predicted variances per structure
Aleatoric = Literal["validation_mse", "heteroscedastic"]
DEFINITIONS: dict[str, str] = {
    "validation_mse": "sigma_e^2 = variance of member predictions; sigma_a^2 = mean member "
    "validation MSE; sigma = sqrt(sigma_a^2 + sigma_e^2) (Ekström et al.); all three times "
    "sigma_scale when recalibrated",
    "heteroscedastic": "sigma_e^2 = variance of member predictions; sigma_a^2 = mean over "
    "members of their predicted variances, per structure (Gaussian NLL heads, "
    "Lakshminarayanan et al. 2017; for a log10 target (ln 10 * y)^2 * var(log10 y)); "
    "sigma = sqrt(sigma_a^2 + sigma_e^2); all three times sigma_scale when recalibrated",
}

logger = logging.getLogger("tlmat")


@dataclass
class Ensemble:
    """Trained members, their validation MSE (target unit²) and the recalibration factor
    of σ (1 until :func:`recalibrate` fits one)."""

    members: list[TrainedModel]
    val_mse: list[float]
    sigma_scale: float = 1.0
    #: what ``sigma_scale`` was fitted on (data, n, sha256, NLL before and after)
    recalibration: dict[str, Any] | None = None

    @property
    def target(self):
        return self.members[0].target

    @property
    def aleatoric(self) -> Aleatoric:
        """How σ_a is defined: ``heteroscedastic`` when every member predicts a variance,
        else ``validation_mse``."""
        kinds = {m.target.heteroscedastic for m in self.members}
        if len(kinds) > 1:
            raise ValueError(
                "the members mix heteroscedastic (loss gaussian_nll) and plain ones: σ_a "
                "has no single definition; train every member with the same loss"
            )
        return "heteroscedastic" if kinds == {True} else "validation_mse"

    def predict(
        self, dataset: GraphDataset, indices=None, calibrated: bool = True
    ) -> dict[str, np.ndarray]:
        """``mean``, ``sigma_a``, ``sigma_e`` and ``sigma`` per structure (target unit);
        the three σ multiplied by ``sigma_scale`` unless ``calibrated`` is false (σ as the
        members give it)."""
        scale = self.sigma_scale if calibrated else 1.0
        if self.aleatoric == "heteroscedastic":
            pairs = [predict_with_variance(m, dataset, indices) for m in self.members]
            values = np.stack([mean for mean, _ in pairs]).astype(np.float64)
            variances = np.stack([variance for _, variance in pairs]).astype(np.float64)
            if self.target.log10:
                # the members' variances are of log10 y; σ_e is in the target's unit, so
                # carry them there to first order (delta method)
                variances = (np.log(10.0) * values) ** 2 * variances
            sigma_a2 = variances.mean(axis=0)
        else:
            values = np.stack([predict(m, dataset, indices) for m in self.members])
            sigma_a2 = np.full(values.shape[1], float(np.mean(self.val_mse)))
        sigma_e2 = values.var(axis=0, ddof=0)
        return {
            "mean": values.mean(axis=0),
            "sigma_a": scale * np.sqrt(sigma_a2),
            "sigma_e": scale * np.sqrt(sigma_e2),
            "sigma": scale * np.sqrt(sigma_a2 + sigma_e2),
        }

    def table(self, ids, arrays: dict[str, np.ndarray]) -> pd.DataFrame:
        """``id``, the mean prediction and its three σ, headed with the unit."""
        unit = f" ({self.target.unit})" if self.target.unit else ""
        return pd.DataFrame(
            {
                "id": list(ids),
                f"{self.target.name}{unit}": arrays["mean"],
                f"sigma_a{unit}": arrays["sigma_a"],
                f"sigma_e{unit}": arrays["sigma_e"],
                f"sigma{unit}": arrays["sigma"],
            }
        )


def validation_mse(
    trained: TrainedModel, dataset: GraphDataset, split: Split, target: str
) -> float:
    """A member's mean squared error on its own validation structures (target unit²)."""
    error = predict(trained, dataset, split.val) - dataset.targets[target][split.val]
    return float(np.mean(error**2))


def train_member(threads: int | None = None, **fit_arguments: Any) -> tuple[TrainedModel, float]:
    """Fit one member (``fit_arguments``: those of :func:`tlmat.training.fit`): the trained
    model and its validation MSE (target unit²). ``threads`` sets this process's torch
    threads, so that members side by side share the cores instead of oversubscribing
    them. A module-level function, so that worker processes and submitit can run it."""
    import torch

    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        trained = fit(**fit_arguments).trained
        dataset, split = fit_arguments["dataset"], fit_arguments["split"]
        return trained, validation_mse(trained, dataset, split, fit_arguments["config"].target)
    finally:  # run in the caller's process (submitit's debug executor), it leaves no trace
        torch.set_num_threads(before)


def default_workers(n_members: int, config: TrainConfig) -> int:
    """Members trained side by side by default: one per core, at most ``n_members``; one
    at a time when they train on GPUs (side by side they would share one device's
    memory)."""
    return 1 if on_gpu(config.accelerator) else max(1, min(n_members, granted_cpus()))


def train_ensemble(
    make_member: Callable[[int], tuple[TrainedModel, Strategy | None]],
    dataset: GraphDataset,
    split_for: Callable[[int], Split],
    config: TrainConfig,
    run_dir: str | Path,
    n_members: int = 5,
    overwrite: bool = False,
    workers: int = 1,
    executor: Executor = "local",
    slurm: dict[str, Any] | None = None,
) -> Ensemble:
    """Train ``n_members`` members: member k gets ``split_for(seed)``, the model and
    strategy ``make_member(seed=seed)`` and the training seed ``config.seed + k``.

    With ``workers`` > 1 (``executor="local"``) members train in that many processes,
    each with ``cores // workers`` torch threads; ``executor="slurm"`` submits one
    submitit job per member (``slurm``: its parameters, as in ``tlmat benchmark``'s
    ``executor.slurm``; logs in ``run_dir/.submitit``). Every path gives each member the
    same seed, split and model, so the members are the same up to floating-point
    summation order (torch threads). A member whose run finished with these settings is
    reused and an interrupted one resumes, so an interrupted ensemble continues member
    by member; ``overwrite`` retrains them all. ``make_member`` and ``split_for`` run in
    this process, members elsewhere: the model, dataset and split travel pickled."""
    run_dir = Path(run_dir)
    prepare_run_dir(run_dir, overwrite)
    parallel = executor != "local" or workers > 1
    seeds = [config.seed + k for k in range(n_members)]
    folders = [f"member-{k}" for k in range(n_members)]
    results: dict[int, tuple[TrainedModel, float]] = {}
    jobs: dict[int, dict[str, Any]] = {}
    for k, (seed, folder) in enumerate(zip(seeds, folders, strict=True)):
        split = split_for(seed)
        model, strategy = make_member(seed=seed)
        record(run_dir, folder)
        # side by side, Lightning's progress bars would overwrite each other
        member_config = config.model_copy(
            update={"seed": seed, **({"progress_bar": False} if parallel else {})}
        )
        done = None
        if not overwrite:
            done = finished_run(run_dir / folder, model, dataset, split, member_config, strategy)
        if done is not None:
            logger.info("%s: finished with these settings, reused", run_dir / folder)
            results[k] = (done, validation_mse(done, dataset, split, config.target))
            continue
        jobs[k] = dict(
            trained=model,
            dataset=dataset,
            split=split,
            config=member_config,
            run_dir=run_dir / folder,
            strategy=strategy,
            overwrite=overwrite,
        )
    results.update(_run_members(jobs, run_dir, workers, executor, slurm, config.progress_bar))
    members = [results[k][0] for k in range(n_members)]
    val_mse = [results[k][1] for k in range(n_members)]
    aleatoric = Ensemble(members, val_mse).aleatoric
    manifest = {
        "members": folders,
        "seeds": seeds,
        "val_mse": val_mse,
        "target": members[0].target.model_dump(),
        "aleatoric": aleatoric,
        "definition": DEFINITIONS[aleatoric],
        "tlmat_version": tlmat.__version__,
    }
    kept = {} if overwrite else _kept_recalibration(run_dir, manifest)
    manifest.update(kept)
    _write_manifest(run_dir, manifest)
    return Ensemble(
        members, val_mse, float(kept.get("sigma_scale", 1.0)), kept.get("recalibration")
    )


def _members_display(members: int, shown: bool):
    """A progress display over ``members`` (:class:`tlmat.progress.Display`), or a
    context that counts silently."""
    if shown:
        return Display(f"ensemble of {members}", members)
    return contextlib.nullcontext(lambda *args: None)


def _run_members(
    jobs: dict[int, dict[str, Any]],
    run_dir: Path,
    workers: int,
    executor: Executor,
    slurm: dict[str, Any] | None,
    progress: bool = False,
) -> dict[int, tuple[TrainedModel, float]]:
    """:func:`train_member` for each job (member index → its arguments), where asked;
    with ``progress``, members trained side by side are counted on a progress display
    as they finish (each one shows its own epochs when trained alone)."""
    if not jobs:
        return {}
    if executor in ("slurm", "debug"):
        import submitit

        record(run_dir, ".submitit")
        parameters = dict(slurm or {})
        runner = submitit.AutoExecutor(folder=run_dir / ".submitit", cluster=executor)
        runner.update_parameters(**parameters)
        # a job's torch threads: the cores it was given, not every core of its node
        cores = parameters.get("cpus_per_task", parameters.get("slurm_cpus_per_task"))
        submitted = {
            k: runner.submit(train_member, **job, threads=cores) for k, job in jobs.items()
        }
        return {k: job.result() for k, job in submitted.items()}
    if workers <= 1 or len(jobs) == 1:
        return {k: train_member(**job) for k, job in jobs.items()}
    workers = min(workers, len(jobs))
    threads = max(1, granted_cpus() // workers)
    logger.info("%d members, %d at a time, %d torch threads each", len(jobs), workers, threads)
    try:
        with worker_pool(workers) as pool, _members_display(len(jobs), progress) as shown:
            futures = {
                pool.submit(train_member, **job, threads=threads): k for k, job in jobs.items()
            }
            results = {}
            for future in as_completed(futures):
                results[futures[future]] = future.result()
                shown(f"member {futures[future]} trained", len(results))
            return results
    except RunInterrupted as stopped:
        raise RunInterrupted(
            f"{run_dir}: stopped by {stopped} while {workers} members trained side by side; "
            "finished members are kept and interrupted ones resume from their last "
            "checkpoint: run the same command again",
            stopped.signum,
        ) from None


def _kept_recalibration(run_dir: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """The earlier manifest's recalibration when the members are the same (the same
    command again, every member reused); a retrained ensemble starts uncalibrated."""
    try:
        before = json.loads((run_dir / MANIFEST).read_text())
    except (OSError, ValueError):
        return {}
    same = all(before.get(key) == manifest[key] for key in ("members", "seeds", "val_mse"))
    if not same or "sigma_scale" not in before:
        return {}
    return {key: before[key] for key in ("sigma_scale", "recalibration") if key in before}


def _write_manifest(run_dir: Path, manifest: dict[str, Any]) -> None:
    """``ensemble.json``, replaced in one step (a crash leaves the old or the new one)."""
    tmp = owned_path(run_dir, MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2))
    os.replace(tmp, owned_path(run_dir, MANIFEST))


def is_ensemble(path: str | Path) -> bool:
    return (Path(path) / MANIFEST).is_file()


def load_ensemble(path: str | Path) -> Ensemble:
    """An ensemble folder written by :func:`train_ensemble` (a manifest from before
    recalibration existed has σ scale 1; one from before ``aleatoric`` existed takes it
    from its members, which predict no variance: σ_a² = the mean validation MSE)."""
    path = Path(path)
    manifest = json.loads((path / MANIFEST).read_text())
    folders = member_folders(path, manifest)
    members = [load_checkpoint(folder / "model.pt") for folder in folders]
    check_same_target(path, manifest, folders, members)
    scale = float(manifest.get("sigma_scale", 1.0))
    if not (np.isfinite(scale) and scale > 0):
        raise ValueError(f"{path / MANIFEST}: sigma_scale must be a positive number, got {scale}")
    ensemble = Ensemble(
        members, [float(v) for v in manifest["val_mse"]], scale, manifest.get("recalibration")
    )
    recorded = manifest.get("aleatoric")
    if recorded is not None and recorded != ensemble.aleatoric:
        raise ValueError(
            f"{path / MANIFEST}: aleatoric is {recorded!r}, but its members' checkpoints "
            f"give {ensemble.aleatoric!r}; the folder's members were replaced"
        )
    return ensemble


#: what every member must share: what is predicted, in which unit, and how it is
#: normalised (each member's mean and std come from its own split, so they may differ)
SHARED_TARGET = (
    "name", "unit", "task", "classes", "log10", "log10_of", "extensive", "normalization"
)  # fmt: skip


def member_folders(path: Path, manifest: dict[str, Any]) -> list[Path]:
    """The members' folders named in ``manifest``, each refused unless it lies inside
    the ensemble folder: a manifest must not make tlmat read (or average in) models
    from elsewhere (an absolute path, ``..``, a link leading out)."""
    names = manifest.get("members")
    if not isinstance(names, list) or not names:
        raise ValueError(f"{path / MANIFEST}: 'members' must be a non-empty list of folders")
    if len(manifest.get("val_mse", [])) != len(names):
        raise ValueError(
            f"{path / MANIFEST}: {len(names)} members but "
            f"{len(manifest.get('val_mse', []))} val_mse values"
        )
    root = path.resolve()
    folders = []
    for name in names:
        folder = path / str(name)
        inside = not Path(str(name)).is_absolute() and ".." not in Path(str(name)).parts
        if not inside or not folder.resolve().is_relative_to(root):
            raise ValueError(
                f"{path / MANIFEST}: member {name!r} lies outside the ensemble folder "
                f"{path}; an ensemble's members must be folders inside it"
            )
        folders.append(folder)
    return folders


def check_same_target(
    path: Path, manifest: dict[str, Any], folders: list[Path], members: list[TrainedModel]
) -> None:
    """Refuse members that predict another target, in another unit or normalised another
    way than the ensemble (its manifest's ``target``, else its first member): their
    mean and σ would mix quantities without a word."""
    recorded = manifest.get("target")
    if isinstance(recorded, dict):
        expected, where = recorded, MANIFEST
    else:
        expected, where = members[0].target.model_dump(), f"{folders[0].name}/model.pt"
    for folder, member in zip(folders, members, strict=True):
        own = member.target.model_dump()
        differ = [
            f for f in SHARED_TARGET if f in expected and _listed(own[f]) != _listed(expected[f])
        ]
        if differ:
            said = "; ".join(f"{f} {own[f]!r} (the ensemble: {expected[f]!r})" for f in differ)
            raise ValueError(
                f"{path}: member {folder.name} predicts another target than the ensemble "
                f"({where}): {said}; every member must predict the same target in the same "
                "unit and normalisation"
            )


def _listed(value: Any) -> Any:
    """JSON gives lists where the target spec has tuples (``classes``)."""
    return list(value) if isinstance(value, tuple | list) else value


def fit_sigma_scale(y: np.ndarray, mean: np.ndarray, sigma: np.ndarray) -> float:
    """The factor s > 0 that minimises the Gaussian negative log-likelihood of ``y``
    under N(mean, (s·σ)²) (σ scaling, Levi et al. 2022): its derivative vanishes at
    s² = mean((y − mean)² / σ²). Fit it on labelled data the members did not train on."""
    y, mean, sigma = (np.asarray(a, dtype=np.float64).ravel() for a in (y, mean, sigma))
    if len(y) < 2:
        raise ValueError(f"recalibration needs at least 2 labelled structures, got {len(y)}")
    if not (np.isfinite(y).all() and np.isfinite(mean).all() and np.isfinite(sigma).all()):
        raise ValueError("recalibration needs finite targets, predictions and σ")
    if (sigma <= 0).any():
        raise ValueError("recalibration needs σ > 0 for every structure")
    scale = float(np.sqrt(np.mean(((y - mean) / sigma) ** 2)))
    if not scale > 0:
        raise ValueError("every prediction is exact: there is no σ scale to fit")
    return scale


def labelled_sha256(dataset: GraphDataset, target: str) -> str:
    """sha256 of the ids and target values (float64) of ``dataset``: the labelled data a
    number was computed from."""
    digest = hashlib.sha256("\x1f".join(dataset.ids).encode())
    digest.update(np.asarray(dataset.targets[target], dtype=np.float64).tobytes())
    return digest.hexdigest()


def check_own_manifest(path: str | Path) -> None:
    """Raise :class:`RunExistsError` unless tlmat wrote ``path/ensemble.json`` (its
    ledger lists it): only tlmat's own manifest is ever rewritten in place."""
    path = Path(path)
    if not (path / MANIFEST).is_file():
        raise FileNotFoundError(f"{path} is not an ensemble folder (no {MANIFEST})")
    if MANIFEST not in owned(path):
        raise RunExistsError(
            f"{path / MANIFEST} was not written by tlmat (the folder's ledger does not "
            "list it); only an ensemble that tlmat trained is recalibrated in place"
        )


def seen_by_members(path: str | Path, ids: list[str]) -> dict[str, list[str]]:
    """Member folder → those of ``ids`` in its ``split.json`` training or validation list
    (members that saw none are left out; a member without a split.json saw none that
    tlmat can tell)."""
    path = Path(path)
    manifest = json.loads((path / MANIFEST).read_text())
    seen: dict[str, list[str]] = {}
    for folder in member_folders(path, manifest):
        try:
            parts = json.loads((folder / "split.json").read_text())
        except (OSError, ValueError):
            continue
        used = {str(i) for part in ("train", "val") for i in parts.get(part, [])}
        overlap = [i for i in ids if i in used]
        if overlap:
            seen[folder.name] = overlap
    return seen


def check_unseen(
    path: str | Path, ids: list[str], data: str, allow_seen: bool = False
) -> dict[str, Any] | None:
    """Refuse labelled data (``ids``; ``data``: how the user named it) that any member
    trained or validated on: its errors are smaller than on new structures, so scores and
    a σ scale from it would claim more than the ensemble can do. With ``allow_seen``,
    the overlap is returned (to be recorded) instead; ``None`` when there is none."""
    seen = seen_by_members(path, ids)
    if not seen:
        return None
    anyone = {i for member in seen.values() for i in member}
    union = [i for i in ids if i in anyone]
    record = {
        "n": len(union),
        "of": len(ids),
        "members": {name: len(member) for name, member in seen.items()},
        "examples": union[:5],
    }
    if allow_seen:
        return {**record, "allowed": True}
    per_member = ", ".join(f"{name}: {n}" for name, n in record["members"].items())
    raise ValueError(
        f"{data}: {len(union)} of its {len(ids)} structures were in a member's training or "
        f"validation set ({per_member}; their split.json), e.g. {', '.join(union[:5])}; "
        "scores and a σ scale from them are not held-out ones. Use data the members did "
        "not see, or pass --allow-seen to go on (recorded with a recalibration)"
    )


def recalibrate(
    path: str | Path,
    ensemble: Ensemble,
    dataset: GraphDataset,
    target: str,
    data: str | None = None,
    predictions: dict[str, np.ndarray] | None = None,
    allow_seen: bool = False,
) -> Ensemble:
    """Fit σ's scale on the labelled ``dataset`` (column ``target``; ``data``: how the
    user named it) and store it in ``path/ensemble.json`` with what it was fitted on;
    returns the recalibrated ensemble. The factor is fitted to σ as the members give it
    (``predictions``: ``ensemble.predict(dataset, calibrated=False)`` when already made),
    so a second recalibration replaces the first instead of compounding it. Refuses (and
    changes nothing) when tlmat did not write the manifest, or when a member trained or
    validated on some of ``dataset`` (:func:`check_unseen`) unless ``allow_seen``: then
    the overlap is recorded under ``recalibration.seen``."""
    path = Path(path)
    check_own_manifest(path)
    name = data if data is not None else dataset.source
    seen = check_unseen(path, list(dataset.ids), name, allow_seen)
    manifest = json.loads((path / MANIFEST).read_text())
    y = np.asarray(dataset.targets[target], dtype=np.float64)
    raw = predictions if predictions is not None else ensemble.predict(dataset, calibrated=False)
    scale = fit_sigma_scale(y, raw["mean"], raw["sigma"])
    nll = calibration(y, raw["mean"], raw["sigma"])["nll"]
    about = {
        "data": name,
        "source": dataset.source,
        "target": target,
        "n": len(y),
        "sha256": labelled_sha256(dataset, target),
        "nll_uncalibrated": nll,
        "nll_recalibrated": calibration(y, raw["mean"], scale * raw["sigma"])["nll"],
        "fitted_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "method": "sigma scaling: s^2 = mean((y - mean)^2 / sigma^2), the Gaussian NLL "
        "minimum (Levi et al. 2022); sigma_a, sigma_e and sigma all times s",
        **({"seen": seen} if seen else {}),
    }
    return store_sigma_scale(path, ensemble, scale, {**manifest, "recalibration": about})


def store_sigma_scale(
    path: str | Path, ensemble: Ensemble, scale: float, manifest: dict[str, Any] | None = None
) -> Ensemble:
    """``scale`` as σ's factor in ``path/ensemble.json`` (``manifest``: the manifest to
    write, with what the scale was fitted on under ``recalibration``; default: the one
    there); the ensemble with it."""
    path = Path(path)
    manifest = dict(manifest or json.loads((path / MANIFEST).read_text()))
    _write_manifest(path, {**manifest, "sigma_scale": scale})
    return replace(ensemble, sigma_scale=scale, recalibration=manifest.get("recalibration"))


def save_ensemble(
    members: list[TrainedModel], val_mse: list[float], seeds: list[int], run_dir: str | Path
) -> Ensemble:
    """Members trained elsewhere (e.g. MLP heads on a frozen backbone's features) as an
    ensemble folder that :func:`load_ensemble` reads: ``member-k/model.pt`` each, and
    the manifest (σ scale 1)."""
    from tlmat.models.checkpoint import save_checkpoint

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    folders = [f"member-{k}" for k in range(len(members))]
    record(run_dir, *folders)
    for folder, member in zip(folders, members, strict=True):
        save_checkpoint(member, owned_path(run_dir, folder) / "model.pt")
    ensemble = Ensemble(members, [float(v) for v in val_mse])
    manifest = {
        "members": folders,
        "seeds": list(seeds),
        "val_mse": ensemble.val_mse,
        "target": members[0].target.model_dump(),
        "aleatoric": ensemble.aleatoric,
        "definition": DEFINITIONS[ensemble.aleatoric],
        "tlmat_version": tlmat.__version__,
    }
    _write_manifest(run_dir, manifest)
    return ensemble


def coverage_curve(
    y: np.ndarray, mean: np.ndarray, sigma: np.ndarray, levels: int = 99
) -> tuple[np.ndarray, np.ndarray]:
    """Expected and observed coverage of central Gaussian intervals: for p = 0.01 … 0.99,
    the fraction of structures with |y − mean| ≤ z_p·σ, z_p = Φ⁻¹((1 + p) / 2) (a
    calibrated σ puts every point on the diagonal)."""
    from scipy.stats import norm

    y, mean, sigma = (np.asarray(a, dtype=np.float64) for a in (y, mean, sigma))
    error = np.abs(y - mean)
    expected = np.linspace(0.01, 0.99, levels)
    z = norm.ppf((1 + expected) / 2)
    observed = (error[None, :] <= z[:, None] * sigma[None, :]).mean(axis=1)
    return expected, observed


def calibration(y: np.ndarray, mean: np.ndarray, sigma: np.ndarray) -> dict[str, float]:
    """How far σ can be trusted on labelled data: the coverage of ±1σ and ±2σ (68.3 % and
    95.4 % for a calibrated Gaussian σ), the miscalibration area (mean gap between
    expected and observed coverage over central intervals, Tran et al. 2020), the
    Gaussian negative log-likelihood per structure, and the Spearman correlation of
    |error| with σ."""
    from scipy.stats import spearmanr

    y, mean, sigma = (np.asarray(a, dtype=np.float64) for a in (y, mean, sigma))
    error = np.abs(y - mean)
    expected, observed = coverage_curve(y, mean, sigma)
    rho = spearmanr(error, sigma).statistic if np.ptp(sigma) > 0 else float("nan")
    return {
        "coverage_1sigma": float((error <= sigma).mean()),
        "coverage_2sigma": float((error <= 2 * sigma).mean()),
        "miscalibration_area": float(np.mean(np.abs(observed - expected))),
        "nll": float(np.mean(0.5 * np.log(2 * np.pi * sigma**2) + error**2 / (2 * sigma**2))),
        "spearman_error_sigma": float(rho),
        "n": len(y),
    }
