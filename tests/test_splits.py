"""Splits for cross-validation, Matbench, extrapolation, composition exclusion and learning
curves: partitions, disjointness and seeding, on real perovskites where chemistry matters."""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
from pymatgen.core import Composition
from sklearn.model_selection import KFold

from tlmat.data import (
    MATBENCH_SEED,
    Split,
    composition_disjoint,
    disjoint_subsplits,
    extrapolation_split,
    kfold_splits,
    learning_curve_subsets,
    matbench_folds,
    random_split,
)
from tlmat.io import read_records


@pytest.fixture(scope="module")
def perovskites(data: Path):
    """300 real Castelli perovskites (heat of formation, eV/cell)."""
    result = read_records(data / "perov_5" / "test.csv.gz", targets=["heat_ref"], limit=300)
    assert len(result) == 300
    return result


def _assert_partition(split: Split, n: int) -> None:
    """train, val and test are disjoint and together cover ``range(n)`` exactly once."""
    every = np.concatenate([split.train, split.val, split.test])
    assert len(every) == n
    np.testing.assert_array_equal(np.sort(every), np.arange(n))


def _same(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def test_kfold_splits_partition_and_seed() -> None:
    n, k = 100, 9  # Gupta et al.'s 9 folds; 100 = 1 × 12 + 8 × 11
    splits = kfold_splits(n, k, seed=0)
    assert len(splits) == k
    tests = [s.test for s in splits]
    np.testing.assert_array_equal(np.sort(np.concatenate(tests)), np.arange(n))
    assert sorted(len(t) for t in tests) == [11] * 8 + [12]
    for split in splits:
        _assert_partition(split, n)
        assert len(split.val) == round(0.1 * (n - len(split.test)))

    again = kfold_splits(n, k, seed=0)
    other = kfold_splits(n, k, seed=1)
    for part in ("train", "val", "test"):
        assert _same([getattr(s, part) for s in splits], [getattr(s, part) for s in again])
    assert not _same(tests, [s.test for s in other])


def test_kfold_splits_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="k"):
        kfold_splits(5, 6, seed=0)
    with pytest.raises(ValueError, match="k"):
        kfold_splits(5, 1, seed=0)
    with pytest.raises(ValueError, match="val_fraction"):
        kfold_splits(50, 5, seed=0, val_fraction=1.0)


@pytest.mark.parametrize("n", [1265, 23])  # 1265 = matbench_phonons
def test_matbench_folds_equal_kfold(n: int) -> None:
    folds = matbench_folds(n)
    assert MATBENCH_SEED == 18012019
    expected = list(KFold(n_splits=5, shuffle=True, random_state=18012019).split(np.arange(n)))
    assert len(folds) == 5
    for fold, (train, test) in zip(folds, expected, strict=True):
        np.testing.assert_array_equal(fold.train, train)
        np.testing.assert_array_equal(fold.test, test)
        assert len(fold.val) == 0
        _assert_partition(fold, n)
    np.testing.assert_array_equal(np.sort(np.concatenate([f.test for f in folds])), np.arange(n))
    # Shuffled: the folds are not the contiguous blocks of an unshuffled KFold.
    contiguous = [test for _, test in KFold(n_splits=5).split(np.arange(n))]
    assert not _same([f.test for f in folds], contiguous)


def test_extrapolation_split_holds_out_lowest_targets(perovskites) -> None:
    values = np.array([r.targets["heat_ref"] for r in perovskites])
    split = extrapolation_split(values, fraction=0.1, val_fraction=0.1, seed=0)
    _assert_partition(split, len(values))
    assert len(split.test) == 30
    seen = np.concatenate([split.train, split.val])
    assert values[split.test].max() <= values[seen].min()
    # The test set is exactly the 30 smallest values.
    np.testing.assert_array_equal(np.sort(values[split.test]), np.sort(values)[:30])
    assert len(split.val) == round(0.1 * 270)

    again = extrapolation_split(values, seed=0)
    other = extrapolation_split(values, seed=1)
    np.testing.assert_array_equal(split.val, again.val)
    np.testing.assert_array_equal(split.test, other.test)  # the test set does not depend on it
    assert not np.array_equal(split.val, other.val)


def test_extrapolation_split_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="fraction"):
        extrapolation_split([1.0, 2.0, 3.0], fraction=0.0)
    with pytest.raises(ValueError, match="non-finite"):
        extrapolation_split([1.0, np.nan, 3.0])


def test_composition_disjoint_on_real_formulas(perovskites) -> None:
    formulas = [r.formula for r in perovskites]
    target = formulas[:100]
    # The same compositions spelled differently: elements reversed and amounts doubled
    # (e.g. "SrTiO3" → "O6Ti2Sr2"), so only normalisation can match them.
    respelled = [
        "".join(f"{el}{2 * amount:g}" for el, amount in reversed(Composition(f).items()))
        for f in formulas
    ]
    assert respelled[0] != formulas[0]

    mask = composition_disjoint(respelled, target)
    expected = np.array([f not in set(target) for f in formulas])
    np.testing.assert_array_equal(mask, expected)
    assert mask.dtype == bool and len(mask) == len(formulas)
    assert not mask[:100].any()
    assert mask[100:].any()  # real, non-target compositions are kept
    kept = {formulas[i] for i in np.flatnonzero(mask)}
    assert not kept & set(target)


