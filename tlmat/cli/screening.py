"""``tlmat screen``: phase-diagram screening with an ensemble's σ (Ekström et al.)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from pydantic import BaseModel, ConfigDict, Field, model_validator
from rich.markup import escape
from rich.table import Table

from tlmat.cli.common import (
    CacheDir,
    Disorder,
    OnDuplicate,
    Overwrite,
    Strict,
    console,
    reported_errors,
    writable_output,
)


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


class KnownConfig(BaseModel):
    """Phases already computed (formula, formation energy per atom in eV/atom)."""

    model_config = ConfigDict(extra="forbid")
    table: str
    formula_column: str = "formula"
    energy_column: str = "formation_energy_per_atom"


class ScreenConfig(BaseModel):
    """``tlmat screen --config screen.yaml``: several levels in order."""

    model_config = ConfigDict(extra="forbid")
    levels: list[LevelConfig] = Field(min_length=1)
    oracle: OracleConfig
    known: KnownConfig | None = None
    k: float = Field(2.0, ge=0)


EXAMPLE_CONFIG = """\
levels:                      # in the order the relaxation goes
  - {name: preprerelax, ensemble: ens-pre/, structures: [cands-pre.extxyz], cost_core_hours: 0.083}
  - {name: prerelax, ensemble: ens-pre2/, structures: [cands-pre2.extxyz], cost_core_hours: 1.0}
