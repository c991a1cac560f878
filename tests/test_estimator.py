"""TransferRegressor is a scikit-learn estimator on real structures: 100 Castelli
perovskites (heat_ref, eV per cell) as pymatgen Structures. It clones, cross-validates
and grid-searches; an ensemble gives σ; the same seed gives the same predictions; bad
input is refused naming the problem; and scikit-learn's API checks that apply pass.
FitRegressor (tlmat fit's model selection) chooses by cross-validation on 120 of 150,
predicts the other 30 with σ, and passes the same checks."""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import sklearn.utils.estimator_checks as checks
from sklearn.base import clone
from sklearn.exceptions import NotFittedError, SkipTestWarning
from sklearn.model_selection import GridSearchCV, cross_val_score

from tlmat import TransferRegressor
from tlmat.estimator import FitRegressor, graph_dataset
from tlmat.io import records_from_structures

#: every test trains for a few epochs only: the file must run in about a minute on 2 cores
QUICK = {"epochs": 2, "batch_size": 16, "unit": "eV/cell", "target": "heat_ref"}


@pytest.fixture(scope="module", autouse=True)
def graph_cache(tmp_path_factory):
    """The graphs of this module's fits in a folder of its own, not ~/.cache/tlmat."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TLMAT_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        yield


@pytest.fixture(scope="module")
def perovskites(data: Path) -> tuple[list, np.ndarray]:
    """The first 100 perovskites of perov_5/val: Structures and heat_ref (eV/cell)."""
    from tlmat.io import read_records

    read = read_records(data / "perov_5" / "val.csv.gz", ["heat_ref"], limit=100)
    structures = [record.structure for record in read.records]
    return structures, np.array([record.targets["heat_ref"] for record in read.records])


@pytest.fixture(scope="module")
def more_perovskites(data: Path) -> tuple[list, np.ndarray]:
    """The first 150 perovskites of perov_5/val: Structures and heat_ref (eV/cell)."""
    from tlmat.io import read_records

    read = read_records(data / "perov_5" / "val.csv.gz", ["heat_ref"], limit=150)
    structures = [record.structure for record in read.records]
    return structures, np.array([record.targets["heat_ref"] for record in read.records])


@pytest.fixture(scope="module")
def fitted(perovskites) -> TransferRegressor:
    """Full fine-tuning of the MP formation-energy CGCNN on the first 80."""
    X, y = perovskites
    return TransferRegressor(**QUICK).fit(X[:80], y[:80])


def test_a_fitted_estimator_predicts_and_scores_new_structures(fitted, perovskites) -> None:
    X, y = perovskites
    predicted = fitted.predict(X[80:])
    assert predicted.shape == (20,) and predicted.dtype == np.float64
    assert np.all(np.isfinite(predicted))
    assert np.isfinite(fitted.score(X[80:], y[80:]))  # R², from RegressorMixin
    # 8 of the 80 (val_size 0.1) selected the epoch; their scores are kept
    assert fitted.val_scores_["n"] == 8 and fitted.val_scores_["mae"] > 0
    assert fitted.spec_.strategy == "full" and fitted.run_dir_ is None


def test_clone_keeps_the_parameters_and_gives_an_unfitted_copy(fitted, perovskites) -> None:
    copy = clone(fitted)
    assert copy.get_params() == fitted.get_params()
    assert not hasattr(copy, "model_")
    with pytest.raises(NotFittedError):
        copy.predict(perovskites[0][:2])


def test_cross_val_score_gives_finite_scores(perovskites) -> None:
    X, y = perovskites
    scores = cross_val_score(
        TransferRegressor(**QUICK), X[:60], y[:60], cv=2,
        scoring="neg_mean_absolute_error", error_score="raise",
    )  # fmt: skip
    assert scores.shape == (2,) and np.all(np.isfinite(scores)) and np.all(scores < 0)


def test_grid_search_picks_a_strategy(perovskites) -> None:
    X, y = perovskites
    search = GridSearchCV(
        TransferRegressor(**QUICK),
        {"strategy": ["full", "freeze-embedding"]},
        cv=2,
        scoring="neg_mean_absolute_error",
        error_score="raise",
    )
    search.fit(X[:60], y[:60])
    assert search.best_params_["strategy"] in ("full", "freeze-embedding")
    assert np.all(np.isfinite(search.cv_results_["mean_test_score"]))
    assert search.best_estimator_.predict(X[80:]).shape == (20,)


def test_an_ensemble_gives_a_positive_sigma(fitted, perovskites) -> None:
    X, y = perovskites
    ensemble = TransferRegressor(**QUICK, ensemble=2).fit(X[:60], y[:60])
    mean, sigma = ensemble.predict(X[80:], return_std=True)
    assert mean.shape == sigma.shape == (20,) and sigma.dtype == np.float64
    assert np.all(sigma > 0) and np.all(np.isfinite(mean))
    assert np.array_equal(mean, ensemble.predict(X[80:]))
    # σ is not only the members' validation error (σ_a): they disagree (σ_e)
    records = records_from_structures(X[80:]).records
    graphs = graph_dataset(records, ensemble.model_.members[0].model)
    assert np.all(ensemble.model_.predict(graphs)["sigma_e"] > 0)
    with pytest.raises(ValueError, match="return_std=True needs an ensemble"):
        fitted.predict(X[80:], return_std=True)


def test_the_same_seed_gives_the_same_predictions(fitted, perovskites) -> None:
    X, y = perovskites
    again = TransferRegressor(**QUICK).fit(X[:80], y[:80])
    assert np.array_equal(again.predict(X[80:]), fitted.predict(X[80:]))
    # a pickled estimator (as GridSearchCV's workers return them) predicts the same
    assert np.array_equal(pickle.loads(pickle.dumps(fitted)).predict(X[80:]), again.predict(X[80:]))
    other = TransferRegressor(**QUICK, seed=1).fit(X[:80], y[:80])
    assert not np.array_equal(other.predict(X[80:]), fitted.predict(X[80:]))


def test_a_run_dir_keeps_each_fit_and_the_same_fit_reuses_it(perovskites, tmp_path) -> None:
    X, y = perovskites
    estimator = TransferRegressor(**QUICK, run_dir=tmp_path / "runs").fit(X[:40], y[:40])
    folder = estimator.run_dir_
    assert folder.parent == tmp_path / "runs"
    assert (folder / "run" / "model.pt").is_file() and (folder / "run" / "run.yaml").is_file()
    assert (folder / "split.json").is_file()
    before = estimator.predict(X[80:])
    # the same data and parameters: the finished run is reused, with its model
    assert np.array_equal(estimator.fit(X[:40], y[:40]).predict(X[80:]), before)
    assert estimator.run_dir_ == folder
    # a clone on other data (another fold) never shares the folder
    other = clone(estimator).fit(X[40:80], y[40:80])
    assert other.run_dir_ != folder and other.run_dir_.parent == folder.parent


def test_scratch_and_feature_strategies_fit_too(perovskites) -> None:
    X, y = perovskites
    scratch = TransferRegressor(**QUICK, source=None, model="cgcnn-small").fit(X[:40], y[:40])
    assert scratch.spec_.strategy == "scratch" and scratch.spec_.source is None
    assert np.all(np.isfinite(scratch.predict(X[80:])))
    forest = TransferRegressor(**QUICK, strategy="features+rf").fit(X[:40], y[:40])
    assert forest.regressor_ is not None and np.isfinite(forest.score(X[80:], y[80:]))
    with pytest.raises(ValueError, match="needs an ensemble"):
        forest.predict(X[80:], return_std=True)
    # the strategy's own regressor and pooling (once an MLP on mean features, whatever
    # the name said)
    boosted = TransferRegressor(**QUICK, strategy="moments+gbt").fit(X[:40], y[:40])
    assert type(boosted.regressor_).__name__ == "BoostedRegressor"
    widths = boosted.regressor_.trees.n_features_in_, forest.regressor_.forest.n_features_in_
    assert widths[0] > 3 * widths[1] // 2  # mean, std, min and max of each layer
    assert np.all(np.isfinite(boosted.predict(X[80:])))


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("a string in X", r"X\[3\] is a str, not a crystal structure"),
        ("a feature matrix", r"X\[0\] is a ndarray, not a crystal structure"),
        ("one structure", "X must be a list of structures"),
        ("one y too few", "X has 10 structures but y has 9 values"),
        ("a NaN target", r"y must be finite: y\[2\] = nan"),
        ("two targets", "y must be one-dimensional"),
        ("no validation left", "at least one must be left for training"),
        ("a strategy without a source", "strategy 'head-only' transfers a source"),
        ("an unknown strategy", "'fine' is not one of scratch, full"),
    ],
)  # fmt: skip
def test_bad_input_is_refused_naming_the_problem(perovskites, case: str, message: str) -> None:
    X, y = perovskites[0][:10], perovskites[1][:10]
    estimator, data = TransferRegressor(**QUICK), (X, y)
    if case == "a string in X":
        data = ([*X[:3], "CsPbI3", *X[4:]], y)
    elif case == "a feature matrix":
        data = (np.ones((10, 4)), y)
    elif case == "one structure":
        data = (X[0], y[:1])
    elif case == "one y too few":
        data = (X, y[:9])
    elif case == "a NaN target":
        data = (X, np.where(np.arange(10) == 2, np.nan, y))
    elif case == "two targets":
        data = (X, np.stack([y, y], axis=1))
    elif case == "no validation left":
        estimator.set_params(val_size=10)
    elif case == "a strategy without a source":
        estimator.set_params(source=None, strategy="head-only")
    else:
        estimator.set_params(strategy="fine")
    with pytest.raises(ValueError, match=message):
        estimator.fit(*data)


#: scikit-learn's checks that need no numeric fit (see tlmat.estimator's docstring)
API_CHECKS = [
    "check_estimator_cloneable",
    "check_estimator_repr",
    "check_estimator_tags_renamed",
    "check_valid_tag_types",
    "check_no_attributes_set_in_init",
    "check_get_params_invariance",
    "check_set_params",
    "check_parameters_default_constructible",
    "check_do_not_raise_errors_in_init_or_set_params",
    "check_mixin_order",
    "check_estimators_unfitted",
]


@pytest.mark.parametrize("estimator", [TransferRegressor, FitRegressor])
@pytest.mark.parametrize("name", API_CHECKS)
def test_scikit_learn_api_checks_that_apply_pass(name: str, estimator: type) -> None:
    check = getattr(checks, name, None)
    if check is None:
        pytest.skip(f"{name} is not in this scikit-learn version")
    check(estimator.__name__, estimator())


@pytest.mark.parametrize("estimator", [TransferRegressor, FitRegressor])
def test_check_estimator_skips_the_checks_on_numeric_arrays(estimator: type) -> None:
    # the tags say X is no 2-D array, so scikit-learn runs none of its array checks
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        checks.check_estimator(estimator())
    assert any(issubclass(w.category, SkipTestWarning) for w in caught)


#: FitRegressor kept tiny: the shipped CGCNN's features + MLP against scratch (always
#: added), 2 folds, 2 members, 5 epochs: the selection takes about 6 s on 2 cores
SELECTION = {
    "candidates": ["features+mlp [tlmat/mp-eform-cgcnn]"],
    "folds": 2,
    "ensemble": 2,
    "epochs": 5,
    "budget": 3.0,
    "unit": "eV/cell",
    "target": "heat_ref",
}


@pytest.fixture(scope="module")
def selected(more_perovskites) -> FitRegressor:
    """The selection on the first 120 of 150 perovskites."""
    X, y = more_perovskites
    return FitRegressor(**SELECTION).fit(X[:120], y[:120])


def test_fit_regressor_chooses_by_cross_validation_and_predicts_sigma(
    selected, more_perovskites
) -> None:
    from tlmat.uncertainty import Ensemble

    X, y = more_perovskites
    # both candidates ran on both folds; the lowest mean CV MAE was chosen
    assert set(selected.cv_results_) == {*SELECTION["candidates"], "scratch"}
    assert all(len(maes) == 2 and min(maes) > 0 for maes in selected.cv_results_.values())
    means = {label: np.mean(maes) for label, maes in selected.cv_results_.items()}
    assert selected.chosen_ == min(means, key=means.get) == selected.report_.chosen
    assert (selected.gain_ is None) == (selected.chosen_ == "scratch")
    assert selected.report_.n_train == 120 and selected.run_dir_ is None
    assert isinstance(selected.model_, Ensemble) and len(selected.model_.members) == 2
    mean, sigma = selected.predict(X[120:], return_std=True)
    assert mean.shape == sigma.shape == (30,) and mean.dtype == sigma.dtype == np.float64
    assert np.all(np.isfinite(mean)) and np.all(sigma > 0)
    assert np.array_equal(selected.predict(X[120:]), mean)
    assert np.isfinite(selected.score(X[120:], y[120:]))  # R², from RegressorMixin


def test_fit_regressor_clones_with_its_parameters(selected, more_perovskites) -> None:
    copy = clone(selected)
    assert copy.get_params() == selected.get_params()
    assert copy.get_params()["candidates"] == SELECTION["candidates"]
    assert not hasattr(copy, "model_") and not hasattr(copy, "chosen_")
    with pytest.raises(NotFittedError):
        copy.predict(more_perovskites[0][:2])


def test_fit_regressor_keeps_each_fit_in_run_dir_and_reuses_it(
    selected, more_perovskites, tmp_path
) -> None:
    X, y = more_perovskites
    estimator = clone(selected).set_params(run_dir=tmp_path / "runs").fit(X[:120], y[:120])
    folder = estimator.run_dir_
    assert folder.parent == tmp_path / "runs" and (folder / "data.csv").is_file()
    assert (folder / "selection" / "report.json").is_file()
    assert estimator.report_.model_dir == folder / "selection" / "model"
    # the same fit again reuses the finished selection: the same choice and predictions
    before = estimator.predict(X[120:])
    assert np.array_equal(estimator.fit(X[:120], y[:120]).predict(X[120:]), before)
    assert estimator.run_dir_ == folder and estimator.chosen_ == selected.chosen_
    # a pickled estimator (as scikit-learn's workers return them) predicts the same
    assert np.array_equal(pickle.loads(pickle.dumps(estimator)).predict(X[120:]), before)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"folds": 1}, "folds"),
        ({"candidates": ["features+rf [tlmat/mp-eform-cgcnn]"]}, "strategy must be one of"),
        ({"target": "cif"}, "names a table's id or structure column"),
    ],
)
def test_fit_regressor_refuses_bad_parameters_before_any_work(
    more_perovskites, params: dict, message: str
) -> None:
    X, y = more_perovskites
    with pytest.raises(ValueError, match=message):
        FitRegressor(**{**SELECTION, **params}).fit(X[:10], y[:10])
