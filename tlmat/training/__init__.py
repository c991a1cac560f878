"""Training: config, Lightning module, fit with checkpoints, resume and run manifests."""

from tlmat.training.config import TrainConfig
from tlmat.training.fit import DivergedError, FitResult, fit, predict
from tlmat.training.module import PropertyModule
from tlmat.training.rundir import ResumeMismatchError, RunExistsError

__all__ = [
    "DivergedError",
    "FitResult",
    "PropertyModule",
    "ResumeMismatchError",
    "RunExistsError",
    "TrainConfig",
    "fit",
    "predict",
]
