"""Seeded splits of a dataset into train/validation/test index sets, saved as id lists
next to results so a run can be repeated exactly."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: the parts of a split, in the order a ``split.json`` lists them
PARTS = ("train", "val", "test")


@dataclass
class Split:
    """Index arrays into a dataset (positions, not ids)."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray

    def ids(self, ids: Sequence[str]) -> dict[str, list[str]]:
        return {name: [ids[i] for i in getattr(self, name)] for name in PARTS}

    def save(self, path: str | Path, ids: Sequence[str]) -> None:
        Path(path).write_text(json.dumps(self.ids(ids), indent=1))

    @classmethod
    def load(cls, path: str | Path, ids: Sequence[str]) -> Split:
        """A saved split mapped back onto a dataset's positions. Every id must be in the
        dataset, and listed once: an id in two parts (a test id also trained on) or twice
        in one is refused, because the test score would no longer be a held-out score."""
        saved = read_split_ids(path)
        position = {item: i for i, item in enumerate(ids)}
        missing = [i for part in saved.values() for i in part if i not in position]
        if missing:
            raise ValueError(f"{path}: {len(missing)} ids not in the dataset, e.g. {missing[0]}")
        return cls(*(np.array([position[i] for i in saved[k]], dtype=np.int64) for k in PARTS))


def _first(ids: Sequence[str], most: int = 5) -> str:
    shown = ", ".join(ids[:most])
    return shown + (f", … ({len(ids)} in all)" if len(ids) > most else "")


