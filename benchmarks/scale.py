"""Benchmark: tlmat at 10⁴, 10⁵ and 10⁶ structures — cold read into the graph cache, one
CGCNN training epoch, ``tlmat predict`` and ``tlmat embed`` — with wall time, peak RSS
and cache bytes per graph at each size.

Run:  python benchmarks/scale.py [--sizes 10000 100000 1000000] [--work DIR]

The scale set is a SCALE TEST, NOT A SCIENCE SET. Real structures (mp_cgcnn_36k,
perov_5 train/val/test, carbon_24 val/test) are expanded with strained (up to ±3 % per
component, symmetric) and perturbed (0.03 Å Gaussian) copies, written as the plain P1
CIFs the real files hold, into ``<work>/scale-<N>.csv.gz``. The ``target`` column is
each parent's own label (eV/atom or eV/cell): it exists so that an epoch has a loss,
and means nothing. Every stage runs as its own ``tlmat`` command under
``/usr/bin/time -v``, so the peak RSS is that command's own. Results are written after
each stage to ``benchmarks/results/scale.json``.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from ase.data import chemical_symbols

from tlmat.datasets import data_dir
from tlmat.io.cif import read_plain_cif

#: (file, label column) of the parents
PARENTS = [
    ("mp_cgcnn_36k/mp_cgcnn_36k.csv.gz", "formation_energy_per_atom"),
    ("perov_5/train.csv.gz", "heat_ref"),
    ("perov_5/val.csv.gz", "heat_ref"),
    ("perov_5/test.csv.gz", "heat_ref"),
    ("carbon_24/val.csv.gz", "energy_per_atom"),
    ("carbon_24/test.csv.gz", "energy_per_atom"),
]


def parents() -> list[tuple[np.ndarray, np.ndarray, np.ndarray, float]]:
    """(atomic numbers, Cartesian positions Å, cell Å, label) of every real structure."""
    found = []
    for relative, label in PARENTS:
        table = pd.read_csv(data_dir() / relative, usecols=["cif", label])
        for text, value in zip(table["cif"], table[label], strict=True):
            read = read_plain_cif(text)
            if read is not None and np.isfinite(value):
                found.append((read.z, read.pos, read.cell, float(value)))
    return found


def p1_cif(name: str, z: np.ndarray, frac: np.ndarray, cell: np.ndarray) -> str:
    """A plain P1 CIF in the layout pymatgen writes."""
    lengths = np.linalg.norm(cell, axis=1)
    a, b, c = cell
    angles = [
        math.degrees(
            math.acos(np.clip(np.dot(u, v) / (np.linalg.norm(u) * np.linalg.norm(v)), -1, 1))
        )
        for u, v in ((b, c), (a, c), (a, b))
    ]
    lines = [
        f"data_{name}",
        "_symmetry_space_group_name_H-M   'P 1'",
        *(f"_cell_length_{k}   {v:.8f}" for k, v in zip("abc", lengths, strict=True)),
        *(
            f"_cell_angle_{k}   {v:.8f}"
            for k, v in zip(("alpha", "beta", "gamma"), angles, strict=True)
        ),
        "_symmetry_Int_Tables_number   1",
        "loop_",
        " _symmetry_equiv_pos_site_id",
        " _symmetry_equiv_pos_as_xyz",
        "  1  'x, y, z'",
        "loop_",
        " _atom_site_type_symbol",
        " _atom_site_label",
        " _atom_site_symmetry_multiplicity",
        " _atom_site_fract_x",
        " _atom_site_fract_y",
        " _atom_site_fract_z",
        " _atom_site_occupancy",
    ]
    for k, (number, (x, y, w)) in enumerate(zip(z, frac, strict=True)):
        symbol = chemical_symbols[number]
        lines.append(f"  {symbol}  {symbol}{k}  1  {x:.8f}  {y:.8f}  {w:.8f}  1")
    return "\n".join(lines) + "\n"


def write_scale_set(path: Path, size: int, seed: int = 0) -> None:
    """``size`` rows: every parent once, then strained and perturbed copies."""
    rng = np.random.default_rng(seed)
    real = parents()
    partial = path.with_suffix(".partial")
    with gzip.open(partial, "wt", compresslevel=1, newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "cif", "target"])
        for row in range(size):
            z, pos, cell, value = real[row % len(real)]
            if row >= len(real):  # a strained cell, atoms carried along, then shaken
                strain = rng.uniform(-0.03, 0.03, (3, 3))
                frac = pos @ np.linalg.inv(cell)
                cell = cell @ (np.eye(3) + (strain + strain.T) / 2)
                pos = frac @ cell + rng.normal(0, 0.03, pos.shape)
            frac = (pos @ np.linalg.inv(cell)) % 1.0
            writer.writerow([f"scale-{row}", p1_cif(f"s{row}", z, frac, cell), value])
    os.replace(partial, path)


def timed(command: list[str], env: dict[str, str]) -> dict:
    """Wall seconds and peak RSS (MiB) of one command, run under /usr/bin/time -v."""
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    done = subprocess.run(
        ["/usr/bin/time", "-v", *command], env=env, capture_output=True, text=True
    )
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr).group(1))
    return {
        "command": " ".join(command),
        "seconds": seconds,
        "peak_rss_mib": rss / 1024,
        # the machine's 1-minute load before and after: > cores means another job shared it
        "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }


STAGES = ("cold_read", "train_one_epoch", "predict", "embed")


def bench(
    size: int, work: Path, env: dict[str, str], out: dict, out_path: Path, stages=STAGES
) -> None:
    data = work / f"scale-{size}.csv.gz"
    if not data.exists():
        start = time.perf_counter()
        write_scale_set(data, size)
        print(f"{data}: written in {time.perf_counter() - start:.0f} s", flush=True)
    cache = work / f"cache-{size}"
    runs = work / f"runs-{size}"
    if "cold_read" in stages:
        shutil.rmtree(cache, ignore_errors=True)
    elif not cache.is_dir():
        raise SystemExit(f"{cache}: no cache to reuse; run the cold_read stage first")
    if "train_one_epoch" in stages:
        shutil.rmtree(runs, ignore_errors=True)
    runs.mkdir(parents=True, exist_ok=True)
    tlmat = [sys.executable, "-m", "tlmat.cli"]
    entry: dict = out["sizes"].setdefault(str(size), {})
    entry.update(structures=size, data_bytes=data.stat().st_size)

    def stage(name: str, command: list[str]) -> None:
        if name not in stages:
            return
        entry[name] = timed(command, env)
        entry[name]["per_s"] = size / entry[name]["seconds"]
        out_path.write_text(json.dumps(out, indent=2))
        print(name, size, json.dumps(entry[name]), flush=True)

    stage(
        "cold_read",
        [
            *tlmat,
            "cache",
            str(data),
            "--preset",
            "cgcnn",
            "-t",
            "target",
            "--cache-dir",
            str(cache),
        ],
    )
    if "cold_read" in stages or "cache_bytes_per_graph" not in entry:
        graph_bytes = sum(f.stat().st_size for f in cache.rglob("*") if f.is_file())
        entry["cache_bytes_per_graph"] = graph_bytes / size
    stage(
        "train_one_epoch",
        [
            *tlmat,
            "train",
            str(data),
            "-t",
            "target",
            "--epochs",
            "1",
            "--val-size",
            "0.05",
            "--test-size",
            "0.05",
            "--batch-size",
            "128",
            "--run-dir",
            str(runs / "train"),
            "--cache-dir",
            str(cache),
        ],
    )
    model = str(runs / "train" / "model.pt")
    stage(
        "predict",
        [
            *tlmat,
            "predict",
            model,
            str(data),
            "-o",
            str(runs / "pred.csv"),
            "--cache-dir",
            str(cache),
        ],
    )
    stage(
        "embed",
        [*tlmat, "embed", model, str(data), "-o", str(runs / "emb.npz"), "--cache-dir", str(cache)],
    )
    if stages[-1] == STAGES[-1]:  # the last stage ran: nothing left to reuse
        shutil.rmtree(cache, ignore_errors=True)  # ≈ 7.5 GB at 10⁶
        shutil.rmtree(runs, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--work", type=Path, default=Path("benchmarks/out/scale"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/scale.json"))
    parser.add_argument(
        "--stages",
        nargs="+",
        choices=STAGES,
        default=list(STAGES),
        help="stages to (re-)run, in order; the others' results are kept from --out, and "
        "a stage after cold_read reuses the cache the last cold_read left",
    )
    args = parser.parse_args()
    if data_dir() is None:
        raise SystemExit("set TLMAT_DATA_DIR to the shared data folder")
    args.work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "TLMAT_DATA_DIR": str(data_dir())}
    stages = [s for s in STAGES if s in args.stages]
    command = "python3 " + " ".join(sys.argv)
    # the sizes and stages run here replace theirs; the rest of --out is kept
    out = json.loads(args.out.read_text()) if args.out.exists() else {"sizes": {}}
    out.setdefault("commands", [out.pop("command")] if "command" in out else [])
    out["commands"].append(command)
    for size in args.sizes:
        if stages == list(STAGES):
            out["sizes"].pop(str(size), None)
    out["machine"] = {"platform": platform.platform(), "cpu_count": os.cpu_count()}
    out["note"] = "scale test on strained/perturbed copies of real structures, not a science set"
    for size in args.sizes:
        bench(size, args.work, env, out, args.out, stages)
    print(f"→ {args.out}")


if __name__ == "__main__":
    main()
