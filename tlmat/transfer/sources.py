"""Where transfer starts: pretrained sources by name or file, the fair scratch model,
and the safe defaults of fine-tuning.

Safe defaults (what the original CGCNN ``--resume``, ALIGNN and matgl get wrong):

- only the source's weights are taken: epoch counter, optimiser state and best metric start
  afresh (a new training run), and the target normaliser is refitted on the target's
  training split (:func:`tlmat.training.fit`);
- the head is rebuilt, freshly initialised and with the new target's width, when the
  target's name or kind differs from the source's, or the target needs another width (2
  for a heteroscedastic target: mean and log-variance) (``keep_head=True`` keeps it);
- the source's zero-shot prediction is reported next to the fine-tuned one
  (:func:`tlmat.experiments.runs.zero_shot`).
"""

from __future__ import annotations

import copy

import torch

from tlmat.models import registry
from tlmat.models.checkpoint import TrainedModel

# a model by name is the hub's (tlmat.models.hub); named here for older imports
from tlmat.models.hub import (  # noqa: F401
    PRETRAINED,
    SHIPPED_DIR,
    load_source,
    seen_materials,
    shipped,
    shipped_folder,
    training_materials,
)
from tlmat.models.targets import TargetSpec
from tlmat.transfer.strategies import Strategy, preset


def fresh_like(source: TrainedModel, seed: int = 0, out_dim: int = 1) -> TrainedModel:
    """The source's architecture with new random weights (the fair scratch baseline) and
    a head of ``out_dim`` outputs."""
    model = source.model
    # the source's buffers (element tables) are passed on; its weights are not
    buffers = dict(model.named_buffers())
    return fresh_model(model.config, seed, buffers, out_dim=out_dim)


def fresh_model(
    config: registry.ModelSpec | None = None,
    seed: int = 0,
    buffers: dict[str, torch.Tensor] | None = None,
    out_dim: int = 1,
) -> TrainedModel:
    """A model of any registered architecture with random weights (``seed``) and a head
    of ``out_dim`` outputs (:attr:`TargetSpec.out_dim`); the backbone's weights do not
    depend on it."""
    torch.manual_seed(seed)
    cfg = registry.model_config(config)
    model = registry.build(cfg, buffers)
    if model.head.out_dim != out_dim:
        model.replace_head(out_dim)
    provenance = {"initialisation": "random", "seed": seed, "architecture": cfg.architecture}
    return TrainedModel(model, TargetSpec(), provenance)


def needs_new_head(source: TargetSpec, target_name: str) -> bool:
    """Whether the source's head predicts something else than the target."""
    return source.name != target_name or source.task != "regression"


def prepare_transfer(
    name: str,
    source: TrainedModel,
    target_name: str,
    *,
    keep_head: bool = False,
    freeze_k: int = 1,
    seed: int = 0,
    out_dim: int = 1,
) -> tuple[TrainedModel, Strategy]:
    """The model to train and the strategy for preset ``name``, with the safe defaults: a
    copy of the source (the source itself is never changed) whose head is re-initialised
    for a new target, or the source's architecture with random weights for ``scratch``.
    ``out_dim`` is the width the target needs (:attr:`TargetSpec.out_dim`: 1, or 2 for a
    heteroscedastic target); a head of another width is rebuilt, and refused with
    ``keep_head``. Only the head changes, so every strategy still trains its groups."""
    strategy = preset(name, k=freeze_k)
    if not strategy.from_source:
        return fresh_like(source, seed, out_dim), strategy
    if keep_head and source.target.task != "regression":
        raise ValueError(
            f"keep_head keeps the head of a {source.target.task} source (class scores); a "
            "regression target needs a new head: fine-tune without --keep-head"
        )
    trained = copy.deepcopy(source)
    width = trained.model.head.out_dim
    if keep_head and width != out_dim:
        raise ValueError(
            f"keep_head keeps the source's head, which has {width} output(s), but the "
            f"target needs {out_dim}"
            + (" (mean and log-variance, loss gaussian_nll)" if out_dim == 2 else "")
            + ": fine-tune without --keep-head to get a fresh head of that width"
        )
    if not keep_head and (needs_new_head(source.target, target_name) or width != out_dim):
        torch.manual_seed(seed)
        trained.model.replace_head(out_dim)
        strategy = strategy.model_copy(update={"reinit_head": True})
    if strategy.replay is not None:
        trained.origin = source  # read, never changed: replay fits its outputs
    return trained, strategy
