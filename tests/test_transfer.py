"""Transfer strategies freeze exactly what they say; fine-tuning has safe defaults."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tlmat.data import load_dataset, random_split
from tlmat.experiments.runs import run_strategy, zero_shot
from tlmat.graphs import GraphSettings
from tlmat.models.pooling import MEAN, MOMENTS
from tlmat.training import TrainConfig, fit
from tlmat.transfer import apply_strategy, keep_frozen_in_eval, preset, trainable_groups
from tlmat.transfer.features import extract_features
from tlmat.transfer.sources import load_source

GROUPS = [
    "embedding",
    "interactions.0",
    "interactions.1",
    "interactions.2",
    "interactions.3",
    "readout",
    "head",
]


@pytest.fixture(scope="module")
def source():
    return load_source("cgcnn/formation-energy-per-atom")


@pytest.fixture(scope="module")
def perovskites(data: Path, tmp_path_factory):
    return load_dataset(
        data / "perov_5" / "val.csv.gz",
        GraphSettings.preset("cgcnn"),
        ["heat_ref"],
        cache_dir=tmp_path_factory.mktemp("cache"),
        limit=90,
    )


def test_groups_are_named_in_forward_order(source) -> None:
    assert list(source.model.groups()) == GROUPS


@pytest.mark.parametrize(
    ("name", "frozen"),
    [
        ("full", []),
        ("scratch", []),
        ("freeze-embedding", ["embedding"]),
        ("head-only", GROUPS[:-1]),
        ("freeze-first-k", ["embedding", "interactions.0"]),
        ("discriminative", []),
    ],
)
def test_strategy_freezes_exactly_its_groups(name, frozen, source, perovskites) -> None:
    model = copy.deepcopy(source.model)
    strategy = preset(name, k=1)
    groups = apply_strategy(model, strategy, lr=1e-2)
    assert trainable_groups(model) == [g for g in GROUPS if g not in frozen]
    for group_name, module in model.groups().items():
        assert all(p.requires_grad == (group_name not in frozen) for p in module.parameters())

    # one real optimisation step on real structures
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    keep_frozen_in_eval(model)
    optimizer = torch.optim.Adam(groups)
    batch = perovskites.batch(list(range(32)), "heat_ref")
    loss = (model(batch).squeeze(-1) - batch.y).abs().mean()
    loss.backward()
    optimizer.step()
    after = model.state_dict()
    for group_name, module in model.groups().items():
        prefix = next(k for k, v in model.named_modules() if v is module)
        keys = [k for k in before if k.startswith(prefix + ".")]
        changed = any(not torch.equal(before[k], after[k]) for k in keys)
        if group_name in frozen:  # weights and batch-norm statistics bit-identical
            assert not changed, group_name
        else:
            assert changed, group_name


def test_discriminative_learning_rates(source) -> None:
    model = copy.deepcopy(source.model)
    groups = apply_strategy(model, preset("discriminative", backbone_lr_factor=0.1), lr=1e-3)
    lrs = {g["name"]: g["lr"] for g in groups}
    assert lrs["head"] == pytest.approx(1e-3)
    assert all(lrs[g] == pytest.approx(1e-4) for g in GROUPS[:-1])


def test_unknown_group_is_an_error(source) -> None:
    from tlmat.transfer import Strategy

    with pytest.raises(ValueError, match="no parameter group 'convs'"):
        apply_strategy(copy.deepcopy(source.model), Strategy(freeze=("convs",)), lr=1e-3)


def test_finetune_safe_defaults(source, perovskites, tmp_path: Path) -> None:
    split = random_split(len(perovskites), (40, 20, 30), seed=0)
    config = TrainConfig(
        target="heat_ref", epochs=2, progress_bar=False, early_stopping_patience=None
    )
    original_head = source.model.head.out.weight.clone()
    result = run_strategy("full", source, perovskites, split, config, tmp_path / "full")
    manifest = json.loads((tmp_path / "full" / "run.json").read_text())
    # new target → new head; the source itself is untouched
    assert manifest["strategy"]["reinit_head"] is True
    assert torch.equal(source.model.head.out.weight, original_head)
    # normaliser refitted on the target's training split, not the source's E_f statistics
    y = perovskites.targets["heat_ref"][split.train]
    assert manifest["target"]["mean"] == pytest.approx(y.mean())
    assert manifest["target"]["mean"] != pytest.approx(source.target.mean)
    # training starts afresh: epoch counter from 0, not the source's 968
    assert manifest["epochs"] == 2 and result.epochs == 2
    assert manifest["provenance"]["source_epoch"] == 968

    kept = run_strategy(
        "full", source, perovskites, split, config, tmp_path / "kept", keep_head=True
    )
    assert (
        json.loads((tmp_path / "kept" / "run.json").read_text())["strategy"]["reinit_head"] is False
    )
    assert np.isfinite(kept.test["mae"])


def test_zero_shot_and_linear_recalibration(source, perovskites) -> None:
    split = random_split(len(perovskites), (40, 20, 30), seed=0)
    scores = zero_shot(source, perovskites, split, "heat_ref")
    # eV/atom predictions against eV/cell targets: recalibration must help
    assert scores["zero-shot+linear"]["mae"] < scores["zero-shot"]["mae"]


@pytest.mark.parametrize("kind", ["embedding", "layers"])
def test_feature_extraction_shapes(kind, source, perovskites) -> None:
    features = extract_features(source, perovskites, list(range(10)), kind)
    assert features.shape == (10, 32 if kind == "embedding" else 64 * 5 + 32)
    again = extract_features(source, perovskites, list(range(10)), kind)
    np.testing.assert_array_equal(features, again)


@pytest.mark.parametrize(
    "name",
    ["features+rf", "features+mlp", "features+mlps", "moments+mlp", "moments+gbt", "moments+ridge"],
)
def test_feature_strategies_run(name, source, perovskites, tmp_path: Path) -> None:
    split = random_split(len(perovskites), (40, 20, 30), seed=0)
    config = TrainConfig(target="heat_ref", epochs=5, early_stopping_patience=3)
    result = run_strategy(name, source, perovskites, split, config, tmp_path / name)
    assert result.predictions.shape == (30,) and np.isfinite(result.test["mae"])
    assert json.loads((tmp_path / name / "result.json").read_text())["strategy"] == name
    # the CGCNN's five layers of 64 and its embedding of 32; moments pool layers 4 ways
    width = 64 * 5 * (4 if name.startswith("moments") else 1) + 32
    assert result.extra["n_features"] == width


def test_mlp_ensemble_averages_its_seeded_members(source, perovskites) -> None:
    """``+mlps`` is the mean of MLPs of seeds seed … seed + 4, each as ``+mlp`` fits it."""
    from tlmat.transfer.features import feature_regressor

    X = extract_features(source, perovskites, list(range(60)), "layers")
    y = perovskites.targets["heat_ref"][:60]
    ensemble = feature_regressor("mlps", seed=3, epochs=4, patience=4)
    ensemble.fit(X[:40], y[:40], X[40:50], y[40:50])
    alone = [
        feature_regressor("mlp", seed=s, epochs=4, patience=4).fit(
            X[:40], y[:40], X[40:50], y[40:50]
        )
        for s in range(3, 8)
    ]
    expected = np.mean([m.predict(X[50:]) for m in alone], axis=0)
    np.testing.assert_allclose(ensemble.predict(X[50:]), expected, rtol=1e-6)
    assert np.ptp([m.predict(X[50:])[0] for m in alone]) > 0  # the members differ


def test_frozen_groups_stay_in_eval_mode(source) -> None:
    model = copy.deepcopy(source.model)
    apply_strategy(model, preset("freeze-first-k", k=1), lr=1e-3)
    model.train()
    keep_frozen_in_eval(model)  # what the training module does at every epoch start
    assert not model.backbone.convs[0].bn1.training  # frozen: statistics stay the source's
    assert model.backbone.convs[1].bn1.training


def test_fit_rejects_strategy_that_trains_nothing(source, perovskites, tmp_path) -> None:
    from tlmat.transfer import Strategy

    split = random_split(len(perovskites), (40, 20, 30), seed=0)
    everything = Strategy(name="frozen", freeze=tuple(GROUPS))
    with pytest.raises(ValueError, match="nothing to train"):
        fit(
            copy.deepcopy(source),
            perovskites,
            split,
            TrainConfig(target="heat_ref"),
            tmp_path / "x",
            everything,
        )


def test_l2_sp_keeps_the_backbone_near_the_source(source, perovskites, tmp_path) -> None:
    """Fine-tuned with L2-SP, the backbone ends nearer the source's weights than with
    plain full fine-tuning (same data, seed and epochs), and the penalty the module adds
    is α·‖θ − θ_source‖² of the backbone's weights alone."""
    from tlmat.training.module import PropertyModule
    from tlmat.transfer.sources import prepare_transfer

    split = random_split(len(perovskites), (40, 20, 30), seed=0)
    config = TrainConfig(target="heat_ref", epochs=6, lr=1e-2, early_stopping_patience=None)
    start = [p.detach().clone() for p in source.model.backbone.parameters()]
    drift = {}
    for name in ("full", "l2-sp"):
        trained, strategy = prepare_transfer(name, source, "heat_ref")
        strategy = strategy.model_copy(update={"l2_sp": 1.0} if name == "l2-sp" else {})
        fit(trained, perovskites, split, config, tmp_path / name, strategy)
        moved = zip(trained.model.backbone.parameters(), start, strict=True)
        drift[name] = float(sum((p.detach() - p0).pow(2).sum() for p, p0 in moved))
    assert 0 < drift["l2-sp"] < 0.5 * drift["full"], drift

    trained, strategy = prepare_transfer("l2-sp", source, "heat_ref")
    groups = apply_strategy(trained.model, strategy, lr=1e-3)
    module = PropertyModule(trained.model, source.target, config, groups, 1)
    with torch.no_grad():
        for p in trained.model.parameters():
            p.add_(0.01)
    backbone = sum(p.numel() for p in trained.model.backbone.parameters() if p.requires_grad)
    assert float(module._drift().detach()) == pytest.approx(0.01 * backbone * 0.01**2, rel=1e-4)