def read_split_ids(path: str | Path) -> dict[str, list[str]]:
    """The train/val/test id lists of a ``split.json``, checked: each part is a list, no id
    is listed twice in a part, and no id is in two parts (each refusal names the ids and
    the parts)."""
    try:
        saved = json.loads(Path(path).read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not a JSON split file ({error})") from None
    if not isinstance(saved, dict) or any(not isinstance(saved.get(k), list) for k in PARTS):
        raise ValueError(f"{path}: a split file holds the id lists 'train', 'val' and 'test'")
    parts = {k: [str(i) for i in saved[k]] for k in PARTS}
    for name, part in parts.items():
        repeated = [i for i, n in Counter(part).items() if n > 1]
        if repeated:
            raise ValueError(
                f"{path}: {len(repeated)} ids are listed more than once in {name!r}: "
                f"{_first(repeated)}"
            )
    for k, first in enumerate(PARTS):
        for second in PARTS[k + 1 :]:
            earlier = set(parts[first])
            shared = [i for i in parts[second] if i in earlier]
            if shared:
                raise ValueError(
                    f"{path}: {len(shared)} ids are in both {first!r} and {second!r}: "
                    f"{_first(shared)}; a structure must be in one part only"
                )
    return parts


def _counts(n: int, sizes: Sequence[float]) -> list[int]:
    if all(0 <= s <= 1 for s in sizes) and sum(sizes) <= 1 + 1e-9:
        # round the cumulative cut points, not each part: 0.9/0.05/0.05 of 33,093 would
        # otherwise round to 29,784 + 1,655 + 1,655 = 33,094
        cuts = [0, *(min(n, round(c * n)) for c in np.cumsum(sizes))]
        counts = np.diff(cuts).tolist()
    else:
        counts = [int(s) for s in sizes]
    if sum(counts) > n:
        raise ValueError(f"split sizes {sizes} need {sum(counts)} items, the dataset has {n}")
    return counts


def random_split(n: int, sizes: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0) -> Split:
    """Shuffle ``range(n)`` with ``seed`` and cut it into train/val/test by fractions
    (``0.8, 0.1, 0.1``) or counts (``500, 100, 1000``)."""
    train, val, test = _counts(n, sizes)
    order = np.random.default_rng(seed).permutation(n)
    return Split(order[:train], order[train : train + val], order[train + val : train + val + test])


def subsample(indices: np.ndarray, size: int, seed: int = 0) -> np.ndarray:
    """``size`` of ``indices``, seeded; nested for growing sizes under one seed (the first
    100 of a permutation are inside its first 250)."""
    if size > len(indices):
        raise ValueError(f"asked for {size} items, only {len(indices)} available")
    return np.asarray(indices)[np.random.default_rng(seed).permutation(len(indices))[:size]]


def _unique_indices(indices, name: str = "indices") -> np.ndarray:
    array = np.asarray(indices)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {array.shape}")
    if len(np.unique(array)) != len(array):
        # Repeated positions would put one structure in two "disjoint" subsets.
        raise ValueError(f"{name} contains repeated entries")
    return array


def _take_val(rest: np.ndarray, val_fraction: float, rng: np.random.Generator) -> Split:
    """Train/val from the non-test positions ``rest``: ``val_fraction`` of them, drawn with
    ``rng`` (test left empty for the caller to fill)."""
    order = rest[rng.permutation(len(rest))]
    n_val = round(val_fraction * len(rest))
    empty = np.empty(0, dtype=np.int64)
    return Split(np.sort(order[n_val:]), np.sort(order[:n_val]), empty)


def _check_fraction(value: float, name: str, allow_zero: bool = True) -> None:
    low_ok = value >= 0 if allow_zero else value > 0
    if not (low_ok and value < 1):
        interval = "[0, 1)" if allow_zero else "(0, 1)"
        raise ValueError(f"{name} must lie in {interval}, got {value}")


def kfold_splits(n: int, k: int, seed: int, val_fraction: float = 0.1) -> list[Split]:
    """``k`` seeded folds of ``range(n)``: fold ``i`` is the test set of split ``i``, and
    ``val_fraction`` of the remaining positions (seeded) is its validation set. The test
    sets partition ``range(n)``; their sizes differ by at most one. Gupta et al., Nat.
    Commun. 12, 6595 (2021) used ``k = 9``."""
    if not 2 <= k <= n:
        raise ValueError(f"need 2 <= k <= n, got k={k} for n={n}")
    _check_fraction(val_fraction, "val_fraction")
    rng = np.random.default_rng(seed)
    folds = np.array_split(rng.permutation(n).astype(np.int64), k)
    splits = []
    for i, fold in enumerate(folds):
        rest = np.concatenate([f for j, f in enumerate(folds) if j != i])
        split = _take_val(rest, val_fraction, rng)
        split.test = np.sort(fold)
        splits.append(split)
    return splits


#: Seed of the Matbench v0.1 regression folds (Dunn et al., npj Comput. Mater. 6, 138 (2020)).
MATBENCH_SEED = 18012019


def matbench_folds(n: int) -> list[Split]:
    """The 5 folds of Matbench v0.1 for a regression task of ``n`` entries in its shipped
    row order: ``KFold(n_splits=5, shuffle=True, random_state=18012019)`` (Dunn et al.
    2020). Test = the fold, train = the rest, val empty (Matbench leaves validation to the
    model). Classification tasks use a stratified split instead and are not covered."""
    from sklearn.model_selection import KFold  # sklearn is slow to import; only needed here

    if n < 5:
        raise ValueError(f"Matbench's 5-fold split needs at least 5 entries, got {n}")
    kfold = KFold(n_splits=5, shuffle=True, random_state=MATBENCH_SEED)
    empty = np.empty(0, dtype=np.int64)
    return [
        Split(train.astype(np.int64), empty.copy(), test.astype(np.int64))
        for train, test in kfold.split(np.arange(n))
    ]


def extrapolation_split(
    values, fraction: float = 0.1, val_fraction: float = 0.1, seed: int = 0
) -> Split:
    """Extrapolation test (Gupta et al. 2021): the test set is the ``fraction`` of entries
    with the lowest target ``values`` (ties at the cut-off go to the earlier position); the
    rest is split into train and ``val_fraction`` validation, seeded. The model never sees
    a target as low as the test targets."""
    values = np.asarray(values, dtype=float)
    if values.ndim != 1 or len(values) < 2:
        raise ValueError(f"values must be a 1-D sequence of at least 2, got shape {values.shape}")
    if not np.all(np.isfinite(values)):
        raise ValueError("values contains non-finite targets (NaN or inf)")
    _check_fraction(fraction, "fraction", allow_zero=False)
    _check_fraction(val_fraction, "val_fraction")
    n_test = max(1, round(fraction * len(values)))
    order = np.argsort(values, kind="stable").astype(np.int64)
    split = _take_val(order[n_test:], val_fraction, np.random.default_rng(seed))
    split.test = np.sort(order[:n_test])
    return split


def composition_disjoint(
    source_formulas: Sequence[str], target_formulas: Sequence[str]
) -> np.ndarray:
    """Boolean mask over the source, ``True`` where the entry's reduced formula does not
    occur in the target, so pretraining never sees a target composition (Krawczuk &
    Venturi). Formulas are normalised with pymatgen, so ``"Fe2O3"``, ``"O3Fe2"`` and
    ``"Fe4O6"`` are one composition."""
    from pymatgen.core import Composition

    reduced: dict[str, str] = {}

    def normalise(formula: str) -> str:
        # Many entries share a formula (polymorphs); parse each spelling once.
        if formula not in reduced:
            try:
                reduced[formula] = Composition(formula).reduced_formula
            except Exception as error:  # pymatgen raises several types for bad input
                raise ValueError(f"cannot parse formula {formula!r}: {error}") from error
        return reduced[formula]

    excluded = {normalise(f) for f in target_formulas}
    return np.array([normalise(f) not in excluded for f in source_formulas], dtype=bool)


def disjoint_subsplits(indices, size: int, seed: int) -> list[np.ndarray]:
    """``len(indices) // size`` disjoint subsets of ``size`` each, seeded; the remainder is
    left out. One permutation per seed is cut in consecutive blocks, so halving ``size``
    halves each block: 400 → 2×200 → 4×100 as in Krawczuk & Venturi, each 100 inside a
    200 of the same seed."""
    array = _unique_indices(indices)
    if not 1 <= size <= len(array):
        raise ValueError(f"size must lie in [1, {len(array)}], got {size}")
    order = array[np.random.default_rng(seed).permutation(len(array))]
    return [order[i * size : (i + 1) * size] for i in range(len(array) // size)]


def learning_curve_subsets(indices, sizes: Sequence[int], seed: int) -> dict[int, np.ndarray]:
    """Nested training subsets for a learning curve: each smaller one lies inside every
    larger one (the first ``size`` of one seeded permutation, as :func:`subsample`), so the
    curve's differences come from the size, not from a new draw. Keys in increasing
    order."""
    array = _unique_indices(indices)
    if not len(sizes):
        raise ValueError("sizes is empty")
    for size in sizes:
        if not 1 <= size <= len(array):
            raise ValueError(f"size {size} is outside [1, {len(array)}]")
    return {int(size): subsample(array, int(size), seed) for size in sorted(set(sizes))}


#: fixed seed of the test draw: every training seed is scored on the same test structures
TEST_SEED = 12345


def default_val_count(n_train: int, available: int) -> int:
    """Validation structures when none are asked for: a quarter of the training set,
    at least 20 and at most 1,000, never more than ``available`` — 300 training structures
    get 75, not 10 % of a 11,000-structure pool."""
    return int(min(available, max(20, min(1000, round(0.25 * n_train)))))


def _count(size: float, n: int) -> int:
    return int(size if size >= 1 else round(size * n))


def seeded_split(
    pool: np.ndarray,
    seed: int,
    val: np.ndarray | None = None,
    test: np.ndarray | None = None,
    train_size: int | None = None,
    val_size: float | None = None,
    test_size: float | None = None,
    excluded: np.ndarray | None = None,
) -> Split:
    """Train/validation/test positions for one seed.

    ``pool`` holds the positions of the data to split; ``val`` and ``test`` those of a
    user's own validation and test sets (all of them unless a size is given). The test
    set is drawn once (:data:`TEST_SEED`), so every seed is scored on the same structures;
    the validation set and the ``train_size`` training structures are drawn with ``seed``.
    Sizes are counts (≥ 1) or fractions; the default validation size scales with the
    training set (:func:`default_val_count`). ``excluded`` positions never train or
    validate.
    """
    pool = np.asarray(pool, dtype=np.int64)
    if test is None:
        count = _count(0.1 if test_size is None else test_size, len(pool))
        test = pool[np.random.default_rng(TEST_SEED).permutation(len(pool))[:count]]
        pool = np.setdiff1d(pool, test)
    elif test_size is not None and _count(test_size, len(test)) < len(test):
        test = subsample(np.asarray(test), _count(test_size, len(test)), seed=0)
    if excluded is not None:
        pool = np.setdiff1d(pool, excluded)
    rng = np.random.default_rng(seed)
    if val is None:
        order = pool[rng.permutation(len(pool))]
        if val_size is None:
            n_train = train_size if train_size is not None else round(0.8 * len(order))
            n_val = default_val_count(n_train, len(order) - min(n_train, len(order) - 1))
        else:
            n_val = _count(val_size, len(order))
        val, train = order[:n_val], order[n_val:]
    else:
        val = np.asarray(val, dtype=np.int64)
        if excluded is not None:
            val = np.setdiff1d(val, excluded)
        if val_size is not None and _count(val_size, len(val)) < len(val):
            val = subsample(val, _count(val_size, len(val)), seed)
        train = pool[rng.permutation(len(pool))]
    if train_size is not None:
        if train_size > len(train):
            raise ValueError(
                f"--train-size {train_size}: only {len(train)} structures are left for training"
            )
        train = train[:train_size]
    return Split(np.sort(train), np.sort(val), np.sort(np.asarray(test, dtype=np.int64)))
