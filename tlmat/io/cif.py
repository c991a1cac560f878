"""A fast reader for the plain CIFs most datasets hold, giving exactly pymatgen's structure.

Materials Project, the CGCNN/CDVAE datasets and Matbench store crystals as P1 CIFs that
pymatgen wrote: one data block, the identity as the only symmetry operation, fully
occupied sites of plain elements. For these, gemmi's C++ tokenizer and a few numpy lines
give the same atomic numbers, Cartesian positions (Å) and cell (Å), bit for bit, as
``Structure.from_str(text, fmt="cif")`` (same site order, the same rounding of 1/3 and
2/3, the same wrapping into the cell), at a fraction of the cost. Anything else —
symmetry to apply, partial occupancy, coinciding sites, magnetic or oxidation-state
data, labels that are not element symbols, numbers gemmi and Python read differently —
returns ``None``, and the caller parses with pymatgen, which stays the reference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from pymatgen.core import Composition, Element, Lattice
from pymatgen.core.composition import reduce_formula
from pymatgen.io.cif import str2float

#: pymatgen's CifParser defaults, which these rules reproduce
SITE_TOLERANCE = 1e-4  # fractional distance below which two sites coincide
FRAC_TOLERANCE = 1e-4  # relative distance to 1/3 or 2/3 below which it is snapped
MIN_THICKNESS = 0.01  # Å between lattice planes below which pymatgen refuses the cell

#: tags whose presence changes what pymatgen builds (magnetic moments, oxidation states,
#: Cartesian-only sites, implicit hydrogens): such files take the pymatgen path
_SPECIAL = ("_magn", "_moment", "oxidation_number", "_cartn_", "attached_hydrogens")
_SYMOP_TAGS = (
    "_symmetry_equiv_pos_as_xyz",
    "_space_group_symop_operation_xyz",
    "_symmetry_equiv_pos_as_xyz_",
    "_space_group_symop_operation_xyz_",
)


@dataclass(frozen=True)
class CifArrays:
    """One structure of a plain CIF, as pymatgen would build it."""

    z: np.ndarray  # (N,) int64 atomic numbers, pymatgen's site order
    pos: np.ndarray  # (N, 3) float64 Cartesian positions, Å
    cell: np.ndarray  # (3, 3) float64 lattice vectors as rows, Å
    formula: str  # reduced formula, as ``Composition.reduced_formula``


@lru_cache(maxsize=256)
def _element(symbol: str) -> tuple[int, float] | None:
    """(Z, Pauling electronegativity) of an element symbol; ``None`` for anything else
    (isotopes D and T, dummy species, labels) and for elements without an
    electronegativity, whose sites pymatgen orders by a comparison that is no order."""
    try:
        element = Element(symbol)
    except (ValueError, KeyError):
        return None
    if element.symbol != symbol or element.Z > 118 or symbol in ("D", "T"):
        return None
    electronegativity = element.X
    return None if math.isnan(electronegativity) else (element.Z, electronegativity)


@lru_cache(maxsize=65536)
def reduced_formula(counts: tuple[tuple[str, int], ...]) -> str:
    """``Composition.reduced_formula`` of whole element counts (cached: formulas repeat),
    through the two steps it takes for them, without building a ``Composition``."""
    formula, _ = reduce_formula(dict(counts))
    return Composition.special_formulas.get(formula, formula)


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:  # "0.123(4)": pymatgen drops the uncertainty
        return str2float(text)


def _values(block, tag: str) -> list[str] | None:
    column = block.find_values(tag)
    return list(column) if len(column) else None


def _thinnest(cell: list[list[float]]) -> float:
    """The smallest distance (Å) between lattice planes of a cell (volume over the area
    of a face), in plain floats: numpy's small-matrix calls cost more than the sums."""
    (a1, a2, a3), (b1, b2, b3), (c1, c2, c3) = cell
    faces = (  # b × c, c × a, a × b
        (b2 * c3 - b3 * c2, b3 * c1 - b1 * c3, b1 * c2 - b2 * c1),
        (c2 * a3 - c3 * a2, c3 * a1 - c1 * a3, c1 * a2 - c2 * a1),
        (a2 * b3 - a3 * b2, a3 * b1 - a1 * b3, a1 * b2 - a2 * b1),
    )
    volume = abs(a1 * faces[0][0] + a2 * faces[0][1] + a3 * faces[0][2])
    return min(volume / max(math.hypot(*face), 1e-300) for face in faces)


