"""Element feature tables: CGCNN's 92-dimensional ``atom_init.json`` one-hot encoding."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from tlmat.datasets import fetch


def load_atom_init(path: str | Path | None = None) -> torch.Tensor:
    """CGCNN's element features as a (101, 92) table indexed by atomic number (row 0 and
    absent elements are zeros). Without ``path`` the published file is fetched (local copy
    in ``$TLMAT_DATA_DIR`` first; else download with checksum)."""
    path = Path(path) if path is not None else fetch("cgcnn/atom_init.json")
    table = json.loads(path.read_text())
    width = len(next(iter(table.values())))
    out = torch.zeros(max(int(z) for z in table) + 1, width)
    for z, features in table.items():
        out[int(z)] = torch.tensor(features, dtype=torch.float32)
    return out
