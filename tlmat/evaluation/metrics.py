"""Regression metrics in the target's own units."""

from __future__ import annotations

import numpy as np

#: 1 kcal/mol in eV — "chemical accuracy".
CHEMICAL_ACCURACY_EV = 0.0434


def regression_metrics(y_true, y_pred, threshold: float | None = None) -> dict[str, float]:
    """MAE, RMSE, R², max error, the 50/90/95 % quantiles of the absolute error (and the
    fraction of errors within ``threshold``, in the target's unit, when given)."""
    y_true, y_pred = np.asarray(y_true, float), np.asarray(y_pred, float)
    error = y_pred - y_true
    ss_tot = float(((y_true - y_true.mean()) ** 2).sum())
    out = {
        "mae": float(np.abs(error).mean()),
        "rmse": float(np.sqrt((error**2).mean())),
        "r2": 1.0 - float((error**2).sum()) / ss_tot if ss_tot > 0 else float("nan"),
        "max_error": float(np.abs(error).max()),
        "median_ae": float(np.median(np.abs(error))),
        "q90_ae": float(np.quantile(np.abs(error), 0.9)),
        "q95_ae": float(np.quantile(np.abs(error), 0.95)),
        "n": len(y_true),
    }
    if threshold is not None:
        out["within_threshold"] = float((np.abs(error) <= threshold).mean())
    return out
