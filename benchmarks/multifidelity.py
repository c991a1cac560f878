"""Benchmark: learning an expensive band gap (HSE or SCAN) from few labels beside many
cheap PBE ones (issue 27, point 1; Chen et al. 2021's multi-fidelity MEGNet, Hoffmann et
al.'s PBE → HSE/SCAN transfer), on the multi-fidelity gaps of
megnet_multifidelity_bandgaps joined to the mp_cgcnn_36k structures.

For each seed, ``--test`` and ``--val`` materials with the expensive label are drawn and
never seen at any fidelity (same id or same reduced formula removed from every training
row, PBE included); then for each N of ``--sizes``, N more expensive labels, and up to
``--low-limit`` PBE labels of the other materials. Methods, all CGCNN (tlmat's ``cgcnn``)
and all selected by the expensive fidelity's validation MAE:

- ``scratch``: the N expensive labels alone;
- ``sequential``: pretrained on the PBE labels, then fine-tuned (every layer) on the N;
- ``joint``: one model on the PBE and the N labels together, a learned fidelity embedding
  joined to the crystal representation (``CrystalModel.add_fidelities``), predicted at
  the expensive fidelity;
- ``delta-label``: a model of expensive − PBE on the N, added to the test materials'
  PBE label (Δ-learning on a cheap calculation);
- ``delta-model``: a model of expensive − the PBE model's prediction, added to that
  prediction (Δ-learning with no calculation at test time).

Run:  python3 benchmarks/multifidelity.py [--target gap_hse] [--sizes 100 300 1000]
          [--seeds 0] [--test 500] [--val 100] [--low-limit 3000] [--epochs 60]
          [--source-epochs 30] [--out benchmarks/results/multifidelity]
Writes OUT/<target>.json (every number, the command, the machine, the seconds each fit
took) and OUT/<target>.md (test MAE in eV, mean ± sample standard deviation over seeds).
Run folders under benchmarks/out/multifidelity: the same command again takes the
finished fits as they are and resumes an interrupted one.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tlmat.data import Split, load_dataset  # noqa: E402
from tlmat.data.fidelity import fidelity_of, fidelity_split, stack_fidelities, with_delta  # noqa: E402
from tlmat.datasets import resolve  # noqa: E402
from tlmat.io.table import join_labels  # noqa: E402
from tlmat.machine import describe  # noqa: E402
from tlmat.models import load_checkpoint  # noqa: E402
from tlmat.models.registry import model_config  # noqa: E402
from tlmat.training import TrainConfig, fit, predict  # noqa: E402
from tlmat.transfer.sources import fresh_model, prepare_transfer  # noqa: E402

STRUCTURES = "mp_cgcnn_36k/mp_cgcnn_36k.csv.gz"
LABELS = "megnet_multifidelity_bandgaps/mf_bandgaps_joined_to_mp_cgcnn_36k.csv.gz"
METHODS = ("scratch", "sequential", "joint", "delta-label", "delta-model")


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="gap_hse", help="gap_hse or gap_scan")
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 300, 1000])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--test", type=int, default=500)
    parser.add_argument("--val", type=int, default=100)
    parser.add_argument("--low-limit", type=int, default=3000, help="PBE labels at most")
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--source-epochs", type=int, default=30)
    parser.add_argument("--model", default="cgcnn")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/multifidelity")
    parser.add_argument("--work", type=Path, default=REPO / "benchmarks/out/multifidelity")
    return parser.parse_args()


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def config(args, target: str, epochs: int) -> TrainConfig:
    return TrainConfig(
        target=target,
        unit="eV",
        epochs=epochs,
        early_stopping_patience=max(10, epochs // 4),
        plateau_patience=max(5, epochs // 8),
        progress_bar=False,
    )


def only(split: Split, rows: np.ndarray) -> Split:
    """``split`` with its training rows restricted to ``rows``."""
    return Split(np.intersect1d(split.train, rows), split.val, split.test)


def train(trained, dataset, split, cfg, folder: Path, strategy=None) -> tuple:
    """Fit, or take the finished fit in ``folder`` (its model and recorded seconds; fit
    itself resumes an interrupted one); the model and its seconds."""
    if (folder / "model.pt").exists() and (folder / "run.json").exists():
        recorded = json.loads((folder / "run.json").read_text())
        return load_checkpoint(folder / "model.pt"), float(recorded["seconds"])
    start = time.perf_counter()
    result = fit(trained, dataset, split, cfg, folder, strategy=strategy)
    return result.trained, time.perf_counter() - start


def mae(predicted: np.ndarray, truth: np.ndarray) -> float:
    return float(np.abs(np.asarray(predicted) - np.asarray(truth)).mean())


def pbe_source(args, stacked, widest: Split, seed: int, work: Path):
    """CGCNN trained on the PBE rows of the widest split's training set (its first 200
    for validation): the source of ``sequential`` and the baseline of ``delta-model``."""
    cheap = np.flatnonzero(fidelity_of(stacked) == 0)
    rows = np.intersect1d(widest.train, cheap)
    split = Split(rows[200:], rows[:200], widest.test)
    cfg = config(args, "gap", args.source_epochs)
    source, seconds = train(fresh_model(model_config(args.model), seed), stacked, split, cfg, work)
    log(f"seed {seed}: PBE source on {len(split.train)} labels in {seconds:.0f} s")
    return source, seconds, len(split.train)


def method_fit(method: str, args, data: dict, split: Split, seed: int, folder: Path):
    """(trained model, seconds) of one method on one split."""
    spec, stacked = model_config(args.model), data["stacked"]
    expensive = only(split, data["dear"])
    cfg = config(args, "gap", args.epochs)
    if method == "scratch":
        return train(fresh_model(spec, seed), stacked, expensive, cfg, folder)
    if method == "sequential":
        model, strategy = prepare_transfer("full", data["source"], "gap", seed=seed)
        return train(model, stacked, expensive, cfg, folder, strategy)
    if method == "joint":
        joint = fresh_model(spec, seed)
        joint.model.add_fidelities(["pbe", args.target])
        return train(joint, stacked, split, cfg, folder)
    target = method.replace("-", "_")
    cfg = config(args, target, args.epochs)
    return train(fresh_model(spec, seed), data[target], expensive, cfg, folder)


def one_seed(args, stacked, pbe_label: np.ndarray, seed: int, work: Path) -> list[dict]:
    """Every method at every size for one seed's held-out materials."""
    # the held-out materials are the same at every size: the PBE source, trained on the
    # widest split's PBE rows, saw none of what any size tests
    widest = fidelity_split(stacked, max(args.sizes), args.val, args.test, seed, 1, args.low_limit)
    source, source_s, source_n = pbe_source(args, stacked, widest, seed, work / "source")
    baseline = {"delta-label": pbe_label, "delta-model": predict(source, stacked)}
    data = {
        "stacked": stacked,
        "dear": np.flatnonzero(fidelity_of(stacked) == 1),
        "source": source,
        "delta_label": with_delta(stacked, "gap", baseline["delta-label"], "delta_label"),
        "delta_model": with_delta(stacked, "gap", baseline["delta-model"], "delta_model"),
    }
    truth, test = stacked.targets["gap"], widest.test
    rows = []
    for n in args.sizes:
        split = fidelity_split(stacked, n, args.val, args.test, seed, 1, args.low_limit)
        assert np.array_equal(split.test, test)
        for method in METHODS:
            model, seconds = method_fit(method, args, data, split, seed, work / f"n{n}" / method)
            predicted = predict(model, data.get(method.replace("-", "_"), stacked), test)
            predicted = predicted + baseline.get(method, np.zeros(len(truth)))[test]
            used = split.train if method == "joint" else only(split, data["dear"]).train
            error = mae(predicted, truth[test])
            rows.append({"seed": seed, "size": n, "method": method, "test_mae_ev": error,
                         "seconds": seconds, "training_rows": len(used)})  # fmt: skip
            log(f"seed {seed} N={n} {method}: test MAE {rows[-1]['test_mae_ev']:.3f} eV "
                f"({seconds:.0f} s)")  # fmt: skip
    rows.append({"seed": seed, "size": 0, "method": "PBE source (no expensive label)",
                 "test_mae_ev": mae(baseline["delta-model"][test], truth[test]),
                 "seconds": source_s, "training_rows": source_n})  # fmt: skip
    return rows


