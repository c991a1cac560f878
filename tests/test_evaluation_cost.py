"""Cost and break-even from the wall times a real benchmark recorded (the PBE → HSE band
gap grid in benchmarks/results): pretraining seconds from each source's record or model
card, fine-tuning from each job, and the break-even against a DFT cost per structure."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tlmat.evaluation.cost import cost_table, source_seconds
from tlmat.evaluation.report import load_runs, load_sources

GRID = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "hoffmann-pbe-hse"


def recorded(path: Path) -> float:
    return json.loads(path.read_text())["seconds"]


def test_break_even_adds_the_source_to_its_fine_tuning() -> None:
    pretraining = source_seconds(GRID, load_sources(GRID))
    assert pretraining["pbe-10k"] == recorded(GRID / "sources" / "pbe-10k" / "pretrain.json")
    card = GRID.parents[2] / "tlmat" / "pretrained" / "mp-gap-cgcnn" / "card.json"
    assert pretraining["pbe-all"] == recorded(card)  # shipped: its model card's
    table = cost_table(load_runs(GRID), pretraining, dft_hours=2.0, size=1000)
    finetune = [
        recorded(GRID / "pbe-10k" / f"n1000-s{s}" / "full" / "result.json") for s in (0, 1, 2)
    ]
    hours = (sum(finetune) / 3 + pretraining["pbe-10k"]) / 3600
    row = table.loc["full [pbe-10k]"]
    assert row["training in all (h)"] == pytest.approx(hours, abs=1e-3)
    assert row["break-even (materials)"] == math.ceil(hours / 2.0)
    assert row["DFT of the training labels (h)"] == 2000.0
    assert table.loc["scratch", "source pretraining (h)"] == 0.0
    assert not any(m.startswith("zero-shot") for m in table.index)  # nothing trained
    with pytest.raises(ValueError, match="must be positive"):
        cost_table(load_runs(GRID), pretraining, dft_hours=0.0, size=1000)
