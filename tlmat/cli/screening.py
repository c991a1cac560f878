"""``tlmat screen``: phase-diagram screening with an ensemble's σ (Ekström et al.)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import numpy as np
import typer
from rich.markup import escape
from rich.table import Table

from tlmat.cli.common import (
    console,
    option,
    reported_errors,
    skipped_table,
    writable_output,
)
from tlmat.cli.options import DEFAULT_READING, ReadOptions, reads_structures
from tlmat.machine import granted_cpus

if TYPE_CHECKING:  # the library is imported when a command runs: `--help` stays fast
    from tlmat.screening import ScreenConfig


EXAMPLE_CONFIG = """\
levels:                      # in the order the relaxation goes
  - {name: preprerelax, ensemble: ens-pre/, structures: [cands-pre.extxyz], cost_core_hours: 0.083}
  - {name: prerelax, ensemble: ens-pre2/, structures: [cands-pre2.extxyz], cost_core_hours: 1.0}
oracle: {table: dft.csv, id_column: id, energy_column: E_f, cost_core_hours: 9.0}
known: {table: known.csv, formula_column: formula, energy_column: E_f}
k: 2
"""


# the options of `tlmat screen`, named once here so that the command reads as what it does
Candidates = Annotated[
    list[str] | None,
    typer.Argument(
        metavar="CANDIDATES",
        help="Structures of the candidates (files, folders or registered names), "
        "predicted by --ensemble; ids must match the oracle table.",
    ),
]

Ensemble = option(
    str | None,
    "Ensemble folder (train/finetune --ensemble N) predicting the formation "
    "energy per atom (eV/atom).",
)

OracleName = option(
    str | None,
    "CSV/JSON table of DFT formation energies per atom (eV/atom), or "
    "'chgnet' / 'chgnet/0.3.0' to relax the survivors with CHGNet (demonstrations).",
)

References = option(
    list[str] | None,
    "Elemental structures (files) whose relaxed energies give CHGNet's formation energies.",
    "--references",
)

Prototypes = option(
    list[str] | None,
    "Make the candidates by decorating these structures (instead of CANDIDATES):"
    " with --system, every assignment of its elements; with --substitute, one map.",
    "--prototypes",
)

System = option(str | None, "Chemical system to decorate into, e.g. Hf-Zn-N.")

Substitute = option(str | None, "Element map for --prototypes, e.g. Ti=Hf,Zr=Hf.")

OracleId = option(str, "Id column of the oracle table.")

OracleEnergy = option(str, "Formation-energy column (eV/atom) of the oracle table.")

OracleCost = option(
    float, "Core-hours of one oracle calculation [9: Ekström et al.'s final step].", min=0
)

Known = option(Path | None, "CSV/JSON table of known phases: formula and E_f (eV/atom).")

KnownFormula = option(str, "Formula column of --known.")

KnownEnergy = option(str, "Formation-energy column (eV/atom) of --known.")

LevelName = option(str, "Name of the candidates' relaxation level.")

LevelCost = option(float, "Core-hours to bring one candidate to --level before predicting.", min=0)

KSigma = option(float, "Drop candidates with E_hull > k·σ.", "-k", min=0)

ConfigFile = option(
    Path | None,
    "YAML with several levels in order: `levels:` (name, ensemble, "
    "structures, cost_core_hours), `oracle:`, `known:`, `k:` (README: Screening); "
    "replaces the arguments and options of one level.",
)

ReferenceAll = option(
    bool | None,
    "Also run the oracle on every candidate and compare with the all-oracle "
    "hull [default: when the oracle is a table holding every candidate].",
)

Output = option(Path, "Folder for screening.csv, summary.json, screening.png.", "--output", "-o")


@reads_structures("cache_dir", "overwrite", "strict", "on_duplicate", "disorder")
def screen(
    candidates: Candidates = None,
    ensemble: Ensemble = None,
    oracle: OracleName = None,
    references: References = None,
    prototypes: Prototypes = None,
    system: System = None,
    substitute: Substitute = None,
    oracle_id: OracleId = "id",
    oracle_energy: OracleEnergy = "formation_energy_per_atom",
    oracle_cost: OracleCost = 9.0,
    known: Known = None,
    known_formula: KnownFormula = "formula",
    known_energy: KnownEnergy = "formation_energy_per_atom",
    level: LevelName = "final",
    level_cost: LevelCost = 0.0,
    k: KSigma = 2.0,
    config: ConfigFile = None,
    reference: ReferenceAll = None,
    output: Output = Path("screening"),
    reading: ReadOptions = DEFAULT_READING,
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
    from tlmat.screening import run_screening

    with reported_errors():
        spec = _config(
            config, candidates, prototypes, ensemble, oracle, references, level, level_cost,
            oracle_id, oracle_energy, oracle_cost, known, known_formula, known_energy, k,
        )  # fmt: skip
    writable_output(output, reading.overwrite, folder=True)
    with reported_errors():
        if prototypes:
            spec.levels[0].structures = [str(_decorated(prototypes, system, substitute, output))]
        run = run_screening(spec, output, reference, reading.reading(granted_cpus()))
    for log in run.logs:
        table = skipped_table(log)
        if table is not None:
            console.print(table)
    _print(run.summary)
    if reference is None and not run.compared:
        console.print("no all-oracle comparison: the oracle table lacks some candidates")
    console.print(f"→ {', '.join(str(p) for p in run.paths.values())}")
    if not np.isfinite(run.screening.computed_energies).all():
        raise typer.Exit(1)


def _config(
    config: Path | None,
    candidates: list[str] | None,
    prototypes: list[str] | None,
    ensemble: str | None,
    oracle: str | None,
    references: list[str] | None,
    level: str,
    level_cost: float,
    oracle_id: str,
    oracle_energy: str,
    oracle_cost: float,
    known: Path | None,
    known_formula: str,
    known_energy: str,
    k: float,
) -> ScreenConfig:
    """The screening the flags describe: a ``--config`` YAML, or one level from the
    arguments and options (not both)."""
    import yaml

    from tlmat.screening import KnownConfig, LevelConfig, OracleConfig, ScreenConfig

    if config is not None:
        if candidates or ensemble or oracle or prototypes:
            raise ValueError(
                "--config describes the levels and the oracle: give no "
                "CANDIDATES, --prototypes, --ensemble or --oracle beside it"
            )
        return ScreenConfig.model_validate(yaml.safe_load(config.read_text()) or {})
    flags = {"CANDIDATES or --prototypes": candidates or prototypes, "--ensemble": ensemble,
             "--oracle": oracle}  # fmt: skip
    missing = [name for name, value in flags.items() if not value]
    if missing:
        raise ValueError(f"missing {', '.join(missing)} (or pass --config)")
    # CANDIDATES, or --prototypes: the level's structures are made later
    first = LevelConfig(name=level, ensemble=ensemble, structures=candidates or [],
                        cost_core_hours=level_cost)  # fmt: skip
    the_oracle = OracleConfig.from_name(
        oracle, references=references or [], id_column=oracle_id,
        energy_column=oracle_energy, cost_core_hours=oracle_cost,
    )  # fmt: skip
    phases = (
        KnownConfig(table=str(known), formula_column=known_formula, energy_column=known_energy)
        if known
        else None
    )
    return ScreenConfig(levels=[first], oracle=the_oracle, known=phases, k=k)


def _decorated(prototypes: list[str], system: str | None, substitute: str | None, output: Path):
    """Candidates made from prototypes, written to ``candidates.extxyz`` in the output
    folder."""
    from tlmat.screening import candidates_from_prototypes

    path = output / "candidates.extxyz"
    made = candidates_from_prototypes(prototypes, path, system, substitute)
    console.print(f"{made} candidates from {len(prototypes)} prototype file(s) → {path}")
    return path


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
