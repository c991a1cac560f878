"""Predictions of a trained model over a dataset of cached graphs, in physical units and in
batches sized to the graphs. Here, not in :mod:`tlmat.training`, so that predicting does
not import Lightning (two seconds of start-up on a laptop)."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from torch_geometric.data import Batch

from tlmat.data.dataset import GraphDataset
from tlmat.data.loader import GraphLoader, inference_batch_size
from tlmat.models.base import TrainedModel


@torch.no_grad()
def predict_batches(trained: TrainedModel, batches: Iterable[Batch]) -> np.ndarray:
    """Predictions in physical units for each graph of ``batches``, in order, on the
    model's device (class probabilities for a classifier)."""
    model = trained.model
    model.eval()
    model.pooling = trained.target.pooling
    device = next(model.parameters()).device
    outputs = []
    for batch in batches:
        batch = batch.to(device)
        out = model(batch)
        out = out.squeeze(-1) if out.shape[-1] == 1 else out
        outputs.append(trained.target.decode(out, batch).cpu())
    return torch.cat(outputs).numpy() if outputs else np.zeros(0)


def predict(
    trained: TrainedModel, dataset: GraphDataset, indices=None, batch_size: int | None = None
) -> np.ndarray:
    """Predictions in physical units for ``dataset[indices]`` (all when ``None``), in
    batches of ``batch_size`` graphs (default: sized to the graphs,
    :func:`~tlmat.data.loader.inference_batch_size`)."""
    batch_size = batch_size or inference_batch_size(dataset, indices)
    return predict_batches(trained, GraphLoader(dataset, indices, batch_size=batch_size))
