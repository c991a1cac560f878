"""Significance tests and learning-curve fits against scipy and hand-computed examples."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from scipy import stats

from tlmat.evaluation import (
    LogLogFit,
    corrected_resampled_t_test,
    equivalent_training_size,
    loglog_fit,
    mean_std_by_size,
    paired_t_test,
    sign_test,
    wilcoxon_signed_rank,
)

# A learning curve's sizes (training structures), as in Lee & Asahi's trials.
SIZES = np.array([50, 100, 200, 400, 800, 1600, 3200], dtype=float)


def test_paired_t_test_equals_scipy_ttest_rel() -> None:
    rng = np.random.default_rng(1)
    scratch = rng.normal(0.10, 0.01, size=10)  # eV/atom MAE of 10 trials
    transfer = scratch - rng.normal(0.005, 0.004, size=10)
    result = paired_t_test(transfer, scratch)
    expected = stats.ttest_rel(transfer, scratch)
    assert result.statistic == pytest.approx(expected.statistic, rel=1e-12)
    assert result.p_value == pytest.approx(expected.pvalue, rel=1e-10)
    assert result.mean_difference == pytest.approx(np.mean(transfer - scratch), rel=1e-12)
    assert result.dof == 9
    assert result.statistic < 0  # transfer has the lower error


@pytest.mark.filterwarnings("ignore:Precision loss:RuntimeWarning")  # scipy, on purpose
def test_paired_t_test_zero_spread_follows_scipy() -> None:
    result = paired_t_test([1.0, 2.0, 3.0], [0.5, 1.5, 2.5])
    expected = stats.ttest_rel([1.0, 2.0, 3.0], [0.5, 1.5, 2.5])
    assert result.statistic == expected.statistic == math.inf
    assert result.p_value == expected.pvalue == 0.0


@pytest.mark.parametrize(
    ("a", "b", "message"),
    [
        ([1.0, 2.0, 3.0], [1.0, 2.0], "same length"),
        ([1.0], [2.0], "at least 2"),
        ([1.0, math.nan], [2.0, 3.0], "non-finite"),
        ([[1.0, 2.0]], [[1.0, 2.0]], "one-dimensional"),
    ],
)
def test_paired_t_test_rejects_bad_input(a, b, message) -> None:
    with pytest.raises(ValueError, match=message):
        paired_t_test(a, b)


def test_corrected_resampled_t_test_textbook_example() -> None:
    # 5-fold CV on 100 structures: 80 train, 20 test per fold; fold differences d.
    d = np.array([0.02, 0.03, 0.01, 0.04, 0.05])
    baseline = np.array([0.30, 0.25, 0.28, 0.31, 0.27])
    # mean(d) = 0.15 / 5 = 0.03; squared deviations 1e-4, 0, 4e-4, 1e-4, 4e-4 → sum 1e-3;
    # var(d) = 1e-3 / 4 = 2.5e-4; factor 1/5 + 20/80 = 0.45; t = 0.03 / sqrt(0.45 · 2.5e-4)
    # = sqrt(9e-4 / 1.125e-4) = sqrt(8).
    t_expected = math.sqrt(8.0)
    # Student t with 4 dof has a closed-form CDF: with α = t / sqrt(4 + t²),
    # F(t) = 1/2 + (3/4)α − α³/4, so the two-sided p = 2(1 − F) = 1 − (3/2)α + α³/2.
    alpha = t_expected / math.sqrt(4.0 + t_expected**2)
    p_expected = 1.0 - 1.5 * alpha + 0.5 * alpha**3
    assert p_expected == pytest.approx(2 * stats.t.sf(t_expected, 4), rel=1e-12)

    result = corrected_resampled_t_test(baseline + d, baseline, n_train=80, n_test=20)
    assert result.statistic == pytest.approx(t_expected, rel=1e-9)
    assert result.p_value == pytest.approx(p_expected, rel=1e-9)
    assert result.mean_difference == pytest.approx(0.03, rel=1e-9)
    assert result.dof == 4


def test_corrected_t_is_plain_t_shrunk_by_the_variance_factor() -> None:
    # Plain: t = mean / sqrt(var/k); corrected: mean / sqrt((1/k + r) var), r = n_test/n_train.
    # Ratio: sqrt((1/k) / (1/k + r)) = 1 / sqrt(1 + k r), which → 1 as r → 0.
    rng = np.random.default_rng(7)
    a, b = rng.normal(0.2, 0.02, 9), rng.normal(0.21, 0.02, 9)
    k = len(a)
    plain = paired_t_test(a, b)
    for n_train, n_test in [(800, 100), (900, 100), (5000, 50)]:
        corrected = corrected_resampled_t_test(a, b, n_train, n_test)
        factor = 1.0 / math.sqrt(1.0 + k * n_test / n_train)
        assert corrected.statistic == pytest.approx(plain.statistic * factor, rel=1e-12)
        assert corrected.p_value > plain.p_value  # the correction is conservative
    vanishing = corrected_resampled_t_test(a, b, n_train=10**12, n_test=1)
    assert vanishing.statistic == pytest.approx(plain.statistic, rel=1e-9)
    assert vanishing.p_value == pytest.approx(plain.p_value, rel=1e-8)


def test_corrected_resampled_t_test_rejects_bad_sizes() -> None:
    with pytest.raises(ValueError, match="positive"):
        corrected_resampled_t_test([1.0, 2.0], [1.5, 2.5], n_train=0, n_test=10)
    with pytest.raises(ValueError, match="same length"):
        corrected_resampled_t_test([1.0, 2.0], [1.5], n_train=80, n_test=20)


def test_sign_test_gupta_104_of_115() -> None:
    # Exact one-tailed binomial tail: P(X >= 104), X ~ Binomial(115, 1/2).
    exact = Fraction(sum(math.comb(115, w) for w in range(104, 116)), 2**115)
    p = sign_test(104, 115)
    assert p == pytest.approx(float(exact), rel=1e-9)
    assert p == pytest.approx(stats.binomtest(104, 115, 0.5, alternative="greater").pvalue)
    assert p < 1e-5  # the paper's claim


@pytest.mark.parametrize("alternative", ["less", "two-sided", "greater"])
@pytest.mark.parametrize(("wins", "n"), [(3, 10), (5, 10), (9, 12), (0, 1)])
def test_sign_test_equals_binomtest(wins, n, alternative) -> None:
    expected = stats.binomtest(wins, n, 0.5, alternative=alternative).pvalue
    assert sign_test(wins, n, alternative) == pytest.approx(expected, rel=1e-12)


def test_sign_test_one_tailed_small_case_by_hand() -> None:
    # 9 wins of 10: (C(10,9) + C(10,10)) / 2^10 = 11/1024.
    assert sign_test(9, 10) == pytest.approx(11 / 1024, rel=1e-12)


@pytest.mark.parametrize(
    ("wins", "n", "alternative"),
    [(5, 4, "greater"), (-1, 4, "greater"), (2, 0, "greater"), (2.5, 4, "greater"), (2, 4, "up")],
)
def test_sign_test_rejects_bad_input(wins, n, alternative) -> None:
    with pytest.raises(ValueError):
        sign_test(wins, n, alternative)


def test_wilcoxon_signed_rank_matches_scipy_and_exact_case() -> None:
    rng = np.random.default_rng(3)
    a, b = rng.normal(0.3, 0.05, 20), rng.normal(0.32, 0.05, 20)
    result = wilcoxon_signed_rank(a, b)
    expected = stats.wilcoxon(a, b)
    assert result.statistic == expected.statistic
    assert result.p_value == pytest.approx(expected.pvalue, rel=1e-12)

    # Six positive differences with distinct magnitudes: W− = 0, and the exact null puts
    # probability 1/2^6 on each sign pattern, so two-sided p = 2/64, one-sided p = 1/64.
    b = np.zeros(6)
    a = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    two_sided = wilcoxon_signed_rank(a, b)
    assert two_sided.statistic == 0.0
    assert two_sided.p_value == pytest.approx(2 / 64, rel=1e-12)
    assert wilcoxon_signed_rank(a, b, alternative="greater").p_value == pytest.approx(1 / 64)


def test_wilcoxon_signed_rank_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="same length"):
        wilcoxon_signed_rank([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="identical"):
        wilcoxon_signed_rank([1.0, 2.0], [1.0, 2.0])


def test_loglog_fit_exact_power_law() -> None:
    errors = 2.0 * SIZES**-0.5
    fit = loglog_fit(SIZES, errors)
    assert fit.slope == pytest.approx(-0.5, abs=1e-12)
    assert fit.intercept == pytest.approx(math.log10(2.0), abs=1e-12)
    assert fit.r2 == pytest.approx(1.0, abs=1e-12)
    assert fit.slope_stderr < 1e-12 and fit.intercept_stderr < 1e-12
    assert fit.n == len(SIZES) and (fit.min_size, fit.max_size) == (50.0, 3200.0)
    np.testing.assert_allclose(fit.predict(SIZES), errors, rtol=1e-12)


def test_loglog_fit_equals_linregress_on_noisy_curve() -> None:
    rng = np.random.default_rng(11)
    sizes = np.repeat(SIZES, 3)  # three trials per size, fitted as separate points
    errors = 0.8 * sizes**-0.35 * np.exp(rng.normal(0, 0.08, len(sizes)))
    fit = loglog_fit(sizes, errors)
    expected = stats.linregress(np.log10(sizes), np.log10(errors))
    assert fit.slope == pytest.approx(expected.slope, rel=1e-12)
    assert fit.intercept == pytest.approx(expected.intercept, rel=1e-12)
    assert fit.slope_stderr == pytest.approx(expected.stderr, rel=1e-10)
    assert fit.intercept_stderr == pytest.approx(expected.intercept_stderr, rel=1e-10)
    assert fit.r2 == pytest.approx(expected.rvalue**2, rel=1e-12)
    # Covariance of (slope, intercept): numpy's polyfit scales by the residual variance too.
    _, cov = np.polyfit(np.log10(sizes), np.log10(errors), 1, cov=True)
    assert fit.covariance == pytest.approx(cov[0, 1], rel=1e-10)
    assert fit.slope_stderr == pytest.approx(math.sqrt(cov[0, 0]), rel=1e-10)


def test_loglog_fit_two_points_has_no_standard_error() -> None:
    fit = loglog_fit([100, 1000], [0.2, 0.1])
    assert fit.slope == pytest.approx(math.log10(0.1 / 0.2))  # one decade in size
    assert math.isnan(fit.slope_stderr) and math.isnan(fit.intercept_stderr)


@pytest.mark.parametrize(
    ("sizes", "errors", "message"),
    [
        ([100, 200, 400], [0.3, 0.2], "same length"),
        ([100, 200], [0.3, -0.2], "positive"),
        ([0, 200], [0.3, 0.2], "positive"),
        ([100, 100, 100], [0.3, 0.2, 0.25], "two different"),
        ([100], [0.3], "at least 2"),
    ],
)
def test_loglog_fit_rejects_bad_input(sizes, errors, message) -> None:
    with pytest.raises(ValueError, match=message):
        loglog_fit(sizes, errors)


def test_equivalent_training_size_inverts_exact_power_law() -> None:
    fit = loglog_fit(SIZES, 2.0 * SIZES**-0.5)
    # 2 · N^-0.5 = 0.1  ⇔  sqrt(N) = 20  ⇔  N = 400.
    result = equivalent_training_size(fit, 0.1)
    assert result.size == pytest.approx(400.0, rel=1e-10)
    assert result.log10_stderr < 1e-9
    assert result.low == pytest.approx(400.0, rel=1e-6)
    assert result.high == pytest.approx(400.0, rel=1e-6)
    assert not result.extrapolated
    # 2 · N^-0.5 = 0.01  ⇔  N = 200² = 40000, beyond the fitted 3200.
    far = equivalent_training_size(fit, 0.01)
    assert far.size == pytest.approx(40000.0, rel=1e-10)
    assert far.extrapolated
    assert fit.predict(far.size) == pytest.approx(0.01, rel=1e-10)


def test_equivalent_training_size_delta_method_against_numerical_jacobian() -> None:
    rng = np.random.default_rng(5)
    errors = 2.0 * SIZES**-0.5 * np.exp(rng.normal(0, 0.05, len(SIZES)))
    fit = loglog_fit(SIZES, errors)
    target = 0.07
    result = equivalent_training_size(fit, target, confidence=0.9)

    # Independent propagation: polyfit's covariance of (slope, intercept) and a
    # finite-difference gradient of g(m, b) = (log10 target − b) / m.
    (m, b), cov = np.polyfit(np.log10(SIZES), np.log10(errors), 1, cov=True)

    def g(m: float, b: float) -> float:
        return (math.log10(target) - b) / m

    h = 1e-6
    gradient = np.array(
        [(g(m + h, b) - g(m - h, b)) / (2 * h), (g(m, b + h) - g(m, b - h)) / (2 * h)]
    )
    assert result.log10_size == pytest.approx(g(m, b), rel=1e-10)
    assert result.log10_stderr == pytest.approx(math.sqrt(gradient @ cov @ gradient), rel=1e-6)
    half = stats.t.ppf(0.95, len(SIZES) - 2) * result.log10_stderr
    assert result.low == pytest.approx(10 ** (g(m, b) - half), rel=1e-10)
    assert result.high == pytest.approx(10 ** (g(m, b) + half), rel=1e-10)
    assert result.low < result.size < result.high


def test_equivalent_training_size_stderr_matches_simulation() -> None:
    # Known noise σ (log10 units) gives the exact covariance σ² (XᵀX)⁻¹ of (intercept, slope);
    # the delta-method spread must match the spread of refitted estimates.
    sigma, target = 0.02, 0.1
    x = np.log10(SIZES)
    design = np.column_stack([np.ones_like(x), x])
    cov = sigma**2 * np.linalg.inv(design.T @ design)
    true_fit = LogLogFit(
        slope=-0.5,
        intercept=math.log10(2.0),
        slope_stderr=math.sqrt(cov[1, 1]),
        intercept_stderr=math.sqrt(cov[0, 0]),
        covariance=cov[0, 1],
        r2=1.0,
        n=len(SIZES),
        min_size=SIZES.min(),
        max_size=SIZES.max(),
    )
    predicted = equivalent_training_size(true_fit, target).log10_stderr

    rng = np.random.default_rng(2024)
    y = math.log10(2.0) - 0.5 * x + rng.normal(0, sigma, size=(4000, len(x)))
    coefficients = np.linalg.lstsq(design, y.T, rcond=None)[0]  # rows: intercept, slope
    estimates = (math.log10(target) - coefficients[0]) / coefficients[1]
    assert estimates.std(ddof=1) == pytest.approx(predicted, rel=0.05)
    # Leaving out the covariance would overstate the spread several-fold here (g = log10 400).
    g = math.log10(400.0)
    no_cov = math.sqrt(cov[0, 0] + g**2 * cov[1, 1]) / 0.5
    assert no_cov > 2 * predicted


def test_equivalent_training_size_rejects_bad_input() -> None:
    rising = loglog_fit(SIZES, 0.01 * SIZES**0.1)
    with pytest.raises(ValueError, match="fall"):
        equivalent_training_size(rising, 0.1)
    falling = loglog_fit(SIZES, 2.0 * SIZES**-0.5)
    with pytest.raises(ValueError, match="target_error"):
        equivalent_training_size(falling, 0.0)
    with pytest.raises(ValueError, match="confidence"):
        equivalent_training_size(falling, 0.1, confidence=1.5)


def test_mean_std_by_size() -> None:
    records = [(100, 1.0), (100, 3.0), (50, 2.5), (100, 2.0), (400, 0.5), (400, 0.7)]
    summary = mean_std_by_size(records)
    assert list(summary) == [50, 100, 400]
    # 100: mean (1 + 3 + 2) / 3 = 2; var (1 + 1 + 0) / (3 − 1) = 1.
    assert summary[100].mean == pytest.approx(2.0)
    assert summary[100].std == pytest.approx(1.0)
    assert summary[100].n == 3
    # A single trial: its value, std 0.
    assert summary[50] == (2.5, 0.0, 1)
    # 400: mean 0.6, std |0.7 − 0.5| / sqrt(2) (ddof = 1 of two values).
    assert summary[400].mean == pytest.approx(0.6)
    assert summary[400].std == pytest.approx(0.2 / math.sqrt(2))
    assert summary[400].std == pytest.approx(np.std([0.5, 0.7], ddof=1))


def test_mean_std_by_size_rejects_bad_records() -> None:
    with pytest.raises(ValueError, match="empty"):
        mean_std_by_size([])
    with pytest.raises(ValueError, match="pair"):
        mean_std_by_size([(100, 1.0, 2.0)])
    with pytest.raises(ValueError, match="non-finite"):
        mean_std_by_size([(100, math.nan)])


def test_corrected_gain_interval_by_hand() -> None:
    """The textbook example above, as an effect size: b − a = d (mean 0.03), half-width
    t_{0.975, 4} · sqrt(0.45 · 2.5e-4); the interval excludes 0 exactly when the corrected
    test's p < 0.05."""
    from tlmat.evaluation.statistics import corrected_gain

    d = np.array([0.02, 0.03, 0.01, 0.04, 0.05])
    scratch = np.array([0.30, 0.25, 0.28, 0.31, 0.27])
    gain = corrected_gain(scratch - d, scratch, n_train=80, n_test=20)
    half = stats.t.ppf(0.975, 4) * math.sqrt(0.45 * 2.5e-4)
    assert gain.difference == pytest.approx(0.03)
    assert (gain.difference_low, gain.difference_high) == pytest.approx((0.03 - half, 0.03 + half))
    relative = d / scratch
    assert gain.relative == pytest.approx(relative.mean())
    assert gain.relative_high - gain.relative == pytest.approx(
        stats.t.ppf(0.975, 4) * math.sqrt(0.45 * relative.var(ddof=1))
    )
    assert (gain.difference_low > 0) == (gain.test.p_value < 0.05)
    with pytest.raises(ValueError):
        corrected_gain([0.1], [0.2], 80, 20)
