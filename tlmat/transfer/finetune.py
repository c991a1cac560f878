"""Fine-tune a source model on a target with safe defaults, and compare strategies.

Safe defaults (what the original CGCNN ``--resume``, ALIGNN and matgl get wrong):

- the target normaliser is refitted on the target's training split;
- epoch counter, optimiser state and best metric start afresh (only weights are taken);
- the head is re-initialised when the target's name or dimension differs from the
  source's (``keep_head=True`` to keep it);
- the source model's zero-shot prediction is reported next to the fine-tuned one.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tlmat.data.dataset import GraphDataset
from tlmat.data.splits import Split
from tlmat.datasets import REGISTRY, fetch
from tlmat.evaluation.baselines import BASELINES, fit_predict
from tlmat.evaluation.metrics import regression_metrics
from tlmat.models.checkpoint import TrainedModel, build_model, load_checkpoint
from tlmat.models.targets import TargetSpec
from tlmat.training.config import TrainConfig
from tlmat.training.fit import fit, predict, prepare_run_dir
from tlmat.transfer.features import extract_features, feature_regressor
from tlmat.transfer.strategies import FEATURE_STRATEGIES, preset

logger = logging.getLogger("tlmat")

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
    import torch

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


@dataclass
class StrategyResult:
    strategy: str
    test: dict[str, float]
    val_mae: float
    seconds: float
    epochs: int = 0
    predictions: np.ndarray | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def zero_shot(
    source: TrainedModel, dataset: GraphDataset, split: Split, target: str
) -> dict[str, dict[str, float]]:
    """The source's raw predictions on the test split, and the same after a linear
    recalibration a·ŷ + b fitted on the training split (units may differ: eV/atom vs eV
    per cell)."""
    y = dataset.targets[target]
    raw_test = predict(source, dataset, split.test).reshape(len(split.test), -1)[:, 0]
    raw_train = predict(source, dataset, split.train).reshape(len(split.train), -1)[:, 0]
    a, b = np.polyfit(raw_train, y[split.train], 1)
    return {
        "zero-shot": regression_metrics(y[split.test], raw_test),
        "zero-shot+linear": regression_metrics(y[split.test], a * raw_test + b),
    }


def run_strategy(
    name: str,
    source: TrainedModel,
    dataset: GraphDataset,
    split: Split,
    config: TrainConfig,
    run_dir: str | Path,
    keep_head: bool = False,
    freeze_k: int = 1,
    overwrite: bool = False,
) -> StrategyResult:
    """Train one strategy (``scratch`` uses the source's architecture with random weights)
    and evaluate it on the test split."""
    start = time.perf_counter()
    y = dataset.targets[config.target]
    if name == "base" or name in BASELINES or name in FEATURE_STRATEGIES:
        run_dir = Path(run_dir)
        prepare_run_dir(run_dir, overwrite)
        prediction, val_mae, extra = _predict_without_training(name, source, dataset, split, config)
        result = StrategyResult(
            name,
            regression_metrics(y[split.test], prediction),
            val_mae,
            time.perf_counter() - start,
            predictions=prediction,
            extra=extra,
        )
        _write_result(run_dir, result, config, dataset, split)
        return result

    strategy = preset(name, k=freeze_k)
    if strategy.from_source:
        model = copy.deepcopy(source)
        if not keep_head and _target_changed(source.target, config.target):
            strategy = strategy.model_copy(update={"reinit_head": True})
    else:
        model = fresh_like(source, config.seed)
    fitted = fit(model, dataset, split, config, run_dir, strategy, overwrite=overwrite)
    prediction = predict(fitted.trained, dataset, split.test)
    result = StrategyResult(
        strategy.name,
        regression_metrics(y[split.test], prediction),
        fitted.best_val_mae,
        fitted.seconds,
        fitted.epochs,
        prediction,
        {"seconds_per_epoch": fitted.seconds / max(fitted.epochs, 1)},
    )
    _write_result(Path(run_dir), result, config, dataset, split)
    return result


def _predict_without_training(
    name: str, source: TrainedModel, dataset: GraphDataset, split: Split, config: TrainConfig
) -> tuple[np.ndarray, float, dict[str, Any]]:
    """Test predictions, validation MAE and details of the methods that fine-tune no
    network: the training mean, descriptor baselines, and source features + MLP/RF."""
    y = dataset.targets[config.target]
    if name == "base":  # Gupta et al.'s "Base" model: the training mean, the floor to beat
        mean = float(np.mean(y[split.train]))
        val_mae = float(np.abs(mean - y[split.val]).mean()) if len(split.val) else float("nan")
        return np.full(len(split.test), mean), val_mae, {}
    if name in BASELINES:
        prediction, extra = fit_predict(
            name, dataset, split.train, split.test, y[split.train], config.seed
        )
        return prediction, float("nan"), extra
    features = {
        part: extract_features(source, dataset, getattr(split, part), "layers")
        for part in ("train", "val", "test")
    }
    regressor = feature_regressor(
        "rf" if name.endswith("rf") else "mlp",
        config.seed,
        epochs=config.epochs,
        patience=config.early_stopping_patience or config.epochs,
    )
    regressor.fit(features["train"], y[split.train], features["val"], y[split.val])
    val_mae = float(np.abs(regressor.predict(features["val"]) - y[split.val]).mean())
    return (
        regressor.predict(features["test"]),
        val_mae,
        {"n_features": int(features["train"].shape[1])},
    )


def _target_changed(source: TargetSpec, target_name: str) -> bool:
    return source.name != target_name or source.task != "regression"


def _write_result(
    run_dir: Path, result: StrategyResult, config: TrainConfig, dataset: GraphDataset, split: Split
) -> None:
    """``result.json`` (metrics, config) and ``predictions.csv`` (id, true, predicted) on
    the test split, for reports: parity plots and error distributions."""
    import pandas as pd

    pd.DataFrame(
        {
            "id": [dataset.ids[i] for i in split.test],
            "true": dataset.targets[config.target][split.test],
            "predicted": result.predictions,
        }
    ).to_csv(run_dir / "predictions.csv", index=False)
    payload = {
        "strategy": result.strategy,
        "test": result.test,
        "val_mae": result.val_mae,
        "seconds": result.seconds,
        "epochs": result.epochs,
        "config": config.model_dump(),
        **result.extra,
    }
    (run_dir / "result.json").write_text(json.dumps(payload, indent=2))
