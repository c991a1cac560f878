"""Predictions in one call: ``tlmat.load_model(name_or_path).predict(structures)`` for
pymatgen ``Structure`` s, ASE ``Atoms`` or files and folders, returned as a table whose
headers carry the units, and the same table for ``tlmat predict``.

Example:
    >>> import tlmat
    >>> model = tlmat.load_model("cgcnn/formation-energy-per-atom")
    >>> model.predict(structures)  # id, formation_energy_per_atom (eV/atom)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from tlmat.data.loader import batch_size_for
from tlmat.graphs.builder import graphs_or_problems
from tlmat.graphs.cache import collate
from tlmat.io import ProblemLog, Record, read_records, records_from_structures
from tlmat.io.records import Problem
from tlmat.models.base import TrainedModel
from tlmat.models.prediction import predict_batches
from tlmat.models.targets import TargetSpec


def prediction_table(
    ids: Sequence[str],
    values: np.ndarray,
    target: TargetSpec,
    inverse_transform: bool = False,
) -> pd.DataFrame:
    """``id`` and the predictions, headed with name and unit (``K_VRH (log10 GPa)``), or
    one probability column per class label (``p(metal)``); ``inverse_transform`` turns
    log10 values back into the quantity (``K_VRH (GPa)``)."""
    frame = pd.DataFrame({"id": list(ids)})
    if values.ndim == 2:  # class probabilities
        labels = target.classes or tuple(f"class {k}" for k in range(values.shape[1]))
        for k, label in enumerate(labels):
            frame[f"p({label})"] = values[:, k]
        return frame
    if inverse_transform:
        if target.log10_of is None:
            raise ValueError(
                f"{target.column()}: the model's values are not log10 of a quantity, so "
                "there is nothing to transform back"
            )
        frame[f"{target.name} ({target.log10_of})"] = 10.0 ** values.astype(np.float64)
    else:
        frame[target.column()] = values
    return frame


def _records(structures: Any) -> tuple[list[Record], ProblemLog]:
    """Records of whatever was given: one or many objects, files or folders."""
    from ase import Atoms
    from pymatgen.core import SiteCollection

    # one structure (ASE Atoms and pymatgen structures are iterable: of atoms and sites)
    if isinstance(structures, str | Path | Atoms | SiteCollection) or not isinstance(
        structures, Iterable
    ):
        structures = [structures]
    records: list[Record] = []
    log = ProblemLog()
    objects: list[Any] = []
    for item in structures:
        if isinstance(item, str | Path):
            result = read_records(item)
            records += result.records
            log.extend(result.log)
        else:
            objects.append(item)
    if objects:
        result = records_from_structures(objects)
        records += result.records
        log.extend(result.log)
    return records, log


class Model:
    """A trained model that predicts from structures (:func:`load_model`)."""

    def __init__(self, trained: TrainedModel, name: str = ""):
        self.trained = trained
        self.name = name

    @property
    def target(self) -> TargetSpec:
        """What the model predicts: name, unit, transform, class labels."""
        return self.trained.target

    def __repr__(self) -> str:
        return (
            f"Model({self.name or self.trained.model.architecture!r}, "
            f"predicts {self.target.column()})"
        )

    @torch.no_grad()
    def predict(
        self,
        structures: Any,
        inverse_transform: bool = False,
        batch_size: int | None = None,
    ) -> pd.DataFrame:
        """Predictions for pymatgen ``Structure`` / ``Molecule`` s, ASE ``Atoms``, or
        paths of files and folders (one or a list), in batches. Structures the model
        cannot use are skipped with a warning naming each and the reason; the table's
        ``attrs["skipped"]`` lists them."""
        records, log = _records(structures)  # reading problems are logged as they occur
        model = self.trained.model.eval()
        built = graphs_or_problems(records, model.graph_settings, model.elements)
        graphs, ids = [], []
        for record, graph in zip(records, built, strict=True):
            if isinstance(graph, Problem):
                log.skip(graph)
            else:
                graphs.append(graph)
                ids.append(record.id)
        batch_size = batch_size or batch_size_for(graphs[:64], model.pair_cost)
        batches = (
            collate(graphs[start : start + batch_size])
            for start in range(0, len(graphs), batch_size)
        )
        values = predict_batches(self.trained, batches)
        frame = prediction_table(ids, values, self.target, inverse_transform)
        frame.attrs["skipped"] = [str(p) for p in log.problems]
        return frame


def load_model(name_or_path: str | Path) -> Model:
    """A registered pretrained model (``tlmat models``), a tlmat checkpoint or an
    original CGCNN file, ready to predict; loaded with ``torch.load(weights_only=True)``."""
    from tlmat.transfer.sources import load_source

    return Model(load_source(name_or_path), str(name_or_path))