def test_lora_run_writes_a_plain_model_that_predicts_and_is_reused(
    source, perovskites, tmp_path
) -> None:
    """A LoRA run trains adapters only (the backbone's weights are the source's but for
    the merged low-rank updates), writes a model.pt of the plain architecture, and a
    second call reuses the finished run."""
    from tlmat.models.checkpoint import load_checkpoint
    from tlmat.training import predict

    split = random_split(len(perovskites), (40, 20, 30), seed=0)
    config = TrainConfig(target="heat_ref", epochs=3, lr=1e-2, early_stopping_patience=None)
    result = run_strategy("lora", source, perovskites, split, config, tmp_path / "lora")
    manifest = json.loads((tmp_path / "lora" / "run.json").read_text())
    assert manifest["strategy"]["lora_rank"] == 8 and np.isfinite(result.test["mae"])
    loaded = load_checkpoint(tmp_path / "lora" / "model.pt")
    assert set(loaded.model.state_dict()) == set(source.model.state_dict())
    # the low-rank update moved each adapted weight matrix, at most by rank 8
    before = source.model.backbone.convs[0].fc_full.weight
    update = loaded.model.backbone.convs[0].fc_full.weight - before
    assert 0 < torch.linalg.matrix_rank(update.detach()).item() <= 8
    predicted = predict(loaded, perovskites, split.test).reshape(-1)
    y = perovskites.targets["heat_ref"][split.test]
    assert np.abs(predicted - y).mean() == pytest.approx(result.test["mae"], rel=1e-5)
    again = run_strategy("lora", source, perovskites, split, config, tmp_path / "lora", reuse=True)
    assert again.test == result.test


