"""Cheap labels on demand: the energy and formation energy per atom of any structures from
a model that predicts total energies (CHGNet, SevenNet, M3GNet's potentials, or a tlmat
model of an extensive energy), to grow a pretraining set beyond the DFT-labelled
structures (the cheap fidelity of Hoffmann et al.; ``tlmat label``).

A formation energy needs each element's reference: the model's own energy per atom of
that element's most stable structure among the elemental crystals of a reference table
(by default the Materials Project structures of ``mp_cgcnn_36k``), so that the labels are
consistent with the model. The references are computed once per model and table, and
cached beside the graph cache.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from tlmat.data.dataset import GraphDataset
from tlmat.models.base import TrainedModel

#: where the elemental reference crystals come from unless told otherwise
REFERENCES = "mp_cgcnn_36k/mp_cgcnn_36k.csv.gz"
_FORMULA_SUM = re.compile(r"_chemical_formula_sum\s+'?([A-Za-z0-9. ]+)'?")


@dataclass
class Labels:
    """Labels of a set of structures and what they cost."""

    table: pd.DataFrame  # id, formula, atoms, energy and formation energy per atom (eV/atom)
    seconds: float  # wall seconds of the forward passes
    references: dict[str, float] = field(default_factory=dict)  # element → eV/atom

    @property
    def seconds_per_structure(self) -> float:
        return self.seconds / max(len(self.table), 1)


def check_energy_model(trained: TrainedModel, name: str) -> None:
    """Refuse a model that does not predict a total energy in eV per cell."""
    target = trained.target
    if not (target.extensive and target.unit == "eV/cell"):
        raise ValueError(
            f"{name} predicts {target.column()}, not a total energy in eV per cell: label "
            "with an energy model (chgnet/0.3.0, sevennet/0, m3gnet/… or your own)"
        )


def energies_per_atom(
    trained: TrainedModel, dataset: GraphDataset
) -> tuple[np.ndarray, np.ndarray, float]:
    """Each structure's predicted energy per atom (eV/atom), its number of atoms, and the
    seconds the predictions took."""
    from tlmat.models.prediction import predict

    start = time.perf_counter()
    per_cell = predict(trained, dataset)
    seconds = time.perf_counter() - start
    atoms = np.array([dataset.graphs.arrays(i, copy=False).num_nodes for i in range(len(dataset))])
    return per_cell / atoms, atoms, seconds


def elemental_rows(table: Path) -> pd.DataFrame:
    """The rows of a structure table (CSV with a ``cif`` column) whose crystal holds one
    element, with that element."""
    frame = pd.read_csv(table)
    if "cif" not in frame:
        raise ValueError(f"{table}: no 'cif' column to take elemental references from")
    sums = frame["cif"].str.extract(_FORMULA_SUM, expand=False).fillna("")
    symbols = sums.str.findall(r"[A-Z][a-z]?")
    single = symbols.map(lambda found: len(set(found)) == 1)
    out = frame[single].copy()
    out["element"] = symbols[single].map(lambda found: found[0])
    return out


def elemental_references(
    trained: TrainedModel, name: str, table: str | Path = REFERENCES, reading=None
) -> dict[str, float]:
    """Element → the model's lowest energy per atom (eV/atom) over the elemental crystals
    of ``table`` (a path or registered name); cached per model and table beside the graph
    cache of ``reading`` (a :class:`~tlmat.data.Reading`: how structures are read)."""
    from tlmat.data import Reading, default_cache_dir
    from tlmat.datasets import resolve

    reading = reading or Reading()
    table = Path(resolve(str(table)))
    key = hashlib.sha256(f"{name}\n{trained.provenance.get('sha256', '')}".encode())
    key.update(table.read_bytes())
    cache_dir = Path(reading.cache_dir or default_cache_dir())
    cached = cache_dir / "references" / f"{key.hexdigest()[:20]}.json"
    if cached.exists():
        return json.loads(cached.read_text())
    rows = elemental_rows(table)
    if rows.empty:
        raise ValueError(f"{table}: no elemental crystal to take references from")
    csv = cached.parent / f"{cached.stem}-elements.csv"
    csv.parent.mkdir(parents=True, exist_ok=True)
    id_column = "material_id" if "material_id" in rows else rows.columns[0]
    rows[[id_column, "cif"]].to_csv(csv, index=False)
    model = trained.model
    dataset = reading.load([str(csv)], model.graph_settings, [], model.elements)
    energies, _, _ = energies_per_atom(trained, dataset)
    element_of = dict(zip(rows[id_column].astype(str), rows["element"], strict=True))
    lowest: dict[str, float] = {}
    for structure_id, energy in zip(dataset.ids, energies, strict=True):
        element = element_of[structure_id]
        lowest[element] = min(lowest.get(element, np.inf), float(energy))
    cached.write_text(json.dumps(lowest, indent=1, sort_keys=True))
    csv.unlink()
    return lowest


def formation_energies(
    energies: np.ndarray, formulas: list[str], references: dict[str, float]
) -> np.ndarray:
    """E_f = E − Σ_el x_el μ_el per atom (eV/atom) for reduced ``formulas``; NaN where an
    element has no reference."""
    from pymatgen.core import Composition

    out = np.full(len(energies), np.nan)
    for k, (energy, formula) in enumerate(zip(energies, formulas, strict=True)):
        fractions = Composition(formula).fractional_composition
        symbols = [str(element) for element in fractions]
        if all(s in references for s in symbols):
            out[k] = energy - sum(fractions[s] * references[s] for s in symbols)
    return out


def label(trained: TrainedModel, dataset: GraphDataset, references: dict[str, float]) -> Labels:
    """Energy and formation energy per atom of every structure of ``dataset``."""
    energies, atoms, seconds = energies_per_atom(trained, dataset)
    table = pd.DataFrame(
        {
            "id": dataset.ids,
            "formula": dataset.formulas,
            "atoms": atoms,
            "energy_per_atom (eV/atom)": energies,
            "formation_energy_per_atom (eV/atom)": formation_energies(
                energies, dataset.formulas, references
            ),
        }
    )
    return Labels(table, seconds, references)
