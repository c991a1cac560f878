"""Metrics, learning curves, statistics and reports."""

from tlmat.evaluation.metrics import CHEMICAL_ACCURACY_EV, regression_metrics

__all__ = ["CHEMICAL_ACCURACY_EV", "regression_metrics"]
