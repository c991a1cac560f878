"""Run one method on one split and score it on the test set: every transfer strategy,
the descriptor baselines, source features + MLP/RF, the training-mean "Base" model, and
the source's zero-shot prediction. Each run leaves ``result.json`` and
``predictions.csv`` (and, for networks, the run folder of :func:`tlmat.training.fit`)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tlmat.data.dataset import GraphDataset
from tlmat.data.splits import Split
from tlmat.evaluation.metrics import regression_metrics
from tlmat.experiments.baselines import BASELINES, fit_predict
from tlmat.models.checkpoint import TrainedModel
from tlmat.models.prediction import predict
from tlmat.training.config import TrainConfig
from tlmat.training.fit import data_fingerprint, fit, run_settings, stable_provenance
from tlmat.training.rundir import (
    SETTINGS,
    prepare_run_dir,
    record,
    require_same_settings,
    resumable_settings,
    write_atomic,
    write_json,
)
from tlmat.transfer.features import extract_features, feature_regressor
from tlmat.transfer.sources import prepare_transfer
from tlmat.transfer.strategies import FEATURE_METHODS, FEATURE_STRATEGIES


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
    source: TrainedModel,
    dataset: GraphDataset,
    split: Split,
    target: str,
    predictions: np.ndarray | None = None,
) -> dict[str, dict[str, float]]:
    """The source's raw predictions on the test split, and the same after a linear
    recalibration a·ŷ + b fitted on the training split (units may differ: eV/atom vs eV
    per cell). ``predictions``: the source's raw outputs for every structure of
    ``dataset``, when already computed."""
    y = dataset.targets[target]
    if predictions is None:
        raw_test = predict(source, dataset, split.test).reshape(len(split.test), -1)[:, 0]
        raw_train = predict(source, dataset, split.train).reshape(len(split.train), -1)[:, 0]
    else:
        raw = predictions.reshape(len(dataset), -1)[:, 0]
        raw_test, raw_train = raw[split.test], raw[split.train]
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
    reuse: bool = False,
    features: np.ndarray | None = None,
    provenance: dict[str, Any] | None = None,
) -> StrategyResult:
    """Train one strategy (``scratch`` uses the source's architecture with random weights)
    and evaluate it on the test split. With ``reuse``, a finished run in ``run_dir`` made
    with the same settings is read back instead of trained again (other settings are
    refused, unless ``overwrite``). ``features``: the source's layer features of every
    structure of ``dataset`` (row i ↔ ``dataset[i]``), pooled as the strategy pools them,
    computed once for many feature-strategy runs instead of once per run.
    ``provenance``: what the run is for, kept in its model."""
    run_dir = Path(run_dir)
    if name == "base" or name in BASELINES or name in FEATURE_STRATEGIES:
        return _fitted_without_network(
            name, source, dataset, split, config, run_dir, overwrite, reuse, features
        )
    model, strategy = prepare_transfer(
        name,
        source,
        config.target,
        keep_head=keep_head,
        freeze_k=freeze_k,
        seed=config.seed,
        out_dim=config.target_spec().out_dim,
    )
    # finished: scored, and its model kept (a result without its model is not reused)
    if reuse and not overwrite and all((run_dir / n).exists() for n in ("result.json", "model.pt")):
        return _reused(
            run_dir, strategy.name, run_settings(model, dataset, split, config, strategy)
        )
    fitted = fit(model, dataset, split, config, run_dir, strategy, provenance, overwrite)
    prediction = predict(fitted.trained, dataset, split.test)
    result = StrategyResult(
        strategy.name,
        regression_metrics(dataset.targets[config.target][split.test], prediction),
        fitted.best_val_mae,
        fitted.seconds,
        fitted.epochs,
        prediction,
        {"seconds_per_epoch": fitted.seconds / max(fitted.epochs, 1)},
    )
    _write_result(run_dir, result, config, dataset, split)
    return result


def _fitted_without_network(
    name, source, dataset, split, config, run_dir: Path, overwrite, reuse, features
) -> StrategyResult:
    """The methods that fine-tune no network (the training mean, descriptor baselines,
    source features + MLP/RF), with their settings recorded for reuse."""
    start = time.perf_counter()
    if config.loss == "gaussian_nll":
        raise ValueError(
            f"loss gaussian_nll trains a network's heteroscedastic head; {name!r} fits "
            "no network head, so it cannot predict a variance: use a transfer "
            "strategy or scratch"
        )
    settings = {
        "method": name,
        "config": resumable_settings(config.model_dump()),
        "source": None
        if name == "base" or name in BASELINES
        else {
            "model": source.model.config.model_dump(),
            "provenance": stable_provenance(source.provenance),
        },
        "data": {"fingerprint": data_fingerprint(dataset, split, config.target)},
    }
    if reuse and not overwrite and (run_dir / "result.json").exists():
        return _reused(run_dir, name, settings)
    prepare_run_dir(run_dir, overwrite)
    record(run_dir, SETTINGS)
    write_json(run_dir / SETTINGS, settings)
    prediction, val_mae, extra = _predict_without_training(
        name, source, dataset, split, config, features
    )
    result = StrategyResult(
        name,
        regression_metrics(dataset.targets[config.target][split.test], prediction),
        val_mae,
        time.perf_counter() - start,
        predictions=prediction,
        extra=extra,
    )
    _write_result(run_dir, result, config, dataset, split)
    return result


def _reused(run_dir: Path, name: str, settings: dict[str, Any]) -> StrategyResult:
    """The finished run in ``run_dir``, if it was made with ``settings``."""
    import pandas as pd

    require_same_settings(run_dir, settings, f"finished {name} run")
    payload = json.loads((run_dir / "result.json").read_text())
    predictions = pd.read_csv(run_dir / "predictions.csv")["predicted"].to_numpy()
    return StrategyResult(
        payload["strategy"],
        payload["test"],
        payload["val_mae"],
        payload["seconds"],
        payload.get("epochs", 0),
        predictions,
        {"reused": True, **{k: payload[k] for k in ("seconds_per_epoch",) if k in payload}},
    )


def _predict_without_training(
    name: str,
    source: TrainedModel,
    dataset: GraphDataset,
    split: Split,
    config: TrainConfig,
    features: np.ndarray | None = None,
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
    if features is not None and len(features) != len(dataset):
        raise ValueError(f"{len(features)} feature rows for {len(dataset)} structures")
    statistics, kind = FEATURE_METHODS[name]
    parts = {
        part: extract_features(
            source, dataset, getattr(split, part), "layers", statistics=statistics
        )
        if features is None
        else features[getattr(split, part)]
        for part in ("train", "val", "test")
    }
    regressor = feature_regressor(
        kind,
        config.seed,
        epochs=config.epochs,
        patience=config.early_stopping_patience or config.epochs,
    )
    regressor.fit(parts["train"], y[split.train], parts["val"], y[split.val])
    val_mae = float(np.abs(regressor.predict(parts["val"]) - y[split.val]).mean())
    return (
        regressor.predict(parts["test"]),
        val_mae,
        {"n_features": int(parts["train"].shape[1])},
    )


def _write_result(
    run_dir: Path, result: StrategyResult, config: TrainConfig, dataset: GraphDataset, split: Split
) -> None:
    """``result.json`` (metrics, config) and ``predictions.csv`` (id, true, predicted) on
    the test split, for reports: parity plots and error distributions."""
    import pandas as pd

    record(run_dir, "predictions.csv", "result.json")
    frame = pd.DataFrame(
        {
            "id": [dataset.ids[i] for i in split.test],
            "true": dataset.targets[config.target][split.test],
            "predicted": result.predictions,
        }
    )
    write_atomic(run_dir / "predictions.csv", frame.to_csv(index=False))
    payload = {
        "strategy": result.strategy,
        "test": result.test,
        "val_mae": result.val_mae,
        "seconds": result.seconds,
        "epochs": result.epochs,
        "config": config.model_dump(),
        **result.extra,
    }
    write_json(run_dir / "result.json", payload)