oracle: {table: dft.csv, id_column: id, energy_column: E_f, cost_core_hours: 9.0}
known: {table: known.csv, formula_column: formula, energy_column: E_f}
k: 2
"""


def screen(
    candidates: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="CANDIDATES",
            help="Structures of the candidates (files, folders or registered names), "
            "predicted by --ensemble; ids must match the oracle table.",
        ),
    ] = None,
    ensemble: Annotated[
        str | None,
        typer.Option(
            help="Ensemble folder (train/finetune --ensemble N) predicting the formation "
            "energy per atom (eV/atom)."
        ),
    ] = None,
    oracle: Annotated[
        str | None,
        typer.Option(
            help="CSV/JSON table of DFT formation energies per atom (eV/atom), or "
            "'chgnet' / 'chgnet/0.3.0' to relax the survivors with CHGNet (demonstrations)."
        ),
    ] = None,
    references: Annotated[
        list[str] | None,
        typer.Option(
            "--references",
            help="Elemental structures (files) whose relaxed energies give CHGNet's "
            "formation energies.",
        ),
    ] = None,
    prototypes: Annotated[
        list[str] | None,
        typer.Option(
            "--prototypes",
            help="Make the candidates by decorating these structures (instead of CANDIDATES):"
            " with --system, every assignment of its elements; with --substitute, one map.",
        ),
    ] = None,
    system: Annotated[
        str | None, typer.Option(help="Chemical system to decorate into, e.g. Hf-Zn-N.")
    ] = None,
    substitute: Annotated[
        str | None, typer.Option(help="Element map for --prototypes, e.g. Ti=Hf,Zr=Hf.")
    ] = None,
    oracle_id: Annotated[str, typer.Option(help="Id column of the oracle table.")] = "id",
    oracle_energy: Annotated[
        str, typer.Option(help="Formation-energy column (eV/atom) of the oracle table.")
    ] = "formation_energy_per_atom",
    oracle_cost: Annotated[
        float,
        typer.Option(
            min=0, help="Core-hours of one oracle calculation [9: Ekström et al.'s final step]."
        ),
    ] = 9.0,
    known: Annotated[
        Path | None,
        typer.Option(help="CSV/JSON table of known phases: formula and E_f (eV/atom)."),
    ] = None,
    known_formula: Annotated[str, typer.Option(help="Formula column of --known.")] = "formula",
    known_energy: Annotated[
        str, typer.Option(help="Formation-energy column (eV/atom) of --known.")
    ] = "formation_energy_per_atom",
    level: Annotated[str, typer.Option(help="Name of the candidates' relaxation level.")] = (
        "final"
    ),
    level_cost: Annotated[
        float,
        typer.Option(min=0, help="Core-hours to bring one candidate to --level before predicting."),
    ] = 0.0,
    k: Annotated[float, typer.Option("-k", min=0, help="Drop candidates with E_hull > k·σ.")] = 2.0,
    config: Annotated[
        Path | None,
        typer.Option(
            help="YAML with several levels in order: `levels:` (name, ensemble, "
            "structures, cost_core_hours), `oracle:`, `known:`, `k:` (README: Screening); "
            "replaces the arguments and options of one level."
        ),
    ] = None,
    reference: Annotated[
        bool | None,
        typer.Option(
            help="Also run the oracle on every candidate and compare with the all-oracle "
            "hull [default: when the oracle is a table holding every candidate]."
        ),
    ] = None,
    output: Annotated[
        Path,
        typer.Option(
            "--output", "-o", help="Folder for screening.csv, summary.json, screening.png."
        ),
    ] = Path("screening"),
    cache_dir: CacheDir = None,
    overwrite: Overwrite = False,
    strict: Strict = False,
    on_duplicate: OnDuplicate = "error",
    disorder: Disorder = "skip",
) -> None:
    """Screen candidates for thermodynamic stability at a fraction of the DFT cost: an
    ensemble predicts each candidate's formation energy ± σ, pymatgen builds the convex
    hull with the known phases, candidates with E_hull > k·σ are dropped, and only the
    survivors are sent to the oracle (your DFT table). Prints the decisions, the
    core-hours spent against computing everything, and — when the table holds every
    candidate — the stable set found against the all-oracle hull.

    Examples:

        tlmat screen hf_zn_n_candidates.extxyz --ensemble ens/ --oracle dft.csv
        --oracle-id material_id --oracle-energy E_f --known known.csv -o screening/

        tlmat screen --config screen.yaml -o screening/

        tlmat screen --prototypes ti_zn_n.extxyz --substitute Ti=Hf --ensemble ens/
        --oracle chgnet --references Hf.cif Zn.cif N2.cif -o screening/
    """
    import numpy as np
    import yaml

    from tlmat.screening import TableOracle, read_energy_table, read_known_phases
    from tlmat.screening import screen as run_screen

    with reported_errors():
        if config is not None:
            if candidates or ensemble or oracle or prototypes:
                raise ValueError(
                    "--config describes the levels and the oracle: give no "
                    "CANDIDATES, --prototypes, --ensemble or --oracle beside it"
                )
            spec = ScreenConfig.model_validate(yaml.safe_load(config.read_text()) or {})
        else:
            missing = [
                name
                for name, value in (
                    ("CANDIDATES or --prototypes", candidates or prototypes),
                    ("--ensemble", ensemble),
                    ("--oracle", oracle),
                )
                if not value
            ]
            if missing:
                raise ValueError(f"missing {', '.join(missing)} (or pass --config)")
            # `chgnet` or `chgnet/VERSION` names the calculator; anything else is a table
            chgnet = (oracle.partition("/")[2] or "0.3.0") if oracle.startswith("chgnet") else None
            spec = ScreenConfig(
                levels=[
                    LevelConfig(
                        name=level,
                        ensemble=ensemble,
                        structures=candidates or [],  # --prototypes: made below
                        cost_core_hours=level_cost,
                    )
                ],
                oracle=OracleConfig(
                    table=None if chgnet else oracle,
                    chgnet=chgnet,
                    references=references or [],
                    id_column=oracle_id,
                    energy_column=oracle_energy,
                    cost_core_hours=oracle_cost,
                ),
                known=KnownConfig(
                    table=str(known), formula_column=known_formula, energy_column=known_energy
                )
                if known
                else None,
                k=k,
            )
    writable_output(output, overwrite, folder=True)
    with reported_errors():
        if prototypes:
            spec.levels[0].structures = [str(_decorated(prototypes, system, substitute, output))]
        phases = (
            read_known_phases(spec.known.table, spec.known.energy_column, spec.known.formula_column)
            if spec.known
            else []
        )
        levels, ids, formulas = _levels(spec, cache_dir, strict, on_duplicate, disorder)
        if spec.oracle.table is not None:
            energies = read_energy_table(
                spec.oracle.table, spec.oracle.energy_column, spec.oracle.id_column, "oracle"
            )
            the_oracle = TableOracle(
                energies, spec.oracle.cost_core_hours, f"DFT table {Path(spec.oracle.table).name}"
            )
            compare = the_oracle.can_answer_all(ids) if reference is None else reference
        else:
            the_oracle = _chgnet_oracle(spec, strict, disorder)
            compare = bool(reference)
        result = run_screen(ids, formulas, levels, the_oracle, phases, spec.k, compare)
        summary = result.summary()
        paths = result.write(output, summary)
        if getattr(the_oracle, "relaxed", None):
            _write_relaxed(the_oracle, output / "relaxed.extxyz")
            paths["relaxed"] = output / "relaxed.extxyz"
    _print(summary)
    if reference is None and not compare:
        console.print("no all-oracle comparison: the oracle table lacks some candidates")
    console.print(f"→ {', '.join(str(p) for p in paths.values())}")
    if not np.isfinite(result.computed_energies).all():
        raise typer.Exit(1)


def _decorated(prototypes: list[str], system: str | None, substitute: str | None, output: Path):
    """Candidates made from prototypes, written to ``candidates.extxyz`` in the output
    folder (ids ``<prototype id>>formula``, numbered when a prototype gives several)."""
    from collections import Counter

    from tlmat.datasets import resolve
    from tlmat.io import read_records, records_from_structures, write_extxyz
    from tlmat.screening import decorate
    from tlmat.screening import substitute as substituted

    if (system is None) == (substitute is None):
        raise ValueError("--prototypes needs exactly one of --system and --substitute")
    structures, ids = [], []
    for source in prototypes:
        for record in read_records(resolve(source)).records:
            if system is not None:
                made = decorate([record.structure], system.split("-"))
            else:
                pairs = [item.split("=") for item in substitute.split(",")]
                if any(len(p) != 2 for p in pairs):
                    raise ValueError(f"--substitute {substitute!r}: expected e.g. Ti=Hf,Zr=Hf")
                made = substituted([record.structure], dict(pairs))
            structures += made
            ids += [f"{record.id}>{s.composition.reduced_formula}" for s in made]
    if not structures:
        raise ValueError(f"no candidates: no prototype in {', '.join(prototypes)} fits")
    seen = Counter(ids)
    count: Counter = Counter()
    unique_ids = []
    for i in ids:
        count[i] += 1
        unique_ids.append(f"{i}#{count[i]}" if seen[i] > 1 else i)
    path = output / "candidates.extxyz"
    write_extxyz(records_from_structures(structures, unique_ids).records, path)
    console.print(f"{len(structures)} candidates from {len(prototypes)} prototype file(s) → {path}")
    return path


def _chgnet_oracle(spec: ScreenConfig, strict: bool, disorder: str):
    """The CHGNet oracle over the last level's structures of the candidates."""
    from tlmat.datasets import resolve
    from tlmat.io import read_records
    from tlmat.screening import CHGNetOracle

    structures = {}
    for source in spec.levels[-1].structures:
        for record in read_records(resolve(source), strict=strict, disorder=disorder).records:
            structures[record.id] = record.structure
    references = [
        r.structure
        for source in spec.oracle.references
        for r in read_records(resolve(source)).records
    ]
    return CHGNetOracle(
        structures, references, spec.oracle.chgnet, spec.oracle.fmax, spec.oracle.steps
    )


