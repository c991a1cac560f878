"""How well a source will transfer to a target, scored before any fine-tuning from the
source's features of the target's training structures: LogME (You et al., ICML 2021),
the log evidence per structure of a Bayesian linear model of the target on the features,
and the cross-validated error of a ridge probe on them. Ranking sources by either costs
one forward pass each instead of a fine-tuning grid."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from tlmat.data.dataset import GraphDataset
from tlmat.models.base import TrainedModel

#: ridge penalties the probe chooses from by leave-one-out error, on features scaled to
#: the training folds' range
ALPHAS = np.logspace(-3, 4, 15)


@dataclass(frozen=True)
class Transferability:
    """A source's scores on one target's training structures."""

    #: log evidence per structure of Bayesian ridge on the standardised features and
    #: target (nats; higher: the features explain the target better)
    logme: float
    #: k-fold mean absolute error of a ridge probe, in the target's unit (lower: better)
    probe_mae: float
    #: structures and feature columns scored
    n: int
    dim: int

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def score_features(
    features: np.ndarray, y: np.ndarray, folds: int = 5, seed: int = 0
) -> Transferability:
    """:class:`Transferability` of ``features`` (n, d) for the target values ``y`` (n,)."""
    from sklearn.linear_model import BayesianRidge, RidgeCV
    from sklearn.model_selection import KFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import MinMaxScaler, StandardScaler

    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    if len(x) != len(y) or len(y) < 2 * folds:
        raise ValueError(f"{len(x)} feature rows and {len(y)} targets; need ≥ {2 * folds}")
    x = x[:, x.std(axis=0) > 0]  # constant columns carry nothing and break the scaling
    scaled = StandardScaler().fit_transform(x)
    standard_y = (y - y.mean()) / (y.std() or 1.0)
    evidence = BayesianRidge(compute_score=True).fit(scaled, standard_y).scores_[-1]
    # a held-out fold's feature far outside the training folds' range (a near-constant
    # column of random weights) must not send a linear probe off: clipped to that range
    probe = make_pipeline(MinMaxScaler(clip=True), RidgeCV(alphas=ALPHAS))
    cv = KFold(folds, shuffle=True, random_state=seed)
    predicted = cross_val_predict(probe, x, y, cv=cv)
    return Transferability(
        logme=float(evidence / len(y)),
        probe_mae=float(np.abs(predicted - y).mean()),
        n=len(y),
        dim=x.shape[1],
    )


def transferability(
    source: TrainedModel,
    dataset: GraphDataset,
    target: str,
    indices=None,
    folds: int = 5,
    seed: int = 0,
) -> Transferability:
    """``source``'s :class:`Transferability` to ``target`` on ``dataset[indices]`` (the
    target's training structures: never its validation or test ones), from the crystal
    embedding its head reads."""
    from tlmat.transfer.features import extract_features

    rows = np.arange(len(dataset)) if indices is None else np.asarray(indices)
    features = extract_features(source, dataset, rows)
    return score_features(features, dataset.targets[target][rows], folds, seed)
