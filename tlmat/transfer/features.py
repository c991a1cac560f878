"""Feature extraction (Gupta et al.): the frozen source network as a featuriser, then a
17-layer MLP (or five, averaged), a random forest, gradient-boosted trees or ridge
regression on the pooled features."""

from __future__ import annotations

import copy
import warnings
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from typing import Literal

import numpy as np
import torch
from sklearn.ensemble import HistGradientBoostingRegressor, RandomForestRegressor
from torch import nn

from tlmat.data.dataset import GraphDataset
from tlmat.data.loader import GraphLoader, inference_batch_size
from tlmat.models.base import Head
from tlmat.models.checkpoint import TrainedModel
from tlmat.models.pooling import MEAN, statistics_of
from tlmat.models.targets import TargetSpec

FeatureKind = Literal["embedding", "layers"]
#: Gupta et al.'s MLP: [1024×4, 512×3, 256×3, 128×3, 64×2, 32] hidden layers, then 1 output.
GUPTA_MLP = (1024,) * 4 + (512,) * 3 + (256,) * 3 + (128,) * 3 + (64,) * 2 + (32,)


def select_layers(available: list[str], layers: str | list[str] | None) -> list[str]:
    """Layer names to extract: all of them (``None`` or ``"all"``), or those named —
    exact names or prefixes (``interactions.3`` selects ``interactions.3.atom``,
    ``interactions.3.bond`` … of an ALIGNN, and ``interactions.3@std`` … when pooled by
    more than the mean), in the order given."""
    if layers is None or layers == "all":
        return list(available)
    wanted = layers.split(",") if isinstance(layers, str) else list(layers)
    chosen: list[str] = []
    for name in wanted:
        matches = [a for a in available if a == name or a.startswith((name + ".", name + "@"))]
        if not matches:
            raise ValueError(f"no layer {name!r}; the model has: {', '.join(available)}")
        chosen += [m for m in matches if m not in chosen]
    return chosen


@torch.no_grad()
def iter_layer_features(
    trained: TrainedModel,
    dataset: GraphDataset,
    indices=None,
    layers: str | list[str] | None = None,
    batch_size: int | None = None,
    rows: int = 10_000,
    statistics: Sequence[str] = MEAN,
) -> Iterator[tuple[np.ndarray, np.ndarray, list[str]]]:
    """Features of the named layers (see :func:`select_layers`) pooled by each of
    ``statistics`` (:data:`~tlmat.models.base.MOMENTS`), concatenated, with a column name
    ``<layer>:<k>`` (``<layer>@<statistic>:<k>``) for every feature, a chunk at a time:
    (positions in ``dataset``, features, column names) for about ``rows`` structures each,
    in order; :func:`feature_table` joins the chunks."""
    model = trained.model.eval()
    chunks: list[torch.Tensor] = []
    positions: list[torch.Tensor] = []
    names: list[str] | None = None
    chosen: list[str] = []
    # the crystal embedding alone needs one pass through the backbone, not every layer's
    embedding_only = layers in ("embedding_out", ["embedding_out"])
    batch_size = batch_size or inference_batch_size(dataset, indices, model.pair_cost)
    device = next(model.parameters()).device
    with torch.no_grad():
        for batch in GraphLoader(dataset, indices, batch_size=batch_size):
            positions.append(batch.index)
            batch = batch.to(device)
            if embedding_only:
                features = OrderedDict(embedding_out=model.embed(batch))
            else:
                features = model.layer_features(batch, statistics)
            if names is None:
                chosen = select_layers(list(features), layers)
                widths = [(layer, features[layer].shape[1]) for layer in chosen]
                names = [f"{layer}:{k}" for layer, width in widths for k in range(width)]
            chunks.append(torch.cat([features[layer] for layer in chosen], dim=1).cpu())
            if sum(len(p) for p in positions) >= rows:
                yield torch.cat(positions).numpy(), torch.cat(chunks).numpy(), names
                chunks, positions = [], []
    if chunks and names is not None:
        yield torch.cat(positions).numpy(), torch.cat(chunks).numpy(), names


def feature_table(
    chunks: Iterable[tuple[np.ndarray, np.ndarray, list[str]]],
) -> tuple[np.ndarray, list[str]]:
    """The chunks of :func:`iter_layer_features` as one table, with its column names."""
    parts = list(chunks)
    if not parts:
        return np.zeros((0, 0), dtype=np.float32), []
    return np.concatenate([features for _, features, _ in parts]), parts[0][2]