def test_composition_disjoint_normalises_spelling() -> None:
    mask = composition_disjoint(["O3Fe2", "Fe4O6", "FeO", "Fe3O4"], ["Fe2O3"])
    np.testing.assert_array_equal(mask, [False, False, True, True])
    with pytest.raises(ValueError, match=r"Fe2O3\)"):
        composition_disjoint(["Fe2O3)"], ["Fe2O3"])


def test_disjoint_subsplits_krawczuk_halving() -> None:
    indices = np.arange(1000, 1400)  # 400 positions, not starting at 0
    blocks = {size: disjoint_subsplits(indices, size, seed=0) for size in (400, 200, 100)}
    for size, parts in blocks.items():
        assert len(parts) == 400 // size
        assert all(len(p) == size for p in parts)
        joined = np.concatenate(parts)
        assert len(np.unique(joined)) == len(joined)  # pairwise disjoint
        np.testing.assert_array_equal(np.sort(joined), indices)
    # 400 → 2×200 → 4×100: each 100 lies inside one 200 of the same seed.
    for quarter in blocks[100]:
        assert sum(set(quarter) <= set(half) for half in blocks[200]) == 1

    assert _same(blocks[100], disjoint_subsplits(indices, 100, seed=0))
    assert not _same(blocks[100], disjoint_subsplits(indices, 100, seed=1))


def test_disjoint_subsplits_leaves_remainder_out() -> None:
    indices = np.arange(450)
    parts = disjoint_subsplits(indices, 200, seed=3)
    assert [len(p) for p in parts] == [200, 200]
    assert len(set(np.concatenate(parts))) == 400
    with pytest.raises(ValueError, match="repeated"):
        disjoint_subsplits([1, 2, 2, 3], 2, seed=0)
    with pytest.raises(ValueError, match="size"):
        disjoint_subsplits(indices, 0, seed=0)
    with pytest.raises(ValueError, match="size"):
        disjoint_subsplits(indices, 451, seed=0)


def test_learning_curve_subsets_are_nested() -> None:
    indices = np.arange(5000, 6000)
    sizes = [500, 50, 100, 250, 1000]
    subsets = learning_curve_subsets(indices, sizes, seed=4)
    assert list(subsets) == [50, 100, 250, 500, 1000]
    pool = set(indices)
    for size, subset in subsets.items():
        assert len(subset) == size == len(set(subset))
        assert set(subset) <= pool
    ordered = list(subsets.values())
    for small, large in pairwise(ordered):
        assert set(small) <= set(large)

    again = learning_curve_subsets(indices, sizes, seed=4)
    other = learning_curve_subsets(indices, sizes, seed=5)
    assert _same(list(subsets.values()), list(again.values()))
    assert set(subsets[50]) != set(other[50])
    with pytest.raises(ValueError, match="outside"):
        learning_curve_subsets(indices, [10, 1001], seed=0)
    with pytest.raises(ValueError, match="repeated"):
        learning_curve_subsets([1, 1, 2], [1], seed=0)


def test_fractions_never_ask_for_more_than_the_dataset() -> None:
    """Rounding 0.9/0.05/0.05 of 33,093 part by part asks for 33,094 structures."""
    split = random_split(33_093, (1 - 0.05 - 0.05, 0.05, 0.05), seed=0)
    sizes = [len(split.train), len(split.val), len(split.test)]
    assert sum(sizes) == 33_093 and sizes[1] in (1654, 1655) and sizes[2] in (1654, 1655)
    assert len(np.unique(np.concatenate([split.train, split.val, split.test]))) == 33_093


def test_seeded_split_defaults_scale_with_the_training_set() -> None:
    from tlmat.data.splits import default_val_count, seeded_split

    pool = np.arange(11_000)
    split = seeded_split(pool, seed=1, train_size=300)
    # a quarter of the 300 training structures validate, not 10 % of the 11,000 pool
    assert len(split.train) == 300 and len(split.val) == 75 == default_val_count(300, 10**6)
    assert len(split.test) == 1_100
    again = seeded_split(pool, seed=2, train_size=300)
    assert np.array_equal(split.test, again.test), "every seed is scored on one test set"
    assert not np.array_equal(split.train, again.train)
    parts = [set(split.train), set(split.val), set(split.test)]
    assert all(not (a & b) for i, a in enumerate(parts) for b in parts[i + 1 :])


def test_seeded_split_takes_the_users_validation_and_test_sets() -> None:
    from tlmat.data.splits import seeded_split

    pool, val, test = np.arange(100), np.arange(100, 130), np.arange(130, 200)
    split = seeded_split(pool, seed=0, val=val, test=test, excluded=np.array([3, 101]))
    assert np.array_equal(split.test, test), "all rows of --test by default"
    assert np.array_equal(split.val, np.setdiff1d(val, [101]))
    assert len(split.train) == 99 and 3 not in split.train
    with pytest.raises(ValueError, match="--train-size 500: only 99"):
        seeded_split(pool, seed=0, val=val, test=test, train_size=500, excluded=np.array([3]))
