"""Checkpoints that need nothing else to load, and safe import of published weights.

Every file is read with ``torch.load(weights_only=True)``: no code in a checkpoint ever
runs. tlmat's own checkpoints hold only tensors and plain Python values and load with no
allowlist at all. Published weights that pickle more (the original CGCNN files hold an
``argparse.Namespace`` and numpy scalars) are read by their architecture's importer with
exactly that importer's allowlist (:mod:`tlmat.models.registry`), nothing more.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import torch

from tlmat import __version__
from tlmat.models import registry
from tlmat.models.base import CrystalModel, Head, TrainedModel
from tlmat.models.targets import TargetSpec

#: Bumped when the checkpoint layout changes (3: a head on pooled layer features stores
#: its layout).
CHECKPOINT_VERSION = 3


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded, with the reason."""


#: what a tlmat checkpoint must hold (save_checkpoint writes them all)
REQUIRED_FIELDS = ("architecture", "config", "state_dict", "target", "provenance")


def _refusal(path: Path, error: Exception) -> CheckpointError:
    text = str(error)
    # torch names the first global it would not unpickle: "Unsupported global: GLOBAL x.y"
    wanted = re.search(r"GLOBAL ([\w.]+)", text)
    reason = (
        f"it needs the class {wanted.group(1)}, which is not on any allowlist"
        if wanted
        else text.strip().splitlines()[-1][:300]
    )
    return CheckpointError(
        f"{path}: refused to load ({reason}). tlmat only reads tensors and allowlisted "
        "classes with torch.load(weights_only=True); a file that needs more is not unpickled."
    )


def _load(path: Path, allowlist: tuple[Any, ...] = ()) -> Any:
    with torch.serialization.safe_globals(list(allowlist)):
        return torch.load(path, map_location="cpu", weights_only=True)


def require_sha256(path: Path, checksum: str, what: str) -> None:
    """Refuse a published file whose bytes are not the published ones."""
    from tlmat.datasets import sha256sum

    if sha256sum(path) != checksum:
        raise CheckpointError(f"{path}: SHA-256 differs from the published {what} ({checksum})")


def read_published_weights(
    path: Path, checksum: str, what: str, allowlist: tuple[Any, ...] = ()
) -> Any:
    """A published weights file (``what``, e.g. ``CHGNet 0.3.0 weights``), checked against
    its SHA-256, then read with ``torch.load(weights_only=True)`` and ``allowlist``."""
    require_sha256(path, checksum, what)
    try:
        return _load(path, allowlist)
    except Exception as error:
        raise _refusal(path, error) from error


def safe_load(path: str | Path) -> dict[str, Any]:
    """``torch.load(weights_only=True)``: first with no allowlist (tlmat's own files), then
    with each importer's own allowlist for files that need one. A refused file raises a
    :class:`CheckpointError` that says which class it wanted, instead of unpickling it."""
    path = Path(path)
    try:
        data = _load(path)
    except FileNotFoundError:
        raise
    except Exception as error:
        data = None
        for importer in registry.importers():
            try:
                candidate = _load(path, importer.allowlist)
            except Exception:
                continue
            if isinstance(candidate, dict) and importer.recognise(candidate):
                data = candidate
                break
        if data is None:
            raise _refusal(path, error) from error
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: not a checkpoint (a {type(data).__name__})")
    return data


