"""Descriptor baselines a transfer model has to beat.

- ``magpie+pls``, ``magpie+lasso``, ``magpie+svr``, ``magpie+rf``: partial least squares,
  LASSO, RBF support-vector regression and random forest on matminer's 132 Magpie
  element-property descriptors (Lee & Asahi);
- ``soap+krr``: kernel ridge regression with the SOAP kernel (Lee & Asahi): DScribe's
  structure-averaged SOAP power spectrum, species-compressed (``mu1nu1``) so that its
  length grows linearly with the number of elements, L2-normalised, and the polynomial
  kernel k = (p·p')^ζ with ζ ∈ {2, 4}, fitted to the standardised target;
- ``scm+krr``: kernel ridge regression on the sorted eigenvalues of the sine Coulomb matrix
  (Ekström et al.).

Hyperparameters are chosen by 5-fold cross-validation on the training split only; the
test split is never seen before the final prediction.
"""

from __future__ import annotations

from functools import cache

import numpy as np
from pymatgen.core import Composition, Lattice, Structure
from sklearn.compose import TransformedTargetRegressor
from sklearn.cross_decomposition import PLSRegression
from sklearn.ensemble import RandomForestRegressor
from sklearn.kernel_ridge import KernelRidge
from sklearn.linear_model import Lasso
from sklearn.model_selection import GridSearchCV, KFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import MinMaxScaler, StandardScaler
from sklearn.svm import SVR

from tlmat.data.dataset import GraphDataset

BASELINES = ("magpie+pls", "magpie+lasso", "magpie+svr", "magpie+rf", "soap+krr", "scm+krr")

#: SOAP settings: cutoff (Å), radial and angular resolution, Gaussian width (Å)
SOAP_SETTINGS = {"r_cut": 5.0, "n_max": 4, "l_max": 4, "sigma": 0.5}


@cache
def _magpie():
    from matminer.featurizers.composition import ElementProperty

    return ElementProperty.from_preset("magpie")


@cache
def magpie_features(formula: str) -> tuple[float, ...]:
    """The 132 Magpie descriptors of a composition (cached per formula)."""
    return tuple(_magpie().featurize(Composition(formula)))


def structure_of(dataset: GraphDataset, index: int) -> Structure:
    """The cached graph's structure (atomic numbers, Cartesian positions, cell)."""
    graph = dataset.graphs.arrays(index)
    return Structure(Lattice(graph.cell), graph.z.astype(int), graph.pos, coords_are_cartesian=True)


def sine_coulomb_spectrum(dataset: GraphDataset, indices, size: int) -> np.ndarray:
    """Sorted eigenvalues of the sine Coulomb matrix, zero-padded to ``size``."""
    from matminer.featurizers.structure import SineCoulombMatrix

    featurizer = SineCoulombMatrix(flatten=False)
    out = np.zeros((len(indices), size))
    for row, i in enumerate(indices):
        matrix = featurizer.featurize(structure_of(dataset, i))[0]
        eigen = np.sort(np.linalg.eigvalsh(matrix))[::-1][:size]
        out[row, : len(eigen)] = eigen
    return out


def soap_features(dataset: GraphDataset, indices, species: list[int]) -> np.ndarray:
    """Structure-averaged, species-compressed SOAP vectors, L2-normalised (rows)."""
    from dscribe.descriptors import SOAP
    from pymatgen.io.ase import AseAtomsAdaptor

    soap = SOAP(
        species=species,
        periodic=True,
        average="inner",
        compression={"mode": "mu1nu1"},
        **SOAP_SETTINGS,
    )
    atoms = [AseAtomsAdaptor.get_atoms(structure_of(dataset, i)) for i in indices]
    vectors = np.asarray(soap.create(atoms), dtype=np.float64).reshape(len(atoms), -1)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms > 0, norms, 1.0)


