"""scikit-learn estimators on crystal structures: :class:`TransferRegressor` (one
source and strategy, transferred) and :class:`FitRegressor` (the model selection of
``tlmat fit``: the best candidate by cross-validation within a budget, refit as a
calibrated deep ensemble).

``fit(X, y)`` takes crystal structures (pymatgen ``Structure`` s or ASE ``Atoms``) and
their target values, splits them into training and validation structures by ``seed``,
and trains through the run object (:class:`~tlmat.experiments.runspec.RunSpec` →
:func:`~tlmat.experiments.runspec.run`), as ``tlmat train`` and ``tlmat finetune`` do. So
it works with scikit-learn's model selection: ``clone``, ``cross_val_score``,
``GridSearchCV`` over ``strategy``, ``lr`` or ``source``::

    >>> from sklearn.model_selection import cross_val_score
    >>> estimator = TransferRegressor(epochs=20, unit="eV/cell")
    >>> cross_val_score(estimator, structures, y, cv=5, scoring="neg_mean_absolute_error")

scikit-learn's own estimator checks (:mod:`sklearn.utils.estimator_checks`), as
``tests/test_estimator.py`` runs them:

- pass: ``check_estimator_cloneable``, ``check_estimator_repr``,
  ``check_estimator_tags_renamed``, ``check_valid_tag_types``,
  ``check_no_attributes_set_in_init``, ``check_get_params_invariance``,
  ``check_set_params``, ``check_parameters_default_constructible``,
  ``check_do_not_raise_errors_in_init_or_set_params``, ``check_mixin_order`` and
  ``check_estimators_unfitted`` (predict before fit raises ``NotFittedError``);
- do not apply: every check that fits or predicts on the numeric arrays it makes up
  (``check_fit2d_*``, ``check_regressors_train``, ``check_estimators_dtypes``,
  ``check_n_features_in*``, ``check_fit_idempotent``, ``check_estimators_pickle``,
  ``check_methods_subset_invariance`` …). X here is a list of crystal structures, not a
  feature matrix: such arrays are refused with a ``ValueError``, and the estimator's tags
  say so (``input_tags.two_d_array = False``), which makes ``check_estimator`` skip them.
  What they check is tested on real structures instead: cloning, cross-validation, grid
  search, pickling, reproducibility and the refusal of bad input.

:class:`FitRegressor` has the same tags and passes the same checks.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.utils.validation import check_is_fitted

if TYPE_CHECKING:
    from tlmat.data.dataset import GraphDataset
    from tlmat.experiments.runspec import RunSpec
    from tlmat.experiments.selection import FitSpec
    from tlmat.io.records import Record

#: what the ``data`` of the run records (its structures come from ``fit``, not a file)
FROM_FIT = "TransferRegressor.fit(X, y)"
#: the id of a structure X[i]; of a validation structure's copy in the run's test part
ID, COPY = "X[{}]", "X[{}] (validation copy)"


class _StructureRegressor(RegressorMixin, BaseEstimator):
    """What both estimators share: X is a list of crystal structures, so scikit-learn's
    checks on made-up arrays do not apply; a fit kept in ``run_dir`` is named by its
    parameters and data."""

    def __sklearn_tags__(self):
        # X is a list of structures: scikit-learn's checks on made-up arrays do not apply
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.requires_fit = True  # predict needs fit (the default, said for the reader)
        tags.target_tags.required = True
        return tags

    def _more_tags(self) -> dict[str, Any]:
        """The same tags for scikit-learn < 1.6."""
        return {"X_types": ["structures"], "requires_fit": True, "requires_y": True}

    def _keep(self, params: dict[str, Any]) -> None:
        """scikit-learn's convention: an ``__init__`` stores its parameters as given
        (``locals()``), unchecked; ``fit`` checks them."""
        for name, value in params.items():
            if name not in ("self", "__class__"):
                setattr(self, name, value)

    def _in_folder(self, records: list[Record], work: Callable[[Path], None]) -> None:
        """``work(folder)`` in a temporary folder, or, with ``run_dir``, in the folder
        that this fit's parameters and data name (so a repeated fit resumes or reuses
        it); sets ``run_dir_``."""
        if self.run_dir is None:
            with tempfile.TemporaryDirectory(prefix="tlmat-estimator-") as folder:
                work(Path(folder))
            self.run_dir_ = None
        else:
            folder = Path(self.run_dir) / f"fit-{self._digest(records)}"
            work(folder)
            self.run_dir_ = folder

    def _digest(self, records: list[Record]) -> str:
        """What names a fit's folder: the parameters (but the folder) and the data."""
        from tlmat.graphs.cache import structure_key

        params = {k: v for k, v in self.get_params().items() if k != "run_dir"}
        digest = hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode())
        for record in records:
            digest.update(structure_key(record.structure).encode())
            digest.update(np.float64(record.targets[self.target]).tobytes())
        return digest.hexdigest()[:16]


