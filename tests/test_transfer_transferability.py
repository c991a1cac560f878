"""Transferability scored before fine-tuning: on real perovskites (heat of formation), the
formation-energy CGCNN tlmat ships scores above the same network with random weights,
by LogME and by the ridge probe; scores are reproducible and refuse too few rows."""

from __future__ import annotations

import numpy as np
import pytest

from tlmat.transfer.sources import fresh_like, load_source
from tlmat.transfer.transferability import score_features, transferability


def test_a_formation_energy_source_outscores_random_weights(perovskites) -> None:
    source = load_source("tlmat/mp-eform-cgcnn")
    train = np.arange(100)
    pretrained = transferability(source, perovskites, "heat_ref", train)
    random = transferability(fresh_like(source, seed=0), perovskites, "heat_ref", train)
    assert pretrained.n == random.n == 100
    assert pretrained.logme > random.logme
    assert pretrained.probe_mae < random.probe_mae  # eV per cell
    again = transferability(source, perovskites, "heat_ref", train)
    assert again == pretrained


def test_features_that_are_the_target_score_best(perovskites) -> None:
    y = perovskites.targets["heat_ref"][:100]
    rng = np.random.default_rng(0)
    noise = rng.normal(size=(100, 8))
    informative = score_features(np.column_stack([y, noise]), y)
    uninformative = score_features(noise, y)
    assert informative.probe_mae < 0.05 * uninformative.probe_mae
    assert informative.logme > uninformative.logme + 1
    with pytest.raises(ValueError, match="need ≥ 10"):
        score_features(noise[:6], y[:6])