def test_base_model_predicts_the_training_mean(source, perovskites, tmp_path) -> None:
    split = random_split(len(perovskites), (40, 20, 30), seed=0)
    result = run_strategy(
        "base", source, perovskites, split, TrainConfig(target="heat_ref"), tmp_path / "base"
    )
    y = perovskites.targets["heat_ref"]
    np.testing.assert_allclose(result.predictions, np.full(30, y[split.train].mean()))
    assert result.test["mae"] == pytest.approx(np.abs(y[split.test] - y[split.train].mean()).mean())


@pytest.mark.parametrize(
    "name", ["magpie+pls", "magpie+lasso", "magpie+svr", "magpie+rf", "soap+krr", "scm+krr"]
)
def test_descriptor_baselines_on_real_perovskites(name, source, perovskites, tmp_path) -> None:
    split = random_split(len(perovskites), (60, 0, 30), seed=0)
    result = run_strategy(
        name, source, perovskites, split, TrainConfig(target="heat_ref"), tmp_path / name
    )
    y = perovskites.targets["heat_ref"]
    base_mae = np.abs(y[split.test] - y[split.train].mean()).mean()
    assert result.predictions.shape == (30,) and np.isfinite(result.test["mae"])
    assert result.extra["best_params"]  # chosen by inner cross-validation
    if name.startswith("magpie"):
        assert result.extra["n_features"] == 132
    # at 60 structures cross-validated LASSO may rightly shrink to the mean; no baseline
    # may do much worse than it, and the forest beats it
    assert result.test["mae"] < 1.1 * base_mae
    if name in ("magpie+rf", "soap+krr"):
        assert result.test["mae"] < base_mae


