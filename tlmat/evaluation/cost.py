"""What a model cost and when it pays for itself: the measured wall time of pretraining
its source and of fine-tuning it, beside a user-given DFT cost per structure — the number
of materials it must predict, instead of computing them, to break even (Krawczuk &
Venturi, Table 4), and what its own training labels cost; and how a compute budget is best
split between many cheap calculations (PBE, the pretraining set) and few expensive ones
(the target fidelity), from a power law fitted in both sizes (Hoffmann et al., Fig. 5)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

from tlmat.evaluation.statistics import LogLogFit

HOUR = 3600.0
#: Expensive-to-cheap cost ratio assumed when only one of the two costs per calculation is
#: given. Hoffmann et al. (Digital Discovery 2023) put SCAN at "at least five times" PBE and
#: hybrids such as HSE higher still; 10 is the low end of the range usually quoted for
#: plane-wave hybrid calculations (10–100×), an assumption, not a measurement.
DEFAULT_COST_RATIO = 10.0


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


@dataclass(frozen=True)
class TwoSizeFit:
    """Error of transfer learning as a product of power laws in the two training-set sizes:
    ``log10 MAE = intercept + alpha · log10 n_expensive + beta · log10 n_cheap``, i.e.
    ``MAE = 10**intercept · n_expensive**alpha · n_cheap**beta`` (MAE in target units;
    ``n_expensive``: target-fidelity training structures, ``n_cheap``: pretraining
    structures). ``covariance``: of (intercept, alpha, beta), ordinary least squares."""

    intercept: float
    alpha: float
    beta: float
    covariance: tuple[tuple[float, float, float], ...]
    r2: float
    n: int
    expensive_range: tuple[float, float]
    cheap_range: tuple[float, float]

    def predict(self, n_expensive: ArrayLike, n_cheap: ArrayLike) -> np.ndarray:
        """MAE (target units) on the fitted surface at the given sizes (structures)."""
        x, y = np.log10(np.asarray(n_expensive, float)), np.log10(np.asarray(n_cheap, float))
        return 10.0 ** (self.intercept + self.alpha * x + self.beta * y)

    def log10_stderr(self, n_expensive: ArrayLike, n_cheap: ArrayLike) -> np.ndarray:
        """Standard error of the fitted log10 MAE at the given sizes: ``sqrt(vᵀ Σ v)`` with
        ``v = (1, log10 n_expensive, log10 n_cheap)`` (the fit's, not a new run's, scatter)."""
        x, y = np.log10(np.asarray(n_expensive, float)), np.log10(np.asarray(n_cheap, float))
        v = np.stack(np.broadcast_arrays(np.ones_like(x), x, y))
        sigma = np.asarray(self.covariance)
        return np.sqrt(np.maximum(np.einsum("i...,ij,j...->...", v, sigma, v), 0.0))

    def inside(self, n_expensive: float, n_cheap: float) -> bool:
        """Whether both sizes lie within the sizes the surface was fitted on."""
        low_e, high_e = self.expensive_range
        low_c, high_c = self.cheap_range
        return low_e <= n_expensive <= high_e and low_c <= n_cheap <= high_c

    @property
    def expensive_share(self) -> float:
        """Fraction of any budget that minimises the error when spent on expensive
        calculations, ``alpha / (alpha + beta)``: for a product of power laws it does not
        depend on the budget nor on the costs (see :func:`budget_curve`)."""
        return self.alpha / (self.alpha + self.beta)


def fit_two_sizes(n_expensive: ArrayLike, n_cheap: ArrayLike, errors: ArrayLike) -> TwoSizeFit:
    """Least-squares plane through ``log10 errors`` against ``log10 n_expensive`` and
    ``log10 n_cheap`` (one point per run; repeated seeds as separate points).

    Why a product and not a sum of power laws: Hoffmann et al. (Fig. 3) find the error
    of transfer a straight line in log–log against each size with the other held fixed,
    the lines for different pretraining sizes nearly parallel — exactly a plane in
    log–log–log space. It is linear in its three parameters, so it needs no starting guess
    and gives standard errors; a sum ``A n_e^-a + B n_c^-b`` is non-linear, and on the
    PBE → HSE grid an interaction term ``log n_e · log n_c`` came out at +0.011 ± 0.023,
    not distinguishable from zero.
    """
    expensive, cheap = _positive(n_expensive, "n_expensive"), _positive(n_cheap, "n_cheap")
    x, y, z = np.log10(expensive), np.log10(cheap), np.log10(_positive(errors, "errors"))
    if not len(x) == len(y) == len(z):
        raise ValueError(f"sizes and errors differ in length: {len(x)}, {len(y)}, {len(z)}")
    if len(z) < 4 or len(np.unique(x)) < 2 or len(np.unique(y)) < 2:
        raise ValueError("need at least 4 runs over 2 expensive and 2 cheap sizes to fit a plane")
    design = np.column_stack([np.ones_like(x), x, y])
    if np.linalg.matrix_rank(design) < 3:
        raise ValueError("the two sizes vary together: their exponents cannot be separated")
    coefficients, *_ = np.linalg.lstsq(design, z, rcond=None)
    residual = z - design @ coefficients
    # Three parameters: with four points the residual variance has one degree of freedom.
    s2 = float(residual @ residual) / (len(z) - 3)
    covariance = s2 * np.linalg.inv(design.T @ design)
    ss_tot = float(((z - z.mean()) ** 2).sum())
    return TwoSizeFit(
        intercept=float(coefficients[0]),
        alpha=float(coefficients[1]),
        beta=float(coefficients[2]),
        covariance=tuple(tuple(float(v) for v in row) for row in covariance),
        r2=1.0 - float(residual @ residual) / ss_tot if ss_tot > 0 else 1.0,
        n=len(z),
        expensive_range=(float(expensive.min()), float(expensive.max())),
        cheap_range=(float(cheap.min()), float(cheap.max())),
    )


def _positive(values: ArrayLike, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=float).ravel()
    if not np.all(np.isfinite(array)) or np.any(array <= 0):
        raise ValueError(f"{name} must be positive and finite to take their logarithms")
    return array


@dataclass(frozen=True)
class BudgetPoint:
    """One way to spend a budget: ``n_expensive`` and ``n_cheap`` calculations
    (structures), the predicted test MAE and its standard error (target units, delta
    method from the fit's covariance), and whether the sizes lie outside the fitted ones."""

    n_expensive: float
    n_cheap: float
    mae: float
    mae_stderr: float
    extrapolated: bool


@dataclass(frozen=True)
class BudgetCurve:
    """Predicted transfer MAE along the budget line ``n_cheap · cheap_hours + n_expensive ·
    expensive_hours = budget`` (hours, core-hours or any one unit for all three), indexed by
    ``share``, the fraction of the budget spent on expensive calculations; ``best``: its
    minimum; ``scratch``: the whole budget on expensive calculations without pretraining
    (``None`` without a scratch fit)."""

    budget: float
    cheap_hours: float
    expensive_hours: float
    share: np.ndarray
    n_expensive: np.ndarray
    n_cheap: np.ndarray
    mae: np.ndarray
    #: whether each point's two sizes lie within the sizes the surface was fitted on
    inside: np.ndarray
    best: BudgetPoint
    scratch: BudgetPoint | None


def budget_curve(
    fit: TwoSizeFit,
    budget: float,
    cheap_hours: float,
    expensive_hours: float,
    scratch: LogLogFit | None = None,
    points: int = 199,
) -> BudgetCurve:
    """Hoffmann et al.'s Fig. 5 as one curve: for a total ``budget`` and a cost per
    calculation of ``cheap_hours`` (pretraining fidelity) and ``expensive_hours`` (target
    fidelity), all in the same unit (core-hours, say), the MAE the fitted surface predicts
    for every split of the budget, its minimum, and ``scratch`` (a
    :class:`~tlmat.evaluation.statistics.LogLogFit` of training without pretraining)
    evaluated at ``budget / expensive_hours`` structures.

    Minimising ``alpha ln n_e + beta ln n_c`` on the line gives ``expensive_hours · n_e =
    share · budget`` with ``share = alpha / (alpha + beta)`` (Lagrange multiplier): the
    optimum is exact, not searched. Both exponents must be negative (each fidelity lowers
    the error); otherwise there is no interior optimum and this raises ValueError.
    """
    for name, value in (("budget", budget), ("cheap", cheap_hours), ("expensive", expensive_hours)):
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"the {name} cost must be positive and finite, got {value}")
    if not (fit.alpha < 0 and fit.beta < 0):
        raise ValueError(
            f"the error must fall with both sizes for a budget optimum, got exponents "
            f"{fit.alpha:+.3f} (expensive) and {fit.beta:+.3f} (cheap)"
        )
    # Shares strictly inside (0, 1): at either end one size is zero and the law diverges.
    share = np.linspace(0.0, 1.0, points + 2)[1:-1]
    n_expensive = share * budget / expensive_hours
    n_cheap = (1.0 - share) * budget / cheap_hours
    best = _point(fit, fit.expensive_share, budget, cheap_hours, expensive_hours)
    return BudgetCurve(
        budget=budget,
        cheap_hours=cheap_hours,
        expensive_hours=expensive_hours,
        share=share,
        n_expensive=n_expensive,
        n_cheap=n_cheap,
        mae=fit.predict(n_expensive, n_cheap),
        inside=np.array([fit.inside(e, c) for e, c in zip(n_expensive, n_cheap, strict=True)]),
        best=best,
        scratch=None if scratch is None else _scratch_point(scratch, budget / expensive_hours),
    )


