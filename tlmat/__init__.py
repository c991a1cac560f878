"""tlmat: transfer learning of graph neural networks for crystal properties."""

__version__ = "0.1.0"


def load_model(name_or_path):
    """A pretrained or trained model ready to predict from structures (see
    :func:`tlmat.inference.load_model`); imported on first use, so ``import tlmat`` stays
    light."""
    from tlmat.inference import load_model as load

    return load(name_or_path)


def __getattr__(name: str):
    """``tlmat.TransferRegressor`` and ``tlmat.FitRegressor`` (:mod:`tlmat.estimator`),
    imported on first use: they bring scikit-learn and torch, which ``import tlmat``
    leaves out."""
    if name in ("TransferRegressor", "FitRegressor"):
        from tlmat import estimator

        return getattr(estimator, name)
    raise AttributeError(f"module 'tlmat' has no attribute {name!r}")


def fit(data, target: str, *, test=None, budget: float = 10.0, **options):
    """The best honest model for ``data`` (file, folder or registered name) and
    ``target``: candidates compared by cross-validation inside the training data within
    ``budget`` minutes, the winner refit as a calibrated deep ensemble, ``test`` scored
    once at the end (:func:`tlmat.experiments.selection.select_model`; ``options``: any
    field of :class:`~tlmat.experiments.selection.FitSpec` or of the training settings,
    e.g. ``unit="eV/cell"``, ``folds=3``, ``run_dir="runs/fit"``). Returns the
    :class:`~tlmat.experiments.selection.FitResult`; its ``model_dir`` is a model folder
    that :func:`load_model` and ``tlmat predict`` take."""
    from tlmat.experiments.selection import FitSpec, select_model

    test = None if test is None else str(test)
    return select_model(FitSpec(data=str(data), target=target, test=test, budget=budget, **options))
