"""Phase-diagram screening on real data (issue 11; Ekström, Lindsten & Armiento §IV C).

Two demonstrations, each writing its numbers, figures and the command under
benchmarks/results/screening/<name>/:

  mp   Held-out chemical systems of mp_cgcnn_36k. The ternary entries of a few systems
       with many entries are removed from the training data (with every entry of the same
       reduced formula); a deep ensemble of CGCNNs is trained from scratch on the rest;
       each held-out system is screened with its binaries and elements as the known
       phases and its real DFT formation energies as the oracle. Reports the oracle calls
       saved, the stable set recovered (precision / recall of hull membership), what was
       missed and by how much, and the calibration of σ on the held-out entries.

  chgnet  Ekström et al.'s scheme end to end with a real calculator in place of DFT:
       Hf–Zn–N candidates made by substituting Hf into the Ti–Zn–N and Zr–Zn–N phases
       of TAATA; levels `unrelaxed` (the substituted, rescaled cells) and `prerelaxed`
       (a few CHGNet FIRE steps); the oracle is a full CHGNet relaxation. A labelled
       subset is relaxed fully; per level an ensemble fine-tuned from the MP CGCNN learns
       the final formation energy from that level's structures; the others are screened
       level by level. (Every candidate is relaxed once to know the all-oracle hull.)

  hf   The Hf–Zn–N sample of TAATA (Tholander et al.): the related Ti–Zn–N and Zr–Zn–N
       phases, the elements and a handful of labelled Hf–Zn–N phases train an ensemble —
       fine-tuned from the MP formation-energy CGCNN, or the same architecture from
       scratch — that screens the other Hf–Zn–N phases against their DFT energies,
       repeated over several draws of the labelled phases: does transfer also sharpen σ?

Usage:
    python3 benchmarks/screening.py mp --members 5 --epochs 8 --train-limit 12000
    python3 benchmarks/screening.py hf --members 5 --repeats 3 --labelled 6
    python3 benchmarks/screening.py chgnet --members 5 --labelled 16
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
from pymatgen.core import Composition

import tlmat
from tlmat.data import load_dataset, seeded_split
from tlmat.datasets import data_dir
from tlmat.screening import (
    EKSTROM_COSTS_CORE_HOURS,
    Level,
    TableOracle,
    ensemble_predictor,
    screen,
)
from tlmat.training import TrainConfig
from tlmat.transfer.sources import fresh_like, load_source, prepare_transfer
from tlmat.uncertainty import calibration, train_ensemble

OUT = Path(__file__).parent / "results" / "screening"
CACHE = Path("/tmp/tlmat-bench-cache")
#: ternary systems of mp_cgcnn_36k with many entries and their binaries present
MP_SYSTEMS = ["Li-O-Ti", "Na-O-Ti", "N-O-Zr", "Hf-N-O", "F-Fe-O"]
#: a full relaxation (every level of Ekström et al.), core-hours per phase
FULL = sum(EKSTROM_COSTS_CORE_HOURS.values())


def machine() -> dict:
    return {
        "platform": platform.platform(),
        "cpu_count": torch.get_num_threads(),
        "tlmat": tlmat.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


def chemsys(formula: str) -> str:
    return "-".join(sorted(e.symbol for e in Composition(formula).elements))


def scratch_member(source, seed: int):
    """Module level (not a lambda) so that members can run in worker processes."""
    return fresh_like(source, seed=seed), None


def transfer_member(source, target: str, seed: int):
    return prepare_transfer("full", source, target, seed=seed)


def member_split(pool: np.ndarray, test: np.ndarray, val_size: float, seed: int):
    return seeded_split(pool, seed, test=test, val_size=val_size)


def fixed_predictor(values: dict[str, tuple[float, float]]):
    def predict(ids):
        return (np.array([values[i][0] for i in ids]), np.array([values[i][1] for i in ids]))

    return predict


def run_mp(args) -> None:
    source = load_source("cgcnn/formation-energy-per-atom")  # the architecture only
    target = "formation_energy_per_atom"
    tic = time.perf_counter()
    ds = load_dataset(
        data_dir() / "mp_cgcnn_36k" / "mp_cgcnn_36k.csv.gz",
        source.model.graph_settings,
        [target],
        cache_dir=CACHE,
        progress=True,
        workers=2,
    )
    read_s = time.perf_counter() - tic
    y = ds.targets[target]
    systems = [chemsys(f) for f in ds.formulas]
    usable = np.abs(y) <= 5.0  # MP artefacts below −5 eV/atom (SOURCE.md)
    args.systems = [chemsys(s.replace("-", "")) for s in args.systems]  # Fe-F-O → F-Fe-O
    wanted = set(args.systems)
    candidates = np.array(
        [i for i, s in enumerate(systems) if s in wanted and usable[i]], dtype=np.int64
    )
    held_formulas = {ds.formulas[i] for i in candidates}
    pool = np.array(
        [
            i
            for i in range(len(ds))
            if usable[i] and systems[i] not in wanted and ds.formulas[i] not in held_formulas
        ],
        dtype=np.int64,
    )
    full_pool = pool
    if args.train_limit and len(pool) > args.train_limit:  # the 2-core CPU budget
        pool = np.sort(np.random.default_rng(0).choice(pool, args.train_limit, replace=False))
    # structures no member trained or validated on, nor held out: to recalibrate σ
    unseen = np.setdiff1d(full_pool, pool)
    recalibration_set = np.sort(
        np.random.default_rng(1).choice(
            unseen, min(args.recalibrate_on, len(unseen)), replace=False
        )
    )
    counts = {s: sum(systems[i] == s for i in candidates) for s in args.systems}
    if not all(counts.values()):
        raise SystemExit(f"no candidates in some systems: {counts}")
    print(f"{len(ds)} structures: {len(candidates)} held-out candidates {counts}, "
          f"{len(pool)} to train on")  # fmt: skip
    config = TrainConfig(
        target=target,
        unit="eV/atom",
        epochs=args.epochs,
        lr=1e-3,
        batch_size=128,
        scheduler="plateau",
        plateau_patience=3,
        early_stopping_patience=args.epochs,
        progress_bar=False,
    )
    run_dir = Path(args.run_dir) / "mp-ensemble"
    tic = time.perf_counter()
    ensemble = train_ensemble(
        partial(scratch_member, source),
        ds,
        partial(member_split, pool, candidates, 0.05),
        config,
        run_dir,
        n_members=args.members,
    )
    train_s = time.perf_counter() - tic
    arrays = ensemble.predict(ds, candidates)
    scale = 1.0
    if len(recalibration_set) >= 2:
        from tlmat.uncertainty import fit_sigma_scale

        r = ensemble.predict(ds, recalibration_set)
        scale = fit_sigma_scale(y[recalibration_set], r["mean"], r["sigma"])
    from tlmat.evaluation.calibration import calibration_figures

    figures = calibration_figures(
        y[candidates], arrays["mean"], arrays["sigma"] * scale, OUT / "mp" / "figures",
        unit="eV/atom", label="held-out-systems", sigma_before=arrays["sigma"],
    )  # fmt: skip
    variants = {  # name: (σ scale, k)
        f"sigma-k{args.k:g}": (1.0, args.k),
        f"recalibrated-k{args.k:g}": (scale, args.k),
        "recalibrated-k1": (scale, 1.0),
    }
    out = OUT / "mp"
    oracle = TableOracle({ds.ids[i]: float(y[i]) for i in candidates}, FULL, "MP DFT")
    # per system: the candidates' ids and formulas, and the known phases (binaries, elements)
    per_system = {}
    for system in args.systems:
        elements = set(system.split("-"))
        per_system[system] = (
            [ds.ids[i] for i in candidates if systems[i] == system],
            [ds.formulas[i] for i in candidates if systems[i] == system],
            [
                (ds.formulas[i], float(y[i]))
                for i in range(len(ds))
                if usable[i] and set(systems[i].split("-")) < elements
            ],
        )
    results = {}
    for variant, (factor, k) in variants.items():
        sigma = arrays["sigma"] * factor
        predicted = {
            ds.ids[i]: (float(m), float(v))
            for i, m, v in zip(candidates, arrays["mean"], sigma, strict=True)
        }
        overall = calibration(y[candidates], arrays["mean"], sigma)
        overall["mae"] = float(np.mean(np.abs(y[candidates] - arrays["mean"])))
        rows = []
        for system, (ids, formulas, known) in per_system.items():
            result = screen(
                ids, formulas, [Level("relaxed", fixed_predictor(predicted))], oracle, known,
                k=k, reference=True,
            )  # fmt: skip
            summary = result.summary()
            result.write(out / variant / system, summary)
            cal = summary["calibration"][0]
            rows.append(
                {
                    "system": system,
                    "candidates": summary["candidates"],
                    "known": len(known),
                    "oracle_calls": summary["oracle_calls"],
                    "oracle_calls_saved": summary["oracle_calls_saved"],
                    "stable_all_oracle": len(summary["reference_stable"]),
                    "stable_found": len(summary["found_stable"]),
                    "precision": summary["precision"],
                    "recall": summary["recall"],
                    "same_stable_set": summary["same_stable_set"],
                    "missed": summary["missed"],
                    "mae": cal["mae"],
                    "coverage_1sigma": cal["coverage_1sigma"],
                    "coverage_2sigma": cal["coverage_2sigma"],
                    "mean_sigma": float(np.mean(result.levels[0].sigma)),
                }
            )
        total = sum(r["candidates"] for r in rows)
        calls = sum(r["oracle_calls"] for r in rows)
        stable = sum(r["stable_all_oracle"] for r in rows)
        missed = sum(len(r["missed"]) for r in rows)
        results[variant] = {
            "sigma_scale": factor,
            "k": k,
            "held_out_calibration": overall,
            "candidates": total,
            "oracle_calls": calls,
            "oracle_calls_saved": 1 - calls / total,
            "stable_all_oracle": stable,
            "stable_missed": missed,
            "systems": rows,
        }
        print(variant, {k2: v for k2, v in results[variant].items() if k2 != "systems"})
    summary = {
        "command": "python3 benchmarks/screening.py " + " ".join(sys.argv[1:]),
        "machine": machine(),
        "data": f"mp_cgcnn_36k ({len(ds)} structures; |E_f| > 5 eV/atom dropped); "
        f"held out: ternary entries of {args.systems} and their reduced formulas",
        "n_train_pool": len(pool),
        "train_limit": args.train_limit,
        "ensemble": {"members": args.members, "epochs": args.epochs, "val_mse": ensemble.val_mse},
        "seconds": {"read": read_s, "train_ensemble": train_s},
        "recalibration": {"n": len(recalibration_set), "sigma_scale": scale,
                          "on": "mp_cgcnn_36k entries outside every member's training and "
                          "validation data and outside the held-out systems"},
        "oracle_cost_core_hours": FULL,
        "figures": {k: str(v) for k, v in figures.items()},
        "variants": results,
    }  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))


def run_hf(args) -> None:
    source = load_source("cgcnn/formation-energy-per-atom")
    sample = data_dir() / "taata_nitrides_sample"
    ds = load_dataset(
        sample / "examples.json", source.model.graph_settings, ["E_f"], cache_dir=CACHE
    )
    y = ds.targets["E_f"]
    systems = [chemsys(f) for f in ds.formulas]
    hf = np.array([i for i, s in enumerate(systems) if s == "Hf-N-Zn"])
    rest = np.array([i for i, s in enumerate(systems) if s != "Hf-N-Zn"])
    unary = [i for i, s in enumerate(systems) if "-" not in s and s in ("Hf", "N", "Zn")]
    config = TrainConfig(
        target="E_f",
        unit="eV/atom",
        epochs=args.epochs,
        lr=args.lr,
        batch_size=16,
        scheduler="none",
        early_stopping_patience=args.patience,
        progress_bar=False,
    )
    makers = {
        "transfer (MP CGCNN, full fine-tuning)": partial(transfer_member, source, "E_f"),
        "scratch (same architecture)": partial(scratch_member, source),
    }
    results: dict[str, list[dict]] = {name: [] for name in makers}
    for repeat in range(args.repeats):
        rng = np.random.default_rng(1000 + repeat)
        labelled = np.sort(rng.choice(hf, args.labelled, replace=False))
        candidates = np.setdiff1d(hf, labelled)
        pool = np.concatenate([rest, labelled])
        known = [(ds.formulas[i], float(y[i])) for i in [*unary, *labelled]]
        oracle = TableOracle({ds.ids[i]: float(y[i]) for i in candidates}, FULL, "TAATA DFT")
        for name, maker in makers.items():
            folder = "transfer" if name.startswith("transfer") else "scratch"
            tic = time.perf_counter()
            ensemble = train_ensemble(
                maker,
                ds,
                partial(member_split, pool, candidates, 0.2),
                config,
                Path(args.run_dir) / f"hf-{folder}-r{repeat}",
                n_members=args.members,
            )
            seconds = time.perf_counter() - tic
            arrays = ensemble.predict(ds, candidates)
            predicted = {
                ds.ids[i]: (float(m), float(s))
                for i, m, s in zip(candidates, arrays["mean"], arrays["sigma"], strict=True)
            }
            result = screen(
                [ds.ids[i] for i in candidates], [ds.formulas[i] for i in candidates],
                [Level("final", fixed_predictor(predicted))], oracle, known, k=args.k,
                reference=True,
            )  # fmt: skip
            s = result.summary()
            result.write(OUT / "hf" / f"{folder}-r{repeat}", s)
            cal = s["calibration"][0]
            results[name].append(
                {
                    "repeat": repeat,
                    "labelled": [ds.ids[i] for i in labelled],
                    "candidates": len(candidates),
                    "mae": cal["mae"],
                    "mean_sigma": float(np.mean(arrays["sigma"])),
                    "mean_sigma_e": float(np.mean(arrays["sigma_e"])),
                    "sigma_a": float(arrays["sigma_a"][0]),
                    "coverage_1sigma": cal["coverage_1sigma"],
                    "coverage_2sigma": cal["coverage_2sigma"],
                    "nll": cal["nll"],
                    "spearman": cal["spearman_error_sigma"],
                    "oracle_calls_saved": s["oracle_calls_saved"],
                    "precision": s["precision"],
                    "recall": s["recall"],
                    "same_stable_set": s["same_stable_set"],
                    "seconds": seconds,
                }
            )
            print(name, {k: v for k, v in results[name][-1].items() if k != "labelled"})
    means = {
        name: {
            key: float(np.nanmean([r[key] for r in rows]))
            for key in (
                "mae",
                "mean_sigma",
                "coverage_1sigma",
                "coverage_2sigma",
                "nll",
                "spearman",
                "oracle_calls_saved",
                "precision",
                "recall",
            )
        }
        for name, rows in results.items()
    }
    summary = {
        "command": "python3 benchmarks/screening.py " + " ".join(sys.argv[1:]),
        "machine": machine(),
        "data": "taata_nitrides_sample: trained on Ti–Zn–N + Zr–Zn–N + elements + "
        f"{args.labelled} labelled Hf–Zn–N phases; screened: the other Hf–Zn–N phases",
        "ensemble": {"members": args.members, "epochs": args.epochs, "lr": args.lr},
        "k": args.k,
        "means": means,
        "repeats": results,
    }
    (OUT / "hf").mkdir(parents=True, exist_ok=True)
    (OUT / "hf" / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(means, indent=1))


def chgnet_levels(run_dir: Path, prerelax_steps: int) -> dict:
    """Every candidate at every level, computed once with CHGNet and kept in
    ``chgnet-levels.json``: structures, final formation energy (eV/atom), seconds."""
    from tlmat.io import read_records
    from tlmat.screening import CHGNetOracle, substitute

    path = run_dir / "chgnet-levels.json"
    done = json.loads(path.read_text()) if path.is_file() else None
    if done is not None and done.get("complete"):
        return done
    records = read_records(data_dir() / "taata_nitrides_sample" / "examples.json").records

    def elements(record):
        return {e.symbol for e in record.structure.composition}

    prototypes = [r for r in records if elements(r) in ({"Ti", "Zn", "N"}, {"Zr", "Zn", "N"})]
    references = [r.structure for r in records if elements(r) in ({"Hf"}, {"Zn"}, {"N"})]
    structures = substitute([r.structure for r in prototypes], {"Ti": "Hf", "Zr": "Hf"})
    ids = [f"sub-{n:02d}-{s.composition.reduced_formula}" for n, s in enumerate(structures)]
    oracle = CHGNetOracle(dict(zip(ids, structures, strict=True)), references, steps=500)
    mu = oracle.chemical_potentials()
    out: dict = done or {"mu_eV_per_atom": mu, "prerelax_steps": prerelax_steps, "candidates": {}}
    run_dir.mkdir(parents=True, exist_ok=True)
    for n, (i, structure) in enumerate(zip(ids, structures, strict=True)):
        if i in out["candidates"]:  # relaxed by an earlier, interrupted run
            continue
        tic = time.perf_counter()
        pre, _, _ = oracle.relax(structure, steps=prerelax_steps)
        pre_s = time.perf_counter() - tic
        tic = time.perf_counter()
        final, energy, steps = oracle.relax(pre)
        e_f = oracle.formation_energy(structure.composition, energy)
        out["candidates"][i] = {
            "unrelaxed": structure.as_dict(),
            "prerelaxed": pre.as_dict(),
            "final": final.as_dict(),
            "E_f": e_f,
            "steps": steps,
            "seconds": {"prerelax": pre_s, "final": time.perf_counter() - tic},
        }
        print(f"{n + 1}/{len(ids)} {i}: E_f {e_f:.3f} eV/atom, {steps} steps", flush=True)
        path.write_text(json.dumps(out))  # after each candidate: a stopped run resumes
    out["complete"] = True
    path.write_text(json.dumps(out))
    return out


def run_chgnet(args) -> None:
    from pymatgen.core import Structure

    from tlmat.io import records_from_structures, write_extxyz

    run_dir = Path(args.run_dir)
    levels_data = chgnet_levels(run_dir, args.prerelax_steps)
    ids = sorted(levels_data["candidates"])
    e_f = {i: levels_data["candidates"][i]["E_f"] for i in ids}
    source = load_source("cgcnn/formation-energy-per-atom")
    rng = np.random.default_rng(args.seed)
    labelled = sorted(rng.choice(ids, args.labelled, replace=False).tolist())
    screened = [i for i in ids if i not in set(labelled)]
    config = TrainConfig(
        target="E_f", unit="eV/atom", epochs=args.epochs, lr=args.lr, batch_size=16,
        scheduler="none", early_stopping_patience=args.patience, progress_bar=False,
    )  # fmt: skip
    levels, seconds = [], {}
    costs = {"unrelaxed": 0.0, "prerelaxed": EKSTROM_COSTS_CORE_HOURS["prerelax"]}
    for name in ("unrelaxed", "prerelaxed"):
        structures = [Structure.from_dict(levels_data["candidates"][i][name]) for i in ids]
        path = run_dir / f"chgnet-{name}.extxyz"
        result = records_from_structures(structures, ids, {"E_f": [e_f[i] for i in ids]})
        write_extxyz(result.records, path, overwrite=True)
        ds = load_dataset(path, source.model.graph_settings, ["E_f"], cache_dir=CACHE)
        where = {i: n for n, i in enumerate(ds.ids)}
        tic = time.perf_counter()
        ensemble = train_ensemble(
            partial(transfer_member, source, "E_f"),
            ds,
            partial(member_split, np.array([where[i] for i in labelled]),
                    np.array([where[i] for i in screened]), 0.25),
            config,
            run_dir / f"chgnet-ensemble-{name}-n{args.labelled}-s{args.seed}",
            n_members=args.members,
        )  # fmt: skip
        seconds[name] = time.perf_counter() - tic
        levels.append(Level(name, ensemble_predictor(ensemble, ds), costs[name]))

    def formula(i: str) -> str:
        return Structure.from_dict(
            levels_data["candidates"][i]["final"]
        ).composition.reduced_formula

    formulas = [formula(i) for i in screened]
    known = [("Hf", 0.0), ("Zn", 0.0), ("N2", 0.0)] + [(formula(i), e_f[i]) for i in labelled]
    oracle = TableOracle({i: e_f[i] for i in screened}, EKSTROM_COSTS_CORE_HOURS["final"],
                         "CHGNet 0.3.0 full relaxation")  # fmt: skip
    result = screen(screened, formulas, levels, oracle, known, k=args.k, reference=True)
    out = OUT / (args.name or "chgnet")
    s = result.summary()
    paths = result.write(out, s)
    chgnet_seconds = {
        level: float(np.mean([c["seconds"][level] for c in levels_data["candidates"].values()]))
        for level in ("prerelax", "final")
    }
    summary = {
        "command": "python3 benchmarks/screening.py " + " ".join(sys.argv[1:]),
        "machine": machine(),
        "data": f"{len(ids)} Hf–Zn–N candidates by Ti→Hf / Zr→Hf substitution of the "
        "TAATA sample's Ti–Zn–N and Zr–Zn–N phases; levels unrelaxed / prerelaxed "
        f"({levels_data['prerelax_steps']} CHGNet FIRE steps) / final (CHGNet, fmax 0.1 eV/Å)",
        "labelled": labelled,
        "ensemble": {"members": args.members, "epochs": args.epochs, "train_seconds": seconds},
        "chgnet_mean_seconds_per_candidate": chgnet_seconds,
        "costs_core_hours": {**costs, "oracle": EKSTROM_COSTS_CORE_HOURS["final"]},
        "screening": s,
        "files": {k: str(v) for k, v in paths.items()},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
    print({k: s[k] for k in ("candidates", "levels", "oracle_calls", "oracle_calls_saved",
                             "cost_saved", "precision", "recall", "same_stable_set")})  # fmt: skip
    print(s["calibration"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="demo", required=True)
    mp = sub.add_parser("mp")
    mp.add_argument("--systems", nargs="+", default=MP_SYSTEMS)
    mp.add_argument("--members", type=int, default=5)
    mp.add_argument("--epochs", type=int, default=10)
    mp.add_argument("--train-limit", type=int, default=0, help="random subset of the pool")
    mp.add_argument("--recalibrate-on", type=int, default=2000)
    mp.add_argument("--k", type=float, default=2.0)
    mp.add_argument("--run-dir", default="/tmp/tlmat-screening-runs")
    hf = sub.add_parser("hf")
    hf.add_argument("--members", type=int, default=5)
    hf.add_argument("--repeats", type=int, default=3)
    hf.add_argument("--labelled", type=int, default=6)
    hf.add_argument("--epochs", type=int, default=150)
    hf.add_argument("--patience", type=int, default=30)
    hf.add_argument("--lr", type=float, default=1e-3)
    hf.add_argument("--k", type=float, default=2.0)
    hf.add_argument("--run-dir", default="/tmp/tlmat-screening-runs")
    ch = sub.add_parser("chgnet")
    ch.add_argument("--members", type=int, default=5)
    ch.add_argument("--labelled", type=int, default=16)
    ch.add_argument("--prerelax-steps", type=int, default=10)
    ch.add_argument("--epochs", type=int, default=150)
    ch.add_argument("--patience", type=int, default=30)
    ch.add_argument("--lr", type=float, default=1e-3)
    ch.add_argument("--k", type=float, default=2.0)
    ch.add_argument("--seed", type=int, default=0)
    ch.add_argument("--name", default="", help="results folder [chgnet]")
    ch.add_argument("--run-dir", default="/tmp/tlmat-screening-runs")
    for sub_parser in (mp, hf, ch):
        sub_parser.add_argument("--threads", type=int, default=2, help="torch threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    {"mp": run_mp, "hf": run_hf, "chgnet": run_chgnet}[args.demo](args)


if __name__ == "__main__":
    main()
