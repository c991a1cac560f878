"""A pseudo-labelled pretraining set: the Materials Project structures of mp_cgcnn_36k with
their DFT formation energies, plus a seeded perturbed copy of each, labelled by CHGNet 0.3.0
(tlmat issue 27: grow the pretraining set beyond the DFT structures for the scaling study).

Every held-out material of the target grid (``--grid``, by default lee-asahi-bulk: its test
set's ids AND reduced formulas, computed by the grid's own code) is removed before anything
is perturbed, so neither a test material nor a perturbed copy of one reaches pretraining.

Each copy: the lattice strained by ε = e·I + A (isotropic e ~ U(±strain), symmetric
anisotropic A with entries ~ U(±strain/2)), then every site moved by a random direction
times U(displacement range) Å, drawn from ``numpy.random.default_rng([seed, row])``. The
labels are those of ``tlmat label --with chgnet/0.3.0``: the energy per atom less CHGNet's
own elemental references (eV/atom). The table goes to benchmarks/out/ (ignored by git;
the script and its seed rebuild it), the cost per structure to
benchmarks/results/pseudo-labels/.

    OMP_NUM_THREADS=1 python3 benchmarks/pseudo_labels.py
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
GRID = REPO / "benchmarks" / "configs" / "lee-asahi-bulk.yaml"
TABLE = "mp_cgcnn_36k/mp_cgcnn_36k.csv.gz"
OUT = REPO / "benchmarks" / "out" / "pseudo-labels"  # mp_cgcnn_36k_chgnet_s<seed>.csv.gz
RESULTS = REPO / "benchmarks" / "results" / "pseudo-labels"
TARGET = "formation_energy_per_atom"  # eV/atom, the DFT table's column name
LABELLER = "chgnet/0.3.0"
CHUNK = 2000  # structures labelled per part file: an interrupted run resumes by part


def held_out(grid: Path, cache_dir: Path | None) -> tuple[set[str], set[str]]:
    """The grid's held-out ids and reduced formulas, as the grid computes them."""
    from pymatgen.core import Composition

    from tlmat.experiments.benchmark import BenchmarkConfig, grid_held_out

    config = BenchmarkConfig.from_yaml(grid)
    found = grid_held_out([config], cache_dir)[config.name]
    return set(found["ids"]), {Composition(f).reduced_formula for f in found["formulas"]}


def reduced_formulas(cifs: pd.Series) -> list[str]:
    """Each CIF's reduced formula, from its ``_chemical_formula_sum`` line (no parse)."""
    from pymatgen.core import Composition

    sums = cifs.str.extract(r"_chemical_formula_sum\s+'?([A-Za-z0-9. ]+)'?", expand=False)
    cache: dict[str, str] = {}
    for text in sums.unique():
        cache[text] = Composition(text).reduced_formula
    return [cache[text] for text in sums]


