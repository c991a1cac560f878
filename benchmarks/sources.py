"""Pretrain a shared, leakage-free tlmat source once and ship it with the package.

    python3 benchmarks/sources.py mp-eform-cgcnn [--threads 2] [--work /tmp/tlmat-sources]

Reads ``benchmarks/sources/<name>.yaml`` (a :class:`~tlmat.experiments.pretraining.
PretrainConfig` under ``pretrain:``), computes every shipped grid's held-out materials
exactly as the grid does (``benchmarks/configs/*.yaml``; a Matbench task holds out all of
its materials), removes their union from the source data (same ids, same reduced
formulas), pretrains, and writes ``tlmat/pretrained/<name>/``:

    model.pt           the tlmat checkpoint (weights only, loaded with weights_only=True)
    card.json          data, removal counts per grid, split sizes, test metrics, epochs,
                       seconds per epoch, command, versions, SHA-256 of model.pt and of
                       the sorted held-out id and formula lists
    card.md            the same for people
    training.csv.gz    the training, validation and test ids with their reduced formulas
                       (what tests/test_pretrained.py checks the grids against)

The work folder keeps the run (checkpoints, metrics) and resumes an interrupted build.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import logging
import platform
import shutil
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def _digest(values: list[str]) -> str:
    return hashlib.sha256("\n".join(sorted(set(values))).encode()).hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", help="a spec in benchmarks/sources/ (without .yaml)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--work", type=Path, default=Path("/tmp/tlmat-sources"))
    parser.add_argument("--cache-dir", type=Path, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    import torch

    import tlmat
    from tlmat.data import load_dataset, source_fingerprint
    from tlmat.datasets import resolve
    from tlmat.experiments.benchmark import BenchmarkConfig, grid_held_out
    from tlmat.experiments.pretraining import PretrainConfig, pretrain_source, table_path
    from tlmat.models.registry import model_config
    from tlmat.training.fit import versions

    torch.set_num_threads(args.threads)
    spec_file = ROOT / "benchmarks" / "sources" / f"{args.name}.yaml"
    raw = yaml.safe_load(spec_file.read_text())
    spec = PretrainConfig(**raw["pretrain"])
    work = args.work / args.name
    work.mkdir(parents=True, exist_ok=True)

    held_file = work / "held_out.json"
    if held_file.exists():
        held = json.loads(held_file.read_text())
    else:
        configs = [
            BenchmarkConfig.from_yaml(p)
            for p in sorted((ROOT / "benchmarks/configs").glob("*.yaml"))
        ]
        held = grid_held_out(configs, args.cache_dir)
        held_file.write_text(json.dumps(held))
    ids = sorted({i for grid in held.values() for i in grid["ids"]})
    formulas = sorted({f for grid in held.values() for f in grid["formulas"]})
    logging.info("%d grids hold out %d ids, %d formulas", len(held), len(ids), len(formulas))

    start = time.perf_counter()
    model_file = pretrain_source(spec, ids, formulas, work / "run", args.cache_dir)
    summary = json.loads((work / "run" / "pretrain.json").read_text())
    split = json.loads((work / "run" / "split.json").read_text())

    dataset = load_dataset(
        table_path(spec.data, spec.labels, spec.join_on, args.cache_dir),
        model_config(spec.model).graph_settings(),
        [spec.target],
        cache_dir=args.cache_dir,
    )
    formula_of = dict(zip(dataset.ids, dataset.formulas, strict=True))
    out = ROOT / "tlmat" / "pretrained" / args.name
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(model_file, out / "model.pt")
    with gzip.open(out / "training.csv.gz", "wt") as handle:
        handle.write("part,material_id,reduced_formula\n")
        for part in ("train", "val", "test"):
            for material in split[part]:
                handle.write(f"{part},{material},{formula_of[material]}\n")
    card = {
        "name": f"tlmat/{args.name}",
        "description": raw["description"],
        "architecture": model_config(spec.model).architecture,
        "model": model_config(spec.model).model_dump(),
        "data": spec.data,
        "data_sha256": source_fingerprint(resolve(spec.data)),
        "target": spec.target,
        "unit": spec.unit,
        "pretrain": spec.model_dump(),
        "held_out": {
            "grids": {name: len(grid["ids"]) for name, grid in held.items()},
            "n_ids": len(ids),
            "n_formulas": len(formulas),
            "ids_sha256": _digest(ids),
            "formulas_sha256": _digest(formulas),
        },
        "n_valid": summary["n_valid"],
        "n_excluded_same_id": summary["n_excluded_same_id"],
        "n_excluded_same_formula": summary["n_excluded_same_formula"],
        "n_train": summary["n_pretrain"],
        "n_val": summary["n_val"],
        "n_test": summary["n_test"],
        "test": summary["test"],
        "epochs": summary["epochs"],
        "seconds": summary["seconds"],
        "seconds_per_epoch": summary["seconds"] / max(summary["epochs"], 1),
        "threads": args.threads,
        "machine": {"platform": platform.platform(), "cpu_count": __import__("os").cpu_count()},
        "command": " ".join(["python3", "benchmarks/sources.py", *sys.argv[1:]]),
        "versions": versions(),
        "tlmat": tlmat.__version__,
        "model_sha256": hashlib.sha256((out / "model.pt").read_bytes()).hexdigest(),
        "built_seconds": time.perf_counter() - start,
    }
    (out / "card.json").write_text(json.dumps(card, indent=2, default=str) + "\n")
    test = card["test"]
    grids = "\n".join(f"| {g} | {n:,} |" for g, n in card["held_out"]["grids"].items())
    (out / "card.md").write_text(
        f"""# {card["name"]}

{card["description"]}.

- Architecture: {card["architecture"]} `{spec.model}` ({card["model"]})
- Data: `{spec.data}`, target `{spec.target}` ({spec.unit}); {card["n_valid"]:,} valid rows
- Removed: {card["n_excluded_same_id"]:,} with a held-out id, {card["n_excluded_same_formula"]:,}
  more with a held-out reduced formula ({card["held_out"]["n_ids"]:,} ids and
  {card["held_out"]["n_formulas"]:,} formulas held out by the shipped grids)
- Split: {card["n_train"]:,} train / {card["n_val"]:,} validation / {card["n_test"]:,} test
  (ids and formulas in `training.csv.gz`)
- Test MAE {test["mae"]:.4f} {spec.unit}, RMSE {test["rmse"]:.4f}, R² {test["r2"]:.4f}
  (n = {test["n"]:,})
- Training: {card["epochs"]} epochs, {card["seconds_per_epoch"]:.1f} s/epoch on
  {args.threads} thread(s), {card["machine"]["platform"]}
- Command: `{card["command"]}`
- model.pt SHA-256 `{card["model_sha256"]}`

Held-out materials per grid (benchmarks/configs):

| grid | held-out materials |
|---|---|
{grids}
"""
    )
    print(json.dumps({k: card[k] for k in ("name", "test", "epochs", "seconds_per_epoch")}))


if __name__ == "__main__":
    main()
