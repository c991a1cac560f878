"""Benchmark: Hoffmann et al.'s cheap-versus-expensive compute budget (Digital Discovery
2023, Fig. 5; tlmat issue 27, point 3) on the finished PBE → HSE band-gap grid
(benchmarks/results/hoffmann-pbe-hse: sources pretrained on 0.9k, 2.7k, 9k and 25k PBE
gaps, fine-tuned on 100, 300 and 1,000 HSE gaps, 3 seeds). Nothing is trained here.

The test MAE of each fine-tuned run is fitted as ``log10 MAE = c + α log10 N_HSE + β
log10 N_PBE`` (:func:`tlmat.evaluation.cost.fit_two_sizes`); for a budget B (core-hours)
and costs per calculation c_PBE, c_HSE the fit's optimum on ``N_PBE c_PBE + N_HSE c_HSE =
B`` is set beside scratch given the whole budget (``N_HSE = B / c_HSE``, the scratch
runs' own power law). Costs: c_PBE = 1 core-hour (a unit: only the ratio and B / c_PBE
matter), c_HSE = 5× (Hoffmann et al.: SCAN "at least five times" PBE), 10× and 50× (the
range usually quoted for hybrid functionals; hybrids are "even more computationally
demanding", Hoffmann et al.). Budgets: what 100, 300 and 1,000 HSE calculations cost,
so scratch stays inside the sizes it was fitted on.

Fits pooled over the 3 seeds (± the fit's standard error), and per seed (mean ± sample
std over seeds; the seeds share one pretrained source per size, so source-to-source
scatter is in neither). Also the full fit without the 25k source (the shipped
``tlmat/mp-gap-cgcnn``, trained on another snapshot's PBE gaps with its own recipe).

Run:  python3 benchmarks/budget_curve.py [--grid benchmarks/results/hoffmann-pbe-hse]
          [--out benchmarks/results/hoffmann-budget]
Writes OUT/budget.json (every number, the command, the machine) and OUT/README.md.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tlmat.evaluation.cost import budget_curve, fit_two_sizes  # noqa: E402
from tlmat.evaluation.report import load_runs  # noqa: E402
from tlmat.evaluation.statistics import loglog_fit  # noqa: E402
from tlmat.machine import describe  # noqa: E402

CHEAP_HOURS = 1.0
RATIOS = (5.0, 10.0, 50.0)
EQUIVALENT_HSE = (100, 300, 1000)
#: the sources of one curve: PBE band gaps (the grid also holds a formation-energy source)
SERIES = "PBE band gap"
#: (label, method prefix, sources left out)
VARIANTS = (
    ("full", "full [", ()),
    ("full, without the 25k shipped source", "full [", ("pbe-all",)),
    ("zero-shot+linear", "zero-shot+linear [", ()),
)


def fits(runs: pd.DataFrame, prefix: str, leave_out: tuple[str, ...]):
    """(two-size fit of the transfer runs, power law of the scratch runs) of ``runs``."""
    transfer = runs[
        runs["method"].str.startswith(prefix)
        & ~runs["source"].isin(leave_out)
        & (runs["series"] == SERIES)
    ]
    scratch = runs[runs["method"] == "scratch"]
    return (
        fit_two_sizes(transfer["size"], transfer["n_pretrain"], transfer["mae"]),
        loglog_fit(scratch["size"], scratch["mae"]),
    )


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample std (NaN for fewer than two values: a seed without an optimum)."""
    if len(values) < 2:
        return math.nan, math.nan
    return statistics.mean(values), statistics.stdev(values)


def seed_curves(per_seed, budget: float, expensive: float) -> list:
    """The per-seed budget curves; a seed whose fit has no optimum (an exponent ≥ 0,
    e.g. a recalibration that does not improve with more HSE labels) is left out."""
    curves = []
    for fit, scratch in per_seed:
        if fit.alpha < 0 and fit.beta < 0:
            curves.append(budget_curve(fit, budget, CHEAP_HOURS, expensive, scratch))
    return curves


def variant_rows(runs: pd.DataFrame, label: str, prefix: str, leave_out) -> tuple[dict, list]:
    """The fitted exponents of one variant and its rows, one per (cost ratio, budget)."""
    pooled, scratch = fits(runs, prefix, leave_out)
    per_seed = [
        fits(runs[runs["seed"] == s], prefix, leave_out) for s in sorted(runs["seed"].unique())
    ]
    fit_row = {
        "variant": label,
        "alpha": pooled.alpha,
        "alpha_stderr": pooled.covariance[1][1] ** 0.5,
        "beta": pooled.beta,
        "beta_stderr": pooled.covariance[2][2] ** 0.5,
        "r2": pooled.r2,
        "runs": pooled.n,
        "share_on_hse": pooled.expensive_share,
        "alpha_per_seed": [f.alpha for f, _ in per_seed],
        "share_on_hse_per_seed": mean_std(
            [f.expensive_share for f, _ in per_seed if f.alpha < 0 and f.beta < 0]
        ),
    }
    rows = []
    for ratio in RATIOS:
        expensive = ratio * CHEAP_HOURS
        for n_hse in EQUIVALENT_HSE:
            budget = n_hse * expensive
            curve = budget_curve(pooled, budget, CHEAP_HOURS, expensive, scratch)
            seeds = seed_curves(per_seed, budget, expensive)
            rows.append(
                {
                    "variant": label,
                    "hse_over_pbe": ratio,
                    "budget_core_hours": budget,
                    "best_n_hse": curve.best.n_expensive,
                    "best_n_pbe": curve.best.n_cheap,
                    "best_mae": curve.best.mae,
                    "best_mae_stderr": curve.best.mae_stderr,
                    "best_extrapolated": curve.best.extrapolated,
                    "seeds_with_optimum": len(seeds),
                    "best_mae_per_seed": mean_std([c.best.mae for c in seeds]),
                    "scratch_n_hse": curve.scratch.n_expensive,
                    "scratch_mae": curve.scratch.mae,
                    "scratch_mae_stderr": curve.scratch.mae_stderr,
                    "scratch_mae_per_seed": mean_std([c.scratch.mae for c in seeds]),
                    "change": curve.best.mae / curve.scratch.mae - 1,
                    "change_per_seed": mean_std([c.best.mae / c.scratch.mae - 1 for c in seeds]),
                }
            )
    return fit_row, rows


