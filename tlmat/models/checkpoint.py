"""Checkpoints that need nothing else to load, and safe import of the original CGCNN ones.

Every file is read with ``torch.load(weights_only=True)``: no code in a checkpoint ever
runs. tlmat's own checkpoints hold only tensors and plain Python values. The original
CGCNN files (2018) also hold an ``argparse.Namespace`` of training arguments and numpy
scalars; exactly those classes are allowlisted (``CGCNN_ALLOWLIST``), nothing more.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tlmat import __version__
from tlmat.graphs.settings import GraphSettings
from tlmat.models.atom_features import load_atom_init
from tlmat.models.base import CrystalModel
from tlmat.models.cgcnn import CGCNNConfig, build_cgcnn
from tlmat.models.targets import TargetSpec

#: Classes the original CGCNN checkpoints pickle besides tensors and builtins.
CGCNN_ALLOWLIST: list[Any] = [
    argparse.Namespace,
    (np._core.multiarray.scalar, "numpy.core.multiarray.scalar"),
    np.dtype,
    type(np.dtype(np.float64)),
]

ARCHITECTURES = {"cgcnn": CGCNNConfig}


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded, with the reason."""


@dataclass
class TrainedModel:
    """A model with its target spec and provenance: what a checkpoint holds."""

    model: CrystalModel
    target: TargetSpec
    provenance: dict[str, Any] = field(default_factory=dict)

    @torch.no_grad()
    def predict_batch(self, batch) -> torch.Tensor:
        """Predictions in physical units for a PyG batch (model in eval mode)."""
        self.model.eval()
        return self.target.decode(self.model(batch))


def safe_load(path: str | Path) -> dict[str, Any]:
    """``torch.load(weights_only=True)`` with the CGCNN allowlist; a refused file raises a
    :class:`CheckpointError` that says which class it wanted, instead of unpickling it."""
    path = Path(path)
    try:
        with torch.serialization.safe_globals(CGCNN_ALLOWLIST):
            data = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as error:
        raise CheckpointError(
            f"{path}: refused to load ({str(error).strip().splitlines()[-1][:300]}). tlmat only "
            "reads tensors and allowlisted classes; a file that needs more is not loaded."
        ) from error
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
        "tlmat_version": __version__,
        "architecture": model.config.architecture,
        "config": model.config.model_dump(),
        "graph_settings": model.graph_settings.model_dump(),
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
    architecture: str,
    config: dict[str, Any],
    graph_settings: GraphSettings,
    atom_features: torch.Tensor | None = None,
) -> CrystalModel:
    if architecture not in ARCHITECTURES:
        raise CheckpointError(f"unknown architecture {architecture!r}")
    cfg = ARCHITECTURES[architecture](**config)
    if architecture == "cgcnn":
        features = atom_features if atom_features is not None else load_atom_init()
        return build_cgcnn(cfg, features, graph_settings)
    raise CheckpointError(f"no builder for {architecture!r}")


def load_checkpoint(path: str | Path) -> TrainedModel:
    """A tlmat checkpoint, or an original CGCNN ``.pth.tar`` (recognised and imported)."""
    data = safe_load(path)
    if data.get("format") == "tlmat":
        state = data["state_dict"]
        model = build_model(
            data["architecture"],
            data["config"],
            GraphSettings(**data["graph_settings"]),
            atom_features=state.get("backbone.atom_features"),
        )
        _load_state(model, state, path)
        return TrainedModel(model, TargetSpec(**data["target"]), dict(data["provenance"]))
    if "state_dict" in data and "args" in data:
        return import_cgcnn(data, path)
    raise CheckpointError(
        f"{path}: neither a tlmat checkpoint nor an original CGCNN one (keys: {sorted(data)})"
    )


def _cgcnn_key(key: str) -> str:
    """Original CGCNN parameter name → tlmat's."""
    if key.startswith(("embedding.", "convs.", "conv_to_fc.")):
        return f"backbone.{key}"
    if key.startswith("fc_out."):
        return key.replace("fc_out.", "head.out.", 1)
    if key.startswith("fcs."):
        _, index, rest = key.split(".", 2)
        return f"head.hidden.{2 * int(index)}.{rest}"
    return key


def import_cgcnn(data: dict[str, Any], source: str | Path = "") -> TrainedModel:
    """Map an original CGCNN checkpoint onto tlmat's CGCNN (weights, normaliser, args)."""
    args = data["args"] if isinstance(data["args"], dict) else vars(data["args"])
    config = CGCNNConfig(
        atom_fea_len=int(args.get("atom_fea_len", 64)),
        n_conv=int(args.get("n_conv", 3)),
        h_fea_len=int(args.get("h_fea_len", 128)),
        n_h=int(args.get("n_h", 1)),
        task=args.get("task", "regression"),
    )
    atom_features = load_atom_init()
    model = build_cgcnn(config, atom_features, GraphSettings(cutoff=8.0, max_neighbors=12))
    state = {_cgcnn_key(k): v for k, v in data["state_dict"].items()}
    state["backbone.atom_features"] = model.backbone.atom_features
    state["backbone.expansion.centers"] = model.backbone.expansion.centers
    _load_state(model, state, source, original_names={_cgcnn_key(k): k for k in data["state_dict"]})
    normalizer = data.get("normalizer") or {"mean": 0.0, "std": 1.0}
    property_name = "target"
    options = args.get("data_options")
    if isinstance(options, list | tuple) and options:
        property_name = str(options[-1])
    target = TargetSpec(
        name=property_name,
        normalization="standard",
        mean=float(normalizer["mean"]),
        std=float(normalizer["std"]),
        task=config.task,
    )
    provenance = {
        "source": str(source),
        "imported_from": "original CGCNN checkpoint (Xie & Grossman 2018)",
        "source_epoch": int(data.get("epoch", -1)),
        "source_best_mae": float(data.get("best_mae_error", float("nan"))),
        "imported_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    return TrainedModel(model, target, provenance)


def _load_state(
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
