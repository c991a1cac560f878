"""Where fine-tuning with a kept head starts. A kept head (an energy head reused for an
energy-like target) outputs the source's normalised values; decoded with a normaliser
fitted to the target alone (its mean and standard deviation), its first predictions are
off by the ratio of the two scales, and fine-tuning starts worse than the source
recalibrated by a line, the complaint in the trackers of matgl, SevenNet and MACE
(reference energies and normalisers not refitted). Here the normaliser is the line
itself: std and mean fitted by least squares of the target on the head's outputs over the
training split, so that the model before its first step fits the training split at least
as well as the source's zero-shot + linear recalibration wherever that line lies in the
fitted family (:func:`linear_start`).
"""

from __future__ import annotations

import logging

import numpy as np

from tlmat.data.dataset import GraphDataset
from tlmat.models.base import CrystalModel, TrainedModel
from tlmat.models.prediction import network_outputs
from tlmat.models.targets import TargetSpec

logger = logging.getLogger(__name__)


def linear_start(
    model: CrystalModel,
    target: TargetSpec,
    dataset: GraphDataset,
    indices,
    source: TargetSpec | None = None,
) -> TargetSpec:
    """``target`` (already fitted on the training split ``indices``) with its standard
    normaliser refitted so that ``model``'s kept head decodes, before any training, to
    the least-squares fit of the target on its outputs over ``indices``: std·out + mean
    (mean per atom for an extensive target), plus, when the ``source`` target had element
    references (CHGNet's AtomRef) and this one has none, γ times them. That family holds
    the source's zero-shot + linear recalibration a·ŷ + b wherever the mean term is a
    constant (intensive targets; cells of one size), so training starts no worse on the
    training split. Left as it is for another normalisation, a heteroscedastic or
    classification target, or when the outputs do not rise with the target."""
    if target.task != "regression" or target.normalization != "standard" or target.heteroscedastic:
        return target
    indices = np.asarray(indices)
    out = network_outputs(TrainedModel(model, target), dataset, indices).double().numpy()
    y = np.asarray(dataset.targets[target.name], dtype=np.float64)[indices]
    if target.log10 and not target.needs_atoms:
        y = np.log10(y)
    atoms = [dataset.graphs.arrays(int(i), copy=False).z for i in indices]
    columns = [out, np.array([len(zs) if target.extensive else 1.0 for zs in atoms])]
    y = y - _reference_sums(target.atom_refs, atoms)
    borrow = bool(source and source.atom_refs and not target.atom_refs and not target.log10)
    if borrow:
        columns.append(_reference_sums(source.atom_refs, atoms))
    fitted, *_ = np.linalg.lstsq(np.column_stack(columns), y, rcond=None)
    if not (np.isfinite(fitted).all() and fitted[0] > 0):
        logger.info("%s: the kept head's outputs do not rise with it; normaliser kept", target.name)
        return target
    update: dict = {"std": float(fitted[0]), "mean": float(fitted[1])}
    if borrow:
        update["atom_refs"] = {z: float(fitted[2]) * ref for z, ref in source.atom_refs.items()}
    return target.model_copy(update=update)


def _reference_sums(refs: dict[int, float] | None, atoms: list[np.ndarray]) -> np.ndarray:
    """Σ of the element references over each structure's atoms (0 without references)."""
    return np.array([sum((refs or {}).get(int(z), 0.0) for z in zs) for zs in atoms])
