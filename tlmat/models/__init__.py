"""Models: the backbone/head contract, CGCNN, target normalisation, checkpoints."""

from tlmat.models.base import Backbone, CrystalModel, Head, ModelConfig
from tlmat.models.cgcnn import CGCNNConfig, build_cgcnn
from tlmat.models.checkpoint import (
    CheckpointError,
    TrainedModel,
    import_cgcnn,
    load_checkpoint,
    safe_load,
    save_checkpoint,
)
from tlmat.models.targets import TargetSpec

__all__ = [
    "Backbone",
    "CGCNNConfig",
    "CheckpointError",
    "CrystalModel",
    "Head",
    "ModelConfig",
    "TargetSpec",
    "TrainedModel",
    "build_cgcnn",
    "import_cgcnn",
    "load_checkpoint",
    "safe_load",
    "save_checkpoint",
]