def extract_features(
    trained: TrainedModel,
    dataset: GraphDataset,
    indices=None,
    kind: FeatureKind = "embedding",
    batch_size: int | None = None,
    layers: str | list[str] | None = None,
    statistics: Sequence[str] = MEAN,
) -> np.ndarray:
    """Pooled features of ``dataset[indices]``: the crystal embedding, or the features
    after every named layer (``layers``; all unless chosen) pooled by ``statistics``,
    concatenated."""
    chosen = layers if kind == "layers" else ["embedding_out"]
    chunks = iter_layer_features(
        trained, dataset, indices, chosen, batch_size, statistics=statistics
    )
    return feature_table(chunks)[0]


def statistic_columns(names: Sequence[str], statistics: Sequence[str]) -> np.ndarray:
    """Which columns (named as :func:`iter_layer_features` names them) hold a feature
    pooled by one of ``statistics``: a table pooled by all
    :data:`~tlmat.models.base.MOMENTS` serves the mean-only methods too."""
    layers = [name.rsplit(":", 1)[0] for name in names]
    return np.array([statistics_of([layer])[0] in statistics for layer in layers], dtype=bool)


def informative_columns(X: np.ndarray) -> np.ndarray:
    """Which feature columns vary over the training rows ``X``: a column (nearly)
    constant there, within float32 rounding of its value, says nothing about the target,
    and its standardised value on a new structure (a deviation divided by a spread of
    about zero) would be enormous. A feature head ignores such columns (pooled features
    of a CGCNN on 100 perovskites had 30, which made ridge predict 1e25 eV/cell)."""
    spread, level = X.std(axis=0), np.abs(X.mean(axis=0))
    return spread > 1e-5 * level + 1e-7


class MLPRegressor:
    """Gupta et al.'s deep MLP on standardised features (ReLU, Adam, early stopping)."""

    def __init__(
        self,
        hidden=GUPTA_MLP,
        lr: float = 1e-4,
        batch_size: int = 64,
        epochs: int = 500,
        patience: int = 50,
        seed: int = 0,
    ):
        self.hidden, self.lr, self.batch_size = hidden, lr, batch_size
        self.epochs, self.patience, self.seed = epochs, patience, seed

    def fit(self, X, y, X_val, y_val) -> MLPRegressor:
        for part, values in (("training", X), ("validation", X_val)):
            rows = int((~np.isfinite(values)).any(axis=1).sum())
            if rows:
                raise ValueError(f"{rows} {part} rows of features are not finite (NaN or inf)")
        torch.manual_seed(self.seed)
        # an uninformative column's σ is infinite: it enters as 0, and its weights fold to 0
        self.mu = X.mean(0)
        self.sigma = np.where(informative_columns(X), X.std(0) + 1e-8, np.inf)
        self.y_mu, self.y_sigma = float(y.mean()), float(y.std() or 1.0)
        layers: list[nn.Module] = []
        width = X.shape[1]
        for size in self.hidden:
            layers += [nn.Linear(width, size), nn.ReLU()]
            width = size
        self.net = nn.Sequential(*layers, nn.Linear(width, 1))
        optimizer = torch.optim.Adam(self.net.parameters(), lr=self.lr)
        Xt = torch.as_tensor((X - self.mu) / self.sigma, dtype=torch.float32)
        yt = torch.as_tensor((y - self.y_mu) / self.y_sigma, dtype=torch.float32)
        generator = torch.Generator().manual_seed(self.seed)
        best, best_state, wait = float("inf"), None, 0
        for _ in range(self.epochs):
            self.net.train()
            for idx in torch.randperm(len(Xt), generator=generator).split(self.batch_size):
                optimizer.zero_grad()
                loss = (self.net(Xt[idx]).squeeze(-1) - yt[idx]).abs().mean()
                loss.backward()
                optimizer.step()
            val = float(np.abs(self.predict(X_val) - y_val).mean())
            if val < best:
                best, wait = val, 0
                best_state = {k: v.clone() for k, v in self.net.state_dict().items()}
            else:
                wait += 1
                if wait >= self.patience:
                    break
        self.net.load_state_dict(best_state)
        return self

    @torch.no_grad()
    def head(self, layers: list[str]) -> Head:
        """This fitted MLP as a model head on the pooled ``layers`` features, the
        features' standardisation folded into its first layer: it gives the standardised
        target, (y − mean) / std with this MLP's ``y_mu`` and ``y_sigma``."""
        linears = [m for m in self.net if isinstance(m, nn.Linear)]
        hidden = [layer.out_features for layer in linears[:-1]]
        head = Head(linears[0].in_features, hidden, 1, "relu", pooled_layers=layers)
        for mine, fitted in zip([*head.hidden[::2], head.out], linears, strict=True):
            mine.load_state_dict(fitted.state_dict())
        first = head.hidden[0] if hidden else head.out
        scale = torch.as_tensor(1.0 / self.sigma, dtype=torch.float64)
        weight = first.weight.double() * scale  # W (x − μ)/σ + b = (W/σ) x + (b − (W/σ) μ)
        bias = first.bias.double() - weight @ torch.as_tensor(self.mu, dtype=torch.float64)
        first.weight.copy_(weight)
        first.bias.copy_(bias)
        return head.eval()

    @torch.no_grad()
    def predict(self, X) -> np.ndarray:
        self.net.eval()
        Xt = torch.as_tensor((X - self.mu) / self.sigma, dtype=torch.float32)
        return self.net(Xt).squeeze(-1).numpy() * self.y_sigma + self.y_mu


