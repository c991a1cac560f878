"""Pooling a layer's atom (bond, angle) features into one vector per crystal: by their
mean (Gupta et al.'s layer-wise features), or also by the moments and extremes that the
mean loses (arXiv 2512.05717). A feature pooled by a statistic other than the mean is
named ``<layer>@<statistic>``."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence

import torch
from torch_geometric.data import Batch
from torch_geometric.utils import scatter

#: statistics that pool a layer's atom (bond, angle) features into crystal features:
#: the mean (Gupta et al.), and the moments and extremes that the mean loses
#: (arXiv 2512.05717); a feature pooled by ``std`` is named ``<layer>@std``
MEAN: tuple[str, ...] = ("mean",)
MOMENTS: tuple[str, ...] = ("mean", "std", "min", "max")


def pool(
    values: torch.Tensor, index: torch.Tensor, n_crystals: int, statistics: Sequence[str] = MEAN
) -> Iterator[tuple[str, torch.Tensor]]:
    """(statistic, (n_crystals, d)) for each of ``statistics`` of the rows of ``values``
    that ``index`` assigns to each crystal: ``mean``, ``std`` (population; √ of at least
    1e-12, so that its gradient stays finite), ``min``, ``max``."""
    mean = scatter(values, index, 0, dim_size=n_crystals, reduce="mean")
    for statistic in statistics:
        if statistic == "mean":
            yield statistic, mean
        elif statistic == "std":
            spread = (values - mean[index]) ** 2
            variance = scatter(spread, index, 0, dim_size=n_crystals, reduce="mean")
            yield statistic, variance.clamp_min(1e-12).sqrt()
        elif statistic in ("min", "max"):
            yield statistic, scatter(values, index, 0, dim_size=n_crystals, reduce=statistic)
        else:
            raise ValueError(f"no pooling statistic {statistic!r}; choose from {MOMENTS}")


def pooled_name(layer: str, statistic: str) -> str:
    """A pooled feature's name: the layer's for the mean, ``<layer>@<statistic>`` else."""
    return layer if statistic == "mean" else f"{layer}@{statistic}"


def statistics_of(names: Iterable[str]) -> tuple[str, ...]:
    """The statistics that pooled features named ``names`` need, in :data:`MOMENTS` order."""
    needed = {name.rpartition("@")[2] if "@" in name else "mean" for name in names}
    return tuple(s for s in MOMENTS if s in needed)


def pooled_layers(
    states: Iterable[tuple[str, torch.Tensor]], batch: Batch, statistics: Sequence[str] = MEAN
) -> OrderedDict[str, torch.Tensor]:
    """Layer-wise features from (layer name, atom features) pairs: each pooled over the
    atoms of every crystal by each of ``statistics`` (:func:`pool`), (n_crystals, d)."""
    n_crystals = batch.ptr.numel() - 1
    return OrderedDict(
        (pooled_name(name, statistic), pooled)
        for name, x in states
        for statistic, pooled in pool(x, batch.batch, n_crystals, statistics)
    )
