"""Fault cases of the sources tlmat ships (tlmat/pretrained/): weights changed after the
model card was written, a grid whose test materials a shipped source trained on, and
results of a grid whose source has since changed. Each ends in a clear error, never in
a silently leaky or different source."""

from __future__ import annotations

import json
import shutil

import pytest

from tlmat import catalogue
from tlmat.experiments.benchmark import (
    BenchmarkConfig,
    SourceConfig,
    _train_config,
    changed_jobs,
    clean_source_check,
    jobs,
)
from tlmat.models import hub
from tlmat.models.hub import load_source, shipped_folder, training_materials

NAME = "tlmat/mp-eform-cgcnn"


def test_changed_shipped_weights_are_refused(tmp_path, monkeypatch) -> None:
    copy = tmp_path / "pretrained" / "mp-eform-cgcnn"
    shutil.copytree(shipped_folder(NAME), copy)
    model = copy / "model.pt"
    data = bytearray(model.read_bytes())
    data[-100] ^= 0xFF  # one byte of the stored tensors
    model.write_bytes(bytes(data))
    # where the shipped sources live is the catalogue's (the hub reads it from there)
    monkeypatch.setattr(catalogue, "SHIPPED_DIR", tmp_path / "pretrained")
    hub.shipped.cache_clear()
    try:
        with pytest.raises(ValueError, match=r"model\.pt: SHA-256 .* differs from its model card"):
            load_source(NAME)
    finally:
        hub.shipped.cache_clear()


def test_grid_whose_test_materials_the_source_saw_is_refused() -> None:
    """A new grid testing on materials the shipped source trained on (here: five of its
    training structures) is refused, unless it declares saw_test, which marks the rows."""
    seen = training_materials(NAME)["train"][:5]
    ids, formulas = [i for i, _ in seen], [f for _, f in seen]
    config = BenchmarkConfig(
        name="leaky",
        data="mp_cgcnn_36k/mp_cgcnn_36k.csv.gz",
        target="band_gap",
        sizes=[100],
        sources={"mp-all": {"checkpoint": NAME}},
    )
    with pytest.raises(ValueError, match=r"trained on 5 of this grid's 5 held-out materials"):
        clean_source_check(config, "mp-all", config.sources["mp-all"], ids, formulas)
    declared = SourceConfig(checkpoint=NAME, saw_test="shares MP structures")
    counts = clean_source_check(config, "mp-all", declared, ids, formulas)
    assert counts["held_out_seen"]["ids"] == 5
    assert counts["held_out_seen"]["formulas"] == len(set(formulas))


def test_results_from_a_source_since_replaced_are_refused(tmp_path) -> None:
    """Found by the issue-12 re-runs: results written before jobs recorded signatures
    kept only their training settings, so jobs from an earlier pretrained ``mp-all`` would
    have been reused as rows of the shipped ``tlmat/mp-eform-cgcnn`` that replaced it."""
    config = BenchmarkConfig(
        name="replaced",
        data="mp_cgcnn_36k/mp_cgcnn_36k.csv.gz",
        target="band_gap",
        sizes=[100],
        seeds=[0],
        methods=["scratch"],
        sources={
            "mp-all": {"checkpoint": NAME, "methods": ["full"]},
            "mp-10k": {
                "pretrain": {
                    "data": "mp_cgcnn_36k/mp_cgcnn_36k.csv.gz",
                    "target": "formation_energy_per_atom",
                },
                "methods": ["full"],
            },
        },
    )
    results = tmp_path / "results"
    for job in jobs(config):
        folder = job.folder(results)
        folder.mkdir(parents=True)
        recorded = f"elsewhere/results/sources/{job.source}/model.pt"  # pretrained then
        manifest = {"config": _train_config(config, job).model_dump(), "source": recorded}
        (folder / "result.json").write_text(json.dumps(manifest))
    changed = changed_jobs(config, results)
    # the pretrained source moved with its folder: the same; mp-all is now another model
    assert list(changed) == [str(j.folder(results)) for j in jobs(config) if j.source == "mp-all"]
    assert "→ tlmat/mp-eform-cgcnn" in changed[next(iter(changed))][0]


def test_a_source_whose_features_are_not_numbers_stores_nothing(perovskites, tmp_path) -> None:
    """A source that gives NaN for some structures (a foundation model once gave NaN and
    1e29 for most structures in one grid process) stops the grid naming the source and
    a structure, and writes no table that every job would read; an MLP refuses such
    features rather than failing deep inside training."""
    import numpy as np
    import torch

    from tlmat.experiments.benchmark import OUTPUTS, source_outputs
    from tlmat.transfer.features import MLPRegressor

    config = BenchmarkConfig(
        name="nan", data="perov_5/val", target="heat_ref", sizes=[10],
        sources={"cgcnn-mp": "cgcnn/formation-energy-per-atom"},
        methods=["features+mlp"],
    )  # fmt: skip
    source = load_source("cgcnn/formation-energy-per-atom")
    dataset = perovskites.subset(list(range(12)))
    real = source.model.backbone.layer_features

    def with_nan(batch, statistics):
        features = real(batch, statistics)
        first = next(iter(features))
        features[first] = features[first].clone()
        features[first][0, 0] = torch.nan  # the first structure of every batch
        return features

    source.model.backbone.layer_features = with_nan
    with pytest.raises(ValueError, match=r"source cgcnn-mp: non-finite .* for \d+ of 12"):
        source_outputs(config, "cgcnn-mp", tmp_path, source, dataset)
    assert not (tmp_path / "cgcnn-mp" / OUTPUTS).exists()
    X = np.ones((10, 3))
    X[2, 1] = np.inf
    with pytest.raises(ValueError, match="1 training rows of features are not finite"):
        MLPRegressor(epochs=1).fit(X, np.arange(10.0), X[:0] + 1, np.arange(0.0))