def _point(
    fit: TwoSizeFit, share: float, budget: float, cheap: float, expensive: float
) -> BudgetPoint:
    n_e, n_c = share * budget / expensive, (1.0 - share) * budget / cheap
    mae = float(fit.predict(n_e, n_c))
    # d MAE = MAE · ln 10 · d log10 MAE (delta method)
    stderr = mae * math.log(10) * float(fit.log10_stderr(n_e, n_c))
    return BudgetPoint(n_e, n_c, mae, stderr, not fit.inside(n_e, n_c))


def _scratch_point(scratch: LogLogFit, n_expensive: float) -> BudgetPoint:
    """The scratch learning curve at ``n_expensive``, its standard error by the delta
    method (:meth:`LogLogFit.log10_stderr`)."""
    mae = float(scratch.predict(n_expensive))
    stderr = mae * math.log(10) * scratch.log10_stderr(n_expensive)
    outside = not scratch.min_size <= n_expensive <= scratch.max_size
    return BudgetPoint(n_expensive, 0.0, mae, stderr, outside)


def budget_costs(
    expensive_hours: float | None, cheap_hours: float | None, ratio: float = DEFAULT_COST_RATIO
) -> tuple[float, float] | None:
    """(cheap, expensive) cost per calculation in hours from what the user gave: both as
    given; one alone, the other by ``ratio`` (expensive = ratio × cheap,
    :data:`DEFAULT_COST_RATIO` = 10); ``None`` when neither was given."""
    if expensive_hours is None and cheap_hours is None:
        return None
    cheap = cheap_hours if cheap_hours is not None else expensive_hours / ratio
    expensive = expensive_hours if expensive_hours is not None else cheap_hours * ratio
    return float(cheap), float(expensive)
