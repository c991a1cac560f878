"""Turn the payloads readers find (CIF/POSCAR text, pymatgen or JARVIS dicts, ASE Atoms,
files) into pymatgen ``Structure`` (periodic) or ``Molecule`` (no cell) objects."""

from __future__ import annotations

import io
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms
from pymatgen.core import Lattice, Molecule, Structure
from pymatgen.io.ase import AseAtomsAdaptor


@dataclass(frozen=True)
class Text:
    """Structure text in a known format (``"cif"``, ``"poscar"``, ``"extxyz"``…)."""

    text: str
    fmt: str


Payload = str | Text | dict | Atoms | Path

#: Cell volumes (Å³) below this mean no cell at all (zeros, or three coplanar vectors).
MIN_CELL_VOLUME = 1e-6


class NoCellError(ValueError):
    """A structure marked periodic whose cell is missing or flat (volume 0 Å³)."""


class NonFiniteError(ValueError):
    """A structure whose cell or positions hold NaN or infinite numbers."""


class ManyStructuresError(ValueError):
    """A payload that holds several structures where one is expected (a CIF of two data
    blocks, an XYZ file of two frames): reading only one would lose the others."""

    def __init__(self, count: int, what: str):
        super().__init__(f"holds {count} structures ({what}); expected one")


_BLOCK_START = re.compile(r"^[ \t]*data_", re.IGNORECASE | re.MULTILINE)
_SITES = re.compile(r"_atom_site_(fract|cartn)_x", re.IGNORECASE)


def cif_blocks(text: str) -> list[str]:
    """The structures of a CIF text, one text per data block that has atom sites; the
    whole text when it holds at most one such block (a block of metadata alone, as
    journals write, is no structure, and pymatgen skips it)."""
    starts = [m.start() for m in _BLOCK_START.finditer(text)]
    if len(starts) < 2:
        return [text]
    blocks = [text[a:b] for a, b in zip(starts, [*starts[1:], len(text)], strict=True)]
    with_sites = [block for block in blocks if _SITES.search(block)]
    return with_sites if len(with_sites) > 1 else [text]


def single_frame(frames: list[Atoms]) -> Atoms:
    """The one frame of an XYZ/trajectory payload; :class:`ManyStructuresError` if more."""
    if len(frames) != 1:
        raise ManyStructuresError(len(frames), "frames")
    return frames[0]


def detect_text_format(text: str) -> str:
    """``"cif"`` for CIF text, ``"poscar"`` otherwise (the two text formats tables carry)."""
    head = text[:4000]
    if "_cell_length_a" in head or any(
        line.lstrip().startswith("data_") for line in head.splitlines()[:50]
    ):
        return "cif"
    return "poscar"


def structure_from_text(text: str, fmt: str | None = None) -> Structure:
    """Parse CIF or POSCAR text; ``fmt`` is detected when not given.

    JARVIS-Leaderboard files store POSCARs with literal ``\\n`` escapes: they are undone here.
    """
    if "\n" not in text and "\\n" in text:
        text = text.replace("\\n", "\n")
    fmt = fmt or detect_text_format(text)
    if fmt == "cif" and len(blocks := cif_blocks(text)) > 1:
        raise ManyStructuresError(len(blocks), "CIF data blocks")
    with warnings.catch_warnings():
        # pymatgen warns about every rounded occupancy or missing symmetry tag; faults that
        # matter surface as exceptions or as disordered/overlapping sites checked later.
        warnings.simplefilter("ignore")
        try:
            return Structure.from_str(text, fmt=fmt)
        except Exception as error:
            from tlmat.io.cif import non_finite_cif

            why = non_finite_cif(text) if fmt == "cif" else None
            if why is not None:
                raise NonFiniteError(why) from error
            raise


def structure_from_dict(data: dict[str, Any]) -> Structure | Molecule:
    """A pymatgen ``as_dict()`` (Structure or Molecule) or a JARVIS ``atoms`` dict."""
    if "lattice_mat" in data and "elements" in data:  # JARVIS Atoms.to_dict()
        lattice = Lattice(np.asarray(data["lattice_mat"], dtype=float))
        return Structure(
            lattice,
            data["elements"],
            np.asarray(data["coords"], dtype=float),
            coords_are_cartesian=bool(data.get("cartesian", False)),
        )
    if "lattice" in data and "sites" in data:
        return Structure.from_dict(data)
    if "sites" in data:
        return Molecule.from_dict(data)
    raise ValueError("dict is neither a pymatgen Structure/Molecule nor a JARVIS atoms dict")


def structure_from_atoms(atoms: Atoms) -> Structure | Molecule:
    """ASE ``Atoms`` → ``Structure`` when any direction is periodic, else ``Molecule``.

    Raises :class:`NoCellError` for periodic atoms without a usable cell (an extxyz frame
    with ``pbc="T T T"`` but no ``Lattice``), which pymatgen would turn into a singular
    matrix error.
    """
    if not np.any(atoms.pbc):
        return AseAtomsAdaptor.get_molecule(atoms, charge_spin_check=False)
    if atoms.cell.volume < MIN_CELL_VOLUME:
        pbc = " ".join("T" if p else "F" for p in atoms.pbc)
        raise NoCellError(
            f'pbc="{pbc}" but the cell is missing or flat (volume {atoms.cell.volume:.3g} Å³); '
            'give a Lattice, or pbc="F F F" for a molecule'
        )
    return AseAtomsAdaptor.get_structure(atoms)


def structure_from_file(path: Path) -> Structure | Molecule:
    """Any single-structure file pymatgen or ASE understands (CIF, POSCAR, xyz, …)."""
    name = path.name.lower()
    if name.endswith((".xyz", ".extxyz", ".traj", ".json")):
        import ase.io

        return structure_from_atoms(single_frame(ase.io.read(path, index=":")))
    if name.endswith((".cif", ".mcif")):
        return structure_from_text(path.read_text(errors="replace"), "cif")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if name.endswith(".vasp") or name.startswith(("poscar", "contcar")):
            return Structure.from_str(path.read_text(errors="replace"), fmt="poscar")
        return Structure.from_file(path)


def to_structure(payload: Payload) -> Structure | Molecule:
    """Dispatch on the payload's type."""
    if isinstance(payload, Structure | Molecule):
        return payload
    if isinstance(payload, Atoms):
        return structure_from_atoms(payload)
    if isinstance(payload, Path):
        return structure_from_file(payload)
    if isinstance(payload, dict):
        return structure_from_dict(payload)
    if isinstance(payload, str):
        return structure_from_text(payload)
    if isinstance(payload, Text):
        if payload.fmt in ("extxyz", "xyz"):
            import ase.io

            frames = ase.io.read(io.StringIO(payload.text), format="extxyz", index=":")
            return structure_from_atoms(single_frame(frames))
        return structure_from_text(payload.text, payload.fmt)
    raise TypeError(f"cannot make a structure from {type(payload).__name__}")
