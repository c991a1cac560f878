"""Datasets of cached graphs with targets (splits and loaders build on these)."""

from tlmat.data.dataset import GraphDataset, default_cache_dir, load_dataset, source_fingerprint

__all__ = ["GraphDataset", "default_cache_dir", "load_dataset", "source_fingerprint"]
