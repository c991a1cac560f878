"""Reports a scientist can put in a paper: tables and figures from a results grid.

A results grid is a folder of jobs ``n{size}-s{seed}/``, each holding one folder per method
with ``result.json`` (metrics) and ``predictions.csv`` (id, true, predicted on the test
set), and optionally ``zero-shot.json`` (the source's scores). ``tlmat compare`` writes
this layout. ``tlmat benchmark`` writes one such folder per source plus ``common/`` (the
methods without a source) and ``sources.json``; its methods are then labelled
``full [source]``, with ``†`` on a source that saw test materials.
"""

from __future__ import annotations

import html
import json
import math
import re
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # reports are written on headless machines
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from tlmat.evaluation.cost import (
    BudgetCurve,
    BudgetPoint,
    TwoSizeFit,
    budget_costs,
    budget_curve,
    fit_two_sizes,
)
from tlmat.evaluation.statistics import (
    equivalent_training_size,
    loglog_fit,
    paired_t_test,
)

JOB = re.compile(r"^n(\d+)-s(\d+)$")


def _grid_rows(grid: Path, label: str, extra: dict) -> list[dict]:
    rows = []
    for job in sorted(grid.iterdir()):
        match = JOB.match(job.name)
        if not match or not job.is_dir():
            continue
        where = {"size": int(match[1]), "seed": int(match[2]), **extra}
        zero = job / "zero-shot.json"
        if zero.exists():
            for method, metrics in json.loads(zero.read_text()).items():
                rows.append({"method": method + label, **where, **metrics, "path": str(job)})
        for result in sorted(job.glob("*/result.json")):
            r = json.loads(result.read_text())
            rows.append(
                {
                    "method": r["strategy"] + label,
                    **where,
                    **r["test"],
                    "sec_per_epoch": r.get("seconds_per_epoch", np.nan),
                    "seconds": r.get("seconds", np.nan),
                    "path": str(result.parent),
                }
            )
    return rows


def load_sources(root: str | Path) -> dict[str, dict]:
    """``sources.json`` of a benchmark grid (empty when there is none)."""
    path = Path(root) / "sources.json"
    return json.loads(path.read_text()) if path.exists() else {}


def load_runs(root: str | Path) -> pd.DataFrame:
    """One row per (method, size, seed): test metrics, seconds per epoch, run folder, and
    for benchmark grids the source and its pretraining-set size."""
    root = Path(root)
    rows = _grid_rows(root, "", {})
    sources = load_sources(root)
    for grid in sorted(p for p in root.iterdir() if p.is_dir() and not JOB.match(p.name)):
        if grid.name == "common":
            rows += _grid_rows(grid, "", {"source": ""})
        elif grid.name in sources:
            info = sources[grid.name]
            mark = "†" if info.get("saw_test") else ""
            extra = {
                "source": grid.name,
                "n_pretrain": info.get("n_pretrain", np.nan),
                "series": info.get("series", ""),
            }
            rows += _grid_rows(grid, f" [{grid.name}{mark}]", extra)
    if not rows:
        raise FileNotFoundError(f"{root}: no n<size>-s<seed>/<method>/result.json found")
    return pd.DataFrame(rows)


def _raw_zero_shot(method: str) -> bool:
    """The source's raw output, in the source's unit (eV/atom against eV/cell, say)."""
    return method.split(" [")[0] == "zero-shot"


def _pretrained_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """Runs of pretrained sources, with the method without its source (``base``), less
    the raw zero-shot output."""
    pretrained = runs.dropna(subset=["n_pretrain"]).copy()
    method = pretrained["method"].str.split(" [", regex=False).str[0]
    pretrained = pretrained[~method.map(_raw_zero_shot)]
    # one curve per method and what the sources were pretrained on (their series)
    series = pretrained.get("series", "")
    named = pd.Series(series, index=pretrained.index).fillna("").astype(str)
    pretrained["base"] = method[pretrained.index] + named.map(lambda s: f" ({s})" if s else "")
    return pretrained


def decimal_log_axes(ax) -> None:
    """Log–log axes labelled in plain decimals (``50``, ``0.4``, not ``5×10¹``), the
    minor ticks at 2 and 5 of each decade labelled too: what a reader of a learning
    curve reads sizes and errors off."""
    from matplotlib.ticker import FuncFormatter, LogLocator

    ax.set_xscale("log")
    ax.set_yscale("log")
    major = FuncFormatter(lambda value, _: f"{value:g}")
    minor = FuncFormatter(lambda value, _: f"{value:g}" if f"{value:.0e}"[0] in "25" else "")
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_minor_locator(LogLocator(subs=(2.0, 5.0)))
        axis.set_major_formatter(major)
        axis.set_minor_formatter(minor)


def _finish_loglog(fig, ax, path: Path, xlabel: str, unit: str, title: str, **legend) -> None:
    """Log–log axes in decimals, labels with the unit, legend, grid; saved and closed."""
    decimal_log_axes(ax)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"test MAE ({unit})" if unit else "test MAE")
    ax.set_title(title)
    ax.legend(fontsize=8, **legend)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def pretraining_scaling(runs: pd.DataFrame) -> pd.DataFrame | None:
    """Test MAE against pretraining-set size (Hoffmann et al. Fig. 3): mean over seeds per
    (method, training-set size) and pretraining size, with the log–log slope; ``None``
    unless the grid has sources pretrained on at least two sizes."""
    if "n_pretrain" not in runs or runs["n_pretrain"].nunique() < 2:
        return None
    mean = (
        _pretrained_runs(runs)
        .groupby(["base", "size", "n_pretrain"])["mae"]
        .mean()
        .unstack("n_pretrain")
    )
    mean = mean[mean.notna().sum(axis=1) >= 2]  # a curve needs two sizes
    mean = mean.loc[:, mean.notna().any()]
    if mean.empty:
        return None
    mean.columns = [f"P={int(c)}" for c in mean.columns]
    sizes = np.array([int(c[2:]) for c in mean.columns], dtype=float)
    slopes = []
    for _, row in mean.iterrows():
        ok = row.notna().to_numpy()
        slopes.append(loglog_fit(sizes[ok], row.to_numpy()[ok]).slope if ok.sum() >= 2 else np.nan)
    table = mean.map(lambda v: "" if np.isnan(v) else f"{v:.4f}")
    table["slope"] = [f"{v:+.3f}" for v in slopes]
    table.index = [f"{m}, N={n}" for m, n in table.index]
    table.index.name = "method, target size"
    return table