class ForestRegressor:
    """A scikit-learn random forest with the same ``fit(X, y, X_val, y_val)`` call (the
    validation set is unused: forests need no early stopping)."""

    def __init__(self, seed: int = 0, n_estimators: int = 300):
        self.forest = RandomForestRegressor(n_estimators=n_estimators, n_jobs=-1, random_state=seed)

    def fit(self, X, y, X_val=None, y_val=None) -> ForestRegressor:
        self.forest.fit(X, y)
        return self

    def predict(self, X) -> np.ndarray:
        return self.forest.predict(X)


#: ridge penalties :class:`RidgeRegressor` tries, on standardised features
RIDGE_ALPHAS: tuple[float, ...] = tuple(float(a) for a in np.logspace(-3, 5, 17))


class RidgeRegressor:
    """Ridge regression on standardised features with the same ``fit(X, y, X_val,
    y_val)`` call: the penalty is the one of ``alphas`` with the lowest validation MAE
    (without a validation set, the one generalised cross-validation prefers on the
    training set). A linear probe: what a layer's features say about the target without
    a network to learn more (Gupta et al.'s layer sweep, benchmarks/alignn_layers.py)."""

    def __init__(self, alphas: Sequence[float] = RIDGE_ALPHAS):
        self.alphas = tuple(alphas)

    def fit(self, X, y, X_val=None, y_val=None) -> RidgeRegressor:
        from scipy.linalg import LinAlgWarning
        from sklearn.linear_model import Ridge, RidgeCV
        from sklearn.preprocessing import StandardScaler

        self.scaler = StandardScaler().fit(np.asarray(X, dtype=np.float64))
        self.informative = informative_columns(X)  # the others enter as 0: coefficient 0
        scaled = self._scaled(X)
        if X_val is None or not len(X_val):
            self.ridge = RidgeCV(alphas=self.alphas).fit(scaled, y)
            self.alpha = float(self.ridge.alpha_)
            return self
        held = self._scaled(X_val)
        with warnings.catch_warnings():
            # the smallest penalties on collinear features are ill-conditioned: they
            # lose on the validation set rather than being an error
            warnings.simplefilter("ignore", LinAlgWarning)
            fits = [Ridge(alpha=alpha).fit(scaled, y) for alpha in self.alphas]
        errors = [float(np.abs(f.predict(held) - y_val).mean()) for f in fits]
        best = int(np.argmin(errors))
        self.ridge, self.alpha, self.val_mae = fits[best], self.alphas[best], errors[best]
        return self

    def _scaled(self, X) -> np.ndarray:
        scaled = self.scaler.transform(np.asarray(X, dtype=np.float64))
        return np.where(self.informative, scaled, 0.0)

    def predict(self, X) -> np.ndarray:
        return self.ridge.predict(self._scaled(X))

    #: the target as the head gives it: ridge predicts the value itself (see :meth:`head`)
    y_mu, y_sigma = 0.0, 1.0

    @torch.no_grad()
    def head(self, layers: list[str]) -> Head:
        """This fitted ridge as a linear model head on the pooled ``layers`` features,
        the standardisation folded into its weights: it gives the target's value."""
        head = Head(len(self.scaler.scale_), [], 1, "relu", pooled_layers=layers)
        weight = self.ridge.coef_ * self.informative / self.scaler.scale_
        bias = self.ridge.intercept_ - weight @ self.scaler.mean_
        head.out.weight.copy_(torch.as_tensor(weight, dtype=torch.float32).reshape(1, -1))
        head.out.bias.copy_(torch.as_tensor([bias], dtype=torch.float32))
        return head.eval()


