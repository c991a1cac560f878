"""Models: the backbone/head contract, the architecture registry, target specifications,
checkpoints. Architectures live in their own modules (``tlmat.models.cgcnn`` …) and are
reached through :mod:`tlmat.models.registry`."""

from tlmat.models.base import Backbone, CrystalModel, Head, ModelConfig, TrainedModel
from tlmat.models.checkpoint import (
    CheckpointError,
    build_model,
    load_checkpoint,
    safe_load,
    save_checkpoint,
)
from tlmat.models.registry import model_config
from tlmat.models.targets import TargetSpec

__all__ = [
    "Backbone",
    "CheckpointError",
    "CrystalModel",
    "Head",
    "ModelConfig",
    "TargetSpec",
    "TrainedModel",
    "build_model",
    "load_checkpoint",
    "model_config",
    "safe_load",
    "save_checkpoint",
]
