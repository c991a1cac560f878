"""From a raw item a reader found to a checked :class:`Record`, or a :class:`Problem`.

Readers only locate items (id, where, structure payload, raw target values); every
format shares the parsing and the checks here, so a fault is judged the same way
whatever file it came from.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pymatgen.core import DummySpecies, Molecule, Structure
from scipy.spatial.distance import pdist

from tlmat.io.parse import (
    MIN_CELL_VOLUME,
    ManyStructuresError,
    NoCellError,
    NonFiniteError,
    Payload,
    to_structure,
)
from tlmat.io.records import Problem, Reason, Record, Target

DisorderPolicy = Literal["skip", "majority"]

#: Interatomic distances below this (Å) mean a broken structure, not chemistry.
MIN_DISTANCE = 0.5


@dataclass
class RawItem:
    """What a reader found: where it is, its id, the structure payload and raw targets."""

    id: str
    where: str
    payload: Payload
    targets: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class CheckOptions:
    """How strictly structures and targets are checked.

    ``disorder``: ``"skip"`` structures with partially occupied sites, or take each
    site's ``"majority"`` species (vacancies ignored). ``min_distance``: Å below which
    two atoms count as overlapping. ``targets``: names that must be present and finite;
    ``None`` keeps whatever the reader found (still checked for being finite numbers).
    """

    disorder: DisorderPolicy = "skip"
    min_distance: float = MIN_DISTANCE
    targets: tuple[str, ...] | None = None


def majority_species(structure: Structure) -> Structure:
    """Replace every disordered site by its most abundant species."""
    species = [max(site.species.items(), key=lambda kv: kv[1])[0] for site in structure]
    return Structure(
        structure.lattice,
        species,
        structure.frac_coords,
        site_properties=structure.site_properties or None,
    )


def closest_pair(structure: Structure | Molecule, cutoff: float) -> tuple[int, int, float] | None:
    """The closest pair of atoms nearer than ``cutoff`` Å (periodic images included)."""
    if len(structure) == 0:
        return None
    if isinstance(structure, Structure):
        centers, neighbors, _, distances = structure.get_neighbor_list(cutoff)
        if len(distances) == 0:
            return None
        k = int(np.argmin(distances))
        return int(centers[k]), int(neighbors[k]), float(distances[k])
    if len(structure) < 2:
        return None
    distances = pdist(structure.cart_coords)
    k = int(np.argmin(distances))
    if distances[k] >= cutoff:
        return None
    i, j = np.triu_indices(len(structure), 1)
    return int(i[k]), int(j[k]), float(distances[k])


def parse_target(name: str, value: Any) -> Target | Problem:
    """A float (or float array) from a raw table cell; a ``Problem`` when it is not one."""
    if value is None or (isinstance(value, str) and value.strip() == ""):
        return Problem("", Reason.MISSING_TARGET, f"{name!r} is empty")
    try:
        if isinstance(value, list | tuple | np.ndarray):
            number = np.asarray(value, dtype=float)
            finite = bool(np.all(np.isfinite(number)))
        else:
            number = float(value)
            finite = math.isfinite(number)
    except (TypeError, ValueError):
        return Problem("", Reason.NON_NUMERIC_TARGET, f"{name!r} = {str(value)[:40]!r}")
    if not finite:
        return Problem("", Reason.NON_FINITE_TARGET, f"{name!r} = {value!r}")
    return number


def _problem(item: RawItem, reason: Reason, detail: str) -> Problem:
    return Problem(item.where, reason, detail, item.id)


def not_elements(structure: Structure | Molecule) -> list[str]:
    """Symbols that are no chemical element: pymatgen reads an unknown CIF/JARVIS symbol
    (``Xx``) as a dummy species instead of failing, which no model can embed."""
    return sorted({sp.symbol for sp in structure.composition if isinstance(sp, DummySpecies)})


def checked_targets(item: RawItem, options: CheckOptions) -> dict[str, Target] | Problem:
    """The item's targets as numbers, or the first reason one is unusable. With no
    target named (``options.targets`` is ``None``) every column is optional: a value
    that is empty or no finite number is left out of the record, which is kept."""
    if options.targets is None:
        parsed = {name: parse_target(name, value) for name, value in item.targets.items()}
        return {k: v for k, v in parsed.items() if not isinstance(v, Problem)}
    targets: dict[str, Target] = {}
    for name in options.targets:
        if name not in item.targets:
            return _problem(item, Reason.MISSING_TARGET, f"no {name!r} column/key")
        parsed = parse_target(name, item.targets[name])
        if isinstance(parsed, Problem):
            return _problem(item, parsed.reason, parsed.detail)
        targets[name] = parsed
    return targets


def _parsed(item: RawItem) -> Structure | Molecule | Problem:
    """The item's structure, or why it has none."""
    try:
        return to_structure(item.payload)
    except FileNotFoundError as error:
        return _problem(item, Reason.MISSING_FILE, str(error.filename or error))
    except NoCellError as error:
        return _problem(item, Reason.NO_CELL, str(error))
    except ManyStructuresError as error:
        return _problem(item, Reason.MANY_STRUCTURES, str(error))
    except NonFiniteError as error:
        return _problem(item, Reason.NON_FINITE_COORDINATES, f"{error}: NaN or infinite")
    except OSError as error:  # name too long, permissions, a folder where a file should be
        name = Path(error.filename).name if error.filename else ""
        shown = f" ({name[:60]}{'…' if len(name) > 60 else ''})" if name else ""
        return _problem(item, Reason.UNREADABLE_FILE, f"{error.strerror or error}{shown}")
    except Exception as error:  # every parser raises its own kind; all mean "unparsable"
        message = str(error).strip().splitlines()[0] if str(error).strip() else ""
        return _problem(item, Reason.UNPARSABLE, f"{type(error).__name__}: {message}"[:200])