def markdown(fit_rows: list[dict], rows: list[dict], command: str) -> str:
    lines = [
        "# Compute budget between PBE and HSE calculations (Hoffmann et al. Fig. 5)",
        "",
        __doc__.split("\n\n")[1].replace("\n", " "),
        "",
        f"Command: `{command}` (a few seconds; no training). Machine and every number: "
        "`budget.json`. Grid: `benchmarks/results/hoffmann-pbe-hse` (the report there has "
        "the figure, `report/budget_curves.png`).",
        "",
        "Caveats: the PBE calculations are counted as paid for, though the Materials "
        "Project's PBE gaps can be downloaded (then only the HSE hours count and a large "
        "pretrained source comes free); one pretrained source per size (one pretraining "
        "seed), so the ± hold no source-to-source scatter; the optimum of a product of "
        "power laws is the same share of every budget, so where it falls outside the fitted "
        "sizes (`*`) it is an extrapolation of the law, not a measurement.",
        "",
        "## Fitted surface (test MAE in eV)",
        "",
        "| variant | α (HSE size) | β (PBE size) | r² | runs "
        "| share of budget on HSE: pooled, per seed |",
        "|---|---|---|---|---|---|",
    ]
    for f in fit_rows:
        share_mean, share_std = f["share_on_hse_per_seed"]
        lines.append(
            f"| {f['variant']} | {f['alpha']:+.3f} ± {f['alpha_stderr']:.3f} | "
            f"{f['beta']:+.3f} ± {f['beta_stderr']:.3f} | {f['r2']:.3f} | {f['runs']} | "
            f"{f['share_on_hse']:.2f}, {share_mean:.2f} ± {share_std:.2f} |"
        )
    lines += [
        "",
        "## Best split against scratch (PBE 1 core-hour a calculation)",
        "",
        "Predicted test MAE (eV): pooled fit ± its standard error, then mean ± std of the "
        "3 per-seed fits. `*`: the optimum lies outside the fitted sizes (HSE 100–1,000, "
        "PBE 900–25,268), an extrapolation. A seed whose own fit does not fall with the HSE "
        "size has no optimum and is left out of the per-seed columns (its count shown).",
        "",
        "| variant | HSE/PBE cost | budget (core-h) | best N_HSE / N_PBE | best MAE | per seed "
        "| scratch N_HSE | scratch MAE | per seed | change (pooled; per seed) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        star = "*" if r["best_extrapolated"] else ""
        few = f" ({r['seeds_with_optimum']} seeds)" if r["seeds_with_optimum"] < 3 else ""
        lines.append(
            f"| {r['variant']} | {r['hse_over_pbe']:g}× | {r['budget_core_hours']:g} | "
            f"{r['best_n_hse']:.0f} / {r['best_n_pbe']:.0f} | "
            f"{r['best_mae']:.3f} ± {r['best_mae_stderr']:.3f}{star} | "
            f"{r['best_mae_per_seed'][0]:.3f} ± {r['best_mae_per_seed'][1]:.3f}{few} | "
            f"{r['scratch_n_hse']:.0f} | {r['scratch_mae']:.3f} ± {r['scratch_mae_stderr']:.3f} | "
            f"{r['scratch_mae_per_seed'][0]:.3f} ± {r['scratch_mae_per_seed'][1]:.3f} | "
            f"{r['change']:+.1%}; {r['change_per_seed'][0]:+.1%} ± {r['change_per_seed'][1]:.1%} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--grid", type=Path, default=REPO / "benchmarks/results/hoffmann-pbe-hse")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/hoffmann-budget")
    args = parser.parse_args()
    runs = load_runs(args.grid)
    fit_rows, rows = [], []
    for label, prefix, leave_out in VARIANTS:
        fit_row, variant = variant_rows(runs, label, prefix, leave_out)
        fit_rows.append(fit_row)
        rows += variant
    command = " ".join(["python3", *sys.argv])
    args.out.mkdir(parents=True, exist_ok=True)
    record = {
        "command": command,
        "grid": str(args.grid),
        "cheap_core_hours": CHEAP_HOURS,
        "machine": describe(),
        "fits": fit_rows,
        "budgets": rows,
    }
    (args.out / "budget.json").write_text(json.dumps(record, indent=2) + "\n")
    (args.out / "README.md").write_text(markdown(fit_rows, rows, command))
    print((args.out / "README.md").read_text())


if __name__ == "__main__":
    main()
