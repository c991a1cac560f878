"""Phase-diagram screening with uncertain predictions (Ekström, Lindsten & Armiento §III):
spend the expensive calculations only on candidates that may lie on the convex hull.

At each relaxation level (e.g. ``preprerelax``, ``prerelax``), every surviving candidate
is brought to that level (its cost is paid), an ensemble trained on structures of that
level predicts its *final* formation energy ŷ ± σ (eV/atom), and the convex hull is
built with pymatgen's ``PhaseDiagram`` from the known DFT phases plus these predictions.
A candidate with E_hull > k·σ (k = 2 by default) is dropped; the others go on. The
survivors of the last level get the expensive calculation (the *oracle*: a table of the
user's DFT results, or a real cheap calculator such as a CHGNet relaxation), and the
final hull is built from the known phases plus their computed energies.

Given the oracle's values for every candidate (a table), :func:`screen` also compares the
hull found with the all-oracle hull: which stable phases were recovered, which missed
and by how much, and what the screening cost against computing everything.

Example:
    >>> result = screen(ids, formulas, [Level("final", predictor)], TableOracle(table),
    ...                 known=[("HfN", -1.2)], reference=True)
    >>> result.summary()["oracle_calls_saved"]
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, model_validator

from tlmat.data.dataset import GraphDataset, Reading

if TYPE_CHECKING:
    from pymatgen.core import Structure

    from tlmat.uncertainty import Ensemble

#: DFT cost of bringing one candidate to each relaxation level, in core-hours: Ekström et
#: al. §II (VASP, PBE, 600 eV; ≈5, 60 and 540 core-minutes per phase)
EKSTROM_COSTS_CORE_HOURS: dict[str, float] = {
    "preprerelax": 5 / 60,
    "prerelax": 60 / 60,
    "final": 540 / 60,
}
#: a complete relaxation (every level) when nothing else is said, core-hours per phase
FULL_RELAXATION_CORE_HOURS = sum(EKSTROM_COSTS_CORE_HOURS.values())
#: the CHGNet version the screening calculator relaxes with when none is named
CHGNET_VERSION = "0.3.0"
#: |E_hull| below this counts as on the hull (eV/atom)
ON_HULL_TOL = 1e-6

#: ids of the candidates to predict → (mean, σ) of the final formation energy, eV/atom
Predictor = Callable[[Sequence[str]], tuple[np.ndarray, np.ndarray]]


@dataclass
class Level:
    """One screening level: its name, what predicts there, and the cost (core-hours per
    candidate) of bringing a candidate to this level before predicting."""

    name: str
    predictor: Predictor
    cost_core_hours: float = 0.0


class Oracle(Protocol):
    """The expensive step: final formation energies (eV/atom; NaN where it failed)."""

    name: str
    cost_core_hours: float  # per candidate

    def __call__(self, ids: Sequence[str]) -> np.ndarray: ...


@dataclass
class TableOracle:
    """The user's DFT results: formation energy per atom (eV/atom) by candidate id."""

    energies: Mapping[str, float]
    cost_core_hours: float = EKSTROM_COSTS_CORE_HOURS["final"]
    name: str = "DFT table"

    def __call__(self, ids: Sequence[str]) -> np.ndarray:
        missing = [i for i in ids if i not in self.energies]
        if missing:
            shown = ", ".join(missing[:10]) + (", …" if len(missing) > 10 else "")
            raise ValueError(f"{self.name}: no formation energy for {len(missing)} id(s): {shown}")
        return np.array([float(self.energies[i]) for i in ids], dtype=np.float64)

    def can_answer_all(self, ids: Iterable[str]) -> bool:
        return all(i in self.energies for i in ids)


def load_chgnet(version: str = CHGNET_VERSION):
    """A CHGNet universal potential from the weights packaged in the ``chgnet`` wheel
    (:data:`tlmat.models.chgnet.WEIGHTS`), checksummed and read with
    ``torch.load(weights_only=True)`` (tensors and plain containers only: nothing is
    unpickled) instead of the package's own loader, which unpickles."""
    try:
        from chgnet.model import CHGNet
    except ImportError as error:
        raise ImportError(
            "the CHGNet oracle needs the chgnet package: pip install 'tlmat[foundation]'"
        ) from error

    from tlmat.models.chgnet import read_weights

    state = read_weights(version)
    # mlp_out_bias as chgnet's own loader sets it (only 0.2.0 was trained with it)
    return CHGNet.from_dict(state["model"], mlp_out_bias=version == "0.2.0", version=version)