class TransferRegressor(_StructureRegressor):
    """A crystal-property regressor transferred from a pretrained source (or trained from
    scratch), with scikit-learn's API.

    Parameters:
        source: the pretrained model transferred from: any name
            :func:`tlmat.models.hub.resolve` knows (``tlmat models``), a checkpoint or a
            run folder; ``None`` trains ``model`` from scratch.
        strategy: how the source is transferred, one of
            :data:`tlmat.experiments.runspec.STRATEGIES` (``full``, ``freeze-embedding``,
            ``head-only``, ``freeze-first-k``, ``discriminative``, ``features+mlp``,
            ``features+rf``; ``scratch``: the source's architecture, or ``model``, with
            random weights). With ``source=None`` only ``scratch`` (or the default,
            ``full``, which then means scratch) is accepted.
        model: the architecture or preset trained from scratch (``tlmat models``;
            ``None``: ``cgcnn-mp``, the shape of the published Materials Project CGCNNs).
        epochs: most training epochs (``None``: 60,000 / N within 30–300, with early
            stopping after a fifth of them, as ``tlmat train``).
        lr: learning rate (``None``: 1e-3).
        batch_size: structures per step (``None``: 64).
        ensemble: members of a deep ensemble (1: one model). Members share the training
            and validation structures drawn by ``seed`` and differ in initialisation
            (for a transfer, a new head) and training order; ``predict(X,
            return_std=True)`` needs 2 or more.
        val_size: the training data held out for early stopping and selecting the
            epoch: a fraction in (0, 1), or a count ≥ 1.
        seed: draws the validation structures, the initialisation and the order.
        run_dir: where the run is kept: each fit in ``run_dir/fit-<digest>``, named by its
            data and parameters, so that the same fit again reuses the finished run (and
            an interrupted one resumes), and clones fitted on other data (folds of a
            cross-validation) never share a folder. ``None``: a temporary folder, removed
            at the end of ``fit``.
        unit: the target's unit (``"eV/cell"``), written into the run and the model.
        target: the target's name, as the run and model record it.

    Attributes (after ``fit``):
        model_: the fitted model: a :class:`~tlmat.models.base.TrainedModel`, an
            :class:`~tlmat.uncertainty.Ensemble` (``ensemble`` > 1), or for
            ``features+mlp`` / ``features+rf`` the frozen source whose features
            ``regressor_`` reads.
        regressor_: the MLP or random forest of a ``features+`` strategy, else ``None``.
        spec_: the :class:`~tlmat.experiments.runspec.RunSpec` that was run.
        val_scores_: MAE, RMSE (target unit), R² and n on the validation structures.
        run_dir_: the run's folder, or ``None`` when it was temporary (or, for a
            ``features+`` strategy, not written).
    """

    def __init__(
        self,
        source: str | None = "cgcnn/formation-energy-per-atom",
        strategy: str = "full",
        model: str | None = None,
        epochs: int | None = None,
        lr: float | None = None,
        batch_size: int | None = None,
        ensemble: int = 1,
        val_size: float = 0.1,
        seed: int = 0,
        run_dir: str | Path | None = None,
        unit: str | None = None,
        target: str = "target",
    ):
        self._keep(locals())

    def fit(self, X: Sequence[Any], y: Any) -> TransferRegressor:
        """Train on structures ``X`` (pymatgen ``Structure`` s or ASE ``Atoms``) and their
        targets ``y`` (in ``unit``): ``val_size`` of them, drawn by ``seed``, select the
        epoch and stop the training; no other labelled data is read. Returns ``self``.

        Raises ``ValueError`` naming the problem: an item of X that is no structure, a
        structure the model cannot use, lengths of X and y that differ, a non-finite
        target, or parameters that cannot run together."""
        from tlmat.transfer.strategies import FEATURE_STRATEGIES

        records = _records(X, y, self.target)
        spec = self._spec(Path("."))  # the parameters checked before any slow work
        train, val = train_val_split(len(records), self.val_size, self.seed)
        if spec.strategy in FEATURE_STRATEGIES:
            self._fit_features(spec, records, train, val)
            return self
        self._in_folder(records, lambda folder: self._fit_run(folder, records, train, val))
        return self

    def predict(self, X: Sequence[Any], return_std: bool = False):
        """The predicted target of each structure of ``X`` (in ``unit``), as an array of
        shape (n,); with ``return_std``, also σ, the ensemble's standard deviation
        (√(σ_a² + σ_e²), :mod:`tlmat.uncertainty`; same unit). σ needs an ensemble
        (``ensemble`` ≥ 2): a single model has none, and asking for it raises
        ``ValueError``."""
        from tlmat.uncertainty import Ensemble

        check_is_fitted(self, "model_")
        ensemble = isinstance(self.model_, Ensemble)
        if return_std and not ensemble:
            raise ValueError(
                "return_std=True needs an ensemble: σ comes from its members' spread and "
                f"validation error; this estimator was fitted with "
                f"ensemble={self.spec_.ensemble}: fit it with ensemble >= 2 (a features+ "
                "strategy fits no ensemble)"
            )
        trained = self.model_.members[0] if ensemble else self.model_
        dataset = graph_dataset(_records(X), trained.model)
        if ensemble:
            arrays = self.model_.predict(dataset)
            mean, sigma = (np.asarray(arrays[k], dtype=np.float64) for k in ("mean", "sigma"))
            return (mean, sigma) if return_std else mean
        if self.regressor_ is not None:
            features = _features(trained, dataset, self.spec_.strategy)
            return self.regressor_.predict(features).astype(np.float64)
        from tlmat.models.prediction import predict

        return np.asarray(predict(trained, dataset), dtype=np.float64).reshape(len(dataset))

    def _spec(self, folder: Path) -> RunSpec:
        """The run of these parameters in ``folder`` (``split.json`` and ``run/``)."""
        from tlmat.experiments.runspec import RunSpec

        source, strategy, model = self.source, self.strategy, self.model
        if source is None and strategy not in ("full", "scratch"):
            raise ValueError(
                f"strategy {strategy!r} transfers a source, and source is None: name a "
                "source, or train from scratch (strategy 'scratch')"
            )
        if source is None or (strategy == "scratch" and model is not None):
            source, strategy = None, "scratch"  # the model named, from random weights
        given = {"epochs": self.epochs, "lr": self.lr, "batch_size": self.batch_size}
        training = {k: v for k, v in given.items() if v is not None}
        return RunSpec(
            data=FROM_FIT,
            split=folder / "split.json",
            model=model,
            source=source,
            strategy=strategy,
            training={
                **training,
                "target": self.target,
                "unit": self.unit or "",
                "seed": self.seed,
                "progress_bar": False,  # an estimator inside a grid search stays quiet
            },
            ensemble=self.ensemble,
            run_dir=folder / "run",
            zero_shot=False,  # its test part is the validation set: nothing to compare
            provenance={"made_by": "tlmat.TransferRegressor"},
        )

    def _fit_run(
        self, folder: Path, records: list[Record], train: np.ndarray, val: np.ndarray
    ) -> None:
        """Train through :func:`~tlmat.experiments.runspec.run` in ``folder``. A run
        scores a test part once; fit has no test data, so that part is a copy of the
        validation structures (other ids) and its scores are the validation scores."""
        from tlmat.data.splits import Split
        from tlmat.experiments.runspec import RunModels, run

        spec = self._spec(folder)
        dataset = graph_dataset(records, RunModels.of(spec).source_or_model, self.target)
        with_copies = _with_validation_copies(dataset, val)
        test = np.arange(len(dataset), len(with_copies))
        folder.mkdir(parents=True, exist_ok=True)
        Split(train, val, test).save(spec.split, with_copies.ids)
        result = run(spec, dataset=with_copies)
        self.model_ = _load_fitted(spec)
        self.regressor_ = None
        self.spec_ = spec
        self.val_scores_ = dict(result.test)

    def _fit_features(
        self, spec: RunSpec, records: list[Record], train: np.ndarray, val: np.ndarray
    ) -> None:
        """A ``features+`` or ``moments+`` strategy: the frozen source's pooled layer
        features, then its MLP, random forest or boosted trees, as
        :func:`tlmat.experiments.runs.run_strategy` fits them.
        A run keeps no fitted regressor (only its test predictions), so this fits it
        here, with the same functions and settings."""
        from tlmat.evaluation.metrics import regression_metrics
        from tlmat.experiments.runspec import loaded_source, scaled_defaults
        from tlmat.transfer.features import feature_regressor
        from tlmat.transfer.strategies import FEATURE_METHODS

        if spec.ensemble > 1:
            raise ValueError(
                f"ensemble={spec.ensemble}: an ensemble trains networks, and "
                f"{spec.strategy} fits none; use a transfer strategy (full, …) or ensemble=1"
            )
        source = loaded_source(spec.source)
        dataset = graph_dataset(records, source.model, self.target)
        features = _features(source, dataset, spec.strategy)
        config = scaled_defaults(spec.training, len(train))
        y = dataset.targets[self.target]
        regressor = feature_regressor(
            FEATURE_METHODS[spec.strategy][1],
            config.seed,
            epochs=config.epochs,
            patience=config.early_stopping_patience or config.epochs,
        )
        regressor.fit(features[train], y[train], features[val], y[val])
        self.model_, self.regressor_, self.spec_, self.run_dir_ = source, regressor, spec, None
        self.val_scores_ = {
            **regression_metrics(y[val], regressor.predict(features[val])),
            "n": len(val),
        }