def _is_identity(operation: str) -> bool:
    return operation.strip("'\"").replace(" ", "").lower() == "x,y,z"


def read_plain_cif(text: str) -> CifArrays | None:
    """The structure of a plain P1 CIF (see the module's docstring), or ``None`` when the
    file needs pymatgen's general parser."""
    import gemmi

    lowered = text.lower()
    if any(tag in lowered for tag in _SPECIAL):
        return None
    try:
        document = gemmi.cif.read_string(text)
    except (RuntimeError, ValueError):  # pymatgen decides what is wrong with it
        return None
    if len(document) != 1:
        return None
    block = document[0]
    operations = next((v for t in _SYMOP_TAGS if (v := _values(block, t)) is not None), None)
    if operations is None or len(operations) != 1 or not _is_identity(operations[0]):
        return None
    symbols = _values(block, "_atom_site_type_symbol")
    columns = [_values(block, f"_atom_site_fract_{axis}") for axis in "xyz"]
    if not symbols or any(c is None or len(c) != len(symbols) for c in columns):
        return None
    occupancies = _values(block, "_atom_site_occupancy")
    try:
        if occupancies is not None and any(_number(o) != 1.0 for o in occupancies):
            return None
        parameters = [
            _number(block.find_value(f"_cell_{kind}_{axis}"))
            for kind, axes in (("length", "abc"), ("angle", ("alpha", "beta", "gamma")))
            for axis in axes
        ]
        frac = np.array([[_number(v) for v in c] for c in columns], dtype=np.float64).T
    except (TypeError, ValueError):  # a missing value, '?', a quoted number
        return None
    if not (np.all(np.isfinite(frac)) and all(map(math.isfinite, parameters))):
        return None  # NaN or inf: the pymatgen path names the fault
    elements = [_element(s) for s in symbols]
    if any(e is None for e in elements):
        return None

    # pymatgen snaps coordinates within 1e-4 (relative) of 1/3 or 2/3 to those values
    for ideal in (1 / 3, 2 / 3):
        frac[np.abs(frac / ideal - 1) <= FRAC_TOLERANCE] = ideal
    frac = frac - np.floor(frac)
    # coinciding sites would be merged into one disordered site
    diff = frac[:, None, :] - frac[None, :, :]
    diff -= np.round(diff)
    close = np.all(np.abs(diff) < SITE_TOLERANCE, axis=-1)
    if np.count_nonzero(close) != len(frac):
        return None
    matrix = Lattice.from_parameters(*parameters).matrix
    if _thinnest(matrix.tolist()) < 2 * MIN_THICKNESS:  # pymatgen refuses such cells
        return None

    # pymatgen groups sites by species and then sorts them by electronegativity, then
    # symbol; both sorts are stable, so sites of one element keep the file's order
    z = np.array([e[0] for e in elements], dtype=np.int64)
    order = sorted(range(len(z)), key=lambda i: (elements[i][1], symbols[i]))
    z, frac = z[order], frac[order]
    counts: dict[str, int] = {}
    for symbol in symbols:
        counts[symbol] = counts.get(symbol, 0) + 1
    # one product per site, as pymatgen's sites compute it: a batched product may round
    # the last bit differently
    pos = np.array([np.dot(f, matrix) for f in frac])
    return CifArrays(z, pos, matrix, reduced_formula(tuple(sorted(counts.items()))))


def non_finite_cif(text: str) -> str | None:
    """Which cell parameter or site coordinate of a CIF is NaN or infinite, or ``None``
    (pymatgen refuses such a file as one "with no structures", which hides the cause)."""
    import gemmi

    try:
        document = gemmi.cif.read_string(text)
    except (RuntimeError, ValueError):
        return None
    for block in document:
        for tag in [f"_cell_length_{a}" for a in "abc"] + [f"_atom_site_fract_{a}" for a in "xyz"]:
            for value in _values(block, tag) or []:
                try:
                    number = float(value)
                except ValueError:
                    continue
                if not math.isfinite(number):
                    return f"{tag} is {value}"
    return None
