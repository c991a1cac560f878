"""Figures of how far an ensemble's σ can be trusted on labelled data: the calibration
curve (expected against observed coverage of central Gaussian intervals) and |error|
against σ. The numbers are :func:`tlmat.uncertainty.calibration`'s."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # figures are written on headless machines
import matplotlib.pyplot as plt
import numpy as np

from tlmat.uncertainty import calibration, coverage_curve

#: the coverage of ±1σ and ±2σ for a calibrated Gaussian σ
ONE_SIGMA, TWO_SIGMA = 0.6827, 0.9545


@dataclass(frozen=True)
class Labelled:
    """Predictions on labelled structures: targets ``y``, the ensemble's ``mean`` and
    ``sigma`` (all in ``unit``) and their :func:`~tlmat.uncertainty.calibration` scores."""

    y: np.ndarray
    mean: np.ndarray
    sigma: np.ndarray
    unit: str = ""
    scores: dict = field(init=False)

    def __post_init__(self) -> None:
        for name in ("y", "mean", "sigma"):
            object.__setattr__(self, name, np.asarray(getattr(self, name), dtype=np.float64))
        object.__setattr__(self, "scores", calibration(self.y, self.mean, self.sigma))


def plot_calibration(
    labelled: Labelled, path: str | Path, title: str = "", sigma_before: np.ndarray | None = None
) -> Path:
    """Observed against expected coverage of central intervals ±z_p·σ, p = 1 … 99 %,
    with the diagonal (a calibrated σ), the gap to it shaded and the miscalibration area
    written on the plot; ``sigma_before``: the same curve for σ before recalibration,
    dashed. Coverages are fractions of the structures (no unit)."""
    y, mean, sigma, scores = labelled.y, labelled.mean, labelled.sigma, labelled.scores
    path = Path(path)
    expected, observed = coverage_curve(y, mean, sigma)
    fig, ax = plt.subplots(figsize=(5.2, 5.0))
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="calibrated")
    if sigma_before is not None:
        _, before = coverage_curve(y, mean, sigma_before)
        area = calibration(y, mean, sigma_before)["miscalibration_area"]
        ax.plot(expected, before, color="0.55", ls=":", lw=1.6,
                label=f"before recalibration (area {area:.3f})")  # fmt: skip
    ax.plot(expected, observed, color="C0", lw=2, label="ensemble σ")
    ax.fill_between(expected, expected, observed, color="C0", alpha=0.2, label="miscalibration")
    for level, name, got in ((ONE_SIGMA, "±1σ", "coverage_1sigma"),
                             (TWO_SIGMA, "±2σ", "coverage_2sigma")):  # fmt: skip
        ax.plot([level], [scores[got]], "o", color="C3", ms=6)
        ax.annotate(f"{name}: {scores[got]:.1%}", (level, scores[got]), fontsize=8,
                    xytext=(8, -14), textcoords="offset points")  # fmt: skip
    ax.text(0.97, 0.04, f"miscalibration area {scores['miscalibration_area']:.3f}\n"
            f"NLL {scores['nll']:.3f}, n = {scores['n']}", transform=ax.transAxes,
            ha="right", va="bottom", fontsize=9)  # fmt: skip
    ax.set(xlim=(0, 1), ylim=(0, 1), aspect="equal")
    ax.set_xlabel("expected coverage of the central interval (fraction)")
    ax.set_ylabel("observed coverage (fraction of structures)")
    ax.set_title(title or "Calibration of σ", fontsize=10)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def binned_rmse(
    error: np.ndarray, sigma: np.ndarray, bins: int = 10, min_count: int = 5
) -> tuple[np.ndarray, np.ndarray]:
    """Mean σ and RMSE of the structures in up to ``bins`` groups of equal count sorted
    by σ (each at least ``min_count`` strong): a calibrated σ puts them on RMSE = σ."""
    order = np.argsort(sigma, kind="stable")
    groups = [
        g for g in np.array_split(order, max(1, min(bins, len(order) // min_count))) if len(g)
    ]
    return (
        np.array([sigma[g].mean() for g in groups]),
        np.array([np.sqrt(np.mean(error[g] ** 2)) for g in groups]),
    )


def plot_error_vs_sigma(labelled: Labelled, path: str | Path, title: str = "") -> Path:
    """|error| against σ per structure (target unit on both axes) with the lines
    |error| = σ and = 2σ, the RMSE of σ-sorted bins against their mean σ, and the
    Spearman correlation of |error| with σ in the title."""
    path = Path(path)
    sigma, scores, unit = labelled.sigma, labelled.scores, labelled.unit
    error = np.abs(labelled.y - labelled.mean)
    label = f" ({unit})" if unit else ""
    fig, ax = plt.subplots(figsize=(5.6, 4.8))
    ax.scatter(sigma, error, s=9, alpha=0.45, color="C0", lw=0, label="structures")
    top = float(max(sigma.max(), 1e-12)) * 1.05
    line = np.array([0.0, top])
    ax.plot(line, line, "k-", lw=1, label=f"|error| = σ ({scores['coverage_1sigma']:.0%} below)")
    ax.plot(line, 2 * line, "k--", lw=1,
            label=f"|error| = 2σ ({scores['coverage_2sigma']:.0%} below)")  # fmt: skip
    centres, rmse = binned_rmse(error, sigma)
    if len(centres) > 1:
        ax.plot(centres, rmse, "s-", color="C3", ms=5, lw=1.2, label="RMSE of σ-sorted bins")
    ax.set_xlim(0, top)
    ax.set_ylim(0, max(float(error.max()), 2 * top) * 1.05)
    ax.set_xlabel(f"predicted σ{label}")
    ax.set_ylabel(f"|error|{label}")
    rho = scores["spearman_error_sigma"]
    head = title or "|error| against σ"
    ax.set_title(f"{head}\nSpearman ρ(|error|, σ) = {rho:.2f}, n = {scores['n']}", fontsize=10)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def figure_paths(folder: str | Path, label: str = "") -> dict[str, Path]:
    """Where :func:`calibration_figures` writes: ``calibration[-label].png`` and
    ``error-vs-sigma[-label].png`` in ``folder`` (for checking them before the work)."""
    suffix = f"-{label}" if label else ""
    folder = Path(folder)
    return {
        "calibration": folder / f"calibration{suffix}.png",
        "error_vs_sigma": folder / f"error-vs-sigma{suffix}.png",
    }


def calibration_figures(
    y: np.ndarray,
    mean: np.ndarray,
    sigma: np.ndarray,
    folder: str | Path,
    unit: str = "",
    label: str = "",
    sigma_before: np.ndarray | None = None,
) -> dict[str, Path]:
    """Both figures in ``folder`` (:func:`figure_paths`), σ in the target's ``unit``;
    returns their paths by kind."""
    paths = figure_paths(folder, label)
    Path(folder).mkdir(parents=True, exist_ok=True)
    title = f" on {label}" if label else ""
    labelled = Labelled(y, mean, sigma, unit)
    plot_calibration(labelled, paths["calibration"], f"Calibration of σ{title}", sigma_before)
    plot_error_vs_sigma(labelled, paths["error_vs_sigma"], f"|error| against σ{title}")
    return paths