class FitRegressor(_StructureRegressor):
    """The model selection of ``tlmat fit`` (:func:`~tlmat.experiments.selection.select_model`)
    as a scikit-learn regressor on crystal structures: the candidates compared by k-fold
    cross-validation inside the structures given to ``fit``, within ``budget`` minutes,
    and the best refit on all of them as a deep ensemble whose σ is calibrated on
    out-of-fold predictions. ``fit`` reads no other labelled data.

    Parameters:
        budget: minutes of wall time for the whole selection, refit included; candidates
            whose estimated cost does not fit are left out (``report_.rows`` says why).
        folds: folds of the cross-validation (≥ 2).
        repeats: repetitions of the k folds, each drawn with another seed.
        ensemble: members of the deep ensemble the winner is refit as (≥ 2: σ needs them).
        candidates: the methods compared, as ``"STRATEGY [SOURCE]"`` strings
            (``"features+mlp [tlmat/mp-eform-cgcnn]"``, ``"full [chgnet/0.3.0]"``);
            scratch is always added. ``None``: ``tlmat fit``'s defaults
            (:func:`~tlmat.experiments.selection.default_candidates`: foundation models'
            features + MLP, fine-tuning, scratch).
        sources: more sources (checkpoints, run folders or names) added to the default
            candidates, each fine-tuned and as features + MLP.
        epochs: most training epochs of every run (``None``: scaled to the data, as
            ``tlmat train``).
        seed: draws the folds, the validation parts and the initialisations.
        run_dir: where the selection is kept: each fit in ``run_dir/fit-<digest>`` (its
            structures as ``data.csv``, the selection in ``selection/``), named by the
            data and parameters, so that the same fit again reuses what finished (and an
            interrupted one resumes). ``None``: a temporary folder, removed at the end of
            ``fit``.
        unit: the target's unit (``"eV/cell"``), written into the report and the model.
        target: the target's name, as the report and model record it.

    Attributes (after ``fit``):
        chosen_: the chosen candidate's label (lowest mean CV MAE).
        cv_results_: each candidate that ran → its MAE on every fold (target unit);
            those left out for the budget are only in ``report_.rows``.
        gain_: the chosen one's gain over scratch on the same folds
            (:class:`~tlmat.evaluation.statistics.Gain`), ``None`` when scratch won.
        model_: the refit :class:`~tlmat.uncertainty.Ensemble`, in memory; its σ is
            calibrated unless the budget left no room (``report_.calibration`` says).
        report_: the :class:`~tlmat.experiments.selection.FitResult` (calibration,
            n_train, seconds…); its paths are gone when ``run_dir`` is ``None``.
        run_dir_: the fit's folder, or ``None`` when it was temporary.
    """

    def __init__(
        self,
        budget: float = 10.0,
        folds: int = 5,
        repeats: int = 1,
        ensemble: int = 5,
        candidates: list[str] | None = None,
        sources: list[str] | None = None,
        epochs: int | None = None,
        seed: int = 0,
        run_dir: str | Path | None = None,
        unit: str = "",
        target: str = "target",
    ):
        self._keep(locals())

    def fit(self, X: Sequence[Any], y: Any) -> FitRegressor:
        """Choose and fit on structures ``X`` (pymatgen ``Structure`` s or ASE ``Atoms``)
        and their targets ``y`` (in ``unit``); returns ``self``.

        Raises ``ValueError`` naming the problem: an item of X that is no structure, a
        structure the models cannot use, lengths of X and y that differ, a non-finite
        target, or a parameter out of range (pydantic's ``ValidationError``)."""
        records = _records(X, y, self.target)
        self._spec(Path("."), Path("."))  # the parameters checked before any slow work
        self._in_folder(records, lambda folder: self._select(folder, records))
        return self

    def predict(self, X: Sequence[Any], return_std: bool = False):
        """The ensemble's mean prediction for each structure of ``X`` (in ``unit``), an
        array of shape (n,); with ``return_std``, also its calibrated σ (same unit)."""
        check_is_fitted(self, "model_")
        dataset = graph_dataset(_records(X), self.model_.members[0].model)
        arrays = self.model_.predict(dataset)
        mean, sigma = (np.asarray(arrays[k], dtype=np.float64) for k in ("mean", "sigma"))
        return (mean, sigma) if return_std else mean

    def _spec(self, data: Path, folder: Path) -> FitSpec:
        """The selection of these parameters on ``data``, kept in ``folder``."""
        from tlmat.experiments.selection import FitSpec
        from tlmat.io.table import ID_COLUMNS, STRUCTURE_COLUMNS

        if str(self.target).lower() in (*ID_COLUMNS, *STRUCTURE_COLUMNS):
            # the structures travel to the selection as a CSV table: those names are
            # its id and structure columns
            raise ValueError(f"target {self.target!r} names a table's id or structure column")
        given = {"epochs": self.epochs} if self.epochs is not None else {}
        return FitSpec(
            data=str(data),
            training={**given, "target": self.target, "unit": self.unit or "", "seed": self.seed},
            budget=self.budget,
            folds=self.folds,
            repeats=self.repeats,
            ensemble=self.ensemble,
            candidates=None if self.candidates is None else list(self.candidates),
            sources=list(self.sources or []),
            run_dir=folder,
        )

    def _select(self, folder: Path, records: list[Record]) -> None:
        """Write the structures to ``folder/data.csv`` (once: a resumed fit reads the
        same file), run the selection in ``folder/selection`` and keep its results."""
        from tlmat.experiments.selection import select_model
        from tlmat.io import write_csv
        from tlmat.uncertainty import load_ensemble

        data = folder / "data.csv"
        if not data.exists():
            folder.mkdir(parents=True, exist_ok=True)
            # written under another name first (one per process: parallel clones may
            # share the folder), so that an interrupted write is never read
            partial = folder / f"data.csv.partial-{os.getpid()}"
            write_csv(records, partial, overwrite=True)
            partial.replace(data)
        result = select_model(self._spec(data, folder / "selection"))
        self.model_ = load_ensemble(result.model_dir)
        self.chosen_ = result.chosen
        self.cv_results_ = {row.label: list(row.maes) for row in result.rows if row.maes}
        self.gain_ = result.gain
        self.report_ = result


