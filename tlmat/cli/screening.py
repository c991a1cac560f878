"""``tlmat screen``: phase-diagram screening with an ensemble's σ (Ekström et al.)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from pydantic import BaseModel, ConfigDict, Field
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
    skipped_table,
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
    """The expensive step: a table of the user's DFT formation energies (eV/atom)."""

    model_config = ConfigDict(extra="forbid")
    table: str
    id_column: str = "id"
    energy_column: str = "formation_energy_per_atom"
    cost_core_hours: float = Field(9.0, ge=0)


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
        Path | None,
        typer.Option(help="CSV/JSON table of DFT formation energies per atom (eV/atom)."),
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
        bool,
        typer.Option(
            help="Compare with the all-oracle hull (needs the oracle's value for every "
            "candidate; default: when the table has them all)."
        ),
    ] = True,
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
    """
    import numpy as np
    import yaml

    from tlmat.screening import TableOracle, read_energy_table, read_known_phases
    from tlmat.screening import screen as run_screen

    with reported_errors():
        if config is not None:
            if candidates or ensemble or oracle:
                raise ValueError(
                    "--config describes the levels and the oracle: give no "
                    "CANDIDATES, --ensemble or --oracle beside it"
                )
            spec = ScreenConfig.model_validate(yaml.safe_load(config.read_text()) or {})
        else:
            missing = [
                name
                for name, value in (
                    ("CANDIDATES", candidates),
                    ("--ensemble", ensemble),
                    ("--oracle", oracle),
                )
                if not value
            ]
            if missing:
                raise ValueError(f"missing {', '.join(missing)} (or pass --config)")
            spec = ScreenConfig(
                levels=[
                    LevelConfig(
                        name=level,
                        ensemble=ensemble,
                        structures=candidates,
                        cost_core_hours=level_cost,
                    )
                ],
                oracle=OracleConfig(
                    table=str(oracle),
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
        energies = read_energy_table(
            spec.oracle.table, spec.oracle.energy_column, spec.oracle.id_column, "oracle"
        )
        table_oracle = TableOracle(
            energies, spec.oracle.cost_core_hours, f"DFT table {Path(spec.oracle.table).name}"
        )
        phases = (
            read_known_phases(spec.known.table, spec.known.energy_column, spec.known.formula_column)
            if spec.known
            else []
        )
        levels, ids, formulas = _levels(spec, cache_dir, strict, on_duplicate, disorder)
        compare = reference and table_oracle.can_answer_all(ids)
        result = run_screen(ids, formulas, levels, table_oracle, phases, spec.k, compare)
        paths = result.write(output)
    _print(result.summary())
    if reference and not compare:
        console.print("no all-oracle comparison: the oracle table lacks some candidates")
    console.print(f"→ {paths['table']}, {paths['summary']}, {paths['figure']}")
    if not np.isfinite(result.computed_energies).all():
        raise typer.Exit(1)


def _levels(spec: ScreenConfig, cache_dir, strict, on_duplicate, disorder):
    """The levels with their predictors, and the candidates (ids, reduced formulas) of
    the first level; every later level must hold structures for the same ids."""
    from tlmat.data import concat, load_dataset
    from tlmat.datasets import resolve
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
        model = members.members[0].model
        dataset = None
        for source in level.structures:
            part = load_dataset(
                resolve(source),
                model.graph_settings,
                [],
                cache_dir=cache_dir,
                elements=model.elements,
                progress=True,
                strict=strict,
                on_duplicate=on_duplicate,
                disorder=disorder,
                workers=os.cpu_count() or 1,
            )
            dataset = part if dataset is None else concat(dataset, part)
        skipped = skipped_table(dataset.log)
        if skipped is not None:
            console.print(skipped)
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