def plot_pretraining_scaling(runs: pd.DataFrame, path: Path, unit: str) -> None:
    stats = (
        _pretrained_runs(runs).groupby(["base", "size", "n_pretrain"])["mae"].agg(["mean", "std"])
    )
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    for (method, size), group in stats.groupby(level=["base", "size"]):
        group = group.droplevel(["base", "size"])
        ax.errorbar(
            group.index,
            group["mean"],
            yerr=group["std"].fillna(0),
            fmt="o-",
            capsize=3,
            label=f"{method}, N={size}",
        )
    _finish_loglog(
        fig,
        ax,
        path,
        "pretraining-set size P (structures)",
        unit,
        "Error vs pretraining-set size (mean ± std over seeds)",
    )


def budget_fits(runs: pd.DataFrame) -> dict[str, TwoSizeFit | str]:
    """The error of each pretrained method (and source series) fitted in both the
    target-set size and the pretraining-set size (:func:`~tlmat.evaluation.cost.fit_two_sizes`,
    every seed a point), for those with sources of at least two pretraining sizes and runs
    at two target sizes; where the fit has no budget optimum (an exponent ≥ 0), why not."""
    if "n_pretrain" not in runs:
        return {}
    fits: dict[str, TwoSizeFit | str] = {}
    for base, group in _pretrained_runs(runs).groupby("base", sort=False):
        if group["n_pretrain"].nunique() < 2 or group["size"].nunique() < 2:
            continue
        try:
            fit = fit_two_sizes(group["size"], group["n_pretrain"], group["mae"])
        except ValueError as error:  # sizes that vary together, a NaN error: say so
            fits[base] = f"{base}: {error}"
            continue
        if fit.alpha < 0 and fit.beta < 0:
            fits[base] = fit
        else:
            fits[base] = (
                f"{base}: the error does not fall with both sizes (exponents "
                f"{fit.alpha:+.3f} target, {fit.beta:+.3f} pretraining), no budget optimum"
            )
    return fits


def budget_tables(
    fits: dict[str, TwoSizeFit], curves: dict[str, list[BudgetCurve]], baseline: str
) -> dict[str, pd.DataFrame]:
    """Two tables: each method's fitted exponents, and per budget the best split with its
    predicted MAE beside ``baseline`` given the whole budget (``*``: outside the sizes the
    fits were made on; ± the standard error of the fitted curve)."""

    def mae(point: BudgetPoint) -> str:
        return f"{point.mae:.3f} ± {point.mae_stderr:.3f}" + ("*" if point.extrapolated else "")

    exponents = {
        base: {
            "target exponent α": f"{fit.alpha:+.3f} ± {math.sqrt(fit.covariance[1][1]):.3f}",
            "pretraining exponent β": f"{fit.beta:+.3f} ± {math.sqrt(fit.covariance[2][2]):.3f}",
            "r²": f"{fit.r2:.3f}",
            "runs": fit.n,
            "budget share on target calculations": f"{fit.expensive_share:.2f}",
        }
        for base, fit in fits.items()
    }
    rows = []
    for base, base_curves in curves.items():
        for curve in base_curves:
            best, scratch = curve.best, curve.scratch
            row = {
                "method": base,
                "budget (h)": f"{curve.budget:g}",
                "best: target / pretraining calculations": f"{best.n_expensive:.0f} / "
                f"{best.n_cheap:.0f}",
                "best MAE": mae(best),
            }
            if scratch is not None:
                row[f"{baseline}: target calculations"] = f"{scratch.n_expensive:.0f}"
                row[f"{baseline} MAE"] = mae(scratch)
                row["change"] = f"{best.mae / scratch.mae - 1:+.1%}"
            rows.append(row)
    fit_table = pd.DataFrame.from_dict(exponents, orient="index")
    fit_table.index.name = "method"
    return {"fit": fit_table, "budgets": pd.DataFrame(rows).set_index("method")}


