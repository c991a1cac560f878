"""Predictions of a trained model over a dataset of cached graphs, in physical units and in
batches sized to the graphs (and, for a heteroscedastic model, each structure's variance).
Here, not in :mod:`tlmat.training`, so that predicting does not import Lightning (two
seconds of start-up on a laptop)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import torch
from torch_geometric.data import Batch

from tlmat.data.dataset import GraphDataset
from tlmat.data.loader import GraphLoader, inference_batch_size
from tlmat.models.base import TrainedModel


def _batch_size(trained: TrainedModel, dataset: GraphDataset, indices) -> int:
    return inference_batch_size(dataset, indices, trained.model.pair_cost)


def _outputs(
    trained: TrainedModel, batches: Iterable[Batch]
) -> Iterator[tuple[torch.Tensor, Batch]]:
    """The network's outputs (normalised space) for each batch, with the batch, on the
    model's device and in eval mode."""
    model = trained.model
    model.eval()
    model.pooling = trained.target.pooling
    device = next(model.parameters()).device
    for batch in batches:
        batch = batch.to(device)
        out = model(batch)
        yield (out.squeeze(-1) if out.shape[-1] == 1 else out), batch


@torch.no_grad()
def network_outputs(trained: TrainedModel, dataset: GraphDataset, indices=None) -> torch.Tensor:
    """The network's first output (normalised space, before the target is decoded) for
    each structure of ``dataset[indices]``, on the CPU; the model is left in eval mode."""
    loader = GraphLoader(dataset, indices, batch_size=_batch_size(trained, dataset, indices))
    parts = [
        out.reshape(batch.ptr.numel() - 1, -1)[:, 0].cpu()
        for out, batch in _outputs(trained, loader)
    ]
    return torch.cat(parts) if parts else torch.zeros(0)


@torch.no_grad()
def predict_batches(trained: TrainedModel, batches: Iterable[Batch]) -> np.ndarray:
    """Predictions in physical units for each graph of ``batches``, in order, on the
    model's device (class probabilities for a classifier; the mean of a heteroscedastic
    model)."""
    outputs = [trained.target.decode(out, batch).cpu() for out, batch in _outputs(trained, batches)]
    return torch.cat(outputs).numpy() if outputs else np.zeros(0)


@torch.no_grad()
def iter_predictions(
    trained: TrainedModel,
    dataset: GraphDataset,
    indices=None,
    batch_size: int | None = None,
    rows: int = 10_000,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """:func:`predict` a chunk at a time: (positions in ``dataset``, predictions) for
    about ``rows`` structures each, in order — for outputs written as they come."""
    batch_size = batch_size or _batch_size(trained, dataset, indices)
    loader = GraphLoader(dataset, indices, batch_size=batch_size)
    positions: list[torch.Tensor] = []
    values: list[torch.Tensor] = []
    for out, batch in _outputs(trained, loader):
        positions.append(batch.index.cpu())
        values.append(trained.target.decode(out, batch).cpu())
        if sum(len(p) for p in positions) >= rows:
            yield torch.cat(positions).numpy(), torch.cat(values).numpy()
            positions, values = [], []
    if positions:
        yield torch.cat(positions).numpy(), torch.cat(values).numpy()


def predict(
    trained: TrainedModel, dataset: GraphDataset, indices=None, batch_size: int | None = None
) -> np.ndarray:
    """Predictions in physical units for ``dataset[indices]`` (all when ``None``), in
    batches of ``batch_size`` graphs (default: sized to the graphs,
    :func:`~tlmat.data.loader.inference_batch_size`)."""
    batch_size = batch_size or _batch_size(trained, dataset, indices)
    return predict_batches(trained, GraphLoader(dataset, indices, batch_size=batch_size))


@torch.no_grad()
def predict_with_variance(
    trained: TrainedModel, dataset: GraphDataset, indices=None, batch_size: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """A heteroscedastic model's mean (target unit, as :func:`predict`) and variance
    (target unit²; (log10 unit)² for a log10 target, see
    :meth:`~tlmat.models.targets.TargetSpec.decode_variance`) for ``dataset[indices]``,
    in one pass."""
    target = trained.target
    if not target.heteroscedastic:
        raise ValueError(
            f"the model of {target.name!r} predicts no variance: only a model trained with "
            "loss gaussian_nll (a heteroscedastic head) does"
        )
    batch_size = batch_size or _batch_size(trained, dataset, indices)
    means, variances = [], []
    for out, batch in _outputs(trained, GraphLoader(dataset, indices, batch_size=batch_size)):
        means.append(target.decode(out, batch).cpu())
        variances.append(target.decode_variance(out, batch).cpu())
    if not means:
        return np.zeros(0), np.zeros(0)
    return torch.cat(means).numpy(), torch.cat(variances).numpy()


def predict_variance(
    trained: TrainedModel, dataset: GraphDataset, indices=None, batch_size: int | None = None
) -> np.ndarray:
    """A heteroscedastic model's predicted variance per structure, in the target's unit²
    (:func:`predict_with_variance`)."""
    return predict_with_variance(trained, dataset, indices, batch_size)[1]