class BoostedRegressor:
    """Gradient-boosted trees (scikit-learn's histogram boosting, L1 loss) with the same
    ``fit(X, y, X_val, y_val)`` call: the number of boosting rounds is the one with the
    lowest validation MAE, up to ``max_iter``."""

    def __init__(self, seed: int = 0, max_iter: int = 1000, learning_rate: float = 0.05):
        self.seed, self.max_iter, self.learning_rate = seed, max_iter, learning_rate

    def _trees(self, rounds: int) -> HistGradientBoostingRegressor:
        return HistGradientBoostingRegressor(
            loss="absolute_error", max_iter=rounds, learning_rate=self.learning_rate,
            early_stopping=False, random_state=self.seed,
        )  # fmt: skip

    def fit(self, X, y, X_val=None, y_val=None) -> BoostedRegressor:
        self.trees = self._trees(self.max_iter).fit(X, y)
        if X_val is not None and len(X_val):
            errors = [np.abs(p - y_val).mean() for p in self.trees.staged_predict(X_val)]
            self.rounds = int(np.argmin(errors)) + 1
            self.trees = self._trees(self.rounds).fit(X, y)
        return self

    def predict(self, X) -> np.ndarray:
        return self.trees.predict(X)


def feature_model(
    source: TrainedModel,
    regressor: MLPRegressor | RidgeRegressor,
    layers: list[str],
    target: TargetSpec,
    strategy: str = "features+mlp",
) -> TrainedModel:
    """``source``'s backbone with ``regressor`` (an MLP or a ridge, fitted on its pooled
    ``layers`` features, for ``target``: log10 of it when ``target.log10``) as its head:
    one model that predicts from structures, saves, ensembles and screens as any other."""
    model = copy.deepcopy(source.model)
    model.head = regressor.head(layers)
    fitted = target.model_copy(
        update={
            "normalization": "standard",
            "mean": regressor.y_mu,
            "std": regressor.y_sigma,
            "extensive": False,  # the MLP learnt the value per structure, as given
            "atom_refs": None,
            "heteroscedastic": False,
        }
    )
    provenance = {**source.provenance, "strategy": strategy, "layers": layers}
    return TrainedModel(model, fitted, provenance)


class MLPEnsembleRegressor:
    """``members`` of Gupta's MLPs (:class:`MLPRegressor`) with seeds ``seed``,
    ``seed + 1`` …, each early-stopped on the same validation set, their predictions
    averaged: a deep MLP on a hundred structures depends on its initialisation, which
    averaging removes (Lakshminarayanan et al. 2017)."""

    def __init__(self, seed: int = 0, members: int = 5, epochs: int = 500, patience: int = 50):
        self.members = [
            MLPRegressor(epochs=epochs, patience=patience, seed=seed + m) for m in range(members)
        ]

    def fit(self, X, y, X_val, y_val) -> MLPEnsembleRegressor:
        for member in self.members:
            member.fit(X, y, X_val, y_val)
        return self

    def predict(self, X) -> np.ndarray:
        return np.mean([member.predict(X) for member in self.members], axis=0)


RegressorKind = Literal["mlp", "mlps", "rf", "gbt", "ridge"]


def feature_regressor(
    kind: RegressorKind, seed: int = 0, epochs: int = 500, patience: int = 50
) -> MLPRegressor | MLPEnsembleRegressor | ForestRegressor | BoostedRegressor | RidgeRegressor:
    """The regressor of ``features+mlp`` / ``+mlps`` (five MLPs averaged) / ``+rf`` /
    ``+gbt`` / ``+ridge`` (and ``moments+…``)."""
    if kind == "rf":
        return ForestRegressor(seed)
    if kind == "gbt":
        return BoostedRegressor(seed)
    if kind == "ridge":
        return RidgeRegressor()
    if kind == "mlps":
        return MLPEnsembleRegressor(seed, epochs=epochs, patience=patience)
    return MLPRegressor(epochs=epochs, patience=patience, seed=seed)
