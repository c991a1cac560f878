"""Source replay (tlmat.training.replay): fine-tuning that also fits the source's own
outputs on source-domain structures forgets less of the source task than plain full
fine-tuning, and writes the same kind of model."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from tlmat.data import load_dataset, random_split
from tlmat.models import CrystalModel, load_checkpoint
from tlmat.training import TrainConfig, fit
from tlmat.transfer import preset
from tlmat.transfer.sources import load_source, prepare_transfer

MP = "mp_cgcnn_36k/mp_cgcnn_36k.csv.gz"


@torch.no_grad()
def _source_error(backbone_of, source, dataset) -> float:
    """|source head on the fine-tuned backbone − the source| over ``dataset`` (the
    source's normalised outputs): how much of the source task is forgotten."""
    view = CrystalModel(copy.deepcopy(backbone_of.backbone), source.model.head, source.model.config)
    view.eval()
    source.model.eval()
    batch = dataset.batch(list(range(len(dataset))))
    return float((view(batch) - source.model(batch)).abs().mean())


def test_replay_forgets_less_than_full_fine_tuning(perovskites, data: Path, tmp_path) -> None:
    source = load_source("cgcnn/formation-energy-per-atom")
    held_out = load_dataset(
        data / MP, source.model.graph_settings, [], elements=source.model.elements, limit=400
    )
    held_out = held_out.subset(list(range(300, 400)))  # not among the 200 replayed
    split = random_split(len(perovskites), (60, 30, 30), seed=0)
    config = TrainConfig(
        target="heat_ref", epochs=8, lr=3e-3, batch_size=16, early_stopping_patience=None
    )
    forgotten = {}
    for name in ("full", "replay"):
        trained, strategy = prepare_transfer(name, source, "heat_ref")
        if name == "replay":
            strategy = strategy.model_copy(update={"replay_size": 200, "replay_weight": 2.0})
        result = fit(trained, perovskites, split, config, tmp_path / name, strategy)
        forgotten[name] = _source_error(result.trained.model, source, held_out)
        assert np.isfinite(result.best_val_mae)
    assert forgotten["replay"] < 0.7 * forgotten["full"], forgotten
    # the replay head trained beside the model is not part of it
    saved = load_checkpoint(tmp_path / "replay" / "model.pt")
    assert set(saved.model.state_dict()) == set(source.model.state_dict())


def test_replay_needs_its_source(perovskites, tmp_path) -> None:
    source = load_source("cgcnn/formation-energy-per-atom")
    trained = copy.deepcopy(source)  # not through prepare_transfer: no source kept
    trained.model.replace_head(1)
    split = random_split(len(perovskites), (20, 10, 10), seed=0)
    with pytest.raises(ValueError, match="prepare_transfer"):
        fit(trained, perovskites, split, TrainConfig(target="heat_ref", epochs=1),
            tmp_path / "x", preset("replay"))  # fmt: skip