@dataclass
class CHGNetOracle:
    """A real cheap calculator for demonstrations: relax each candidate with CHGNet
    (FIRE until the largest force is below ``fmax`` eV/Å, at most ``steps``), take its
    energy per atom, and subtract the lowest relaxed energy per atom of each element
    among the ``references`` (elemental structures) — a formation energy per atom in
    eV/atom on CHGNet's (MP-compatible) scale. ``cost_core_hours`` is the measured mean
    per relaxation (wall time × threads)."""

    structures: Mapping[str, Structure]
    references: Sequence[Structure]
    version: str = CHGNET_VERSION
    fmax: float = 0.1
    steps: int = 500
    name: str = ""
    cost_core_hours: float = 0.0
    relaxed: dict[str, Structure] = field(default_factory=dict)
    log: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.name = self.name or f"CHGNet {self.version} relaxation"
        self._optimizer = None
        self._mu: dict[str, float] | None = None

    def relax(self, structure: Structure, steps: int | None = None) -> tuple[Structure, float, int]:
        """The relaxed structure, its energy per atom (eV/atom) and the steps taken."""
        import contextlib
        import io

        if self._optimizer is None:
            from chgnet.model import StructOptimizer

            self._optimizer = StructOptimizer(model=load_chgnet(self.version), use_device="cpu")
        with contextlib.redirect_stdout(io.StringIO()):  # chgnet prints per step
            result = self._optimizer.relax(
                structure, fmax=self.fmax, steps=steps or self.steps, verbose=False
            )
        energies = result["trajectory"].energies
        return result["final_structure"], float(energies[-1]) / len(structure), len(energies)

    def formation_energy(self, composition, energy_per_atom: float) -> float:
        """Formation energy per atom (eV/atom) of a composition whose relaxed energy per
        atom is ``energy_per_atom``, against the references' chemical potentials."""
        mu = self.chemical_potentials()
        fractions = composition.fractional_composition
        return energy_per_atom - sum(fractions[el] * mu[el.symbol] for el in fractions)

    def chemical_potentials(self) -> dict[str, float]:
        """Lowest relaxed energy per atom of each element among the references (eV/atom)."""
        if self._mu is None:
            mu: dict[str, float] = {}
            for reference in self.references:
                if len(reference.composition.elements) != 1:
                    raise ValueError(
                        f"CHGNet oracle: reference {reference.formula} is not an element"
                    )
                symbol = reference.composition.elements[0].symbol
                _, energy, _ = self.relax(reference)
                mu[symbol] = min(energy, mu.get(symbol, np.inf))
            self._mu = mu
        return self._mu

    def __call__(self, ids: Sequence[str]) -> np.ndarray:
        import torch

        mu = self.chemical_potentials()
        out = np.full(len(ids), np.nan)
        spent = 0.0
        for n, i in enumerate(ids):
            structure = self.structures[i]
            lacking = [e.symbol for e in structure.composition.elements if e.symbol not in mu]
            if lacking:
                raise ValueError(f"CHGNet oracle: no elemental reference for {', '.join(lacking)}")
            tic = time.perf_counter()
            try:
                relaxed, energy, steps = self.relax(structure)
            except Exception as error:  # one failed relaxation must not lose the others
                self.log[i] = {"error": f"{type(error).__name__}: {error}"}
                continue
            seconds = time.perf_counter() - tic
            spent += seconds
            out[n] = self.formation_energy(structure.composition, energy)
            self.relaxed[i] = relaxed
            self.log[i] = {"steps": steps, "converged": steps < self.steps, "seconds": seconds}
        if len(ids):
            self.cost_core_hours = spent * torch.get_num_threads() / 3600 / len(ids)
        return out


def _read_table(path: Path, columns: Sequence[str], what: str) -> pd.DataFrame:
    """A CSV or JSON table that must have ``columns``; a missing one is an error naming
    the file and the columns it has."""
    frame = pd.read_json(path) if path.suffix == ".json" else pd.read_csv(path)
    for column in columns:
        if column not in frame.columns:
            raise ValueError(
                f"{path}: {what} has no column {column!r} (columns: "
                f"{', '.join(map(str, frame.columns))})"
            )
    return frame


def read_energy_table(
    path: str | Path, energy_column: str, key_column: str, what: str
) -> dict[str, float]:
    """``key → formation energy per atom (eV/atom)`` from a CSV or JSON table; a row
    without a finite energy is an error naming the row."""
    path = Path(path)
    frame = _read_table(path, (key_column, energy_column), f"{what} table")
    values = pd.to_numeric(frame[energy_column], errors="coerce")
    bad = np.flatnonzero(~np.isfinite(values.to_numpy(dtype=np.float64)))
    if len(bad):
        row = int(bad[0])
        raise ValueError(
            f"{path}: row {row + 2} ({frame[key_column].iloc[row]}): {energy_column!r} is "
            f"not a number ({frame[energy_column].iloc[row]!r})"
        )
    keys = frame[key_column].astype(str)
    repeated = keys[keys.duplicated()].unique()
    if what == "oracle" and len(repeated):
        raise ValueError(f"{path}: id(s) repeated in the oracle table: {', '.join(repeated[:5])}")
    return dict(zip(keys, values.astype(float), strict=True))


def read_known_phases(
    path: str | Path, energy_column: str, formula_column: str = "formula"
) -> list[tuple[str, float]]:
    """Known phases ``(formula, formation energy per atom in eV/atom)`` from a table."""
    frame = _read_table(Path(path), (formula_column, energy_column), "known-phases table")
    return [
        (str(f), float(e)) for f, e in zip(frame[formula_column], frame[energy_column], strict=True)
    ]


def _entries(phases: Iterable[tuple[str, float]]) -> list:
    """pymatgen ``PDEntry`` s of ``(formula, formation energy per atom in eV/atom)``."""
    from pymatgen.analysis.phase_diagram import PDEntry
    from pymatgen.core import Composition

    out = []
    for formula, energy in phases:
        composition = Composition(formula)
        out.append(PDEntry(composition, float(energy) * composition.num_atoms))
    return out


def _phase_diagram(entries: list, also_elements_of: Sequence = ()):
    """The ``PhaseDiagram`` of formation-energy entries, each element (of the entries and
    of ``also_elements_of``) added at 0 eV/atom: the references formation energies use."""
    from pymatgen.analysis.phase_diagram import PDEntry, PhaseDiagram
    from pymatgen.core import Composition

    elements = {el for e in [*entries, *also_elements_of] for el in e.composition.elements}
    references = [PDEntry(Composition(el.symbol), 0.0) for el in sorted(elements)]
    return PhaseDiagram(references + entries)