@pytest.mark.parametrize("statistics", [MEAN, MOMENTS])
def test_features_mlp_as_one_model_predicts_as_the_mlp(
    statistics, source, perovskites, tmp_path
) -> None:
    """The features+mlp (moments+mlp) regressor joined to its source's backbone (the
    features' standardisation folded into the head's first layer) predicts from
    structures what the MLP predicts from the features, and survives a checkpoint."""
    from tlmat.models.checkpoint import load_checkpoint, save_checkpoint
    from tlmat.training import predict
    from tlmat.transfer.features import (
        MLPRegressor,
        feature_model,
        feature_table,
        iter_layer_features,
    )

    X, names = feature_table(
        iter_layer_features(source, perovskites, None, None, statistics=statistics)
    )
    layers = list(dict.fromkeys(n.rsplit(":", 1)[0] for n in names))
    y = perovskites.targets["heat_ref"]
    mlp = MLPRegressor(hidden=(64, 32), epochs=5, patience=5).fit(X[:60], y[:60], X[60:], y[60:])
    target = TrainConfig(target="heat_ref", unit="eV/cell").target_spec()
    joined = feature_model(source, mlp, layers, target)
    expected = mlp.predict(X)
    assert predict(joined, perovskites).reshape(-1) == pytest.approx(expected, abs=1e-4)
    save_checkpoint(joined, tmp_path / "model.pt")
    again = load_checkpoint(tmp_path / "model.pt")
    assert again.model.head.pooled_layers == layers
    assert predict(again, perovskites).reshape(-1) == pytest.approx(expected, abs=1e-4)
    # the source itself is unchanged (its own head still reads the crystal embedding)
    assert source.model.head.pooled_layers is None


def test_ridge_regressor_picks_alpha_by_validation(source, perovskites) -> None:
    """Ridge on the CGCNN source's pooled features of real perovskites: the penalty is
    the one with the lowest validation MAE, it beats the training mean there, and the
    standardisation makes a column's unit irrelevant."""
    from tlmat.transfer.features import RidgeRegressor

    X = extract_features(source, perovskites)
    y = perovskites.targets["heat_ref"]
    train, val = slice(0, 60), slice(60, None)
    ridge = RidgeRegressor().fit(X[train], y[train], X[val], y[val])
    errors = [
        np.abs(
            RidgeRegressor([a]).fit(X[train], y[train], X[val], y[val]).predict(X[val]) - y[val]
        ).mean()
        for a in ridge.alphas
    ]
    assert ridge.alpha == ridge.alphas[int(np.argmin(errors))]
    assert ridge.val_mae == pytest.approx(min(errors))
    assert ridge.val_mae < np.abs(y[val] - y[train].mean()).mean()
    rescaled = X.copy()
    rescaled[:, 0] *= 1000.0  # e.g. a feature in meV instead of eV
    again = RidgeRegressor().fit(rescaled[train], y[train], rescaled[val], y[val])
    assert again.predict(rescaled[val]) == pytest.approx(ridge.predict(X[val]), rel=1e-4, abs=1e-5)
    # without a validation set, generalised cross-validation chooses among the same
    assert RidgeRegressor().fit(X[train], y[train]).alpha in ridge.alphas


def test_a_fitted_ridge_is_a_model_head_that_predicts_as_it_does(source, perovskites) -> None:
    """``features+ridge`` as one model (what ``tlmat fit`` saves): the source's backbone
    with the ridge, its standardisation folded into the head, predicts from structures
    what the ridge predicts from the features."""
    from tlmat.models.prediction import predict
    from tlmat.models.targets import TargetSpec
    from tlmat.transfer.features import RidgeRegressor, feature_model

    rows = list(range(40))
    X = extract_features(source, perovskites, rows, "layers")
    y = perovskites.targets["heat_ref"][rows]
    ridge = RidgeRegressor().fit(X[:30], y[:30], X[30:], y[30:])
    layers = [n for n in source.model.layer_features(perovskites.batch([0]))]
    model = feature_model(source, ridge, layers, TargetSpec(name="heat_ref"), "features+ridge")
    assert model.provenance["strategy"] == "features+ridge"
    np.testing.assert_allclose(
        predict(model, perovskites, rows).ravel(), ridge.predict(X), rtol=1e-4, atol=1e-4
    )


@pytest.mark.parametrize("kind", ["ridge", "mlp"])
def test_a_column_constant_in_training_cannot_move_a_prediction(kind, source, perovskites) -> None:
    """A feature that does not vary over the training structures (30 of a CGCNN's did on
    100 perovskites) carries no information: a new structure's value of it, however far
    off, leaves the prediction of the ridge or MLP (and of its folded head) unchanged."""
    from tlmat.transfer.features import feature_regressor, informative_columns

    rows = list(range(60))
    X = extract_features(source, perovskites, rows, "layers").astype(np.float64)
    # constant in training to float32 rounding, and off on the structures predicted below
    X[:, 5] = 1234.5 + 1e-5 * np.random.default_rng(0).normal(size=len(X))
    y = perovskites.targets["heat_ref"][rows]
    assert not informative_columns(X[:40])[5] and informative_columns(X[:40]).sum() > 100
    regressor = feature_regressor(kind, seed=0, epochs=5, patience=5)
    regressor.fit(X[:40], y[:40], X[40:50], y[40:50])
    moved = X[50:].copy()
    moved[:, 5] = 1e6
    np.testing.assert_array_equal(regressor.predict(moved), regressor.predict(X[50:]))
    assert np.abs(regressor.predict(X[50:]) - y[50:]).mean() < 10 * np.std(y)
