"""The formation-energy scaling series of lee-asahi-bulk (tlmat issue 27, point 3): test MAE
of full fine-tuning (log10 GPa) per pretraining-set size P × target size N, the log–log slope
of MAE against P over the DFT-only sources with its standard error, and whether the
pseudo-labelled source (DFT + CHGNet labels, benchmarks/pseudo_labels.py) lies on that trend.

Reads a finished grid (``tlmat benchmark benchmarks/configs/lee-asahi-bulk.yaml``); trains
nothing. Every seed is a point of the fits (Hoffmann et al. Fig. 3 fit means; seeds give the
fit its scatter). "On the trend": the pseudo-labelled mean log10 MAE falls inside the 95 %
prediction interval of the DFT-only line for a mean of that many seeds.

    python3 benchmarks/formation_scaling.py
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from tlmat.machine import describe

REPO = Path(__file__).resolve().parents[1]
GRID = REPO / "benchmarks" / "results" / "lee-asahi-bulk"
OUT = REPO / "benchmarks" / "results" / "formation-scaling"
SERIES = "formation energy"
METHOD = "full"
UNIT = "log10 GPa"


def source_runs(grid: Path, method: str) -> pd.DataFrame:
    """One row per (source, N, seed) of ``method`` on every pretrained source, with the
    source's series, pretraining-set size P (structures) and the test MAE."""
    from tlmat.evaluation.report import load_runs

    runs = load_runs(grid)
    runs = runs[runs["n_pretrain"].notna()]
    runs = runs[runs["method"] == runs["source"].map(lambda s: f"{method} [{s}]")]
    columns = ["source", "series", "n_pretrain", "size", "seed", "mae"]
    return runs[columns].reset_index(drop=True)


def against_control(runs: pd.DataFrame, source: str, control: str) -> dict:
    """``source`` minus ``control`` test MAE per N, paired by seed (the same training
    draws): mean ± std of the differences and the paired t-test's p."""
    out = {}
    for size, group in runs[runs["source"].isin([source, control])].groupby("size"):
        table = group.pivot(index="seed", columns="source", values="mae").dropna()
        if len(table) < 2 or source not in table or control not in table:
            continue
        diff = table[source] - table[control]
        out[int(size)] = {
            "mean_difference": float(diff.mean()),
            "std_difference": float(diff.std()),
            "relative": float(diff.mean() / table[control].mean()),
            "p_paired_t": float(stats.ttest_rel(table[source], table[control]).pvalue),
            "seeds": len(table),
        }
    return out


def control_table(compared: dict, source: str, control: str) -> str:
    lines = [
        f"| N | {source} − {control} (mean ± std over seeds) | relative | paired t-test p |",
        "|---|---|---|---|",
    ]
    for size, c in compared.items():
        lines.append(
            f"| {size} | {c['mean_difference']:+.4f} ± {c['std_difference']:.4f} "
            f"| {c['relative']:+.1%} | {c['p_paired_t']:.2f} ({c['seeds']} seeds) |"
        )
    return "\n".join(lines)


def fit(p: np.ndarray, mae: np.ndarray) -> dict:
    """log10 MAE = a + b log10 P by least squares: b, its standard error, and what a
    prediction interval needs (residual variance, n, mean and spread of log10 P)."""
    x, y = np.log10(p), np.log10(mae)
    result = stats.linregress(x, y)
    s2 = float(np.sum((y - result.intercept - result.slope * x) ** 2) / (len(x) - 2))
    return {
        "slope": float(result.slope),
        "slope_stderr": float(result.stderr),
        "intercept": float(result.intercept),
        "r2": float(result.rvalue**2),
        "n": len(x),
        "s2": s2,
        "x_mean": float(x.mean()),
        "sxx": float(((x - x.mean()) ** 2).sum()),
    }


def on_trend(line: dict, p: float, maes: np.ndarray) -> dict:
    """Where the mean log10 MAE of ``maes`` (one per seed, at pretraining size ``p``) sits
    against ``line``'s 95 % prediction interval for a mean of that many seeds."""
    x0, k = np.log10(p), len(maes)
    predicted = line["intercept"] + line["slope"] * x0
    se = np.sqrt(line["s2"] * (1 / k + 1 / line["n"] + (x0 - line["x_mean"]) ** 2 / line["sxx"]))
    half = stats.t.ppf(0.975, line["n"] - 2) * se
    observed = float(np.log10(maes).mean())
    return {
        "predicted_mae": float(10**predicted),
        "interval_mae": [float(10 ** (predicted - half)), float(10 ** (predicted + half))],
        "observed_mae": float(10**observed),
        "residual_log10": observed - float(predicted),
        "inside": bool(abs(observed - predicted) <= half),
    }