def hull_energies(
    formulas: Sequence[str],
    energies: np.ndarray,
    known: Sequence[tuple[str, float]] = (),
) -> np.ndarray:
    """Energy above the convex hull (eV/atom, ≥ 0) of each candidate, the hull built from
    the known phases plus the candidates themselves (formation energies per atom; each
    element's reference is 0 eV/atom unless a known phase is lower)."""
    candidates = _entries(zip(formulas, energies, strict=True))
    diagram = _phase_diagram(_entries(known) + candidates)
    return np.array([diagram.get_e_above_hull(c) for c in candidates], dtype=np.float64)


def below_hull(
    formulas: Sequence[str], energies: np.ndarray, hull: Sequence[tuple[str, float]]
) -> np.ndarray:
    """Energy (eV/atom) of each phase relative to the hull of ``hull`` alone: negative
    where the phase lies below it (the hull missed it by that much)."""
    probes = _entries(zip(formulas, energies, strict=True))
    diagram = _phase_diagram(_entries(hull), also_elements_of=probes)
    return np.array(
        [diagram.get_decomp_and_e_above_hull(p, allow_negative=True)[1] for p in probes]
    )


@dataclass
class LevelResult:
    """What happened at one level: the candidates considered, their predicted final
    formation energy and σ, E_hull (eV/atom) and which were kept."""

    name: str
    ids: list[str]
    mean: np.ndarray
    sigma: np.ndarray
    e_hull: np.ndarray
    kept: np.ndarray
    cost_per_candidate: float  # core-hours to bring one candidate to this level
    seconds: float = 0.0  # of prediction and hull

    @property
    def cost_core_hours(self) -> float:
        """Spent bringing these candidates to this level."""
        return len(self.ids) * self.cost_per_candidate