def _write_relaxed(oracle, path: Path) -> None:
    """The structures the oracle relaxed, with their steps (a record of what it did)."""
    from tlmat.io import records_from_structures, write_extxyz

    ids = list(oracle.relaxed)
    write_extxyz(records_from_structures([oracle.relaxed[i] for i in ids], ids).records, path)


def _levels(spec: ScreenConfig, cache_dir, strict, on_duplicate, disorder):
    """The levels with their predictors, and the candidates (ids, reduced formulas) of
    the first level; every later level must hold structures for the same ids."""
    from tlmat.cli.inference import model_structures
    from tlmat.screening import Level, ensemble_predictor
    from tlmat.uncertainty import is_ensemble, load_ensemble

    levels, ids, formulas = [], None, None
    for level in spec.levels:
        if not is_ensemble(level.ensemble):
            raise ValueError(
                f"{level.ensemble}: not an ensemble folder (no ensemble.json); screening "
                "needs σ — train one with `tlmat finetune … --ensemble 5`"
            )
        members = load_ensemble(level.ensemble)
        dataset = model_structures(
            members.members[0], level.structures, cache_dir, (), strict, on_duplicate,
            disorder, os.cpu_count() or 1,
        )  # fmt: skip
        if ids is None:
            ids, formulas = list(dataset.ids), list(dataset.formulas)
        else:
            mine = dict(zip(dataset.ids, dataset.formulas, strict=True))
            lacking = [i for i in ids if i not in mine]
            if lacking:
                raise ValueError(
                    f"level {level.name!r}: no structure for {len(lacking)} candidate(s) of "
                    f"the first level, e.g. {', '.join(lacking[:5])}"
                )
            changed = [i for i, f in zip(ids, formulas, strict=True) if mine[i] != f]
            if changed:
                raise ValueError(
                    f"level {level.name!r}: the composition changed for {', '.join(changed[:5])}"
                )
        levels.append(
            Level(level.name, ensemble_predictor(members, dataset), level.cost_core_hours)
        )
    return levels, ids, formulas


