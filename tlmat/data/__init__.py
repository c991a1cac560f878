"""Datasets of cached graphs with targets, splits and loaders."""

from tlmat.data.dataset import (
    GraphDataset,
    Reading,
    concat,
    default_cache_dir,
    load_dataset,
    source_fingerprint,
)
from tlmat.data.loader import GraphLoader
from tlmat.data.splits import (
    MATBENCH_SEED,
    Split,
    composition_disjoint,
    disjoint_subsplits,
    extrapolation_split,
    kfold_splits,
    learning_curve_subsets,
    matbench_folds,
    random_split,
    seeded_split,
    subsample,
)

__all__ = [
    "MATBENCH_SEED",
    "GraphDataset",
    "GraphLoader",
    "Reading",
    "Split",
    "composition_disjoint",
    "concat",
    "default_cache_dir",
    "disjoint_subsplits",
    "extrapolation_split",
    "kfold_splits",
    "learning_curve_subsets",
    "load_dataset",
    "matbench_folds",
    "random_split",
    "seeded_split",
    "source_fingerprint",
    "subsample",
]
