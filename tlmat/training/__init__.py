"""Training: config, Lightning module, fit with checkpoints, resume and run manifests."""

from tlmat.models.prediction import predict
from tlmat.training.config import TrainConfig
from tlmat.training.fit import DivergedError, FitResult, RunInterrupted, fit
from tlmat.training.module import PropertyModule
from tlmat.training.rundir import ResumeMismatchError, RunExistsError

__all__ = [
    "DivergedError",
    "FitResult",
    "PropertyModule",
    "ResumeMismatchError",
    "RunExistsError",
    "RunInterrupted",
    "TrainConfig",
    "fit",
    "predict",
]
