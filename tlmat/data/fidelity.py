"""Several levels of theory in one dataset (multi-fidelity learning, Chen et al. 2021;
Hoffmann et al.'s PBE → SCAN transfer), and Δ-learning of the difference between two.

A multi-fidelity dataset has one row per (structure, fidelity) label: the same graph once
for each level of theory that labelled it, its value in one target column and the level's
position in :data:`FIDELITY`. A model whose head has the same fidelities
(:meth:`~tlmat.models.base.CrystalModel.add_fidelities`) reads that column from each batch.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from tlmat.data.dataset import FIDELITY, GraphDataset, concat
from tlmat.data.splits import Split

__all__ = ["FIDELITY", "fidelity_of", "fidelity_split", "stack_fidelities", "with_delta"]


def stack_fidelities(
    levels: Mapping[str, tuple[GraphDataset, str]], target: str = "y"
) -> GraphDataset:
    """One dataset of every level's labels: ``levels`` maps each fidelity's name (cheapest
    first, the one to predict last) to a dataset and the column of it that holds that
    fidelity's values, all built with the same graph settings. Each row keeps its id and
    formula; its value is in ``target`` and its fidelity's position in :data:`FIDELITY`."""
    if not levels:
        raise ValueError("no fidelities to stack")
    if target == FIDELITY:
        raise ValueError(f"{FIDELITY!r} names the fidelity column; call the target otherwise")
    stacked = None
    for k, (name, (dataset, column)) in enumerate(levels.items()):
        if column not in dataset.targets:
            raise ValueError(f"fidelity {name!r}: the dataset has no column {column!r}")
        values = np.asarray(dataset.targets[column], dtype=np.float64)
        level = dataset.subset(range(len(dataset)))
        level.targets = {target: values, FIDELITY: np.full(len(dataset), float(k))}
        stacked = level if stacked is None else concat(stacked, level)
    return stacked


def fidelity_of(dataset: GraphDataset) -> np.ndarray:
    """Each row's fidelity position (integers)."""
    if FIDELITY not in dataset.targets:
        raise ValueError(f"{dataset.source}: not a multi-fidelity dataset (no {FIDELITY!r})")
    return dataset.targets[FIDELITY].astype(int)


def fidelity_split(
    stacked: GraphDataset,
    n_train: int,
    n_val: int,
    n_test: int,
    seed: int = 0,
    fidelity: int = -1,
    low_limit: int | None = None,
) -> Split:
    """A split of a stacked dataset for learning one fidelity (the last by default) from
    scarce labels beside cheaper ones: ``n_test`` and ``n_val`` materials that have that
    fidelity are drawn, then ``n_train`` others sharing no id or reduced formula with
    them; validation and test rows are that
    fidelity's only. Training takes the chosen materials' labels at every fidelity and
    the other fidelities' labels of the remaining materials (at most ``low_limit`` of
    them), but no label of any fidelity for a material whose id or reduced formula is
    among the validation or test materials: what is tested is never seen at any level."""
    level = fidelity_of(stacked)
    high = level.max() if fidelity == -1 else fidelity
    rng = np.random.default_rng(seed)
    candidates = rng.permutation(np.flatnonzero(level == high))
    if n_test + n_val + n_train > len(candidates):
        raise ValueError(
            f"{n_test} test + {n_val} validation + {n_train} training structures asked, "
            f"{len(candidates)} have fidelity {high}"
        )
    test, val = candidates[:n_test], candidates[n_test : n_test + n_val]
    held = np.concatenate([test, val])
    held_ids = {stacked.ids[i] for i in held}
    held_formulas = {stacked.formulas[i] for i in held}

    def unseen(i: int) -> bool:
        return stacked.ids[i] not in held_ids and stacked.formulas[i] not in held_formulas

    chosen = np.array([i for i in candidates[n_test + n_val :] if unseen(i)][:n_train], int)
    if len(chosen) < n_train:
        raise ValueError(
            f"{n_train} training structures asked, {len(chosen)} with fidelity {high} "
            "share no id or formula with the validation and test ones"
        )
    chosen_ids = {stacked.ids[i] for i in chosen}
    others = [i for i in rng.permutation(len(stacked)) if level[i] != high and unseen(i)]
    alongside = [i for i in others if stacked.ids[i] in chosen_ids]
    rest = [i for i in others if stacked.ids[i] not in chosen_ids][:low_limit]
    train = np.sort(np.concatenate([chosen, alongside, rest]).astype(int))
    return Split(train, np.sort(val), np.sort(test))


def with_delta(
    dataset: GraphDataset, high: str, baseline: np.ndarray, name: str | None = None
) -> GraphDataset:
    """``dataset`` with one more target, ``high`` − ``baseline`` (Δ-learning: a model of
    the correction from a cheaper fidelity's label or model to ``high``, added back to
    the baseline at prediction); named ``name`` or ``<high>-delta``. Rows where either
    is missing (NaN) are NaN."""
    baseline = np.asarray(baseline, dtype=np.float64)
    if baseline.shape != (len(dataset),):
        raise ValueError(f"{len(dataset)} structures but {baseline.shape} baseline values")
    out = dataset.subset(range(len(dataset)))
    out.targets = {**dataset.targets, name or f"{high}-delta": dataset.targets[high] - baseline}
    return out
