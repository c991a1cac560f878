"""Predictions of a trained model over a dataset of cached graphs, in physical units and in
batches sized to the graphs. Here, not in :mod:`tlmat.training`, so that predicting does
not import Lightning (two seconds of start-up on a laptop)."""

from __future__ import annotations

import numpy as np
import torch

from tlmat.data.dataset import GraphDataset
from tlmat.data.loader import GraphLoader, inference_batch_size
from tlmat.models.base import TrainedModel


@torch.no_grad()
def predict(
    trained: TrainedModel, dataset: GraphDataset, indices=None, batch_size: int | None = None
) -> np.ndarray:
    """Predictions in physical units for ``dataset[indices]`` (all when ``None``), in
    batches of ``batch_size`` graphs (default: sized to the graphs,
    :func:`~tlmat.data.loader.inference_batch_size`)."""
    batch_size = batch_size or inference_batch_size(dataset, indices)
    model = trained.model
    model.eval()
    device = next(model.parameters()).device
    outputs = []
    for batch in GraphLoader(dataset, indices, batch_size=batch_size):
        batch = batch.to(device)
        model.pooling = trained.target.pooling
        out = model(batch)
        out = out.squeeze(-1) if out.shape[-1] == 1 else out
        outputs.append(trained.target.decode(out, batch).cpu())
    return torch.cat(outputs).numpy() if outputs else np.zeros(0)
