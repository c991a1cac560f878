"""Significance tests and learning-curve fits for comparing transfer learning with training
from scratch (methods digest, section 4).

Errors and scores are in the target's own units (e.g. eV/atom MAE); sizes are numbers of
training structures. Every function validates its inputs and raises :class:`ValueError`
naming the problem.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

import numpy as np
from scipy import stats

Alternative = Literal["two-sided", "greater", "less"]


class TTestResult(NamedTuple):
    """A t statistic, its two-sided p-value and the mean of ``a − b`` (target units)."""

    statistic: float
    p_value: float
    mean_difference: float
    dof: int


class WilcoxonResult(NamedTuple):
    statistic: float
    p_value: float


def _vector(values, name: str, minimum: int = 1) -> np.ndarray:
    array = np.asarray(values, dtype=float)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {array.shape}")
    if len(array) < minimum:
        raise ValueError(f"{name} needs at least {minimum} values, got {len(array)}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains non-finite values (NaN or inf)")
    return array


def _paired(a, b, names: tuple[str, str], minimum: int = 2) -> np.ndarray:
    """``a − b`` after checking that both are finite 1-D sequences of the same length."""
    a, b = _vector(a, names[0]), _vector(b, names[1])
    if len(a) != len(b):
        raise ValueError(
            f"{names[0]} and {names[1]} must be paired (same length), got {len(a)} and {len(b)}"
        )
    if len(a) < minimum:
        raise ValueError(f"{names[0]} and {names[1]} need at least {minimum} pairs, got {len(a)}")
    return a - b


def _t_from_differences(d: np.ndarray, variance_factor: float) -> TTestResult:
    """t = mean(d) / sqrt(variance_factor · var(d)), two-sided p from Student t(k − 1)."""
    mean, dof = float(d.mean()), len(d) - 1
    scale = math.sqrt(variance_factor * float(d.var(ddof=1)))
    if scale == 0.0:
        # Identical differences in every trial: no spread to test against. Same convention
        # as scipy: ±inf with p = 0 for a non-zero mean, NaN when the mean is zero too.
        statistic = math.copysign(math.inf, mean) if mean != 0 else math.nan
    else:
        statistic = mean / scale
    p_value = math.nan if math.isnan(statistic) else 2.0 * float(stats.t.sf(abs(statistic), dof))
    return TTestResult(statistic, p_value, mean, dof)


def paired_t_test(errors_a, errors_b) -> TTestResult:
    """Paired t-test of two models scored on the same repeated trials (Lee & Asahi,
    Comput. Mater. Sci. 190, 110314 (2021): TL vs scratch over trials, p < 0.01).

    ``errors_a[i]`` and ``errors_b[i]`` come from trial ``i`` (same split and seed). The
    statistic is for ``a − b``; a negative value means ``a`` has the lower error. Equal to
    :func:`scipy.stats.ttest_rel`.
    """
    d = _paired(errors_a, errors_b, ("errors_a", "errors_b"))
    return _t_from_differences(d, 1.0 / len(d))


def corrected_resampled_t_test(scores_a, scores_b, n_train: int, n_test: int) -> TTestResult:
    """Corrected resampled t-test for k-fold or repeated random resampling (Nadeau & Bengio,
    Machine Learning 52, 239 (2003); used by Gupta et al., Nat. Commun. 12, 6595 (2021)).

    The training sets of different folds overlap, so the fold scores are correlated and the
    plain paired t-test is over-confident. The variance of the mean difference is therefore
    ``(1/k + n_test/n_train) · var(d)`` instead of ``var(d)/k``; the two-sided p-value is
    from Student t with ``k − 1`` degrees of freedom. ``n_train`` and ``n_test`` are the
    numbers of structures per fold.
    """
    d = _paired(scores_a, scores_b, ("scores_a", "scores_b"))
    if n_train <= 0 or n_test <= 0:
        raise ValueError(f"n_train and n_test must be positive, got {n_train} and {n_test}")
    return _t_from_differences(d, 1.0 / len(d) + n_test / n_train)


class Gain(NamedTuple):
    """How much lower ``a``'s error is than ``b``'s over resampled folds: the mean
    relative gain 1 − a/b (0.15: 15 % lower) with its confidence interval, the mean
    difference b − a (target units) with its interval, and the corrected t-test."""

    relative: float
    relative_low: float
    relative_high: float
    difference: float
    difference_low: float
    difference_high: float
    test: TTestResult
    level: float


def corrected_gain(scores_a, scores_b, n_train: int, n_test: int, level: float = 0.95) -> Gain:
    """The gain of ``a`` over ``b`` (errors per fold, same folds) as an effect size with a
    confidence interval at ``level``, its variance corrected for the folds' shared data
    as in :func:`corrected_resampled_t_test` (Nadeau & Bengio): mean ± t · sqrt((1/k +
    n_test/n_train) · var). A gain whose interval excludes 0 is one the data show."""
    test = corrected_resampled_t_test(scores_a, scores_b, n_train, n_test)
    factor = 1.0 / len(np.atleast_1d(scores_a)) + n_test / n_train
    return _gain(scores_a, scores_b, factor, test, level)


def paired_gain(errors_a, errors_b, level: float = 0.95) -> Gain:
    """:func:`corrected_gain` for paired trials on one test set (the paired t-test's
    variance, var/k)."""
    test = paired_t_test(errors_a, errors_b)
    return _gain(errors_a, errors_b, 1.0 / len(np.atleast_1d(errors_a)), test, level)


def _gain(scores_a, scores_b, factor: float, test: TTestResult, level: float) -> Gain:
    a = _vector(scores_a, "scores_a", 2)
    b = _vector(scores_b, "scores_b", 2)
    quantile = float(stats.t.ppf(0.5 + level / 2, len(a) - 1))

    def interval(values: np.ndarray) -> tuple[float, float, float]:
        half = quantile * math.sqrt(factor * float(values.var(ddof=1)))
        return float(values.mean()), float(values.mean() - half), float(values.mean() + half)

    return Gain(*interval(1.0 - a / b), *interval(b - a), test, level)


def sign_test(wins: int, n: int, alternative: Alternative = "greater") -> float:
    """Exact sign test over many tasks: p-value of ``wins`` successes in ``n`` ties-free
    comparisons under H0 "each side wins with probability ½" (Gupta et al., Nat. Commun.
    12, 6595 (2021): TL better on 104 of 115 datasets, p < 1e-5).

    ``alternative="greater"`` (one-tailed) asks whether wins are more frequent than chance.
    Equal to ``scipy.stats.binomtest(wins, n, 0.5, alternative).pvalue``. Drop tied tasks
    from ``n`` before calling.
    """
    if isinstance(wins, bool) or isinstance(n, bool) or int(wins) != wins or int(n) != n:
        raise ValueError(f"wins and n must be integers, got {wins!r} and {n!r}")
    if n < 1 or not 0 <= wins <= n:
        raise ValueError(f"need 0 <= wins <= n and n >= 1, got wins={wins}, n={n}")
    if alternative not in ("two-sided", "greater", "less"):
        raise ValueError(f"alternative must be two-sided, greater or less, got {alternative!r}")
    return float(stats.binomtest(int(wins), int(n), 0.5, alternative=alternative).pvalue)


def wilcoxon_signed_rank(a, b, alternative: Alternative = "two-sided") -> WilcoxonResult:
    """Wilcoxon signed-rank test of paired errors ``a`` and ``b``: the non-parametric
    counterpart of the paired t-test, used over many tasks or few trials where normality of
    the differences is doubtful (Wilcoxon, Biometrics Bull. 1, 80 (1945); Demšar, JMLR 7, 1
    (2006)). Wraps :func:`scipy.stats.wilcoxon` with its default zero handling."""
    d = _paired(a, b, ("a", "b"), minimum=1)
    if not np.any(d):
        raise ValueError("a and b are identical: every difference is zero, nothing to rank")
    result = stats.wilcoxon(np.asarray(a, float), np.asarray(b, float), alternative=alternative)
    return WilcoxonResult(float(result.statistic), float(result.pvalue))


@dataclass(frozen=True)
class LogLogFit:
    """``log10(error) = intercept + slope · log10(size)``, i.e. ``error = 10**intercept ·
    size**slope`` (error in target units, size in training structures)."""

    slope: float
    intercept: float
    slope_stderr: float
    intercept_stderr: float
    #: Covariance of slope and intercept estimates (needed to propagate both together).
    covariance: float
    r2: float
    n: int
    min_size: float
    max_size: float

    def predict(self, size) -> np.ndarray:
        """Error on the fitted curve at ``size`` training structures."""
        return 10.0 ** (self.intercept + self.slope * np.log10(np.asarray(size, float)))

    def log10_stderr(self, size: float) -> float:
        """Standard error of the fitted log10 error at ``size`` training structures: the
        delta method with the slope–intercept covariance, ``var(b) + g² var(m) + 2 g
        cov(b, m)`` with ``g = log10 size`` (NaN when the fit has no standard errors)."""
        g = math.log10(size)
        variance = self.intercept_stderr**2 + g**2 * self.slope_stderr**2 + 2 * g * self.covariance
        # Rounding can leave a tiny negative variance for an exact power law.
        return math.sqrt(max(variance, 0.0)) if not math.isnan(variance) else math.nan


def loglog_fit(sizes, errors) -> LogLogFit:
    """Least-squares straight line through a learning curve in log10–log10 space (Lee &
    Asahi 2021, Fig. 4; Hoffmann et al., arXiv:1901.04466). Base-10 logarithms throughout.

    Repeated trials at the same size may be passed as separate points. Standard errors are
    the ordinary least-squares ones, from the residual variance with ``n − 2`` degrees of
    freedom (NaN when ``n == 2``: a line through two points has no residual to estimate
    them from). Equal to :func:`scipy.stats.linregress` on the logarithms.
    """
    size_array = _vector(sizes, "sizes", 2)
    error_array = _vector(errors, "errors", 2)
    if len(size_array) != len(error_array):
        raise ValueError(
            f"sizes and errors must have the same length, got {len(size_array)} and "
            f"{len(error_array)}"
        )
    if np.any(size_array <= 0) or np.any(error_array <= 0):
        raise ValueError("sizes and errors must be positive to take their logarithms")
    x, y = np.log10(size_array), np.log10(error_array)
    n = len(x)
    x_mean, y_mean = x.mean(), y.mean()
    sxx = float(((x - x_mean) ** 2).sum())
    if sxx == 0.0:
        raise ValueError("sizes must contain at least two different values to fit a slope")
    slope = float(((x - x_mean) * (y - y_mean)).sum()) / sxx
    intercept = float(y_mean - slope * x_mean)
    residual = y - (intercept + slope * x)
    ss_res, ss_tot = float((residual**2).sum()), float(((y - y_mean) ** 2).sum())
    # With two points the line is exact and the residual variance has zero degrees of freedom.
    s2 = ss_res / (n - 2) if n > 2 else math.nan
    return LogLogFit(
        slope=slope,
        intercept=intercept,
        slope_stderr=math.sqrt(s2 / sxx),
        intercept_stderr=math.sqrt(s2 * (1.0 / n + x_mean**2 / sxx)),
        covariance=-x_mean * s2 / sxx,
        r2=1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0,
        n=n,
        min_size=float(size_array.min()),
        max_size=float(size_array.max()),
    )


@dataclass(frozen=True)
class EquivalentSize:
    """Training-set size at which the scratch curve reaches a target error, with an
    interval ``[low, high]`` (structures) at ``confidence``; ``extrapolated`` when the
    size lies outside the sizes the curve was fitted on."""

    size: float
    log10_size: float
    log10_stderr: float
    low: float
    high: float
    confidence: float
    extrapolated: bool


def equivalent_training_size(
    fit_scratch: LogLogFit, target_error: float, confidence: float = 0.95
) -> EquivalentSize:
    """Training-set size from scratch needed to reach ``target_error`` (target units),
    typically the error of the transferred model: Lee & Asahi 2021, Table 2 (≈ 2×);
    Hoffmann et al., arXiv:1901.04466 ("effective data").

    Inverts the fitted curve: ``log10 N = (log10 target_error − intercept) / slope``.
    Uncertainty by the delta method (first-order propagation) of the slope and intercept
    standard errors *and their covariance* (which is strongly negative when the sizes are
    far from 1, so leaving it out would inflate the error badly):
    ``var(log10 N) = (var(b) + g² var(m) + 2 g cov(b, m)) / m²`` with ``g = log10 N``,
    ``b`` the intercept and ``m`` the slope. The interval is ``10**(log10 N ± t · se)``
    with Student t on the fit's ``n − 2`` degrees of freedom, so it is multiplicative.
    """
    if not target_error > 0 or not math.isfinite(target_error):
        raise ValueError(f"target_error must be a positive finite number, got {target_error}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    if not fit_scratch.slope < 0:
        raise ValueError(
            f"the scratch curve must fall with training size to be inverted, slope is "
            f"{fit_scratch.slope:.3g}"
        )
    m, b = fit_scratch.slope, fit_scratch.intercept
    g = (math.log10(target_error) - b) / m
    size = 10.0**g
    stderr = fit_scratch.log10_stderr(size) / abs(m)
    dof = fit_scratch.n - 2
    half_width = float(stats.t.ppf(0.5 + confidence / 2, dof)) * stderr if dof > 0 else math.nan
    return EquivalentSize(
        size=size,
        log10_size=g,
        log10_stderr=stderr,
        low=10.0 ** (g - half_width),
        high=10.0 ** (g + half_width),
        confidence=confidence,
        extrapolated=not fit_scratch.min_size <= size <= fit_scratch.max_size,
    )


class SizeSummary(NamedTuple):
    """Mean and standard deviation (ddof = 1; 0 for a single trial) of the ``n`` values at
    one training-set size, in the values' units."""

    mean: float
    std: float
    n: int


def mean_std_by_size(records: Iterable[Sequence[float]]) -> dict[float, SizeSummary]:
    """Group ``(size, value)`` pairs, e.g. ``(500, test MAE)`` of every trial, into the
    mean ± std per size that learning curves report (Lee & Asahi 2021: 10 trials at 500,
    5 up to 10k). Sizes come back in increasing order."""
    groups: dict[float, list[float]] = defaultdict(list)
    for position, record in enumerate(records):
        if len(record) != 2:
            raise ValueError(f"record {position} must be a (size, value) pair, got {record!r}")
        size, value = record
        if not (math.isfinite(size) and math.isfinite(value)):
            raise ValueError(f"record {position} has a non-finite size or value: {record!r}")
        groups[size].append(float(value))
    if not groups:
        raise ValueError("records is empty: nothing to summarise")
    out = {}
    for size in sorted(groups):
        values = np.asarray(groups[size])
        std = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        out[size] = SizeSummary(float(values.mean()), std, len(values))
    return out
