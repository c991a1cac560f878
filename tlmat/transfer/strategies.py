"""Transfer strategies as data over a model's named parameter groups.

Every strategy is a preset of one mechanism: which groups are frozen, a learning-rate
factor per group, and whether the head is re-initialised. Groups are the model's own
(``embedding``, ``interactions.0`` … ``interactions.k``, any others the architecture adds,
then ``head``); presets name only ``embedding``, ``interactions.i``, ``backbone`` (every
group but the head) and ``head``, so every strategy works on every architecture.

| preset | paper name | what trains |
|---|---|---|
| ``scratch`` | — | everything, from random weights |
| ``full`` | TL1, "full transfer", fine-tuning | everything, from the source |
| ``freeze-embedding`` | TL2 | all but the embedding |
| ``head-only`` | TL3, "only regression head" | the head (the whole backbone frozen) |
| ``freeze-first-k`` | partial freezing (Lee & Asahi) | embedding and first k interactions frozen |
| ``discriminative`` | lower LR for fine-tuning (Hoffmann et al.) | all, backbone at 0.1 × LR |
| ``l2-sp`` | L2-SP (Li et al. 2018) | all; the backbone pulled toward the source's weights |
| ``lora`` | LoRA (Hu et al. 2021) | the head, and rank-8 adapters on the backbone's linears |
| ``replay`` | source replay (arXiv 2606.12704) | all; each step also fits the source's outputs |

``features+mlp`` / ``features+rf`` (Gupta et al.) use the frozen backbone as a featuriser,
each layer's atom features pooled by their mean; ``features+mlps`` averages five MLPs,
``features+gbt`` fits gradient-boosted trees, ``features+ridge`` a ridge regression;
``moments+…`` pool them by mean, standard deviation, minimum and maximum; see
:mod:`tlmat.transfer.features`.
``base`` (Gupta et al.'s "Base" model) predicts the training mean.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from tlmat.models.base import CrystalModel
from tlmat.models.pooling import MEAN, MOMENTS
from tlmat.transfer.lora import add_adapters

#: the frozen source as a featuriser: strategy → (how layers are pooled, the regressor):
#: the mean (Gupta et al.), or the mean, standard deviation and extremes (arXiv 2512.05717)
FEATURE_METHODS: dict[str, tuple[tuple[str, ...], str]] = {
    f"{pooling}+{head}": (statistics, head)
    for pooling, statistics in (("features", MEAN), ("moments", MOMENTS))
    for head in ("mlp", "mlps", "rf", "gbt", "ridge")
}
FEATURE_STRATEGIES = tuple(FEATURE_METHODS)
#: the presets that train a network, in the order of the table above
PRESETS = (
    "scratch", "full", "freeze-embedding", "head-only", "freeze-first-k", "discriminative",
    "l2-sp", "lora", "replay",
)  # fmt: skip
#: the replay set by default: Materials Project crystals (the CGCNN paper's 36k), the
#: domain of tlmat's and the foundation models' sources
REPLAY_DATA = "mp_cgcnn_36k/mp_cgcnn_36k.csv.gz"


class Strategy(BaseModel):
    """Which groups train, how fast, and whether the head starts afresh."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = "full"
    from_source: bool = True
    freeze: tuple[str, ...] = ()
    lr_factors: dict[str, float] = Field(default_factory=dict)
    reinit_head: bool = False
    #: α of the L2-SP penalty α·‖θ − θ_source‖² (θ: the backbone's trainable weights, in
    #: the loss's normalised units), which keeps a fine-tuned backbone near what the
    #: source knew instead of decaying it toward zero; 0: off
    l2_sp: float = Field(0.0, ge=0)
    #: rank r of the LoRA adapters on the frozen groups' linear layers (0: none) and
    #: their α (the update is (α/r)·B·A; :mod:`tlmat.transfer.lora`)
    lora_rank: int = Field(0, ge=0)
    lora_alpha: float = Field(16.0, gt=0)
    #: source replay: structures of the source's domain (a file, folder or registered
    #: dataset) whose source outputs every step also fits (:mod:`tlmat.training.replay`),
    #: how many of them, and the weight of that loss against the target's
    replay: str | None = None
    replay_size: int = Field(1000, ge=1)
    replay_weight: float = Field(1.0, gt=0)


