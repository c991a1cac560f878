"""Transfer learning: strategies over named parameter groups, feature extraction."""

from tlmat.transfer.strategies import (
    FEATURE_STRATEGIES,
    Strategy,
    apply_strategy,
    keep_frozen_in_eval,
    preset,
    trainable_groups,
)

__all__ = [
    "FEATURE_STRATEGIES",
    "Strategy",
    "apply_strategy",
    "keep_frozen_in_eval",
    "preset",
    "trainable_groups",
]
