"""Where the public datasets live: ``TLMAT_DATA_DIR``, else ``../shared/data`` when present."""

from __future__ import annotations

import os
from pathlib import Path


def data_dir() -> Path | None:
    """The local dataset folder, or ``None`` when there is none."""
    env = os.environ.get("TLMAT_DATA_DIR")
    if env:
        return Path(env)
    for base in (Path.cwd(), Path(__file__).resolve().parents[1]):
        candidate = base.parent / "shared" / "data"
        if candidate.is_dir():
            return candidate
    return None
