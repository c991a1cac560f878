"""Experiments on top of evaluation: a run as a library object (:mod:`run`: ``RunSpec``
→ ``run`` → ``RunResult``), comparisons of runs over seeds (:mod:`comparison`), one
method on one split (:mod:`runs`), descriptor baselines, sources pretrained without the
target's test materials, and resumable grids of sizes × seeds × sources × methods
(:mod:`benchmark`), whose jobs are RunSpecs."""

from tlmat.experiments.comparison import compare
from tlmat.experiments.runspec import RunResult, RunSpec, run

__all__ = ["RunResult", "RunSpec", "compare", "run"]
