"""Source replay: fine-tuning that keeps what the source knew (the MACE team's finding,
arXiv 2606.12704: only replay of the source task keeps accuracy outside the target data).

Every training step also fits the source's own outputs on a batch of source-domain
structures (a replay set, e.g. from ``mp_cgcnn_36k``): the shared backbone under the
source's own head, frozen, must go on predicting what the source predicted there,
weighted by ``replay_weight``. The source's outputs are computed once, before the first
step, with the source's weights. The model the run writes predicts the target; the
source's head is not part of it, but still reads its backbone (the source task kept).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from tlmat.data.dataset import GraphDataset, load_dataset
from tlmat.models.base import CrystalModel, TrainedModel
from tlmat.models.prediction import network_outputs


@dataclass
class Replay:
    """The replay set (graphs as the model reads them), the source's normalised outputs
    on it, their spread (the loss is divided by it, so that the weight means the same
    for every source) and the view that predicts them: the shared backbone with the
    source's head (a frozen copy)."""

    dataset: GraphDataset
    teacher: torch.Tensor
    spread: float
    view: CrystalModel
    weight: float

    @classmethod
    def build(
        cls, model: CrystalModel, origin: TrainedModel, data: str, size: int, weight: float
    ) -> Replay:
        """``size`` structures of ``data`` (a file, folder or registered dataset), the
        first ones the source can read, and ``origin``'s outputs on them; ``model`` is
        the model being fine-tuned (its backbone is shared with the view)."""
        from tlmat.datasets import resolve

        dataset = load_dataset(
            resolve(data), model.graph_settings, [], elements=model.elements, limit=size
        )
        teacher = network_outputs(origin, dataset).float()
        head = copy.deepcopy(origin.model.head).requires_grad_(False)
        view = CrystalModel(model.backbone, head, model.config)
        view.pooling = origin.model.pooling
        spread = float(teacher.std()) if len(teacher) > 1 else 1.0
        return cls(dataset, teacher, spread or 1.0, view, weight)

    @property
    def head(self) -> nn.Module:
        return self.view.head

    def batches(self, epoch: int, seed: int, batch_size: int) -> list[np.ndarray]:
        """The replay set in a shuffled order of its own for ``epoch``, in batches (the
        same for a resumed run)."""
        order = np.random.default_rng([seed, epoch, 7]).permutation(len(self.dataset))
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]

    def loss(self, chunk: np.ndarray, device: torch.device) -> torch.Tensor:
        """``weight`` × the mean |view − source| on ``chunk``, over the outputs' spread."""
        batch = self.dataset.batch(chunk.tolist()).to(device)
        predicted = self.view(batch).reshape(len(chunk), -1)[:, 0]
        teacher = self.teacher[torch.as_tensor(chunk)].to(device)
        return self.weight * (predicted - teacher).abs().mean() / self.spread
