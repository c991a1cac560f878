"""Cost and break-even from the wall times a real benchmark recorded (the PBE → HSE band
gap grid in benchmarks/results): pretraining seconds from each source's record or model
card, fine-tuning from each job, and the break-even against a DFT cost per structure."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest

from tlmat.evaluation.cost import (
    budget_costs,
    budget_curve,
    cost_table,
    fit_two_sizes,
    source_seconds,
)
from tlmat.evaluation.report import (
    budget_fits,
    budget_section,
    load_runs,
    load_sources,
    write_report,
)
from tlmat.evaluation.statistics import loglog_fit

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


# --- compute budget: error in both sizes and its best split (Hoffmann et al. Fig. 5) ---


def grid_sizes() -> tuple[np.ndarray, np.ndarray]:
    """(target size, pretraining size) of every run fine-tuned from the real grid's PBE-gap
    sources (the grid also holds a formation-energy one, another curve)."""
    runs = load_runs(GRID)
    full = runs[runs["method"].str.startswith("full [") & (runs["series"] == "PBE band gap")]
    return full["size"].to_numpy(float), full["n_pretrain"].to_numpy(float)


def test_fit_recovers_the_exponents_of_a_known_law_over_the_grid_sizes() -> None:
    n_e, n_c = grid_sizes()
    assert len(set(n_c)) == 4 and len(set(n_e)) == 3  # 0.9k–25k PBE × 100–1000 HSE
    law = 2.5 * n_e**-0.25 * n_c**-0.07
    exact = fit_two_sizes(n_e, n_c, law)
    assert (exact.alpha, exact.beta) == pytest.approx((-0.25, -0.07), abs=1e-10)
    assert exact.expensive_share == pytest.approx(0.25 / 0.32)
    noisy = law * 10 ** np.random.default_rng(0).normal(0.0, 0.02, len(law))
    fit = fit_two_sizes(n_e, n_c, noisy)
    assert fit.alpha == pytest.approx(-0.25, abs=3 * math.sqrt(fit.covariance[1][1]))
    assert fit.beta == pytest.approx(-0.07, abs=3 * math.sqrt(fit.covariance[2][2]))
    assert fit.cheap_range == (900.0, 25268.0) and fit.inside(300, 9000)
    with pytest.raises(ValueError, match="vary together"):
        fit_two_sizes(n_e, 9 * n_e, law)  # one pretraining size per target size


def test_the_optimum_lies_on_the_budget_line_and_is_its_lowest_point() -> None:
    runs = load_runs(GRID)
    fit = budget_fits(runs)["full (PBE band gap)"]
    scratch_runs = runs[runs["method"] == "scratch"]
    scratch = loglog_fit(scratch_runs["size"], scratch_runs["mae"])
    budget, cheap, expensive = 15000.0, 1.0, 50.0
    curve = budget_curve(fit, budget, cheap, expensive, scratch, points=2001)
    spent = curve.n_cheap * cheap + curve.n_expensive * expensive
    assert spent == pytest.approx(np.full_like(spent, budget), rel=1e-12)
    best = curve.best
    assert best.n_cheap * cheap + best.n_expensive * expensive == pytest.approx(budget, rel=1e-12)
    assert best.mae <= curve.mae.min() + 1e-12  # nothing on the line does better
    assert curve.share[np.argmin(curve.mae)] == pytest.approx(fit.expensive_share, abs=1e-3)
    # spending the same hours off the line (more of both) must not be what is called optimal
    assert fit.predict(best.n_expensive * 1.1, best.n_cheap * 1.1) < best.mae
    assert curve.scratch.n_expensive == budget / expensive == 300
    assert curve.scratch.mae == pytest.approx(float(scratch.predict(300)))
    with pytest.raises(ValueError, match="must be positive"):
        budget_curve(fit, budget, 0.0, expensive)
    rising = dataclasses.replace(fit, beta=0.01)  # pretraining that does not help
    with pytest.raises(ValueError, match="fall with both sizes"):
        budget_curve(rising, budget, cheap, expensive)


def test_one_cost_given_sets_the_other_ten_times_apart() -> None:
    assert budget_costs(None, None) is None
    assert budget_costs(50.0, None) == (5.0, 50.0)
    assert budget_costs(None, 1.0) == (1.0, 10.0)
    assert budget_costs(20.0, 1.0) == (1.0, 20.0)


def test_report_has_the_budget_section_only_with_costs_and_several_sources(tmp_path) -> None:
    runs = load_runs(GRID)
    tables, figures, missing = budget_section(runs, tmp_path, "eV", "scratch", (1.0, 50.0))
    assert [file for file, _ in figures] == ["budget_curves.png"]
    assert (tmp_path / "budget_curves.png").stat().st_size > 0
    split = next(t for name, t in tables.items() if name.endswith("best split"))
    assert list(split.loc["full (PBE band gap)", "budget (h)"]) == ["5000", "15000", "50000"]
    one_source = runs[runs["source"].isin(["", "pbe-10k"])]  # a single pretraining size
    tables, figures, missing = budget_section(one_source, tmp_path, "eV", "scratch", (1.0, 50.0))
    assert not tables and not figures and "two pretraining sizes" in missing[0]
    report = write_report(GRID, tmp_path / "plain").read_text()
    assert "compute budget" not in report  # no costs given: no section
