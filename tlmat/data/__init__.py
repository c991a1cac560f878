"""Datasets of cached graphs with targets, splits and loaders."""

from tlmat.data.dataset import (
    GraphDataset,
    concat,
    default_cache_dir,
    load_dataset,
    source_fingerprint,
)
from tlmat.data.loader import GraphLoader
from tlmat.data.splits import Split, random_split, subsample

__all__ = [
    "GraphDataset",
    "GraphLoader",
    "Split",
    "concat",
    "default_cache_dir",
    "load_dataset",
    "random_split",
    "source_fingerprint",
    "subsample",
]
