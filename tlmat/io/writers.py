"""Export a cleaned dataset: extended XYZ (targets in ``atoms.info``) or CSV with a CIF column."""

from __future__ import annotations

import csv
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from pymatgen.io.ase import AseAtomsAdaptor
from pymatgen.io.cif import CifWriter

from tlmat.io.records import Record


def _refuse_overwrite(path: Path, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True (--overwrite) to replace it")


def write_extxyz(records: Iterable[Record], path: str | Path, *, overwrite: bool = False) -> int:
    """Write records as extended XYZ; returns the number written."""
    import ase.io

    path = Path(path)
    _refuse_overwrite(path, overwrite)
    frames = []
    for record in records:
        structure = record.structure
        if any(getattr(sp, "oxi_state", None) for sp in structure.composition):
            # ASE has no oxidation states (COD CIFs give "Na+"): write the elements
            structure = structure.copy()
            structure.remove_oxidation_states()
        atoms = AseAtomsAdaptor.get_atoms(structure)
        atoms.info = {"id": record.id}
        for name, value in record.targets.items():
            atoms.info[name] = np.asarray(value) if np.ndim(value) else float(value)
        frames.append(atoms)
    ase.io.write(path, frames, format="extxyz")
    return len(frames)


def write_csv(records: Iterable[Record], path: str | Path, *, overwrite: bool = False) -> int:
    """Write records as CSV: ``id``, one column per scalar target, ``cif``."""
    path = Path(path)
    _refuse_overwrite(path, overwrite)
    records = list(records)
    names: dict[str, None] = {}
    for record in records:
        names.update({k: None for k, v in record.targets.items() if np.ndim(v) == 0})
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", *names, "cif"])
        for record in records:
            values = [repr(float(record.targets[n])) if n in record.targets else "" for n in names]
            writer.writerow([record.id, *values, str(CifWriter(record.structure))])
    return len(records)
