"""Transfer learning: sources, strategies over named parameter groups, feature extraction."""

from tlmat.transfer.sources import PRETRAINED, fresh_like, load_source, prepare_transfer
from tlmat.transfer.strategies import (
    FEATURE_STRATEGIES,
    Strategy,
    apply_strategy,
    keep_frozen_in_eval,
    preset,
    trainable_groups,
)
from tlmat.transfer.transferability import Transferability, transferability

__all__ = [
    "FEATURE_STRATEGIES",
    "PRETRAINED",
    "Strategy",
    "Transferability",
    "apply_strategy",
    "fresh_like",
    "keep_frozen_in_eval",
    "load_source",
    "prepare_transfer",
    "preset",
    "trainable_groups",
    "transferability",
]
