"""Seeded splits of a dataset into train/validation/test index sets, saved as id lists
next to results so a run can be repeated exactly."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class Split:
    """Index arrays into a dataset (positions, not ids)."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray

    def ids(self, ids: Sequence[str]) -> dict[str, list[str]]:
        return {name: [ids[i] for i in getattr(self, name)] for name in ("train", "val", "test")}

    def save(self, path: str | Path, ids: Sequence[str]) -> None:
        Path(path).write_text(json.dumps(self.ids(ids), indent=1))

    @classmethod
    def load(cls, path: str | Path, ids: Sequence[str]) -> Split:
        """A saved split mapped back onto a dataset's positions (every id must be there)."""
        saved = json.loads(Path(path).read_text())
        position = {item: i for i, item in enumerate(ids)}
        missing = [i for part in saved.values() for i in part if i not in position]
        if missing:
            raise ValueError(f"{path}: {len(missing)} ids not in the dataset, e.g. {missing[0]}")
        return cls(
            *(
                np.array([position[i] for i in saved[k]], dtype=np.int64)
                for k in ("train", "val", "test")
            )
        )


def _counts(n: int, sizes: Sequence[float]) -> list[int]:
    if all(0 <= s <= 1 for s in sizes) and sum(sizes) <= 1 + 1e-9:
        counts = [round(s * n) for s in sizes]
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
