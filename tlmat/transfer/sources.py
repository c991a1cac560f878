"""Where transfer starts: pretrained sources by name or file, the fair scratch model,
and the safe defaults of fine-tuning.

Safe defaults (what the original CGCNN ``--resume``, ALIGNN and matgl get wrong):

- only the source's weights are taken: epoch counter, optimiser state and best metric start
  afresh (a new training run), and the target normaliser is refitted on the target's
  training split (:func:`tlmat.training.fit`);
- the head is re-initialised when the target's name or kind differs from the source's
  (``keep_head=True`` keeps it);
- the source's zero-shot prediction is reported next to the fine-tuned one
  (:func:`tlmat.evaluation.experiments.zero_shot`).
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from tlmat.datasets import REGISTRY, fetch
from tlmat.models.checkpoint import TrainedModel, build_model, load_checkpoint
from tlmat.models.targets import TargetSpec
from tlmat.transfer.strategies import Strategy, preset

#: Pretrained sources known by name (``tlmat models`` lists them).
PRETRAINED = {
    name: entry
    for name, entry in REGISTRY.items()
    if name.endswith(
        ("energy-per-atom", "band-gap", "efermi", "moduli", "poisson-ratio", "classification")
    )
}


def load_source(source: str | Path) -> TrainedModel:
    """A source model from a registered name (``cgcnn/formation-energy-per-atom``), a tlmat
    checkpoint, or an original CGCNN ``.pth.tar``."""
    if isinstance(source, str) and source in PRETRAINED:
        trained = load_checkpoint(fetch(source))
        trained.provenance["name"] = source
        return trained
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(
            f"{source}: neither a file nor a registered model ({', '.join(PRETRAINED)})"
        )
    return load_checkpoint(path)


def fresh_like(source: TrainedModel, seed: int = 0) -> TrainedModel:
    """The source's architecture with new random weights (the fair scratch baseline)."""
    torch.manual_seed(seed)
    model = source.model
    state = model.state_dict()
    scratch = build_model(
        model.config.architecture,
        model.config.model_dump(),
        model.graph_settings,
        atom_features=state.get("backbone.atom_features"),
    )
    return TrainedModel(scratch, TargetSpec(), {"initialisation": "random", "seed": seed})


def needs_new_head(source: TargetSpec, target_name: str) -> bool:
    """Whether the source's head predicts something else than the target."""
    return source.name != target_name or source.task != "regression"


def prepare_transfer(
    name: str,
    source: TrainedModel,
    target_name: str,
    keep_head: bool = False,
    freeze_k: int = 1,
    seed: int = 0,
) -> tuple[TrainedModel, Strategy]:
    """The model to train and the strategy for preset ``name``, with the safe defaults: a
    copy of the source (the source itself is never changed) whose head is re-initialised
    for a new target, or the source's architecture with random weights for ``scratch``."""
    strategy = preset(name, k=freeze_k)
    if not strategy.from_source:
        return fresh_like(source, seed), strategy
    if not keep_head and needs_new_head(source.target, target_name):
        strategy = strategy.model_copy(update={"reinit_head": True})
    return copy.deepcopy(source), strategy
