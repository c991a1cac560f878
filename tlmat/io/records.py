"""Records (id, structure, named targets) and the bookkeeping of skipped input.

Every reader and the graph builder report faults through a :class:`ProblemLog`: one bad
structure is skipped with a one-line reason naming its file/row, the others go on, and
the log ends with a summary by reason. With ``strict=True`` the first fault raises, and
its message says "aborted" rather than "skipped".
"""

from __future__ import annotations

import csv
import logging
from collections import Counter
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

import numpy as np
from pymatgen.core import Molecule, Structure

logger = logging.getLogger("tlmat")

Target = float | np.ndarray


class Reason(StrEnum):
    """Why an input item was skipped."""

    MISSING_FILE = "missing file"
    UNPARSABLE = "unparsable structure"
    MISSING_TARGET = "missing target"
    NON_NUMERIC_TARGET = "non-numeric target"
    NON_FINITE_TARGET = "non-finite target"
    PARTIAL_OCCUPANCY = "partial occupancy"
    OVERLAPPING_ATOMS = "overlapping atoms"
    ISOLATED_ATOM = "atom without neighbours"
    UNKNOWN_ELEMENT = "element outside vocabulary"
    NOT_AN_ELEMENT = "unknown element"
    EMPTY_STRUCTURE = "empty structure"
    NO_CELL = "no cell"
    DUPLICATE_ID = "duplicate id"
    PATH_OUTSIDE = "path outside the dataset folder"
    UNREADABLE_FILE = "unreadable file"
    NON_POSITIVE_TARGET = "non-positive target for log10"
    NON_FINITE_COORDINATES = "non-finite coordinates"
    MANY_STRUCTURES = "several structures in one entry"


class InputError(ValueError):
    """A bad input item, raised in strict mode (or when nothing could be read)."""

    def __init__(self, problem: Problem | str):
        self.problem = problem if isinstance(problem, Problem) else None
        # strict mode stops the read: the message must not claim the item was skipped
        super().__init__(problem.describe("aborted") if isinstance(problem, Problem) else problem)


@dataclass(frozen=True)
class Problem:
    """One skipped item: where it came from, its id if known, why, and the details."""

    where: str
    reason: Reason
    detail: str = ""
    id: str | None = None

    def describe(self, outcome: str) -> str:
        """``where [id]: <outcome>, <reason>: <detail>`` (outcome: skipped or aborted)."""
        # an id can be a whole (too long) file name: show enough to find the row
        shown = self.id if self.id is None or len(self.id) <= 80 else self.id[:79] + "…"
        who = f" [{shown}]" if shown is not None else ""
        detail = f": {self.detail}" if self.detail else ""
        return f"{self.where}{who}: {outcome}, {self.reason.value}{detail}"

    def __str__(self) -> str:
        return self.describe("skipped")


@dataclass
class ProblemLog:
    """Collects skipped items; raises on the first one when ``strict``."""

    strict: bool = False
    problems: list[Problem] = field(default_factory=list)
    n_ok: int = 0
    #: warnings logged one by one per reason; the rest of that reason is counted in the
    #: summary (every problem stays in ``problems``)
    max_logged: int = 1
    _logged: Counter = field(default_factory=Counter, init=False, repr=False, compare=False)

    def skip(self, problem: Problem) -> None:
        if self.strict:
            raise InputError(problem)
        seen = self._logged[problem.reason]
        self._logged[problem.reason] += 1
        if seen < self.max_logged:
            logger.warning(str(problem))
        elif seen == self.max_logged:
            logger.warning(
                "further '%s' items are counted, not logged: see the summary",
                problem.reason.value,
            )
        self.problems.append(problem)

    def write_csv(self, path: str | Path) -> None:
        """Every skipped item as ``where,id,reason,detail`` rows."""
        with Path(path).open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["where", "id", "reason", "detail"])
            for p in self.problems:
                writer.writerow([p.where, p.id or "", p.reason.value, p.detail])

    def extend(self, other: ProblemLog) -> None:
        for problem in other.problems:
            self.skip(problem)

    @property
    def n_skipped(self) -> int:
        return len(self.problems)

    def by_reason(self) -> Counter[Reason]:
        return Counter(p.reason for p in self.problems)

    def summary(self) -> str:
        """One line, e.g. ``read 98, skipped 2 (partial occupancy: 1, unparsable structure: 1)``."""
        text = f"read {self.n_ok}, skipped {self.n_skipped}"
        if self.problems:
            parts = ", ".join(f"{r.value}: {n}" for r, n in self.by_reason().most_common())
            text += f" ({parts})"
        return text


@dataclass
class Record:
    """One material: an id, its structure and its named targets (units as in the source).

    ``structure`` is a pymatgen :class:`Structure` (periodic) or :class:`Molecule`
    (no cell); ASE ``Atoms`` are converted at the door.
    """

    id: str
    structure: Structure | Molecule
    targets: dict[str, Target] = field(default_factory=dict)
    where: str = ""
    meta: dict[str, str] = field(default_factory=dict)

    @property
    def periodic(self) -> bool:
        return isinstance(self.structure, Structure)

    @property
    def formula(self) -> str:
        return self.structure.composition.reduced_formula


@dataclass
class ReadResult:
    """Records read from one source, with the log of what was skipped."""

    records: list[Record]
    log: ProblemLog
    source: str = ""

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self):
        return iter(self.records)

    def __getitem__(self, index: int) -> Record:
        return self.records[index]

    @property
    def target_names(self) -> list[str]:
        names: dict[str, None] = {}
        for record in self.records:
            names.update(dict.fromkeys(record.targets))
        return list(names)
