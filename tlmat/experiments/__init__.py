"""Experiments on top of evaluation: one method on one split (:mod:`runs`), descriptor
baselines, sources pretrained without the target's test materials, and resumable grids
of sizes × seeds × sources × methods (:mod:`benchmark`)."""
