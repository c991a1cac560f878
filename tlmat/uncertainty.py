"""Deep ensembles with aleatoric and epistemic uncertainty (Ekström, Lindsten & Armiento):
N members, each trained on its own train/validation split with its own initialisation
and seed. For a structure,

    ŷ   = mean of the member predictions
    σ_e² = variance of the member predictions          (epistemic: the members disagree)
    σ_a² = mean over members of their validation MSE    (aleatoric: the noise they cannot fit)
    σ   = √(σ_a² + σ_e²)

all in the target's unit. An ensemble folder holds ``ensemble.json`` (members, their
seeds and validation MSEs) and one run folder per member (``member-0/`` …), each a
complete :func:`tlmat.training.fit` run.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

import tlmat
from tlmat.data.dataset import GraphDataset
from tlmat.data.splits import Split
from tlmat.models.base import TrainedModel
from tlmat.models.checkpoint import load_checkpoint
from tlmat.models.prediction import predict
from tlmat.training.config import TrainConfig
from tlmat.training.fit import fit
from tlmat.training.rundir import owned_path, prepare_run_dir, record
from tlmat.transfer.strategies import Strategy

MANIFEST = "ensemble.json"


@dataclass
class Ensemble:
    """Trained members and their validation MSE (target unit²)."""

    members: list[TrainedModel]
    val_mse: list[float]

    @property
    def target(self):
        return self.members[0].target

    def predict(self, dataset: GraphDataset, indices=None) -> dict[str, np.ndarray]:
        """``mean``, ``sigma_a``, ``sigma_e`` and ``sigma`` per structure (target unit)."""
        values = np.stack([predict(m, dataset, indices) for m in self.members])
        sigma_a2 = float(np.mean(self.val_mse))
        sigma_e2 = values.var(axis=0, ddof=0)
        return {
            "mean": values.mean(axis=0),
            "sigma_a": np.full(values.shape[1], np.sqrt(sigma_a2)),
            "sigma_e": np.sqrt(sigma_e2),
            "sigma": np.sqrt(sigma_a2 + sigma_e2),
        }

    def table(self, ids, arrays: dict[str, np.ndarray]) -> pd.DataFrame:
        """``id``, the mean prediction and its three σ, headed with the unit."""
        unit = f" ({self.target.unit})" if self.target.unit else ""
        return pd.DataFrame(
            {
                "id": list(ids),
                f"{self.target.name}{unit}": arrays["mean"],
                f"sigma_a{unit}": arrays["sigma_a"],
                f"sigma_e{unit}": arrays["sigma_e"],
                f"sigma{unit}": arrays["sigma"],
            }
        )


def train_ensemble(
    make_member: Callable[[int], tuple[TrainedModel, Strategy | None]],
    dataset: GraphDataset,
    split_for: Callable[[int], Split],
    config: TrainConfig,
    run_dir: str | Path,
    n_members: int = 5,
    overwrite: bool = False,
) -> Ensemble:
    """Train ``n_members`` members: member k gets ``split_for(seed)``, the model and
    strategy ``make_member(seed)`` and the training seed ``config.seed + k``. An
    interrupted ensemble resumes member by member."""
    run_dir = Path(run_dir)
    prepare_run_dir(run_dir, overwrite)
    members, val_mse, seeds = [], [], []
    for k in range(n_members):
        seed = config.seed + k
        split = split_for(seed)
        model, strategy = make_member(seed)
        folder = f"member-{k}"
        record(run_dir, folder)
        member_config = config.model_copy(update={"seed": seed})
        fitted = fit(model, dataset, split, member_config, run_dir / folder, strategy)
        y = dataset.targets[config.target][split.val]
        error = predict(fitted.trained, dataset, split.val) - y
        members.append(fitted.trained)
        val_mse.append(float(np.mean(error**2)))
        seeds.append(seed)
    manifest = {
        "members": [f"member-{k}" for k in range(n_members)],
        "seeds": seeds,
        "val_mse": val_mse,
        "target": members[0].target.model_dump(),
        "definition": "sigma_e^2 = variance of member predictions; sigma_a^2 = mean member "
        "validation MSE; sigma = sqrt(sigma_a^2 + sigma_e^2) (Ekström et al.)",
        "tlmat_version": tlmat.__version__,
    }
    owned_path(run_dir, MANIFEST).write_text(json.dumps(manifest, indent=2))
    return Ensemble(members, val_mse)


def is_ensemble(path: str | Path) -> bool:
    return (Path(path) / MANIFEST).is_file()


def load_ensemble(path: str | Path) -> Ensemble:
    """An ensemble folder written by :func:`train_ensemble`."""
    path = Path(path)
    manifest = json.loads((path / MANIFEST).read_text())
    members = [load_checkpoint(path / name / "model.pt") for name in manifest["members"]]
    return Ensemble(members, [float(v) for v in manifest["val_mse"]])


def calibration(y: np.ndarray, mean: np.ndarray, sigma: np.ndarray) -> dict[str, float]:
    """How far σ can be trusted on labelled data: the coverage of ±1σ and ±2σ (68.3 % and
    95.4 % for a calibrated Gaussian σ), the miscalibration area (mean gap between
    expected and observed coverage over central intervals, Tran et al. 2020), the
    Gaussian negative log-likelihood per structure, and the Spearman correlation of
    |error| with σ."""
    from scipy.stats import norm, spearmanr

    y, mean, sigma = (np.asarray(a, dtype=np.float64) for a in (y, mean, sigma))
    error = np.abs(y - mean)
    expected = np.linspace(0.01, 0.99, 99)
    z = norm.ppf((1 + expected) / 2)
    observed = (error[None, :] <= z[:, None] * sigma[None, :]).mean(axis=1)
    rho = spearmanr(error, sigma).statistic if np.ptp(sigma) > 0 else float("nan")
    return {
        "coverage_1sigma": float((error <= sigma).mean()),
        "coverage_2sigma": float((error <= 2 * sigma).mean()),
        "miscalibration_area": float(np.mean(np.abs(observed - expected))),
        "nll": float(np.mean(0.5 * np.log(2 * np.pi * sigma**2) + error**2 / (2 * sigma**2))),
        "spearman_error_sigma": float(rho),
        "n": len(y),
    }
