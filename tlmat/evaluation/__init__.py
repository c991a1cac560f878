"""Evaluation: metrics, statistics and reports (experiments that produce the results live
in :mod:`tlmat.experiments`)."""

from tlmat.evaluation.metrics import CHEMICAL_ACCURACY_EV, regression_metrics
from tlmat.evaluation.statistics import (
    EquivalentSize,
    Gain,
    LogLogFit,
    SizeSummary,
    TTestResult,
    WilcoxonResult,
    corrected_gain,
    corrected_resampled_t_test,
    equivalent_training_size,
    loglog_fit,
    mean_std_by_size,
    paired_gain,
    paired_t_test,
    sign_test,
    wilcoxon_signed_rank,
)

__all__ = [
    "CHEMICAL_ACCURACY_EV",
    "EquivalentSize",
    "Gain",
    "LogLogFit",
    "SizeSummary",
    "TTestResult",
    "WilcoxonResult",
    "corrected_gain",
    "corrected_resampled_t_test",
    "equivalent_training_size",
    "loglog_fit",
    "mean_std_by_size",
    "paired_gain",
    "paired_t_test",
    "regression_metrics",
    "sign_test",
    "wilcoxon_signed_rank",
]