def train_val_split(n: int, val_size: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Training and validation positions of ``n`` structures: ``val_size`` (a fraction in
    (0, 1) or a count ≥ 1) of them drawn with ``seed``, at least one in each part."""
    if isinstance(val_size, bool) or not isinstance(val_size, int | float | np.number):
        raise ValueError(f"val_size must be a fraction or a count, got {val_size!r}")
    if not (0 < val_size < 1 or (val_size >= 1 and float(val_size).is_integer())):
        raise ValueError(f"val_size must be a fraction in (0, 1) or a count >= 1, got {val_size}")
    count = max(1, round(val_size * n)) if val_size < 1 else int(val_size)
    if count >= n:
        raise ValueError(
            f"val_size={val_size} holds out {count} of {n} structures: at least one must "
            "be left for training"
        )
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[count:]), np.sort(order[:count])


def _targets(y: Any, n: int) -> np.ndarray:
    """``y`` as a float64 array of ``n`` finite values, or a ``ValueError`` saying why not."""
    try:
        values = np.asarray(y, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(f"y must hold one number per structure: {error}") from None
    if values.ndim == 2 and values.shape[1] == 1:
        values = values[:, 0]  # a column vector, as scikit-learn accepts it
    if values.ndim != 1:
        raise ValueError(f"y must be one-dimensional (one target), got shape {values.shape}")
    if len(values) != n:
        raise ValueError(f"X has {n} structures but y has {len(values)} values")
    bad = np.flatnonzero(~np.isfinite(values))
    if len(bad):
        shown = ", ".join(f"y[{i}] = {values[i]}" for i in bad[:5])
        raise ValueError(f"y must be finite: {shown}" + (" …" if len(bad) > 5 else ""))
    return values


def _records(X: Any, y: Any = None, target: str = "target") -> list[Record]:
    """Records of the structures of ``X`` (ids ``X[i]``) with ``y`` (when given) as
    ``target``, checked as files are; an item that is no structure or fails the checks,
    or a ``y`` that does not fit X, is a ``ValueError`` naming it."""
    from ase import Atoms
    from pymatgen.core import IStructure

    from tlmat.io.readers import records_from_structures

    if isinstance(X, IStructure | Atoms | str | Path) or not isinstance(X, Sequence | np.ndarray):
        raise ValueError(
            f"X must be a list of structures (pymatgen Structure or ASE Atoms), got a "
            f"{type(X).__name__}; for one structure pass [structure]"
        )
    if len(X) == 0:
        raise ValueError("X holds no structures")
    for i, item in enumerate(X):
        if not isinstance(item, IStructure | Atoms):
            raise ValueError(
                f"X[{i}] is a {type(item).__name__}, not a crystal structure (pymatgen "
                "Structure or ASE Atoms); a feature matrix is no input for this estimator"
            )
    targets = {target: list(_targets(y, len(X)))} if y is not None else None
    read = records_from_structures(list(X), [ID.format(i) for i in range(len(X))], targets)
    _refuse_skipped(read.log.problems, len(X))
    return read.records


def _refuse_skipped(problems: Sequence[Any], n: int) -> None:
    """A ``ValueError`` naming the structures that were skipped: X and y must stay aligned,
    and every structure given must be predicted."""
    if problems:
        shown = "; ".join(str(p) for p in problems[:5])
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise ValueError(f"{len(problems)} of {n} structures cannot be used: {shown}{more}")


def graph_dataset(records: list[Record], model: Any, target: str | None = None) -> GraphDataset:
    """The graphs of ``records`` as ``model`` reads them (its graph settings and
    elements), through the graph cache (``$TLMAT_CACHE_DIR``), with ``target``'s values;
    a structure the model cannot use is a ``ValueError`` naming it."""
    from tlmat.data.dataset import GraphDataset, default_cache_dir
    from tlmat.graphs.cache import GraphCache
    from tlmat.io.records import ProblemLog

    log = ProblemLog()
    cache = GraphCache(default_cache_dir(), model.graph_settings)
    graphs = cache.graphs(records, log, model.elements)
    _refuse_skipped(log.problems, len(records))
    kept = [records[i] for i in graphs.source_index]
    values = {target: np.array([r.targets[target] for r in kept])} if target else {}
    return GraphDataset(
        graphs, [r.id for r in kept], [r.formula for r in kept], values, log, FROM_FIT
    )


def _with_validation_copies(dataset: GraphDataset, val: np.ndarray) -> GraphDataset:
    """``dataset`` followed by its validation structures again, under ids of their own."""
    from tlmat.data.dataset import concat

    copies = dataset.subset(val)
    copies.ids = [COPY.format(i) for i in val]
    return concat(dataset, copies)


def _load_fitted(spec: RunSpec) -> Any:
    """The model a finished run left in its folder, loaded into memory (the folder may be
    temporary): its checkpoint, or its ensemble."""
    from tlmat.models.checkpoint import load_checkpoint
    from tlmat.uncertainty import load_ensemble

    if spec.ensemble > 1:
        return load_ensemble(spec.run_dir)
    return load_checkpoint(spec.run_dir / "model.pt")


def _features(source: Any, dataset: GraphDataset, strategy: str) -> np.ndarray:
    """The source's features after every layer, pooled as the ``features+`` or
    ``moments+`` ``strategy`` pools them (the same as its run reads them)."""
    from tlmat.transfer.features import extract_features
    from tlmat.transfer.strategies import FEATURE_METHODS

    statistics = FEATURE_METHODS[strategy][0]
    return extract_features(source, dataset, None, "layers", statistics=statistics)
