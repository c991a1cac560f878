"""tlmat: transfer learning of graph neural networks for crystal properties."""

__version__ = "0.1.0"