def perturbed_cif(cif: str, rng: np.random.Generator, strain: float, shift: tuple) -> str:
    """A copy of the CIF's crystal, strained (fraction ``strain``) and with every site
    displaced by ``shift`` = (min, max) Å in a random direction."""
    from pymatgen.core import Lattice, Structure

    structure = Structure.from_str(cif, fmt="cif")
    anisotropic = rng.uniform(-strain / 2, strain / 2, (3, 3))
    epsilon = rng.uniform(-strain, strain) * np.eye(3) + (anisotropic + anisotropic.T) / 2
    # strain the lattice, keep fractional coordinates: the atoms follow the cell
    matrix = structure.lattice.matrix @ (np.eye(3) + epsilon)
    structure = Structure(
        Lattice(matrix), structure.species, structure.frac_coords, coords_are_cartesian=False
    )
    directions = rng.normal(size=(len(structure), 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    lengths = rng.uniform(*shift, size=(len(structure), 1))
    moved = structure.cart_coords + directions * lengths
    structure = Structure(structure.lattice, structure.species, moved, coords_are_cartesian=True)
    return structure.to(fmt="cif")


def perturb(frame: pd.DataFrame, seed: int, strain: float, shift: tuple) -> pd.DataFrame:
    """The perturbed copies of ``frame``'s rows; each row's draw depends only on the seed
    and the row's position in the MP table (``row``), so any subset is reproducible."""
    cifs = [
        perturbed_cif(cif, np.random.default_rng([seed, int(row)]), strain, shift)
        for cif, row in zip(frame["cif"], frame["row"], strict=True)
    ]
    ids = [f"{mid}~chgnet-s{seed}" for mid in frame["material_id"]]
    return pd.DataFrame({"material_id": ids, "parent_id": frame["material_id"].values, "cif": cifs})


def label_chunk(copies: pd.DataFrame, part: Path, trained, references, cache_dir: Path) -> dict:
    """Label one chunk of perturbed copies with the library function behind ``tlmat
    label``; the labels and the seconds spent go to ``part`` (a CSV) and are returned."""
    from tlmat.data import Reading
    from tlmat.labelling import label

    structures = part.with_suffix(".structures.csv")
    copies[["material_id", "cif"]].to_csv(structures, index=False)
    start = time.perf_counter()
    model = trained.model
    dataset = Reading(cache_dir=cache_dir, workers=1).load(
        [str(structures)], model.graph_settings, [], model.elements
    )
    read = time.perf_counter() - start
    labels = label(trained, dataset, references)
    structures.unlink()
    table = labels.table.rename(columns={"id": "material_id"})
    table.to_csv(part, index=False)
    cost = {"n": len(copies), "n_labelled": len(table), "read_s": read, "predict_s": labels.seconds}
    part.with_suffix(".json").write_text(json.dumps(cost))
    return cost


def machine() -> dict:
    """The machine, as every results file records it."""
    from tlmat.machine import describe

    return describe()


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--grid", type=Path, default=GRID, help="whose test materials to drop")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--subset", type=int, default=None, help="perturb only this many")
    parser.add_argument("--strain", type=float, default=0.03, help="isotropic strain bound")
    parser.add_argument("--shift", type=float, nargs=2, default=(0.05, 0.10), help="Å")
    parser.add_argument("--output", type=Path, default=None, help="default: under " + str(OUT))
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--cache-dir", type=Path, default=REPO / ".tlmat-cache")
    return parser.parse_args(argv)


def parents(args: argparse.Namespace, frame: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """The MP rows left once the grid's held-out ids and formulas are removed, and the
    counts removed."""
    ids, formulas = held_out(args.grid, args.cache_dir)
    frame = frame.assign(row=np.arange(len(frame)), formula=reduced_formulas(frame["cif"]))
    same_id = frame["material_id"].isin(ids)
    same_formula = frame["formula"].isin(formulas) & ~same_id
    kept = frame[~same_id & ~same_formula & np.isfinite(frame[TARGET])]
    counts = {
        "mp_rows": len(frame),
        "removed_same_id": int(same_id.sum()),
        "removed_same_formula": int(same_formula.sum()),
        "held_out_ids": len(ids),
        "held_out_formulas": len(formulas),
    }
    return kept, counts


def labeller(cache_dir: Path) -> tuple[object, dict[str, float], float]:
    """CHGNet, its elemental references (eV/atom) and the seconds they took."""
    import torch

    from tlmat.data import Reading
    from tlmat.labelling import check_energy_model, elemental_references
    from tlmat.transfer.sources import load_source

    torch.set_num_threads(1)
    trained = load_source(LABELLER)
    check_energy_model(trained, LABELLER)
    start = time.perf_counter()
    references = elemental_references(trained, LABELLER, TABLE, Reading(cache_dir=cache_dir))
    return trained, references, time.perf_counter() - start


def label_all(args, kept: pd.DataFrame, parts: Path, trained, references) -> tuple:
    """Perturb and label ``kept`` chunk by chunk (finished chunks are reused)."""
    totals: dict[str, float] = {}
    labelled, costs = [], []
    for first in range(0, len(kept), CHUNK):
        part = parts / f"part-{first // CHUNK:03d}.csv"
        chunk = kept.iloc[first : first + CHUNK]
        if not part.exists():
            start = time.perf_counter()
            copies = perturb(chunk, args.seed, args.strain, tuple(args.shift))
            perturb_s = time.perf_counter() - start
            copies.to_csv(part.with_suffix(".cifs.csv.gz"), index=False)
            cost = label_chunk(copies, part, trained, references, args.cache_dir)
            cost["perturb_s"] = perturb_s
            part.with_suffix(".json").write_text(json.dumps(cost))
            print(f"{part.name}: {cost}", flush=True)
        costs.append(json.loads(part.with_suffix(".json").read_text()))
        cifs = pd.read_csv(part.with_suffix(".cifs.csv.gz"))
        labelled.append(cifs.merge(pd.read_csv(part), on="material_id"))
    for key in ("n", "n_labelled", "read_s", "predict_s", "perturb_s"):
        totals[key] = sum(c[key] for c in costs)
    return pd.concat(labelled, ignore_index=True), totals


def write_table(kept: pd.DataFrame, labelled: pd.DataFrame, output: Path) -> pd.DataFrame:
    """One table: the DFT rows and the CHGNet rows (those with a formation energy)."""
    dft = kept.assign(parent_id=kept["material_id"], label_source="dft")
    column = "formation_energy_per_atom (eV/atom)"
    chgnet = labelled[np.isfinite(labelled[column])].rename(columns={column: TARGET})
    chgnet = chgnet.assign(label_source="chgnet")
    columns = ["material_id", "parent_id", "label_source", TARGET, "cif"]
    table = pd.concat([dft[columns], chgnet[columns]], ignore_index=True)
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(output.name + ".partial")
    table.to_csv(partial, index=False, compression="gzip")
    os.replace(partial, output)
    return table


def label_quality(kept: pd.DataFrame, labelled: pd.DataFrame) -> dict:
    """CHGNet on the perturbed copy against DFT on the parent (eV/atom): the strain
    energy plus CHGNet's error, for the record."""
    column = "formation_energy_per_atom (eV/atom)"
    both = labelled.merge(kept, left_on="parent_id", right_on="material_id", suffixes=("", "_mp"))
    both = both[np.isfinite(both[column])]
    gap = both[column] - both[TARGET]
    return {
        "n": len(both),
        "mean_chgnet_minus_dft": float(gap.mean()),
        "mae_chgnet_vs_dft": float(gap.abs().mean()),
        "n_without_reference": int((~np.isfinite(labelled[column])).sum()),
    }


def shown(path: Path) -> str:
    """``path`` relative to the repository where it lies inside it."""
    path = path.resolve()
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def report(args, counts, totals, quality, table, seconds) -> dict:
    n = totals["n"]
    per = {
        "perturb_ms": 1000 * totals["perturb_s"] / n,
        "read_and_graph_ms": 1000 * totals["read_s"] / n,
        "chgnet_forward_ms": 1000 * totals["predict_s"] / n,
    }
    per["total_ms"] = sum(per.values())
    digest = hashlib.sha256(args.output.read_bytes()).hexdigest()
    result = {
        "command": " ".join(["python3", *sys.argv]),
        "labeller": LABELLER,
        "grid": shown(args.grid),
        "seed": args.seed,
        "strain": args.strain,
        "shift_angstrom": list(args.shift),
        "subset": args.subset,
        "output": shown(args.output),
        "output_sha256": digest,
        "rows": {
            "dft": int((table.label_source == "dft").sum()),
            "chgnet": int((table.label_source == "chgnet").sum()),
        },
        "removed": counts,
        "seconds": {**totals, "wall": seconds},
        "per_structure": per,
        "labels_vs_parent_dft": quality,
        "machine": machine(),
    }
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "pseudo-labels.json").write_text(json.dumps(result, indent=2))
    write_readme(args.results / "README.md", result)
    return result


def write_readme(path: Path, r: dict) -> None:
    per, rows, quality = r["per_structure"], r["rows"], r["labels_vs_parent_dft"]
    removed = r["removed"]
    left = removed["mp_rows"] - removed["removed_same_id"] - removed["removed_same_formula"]
    lines = [
        "# Pseudo-labelled pretraining set (CHGNet 0.3.0 on perturbed MP structures)",
        "",
        f"Command: `{r['command']}`",
        "",
        f"Output (not committed, rebuilt by the command): `{r['output']}` "
        f"(sha256 `{r['output_sha256'][:16]}…`): {rows['dft']:,} DFT rows + "
        f"{rows['chgnet']:,} CHGNet rows = {rows['dft'] + rows['chgnet']:,}.",
        "",
        f"Removed before perturbing ({r['grid']}'s held-out materials): "
        f"{r['removed']['removed_same_id']} same id, {r['removed']['removed_same_formula']} "
        f"same reduced formula, of {r['removed']['mp_rows']:,} MP rows.",
        "",
        f"Perturbed and labelled: {r['seconds']['n']:,} of the "
        f"{left:,} MP structures left ({'all' if r['subset'] is None else 'a seeded random subset'}"
        f", to keep the labelling near 20 min on one shared core), drawn among those whose "
        f"elements all have a CHGNet reference ({r['removed']['without_reference']:,} do not: "
        "mp_cgcnn_36k holds no elemental crystal of S, Se, F, H, Br, I, Rh, Ce and a few "
        "more).",
        "",
        f"Perturbation (seed {r['seed']}): isotropic strain ±{r['strain']:.0%}, anisotropic "
        f"±{r['strain'] / 2:.1%}, site displacements {r['shift_angstrom'][0]}–"
        f"{r['shift_angstrom'][1]} Å.",
        "",
        "| cost per structure (ms, one core, shared CPU) | |",
        "|---|---|",
        f"| perturb (pymatgen, CIF in and out) | {per['perturb_ms']:.1f} |",
        f"| read + CHGNet graph | {per['read_and_graph_ms']:.1f} |",
        f"| CHGNet forward pass | {per['chgnet_forward_ms']:.1f} |",
        f"| total | {per['total_ms']:.1f} |",
        "",
        f"CHGNet E_f of the perturbed copy minus DFT E_f of its parent: mean "
        f"{quality['mean_chgnet_minus_dft']:+.3f} eV/atom, MAE {quality['mae_chgnet_vs_dft']:.3f} "
        f"eV/atom over {quality['n']:,} ({quality['n_without_reference']} copies had an element "
        "without a CHGNet reference and were left out).",
        "",
        f"Machine: {r['machine']['cpu']}, {r['machine']['cpu_count']} cores shared with other "
        f"jobs (load {r['machine']['load_average_1min_at_end']:.1f}), "
        f"{r['machine']['torch_threads']} torch thread.",
    ]
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> None:
    from pymatgen.core import Composition

    args = parse(argv)
    args.output = args.output or OUT / f"mp_cgcnn_36k_chgnet_s{args.seed}.csv.gz"
    start = time.perf_counter()
    from tlmat.datasets import resolve

    frame = pd.read_csv(resolve(TABLE))
    kept, counts = parents(args, frame)
    trained, references, references_s = labeller(args.cache_dir)
    # a copy of a crystal with an element CHGNet has no reference for gets no formation
    # energy: perturb only those that can be labelled
    labellable = kept[[set(Composition(f).as_dict()) <= set(references) for f in kept.formula]]
    counts["without_reference"] = len(kept) - len(labellable)
    subset = labellable
    if args.subset is not None and args.subset < len(labellable):
        subset = labellable.sample(n=args.subset, random_state=args.seed).sort_values("row")
    parts = args.output.parent / f"parts-s{args.seed}-{args.subset or 'all'}"
    parts.mkdir(parents=True, exist_ok=True)
    labelled, totals = label_all(args, subset, parts, trained, references)
    totals["references_s"] = references_s
    table = write_table(kept, labelled, args.output)
    quality = label_quality(kept, labelled)
    result = report(args, counts, totals, quality, table, time.perf_counter() - start)
    print(json.dumps({k: result[k] for k in ("rows", "per_structure")}, indent=1))


if __name__ == "__main__":
    main()