def preset(name: str, k: int = 1, backbone_lr_factor: float = 0.1, l2_sp: float = 0.01) -> Strategy:
    """A named strategy; ``k`` for ``freeze-first-k``, the factor for ``discriminative``,
    α for ``l2-sp``."""
    if name == "scratch":
        return Strategy(name=name, from_source=False)
    if name == "full":
        return Strategy(name=name)
    if name == "freeze-embedding":
        return Strategy(name=name, freeze=("embedding",))
    if name == "head-only":
        return Strategy(name=name, freeze=("backbone",))
    if name == "freeze-first-k":
        frozen = ("embedding", *(f"interactions.{i}" for i in range(k)))
        return Strategy(name=f"freeze-first-{k}", freeze=frozen)
    if name == "discriminative":
        return Strategy(name=name, lr_factors={"backbone": backbone_lr_factor})
    if name == "l2-sp":
        return Strategy(name=name, l2_sp=l2_sp)
    if name == "lora":
        return Strategy(name=name, freeze=("backbone",), lora_rank=8, lora_alpha=16.0)
    if name == "replay":
        return Strategy(name=name, replay=REPLAY_DATA)
    raise ValueError(
        f"unknown strategy {name!r}; choose from scratch, full, freeze-embedding, head-only, "
        f"freeze-first-k, discriminative, l2-sp, lora, replay, {', '.join(FEATURE_STRATEGIES)}"
    )


def _expand(patterns: Iterable[str], names: list[str]) -> set[str]:
    """Group names matching the patterns (``interactions.*``; ``backbone`` = all but head)."""
    out: set[str] = set()
    for pattern in patterns:
        if pattern == "backbone":
            out.update(n for n in names if n != "head")
        elif pattern.endswith(".*"):
            out.update(n for n in names if n.startswith(pattern[:-1]))
        elif pattern in names:
            out.add(pattern)
        else:
            raise ValueError(f"no parameter group {pattern!r}; groups: {names}")
    return out


def apply_strategy(
    model: CrystalModel, strategy: Strategy, lr: float, weight_decay: float = 0.0
) -> list[dict[str, Any]]:
    """Freeze groups (``requires_grad=False``; their batch-norm statistics too, see
    :func:`keep_frozen_in_eval`), re-initialise the head if asked, and return optimiser
    parameter groups with per-group learning rates (and, for L2-SP, the backbone's groups
    with their ``l2_sp`` α: the training module anchors them where they start). With
    ``lora_rank``, the frozen groups' linear layers get adapters, trained as group
    ``lora``."""
    groups = model.groups()
    names = list(groups)
    frozen = _expand(strategy.freeze, names)
    if strategy.reinit_head:
        model.head.reset_parameters()
    factors: dict[str, float] = {}
    for pattern, factor in strategy.lr_factors.items():
        for name in _expand([pattern], names):
            factors[name] = factor
    param_groups = []
    for name, module in groups.items():
        trainable = name not in frozen
        for parameter in module.parameters():
            parameter.requires_grad_(trainable)
        if trainable:
            params = [p for p in module.parameters()]
            if params:
                param_groups.append(
                    {
                        "params": params,
                        "lr": lr * factors.get(name, 1.0),
                        "weight_decay": weight_decay,
                        "name": name,
                        "l2_sp": strategy.l2_sp if name != "head" else 0.0,
                    }
                )
    if strategy.lora_rank:
        frozen_modules = [groups[name] for name in names if name in frozen]
        adapters = add_adapters(frozen_modules, strategy.lora_rank, strategy.lora_alpha)
        if adapters:
            param_groups.append(
                {"params": adapters, "lr": lr, "weight_decay": weight_decay, "name": "lora",
                 "l2_sp": 0.0}
            )  # fmt: skip
    model.frozen_groups = sorted(frozen)
    return param_groups


def keep_frozen_in_eval(model: CrystalModel) -> None:
    """Put frozen groups in eval mode, so that their batch-norm running statistics stay
    those of the source (a frozen layer must not drift)."""
    groups = model.groups()
    for name in getattr(model, "frozen_groups", []):
        groups[name].eval()


def trainable_groups(model: CrystalModel) -> list[str]:
    return [n for n, m in model.groups().items() if any(p.requires_grad for p in m.parameters())]


def count_parameters(module: nn.Module, trainable: bool = True) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable)
