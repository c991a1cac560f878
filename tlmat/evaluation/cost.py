"""What a model cost and when it pays for itself: the measured wall time of pretraining
its source and of fine-tuning it, beside a user-given DFT cost per structure — the number
of materials it must predict, instead of computing them, to break even (Krawczuk &
Venturi, Table 4), and what its own training labels cost."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

HOUR = 3600.0


def source_seconds(root: str | Path, sources: dict[str, dict]) -> dict[str, float]:
    """Wall seconds each source of a benchmark grid took to pretrain: those pretrained
    here from ``sources/<name>/pretrain.json``, a shipped one from its model card; NaN
    where nothing was recorded (a published model: its cost is not known here)."""
    from tlmat.catalogue import shipped

    cards = shipped()
    seconds = {}
    for name, info in sources.items():
        record = Path(root) / "sources" / name / "pretrain.json"
        if record.exists():
            seconds[name] = float(json.loads(record.read_text()).get("seconds", math.nan))
        elif info.get("checkpoint") in cards:
            seconds[name] = float(cards[info["checkpoint"]].get("seconds", math.nan))
        else:
            seconds[name] = math.nan
    return seconds


def cost_table(
    runs: pd.DataFrame, pretraining: dict[str, float], dft_hours: float, size: int
) -> pd.DataFrame:
    """One row per trained method at training-set size ``size``: fine-tuning and source
    pretraining wall hours (mean over seeds), their sum, the DFT hours of the ``size``
    training labels, and the break-even: how many materials the model must predict in
    place of a DFT calculation of ``dft_hours`` to repay its training (inference, a few
    milliseconds a structure, is left out)."""
    if dft_hours <= 0:
        raise ValueError(f"the DFT cost per structure must be positive, got {dft_hours} h")
    trained = runs[(runs["size"] == size) & runs["seconds"].notna()]
    rows = []
    for method, group in trained.groupby("method", sort=False):
        source = group["source"].iloc[0] if "source" in group else ""
        source = source if isinstance(source, str) else ""
        pretrain_h = pretraining.get(source, 0.0) / HOUR if source else 0.0
        finetune_h = float(group["seconds"].mean()) / HOUR
        total_h = finetune_h + pretrain_h
        rows.append(
            {
                "method": method,
                "fine-tuning (h)": round(finetune_h, 4),
                "source pretraining (h)": round(pretrain_h, 3) if not np.isnan(pretrain_h) else "?",
                "training in all (h)": round(total_h, 3) if not np.isnan(total_h) else "?",
                "DFT of the training labels (h)": round(size * dft_hours, 1),
                "break-even (materials)": math.ceil(total_h / dft_hours)
                if not np.isnan(total_h)
                else "?",
            }
        )
    return pd.DataFrame(rows).set_index("method")
