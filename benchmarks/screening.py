"""Phase-diagram screening on real data (issue 11; Ekström, Lindsten & Armiento §IV C).

Four demonstrations, each writing its numbers, figures and the command under
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

  decorate  A search where most candidates are far from stable: the commonest structure
       types of mp_cgcnn_36k's small ternary oxides decorated into ternary oxide
       systems (six by default, ``--systems`` for more; every assignment of the three
       elements to the prototype's sites), each relaxed by CHGNet (the oracle; MP's
       elements and binaries relaxed the same way are the known phases). Levels
       unrelaxed / prerelaxed; the ensembles (CGCNNs fine-tuned from MP, or MLPs / ridge
       probes on a foundation model's features, ``--model``, ``--head``; with
       ``--level-energy`` the prerelaxed level also sees its prerelaxation's energy)
       learn from the other systems' oracle results plus a random fifth of the screened
       system's (``--protocol neighbours``), or from a random fifth of every system
       (``sample``). Sweeps the threshold k: oracle calls and cost saved, stable phases
       lost (two candidates that relax to the same crystal are one phase), and each
       system at the k its neighbours' results vouch for.

  hf   The Hf–Zn–N sample of TAATA (Tholander et al.): the related Ti–Zn–N and Zr–Zn–N
       phases, the elements and a handful of labelled Hf–Zn–N phases train an ensemble —
       fine-tuned from the MP formation-energy CGCNN, or the same architecture from
       scratch — that screens the other Hf–Zn–N phases against their DFT energies,
       repeated over several draws of the labelled phases: does transfer also sharpen σ?

Usage:
    python3 benchmarks/screening.py mp --members 5 --epochs 8 --train-limit 12000
    python3 benchmarks/screening.py hf --members 5 --repeats 3 --labelled 6
    python3 benchmarks/screening.py chgnet --members 5 --labelled 16
    python3 benchmarks/screening.py decorate --epochs 60 --patience 15
    python3 benchmarks/screening.py decorate --model sevennet/0 --head ridge --level-energy
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
from pymatgen.core import Composition

from tlmat.data import load_dataset, seeded_split
from tlmat.datasets import data_dir
from tlmat.screening import (
    EKSTROM_COSTS_CORE_HOURS,
    Level,
    TableOracle,
    ensemble_predictor,
    members_predictor,
    mixture_predictor,
    screen,
)
from tlmat.training import TrainConfig
from tlmat.transfer.sources import fresh_like, load_source, prepare_transfer
from tlmat.uncertainty import calibration, train_ensemble

OUT = Path(__file__).parent / "results" / "screening"
CACHE = Path("/tmp/tlmat-bench-cache")
#: ternary systems of mp_cgcnn_36k with many entries and their binaries present
MP_SYSTEMS = ["Li-O-Ti", "Na-O-Ti", "N-O-Zr", "Hf-N-O", "F-Fe-O"]
#: ternary oxide systems decorated into prototypes: each has MP binaries and known ternaries
DECORATE_SYSTEMS = ["Ba-Ti-O", "Sr-Sn-O", "Li-Al-O", "Na-Nb-O", "Ca-Zr-O", "K-Ta-O"]
#: a full relaxation (every level of Ekström et al.), core-hours per phase
FULL = sum(EKSTROM_COSTS_CORE_HOURS.values())


def machine() -> dict:
    """The machine, as every results file records it."""
    from tlmat.machine import describe

    return describe()


def chemsys(formula: str) -> str:
    return "-".join(sorted(e.symbol for e in Composition(formula).elements))


def scratch_member(source, seed: int):
    """Module level (not a lambda) so that members can run in worker processes."""
    return fresh_like(source, seed=seed), None


def transfer_member(source, target: str, seed: int, keep_head: bool = False):
    return prepare_transfer("full", source, target, seed=seed, keep_head=keep_head)


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


def relax_levels(path: Path, structures: dict, oracle, prerelax_steps: int) -> dict:
    """Every candidate at every level (unrelaxed, ``prerelax_steps`` CHGNet FIRE steps, a
    full relaxation), its final formation energy (eV/atom) and the seconds each took, kept
    in ``path`` after each candidate: a stopped run resumes where it was."""
    done = json.loads(path.read_text()) if path.is_file() else None
    if done is not None and set(structures) <= set(done["candidates"]):
        return done
    mu = oracle.chemical_potentials()
    out: dict = done or {"mu_eV_per_atom": mu, "prerelax_steps": prerelax_steps, "candidates": {}}
    path.parent.mkdir(parents=True, exist_ok=True)
    for n, (i, structure) in enumerate(structures.items()):
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
        print(f"{n + 1}/{len(structures)} {i}: E_f {e_f:.3f} eV/atom, {steps} steps", flush=True)
        path.write_text(json.dumps(out))
    out["complete"] = True
    path.write_text(json.dumps(out))
    return out


def chgnet_levels(run_dir: Path, prerelax_steps: int) -> dict:
    """The Hf–Zn–N substitution candidates at every level (:func:`relax_levels`), in
    ``chgnet-levels.json``."""
    from tlmat.io import read_records
    from tlmat.screening import CHGNetOracle, substitute

    records = read_records(data_dir() / "taata_nitrides_sample" / "examples.json").records

    def elements(record):
        return {e.symbol for e in record.structure.composition}

    prototypes = [r for r in records if elements(r) in ({"Ti", "Zn", "N"}, {"Zr", "Zn", "N"})]
    references = [r.structure for r in records if elements(r) in ({"Hf"}, {"Zn"}, {"N"})]
    structures = substitute([r.structure for r in prototypes], {"Ti": "Hf", "Zr": "Hf"})
    ids = [f"sub-{n:02d}-{s.composition.reduced_formula}" for n, s in enumerate(structures)]
    oracle = CHGNetOracle(dict(zip(ids, structures, strict=True)), references, steps=500)
    return relax_levels(run_dir / "chgnet-levels.json", oracle.structures, oracle, prerelax_steps)


def level_ensembles(
    run_dir: Path,
    levels_data: dict,
    labelled: list,
    screened: list,
    args,
    tag: str,
    heads: tuple[bool, ...] = (False,),
) -> tuple[list, dict]:
    """Per level below the oracle, an ensemble fine-tuned from the MP CGCNN on the labelled
    candidates' structures of that level (target: their final formation energy), and per
    level the seconds and validation MSE of each variant trained. ``heads``: whether the
    source's formation-energy head is kept (True) or a new one trained (False); with
    both, each level keeps the ensemble of the lower mean validation MSE (the screened
    candidates' energies are never looked at)."""
    ids = [*labelled, *screened]
    source = load_source("cgcnn/formation-energy-per-atom")
    config = TrainConfig(
        target="E_f", unit="eV/atom", epochs=args.epochs, lr=args.lr, batch_size=16,
        scheduler="none", early_stopping_patience=args.patience, progress_bar=False,
    )  # fmt: skip
    levels, seconds = [], {}
    costs = level_costs()
    for name in ("unrelaxed", "prerelaxed"):
        ds = level_dataset(run_dir / f"{tag}-{name}.extxyz", levels_data, ids, name, source)
        where = {i: n for n, i in enumerate(ds.ids)}
        split = partial(member_split, np.array([where[i] for i in labelled]),
                        np.array([where[i] for i in screened]), 0.25)  # fmt: skip
        trained = {}
        for keep in heads:
            tic = time.perf_counter()
            folder = f"{tag}-ensemble-{name}-n{len(labelled)}-s{args.seed}"
            trained[keep] = train_ensemble(
                partial(transfer_member, source, "E_f", keep_head=keep),
                ds,
                split,
                config,
                run_dir / (folder + ("-kept-head" if keep else "")),
                n_members=args.members,
            )
            seconds[f"{name}, {'kept' if keep else 'new'} head"] = {
                "seconds": time.perf_counter() - tic,
                "val_mse": float(np.mean(trained[keep].val_mse)),
            }
        ensemble = min(trained.values(), key=lambda e: float(np.mean(e.val_mse)))
        levels.append(Level(name, ensemble_predictor(ensemble, ds), costs[name]))
    return levels, seconds


def level_dataset(path: Path, levels_data: dict, ids: list, level: str, source):
    """The candidates ``ids`` at one level as a graph dataset for ``source`` (target: their
    final formation energy, eV/atom), by way of an extxyz file at ``path``."""
    from pymatgen.core import Structure

    from tlmat.io import records_from_structures, write_extxyz

    candidates = levels_data["candidates"]
    structures = [Structure.from_dict(candidates[i][level]) for i in ids]
    result = records_from_structures(structures, ids, {"E_f": [candidates[i]["E_f"] for i in ids]})
    write_extxyz(result.records, path, overwrite=True)
    return load_dataset(path, source.model.graph_settings, ["E_f"], cache_dir=CACHE)


def level_features(run_dir: Path, levels_data: dict, source_name: str) -> dict:
    """Per level below the oracle, every candidate's features from a published source:
    each layer's atom features pooled by mean, standard deviation, min and max (cached
    in ``run_dir``, as they never change; candidates added later are computed and joined
    to them): level → (ids, table)."""
    cache = run_dir / f"features-{source_name.replace('/', '-')}.npz"
    out: dict = {}
    if cache.exists():
        stored = np.load(cache)
        out = {n: (list(stored[f"{n}_ids"]), stored[n]) for n in ("unrelaxed", "prerelaxed")}
    have = set(out["unrelaxed"][0]) if out else set()
    missing = [i for i in levels_data["candidates"] if i not in have]
    if not missing:
        return out
    source = load_source(source_name)
    for name in ("unrelaxed", "prerelaxed"):
        ids, table = source_features(run_dir, source, levels_data, missing, name)
        if name in out:
            ids, table = out[name][0] + ids, np.concatenate([out[name][1], table])
        out[name] = (ids, table)
    arrays = {n: t for n, (_, t) in out.items()} | {f"{n}_ids": i for n, (i, _) in out.items()}
    np.savez(cache, **arrays)
    return out


def source_features(run_dir: Path, source, levels_data: dict, ids: list, level: str):
    """The pooled layer features (:func:`level_features`) of ``ids`` at one level."""
    from tlmat.models.pooling import MOMENTS
    from tlmat.transfer.features import feature_table, iter_layer_features

    ds = level_dataset(run_dir / f"features-{level}.extxyz", levels_data, ids, level, source)
    table, _ = feature_table(iter_layer_features(source, ds, statistics=MOMENTS))
    return list(ds.ids), table


def prerelaxed_energies(run_dir: Path, levels_data: dict, oracle) -> dict[str, float]:
    """Each candidate's formation energy (eV/atom) at its prerelaxed structure: what the
    prerelaxation computed besides the structure (one CHGNet evaluation of the stored
    structure), kept in ``decorate-prerelaxed-energies.json``."""
    from pymatgen.core import Structure

    from tlmat.screening import load_chgnet

    path = run_dir / "decorate-prerelaxed-energies.json"
    out: dict[str, float] = json.loads(path.read_text()) if path.is_file() else {}
    missing = [i for i in levels_data["candidates"] if i not in out]
    if missing:
        model = load_chgnet(oracle.version)
        for i in missing:
            structure = Structure.from_dict(levels_data["candidates"][i]["prerelaxed"])
            energy = float(model.predict_structure(structure, task="e")["e"])
            out[i] = oracle.formation_energy(structure.composition, energy)
        path.write_text(json.dumps(out))
    return out


def member_regressor(args, seed: int):
    """One member of a feature ensemble (``args.head``): tlmat's features+mlp MLP or a
    ridge probe."""
    from tlmat.transfer.features import MLPRegressor, RidgeRegressor

    if args.head == "ridge":
        return RidgeRegressor()
    return MLPRegressor(epochs=args.mlp_epochs, patience=args.mlp_patience, seed=seed)


def feature_ensembles(
    features: dict, levels_data: dict, labelled: list, args, tag: str, energies: dict | None
) -> list:
    """Per level, an ensemble of ``args.members`` regressors (``args.head``: tlmat's
    ``features+mlp`` MLP or a ridge probe) on the source's pooled features of the labelled
    candidates' structures at that level (target: the final formation energy), each
    member its own 75/25 split of the labelled ones for early stopping or the penalty;
    with ``energies`` (:func:`prerelaxed_energies`), the prerelaxed level also sees the
    energy its calculation gave. σ as Ekström et al.'s: √(mean validation MSE + the
    members' variance). The members' predictions of every candidate are kept in
    ``tag``.npz."""
    costs = level_costs()
    levels = []
    for name in ("unrelaxed", "prerelaxed"):
        ids, table = features[name]
        with_energy = energies is not None and name == "prerelaxed"
        if with_energy:
            table = np.column_stack([table, [energies[i] for i in ids]])
        head = "" if args.head == "mlp" else f"-{args.head}"
        cache = Path(f"{tag}-{name}{'-E' if with_energy else ''}{head}"
                     f"-n{len(labelled)}-e{args.mlp_epochs}-s{args.seed}.npz")  # fmt: skip
        if cache.exists():
            stored = np.load(cache)
            values, val_mse = stored["values"], stored["val_mse"]
        else:
            row = {i: n for n, i in enumerate(ids)}
            X = table[[row[i] for i in labelled]]
            y = np.array([levels_data["candidates"][i]["E_f"] for i in labelled])
            values, val_mse = [], []
            for seed in range(args.members):
                order = np.random.default_rng(seed).permutation(len(labelled))
                val, train = order[: len(order) // 4], order[len(order) // 4 :]
                member = member_regressor(args, seed)
                member.fit(X[train], y[train], X[val], y[val])
                values.append(member.predict(table))
                val_mse.append(float(np.mean((member.predict(X[val]) - y[val]) ** 2)))
            values, val_mse = np.stack(values), np.array(val_mse)
            np.savez(cache, values=values, val_mse=val_mse)
        levels.append(Level(name, members_predictor(ids, values, val_mse), costs[name]))
    return levels


def combined_levels(first: list, second: list) -> list:
    """Two ensembles' levels as one equal mixture (:func:`tlmat.screening.mixture_predictor`)."""
    return [
        Level(a.name, mixture_predictor(a.predictor, b.predictor), a.cost_core_hours)
        for a, b in zip(first, second, strict=True)
    ]


def final_formulas(levels_data: dict) -> dict[str, str]:
    """Each candidate's reduced formula, from its relaxed structure, read once."""
    from pymatgen.core import Structure

    return {
        i: Structure.from_dict(c["final"]).composition.reduced_formula
        for i, c in levels_data["candidates"].items()
    }


def level_costs() -> dict:
    """Ekström's cost of each level and of the oracle, core-hours per candidate."""
    return {
        "unrelaxed": 0.0,
        "prerelaxed": EKSTROM_COSTS_CORE_HOURS["prerelax"],
        "oracle": EKSTROM_COSTS_CORE_HOURS["final"],
    }


def run_chgnet(args) -> None:
    run_dir = Path(args.run_dir)
    levels_data = chgnet_levels(run_dir, args.prerelax_steps)
    ids = sorted(levels_data["candidates"])
    e_f = {i: levels_data["candidates"][i]["E_f"] for i in ids}
    rng = np.random.default_rng(args.seed)
    labelled = sorted(rng.choice(ids, args.labelled, replace=False).tolist())
    screened = [i for i in ids if i not in set(labelled)]
    levels, seconds = level_ensembles(run_dir, levels_data, labelled, screened, args, "chgnet")
    costs = level_costs()
    formula = final_formulas(levels_data)
    formulas = [formula[i] for i in screened]
    known = [("Hf", 0.0), ("Zn", 0.0), ("N2", 0.0)] + [(formula[i], e_f[i]) for i in labelled]
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
        "costs_core_hours": costs,
        "screening": s,
        "files": {k: str(v) for k, v in paths.items()},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
    print({k: s[k] for k in ("candidates", "levels", "oracle_calls", "oracle_calls_saved",
                             "cost_saved", "precision", "recall", "same_stable_set")})  # fmt: skip
    print(s["calibration"])


def decorate_setup(run_dir: Path, systems: list[str], max_sites: int, min_members: int) -> dict:
    """Prototypes (the most common structure types among mp_cgcnn_36k's ternary oxides of
    at most ``max_sites`` sites: a representative of each anonymous StructureMatcher group of
    at least ``min_members`` entries), every decoration of each into each system, and per
    system the known phases (MP's elements and binaries, the lowest-energy entry of each
    reduced formula). Chosen once and kept in ``decorate-setup.json``."""
    from pymatgen.analysis.structure_matcher import StructureMatcher

    from tlmat.io import read_records
    from tlmat.screening import _numbered, decorate

    path = run_dir / "decorate-setup.json"
    earlier = json.loads(path.read_text()) if path.is_file() else None
    if earlier is not None and set(systems) <= set(earlier["systems"]):
        return earlier
    records = read_records(data_dir() / "mp_cgcnn_36k" / "mp_cgcnn_36k.csv.gz").records
    energy = {r.id: float(r.targets["formation_energy_per_atom"]) for r in records}
    oxides = [
        r for r in records
        if len(r.structure) <= max_sites and len(r.structure.composition.elements) == 3
        and "O" in {e.symbol for e in r.structure.composition.elements}
    ]  # fmt: skip
    groups = StructureMatcher().group_structures([r.structure for r in oxides], anonymous=True)
    by_structure = {id(r.structure): r for r in oxides}
    chosen = [by_structure[id(g[0])] for g in sorted(groups, key=len, reverse=True)]
    chosen = [r for r, g in zip(chosen, sorted(groups, key=len, reverse=True), strict=True)
              if len(g) >= min_members]  # fmt: skip
    element_sets = [{e.symbol for e in r.structure.composition} for r in records]
    if earlier is not None and [r.id for r in chosen] != [p["id"] for p in earlier["prototypes"]]:
        raise SystemExit(f"{path}: other prototypes than these data give; move it away")
    candidates, known, pure = {}, {}, {}
    for system in (t for t in systems if earlier is None or t not in earlier["systems"]):
        elements = system.split("-")
        made, names = [], []
        for prototype in chosen:
            decorated = decorate([prototype.structure], elements)
            made += decorated
            names += [f"{system}|{prototype.id}>{c.composition.reduced_formula}" for c in decorated]
        candidates.update({i: c.as_dict() for i, c in zip(_numbered(names), made, strict=True)})
        lowest: dict[str, object] = {}
        for r, present in zip(records, element_sets, strict=True):
            if present < set(elements):
                f = next(iter(present)) if len(present) == 1 else r.structure.reduced_formula
                if f not in lowest or energy[r.id] < energy[lowest[f].id]:
                    lowest[f] = r
        known[system] = {f: r.structure.as_dict() for f, r in lowest.items() if f not in elements}
        for e in elements:  # the elemental references of the formation energies
            pure[e] = lowest[e].structure.as_dict()
    if earlier is not None:  # systems added later: the earlier ones' candidates stay as they were
        systems = [*earlier["systems"], *(t for t in systems if t not in earlier["systems"])]
        candidates = earlier["candidates"] | candidates
        known, pure = earlier["known"] | known, earlier["elements"] | pure
    setup = {
        "systems": systems,
        "prototypes": [
            {
                "id": r.id,
                "formula": r.structure.composition.reduced_formula,
                "sites": len(r.structure),
            }
            for r in chosen
        ],
        "candidates": candidates,
        "known": known,
        "elements": pure,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(setup))
    return setup


def known_energies(run_dir: Path, setup: dict, oracle) -> dict[str, dict[str, float]]:
    """Per system, the known phases' CHGNet formation energies (eV/atom; relaxed as the
    candidates are), kept in ``decorate-known.json``."""
    from pymatgen.core import Structure

    path = run_dir / "decorate-known.json"
    out: dict[str, dict[str, float]] = json.loads(path.read_text()) if path.is_file() else {}
    if set(setup["known"]) <= set(out):
        return out
    relaxed = {formula: e for phases in out.values() for formula, e in phases.items()}
    for system, phases in setup["known"].items():
        if system in out:
            continue
        out[system] = {}
        for formula, structure in phases.items():
            if formula not in relaxed:
                s = Structure.from_dict(structure)
                _, energy, _ = oracle.relax(s)
                relaxed[formula] = oracle.formation_energy(s.composition, energy)
            out[system][formula] = relaxed[formula]
    path.write_text(json.dumps(out))
    return out


def screen_decorated(levels_data, known, plans: dict, k: float, formula: dict) -> dict:
    """Each system screened with threshold ``k`` by its plan's ensembles (``plans``: system
    → (levels, labelled ids, screened ids)); the hull of one system at a time: its
    elements, binaries and labelled candidates are the known phases. Summed over systems;
    the campaign cost counts the system's own labelled candidates, computed in full;
    ``formula``: each candidate's reduced formula (:func:`final_formulas`)."""
    e_f = {i: c["E_f"] for i, c in levels_data["candidates"].items()}
    oracle = TableOracle(e_f, EKSTROM_COSTS_CORE_HOURS["final"], "CHGNet 0.3.0 full relaxation")
    twins = same_relaxed_phase(levels_data)
    rows, results = [], {}
    for system, (levels, labelled, screened) in plans.items():
        ids = [i for i in screened if i.startswith(system + "|")]
        own = [i for i in labelled if i.startswith(system + "|")]
        phases = [(e, 0.0) for e in system.split("-")] + list(known[system].items())
        phases += [(formula[i], e_f[i]) for i in own]
        result = screen(ids, [formula[i] for i in ids], levels, oracle, phases, k=k,
                        reference=True, same_phase=twins)  # fmt: skip
        s = result.summary()
        results[system] = (result, s)
        rows.append({
            "system": system, "labelled": len(own), "screened": len(ids),
            "oracle_calls": s["oracle_calls"], "cost": s["cost_core_hours"],
            "all_oracle_cost": s["all_oracle_cost_core_hours"],
            "stable": len(s["reference_stable"]), "missed": len(s["missed"]),
            "found_as_twin": s["found_as"], "same_stable_set": s["same_stable_set"],
            "mae": [level["mae"] for level in s["calibration"]],
            "mean_sigma": [float(np.mean(level.sigma)) for level in result.levels],
            "kept_per_level": [level["kept"] for level in s["levels"]],
        })  # fmt: skip
    return {"total": systems_total(rows, k), "results": results}


def systems_total(rows: list[dict], k) -> dict:
    """The systems' screens summed: oracle calls, the share of calls and of cost saved
    (the campaign's cost counting each system's labelled candidates, computed in full),
    stable phases and the ones lost."""
    screened_n = sum(r["screened"] for r in rows)
    calls = sum(r["oracle_calls"] for r in rows)
    cost, all_cost = sum(r["cost"] for r in rows), sum(r["all_oracle_cost"] for r in rows)
    labelled_cost = sum(r["labelled"] for r in rows) * FULL
    return {
        "k": k, "screened": screened_n, "oracle_calls": calls,
        "oracle_calls_saved": 1 - calls / screened_n, "cost_saved": 1 - cost / all_cost,
        "campaign_cost_saved": 1 - (cost + labelled_cost) / (all_cost + labelled_cost),
        "stable": sum(r["stable"] for r in rows), "missed": sum(r["missed"] for r in rows),
        "systems": rows,
    }  # fmt: skip


def k_from_neighbours(sweep: list[dict]) -> dict:
    """Each system screened at the k its neighbours vouch for, chosen without its own
    results: the smallest k of the sweep from which on no stable phase of the *other*
    systems is lost (a campaign has their oracle results). Summed as :func:`systems_total`,
    with each system's k."""
    by_k = {t["k"]: {r["system"]: r for r in t["systems"]} for t in sweep}
    ks = sorted(by_k, reverse=True)
    rows = []
    for system in by_k[ks[0]]:
        chosen = ks[0]
        for k in ks:  # from the largest down, while the neighbours lose nothing
            if any(r["missed"] for t, r in by_k[k].items() if t != system):
                break
            chosen = k
        rows.append({**by_k[chosen][system], "k": chosen})
    return systems_total(rows, "chosen by the other systems")


def same_relaxed_phase(levels_data: dict):
    """Whether two candidates relaxed to the same crystal (pymatgen's StructureMatcher on
    the oracle's relaxed structures): two decorations of one prototype can relax into one
    phase, a fraction of a meV/atom apart, and finding either finds that phase."""
    from functools import cache

    from pymatgen.analysis.structure_matcher import StructureMatcher
    from pymatgen.core import Structure

    matcher = StructureMatcher()
    relaxed = cache(lambda i: Structure.from_dict(levels_data["candidates"][i]["final"]))

    def same(a: str, b: str) -> bool:
        return matcher.fit(relaxed(a), relaxed(b))

    return same


def decorate_plans(run_dir, levels_data, systems, args, energies=None) -> tuple[dict, dict]:
    """Per system, the ensembles that screen it and what they trained on. ``sample``: one
    pair of ensembles for every system, trained on a random ``labelled_fraction`` of all
    candidates (a new head or the source's kept, chosen by validation). ``neighbours``:
    each system's own, trained on every other system's oracle results (as Ekström et al.
    transfer from neighbouring phase diagrams) plus a random ``labelled_fraction`` of its
    own candidates, with the source's head kept. ``energies``: the prerelaxation's own
    energies, an input of a feature ensemble's prerelaxed level (:func:`feature_ensembles`)."""
    ids = list(levels_data["candidates"])
    rng = np.random.default_rng(args.seed)
    if args.protocol == "sample":
        labelled = sorted(rng.choice(ids, round(args.labelled_fraction * len(ids)), False))
        screened = [i for i in ids if i not in set(labelled)]
        levels, info = level_ensembles(
            run_dir, levels_data, labelled, screened, args, "decorate", heads=(False, True)
        )
        return {system: (levels, labelled, screened) for system in systems}, info
    plans, info = {}, {}
    models = args.model.split("+")
    for system in systems:
        own = [i for i in ids if i.startswith(system + "|")]
        sample = sorted(rng.choice(own, round(args.labelled_fraction * len(own)), False))
        labelled = [i for i in ids if i not in set(own)] + sample
        screened = [i for i in own if i not in set(sample)]
        per_model, info[system] = [], {}
        for model in models:
            tic = time.perf_counter()
            if model == "cgcnn":
                levels, info[system][model] = level_ensembles(
                    run_dir, levels_data, labelled, screened, args, f"decorate-{system}", (True,)
                )
            else:
                features = level_features(run_dir, levels_data, model)
                tag = str(run_dir / f"mlp-{model.replace('/', '-')}-{system}")
                levels = feature_ensembles(features, levels_data, labelled, args, tag, energies)
                info[system][model] = {"seconds": time.perf_counter() - tic}
            per_model.append(levels)
        levels = per_model[0] if len(per_model) == 1 else combined_levels(*per_model)
        plans[system] = (levels, labelled, screened)
    return plans, info


def recalibrated(levels_data, plans: dict) -> tuple[dict, dict]:
    """``plans`` with each system's σ scaled, per level, by the factor that fits the *other*
    systems' screened candidates best (:func:`tlmat.uncertainty.fit_sigma_scale` on each
    other system's ensemble predicting its own screened candidates, which none of its
    members trained or validated on, against their oracle energies: in a campaign, the
    systems already computed). The screened system's own energies are never used."""
    from tlmat.uncertainty import fit_sigma_scale

    y = {i: c["E_f"] for i, c in levels_data["candidates"].items()}
    seen = {}  # (system, level) → (y, mean, σ) on that system's screened candidates
    for system, (levels, _, screened) in plans.items():
        for j, level in enumerate(levels):
            mean, sigma = level.predictor(screened)
            seen[system, j] = (np.array([y[i] for i in screened]), mean, sigma)
    out, scales = {}, {}
    for system, (levels, labelled, screened) in plans.items():
        scaled = []
        for j, level in enumerate(levels):
            others = [seen[t, j] for t in plans if t != system]
            factor = fit_sigma_scale(*(np.concatenate(part) for part in zip(*others, strict=True)))
            scales[f"{system}, {level.name}"] = factor

            def predict(ids, predictor=level.predictor, factor=factor):
                mean, sigma = predictor(ids)
                return mean, factor * np.asarray(sigma)

            scaled.append(Level(level.name, predict, level.cost_core_hours))
        out[system] = (scaled, labelled, screened)
    return out, scales


def plot_savings(rows: list[dict], path: Path) -> None:
    """Cost saved and stable phases lost against the threshold k."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    ks = [r["k"] for r in rows]
    ax.plot(ks, [100 * r["oracle_calls_saved"] for r in rows], "o-", label="oracle calls saved")
    ax.plot(ks, [100 * r["campaign_cost_saved"] for r in rows], "s--",
            label="campaign cost saved (labelled set included)")  # fmt: skip
    ax.set_xlabel("threshold k (drop when E_hull > kσ)")
    ax.set_ylabel("saved (%)")
    ax.set_ylim(0, 100)
    lost = ax.twinx()
    lost.bar(ks, [r["missed"] for r in rows], width=0.15, color="tab:red", alpha=0.4)
    lost.set_ylabel("stable phases lost", color="tab:red")
    lost.set_ylim(0, max(3, max(r["missed"] for r in rows) + 1))
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)


def ensemble_record(args, seconds: dict) -> dict:
    """What screened each system, for the summary: the model(s), members and training."""
    record: dict = {"members": args.members, "model": args.model, "variants": seconds}
    if "cgcnn" in args.model.split("+"):
        record["cgcnn"] = {
            "epochs": args.epochs,
            "head": "per level, the variant of the lower mean validation MSE"
            if args.protocol == "sample"
            else "the source's, kept (the lower validation MSE at both levels under sample)",
            "source": "cgcnn/formation-energy-per-atom (saw MP's entries of these "
            "systems, not the decorated candidates)",
        }
    for model in (m for m in args.model.split("+") if m != "cgcnn"):
        record[model] = {
            "features": "every layer's atom features pooled by mean, std, min and max",
            "head": "tlmat's features+mlp MLP (Gupta's 17 layers), each member its own "
            "75/25 split of the labelled candidates",
            "epochs": args.mlp_epochs,
            "patience": args.mlp_patience,
            "sigma": "sqrt(mean validation MSE + members' variance) (Ekström et al.)",
            "source": f"{model} (trained on MPtrj: saw MP's relaxations of these systems' "
            "known phases, not the decorated candidates; same training data as the CHGNet "
            "oracle, so closer to it than to DFT)",
        }
    if "+" in args.model:
        record["combined"] = "equal mixture: mean of means; sigma^2 = mean sigma^2 + (m1-m2)^2/4"
    return record


def run_decorate(args) -> None:
    from pymatgen.core import Structure

    from tlmat.screening import CHGNetOracle

    run_dir = Path(args.run_dir) / "decorate"
    setup = decorate_setup(run_dir, args.systems, args.max_sites, args.min_members)
    candidates = {
        i: Structure.from_dict(d)
        for i, d in setup["candidates"].items()
        if i.split("|")[0] in args.systems  # the setup may hold more systems than this run's
    }
    print(f"{len(setup['prototypes'])} prototypes, {len(candidates)} candidates", flush=True)
    elements = sorted({e for s in args.systems for e in s.split("-")})
    references = [Structure.from_dict(setup["elements"][e]) for e in elements]
    oracle = CHGNetOracle(candidates, references, steps=args.steps)
    known = known_energies(run_dir, setup, oracle)
    levels_data = relax_levels(run_dir / "decorate-levels.json", candidates, oracle,
                               args.prerelax_steps)  # fmt: skip
    levels_data = {
        **levels_data,
        "candidates": {i: levels_data["candidates"][i] for i in candidates},
    }
    ids = list(candidates)
    energies = prerelaxed_energies(run_dir, levels_data, oracle) if args.level_energy else None
    plans, seconds = decorate_plans(run_dir, levels_data, args.systems, args, energies)
    scales = {}
    if args.recalibrate:
        plans, scales = recalibrated(levels_data, plans)
    recalibration = "-recalibrated" if args.recalibrate else ""
    out = OUT / (args.name or f"decorate-{args.protocol}{recalibration}")
    sweep, formulas = [], final_formulas(levels_data)
    for k in args.k_grid:
        screened_k = screen_decorated(levels_data, known, plans, k, formulas)
        sweep.append(screened_k["total"])
        if k == args.k:
            for system, (result, s) in screened_k["results"].items():
                result.write(out / system, s)
        print({key: v for key, v in screened_k["total"].items() if key != "systems"}, flush=True)
    plot_savings(sweep, out / "savings.png")
    chosen = None
    if args.protocol == "neighbours":  # under sample, one ensemble screens every system
        chosen = k_from_neighbours(sweep)
        print({key: v for key, v in chosen.items() if key != "systems"}, flush=True)
        print({r["system"]: r["k"] for r in chosen["systems"]}, flush=True)
    e_f = np.array([levels_data["candidates"][i]["E_f"] for i in ids])
    steps = np.array([levels_data["candidates"][i]["steps"] for i in ids])
    summary = {
        "command": "python3 benchmarks/screening.py " + " ".join(sys.argv[1:]),
        "machine": machine(),
        "data": f"{len(ids)} candidates: {len(setup['prototypes'])} prototypes (the commonest "
        f"structure types of mp_cgcnn_36k's ternary oxides of ≤ {args.max_sites} sites, "
        f"≥ {args.min_members} entries each) decorated into {', '.join(args.systems)}",
        "prototypes": setup["prototypes"],
        "oracle": f"CHGNet 0.3.0 relaxation (FIRE, fmax 0.1 eV/Å, ≤ {args.steps} steps) after "
        f"{args.prerelax_steps} prerelaxation steps; formation energies against CHGNet-relaxed "
        "MP elements; known phases: MP's elements and binaries relaxed the same way",
        "candidate_E_f_quantiles_eV_per_atom": np.quantile(e_f, [0.1, 0.5, 0.9]).tolist(),
        "relaxations_unconverged": int((steps >= args.steps).sum()),
        "protocol": args.protocol,
        "labelled": {
            "fraction": args.labelled_fraction,
            "own": {
                system: sorted(i for i in plan[1] if i.startswith(system + "|"))
                for system, plan in plans.items()
            },
        },
        "ensemble": ensemble_record(args, seconds),
        "chgnet_mean_seconds_per_candidate": {
            level: float(np.mean([c["seconds"][level] for c in levels_data["candidates"].values()]))
            for level in ("prerelax", "final")
        },
        "costs_core_hours": level_costs(),
        "k": args.k,
        "sigma_scales": scales,
        "sweep": sweep,
        "k_from_neighbours": chosen,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=float))


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
    de = sub.add_parser("decorate")
    de.add_argument("--systems", nargs="+", default=DECORATE_SYSTEMS)
    de.add_argument("--max-sites", type=int, default=5)
    de.add_argument("--min-members", type=int, default=5)
    de.add_argument("--steps", type=int, default=200, help="largest full relaxation")
    de.add_argument("--labelled-fraction", type=float, default=0.2)
    de.add_argument(
        "--protocol",
        choices=["sample", "neighbours"],
        default="neighbours",
        help="what the ensembles learn from: a random sample of every system, or the "
        "other systems' oracle results plus a sample of the screened one [neighbours]",
    )
    de.add_argument("--members", type=int, default=5)
    de.add_argument(
        "--model",
        default="cgcnn",
        help="cgcnn (fine-tuned from the MP CGCNN), a published source whose pooled "
        "features an MLP ensemble learns from (e.g. sevennet/0), or two of them joined "
        "by + as one equal mixture (cgcnn+sevennet/0); neighbours protocol only",
    )
    de.add_argument(
        "--head",
        choices=["mlp", "ridge"],
        default="mlp",
        help="a feature ensemble's members: tlmat's features+mlp MLP or a ridge probe [mlp]",
    )
    de.add_argument(
        "--level-energy",
        action="store_true",
        help="feature ensembles: the prerelaxed level also sees the energy its "
        "prerelaxation computed (CHGNet, eV/atom)",
    )
    de.add_argument("--mlp-epochs", type=int, default=500, help="an MLP member's most")
    de.add_argument("--mlp-patience", type=int, default=50)
    de.add_argument("--prerelax-steps", type=int, default=10)
    de.add_argument("--epochs", type=int, default=100)
    de.add_argument("--patience", type=int, default=20)
    de.add_argument("--lr", type=float, default=1e-3)
    de.add_argument(
        "--recalibrate",
        action="store_true",
        help="neighbours only: scale each system's σ by the factor fitted on the other "
        "systems' screened candidates (never its own)",
    )
    de.add_argument("--k", type=float, default=2.0)
    de.add_argument("--k-grid", type=float, nargs="+", default=[0.5, 1.0, 1.5, 2.0, 2.5, 3.0])
    de.add_argument("--seed", type=int, default=0)
    de.add_argument("--name", default="", help="results folder [decorate]")
    de.add_argument("--run-dir", default="/tmp/tlmat-screening-runs")
    for sub_parser in (mp, hf, ch, de):
        sub_parser.add_argument("--threads", type=int, default=2, help="torch threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    {"mp": run_mp, "hf": run_hf, "chgnet": run_chgnet, "decorate": run_decorate}[args.demo](args)


if __name__ == "__main__":
    main()