def table(rows: list[dict], args) -> str:
    sizes = sorted({r["size"] for r in rows if r["size"]})
    lines = [
        f"# {args.target} from few labels beside PBE ones",
        "",
        f"Test MAE (eV) on {args.test} {args.target} materials never seen at any fidelity "
        f"(same id or formula removed); {args.val} validation materials choose the epoch; "
        f"up to {args.low_limit} PBE labels; CGCNN ({args.model}), {args.epochs} epochs "
        f"({args.source_epochs} for the PBE source); seeds {args.seeds}; mean ± sample "
        "standard deviation over seeds (one seed: no spread). Command and machine in the JSON.",
        "",
        "| method | " + " | ".join(f"N={n}" for n in sizes) + " |",
        "|---|" + "---|" * len(sizes),
    ]
    for method in METHODS:
        cells = []
        for n in sizes:
            values = [r["test_mae_ev"] for r in rows if r["method"] == method and r["size"] == n]
            spread = f" ± {statistics.stdev(values):.3f}" if len(values) > 1 else ""
            cells.append(f"{statistics.mean(values):.3f}{spread}" if values else "—")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    source = [r["test_mae_ev"] for r in rows if r["size"] == 0]
    lines += ["", f"The PBE source alone (its PBE prediction taken as the {args.target}): "
              f"{statistics.mean(source):.3f} eV.", ""]  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    args = arguments()
    started = time.strftime("%Y-%m-%dT%H:%M:%S")
    work = args.work / args.target
    joined = join_labels(resolve(STRUCTURES), resolve(LABELS), "material_id", work / "joined")
    settings = model_config(args.model).graph_settings()
    cache = work / "graph-cache"
    start = time.perf_counter()
    pbe = load_dataset(joined, settings, ["gap_pbe"], cache_dir=cache)
    dear = load_dataset(joined, settings, [args.target], cache_dir=cache)
    by_id = dict(zip(pbe.ids, pbe.targets["gap_pbe"], strict=True))
    # Δ-learning on the PBE label needs one: materials without are left out (a handful)
    dear = dear.subset([i for i, name in enumerate(dear.ids) if name in by_id])
    log(
        f"{len(pbe)} PBE and {len(dear)} {args.target} labels ({time.perf_counter() - start:.0f} s)"
    )
    stacked = stack_fidelities({"pbe": (pbe, "gap_pbe"), args.target: (dear, args.target)}, "gap")
    pbe_label = np.array([by_id[i] for i in stacked.ids])
    rows: list[dict] = []
    for seed in args.seeds:
        rows += one_seed(args, stacked, pbe_label, seed, work / f"seed{seed}")
        write(args, rows, started)
    print(table(rows, args))


def write(args, rows: list[dict], started: str) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    result = {
        "command": " ".join(["python3", *sys.argv]),
        "started": started,
        "written": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "machine": describe(),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "rows": rows,
    }
    (args.out / f"{args.target}.json").write_text(json.dumps(result, indent=1))
    (args.out / f"{args.target}.md").write_text(table(rows, args))


if __name__ == "__main__":
    main()