@dataclass
class Screening:
    """The outcome of :func:`screen`: per level, the oracle's results and, when the oracle
    could answer for every candidate, the comparison with the all-oracle hull."""

    ids: list[str]
    formulas: list[str]
    known: list[tuple[str, float]]
    k: float
    levels: list[LevelResult]
    oracle_name: str
    oracle_cost_core_hours: float  # per candidate
    computed_ids: list[str]
    computed_energies: np.ndarray  # eV/atom, NaN where the oracle failed
    #: E_hull (eV/atom) of each computed candidate on the hull found (known + computed)
    computed_e_hull: dict[str, float]
    reference_energies: np.ndarray | None = None  # the oracle's value for every candidate
    reference_e_hull: np.ndarray | None = None  # E_hull of every candidate, all-oracle hull
    seconds: float = 0.0
    #: whether two candidates are one phase (e.g. their relaxed structures match): a
    #: stable candidate is not lost when a twin of it is on the hull found
    same_phase: Callable[[str, str], bool] | None = None

    @cached_property
    def _index(self) -> dict[str, int]:
        return {i: n for n, i in enumerate(self.ids)}

    @property
    def found_stable(self) -> list[str]:
        """Candidates on the hull found."""
        return [i for i, h in self.computed_e_hull.items() if h <= ON_HULL_TOL]

    @property
    def reference_stable(self) -> list[str]:
        """Candidates on the all-oracle hull (empty when it is not known)."""
        if self.reference_e_hull is None:
            return []
        return [i for i, h in zip(self.ids, self.reference_e_hull, strict=True) if h <= ON_HULL_TOL]

    def found_hull(self) -> list[tuple[str, float]]:
        """The phases of the hull found: known ones and the oracle's results."""
        return self.known + [
            (self.formulas[self._index[i]], e)
            for i, e in zip(self.computed_ids, self.computed_energies, strict=True)
            if np.isfinite(e)
        ]

    def recovery(self) -> tuple[float, float]:
        """Precision and recall of hull membership against the all-oracle hull (NaN
        where a set is empty)."""
        found, ref = set(self.found_stable), set(self.reference_stable)
        hit = len(found & ref)
        return (
            hit / len(found) if found else float("nan"),
            hit / len(ref) if ref else float("nan"),
        )

    # costs --------------------------------------------------------------------------
    @property
    def cost_core_hours(self) -> float:
        """Spent: every level's relaxations plus the oracle on the survivors."""
        levels = sum(level.cost_core_hours for level in self.levels)
        return levels + len(self.computed_ids) * self.oracle_cost_core_hours

    @property
    def all_oracle_cost_core_hours(self) -> float:
        """Computing every candidate: each goes through every level, then the oracle."""
        per_candidate = self.oracle_cost_core_hours + sum(
            level.cost_per_candidate for level in self.levels
        )
        return len(self.ids) * per_candidate

    # the comparison with the all-oracle hull ----------------------------------------
    def found_as(self) -> dict[str, str]:
        """Stable candidates of the all-oracle hull that were dropped but whose phase was
        found all the same: each one's twin on the hull found (by ``same_phase``)."""
        if self.same_phase is None:
            return {}
        found = self.found_stable
        out = {}
        for i in set(self.reference_stable) - set(found):  # only dropped ones need a match
            twin = next((j for j in found if self.same_phase(i, j)), None)
            if twin is not None:
                out[i] = twin
        return dict(sorted(out.items()))

    def missed(self) -> list[dict[str, Any]]:
        """Stable phases of the all-oracle hull that the screening lost (none of their
        candidates is on the hull found): where they were dropped, their prediction and σ
        there, and how far below the found hull they lie (eV/atom)."""
        if self.reference_energies is None:
            return []
        found, twins = set(self.found_stable), self.found_as()
        lost = [i for i in self.reference_stable if i not in found and i not in twins]
        if not lost:
            return []
        index = self._index
        depth = below_hull(
            [self.formulas[index[i]] for i in lost],
            np.array([self.reference_energies[index[i]] for i in lost]),
            self.found_hull(),
        )
        rows = []
        for i, below in zip(lost, depth, strict=True):
            row: dict[str, Any] = {"id": i, "formula": self.formulas[index[i]]}
            for level in self.levels:
                if i in level.ids:
                    n = level.ids.index(i)
                    if not level.kept[n]:
                        row.update(
                            dropped_at=level.name,
                            predicted=float(level.mean[n]),
                            sigma=float(level.sigma[n]),
                            predicted_e_hull=float(level.e_hull[n]),
                        )
            row["true"] = float(self.reference_energies[index[i]])
            row["below_found_hull"] = float(below)
            rows.append(row)
        return rows

    def summary(self) -> dict[str, Any]:
        """Counts, costs (core-hours), savings and hull recovery as plain numbers."""
        out: dict[str, Any] = {
            "candidates": len(self.ids),
            "known_phases": len(self.known),
            "k": self.k,
            "levels": [
                {
                    "name": level.name,
                    "in": len(level.ids),
                    "kept": int(level.kept.sum()),
                    "cost_core_hours": level.cost_core_hours,
                    "seconds": level.seconds,
                }
                for level in self.levels
            ],
            "oracle": self.oracle_name,
            "oracle_calls": len(self.computed_ids),
            "oracle_cost_core_hours": len(self.computed_ids) * self.oracle_cost_core_hours,
            "oracle_failed": int((~np.isfinite(self.computed_energies)).sum()),
            "oracle_calls_saved": 1 - len(self.computed_ids) / max(len(self.ids), 1),
            "cost_core_hours": self.cost_core_hours,
            "all_oracle_cost_core_hours": self.all_oracle_cost_core_hours,
            "cost_saved": 1 - self.cost_core_hours / self.all_oracle_cost_core_hours
            if self.all_oracle_cost_core_hours > 0
            else 0.0,
            "found_stable": sorted(self.found_stable),
            "seconds": self.seconds,
        }
        if self.reference_energies is not None:
            precision, recall = self.recovery()
            out.update(
                reference_stable=sorted(self.reference_stable),
                same_stable_set=set(self.found_stable) == set(self.reference_stable),
                precision=precision,
                recall=recall,
                missed=self.missed(),
                found_as=self.found_as(),
                calibration=self.calibration(),
            )
        return out

    def calibration(self) -> list[dict[str, Any]]:
        """Per level, how the predictions compare with the oracle's values (MAE in
        eV/atom, coverage of ±1σ/±2σ, …) on the candidates predicted there."""
        from tlmat.uncertainty import calibration

        if self.reference_energies is None:
            return []
        rows = []
        for level in self.levels:
            y = np.array([self.reference_energies[self._index[i]] for i in level.ids])
            if len(y) < 2:
                continue
            scores = calibration(y, level.mean, level.sigma)
            scores["mae"] = float(np.mean(np.abs(y - level.mean)))
            rows.append({"level": level.name, **scores})
        return rows

    def table(self) -> pd.DataFrame:
        """One row per candidate: per level the prediction, σ, E_hull (eV/atom) and the
        decision (kept / dropped; empty where it was dropped before), then the oracle's
        value, the E_hull computed from it and whether it is on the found hull."""
        frame = pd.DataFrame({"id": self.ids, "formula": self.formulas})
        unit = " (eV/atom)"
        for level in self.levels:
            at = {i: n for n, i in enumerate(level.ids)}
            rows = [at.get(i) for i in self.ids]

            def column(values, rows=rows):
                return [values[r] if r is not None else np.nan for r in rows]

            frame[f"{level.name} E_f{unit}"] = column(level.mean)
            frame[f"{level.name} sigma{unit}"] = column(level.sigma)
            frame[f"{level.name} E_hull{unit}"] = column(level.e_hull)
            frame[f"{level.name} decision"] = [
                ("kept" if level.kept[r] else "dropped") if r is not None else "" for r in rows
            ]
        computed = dict(zip(self.computed_ids, self.computed_energies, strict=True))
        frame[f"oracle E_f{unit}"] = [computed.get(i, np.nan) for i in self.ids]
        final = self.computed_e_hull
        frame[f"computed E_hull{unit}"] = [final.get(i, np.nan) for i in self.ids]
        frame["on found hull"] = [i in set(self.found_stable) for i in self.ids]
        if self.reference_energies is not None:
            frame[f"reference E_f{unit}"] = self.reference_energies
            frame["on all-oracle hull"] = [i in set(self.reference_stable) for i in self.ids]
        return frame

    def write(self, folder: str | Path, summary: dict[str, Any] | None = None) -> dict[str, Path]:
        """``screening.csv``, ``summary.json`` (``summary``, if already made) and
        ``screening.png`` in ``folder``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        paths = {
            "table": folder / "screening.csv",
            "summary": folder / "summary.json",
            "figure": folder / "screening.png",
        }
        self.table().to_csv(paths["table"], index=False)
        paths["summary"].write_text(json.dumps(_plain(summary or self.summary()), indent=2))
        plot_screening(self, paths["figure"])
        return paths


def _plain(value: Any) -> Any:
    """JSON-ready: NaN → null, numpy scalars → Python numbers."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def screen(
    ids: Sequence[str],
    formulas: Sequence[str],
    levels: Sequence[Level],
    oracle: Oracle,
    known: Sequence[tuple[str, float]] = (),
    k: float = 2.0,
    reference: bool = False,
    same_phase: Callable[[str, str], bool] | None = None,
) -> Screening:
    """Screen candidates (``ids`` with their ``formulas``) level by level, dropping those
    with E_hull > k·σ, then run the ``oracle`` on the survivors and build the final
    hull with the ``known`` phases ``(formula, eV/atom)``. With ``reference``, the
    oracle is also asked for every candidate (only sensible for a table) to compare the
    hull found with the all-oracle hull; ``same_phase(a, b)`` tells whether two candidates
    are one phase (e.g. they relax to the same crystal), so that a dropped candidate whose
    twin was found is not counted as a lost phase."""
    if k < 0:
        raise ValueError(f"k must be ≥ 0 (E_hull > k·σ drops a candidate), not {k}")
    if len(set(ids)) != len(ids):
        raise ValueError("candidate ids must be unique")
    start = time.perf_counter()
    ids, formulas, known = list(ids), list(formulas), list(known)
    index = {i: n for n, i in enumerate(ids)}
    alive = list(ids)
    results: list[LevelResult] = []
    for level in levels:
        tic = time.perf_counter()
        mean, sigma = (np.asarray(a, dtype=np.float64) for a in level.predictor(alive))
        if mean.shape != (len(alive),) or sigma.shape != (len(alive),):
            raise ValueError(f"level {level.name!r}: the predictor returned the wrong shape")
        if not (np.isfinite(mean).all() and np.isfinite(sigma).all()):
            raise ValueError(f"level {level.name!r}: predictions or σ are not finite")
        level_formulas = [formulas[index[i]] for i in alive]
        e_hull = hull_energies(level_formulas, mean, known) if alive else np.zeros(0)
        kept = e_hull <= k * sigma
        results.append(
            LevelResult(
                level.name,
                alive,
                mean,
                sigma,
                e_hull,
                kept,
                level.cost_core_hours,
                time.perf_counter() - tic,
            )
        )
        alive = [i for i, keep in zip(alive, kept, strict=True) if keep]
    computed = np.asarray(oracle(alive) if alive else np.zeros(0), dtype=np.float64)
    done = [(i, e) for i, e in zip(alive, computed, strict=True) if np.isfinite(e)]
    computed_e_hull = {}
    if done:
        e_hull = hull_energies(
            [formulas[index[i]] for i, _ in done], np.array([e for _, e in done]), known
        )
        computed_e_hull = {i: float(h) for (i, _), h in zip(done, e_hull, strict=True)}
    screening = Screening(
        ids,
        formulas,
        known,
        k,
        results,
        oracle.name,
        oracle.cost_core_hours,
        alive,
        computed,
        computed_e_hull,
        same_phase=same_phase,
    )
    if reference:
        screening.reference_energies = oracle(ids)
        screening.reference_e_hull = hull_energies(formulas, screening.reference_energies, known)
    screening.seconds = time.perf_counter() - start
    return screening