def _centred(regressor) -> TransformedTargetRegressor:
    """Kernel ridge has no intercept: fit it to the standardised target, so that the
    prediction far from every training structure is the training mean, not zero."""
    return TransformedTargetRegressor(regressor=regressor, transformer=StandardScaler())


def _search(kind: str, seed: int) -> GridSearchCV:
    folds = KFold(5, shuffle=True, random_state=seed)
    scaled = {  # name → (estimator, grid over its parameters)
        "pls": (PLSRegression(), {"plsregression__n_components": [2, 5, 10, 20, 40]}),
        "lasso": (
            Lasso(max_iter=50_000, tol=1e-3),
            {"lasso__alpha": [1e-4, 1e-3, 1e-2, 1e-1, 1.0]},
        ),
        "svr": (
            SVR(kernel="rbf"),
            {"svr__C": [0.1, 1.0, 10.0, 100.0], "svr__gamma": ["scale", 1e-3, 1e-2]},
        ),
        "krr": (
            _centred(KernelRidge(kernel="laplacian")),
            {
                "transformedtargetregressor__regressor__alpha": [1e-3, 1e-2, 1e-1, 1.0],
                "transformedtargetregressor__regressor__gamma": [1e-4, 1e-3, 1e-2],
            },
        ),
    }
    if kind == "soap-krr":  # normalised vectors: (p·p')^ζ is the SOAP kernel
        return GridSearchCV(
            _centred(KernelRidge(kernel="poly", gamma=1.0, coef0=0.0)),
            {"regressor__alpha": [1e-4, 1e-3, 1e-2, 1e-1], "regressor__degree": [2, 4]},
            cv=folds,
            scoring="neg_mean_absolute_error",
        )
    if kind == "rf":
        return GridSearchCV(
            RandomForestRegressor(n_estimators=200, random_state=seed),
            {"max_features": [0.33, 1.0], "min_samples_leaf": [1, 3]},
            cv=folds,
            scoring="neg_mean_absolute_error",
        )
    estimator, grid = scaled[kind]
    # a linear model extrapolates without bound: a test material with a descriptor far
    # outside the training range (an element no training material has) got -16,646
    # log10 GPa from PLS; scaled to the training range and clipped to it, it cannot
    scaler = MinMaxScaler(clip=True) if kind in ("pls", "lasso") else StandardScaler()
    return GridSearchCV(
        make_pipeline(scaler, estimator),
        grid,
        cv=folds,
        scoring="neg_mean_absolute_error",
    )


def fit_predict(
    name: str, dataset: GraphDataset, train, test, y_train: np.ndarray, seed: int = 0
) -> tuple[np.ndarray, dict]:
    """Fit baseline ``name`` on the training indices; predictions for the test indices and
    the hyperparameters cross-validation chose."""
    if name not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}; choose from {', '.join(BASELINES)}")
    features, kind = name.split("+")
    if features == "magpie":
        X_train = np.array([magpie_features(dataset.formulas[i]) for i in train])
        X_test = np.array([magpie_features(dataset.formulas[i]) for i in test])
    elif features == "soap":
        species = sorted({int(z) for i in [*train, *test] for z in dataset.graphs.arrays(i).z})
        X_train = soap_features(dataset, train, species)
        X_test = soap_features(dataset, test, species)
        kind = "soap-krr"
    else:
        size = max(dataset.graphs.arrays(i).num_nodes for i in [*train, *test])
        X_train = sine_coulomb_spectrum(dataset, train, size)
        X_test = sine_coulomb_spectrum(dataset, test, size)
    # elements without a Magpie value give NaN: fill from the training columns only
    fill = np.nan_to_num(np.nanmean(X_train, axis=0))
    X_train = np.where(np.isnan(X_train), fill, X_train)
    X_test = np.where(np.isnan(X_test), fill, X_test)
    search = _search(kind, seed)
    search.fit(X_train, y_train)
    prediction = np.asarray(search.predict(X_test)).reshape(-1)
    return prediction, {"best_params": search.best_params_, "n_features": X_train.shape[1]}