def save_checkpoint(
    trained: TrainedModel, path: str | Path, extra: dict[str, Any] | None = None
) -> Path:
    """Write a self-describing checkpoint (architecture, config, graph settings, element
    vocabulary in the weights, target spec, provenance, tlmat version)."""
    path = Path(path)
    model = trained.model
    payload = {
        "format": "tlmat",
        "checkpoint_version": CHECKPOINT_VERSION,
        "tlmat_version": __version__,
        "architecture": model.architecture,
        "config": model.config.model_dump(),
        "graph_settings": model.graph_settings.model_dump(),
        "head": model.head.layout(),
        "target": trained.target.model_dump(),
        "provenance": trained.provenance,
        "state_dict": model.state_dict(),
        **(extra or {}),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
    return path


def build_model(
    architecture: str, config: dict[str, Any], state: dict[str, torch.Tensor] | None = None
) -> CrystalModel:
    """A model of a registered architecture from its stored config."""
    try:
        cfg = registry.model_config({"architecture": architecture, **config})
    except ValueError as error:
        raise CheckpointError(str(error)) from None
    model = registry.build(cfg, state)
    out = state.get("head.out.weight") if state is not None else None
    if out is not None and out.shape[0] != model.head.out_dim:
        model.replace_head(out.shape[0])
    return model


def check_version(data: dict[str, Any], path: str | Path) -> None:
    """Refuse a checkpoint of a newer layout than this tlmat reads: its fields may mean
    something else now, so loading it could predict wrongly without an error."""
    version = data.get("checkpoint_version", CHECKPOINT_VERSION)
    if not isinstance(version, int) or isinstance(version, bool):
        raise CheckpointError(f"{path}: checkpoint_version is {version!r}, not a number")
    if version > CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{path}: written by a newer tlmat (format {version}; this one reads "
            f"≤ {CHECKPOINT_VERSION}): upgrade tlmat"
        )


def check_graph_settings(
    model: CrystalModel, stored: dict[str, Any] | None, path: str | Path
) -> None:
    """Refuse a checkpoint whose stored graph settings differ from those its model config
    gives: graphs are built from the config, so the model would see other neighbours than
    it was trained on. Settings a checkpoint does not store (older formats) are not
    compared."""
    if not stored:
        return
    derived = model.graph_settings.model_dump()
    for field, value in stored.items():
        if field in derived and derived[field] != value:
            raise CheckpointError(
                f"{path}: the model config gives graph setting {field} = {derived[field]!r}, "
                f"the checkpoint's graph_settings say {value!r}; the checkpoint is "
                "inconsistent (edited or damaged), so its predictions cannot be trusted"
            )


def load_checkpoint(path: str | Path) -> TrainedModel:
    """A tlmat checkpoint, or published weights one of the importers recognises."""
    data = safe_load(path)
    if data.get("format") == "tlmat":
        check_version(data, path)
        lacking = [f for f in REQUIRED_FIELDS if f not in data]
        if lacking:
            raise CheckpointError(
                f"{path}: tlmat checkpoint lacks the field {lacking[0]!r} "
                f"(it has: {', '.join(sorted(data))})"
            )
        state = data["state_dict"]
        model = build_model(data["architecture"], data["config"], state)
        head = data.get("head") or {}
        # a head on pooled layer features, or one that predicts several fidelities
        if head.get("pooled_layers") is not None or head.get("fidelities"):
            model.head = Head(**head)
        check_graph_settings(model, data.get("graph_settings"), path)
        load_state(model, state, path)
        return TrainedModel(model, TargetSpec(**data["target"]), dict(data["provenance"]))
    for importer in registry.importers():
        if importer.recognise(data):
            trained = importer.load(data, path)
            trained.provenance.setdefault("imported_at", time.strftime("%Y-%m-%dT%H:%M:%S"))
            return trained
    raise CheckpointError(
        f"{path}: neither a tlmat checkpoint nor published weights tlmat can import "
        f"({'; '.join(i.description for i in registry.importers())}); keys: {sorted(data)}"
    )


def load_state(
    model: CrystalModel,
    state: dict[str, torch.Tensor],
    source,
    original_names: dict[str, str] | None = None,
) -> None:
    """Load weights, naming the first tensor that is missing, unexpected or misshapen."""
    names = original_names or {}
    expected = model.state_dict()
    for key, value in state.items():
        shown = names.get(key, key)
        if key not in expected:
            raise CheckpointError(f"{source}: unexpected tensor {shown!r} {tuple(value.shape)}")
        if expected[key].shape != value.shape:
            raise CheckpointError(
                f"{source}: tensor {shown!r} has shape {tuple(value.shape)}, the model expects "
                f"{tuple(expected[key].shape)}"
            )
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    if missing:
        raise CheckpointError(f"{source}: checkpoint lacks tensor {missing[0]!r}")
    model.load_state_dict(state, strict=False)
