"""The scaling-series analysis (benchmarks/formation_scaling.py): the log–log slope and its
standard error, a point on the fitted power law inside the prediction interval and one far
off it outside, and the paired comparison with the same-recipe control."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location(
    "formation_scaling", REPO / "benchmarks" / "formation_scaling.py"
)
scaling = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(scaling)


def test_slope_and_prediction_interval() -> None:
    rng = np.random.default_rng(0)
    p = np.repeat([900.0, 2700.0, 9000.0, 25264.0], 3)  # 4 sizes × 3 seeds, as the grid
    mae = 0.5 * p**-0.1 * 10 ** rng.normal(0, 0.005, len(p))  # log10 GPa
    line = scaling.fit(p, mae)
    assert abs(line["slope"] + 0.1) < 3 * line["slope_stderr"] and line["slope_stderr"] < 0.01
    on = scaling.on_trend(line, 39358.0, 0.5 * 39358.0**-0.1 * np.ones(3))
    assert on["inside"] and on["interval_mae"][0] < on["predicted_mae"] < on["interval_mae"][1]
    off = scaling.on_trend(line, 39358.0, 0.8 * 39358.0**-0.1 * np.ones(3))
    assert not off["inside"] and off["residual_log10"] > 0


def test_control_is_paired_by_seed() -> None:
    runs = pd.DataFrame(
        {
            "source": ["pseudo"] * 3 + ["control"] * 3,
            "size": [100] * 6,
            "seed": [0, 1, 2] * 2,
            "mae": [0.100, 0.125, 0.108, 0.110, 0.130, 0.120],
        }
    )
    compared = scaling.against_control(runs, "pseudo", "control")[100]
    assert np.isclose(compared["mean_difference"], -0.009) and compared["seeds"] == 3
    assert compared["relative"] < 0 and compared["p_paired_t"] < 0.1  # t = −4.3, 2 dof
