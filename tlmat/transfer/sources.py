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
import csv
import gzip
import hashlib
import json
from functools import cache
from pathlib import Path

import torch

from tlmat.datasets import REGISTRY, fetch
from tlmat.models import registry
from tlmat.models.checkpoint import TrainedModel, load_checkpoint
from tlmat.models.targets import TargetSpec
from tlmat.transfer.strategies import Strategy, preset

#: Pretrained sources known by name (``tlmat models`` lists them).
PRETRAINED = {name: entry for name, entry in REGISTRY.items() if entry.architecture}

#: Sources tlmat pretrained once, leakage-free, and ships: one folder each with
#: ``model.pt``, its model card (``card.json``, ``card.md``) and the ids and reduced
#: formulas it was trained on (``training.csv.gz``); built by ``benchmarks/sources.py``.
SHIPPED_DIR = Path(__file__).resolve().parent.parent / "pretrained"


@cache
def shipped() -> dict[str, dict]:
    """The shipped tlmat sources, ``tlmat/<folder>`` → model card."""
    cards = sorted(SHIPPED_DIR.glob("*/card.json"))
    return {f"tlmat/{card.parent.name}": json.loads(card.read_text()) for card in cards}


def shipped_folder(name: str) -> Path:
    """The folder of a shipped tlmat source (``tlmat/mp-eform-cgcnn``)."""
    if name not in shipped():
        raise ValueError(f"unknown tlmat source {name!r}; shipped: {', '.join(shipped())}")
    return SHIPPED_DIR / name.removeprefix("tlmat/")


def training_materials(name: str) -> dict[str, list[tuple[str, str]]]:
    """A shipped source's (id, reduced formula) pairs per part (train, val, test): all
    three were seen while it was built (the validation set picked its epoch)."""
    parts: dict[str, list[tuple[str, str]]] = {"train": [], "val": [], "test": []}
    with gzip.open(shipped_folder(name) / "training.csv.gz", "rt") as handle:
        for row in csv.DictReader(handle):
            parts[row["part"]].append((row["material_id"], row["reduced_formula"]))
    return parts


def seen_materials(name: str, ids: list[str], formulas: list[str]) -> tuple[int, int]:
    """How many of ``ids`` a shipped source trained or validated on, and how many of the
    reduced ``formulas`` it saw (any polymorph): (0, 0) for a clean source."""
    from pymatgen.core import Composition

    parts = training_materials(name)
    seen = parts["train"] + parts["val"]
    seen_ids = {i for i, _ in seen}
    seen_formulas = {f for _, f in seen}
    n_ids = sum(i in seen_ids for i in ids)
    n_formulas = sum(Composition(f).reduced_formula in seen_formulas for f in set(formulas))
    return n_ids, n_formulas


def _load_shipped(name: str) -> TrainedModel:
    folder, card = shipped_folder(name), shipped()[name]
    model_file = folder / "model.pt"
    digest = hashlib.sha256(model_file.read_bytes()).hexdigest()
    if digest != card["model_sha256"]:
        raise ValueError(
            f"{model_file}: SHA-256 {digest} differs from its model card's "
            f"{card['model_sha256']}; the file was changed or damaged, reinstall tlmat"
        )
    trained = load_checkpoint(model_file)
    trained.provenance.update(name=name, model_card=str(folder / "card.md"), sha256=digest)
    return trained


def load_source(source: str | Path) -> TrainedModel:
    """A source model from a registered name (``cgcnn/formation-energy-per-atom``, a
    foundation model an architecture loads from its package, ``chgnet/0.3.0``, or a
    shipped tlmat source, ``tlmat/mp-eform-cgcnn``), a tlmat checkpoint, or an original
    CGCNN ``.pth.tar``."""
    if isinstance(source, str) and source in registry.sources():
        return registry.load_published(source)
    if isinstance(source, str) and source in shipped():
        return _load_shipped(source)
    if isinstance(source, str) and source in PRETRAINED:
        entry = PRETRAINED[source]
        trained = load_checkpoint(fetch(source))
        trained.provenance["name"] = source
        # the original files do not say what they predict: the registry does
        trained.target = trained.target.model_copy(
            update={
                "name": entry.target or trained.target.name,
                "unit": entry.unit,
                "log10_of": entry.log10_of,
                "classes": entry.classes,
            }
        )
        return trained
    path = Path(source)
    if not path.exists():
        known = [*PRETRAINED, *registry.sources(), *shipped()]
        raise FileNotFoundError(
            f"{source}: neither a file nor a registered model ({', '.join(known)})"
        )
    return load_checkpoint(path)


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
    return trained, strategy
