"""tlmat: transfer learning of graph neural networks for crystal properties."""

__version__ = "0.1.0"


def load_model(name_or_path):
    """A pretrained or trained model ready to predict from structures (see
    :func:`tlmat.inference.load_model`); imported on first use, so ``import tlmat`` stays
    light."""
    from tlmat.inference import load_model as load

    return load(name_or_path)
