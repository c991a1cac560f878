"""tlmat: transfer learning of graph neural networks for crystal properties."""

__version__ = "0.1.0"


def load_model(name_or_path):
    """A pretrained or trained model ready to predict from structures (see
    :func:`tlmat.inference.load_model`); imported on first use, so ``import tlmat`` stays
    light."""
    from tlmat.inference import load_model as load

    return load(name_or_path)


def __getattr__(name: str):
    """``tlmat.TransferRegressor`` (:mod:`tlmat.estimator`), imported on first use: it
    brings scikit-learn and torch, which ``import tlmat`` leaves out."""
    if name == "TransferRegressor":
        from tlmat.estimator import TransferRegressor

        return TransferRegressor
    raise AttributeError(f"module 'tlmat' has no attribute {name!r}")