def _print(summary: dict) -> None:
    table = Table(title="Screening", title_justify="left")
    for column in ("level", "in", "kept", "core-hours"):
        table.add_column(column, justify="left" if column == "level" else "right")
    for level in summary["levels"]:
        table.add_row(
            level["name"], str(level["in"]), str(level["kept"]), f"{level['cost_core_hours']:.1f}"
        )
    table.add_row(
        f"oracle ({escape(summary['oracle'])})",
        str(summary["oracle_calls"]),
        "",
        f"{summary['oracle_cost_core_hours']:.1f}",
    )
    console.print(table)
    console.print(
        f"{summary['candidates']} candidates: {summary['oracle_calls']} oracle calls "
        f"({summary['oracle_calls_saved']:.0%} saved), {summary['cost_core_hours']:.1f} of "
        f"{summary['all_oracle_cost_core_hours']:.1f} core-hours ({summary['cost_saved']:.0%} "
        f"saved); stable found: {', '.join(summary['found_stable']) or 'none'}"
    )
    if "recall" in summary:
        console.print(
            f"against the all-oracle hull: same stable set: {summary['same_stable_set']}; "
            f"precision {summary['precision']:.2f}, recall {summary['recall']:.2f}"
        )
        for row in summary["missed"]:
            console.print(
                f"  missed {row['id']} ({row['formula']}): dropped at {row.get('dropped_at')}"
                f" with E_hull {row.get('predicted_e_hull', float('nan')):.3f} > "
                f"{summary['k']:g}σ = {summary['k'] * row.get('sigma', float('nan')):.3f} "
                f"eV/atom; it lies {-row['below_found_hull']:.3f} eV/atom below the hull found"
            )
        for row in summary["calibration"]:
            console.print(
                f"  {row['level']}: MAE {row['mae']:.3f} eV/atom, |error| ≤ σ for "
                f"{row['coverage_1sigma']:.0%}, ≤ 2σ for {row['coverage_2sigma']:.0%} "
                f"(n = {row['n']})"
            )