def non_finite(structure: Structure | Molecule) -> str | None:
    """What is not a finite number in a structure's cell or positions, or ``None``
    (NaN positions would otherwise pass every check and leave atoms without neighbours)."""
    if isinstance(structure, Structure) and not np.all(np.isfinite(structure.lattice.matrix)):
        return "the lattice holds NaN or infinite values"
    coords = structure.frac_coords if isinstance(structure, Structure) else structure.cart_coords
    bad = np.flatnonzero(~np.all(np.isfinite(coords), axis=1))
    if len(bad):
        return f"{len(bad)} site position(s) are NaN or infinite (first: site {bad[0]})"
    return None


def make_record(item: RawItem, options: CheckOptions = CheckOptions()) -> Record | Problem:
    """Parse and check one raw item."""
    targets = checked_targets(item, options)
    if isinstance(targets, Problem):
        return targets
    structure = _parsed(item)
    if isinstance(structure, Problem):
        return structure

    if len(structure) == 0:
        return _problem(item, Reason.EMPTY_STRUCTURE, "no atoms")
    unknown = not_elements(structure)
    if unknown:
        return _problem(
            item, Reason.NOT_AN_ELEMENT, f"{', '.join(map(repr, unknown))} is no chemical element"
        )
    fault = non_finite(structure)
    if fault is not None:
        return _problem(item, Reason.NON_FINITE_COORDINATES, fault)
    if isinstance(structure, Structure) and abs(structure.volume) < MIN_CELL_VOLUME:
        return _problem(item, Reason.NO_CELL, f"cell volume {structure.volume:.3g} Å³")
    if not structure.is_ordered:
        disordered = sum(not site.is_ordered for site in structure)
        if options.disorder == "skip":
            return _problem(
                item,
                Reason.PARTIAL_OCCUPANCY,
                f"{disordered} disordered site(s); --disorder majority (disorder='majority' in "
                "Python) keeps each site's majority species",
            )
        if isinstance(structure, Molecule):
            return _problem(item, Reason.PARTIAL_OCCUPANCY, "disordered molecule")
        structure = majority_species(structure)

    pair = closest_pair(structure, options.min_distance)
    if pair is not None:
        i, j, d = pair
        return _problem(
            item,
            Reason.OVERLAPPING_ATOMS,
            f"atoms {i} ({structure[i].specie}) and {j} ({structure[j].specie})"
            f" are {d:.3f} Å apart",
        )
    return Record(item.id, structure, targets, item.where, item.meta)
