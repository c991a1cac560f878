"""Training: config, Lightning module, fit with checkpoints, resume and run manifests."""

from tlmat.training.config import TrainConfig
from tlmat.training.fit import FitResult, RunExistsError, fit, predict
from tlmat.training.module import PropertyModule

__all__ = ["FitResult", "PropertyModule", "RunExistsError", "TrainConfig", "fit", "predict"]