def ensemble_predictor(ensemble: Ensemble, dataset: GraphDataset) -> Predictor:
    """The predictor of an ensemble on the candidates' structures of one level: the
    ensemble must predict a formation energy per atom (eV/atom)."""
    unit = ensemble.target.unit
    if unit and unit.replace(" ", "") not in ("eV/atom", "eV/at"):
        raise ValueError(
            f"screening needs formation energies per atom (eV/atom); this ensemble "
            f"predicts {ensemble.target.name} in {unit}"
        )
    where = {i: n for n, i in enumerate(dataset.ids)}

    def predict(ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        missing = [i for i in ids if i not in where]
        if missing:
            raise ValueError(
                f"{dataset.source}: no structure for {len(missing)} candidate(s) at this "
                f"level: {', '.join(missing[:10])}"
            )
        arrays = ensemble.predict(dataset, [where[i] for i in ids])
        return arrays["mean"], arrays["sigma"]

    return predict


def members_predictor(
    ids: Sequence[str], values: np.ndarray, val_mse: Sequence[float]
) -> Predictor:
    """The predictor of an ensemble given by its members' predictions of every candidate
    (``values``: members × ``ids``, eV/atom) and their validation MSE ((eV/atom)²), with
    Ekström et al.'s σ = √(σ_a² + σ_e²): σ_a² the mean validation MSE, σ_e² the members'
    variance — for ensembles that are not tlmat models (e.g. MLPs on pooled features)."""
    row = {i: n for n, i in enumerate(ids)}
    values = np.asarray(values, dtype=float)
    sigma_a2 = float(np.mean(val_mse))

    def predict(wanted: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        stack = values[:, [row[i] for i in wanted]]
        return stack.mean(0), np.sqrt(sigma_a2 + stack.var(0))

    return predict


def mixture_predictor(*predictors: Predictor) -> Predictor:
    """Several ensembles' predictors as one equal mixture (a deep ensemble of ensembles):
    the mean of their means; σ² the mean of their σ² plus the variance of their means."""

    def predict(wanted: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        pairs = [predictor(wanted) for predictor in predictors]
        means = np.stack([np.asarray(mean, dtype=float) for mean, _ in pairs])
        sigmas = np.stack([np.asarray(sigma, dtype=float) for _, sigma in pairs])
        return means.mean(0), np.sqrt((sigmas**2).mean(0) + means.var(0))

    return predict


def decorate(
    prototypes: Iterable[Structure],
    elements: Sequence[str],
    scale_volume: bool = True,
) -> list[Structure]:
    """Candidate structures of a chemical system by prototype decoration: every prototype
    with as many species as ``elements`` gets each one-to-one assignment of ``elements``
    to its species (pymatgen's ``SubstitutionTransformation``); with ``scale_volume`` the
    cell is rescaled to the sum of the new atoms' volumes as the prototype's volume was to
    its own (atomic radii cubed); symmetry-equivalent results are kept once
    (``StructureMatcher``)."""
    from itertools import permutations

    from pymatgen.core import Element

    targets = [Element(e) for e in elements]
    out: list[Structure] = []
    for prototype in prototypes:
        species = sorted({site.specie.symbol for site in prototype})
        if len(species) != len(targets):
            continue
        for assignment in permutations(targets):
            mapping = {s: t.symbol for s, t in zip(species, assignment, strict=True)}
            out.append(_substituted(prototype, mapping, scale_volume))
    return _unique(out)


def substitute(prototypes: Iterable[Structure], mapping: Mapping[str, str]) -> list[Structure]:
    """Candidates by one chemically chosen substitution (e.g. ``{"Ti": "Hf", "Zr": "Hf"}``)
    of every prototype that holds one of the replaced elements, the cell rescaled by the
    atomic radii cubed as in :func:`decorate`; symmetry-equivalent results kept once."""
    out = []
    for prototype in prototypes:
        present = {s.specie.symbol for s in prototype}
        used = {a: b for a, b in mapping.items() if a in present}
        if used:
            out.append(_substituted(prototype, used))
    return _unique(out)


def _substituted(prototype: Structure, mapping: Mapping[str, str], scale_volume: bool = True):
    """``prototype`` with its elements replaced (pymatgen's ``SubstitutionTransformation``),
    the cell rescaled by the ratio of the atoms' volumes (atomic radii cubed)."""
    from pymatgen.transformations.standard_transformations import SubstitutionTransformation

    candidate = SubstitutionTransformation(dict(mapping)).apply_transformation(prototype)
    if not scale_volume:
        return candidate
    ratio = _atomic_volume(candidate) / _atomic_volume(prototype)
    return candidate.scale_lattice(prototype.volume * ratio)


def _atomic_volume(structure: Structure) -> float:
    return sum((site.specie.atomic_radius or 1.5) ** 3 for site in structure)


def _unique(structures: list[Structure]) -> list[Structure]:
    """One structure of each symmetry-equivalent group, in first-seen order."""
    from pymatgen.analysis.structure_matcher import StructureMatcher

    if not structures:
        return []
    groups = StructureMatcher().group_structures(structures)
    first = {id(group[0]) for group in groups}
    return [s for s in structures if id(s) in first]


def _plot_hull(screening: Screening, ax) -> None:
    """Predicted formation energies ± k·σ against the found hull at each composition."""
    if not screening.levels or not screening.levels[0].ids:
        ax.set_axis_off()
        return
    level = screening.levels[0]
    formulas = [screening.formulas[screening._index[i]] for i in level.ids]
    # E − (E − hull(x)) = hull(x): the hull's formation energy at each composition
    at_hull = level.mean - below_hull(formulas, level.mean, screening.found_hull())
    for kept, colour, label in ((True, "tab:green", "kept"), (False, "tab:red", "dropped")):
        sel = level.kept == kept
        if sel.any():
            ax.errorbar(at_hull[sel], level.mean[sel], yerr=screening.k * level.sigma[sel],
                        fmt="o", ms=3, color=colour, elinewidth=0.8,
                        label=f"{level.name} prediction, {label}")  # fmt: skip
    computed = dict(zip(screening.computed_ids, screening.computed_energies, strict=True))
    done = [(at_hull[n], computed[i]) for n, i in enumerate(level.ids) if i in computed]
    if done:
        ax.plot(*zip(*done, strict=True), "kx", ms=4, label="oracle")
    low, high = float(np.min(at_hull)), float(np.max(at_hull))
    pad = 0.05 * (high - low or 1.0)
    ax.plot(
        [low - pad, high + pad], [low - pad, high + pad], color="grey", lw=1, label="hull found"
    )
    ax.set_xlabel("hull's formation energy at the composition (eV/atom)")
    ax.set_ylabel(f"formation energy ± {screening.k:g}σ (eV/atom)")
    ax.set_title("hull with σ bars", fontsize=10)
    ax.legend(fontsize=7)


def _plot_level(screening: Screening, level: LevelResult, ax) -> None:
    """E_hull ± k·σ of each candidate at one level (sorted), the oracle's where computed."""
    final = screening.computed_e_hull
    order = np.argsort(level.e_hull)
    x = np.arange(len(order))
    for kept, colour, label in ((True, "tab:green", "kept"), (False, "tab:red", "dropped")):
        sel = order[level.kept[order] == kept]
        if len(sel):
            ax.errorbar(x[np.isin(order, sel)], level.e_hull[sel],
                        yerr=screening.k * level.sigma[sel], fmt="o", ms=3, color=colour,
                        elinewidth=0.8, label=f"{label} ({len(sel)})")  # fmt: skip
    done = [(n, final[level.ids[j]]) for n, j in enumerate(order) if level.ids[j] in final]
    if done:
        ax.plot(*zip(*done, strict=True), "kx", ms=4, label="oracle's final E_hull")
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xlabel("candidate (sorted by predicted E_hull)")
    ax.set_ylabel(f"E_hull ± {screening.k:g}σ (eV/atom)")
    ax.set_title(f"{level.name}: {int(level.kept.sum())} of {len(level.ids)} kept")
    ax.legend(fontsize=8)


def _plot_reference(screening: Screening, ax) -> None:
    """The first level's predicted E_hull ± σ against the all-oracle E_hull."""
    e_ref = screening.reference_e_hull
    first = screening.levels[0] if screening.levels else None
    if first is not None:
        at = {i: n for n, i in enumerate(first.ids)}
        rows = [at[i] for i in screening.ids]
        label = f"{first.name} prediction ± σ"
        ax.errorbar(e_ref, first.e_hull[rows], yerr=first.sigma[rows], fmt="o", ms=3,
                    elinewidth=0.6, color="tab:blue", label=label)  # fmt: skip
    lim = max(float(np.max(e_ref)) if len(e_ref) else 0.1, 0.1)
    ax.plot([0, lim], [0, lim], color="grey", lw=0.8)
    precision, recall = screening.recovery()
    ax.set_xlabel("all-oracle E_hull (eV/atom)")
    ax.set_ylabel("predicted E_hull (eV/atom)")
    ax.set_title(f"stable set: precision {precision:.2f}, recall {recall:.2f}")
    ax.legend(fontsize=8)


def plot_screening(screening: Screening, path: str | Path) -> Path:
    """The hull with σ bars, then one panel per level and the comparison with the
    all-oracle hull when that is known.

    The hull panel works for any number of elements: each candidate's formation energy
    (first level's prediction ± k·σ, kept green, dropped red; the oracle's value as a
    cross) against the formation energy of the hull found at its composition (known
    phases plus the oracle's results), so the hull is the diagonal and a point below it
    would be stable. The level panels show E_hull ± k·σ per candidate (sorted), with the
    oracle's E_hull where it was computed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 1 + len(screening.levels) + (screening.reference_energies is not None)
    fig, axes = plt.subplots(1, panels, figsize=(5.2 * panels, 4.2), squeeze=False)
    _plot_hull(screening, axes[0][0])
    for ax, level in zip(axes[0][1:], screening.levels, strict=False):
        _plot_level(screening, level, ax)
    if screening.reference_energies is not None:
        _plot_reference(screening, axes[0][-1])
    fig.suptitle(
        f"{len(screening.ids)} candidates, {len(screening.computed_ids)} sent to "
        f"{screening.oracle_name}; cost {screening.cost_core_hours:.0f} of "
        f"{screening.all_oracle_cost_core_hours:.0f} core-hours",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


# --- a screening from its configuration (what `tlmat screen` runs) ------------------------


class LevelConfig(BaseModel):
    """One relaxation level: the candidates' structures at that level, the ensemble that
    predicts final formation energies from them, and the DFT cost of getting there."""

    model_config = ConfigDict(extra="forbid")
    name: str
    ensemble: str
    structures: list[str]
    cost_core_hours: float = Field(0.0, ge=0)


class OracleConfig(BaseModel):
    """The expensive step: a ``table`` of the user's DFT formation energies (eV/atom),
    or a real cheap calculator for demonstrations: ``chgnet`` (its version) relaxing the
    candidates, with elemental ``references`` (structure files) for the formation energy."""

    model_config = ConfigDict(extra="forbid")
    table: str | None = None
    id_column: str = "id"
    energy_column: str = "formation_energy_per_atom"
    cost_core_hours: float = Field(9.0, ge=0)
    chgnet: str | None = None
    references: list[str] = Field(default_factory=list)
    fmax: float = Field(0.1, gt=0)  # eV/Å
    steps: int = Field(500, ge=1)

    @model_validator(mode="after")
    def _one_oracle(self) -> OracleConfig:
        if (self.table is None) == (self.chgnet is None):
            raise ValueError("the oracle is either a table or chgnet: give exactly one")
        if self.chgnet is not None and not self.references:
            raise ValueError("the CHGNet oracle needs elemental reference structures")
        return self

    @classmethod
    def from_name(cls, oracle: str, **settings: Any) -> OracleConfig:
        """The oracle a name gives: CHGNet's registered name, alone (its default version)
        or with a version (``chgnet/0.3.0``), is the calculator; anything else is a table.
        ``settings``: the other fields."""
        from tlmat.models.chgnet import ARCHITECTURE, WEIGHTS

        name, _, version = oracle.partition("/")
        # asked of the CHGNet module, not spelt here: a table file named like it stays a table
        if name == ARCHITECTURE.name and not Path(oracle).is_file():
            version = version or CHGNET_VERSION
            if version not in WEIGHTS:
                raise ValueError(
                    f"--oracle {oracle}: no CHGNet {version}; known: {', '.join(WEIGHTS)}"
                )
            return cls(chgnet=version, **settings)
        return cls(table=oracle, **settings)

    def build(self, structures: Mapping[str, Structure] | None = None) -> Oracle:
        """The oracle itself; the CHGNet calculator relaxes ``structures`` (id → the last
        level's structure of each candidate)."""
        if self.table is not None:
            energies = read_energy_table(self.table, self.energy_column, self.id_column, "oracle")
            return TableOracle(energies, self.cost_core_hours, f"DFT table {Path(self.table).name}")
        from tlmat.datasets import resolve
        from tlmat.io import read_records

        references = [
            r.structure for s in self.references for r in read_records(resolve(s)).records
        ]
        return CHGNetOracle(dict(structures or {}), references, self.chgnet, self.fmax, self.steps)


class KnownConfig(BaseModel):
    """Phases already computed (formula, formation energy per atom in eV/atom)."""

    model_config = ConfigDict(extra="forbid")
    table: str
    formula_column: str = "formula"
    energy_column: str = "formation_energy_per_atom"


class ScreenConfig(BaseModel):
    """A whole screening (``tlmat screen --config screen.yaml``): several levels in order,
    the oracle, the known phases and k."""

    model_config = ConfigDict(extra="forbid")
    levels: list[LevelConfig] = Field(min_length=1)
    oracle: OracleConfig
    known: KnownConfig | None = None
    k: float = Field(2.0, ge=0)


@dataclass
class ScreeningRun:
    """A finished :func:`run_screening`: the screening, its summary, the files written,
    whether it was compared with the all-oracle hull, and the reading logs of the levels'
    structures (for the structures skipped)."""

    screening: Screening
    summary: dict[str, Any]
    paths: dict[str, Path]
    compared: bool
    logs: list[Any] = field(default_factory=list)


def candidates_from_prototypes(
    prototypes: Sequence[str | Path],
    path: str | Path,
    system: str | None = None,
    substitute_map: str | None = None,
) -> int:
    """Write to ``path`` (extended XYZ) the candidates made from the structures of
    ``prototypes`` (files or registered names) by decoration into a chemical ``system``
    (``Hf-Zn-N``) or one substitution (``Ti=Hf,Zr=Hf``): give exactly one. Ids are
    ``<prototype id>>formula``, numbered when a prototype gives several. Returns how many."""
    from tlmat.datasets import resolve
    from tlmat.io import read_records, records_from_structures, write_extxyz

    if (system is None) == (substitute_map is None):
        raise ValueError("--prototypes needs exactly one of --system and --substitute")
    if substitute_map is not None:
        pairs = [item.split("=") for item in substitute_map.split(",")]
        if any(len(p) != 2 for p in pairs):
            raise ValueError(f"--substitute {substitute_map!r}: expected e.g. Ti=Hf,Zr=Hf")
    structures, ids = [], []
    for source in prototypes:
        for record in read_records(resolve(source)).records:
            if system is not None:
                made = decorate([record.structure], system.split("-"))
            else:
                made = substitute([record.structure], dict(pairs))
            structures += made
            ids += [f"{record.id}>{s.composition.reduced_formula}" for s in made]
    if not structures:
        raise ValueError(f"no candidates: no prototype in {', '.join(map(str, prototypes))} fits")
    write_extxyz(records_from_structures(structures, _numbered(ids)).records, path)
    return len(structures)


def _numbered(ids: list[str]) -> list[str]:
    """``ids`` with ``#1``, ``#2``… added to each one that occurs more than once."""
    from collections import Counter

    seen, count = Counter(ids), Counter()
    out = []
    for i in ids:
        count[i] += 1
        out.append(f"{i}#{count[i]}" if seen[i] > 1 else i)
    return out


def _level_dataset(level: LevelConfig, ensemble: Ensemble, reading: Reading) -> GraphDataset:
    """One dataset of a level's structure files, with the ensemble's graph settings and
    element checks."""
    model = ensemble.members[0].model
    return reading.load(level.structures, model.graph_settings, [], model.elements)


def _same_candidates(level: str, ids: list[str], formulas: list[str], dataset) -> None:
    """A later level must hold structures of the first level's candidates, unchanged."""
    mine = dict(zip(dataset.ids, dataset.formulas, strict=True))
    lacking = [i for i in ids if i not in mine]
    if lacking:
        raise ValueError(
            f"level {level!r}: no structure for {len(lacking)} candidate(s) of "
            f"the first level, e.g. {', '.join(lacking[:5])}"
        )
    changed = [i for i, f in zip(ids, formulas, strict=True) if mine[i] != f]
    if changed:
        raise ValueError(f"level {level!r}: the composition changed for {', '.join(changed[:5])}")


def load_levels(
    config: ScreenConfig, reading: Reading | None = None
) -> tuple[list[Level], list[str], list[str], list[Any]]:
    """The levels with their predictors, the candidates (ids, reduced formulas) of the
    first level, and the reading log of each level; every later level must hold
    structures for the same ids."""
    from tlmat.uncertainty import is_ensemble, load_ensemble

    reading = reading or Reading()
    levels, ids, formulas, logs = [], [], [], []
    for level in config.levels:
        if not is_ensemble(level.ensemble):
            raise ValueError(
                f"{level.ensemble}: not an ensemble folder (no ensemble.json); screening "
                "needs σ — train one with `tlmat finetune … --ensemble 5`"
            )
        members = load_ensemble(level.ensemble)
        dataset = _level_dataset(level, members, reading)
        logs.append(dataset.log)
        if not levels:
            ids, formulas = list(dataset.ids), list(dataset.formulas)
        else:
            _same_candidates(level.name, ids, formulas, dataset)
        levels.append(
            Level(level.name, ensemble_predictor(members, dataset), level.cost_core_hours)
        )
    return levels, ids, formulas, logs


def _last_structures(config: ScreenConfig, reading: Reading) -> dict[str, Structure]:
    """id → structure of every candidate at the last level (what a calculator relaxes)."""
    from tlmat.datasets import resolve
    from tlmat.io import read_records

    return {
        record.id: record.structure
        for source in config.levels[-1].structures
        for record in read_records(
            resolve(source), strict=reading.strict, disorder=reading.disorder
        ).records
    }


def run_screening(
    config: ScreenConfig,
    output: str | Path,
    reference: bool | None = None,
    reading: Reading | None = None,
) -> ScreeningRun:
    """Run a whole screening and write its results to ``output``: ``screening.csv``,
    ``summary.json``, ``screening.png`` and, when a calculator relaxed the survivors,
    ``relaxed.extxyz``. ``reference``: also run the oracle on every candidate and
    compare with the all-oracle hull (default: when the oracle is a table holding every
    candidate; a calculator only when asked)."""
    from tlmat.io import records_from_structures, write_extxyz

    output, reading = Path(output), reading or Reading()
    known = config.known
    phases = (
        read_known_phases(known.table, known.energy_column, known.formula_column) if known else []
    )
    levels, ids, formulas, logs = load_levels(config, reading)
    if config.oracle.table is not None:
        oracle = config.oracle.build()
        compare = oracle.can_answer_all(ids) if reference is None else reference
    else:
        oracle = config.oracle.build(_last_structures(config, reading))
        compare = bool(reference)
    screening = screen(ids, formulas, levels, oracle, phases, config.k, compare)
    summary = screening.summary()
    paths = screening.write(output, summary)
    relaxed = getattr(oracle, "relaxed", None)
    if relaxed:  # a record of what the calculator did
        paths["relaxed"] = output / "relaxed.extxyz"
        write_extxyz(records_from_structures(list(relaxed.values()), list(relaxed)).records,
                     paths["relaxed"])  # fmt: skip
    return ScreeningRun(screening, summary, paths, compare, logs)
