"""Benchmark: which layer of a pretrained ALIGNN transfers best? (Gupta et al., Table 1;
tlmat issue 27, point 5)

1. A small ALIGNN (``alignn-atomwise-pure``: 2 ALIGNN + 2 GCN layers, 64 wide) is
   pretrained on Materials Project formation energies (mp_cgcnn_36k, eV/atom) by
   :func:`tlmat.experiments.pretraining.pretrain_source`, which removes every material of
   the target's test set (same id or same reduced formula) first.
2. Target: log10 K_VRH (log10 GPa) of mp_elasticity_3k with the fixed split of
   benchmarks/configs/lee-asahi-bulk.yaml (its 600 test structures, its 200 validation
   structures, and its seeded draws of N training structures).
3. Every feature set of Gupta et al. (:func:`tlmat.models.alignn.gupta_feature_sets`:
   atom, bond, angle, atom+bond, atom+bond+angle of each checkpoint, the last
   atom+bond+angle, and every layer together), pooled by the mean and by
   mean+std+min+max, is fitted with ridge regression (standardised, α by validation MAE)
   and, on three mean-pooled sets (:data:`MLP_SETS`), with Gupta's 17-layer MLP. The same
   ALIGNN with random weights (drawn per seed) is the control. Validation picks; test MAE
   once per seed.

Run:  python3 benchmarks/alignn_layers.py [--seeds 0 1 2] [--size 500] [--heads ridge mlp]
Writes benchmarks/results/alignn-layers/{README.md,results.json} (the command, machine and
what was cut in them); the source's pretrain.json beside them, in source/. A rerun with
the same source and size reuses the fits results.json holds and fits only new ones.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tlmat.experiments.benchmark import (  # noqa: E402
    BenchmarkConfig,
    grid_data,
    held_out_materials,
    training_subset,
)
from tlmat.experiments.pretraining import PretrainConfig, pretrain_source  # noqa: E402
from tlmat.models.alignn import gupta_feature_sets  # noqa: E402
from tlmat.models.hub import load_source  # noqa: E402
from tlmat.models.pooling import MEAN, MOMENTS  # noqa: E402
from tlmat.models.registry import model_config  # noqa: E402
from tlmat.transfer.features import (  # noqa: E402
    MLPRegressor,
    RidgeRegressor,
    feature_table,
    iter_layer_features,
    select_layers,
    statistic_columns,
)
from tlmat.transfer.sources import fresh_model  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "alignn-layers"
GRID = REPO / "benchmarks" / "configs" / "lee-asahi-bulk.yaml"
#: the grid's own results, for its training draws and its methods' test MAE
GRID_RESULTS = REPO / "benchmarks" / "results" / "lee-asahi-bulk"
MODEL = "alignn-atomwise-pure"
#: cut for a third of a shared CPU core (an epoch of 3,600 MP structures took 6.6 min):
#: 2,000 structures (1,800 trained on), 8 epochs, one-cycle LR
SOURCE = PretrainConfig(
    data="mp_cgcnn_36k/mp_cgcnn_36k.csv.gz",
    target="formation_energy_per_atom",
    unit="eV/atom",
    size=2000,
    max_abs_target=5.0,  # MP artefacts below -5 eV/atom, as in lee-asahi-bulk's sources
    model=MODEL,
    training={
        "epochs": 8,
        "batch_size": 32,
        "scheduler": "onecycle",
        "early_stopping_patience": None,
    },
)


def target_data(cache: Path):
    """The grid's target dataset as ALIGNN graphs and its fixed split: lee-asahi-bulk's
    test set rule on the structures both its scratch model and ALIGNN can use (every
    structure of mp_elasticity_3k, so the same test set as the grid's; the other sources'
    graphs, a foundation model's among them, are not built)."""
    config = BenchmarkConfig.from_yaml(GRID)
    settings = model_config(MODEL).graph_settings()
    dataset, fixed = grid_data(config, cache, settings, every_model=False)
    return config, dataset, fixed


def pretrained(config: BenchmarkConfig, dataset, fixed, cache: Path) -> Path:
    """The source's model.pt, pretrained (or reused) without the target's test materials."""
    ids, formulas = held_out_materials(config, dataset, fixed)
    return pretrain_source(SOURCE, ids, formulas, RESULTS / "source", cache)


POOLINGS = {"mean": MEAN, "mean+std+min+max": MOMENTS}
#: the sets Gupta's 17-layer MLP is fitted on (mean-pooled), cut for the CPU (about two
#: minutes a fit on a shared core): the embedding's atom+bond+angle, the last
#: atom+bond+angle (Gupta's choice) and all layers
MLP_SETS = ("embedding.atom+bond+angle", "last.atom+bond+angle", "all")
#: the MLP's training cut from Gupta's patience 200 (tlmat's default: 500 epochs / 50)
MLP_EPOCHS, MLP_PATIENCE = 300, 30
SOURCES = ("pretrained", "random weights")


def layer_columns(names: list[str]) -> dict[tuple[str, str], np.ndarray]:
    """(feature set, pooling) → the columns of the feature table ``names`` that hold it."""
    available = list(dict.fromkeys(n.rsplit(":", 1)[0] for n in names))
    column_layer = np.array([n.rsplit(":", 1)[0] for n in names])
    out = {}
    for label, layers in gupta_feature_sets(available).items():
        chosen = np.isin(column_layer, select_layers(available, layers))
        for pooling, statistics in POOLINGS.items():
            out[label, pooling] = chosen & statistic_columns(names, statistics)
    return out


def features_of(trained, dataset) -> tuple[np.ndarray, list[str]]:
    """Every layer's atom, bond and angle features of every structure, pooled by every
    moment (``embedding_out`` left out: it is the last layer's mean atom features)."""
    X, names = feature_table(iter_layer_features(trained, dataset, statistics=MOMENTS))
    keep = np.array([not n.startswith("embedding_out") for n in names])
    return X[:, keep], [n for n, k in zip(names, keep, strict=True) if k]


def wants_mlp(label: str, pooling: str) -> bool:
    return pooling == "mean" and label in MLP_SETS


def fit_head(head: str, seed: int, X: np.ndarray, y: np.ndarray, parts) -> dict:
    """One head on one feature set: validation and test MAE (log10 GPa)."""
    train, val, test = parts
    if head == "ridge":
        model = RidgeRegressor().fit(X[train], y[train], X[val], y[val])
        extra = {"alpha": model.alpha}
    else:
        model = MLPRegressor(epochs=MLP_EPOCHS, patience=MLP_PATIENCE, seed=seed)
        model = model.fit(X[train], y[train], X[val], y[val])
        extra = {}
    return {"val_mae": mae(model.predict(X[val]), y[val]),
            "test_mae": mae(model.predict(X[test]), y[test]), **extra}  # fmt: skip


def mae(predicted: np.ndarray, true: np.ndarray) -> float:
    return float(np.abs(predicted - true).mean())


def spread(values: list[float]) -> dict[str, float]:
    """Mean and sample standard deviation (0 for one value) of test MAEs."""
    test = np.asarray(values, dtype=float)
    return {
        "test_mae": float(test.mean()),
        "test_std": float(test.std(ddof=1)) if len(test) > 1 else 0.0,
    }


def sweep(source: str, X, names, y, parts, seed: int, heads: list[str], done: dict) -> list[dict]:
    """Every (feature set, pooling, head) of one source and seed; those in ``done`` (a
    finished run's rows by key) are taken from there."""
    rows = []
    for (label, pooling), columns in layer_columns(names).items():
        for head in heads:
            if head == "mlp" and not wants_mlp(label, pooling):
                continue
            if (key := (source, label, pooling, head, seed)) in done:
                rows.append(done[key])
                continue
            start = time.perf_counter()
            row = fit_head(head, seed, X[:, columns], y, parts)
            rows.append({
                "source": source, "set": label, "pooling": pooling, "head": head,
                "seed": seed, "n_features": int(columns.sum()), **row,
                "seconds": time.perf_counter() - start,
            })  # fmt: skip
            print(f"{source} s{seed} {label} [{pooling}] {head}: val {row['val_mae']:.4f} "
                  f"test {row['test_mae']:.4f}", flush=True)  # fmt: skip
    return rows


def base_row(y: np.ndarray, parts, seed: int) -> dict:
    """Gupta's Base model: the training mean for every structure."""
    train, val, test = parts
    mean = np.full(len(y), y[train].mean())
    errors = {"val_mae": mae(mean[val], y[val]), "test_mae": mae(mean[test], y[test])}
    labels = {"source": "base", "set": "—", "pooling": "—", "head": "mean"}
    return {**labels, "seed": seed, "n_features": 0, **errors, "seconds": 0.0}


def run_sweep(args, config, dataset, fixed, model_file: Path) -> tuple[list[dict], dict]:
    """Rows of every seed: the base model, then each source's sweep (random weights
    drawn anew per seed); and whether each seed's training set is the grid's."""
    y = dataset.targets[config.target]
    pretrained_table = features_of(load_source(model_file), dataset)
    rows, same, done = [], {}, finished_rows(args.size)
    for seed in args.seeds:
        train = training_subset(config, fixed.train, args.size, seed)
        same[seed] = same_as_grid([dataset.ids[i] for i in train], args.size, seed)
        parts = (train, fixed.val, fixed.test)
        rows.append(base_row(y, parts, seed))
        rows += sweep("pretrained", *pretrained_table, y, parts, seed, args.heads, done)
        random_table = features_of(fresh_model(model_config(MODEL), seed), dataset)
        rows += sweep("random weights", *random_table, y, parts, seed, args.heads, done)
    return rows, same


def finished_rows(size: int) -> dict[tuple, dict]:
    """The rows of the results.json already written for this source (same settings and
    held-out materials: its spec hash) and training size, by (source, set, pooling,
    head, seed): a rerun that adds heads or seeds fits only what is new."""
    try:
        before = json.loads((RESULTS / "results.json").read_text())
        source = json.loads((RESULTS / "source" / "pretrain.json").read_text())
    except (OSError, ValueError):
        return {}
    if before["source"]["spec_hash"] != source["spec_hash"] or before["size"] != size:
        return {}
    keys = ("source", "set", "pooling", "head", "seed")
    return {tuple(r[k] for k in keys): r for r in before["rows"] if r["source"] != "base"}


def same_as_grid(train_ids: list[str], size: int, seed: int) -> bool | None:
    """Whether lee-asahi-bulk's job of this size and seed trained on these structures
    (``None``: its results are not at hand)."""
    found = GRID_RESULTS / "common" / f"n{size}-s{seed}" / "scratch" / "result.json"
    if not found.exists():
        return None
    return sorted(json.loads(found.read_text())["split_ids"]["train"]) == sorted(train_ids)


def summarise(rows: list[dict]) -> list[dict]:
    """Mean ± sample std of the test MAE and mean validation MAE of every (source, set,
    pooling, head) over the seeds."""
    keys = list(dict.fromkeys((r["source"], r["set"], r["pooling"], r["head"]) for r in rows))
    out = []
    for key in keys:
        part = [r for r in rows if (r["source"], r["set"], r["pooling"], r["head"]) == key]
        out.append({
            **dict(zip(("source", "set", "pooling", "head"), key, strict=True)),
            **spread([r["test_mae"] for r in part]),
            "val_mae": float(np.mean([r["val_mae"] for r in part])), "n_seeds": len(part),
            "n_features": part[0]["n_features"],
        })  # fmt: skip
    return out


#: selections by validation MAE, per seed: (label, which rows compete)
SELECTIONS = {
    "pretrained, ridge: any set and pooling": lambda r: (
        r["source"] == "pretrained" and r["head"] == "ridge"
    ),
    "pretrained, MLP: any of its sets": lambda r: (
        r["source"] == "pretrained" and r["head"] == "mlp"
    ),
    "pretrained, any head, set and pooling": lambda r: r["source"] == "pretrained",
    "random weights, ridge: any set and pooling": lambda r: (
        r["source"] == "random weights" and r["head"] == "ridge"
    ),
    "random weights, MLP: any of its sets": lambda r: (
        r["source"] == "random weights" and r["head"] == "mlp"
    ),
    "random weights, any head, set and pooling": lambda r: r["source"] == "random weights",
}


def selections(rows: list[dict], seeds: list[int]) -> list[dict]:
    """For each selection: the lowest-validation-MAE row of each seed, its test MAE."""
    out = []
    for label, competes in SELECTIONS.items():
        picked = []
        for seed in seeds:
            pool = [r for r in rows if r["seed"] == seed and competes(r)]
            if pool:
                picked.append(min(pool, key=lambda r: r["val_mae"]))
        if picked:
            out.append({
                "selection": label,
                "picked": [{k: r[k] for k in ("seed", "set", "pooling", "head")} for r in picked],
                **spread([r["test_mae"] for r in picked]),
            })  # fmt: skip
    return out


#: lee-asahi-bulk methods quoted beside the sweep (same test set, same training draws)
GRID_METHODS = ("base", "scratch", "magpie+rf", "full [mp-10k]", "features+mlp [mp-10k]")


def grid_reference(size: int) -> list[dict]:
    """Test MAE (mean ± std over seeds) of some lee-asahi-bulk methods at this size."""
    found: dict[str, list[float]] = {}
    for path in sorted(GRID_RESULTS.glob(f"*/n{size}-s*/*/result.json")):
        source, method = path.parts[-4], path.parts[-2]
        label = method if source == "common" else f"{method} [{source}]"
        found.setdefault(label, []).append(json.loads(path.read_text())["test"]["mae"])
    return [
        {"method": m, "test_mae": float(np.mean(v)), "test_std": float(np.std(v, ddof=1)),
         "n_seeds": len(v)}
        for m in GRID_METHODS if len(v := found.get(m, [])) > 1
    ]  # fmt: skip


def readable(label: str) -> str:
    """``interactions.2.atom+bond`` → ``GCN 1: atom+bond`` (2 ALIGNN layers first)."""
    checkpoint, _, kinds = label.rpartition(".")
    if not checkpoint:
        return "all layers" if label == "all" else label
    if checkpoint.startswith("interactions."):
        k, n_alignn = int(checkpoint.split(".")[1]), model_config(MODEL).alignn_layers
        checkpoint = f"ALIGNN {k + 1}" if k < n_alignn else f"GCN {k - n_alignn + 1}"
    return f"{checkpoint}: {kinds}"


COLUMNS = (
    ("pretrained", "mean", "ridge"),
    ("pretrained", "mean+std+min+max", "ridge"),
    ("pretrained", "mean", "mlp"),
    ("random weights", "mean", "ridge"),
    ("random weights", "mean+std+min+max", "ridge"),
    ("random weights", "mean", "mlp"),
)


def layer_table(summary: list[dict]) -> list[str]:
    """Markdown: feature set × (source, pooling, head), test MAE mean ± std; ★ the
    lowest mean validation MAE of each column."""
    cell = {(s["source"], s["pooling"], s["head"], s["set"]): s for s in summary}
    best = {}
    for column in COLUMNS:
        part = [s for s in summary if (s["source"], s["pooling"], s["head"]) == column]
        best[column] = min(part, key=lambda s: s["val_mae"])["set"] if part else None
    sets = list(dict.fromkeys(s["set"] for s in summary if s["source"] == "pretrained"))
    heads = [f"{src}, {head}, {pool}" for src, pool, head in COLUMNS]
    lines = ["| feature set | " + " | ".join(heads) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for label in sets:
        cells = []
        for column in COLUMNS:
            s = cell.get((*column, label))
            mark = " ★" if s and best[column] == label else ""
            cells.append(f"{s['test_mae']:.4f} ± {s['test_std']:.4f}{mark}" if s else "")
        lines.append(f"| {readable(label)} | " + " | ".join(cells) + " |")
    return lines


def pm(entry: dict) -> str:
    """``mean ± std`` of an entry's test MAE."""
    return f"{entry['test_mae']:.4f} ± {entry['test_std']:.4f}"


def machine() -> dict:
    """The machine, as every results file records it."""
    from tlmat.machine import describe

    return describe()


def write(result: dict) -> None:
    """results.json and README.md in RESULTS."""
    (RESULTS / "results.json").write_text(json.dumps(result, indent=1))
    (RESULTS / "README.md").write_text("\n".join(readme(result)) + "\n")


def readme(result: dict) -> list[str]:
    source, base = result["source"], result["base"]
    lines = [
        "# Which ALIGNN layer transfers best? (Gupta et al., Table 1)",
        "",
        f"Target: log10 K_VRH (log10 GPa) of mp_elasticity_3k, N = {result['size']} training "
        f"structures, seeds {result['seeds']}, the split of lee-asahi-bulk (its 600 test and "
        "200 validation structures, its training draws: "
        f"same training ids as its jobs: {result['same_training_ids_as_grid']}). "
        f"Base model (training mean): {base['test_mae']:.4f} ± {base['test_std']:.4f}.",
        "",
        f"Source: {MODEL} (2 ALIGNN + 2 GCN layers, 64 wide, {result['source_parameters']:,} "
        f"parameters) pretrained on {source['n_pretrain']:,} mp_cgcnn_36k formation energies "
        f"({source['epochs']} epochs, {source['seconds'] / 60:.1f} min; test MAE "
        f"{source['test']['mae']:.4f} eV/atom on {source['n_test']} held-out structures), after "
        f"removing {source['n_excluded_same_id']} materials with a test id and "
        f"{source['n_excluded_same_formula']} more with a test reduced formula. Control: the same "
        "network with random weights (drawn anew per seed).",
        "",
        "Test MAE (log10 GPa), mean ± std over the seeds, for each feature set pooled over "
        "the atoms / bonds / angles of each crystal; ridge: standardised features, α by "
        "validation MAE; MLP: Gupta's 17-layer MLP (tlmat's `MLPRegressor`). ★: the lowest "
        "mean validation MAE of the column.",
        "",
        *layer_table(result["summary"]),
        "",
        "Chosen by validation MAE, per seed (the test set read once per seed for the pick):",
        "",
        "| selection | picked (per seed) | test MAE |",
        "|---|---|---|",
    ]
    for s in result["selections"]:
        picks = "; ".join(
            f"{readable(p['set'])} [{p['pooling']}, {p['head']}]" for p in s["picked"]
        )
        lines.append(f"| {s['selection']} | {picks} | {pm(s)} |")
    lines += ["", "lee-asahi-bulk at the same N, test set and training draws (CGCNN sources):", "",
              "| method | test MAE |", "|---|---|"]  # fmt: skip
    lines += [
        f"| {g['method']} | {g['test_mae']:.4f} ± {g['test_std']:.4f} |" for g in result["grid"]
    ]
    command, where = f"Command: `{result['command']}`", f"Machine: {result['machine']}"
    return [*lines, "", *result["notes"], "", command, "", where]


NOTES = [
    "Gupta et al. (JARVIS-3D formation energy, a 4 + 4-layer ALIGNN pretrained on MP "
    "formation energies, 17-layer MLP on 38 mean-pooled feature sets): atom features beat "
    "bond- or angle-only ones, and the last checkpoint's atom+bond+angle features were the "
    "best of the 38; they used those alone from then on.",
    "",
    "Cut for the 2-core VM: the source is the 2 + 2-layer, 64-wide ALIGNN (not the paper's "
    "4 + 4 × 256) trained on 2,000 structures (1,800 trained on) for 8 epochs on a shared core, "
    "not on all of MP for 300 epochs; Gupta's MLP runs on 3 mean-pooled sets only "
    "(the embedding's atom+bond+angle, the last atom+bond+angle, all), "
    f"with {MLP_EPOCHS} epochs and patience {MLP_PATIENCE} (theirs: patience 200); one "
    "training size, 3 seeds. Validation: the grid's fixed 200 structures, shared by the seeds.",
]


def findings(summary: list[dict]) -> list[str]:
    """What the table says, computed: each source's best set by validation per head,
    the mean-pooled ridge MAE of atom, bond and angle features (mean over checkpoints),
    and pretrained against random weights on the same set."""
    ridge = [s for s in summary if s["head"] == "ridge" and s["pooling"] == "mean"]
    out = ["Findings (computed from the table):", ""]
    for source in SOURCES:
        part = [s for s in ridge if s["source"] == source]
        by_kind = {
            kind: np.mean([s["test_mae"] for s in part if s["set"].endswith("." + kind)])
            for kind in ("atom", "bond", "angle")
        }
        kinds = ", ".join(f"{k} {v:.4f}" for k, v in by_kind.items())
        out.append(f"- {source}, ridge on mean-pooled features, mean test MAE over the "
                   f"checkpoints: {kinds}")  # fmt: skip
    for source in SOURCES:
        for head in ("ridge", "mlp"):
            part = [s for s in summary if s["source"] == source and s["head"] == head]
            if part:
                best = min(part, key=lambda s: s["val_mae"])
                out.append(f"- {source}, {head}: best by validation {readable(best['set'])} "
                           f"[{best['pooling']}], test {pm(best)}")  # fmt: skip
    random = {
        (s["set"], s["pooling"], s["head"]): s for s in summary if s["source"] != "pretrained"
    }
    for head in ("ridge", "mlp"):
        wins = [s["test_mae"] < other["test_mae"] for s in summary
                if s["source"] == "pretrained" and s["head"] == head
                and (other := random.get((s["set"], s["pooling"], head)))]  # fmt: skip
        if wins:
            out.append(f"- pretrained beats random weights ({head}, same set and pooling, mean "
                       f"test MAE) on {sum(wins)} of {len(wins)} sets")  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", type=Path, default=REPO / ".tlmat-cache")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--size", type=int, default=500)
    parser.add_argument("--heads", nargs="+", choices=("ridge", "mlp"), default=["ridge", "mlp"])
    parser.add_argument("--pretrain-only", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)  # the machine's cores are shared
    started = time.perf_counter()
    config, dataset, fixed = target_data(args.cache_dir)
    model_file = pretrained(config, dataset, fixed, args.cache_dir)
    if args.pretrain_only:
        return
    rows, same = run_sweep(args, config, dataset, fixed, model_file)
    summary = summarise(rows)
    base = next(s for s in summary if s["source"] == "base")
    result = {
        "command": " ".join(["python3", *sys.argv]),
        "machine": machine(),
        "size": args.size,
        "seeds": args.seeds,
        "same_training_ids_as_grid": all(same.values()) if None not in same.values() else None,
        "source": json.loads((RESULTS / "source" / "pretrain.json").read_text()),
        "source_parameters": sum(p.numel() for p in load_source(model_file).model.parameters()),
        "base": base,
        "summary": [s for s in summary if s["source"] != "base"],
        "selections": selections(rows, args.seeds),
        "grid": grid_reference(args.size),
        "rows": rows,
        # this invocation's time; fit_seconds: all fits', also those an earlier run made
        "wall_seconds": time.perf_counter() - started,
        "fit_seconds": sum(r["seconds"] for r in rows),
    }
    result["notes"] = [*findings(result["summary"]), "", *NOTES]
    write(result)
    print("\n".join(readme(result)))


if __name__ == "__main__":
    main()