def plot_budget_curves(curves: dict[str, list[BudgetCurve]], path: Path, unit: str) -> None:
    """One panel per method: predicted MAE against the share of the budget spent on
    target-fidelity calculations, one line per budget (dotted outside the fitted sizes),
    its minimum starred and scratch given the whole budget as a square at share 1."""
    fig, axes = plt.subplots(1, len(curves), figsize=(5.2 * len(curves), 4.2), squeeze=False)
    for ax, (base, base_curves) in zip(axes[0], curves.items(), strict=True):
        for colour, curve in zip(
            plt.cm.viridis(np.linspace(0, 0.85, len(base_curves))), base_curves, strict=True
        ):
            label = f"B = {curve.budget:g} h"
            ax.plot(curve.share, curve.mae, ":", color=colour)
            ax.plot(
                curve.share,
                np.where(curve.inside, curve.mae, np.nan),
                "-",
                color=colour,
                label=label,
            )
            ax.plot(
                curve.best.n_expensive * curve.expensive_hours / curve.budget,
                curve.best.mae,
                "*",
                ms=12,
                color=colour,
            )
            if curve.scratch is not None:
                ax.errorbar(
                    1.0,
                    curve.scratch.mae,
                    yerr=curve.scratch.mae_stderr,
                    fmt="s",
                    color=colour,
                    capsize=3,
                )
        _decimal_log_y(ax)
        ax.plot([], [], "k*", ms=10, label="optimum")
        ax.plot([], [], "ks", label="scratch, whole budget")
        ax.set_xlim(0, 1.03)
        ax.set_xlabel("share of the budget on target-fidelity calculations")
        ax.set_ylabel(f"predicted test MAE ({unit})" if unit else "predicted test MAE")
        ax.set_title(base, fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def _decimal_log_y(ax) -> None:
    """A log y axis labelled in plain decimals, as :func:`decimal_log_axes`."""
    from matplotlib.ticker import FuncFormatter, LogLocator

    ax.set_yscale("log")
    ax.yaxis.set_minor_locator(LogLocator(subs=(2.0, 3.0, 5.0, 7.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.yaxis.set_minor_formatter(FuncFormatter(lambda value, _: f"{value:g}"))


def budget_section(
    runs: pd.DataFrame,
    out: Path,
    unit: str,
    baseline: str,
    costs: tuple[float, float],
    budgets: Sequence[float] | None = None,
) -> tuple[dict[str, pd.DataFrame], list[tuple[str, str]], list[str]]:
    """The compute-budget section (Hoffmann et al. Fig. 5): tables by heading, the figure
    drawn into ``out`` (file, caption), and why not where it cannot be drawn. ``costs``:
    (cheap, expensive) hours a calculation; ``budgets``: totals in the same hours, by
    default what each training-set size of the grid cost in target calculations."""
    fits = budget_fits(runs)
    usable = {base: fit for base, fit in fits.items() if isinstance(fit, TwoSizeFit)}
    missing = [f"compute-budget curve: {why}" for why in fits.values() if isinstance(why, str)]
    if not fits:
        missing.append(
            "compute-budget curve: no pretrained method has sources of two pretraining "
            "sizes and runs at two training-set sizes"
        )
    if not usable:
        return {}, [], missing
    cheap, expensive = costs
    scratch_runs = runs[runs["method"] == baseline]
    scratch = None
    if scratch_runs["size"].nunique() >= 2:  # every seed a point, as in the transfer fit
        scratch = loglog_fit(scratch_runs["size"], scratch_runs["mae"])
    totals = list(budgets) if budgets else [expensive * n for n in sorted(runs["size"].unique())]
    curves = {
        base: [budget_curve(fit, total, cheap, expensive, scratch) for total in totals]
        for base, fit in usable.items()
    }
    tables = budget_tables(usable, curves, baseline)
    heading = (
        f"compute budget at {cheap:g} h a pretraining and {expensive:g} h a target calculation"
    )
    plot_budget_curves(curves, out / "budget_curves.png", unit)
    caption = (
        "Predicted test MAE along each budget line, pretraining calculations at "
        f"{cheap:g} h and target calculations at {expensive:g} h each, against the share "
        "spent on target calculations: solid inside the fitted sizes, dotted outside; "
        f"star: the optimum; square at 1: {baseline} given the whole budget (± standard error "
        "of its fitted curve)."
    )
    named = {
        f"{heading}: fitted surface": tables["fit"],
        f"{heading}: best split": tables["budgets"],
    }
    return named, [("budget_curves.png", caption)], missing


def sources_table(sources: dict[str, dict]) -> pd.DataFrame:
    """One row per source: origin, pretraining-set size and error, leakage."""
    rows = {}
    for name, info in sources.items():
        test = info.get("pretrain_test") or {}
        rows[name] = {
            "kind": info.get("kind", ""),
            "pretraining size": info.get("n_pretrain", ""),
            "removed (same id / same formula)": (
                f"{info['n_excluded_same_id']} / {info['n_excluded_same_formula']}"
                if "n_excluded_same_id" in info
                else ""
            ),
            "pretraining test MAE": f"{test['mae']:.4f}" if "mae" in test else "",
            "saw test materials": f"† {info['saw_test']}" if info.get("saw_test") else "no",
        }
    frame = pd.DataFrame.from_dict(rows, orient="index")
    frame.index.name = "source"
    return frame


def summary_tables(runs: pd.DataFrame, baseline: str = "scratch") -> dict[str, pd.DataFrame]:
    """Test MAE (mean ± std, n), paired t-test p-values against the baseline over seeds,
    equivalent baseline training-set sizes, and seconds per epoch; methods × sizes."""
    grouped = runs.groupby(["method", "size"])["mae"]
    # sample std (ddof = 1) over seeds, the one std of every table, figure and the README
    mean, std, count = grouped.mean(), grouped.std(ddof=1), grouped.count()
    mae = (
        mean.map("{:.4f}".format)
        + std.map(lambda v: "" if np.isnan(v) else f" ± {v:.4f}")  # no spread from one seed
        + " (n="
        + count.astype(str)
        + ")"
    ).unstack("size")

    def p_value(group: pd.DataFrame) -> str:
        method, size = group.name
        base = runs[(runs.method == baseline) & (runs["size"] == size)].set_index("seed")["mae"]
        mine = group.set_index("seed")["mae"]
        seeds = sorted(set(mine.index) & set(base.index))
        if method == baseline or len(seeds) < 2 or _raw_zero_shot(method):
            return ""
        test = paired_t_test(mine[seeds].to_numpy(), base[seeds].to_numpy())
        return f"{test.p_value:.3g} (Δ {test.mean_difference:+.4f})"

    p_values = runs.groupby(["method", "size"]).apply(p_value, include_groups=False)
    tables = {"test MAE": mae}
    if (p_values != "").any():  # one seed gives no test: no table of empty cells
        tables[f"paired t-test vs {baseline}"] = p_values.unstack("size")

    base_curve = (
        mean.xs(baseline, level="method") if baseline in mean.index.get_level_values(0) else None
    )
    if base_curve is not None and len(base_curve) >= 2:
        fit = loglog_fit(base_curve.index.to_numpy(), base_curve.to_numpy())
        tables["_fit"] = pd.DataFrame(
            {"slope": [fit.slope], "intercept": [fit.intercept], "r2": [fit.r2]}
        )

    if base_curve is not None and len(base_curve) >= 2 and fit.slope < 0:
        # a curve that does not fall (too few epochs, say) cannot be inverted: the fit
        # is still reported, the equivalent sizes are not

        def equivalent(value: float, size: int) -> str:
            eq = equivalent_training_size(fit, value)
            return f"{eq.size:.0f}{'*' if eq.extrapolated else ''} ({eq.size / size:.1f}×)"

        # the raw zero-shot output is in the source's unit (eV/atom against eV/cell, say)
        eq_table = {
            (m, s): equivalent(v, s)
            for (m, s), v in mean.items()
            if m != baseline and not _raw_zero_shot(m)
        }
        tables[f"equivalent {baseline} training-set size"] = (
            pd.Series(eq_table).rename_axis(["method", "size"]).unstack("size")
        )
    if "sec_per_epoch" in runs:
        speed = runs.dropna(subset=["sec_per_epoch"]).groupby(["method", "size"])["sec_per_epoch"]
        tables["seconds per epoch"] = speed.mean().map("{:.2f}".format).unstack("size")
    for name, table in tables.items():  # rows in a meaningful order, not alphabetical
        if not name.startswith("_") and table.index.name == "method":
            tables[name] = table.reindex(method_order(table.index))
    return tables


#: Okabe & Ito's colour-blind-safe palette (Nature Methods 8, 441, 2011), black last
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000"]
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]
#: how methods are listed: the floor, descriptor baselines, from scratch, the source as
#: it is, then the transfer strategies from least to most of the source kept frozen
#: (here by name: a report reads results, and needs neither torch nor the strategies)
ORDER = [
    "base", "magpie", "soap", "sine", "scratch", "zero-shot", "zero-shot+linear", "full",
    "discriminative", "l2-sp", "lora", "replay", "freeze-embedding", "freeze-first",
    "head-only", "features+mlp", "features+mlps", "features+rf", "features+gbt",
    "features+ridge", "moments+mlp", "moments+mlps", "moments+rf", "moments+gbt",
    "moments+ridge",
]  # fmt: skip


def _strategy(method: str) -> str:
    """``full [mp-cgcnn]`` → ``full``; ``freeze-first-2`` → ``freeze-first``."""
    name = method.split(" [")[0]
    return re.sub(r"-\d+$", "", name)


def method_order(methods) -> list[str]:
    """Methods in a meaningful order (:data:`ORDER`), then by source."""

    def rank(method: str) -> tuple[int, str]:
        strategy = _strategy(method)
        if strategy in ORDER:
            return ORDER.index(strategy), method
        for i, known in enumerate(ORDER):  # scratch-alignn, magpie-rf, …
            if strategy.startswith((known + "-", known + "+")):
                return i, method
        return len(ORDER), method

    return sorted(dict.fromkeys(methods), key=rank)


#: a fixed colour per family of methods (Okabe–Ito, grey for the source as it is), so a
#: method has the same colour in every figure of every report
FAMILY_COLOURS = {
    "base": "#000000",
    "magpie": "#999999",
    "soap": "#999999",
    "sine": "#999999",
    "scratch": "#E69F00",
    "zero-shot": "#999999",
    "zero-shot+linear": "#666666",
    "full": "#0072B2",
    "discriminative": "#56B4E9",
    "freeze-embedding": "#009E73",
    "freeze-first": "#CC79A7",
    "head-only": "#D55E00",
    "features+mlp": "#F0E442",
    "features+rf": "#8C6D1F",
}


def _family(method: str) -> str:
    strategy = _strategy(method)
    if strategy in ORDER:
        return strategy
    return next((k for k in ORDER if strategy.startswith((k + "-", k + "+"))), strategy)


def _variant(method: str) -> str:
    """What tells apart methods of one family: the source, or scratch's architecture."""
    source = method.split(" [")[1].rstrip("]") if " [" in method else ""
    extra = _strategy(method)[len(_family(method)) :].lstrip("-+")
    return "/".join(x for x in (extra, source) if x)


#: further colours for methods whose family colour another method of the figure took:
#: the rest of Okabe–Ito's, then Paul Tol's muted, light and vibrant schemes (colour-blind
#: safe)
SPARE_COLOURS = [
    *PALETTE, "#882255", "#117733", "#332288", "#AA4499", "#44AA99", "#661100", "#CC6677",
    "#DDCC77", "#88CCEE", "#999933", "#6699CC", "#EE8866", "#BBCC33", "#77AADD", "#FFAABB",
    "#EE7733", "#0077BB", "#33BBEE", "#EE3377", "#CC3311", "#009988",
]  # fmt: skip
#: a line style per method, so that a greyscale print still tells them apart
LINE_STYLES = ["-", "--", "-.", ":", (0, (5, 1, 1, 1, 1, 1)), (0, (8, 2)), (0, (1, 3))]


def method_styles(methods) -> dict[str, dict]:
    """For each method of a figure its own colour (its family's, :data:`FAMILY_COLOURS`,
    unless another method took it first), line style and marker (a marker per variant:
    source or architecture), so that a dozen series stay apart in colour and in a
    greyscale print, and a method keeps its colour across the figures of a report."""
    methods = method_order(methods)
    variants = sorted({_variant(m) for m in methods})
    # spares first from the colours no family owns, so that none takes another's
    owned = set(FAMILY_COLOURS.values())
    spares = sorted(SPARE_COLOURS, key=owned.__contains__)
    used: set[str] = set()
    styles = {}
    for k, method in enumerate(methods):
        family = _family(method)
        preferred = FAMILY_COLOURS.get(family, PALETTE[sum(map(ord, family)) % len(PALETTE)])
        spare = (c for c in spares if c not in used)
        colour = preferred if preferred not in used else next(spare, preferred)
        used.add(colour)
        styles[method] = {
            "color": colour,
            "linestyle": LINE_STYLES[k % len(LINE_STYLES)],
            "marker": MARKERS[variants.index(_variant(method)) % len(MARKERS)],
        }
    return styles


def _predictions(runs: pd.DataFrame, size: int) -> dict[str, pd.DataFrame]:
    """Test-set predictions of every method at one size, all seeds (a ``seed`` column)."""
    out = {}
    for method, group in runs[runs["size"] == size].sort_values("seed").groupby("method"):
        frames = []
        for seed, path in zip(group["seed"], group["path"], strict=True):
            file = Path(path) / "predictions.csv"
            if file.exists():
                frames.append(pd.read_csv(file).assign(seed=seed))
        if frames:
            out[method] = pd.concat(frames, ignore_index=True)
    return {m: out[m] for m in method_order(out)}


def _within(path: str, threshold: float) -> float:
    """Fraction of a run's test errors within ``threshold`` (NaN without predictions)."""
    file = Path(path) / "predictions.csv"
    if not file.exists():
        return np.nan
    frame = pd.read_csv(file)
    return float(((frame["predicted"] - frame["true"]).abs() <= threshold).mean())


def metrics_table(runs: pd.DataFrame, size: int) -> pd.DataFrame:
    """Every test metric of every method at one training-set size, mean over seeds."""
    names = [c for c in ("mae", "rmse", "r2", "max_error", "median_ae", "q95_ae") if c in runs]
    table = runs[runs["size"] == size].groupby("method")[names].mean().map("{:.4f}".format)
    return table.reindex(method_order(table.index)).rename_axis("method")


def plot_learning_curves(runs: pd.DataFrame, path: Path, unit: str, baseline: str) -> None:
    fig, ax = plt.subplots(figsize=(8.6, 4.8))
    stats = runs.groupby(["method", "size"])["mae"].agg(["mean", "std"]).reset_index()
    styles = method_styles(stats["method"])
    for method in method_order(stats["method"]):
        group = stats[stats["method"] == method]
        if _raw_zero_shot(method):  # raw source output in another unit: off the scale
            continue
        line = ax.errorbar(
            group["size"],
            group["mean"],
            yerr=group["std"].fillna(0),  # sample std (ddof = 1) over seeds
            ls=styles[method]["linestyle"],
            marker=styles[method]["marker"],
            color=styles[method]["color"],
            capsize=3,
            label=method,
            lw=2.5 if method == baseline else 1.3,
            ms=6 if method == baseline else 5,
        )
        if method == baseline and len(group) >= 2:
            fit = loglog_fit(group["size"].to_numpy(), group["mean"].to_numpy())
            sizes = np.geomspace(group["size"].min(), group["size"].max(), 50)
            ax.plot(
                sizes,
                fit.predict(sizes),
                ":",
                color=line[0].get_color(),
                label=f"{baseline} fit, slope {fit.slope:.2f}",
            )
    _finish_loglog(
        fig,
        ax,
        path,
        "training-set size N (structures)",
        unit,
        "Learning curves (mean ± sample std over seeds)",
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
    )


def parity_range(predictions: dict[str, pd.DataFrame]) -> tuple[float, float]:
    """One axis range for every parity panel: all true and predicted values of every
    method, with 3 % margins, so that panels compare at a glance."""
    values = np.concatenate(
        [f[c].to_numpy(float) for f in predictions.values() for c in ("true", "predicted")]
    )
    lo, hi = float(np.nanmin(values)), float(np.nanmax(values))
    pad = 0.03 * (hi - lo) if hi > lo else 0.5
    return lo - pad, hi + pad


def plot_parity(predictions: dict[str, pd.DataFrame], path: Path, unit: str, size: int) -> None:
    """One square panel per method with the test predictions of every seed (a marker
    each), every panel on the same axis range; three panels a row, each large enough to
    read at the width of the HTML report."""
    methods = list(predictions)
    cols = min(3, len(methods))
    rows = int(np.ceil(len(methods) / cols))
    fig, axes = plt.subplots(
        rows, cols, figsize=(4.2 * cols, 4.2 * rows), squeeze=False, sharex=True, sharey=True
    )
    label = f" ({unit})" if unit else ""
    styles = method_styles(methods)
    seeds = sorted({s for f in predictions.values() for s in f["seed"].unique()})
    lo, hi = parity_range(predictions)
    for ax, method in zip(axes.flat, methods, strict=False):
        frame = predictions[method]
        for k, (seed, part) in enumerate(frame.groupby("seed")):
            ax.scatter(
                part["true"], part["predicted"], s=7, alpha=0.4,
                color=styles[method]["color"], marker=MARKERS[k % len(MARKERS)],
                label=f"seed {seed}",
            )  # fmt: skip
        ax.plot([lo, hi], [lo, hi], "k--", lw=1)
        ax.set(xlim=(lo, hi), ylim=(lo, hi), aspect="equal")
        mae = (frame["predicted"] - frame["true"]).abs().mean()
        ax.set_title(f"{method}\nMAE {mae:.3f}{label}", fontsize=11)
        ax.tick_params(labelsize=9, labelbottom=True, labelleft=True)
        ax.set_xlabel(f"DFT{label}", fontsize=10)
        ax.set_ylabel(f"predicted{label}", fontsize=10)
        ax.grid(True, alpha=0.3)
    for ax in list(axes.flat)[len(methods) :]:
        ax.axis("off")
    which = f"all {len(seeds)} seeds, a marker each" if len(seeds) > 1 else f"seed {seeds[0]}"
    fig.suptitle(f"Parity on the test set, N = {size} ({which})", fontsize=13)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def plot_error_distributions(
    predictions: dict[str, pd.DataFrame],
    cdf_path: Path,
    box_path: Path,
    unit: str,
    threshold: float | None,
    size: int,
) -> None:
    """Cumulative distribution of |error| on a linear axis (with the threshold), and the
    signed errors of each method as a box plot (all seeds pooled), one row per method."""
    label = f" ({unit})" if unit else ""
    styles = method_styles(predictions)
    fig, ax = plt.subplots(figsize=(8.6, 4.8))
    upper = 0.0
    for method, frame in predictions.items():
        errors = np.sort((frame["predicted"] - frame["true"]).abs().to_numpy())
        upper = max(upper, float(np.quantile(errors, 0.98)))
        ax.plot(
            errors,
            np.arange(1, len(errors) + 1) / len(errors),
            label=method,
            color=styles[method]["color"],
            ls=styles[method]["linestyle"],
            marker=styles[method]["marker"],
            markevery=max(len(errors) // 8, 1),
            ms=4,
        )
    if threshold is not None:
        ax.axvline(threshold, color="k", ls=":", lw=1.2, label=f"threshold {threshold:g}{label}")
        upper = max(upper, 1.5 * threshold)
    ax.set_xlim(0, upper)  # the 2 % largest errors would squeeze the rest into a corner
    ax.set_ylim(0, 1.0)
    ax.set_xlabel(f"absolute error{label}")
    ax.set_ylabel("fraction of test structures")
    ax.set_title(f"Cumulative error distribution, N = {size} (all seeds)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(cdf_path, dpi=130)
    plt.close(fig)

    methods = list(predictions)
    fig, ax = plt.subplots(figsize=(7.2, 0.45 * len(methods) + 1.4))
    errors = [(predictions[m]["predicted"] - predictions[m]["true"]).to_numpy() for m in methods]
    parts = ax.boxplot(
        errors,
        vert=False,
        whis=(5, 95),
        showfliers=False,
        patch_artist=True,
        medianprops={"color": "black"},
    )
    for patch, method in zip(parts["boxes"], methods, strict=True):
        patch.set_facecolor(styles[method]["color"])
        patch.set_alpha(0.6)
    ax.set_yticks(range(1, len(methods) + 1), methods, fontsize=8)
    ax.invert_yaxis()  # the first method on top, as in the tables
    ax.axvline(0, color="k", lw=0.8)
    ax.set_xlabel(f"prediction − DFT{label}")
    ax.set_title(f"Signed errors, N = {size}: median, quartiles, 5–95 % whiskers")
    ax.grid(True, axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(box_path, dpi=130)
    plt.close(fig)


def markdown_table(frame: pd.DataFrame) -> list[str]:
    """The lines of a Markdown table; integer columns are training-set sizes (``N=…``)."""
    frame = frame.fillna("")
    names = [f"N={c}" if isinstance(c, int | np.integer) else str(c) for c in frame.columns]
    header = "| " + " | ".join([frame.index.name or "", *names])
    lines = [header + " |", "|---" * (len(frame.columns) + 1) + "|"]
    for index, row in frame.iterrows():
        lines.append("| " + " | ".join([str(index), *map(str, row.to_numpy())]) + " |")
    return lines


def beside_published(runs: pd.DataFrame, size: int, references: dict[str, float]) -> pd.DataFrame:
    """This grid's methods at ``size`` (mean test MAE over seeds, raw zero-shot rows left
    out) and the published ``references``, best first."""
    here = runs[(runs["size"] == size) & ~runs["method"].map(_raw_zero_shot)]
    mean = here.groupby("method")["mae"].agg(["mean", "count"])
    rows = [(m, r["mean"], f"this grid, {int(r['count'])} seed(s)") for m, r in mean.iterrows()]
    rows += [(name, float(value), "published") for name, value in references.items()]
    table = pd.DataFrame(rows, columns=["row", "test MAE", "origin"]).sort_values("test MAE")
    table["test MAE"] = table["test MAE"].map("{:.4f}".format)
    return table.set_index("row")


def write_report(
    root: str | Path,
    out: str | Path | None = None,
    unit: str = "",
    threshold: float | None = None,
    baseline: str = "scratch",
    title: str | None = None,
    references: dict[str, float] | None = None,
    dft_hours: float | None = None,
    cheap_dft_hours: float | None = None,
    budgets: Sequence[float] | None = None,
) -> Path:
    """Write ``report.md``, ``report.html`` and PNG figures for a results grid;
    ``references``: published test MAEs on the same task (leaderboard rows, in ``unit``),
    set beside this grid's best rows; ``dft_hours``: what one DFT calculation of the
    target costs (hours), for a section on each method's cost and break-even.

    With ``dft_hours`` or ``cheap_dft_hours`` (what one calculation of the pretraining
    fidelity costs) and sources of several pretraining sizes, a compute-budget section
    too: the best split of each total in ``budgets`` (hours; default: the cost of each
    training-set size in target calculations) between the two fidelities. Given one cost
    alone, the other is taken ``DEFAULT_COST_RATIO`` (10) times apart."""
    root = Path(root)
    out = Path(out) if out is not None else root / "report"
    out.mkdir(parents=True, exist_ok=True)
    runs = load_runs(root)
    if threshold is not None:
        runs["within_threshold"] = [_within(path, threshold) for path in runs["path"]]
    runs.to_csv(out / "runs.csv", index=False)
    tables = _report_tables(runs, baseline, unit, threshold, references)
    figures, missing = _report_figures(runs, out, unit, threshold, baseline)
    scaling = pretraining_scaling(runs)
    if scaling is not None:
        tables["test MAE vs pretraining-set size"] = scaling
        plot_pretraining_scaling(runs, out / "pretraining_scaling.png", unit)
        figures.append(
            ("pretraining_scaling.png", "Test MAE against the size of the pretraining set.")
        )
    sources = load_sources(root)
    if dft_hours is not None:
        from tlmat.evaluation.cost import cost_table, source_seconds

        largest = int(runs["size"].max())
        pretraining = source_seconds(root, sources)
        tables[f"cost and break-even at N={largest}, DFT at {dft_hours:g} h a structure"] = (
            cost_table(runs, pretraining, dft_hours, largest)
        )
    costs = budget_costs(dft_hours, cheap_dft_hours)
    if costs is not None:
        budget_named, budget_figures, budget_missing = budget_section(
            runs, out, unit, baseline, costs, budgets
        )
        tables.update(budget_named)
        figures += budget_figures
        missing += budget_missing
    lines = _introduction(runs, root, unit, title, sources)
    lines += _table_sections(tables, unit, baseline)
    lines += ["## Figures", ""]
    for number, (file, caption) in enumerate(figures, start=1):
        lines += [f"![{file}]({file})", "", f"*Figure {number}.* {caption}", ""]
    if missing:
        lines += ["Not drawn:", "", *[f"- {why}" for why in missing], ""]
    markdown = "\n".join(lines) + "\n"
    (out / "report.md").write_text(markdown)
    (out / "report.html").write_text(_html(markdown, title or root.name))
    return out / "report.md"


def _report_tables(
    runs: pd.DataFrame,
    baseline: str,
    unit: str,
    threshold: float | None,
    references: dict[str, float] | None,
) -> dict[str, pd.DataFrame]:
    """The report's tables by heading, in order (``_fit``: the baseline's power law, used
    by the text, not shown); the largest training-set size gets the detailed ones."""
    tables = summary_tables(runs, baseline)
    largest = int(runs["size"].max())
    tables[f"all metrics at N={largest} (mean over seeds)"] = metrics_table(runs, largest)
    if threshold is not None:
        within = runs.dropna(subset=["within_threshold"]).groupby(["method", "size"])
        tables[f"fraction of test errors within {threshold:g} {unit}".rstrip()] = (
            within["within_threshold"].mean().map("{:.3f}".format).unstack("size")
        )
    if references:
        tables[f"beside published results (N = {largest} here)"] = beside_published(
            runs, largest, references
        )
    return tables


def _report_figures(
    runs: pd.DataFrame, out: Path, unit: str, threshold: float | None, baseline: str
) -> tuple[list[tuple[str, str]], list[str]]:
    """Draw the learning curves and the test-set figures at the largest size into
    ``out``: (file, caption) of each figure drawn, and each one not drawn with why."""
    figures: list[tuple[str, str]] = []
    missing: list[str] = []
    largest = int(runs["size"].max())
    if runs["size"].nunique() >= 2:
        plot_learning_curves(runs, out / "learning_curves.png", unit, baseline)
        figures.append(
            (
                "learning_curves.png",
                "Test MAE against training-set size, mean ± sample std over "
                f"{runs['seed'].nunique()} seed(s); dotted: the power law fitted to "
                f"{baseline}. Colour: strategy; marker: source.",
            )
        )
    else:
        missing.append("learning curves: the grid has one training-set size")
    predictions = _predictions(runs, largest)
    if not predictions:
        missing.append(f"parity and error figures: no predictions.csv in the runs at N = {largest}")
        return figures, missing
    plot_parity(predictions, out / "parity.png", unit, largest)
    plot_error_distributions(
        predictions, out / "error_cdf.png", out / "error_box.png", unit, threshold, largest
    )
    figures += [
        ("parity.png", f"Predicted against DFT on the test set at N = {largest}, every seed."),
        (
            "error_cdf.png",
            f"Fraction of test structures within an absolute error, N = {largest}, all "
            "seeds" + (f"; dotted: the threshold {threshold:g} {unit}" if threshold else "."),
        ),
        (
            "error_box.png",
            f"Signed test errors at N = {largest}, all seeds pooled: box = quartiles, "
            "whiskers = 5th–95th percentiles.",
        ),
    ]
    at_largest = set(runs[runs["size"] == largest]["method"]) - set(predictions)
    without = sorted(m for m in at_largest if not m.startswith("zero-shot"))
    if without:
        missing.append(f"no predictions.csv, so not in the parity and error figures: "
                       f"{', '.join(without)}")  # fmt: skip
    return figures, missing


def _introduction(
    runs: pd.DataFrame, root: Path, unit: str, title: str | None, sources: dict[str, dict]
) -> list[str]:
    """The report's title, what the numbers are, and the pretrained sources."""
    lines = [
        f"# {title or root.name}",
        "",
        f"{runs['seed'].nunique()} seed(s), training-set sizes "
        f"{', '.join(map(str, sorted(runs['size'].unique())))}; test-set metrics in "
        f"{unit or 'target units'}. ± is the sample standard deviation over seeds "
        f"(ddof = 1). Source data: `{root}`.",
        "",
    ]
    if any(_raw_zero_shot(m) for m in runs["method"]):
        lines += [
            "`zero-shot` rows are the source's raw predictions, in the source's own unit "
            "(e.g. eV/atom against a target in eV/cell): a reference, not a method; "
            "`zero-shot+linear` rescales them on the training set.",
            "",
        ]
    if sources:
        lines += [
            "## Sources",
            "",
            "Pretrained sources never saw the target's held-out materials (same id or same "
            "reduced formula removed). † marks a source that saw test materials: its rows "
            "are shown for reference, not as headline numbers.",
            "",
            *markdown_table(sources_table(sources)),
            "",
        ]
    return lines


#: what a table needs said under its heading: (heading begins with, ends with, the note)
TABLE_NOTES = (
    (
        "cost and break-even",
        "",
        "Wall hours measured on the machine that ran each job (its command and "
        "machine in each run.json), mean over seeds; a source's pretraining counted "
        "in full for every method that starts from it. Break-even: the materials the "
        "model must predict instead of computing to repay its training (Krawczuk & "
        "Venturi, Table 4); inference, milliseconds a structure, left out.",
    ),
    (
        "compute budget",
        "fitted surface",
        "Every seed's test MAE fitted as log10 MAE = c + α log10 N_target + β log10 "
        "N_pretrain (a product of power laws: Hoffmann et al.'s parallel log–log lines; "
        "± standard errors). Spending a share α/(α + β) of any budget on target "
        "calculations minimises it, whatever the budget and the costs (Hoffmann et al. "
        "Fig. 5).",
    ),
    (
        "compute budget",
        "best split",
        "The optimum of each budget line and the baseline's power law given the whole "
        "budget in target calculations; MAE ± the standard error of the fitted curve; "
        "* = outside the sizes the fits were made on (an extrapolation). The seeds share "
        "one pretrained source per size, so the source-to-source scatter is not in the "
        "errors.",
    ),
    (
        "test MAE vs pretraining",
        "",
        "Mean over seeds; slope of log10 MAE against log10 P (Hoffmann et al. Fig. 3).",
    ),
)


def _table_sections(tables: dict[str, pd.DataFrame], unit: str, baseline: str) -> list[str]:
    """One section per table, with what its heading needs said (units, the fitted law)."""
    lines: list[str] = []
    if "_fit" in tables and not any(name.startswith("equivalent") for name in tables):
        lines += [
            f"No equivalent {baseline} training-set sizes: the {baseline} learning curve "
            f"does not fall with N (log10 MAE slope {tables['_fit'].iloc[0].slope:+.3f}), "
            "so it cannot be inverted; train longer or over a wider range of sizes.",
            "",
        ]
    for name, table in tables.items():
        if name.startswith("_"):
            continue
        heading = f"{name} ({unit})" if unit and name in ("test MAE",) else name
        if name.startswith("all metrics") and unit:
            heading = f"{name}; MAE, RMSE and errors in {unit}"
        lines += [f"## {heading}", ""]
        if name.startswith("equivalent") and "_fit" in tables:
            fit = tables["_fit"].iloc[0]
            lines += [
                f"{baseline} learning curve: log10 MAE = {fit.intercept:.3f} "
                f"{fit.slope:+.3f} log10 N (r² {fit.r2:.3f}); * = outside the fitted "
                "range.",
                "",
            ]
        lines += [
            line
            for begins, ends, note in TABLE_NOTES
            if name.startswith(begins) and name.endswith(ends)
            for line in (note, "")
        ]
        lines += [*markdown_table(table), ""]
    return lines


def _html(markdown: str, title: str) -> str:
    """The report as HTML, rendered by markdown-it-py (CommonMark with tables)."""
    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark").enable("table").render(markdown)
    style = (
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto}"
        "table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}img{max-width:100%}"
        # the first column names the method or setting: read left to right
        "td:first-child,th:first-child{text-align:left}"
        "code{background:#f3f3f3;padding:0 3px}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
        f"</title><style>{style}</style></head><body>{body}</body></html>"
    )


def compare_tasks(
    roots: list[str | Path], methods: list[str], baseline: str = "scratch"
) -> tuple[pd.DataFrame, dict[str, float]]:
    """One method against the baseline over many tasks and sizes (Gupta et al.): per
    (task, size) the mean test MAE of both over seeds and the relative change; then the
    one-tailed sign test of the method's wins and the Wilcoxon signed-rank test of the
    paired means. ``methods`` are labels tried in order in each task (sources differ by
    task, e.g. ``full [mp-all]`` or ``full [pbe-all]``)."""
    from tlmat.evaluation.statistics import sign_test, wilcoxon_signed_rank

    rows = []
    for root in roots:
        runs = load_runs(root)
        mean = runs.groupby(["method", "size"])["mae"].mean()
        present = set(mean.index.get_level_values(0))
        method = next((m for m in methods if m in present), None)
        if method is None or baseline not in present:
            continue
        for size in sorted(set(mean[method].index) & set(mean[baseline].index)):
            rows.append(
                {
                    "task": Path(root).name,
                    "size": int(size),
                    "method": method,
                    "method MAE": mean[method, size],
                    f"{baseline} MAE": mean[baseline, size],
                    "change": mean[method, size] / mean[baseline, size] - 1,
                }
            )
    table = pd.DataFrame(rows)
    if table.empty:
        raise FileNotFoundError(f"none of {methods} found beside {baseline} in {roots}")
    differences = table["method MAE"] - table[f"{baseline} MAE"]
    decided = differences[differences != 0]
    wins = int((decided < 0).sum())
    tests = {"wins": wins, "comparisons": len(decided)}
    tests["sign_test_p"] = sign_test(wins, len(decided), "greater") if len(decided) else np.nan
    if len(decided) >= 2:
        wilcoxon = wilcoxon_signed_rank(
            table["method MAE"], table[f"{baseline} MAE"], alternative="less"
        )
        tests["wilcoxon_p"] = wilcoxon.p_value
    return table, tests