def analyse(runs: pd.DataFrame, pseudo: list[str]) -> dict:
    """Per target size N: the DFT-only fit, the fit with the pseudo-labelled point too, and
    the pseudo-labelled point against the DFT-only trend."""
    out = {}
    for size, group in runs.groupby("size"):
        dft = group[~group["source"].isin(pseudo)]
        entry = {"dft_only": fit(dft["n_pretrain"].to_numpy(), dft["mae"].to_numpy())}
        entry["with_pseudo"] = fit(group["n_pretrain"].to_numpy(), group["mae"].to_numpy())
        for name in pseudo:
            mine = group[group["source"] == name]
            if len(mine):
                p = float(mine["n_pretrain"].iloc[0])
                entry[name] = on_trend(entry["dft_only"], p, mine["mae"].to_numpy())
        out[int(size)] = entry
    return out


def mae_table(runs: pd.DataFrame) -> str:
    """Markdown: rows N, columns the sources by P, cells mean ± std over seeds (n)."""
    stats_ = runs.groupby(["n_pretrain", "source", "size"])["mae"].agg(["mean", "std", "count"])
    columns = sorted({(p, s) for p, s, _ in stats_.index})
    head = "| N | " + " | ".join(f"{s} (P = {int(p):,})" for p, s in columns) + " |"
    lines = [head, "|---" * (len(columns) + 1) + "|"]
    for size in sorted(runs["size"].unique()):
        cells = []
        for p, s in columns:
            row = stats_.loc[(p, s, size)] if (p, s, size) in stats_.index else None
            cells.append(
                "—"
                if row is None
                else f"{row['mean']:.4f} ± {row['std']:.4f} ({int(row['count'])})"
            )
        lines.append(f"| {size} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def fit_table(fits: dict, pseudo: list[str]) -> str:
    lines = [
        "| N | slope, DFT only (± s.e.) | r² | points | slope with the pseudo-labelled "
        "point | pseudo-labelled MAE: observed vs DFT trend (95 % PI) | on the trend |",
        "|---|---|---|---|---|---|---|",
    ]
    for size, entry in fits.items():
        d, w = entry["dft_only"], entry["with_pseudo"]
        where = [entry[n] for n in pseudo if n in entry]
        point = (
            f"{where[0]['observed_mae']:.4f} vs {where[0]['predicted_mae']:.4f} "
            f"({where[0]['interval_mae'][0]:.4f}–{where[0]['interval_mae'][1]:.4f})"
            if where
            else "—"
        )
        inside = ("yes" if where[0]["inside"] else "no") if where else "—"
        lines.append(
            f"| {size} | {d['slope']:+.3f} ± {d['slope_stderr']:.3f} | {d['r2']:.2f} | {d['n']} "
            f"| {w['slope']:+.3f} ± {w['slope_stderr']:.3f} | {point} | {inside} |"
        )
    return "\n".join(lines)


def source_table(grid: Path, names: list[str]) -> str:
    """Markdown: each source's P, pretraining epochs and its own pretraining test MAE
    (eV/atom; a shipped source's from its card)."""
    from tlmat.transfer.sources import shipped

    described = json.loads((grid / "sources.json").read_text())
    lines = ["| source | P | epochs | pretraining test MAE (eV/atom) |", "|---|---|---|---|"]
    for name in names:
        entry = described[name]
        if entry["kind"] == "pretrained":
            done = json.loads((grid / "sources" / name / "pretrain.json").read_text())
            epochs, mae = done["epochs"], done["test"]["mae"]
        else:
            card = shipped()[entry["checkpoint"]]
            epochs, mae = card["epochs"], card["test"]["mae"]
        lines.append(f"| {name} | {entry['n_pretrain']:,} | {epochs} | {mae:.3f} |")
    return "\n".join(lines)


def plot(runs: pd.DataFrame, fits: dict, pseudo: list[str], path: Path, control=None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tlmat.evaluation.report import decimal_log_axes

    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    for k, (size, group) in enumerate(runs.groupby("size")):
        colour = f"C{k}"
        means = group.groupby(["source", "n_pretrain"])["mae"].agg(["mean", "std"]).reset_index()
        for is_pseudo, marker in ((False, "o"), (True, "*")):
            part = means[means["source"].isin(pseudo) == is_pseudo]
            ax.errorbar(part["n_pretrain"], part["mean"], yerr=part["std"], fmt=marker,
                        ms=10 if is_pseudo else 6, color=colour, capsize=3,
                        label=f"N={size}" if not is_pseudo else None)  # fmt: skip
        line = fits[int(size)]["dft_only"]
        p = np.geomspace(means["n_pretrain"].min(), means["n_pretrain"].max(), 50)
        ax.plot(p, 10 ** (line["intercept"] + line["slope"] * np.log10(p)), "--", color=colour)
        if control is not None and len(control[control["size"] == size]):
            mine = control[control["size"] == size]["mae"]
            ax.errorbar(control["n_pretrain"].iloc[0], mine.mean(), yerr=mine.std(), fmt="D",
                        mfc="none", color=colour, capsize=3)  # fmt: skip
    decimal_log_axes(ax)
    ax.set_xlabel("pretraining-set size P (structures)")
    ax.set_ylabel(f"test MAE ({UNIT})")
    ax.set_title("Full fine-tuning vs formation-energy pretraining size\n"
                 "(dashed: DFT-only fit; ★: DFT + CHGNet pseudo-labels;\n"
                 "◇: the same DFT rows with the ★'s 2 epochs)", fontsize=10)  # fmt: skip
    ax.legend(fontsize=8, loc="center left")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--grid", type=Path, default=GRID)
    parser.add_argument("--pseudo", nargs="+", default=["mp+chgnet-44k"])
    parser.add_argument("--series", default=SERIES, help="the sources' series: in sources.json")
    parser.add_argument("--control", default="mp-dft-2ep", help="DFT alone, same recipe")
    parser.add_argument("--output", type=Path, default=OUT)
    args = parser.parse_args(argv)
    everything = source_runs(args.grid, METHOD)
    runs = everything[everything["series"] == args.series].drop(columns="series")
    fits = analyse(runs, args.pseudo)
    compared = against_control(everything, args.pseudo[0], args.control)
    control = everything[everything["source"] == args.control].drop(columns="series")
    args.output.mkdir(parents=True, exist_ok=True)
    plot(runs, fits, args.pseudo, args.output / "formation_scaling.png", control)
    sources = runs.groupby("source")["n_pretrain"].first().sort_values()
    result = {
        "command": " ".join(["python3", *sys.argv]),
        "grid": str(args.grid),
        "unit": UNIT,
        "method": METHOD,
        "sources": {k: int(v) for k, v in sources.items()},
        "runs": runs.to_dict(orient="records"),
        "fits": fits,
        "against_control": {"source": args.pseudo[0], "control": args.control, "by_n": compared},
        "machine": describe(),
    }
    (args.output / "formation-scaling.json").write_text(json.dumps(result, indent=1))
    text = [
        "# Formation-energy scaling series on lee-asahi-bulk (log10 K_VRH)",
        "",
        f"Command: `{result['command']}` (after `tlmat benchmark "
        "benchmarks/configs/lee-asahi-bulk.yaml`).",
        "",
        "Sources (P: pretraining structures after the grid's test materials and the "
        "source's own 5 % validation and 5 % test were removed):",
        "",
        source_table(args.grid, [*sources.index, *([args.control] if len(control) else [])]),
        "",
        f"Test MAE ({UNIT}) of full fine-tuning, mean ± std over seeds (count), 600 test "
        "materials; P = the source's pretraining structures:",
        "",
        mae_table(runs),
        "",
        "log10 MAE against log10 P, every seed a point; the pseudo-labelled source against "
        "the DFT-only line's 95 % prediction interval for its mean over seeds:",
        "",
        fit_table(fits, args.pseudo),
        "",
        "![](formation_scaling.png)",
    ]
    if compared:
        text += [
            "",
            f"The pseudo-labelled source against {args.control}, the same DFT rows pretrained "
            "with the same recipe (same epochs), paired by seed:",
            "",
            mae_table(control),
            "",
            control_table(compared, args.pseudo[0], args.control),
        ]
    (args.output / "README.md").write_text("\n".join(text) + "\n")
    print("\n".join(text))


if __name__ == "__main__":
    main()
