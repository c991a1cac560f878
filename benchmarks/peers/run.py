"""Peers side by side: tlmat against cgcnn2, alignn, matgl (M3GNet), chgnet and schnetpack,
each installed from the package index in its own virtual environment, trained from
scratch on identical splits of perov_5 with equal epochs and the same model-selection
rule, all measured in one run on one machine.

Run:  python3 benchmarks/peers/run.py [--train 1000] [--val 500] [--test 1000]
          [--epochs 10] [--rounds 1] [--peers cgcnn2 alignn matgl chgnet schnetpack]
          [--out benchmarks/results/peers] [--work benchmarks/out/peers]

What it does, in order:

1. a virtual environment per peer under ``WORK/venvs/<peer>`` (``python3 -m venv``):
   ``torch==2.13.0+cpu`` first (the CPU wheel; a constraint file pins it, so that no
   peer's requirements can pull another torch build), then the peer's pinned release
   from the index. An existing environment is reused when ``pip freeze`` shows the same
   peer and torch versions; each environment's ``pip freeze`` goes into the result. A
   peer that fails to install is reported with pip's reason and skipped.
2. the split, written once: the first ``--train`` rows of the CDVAE perov_5
   ``train.csv.gz``, the first ``--val`` of ``val.csv.gz`` and the first ``--test`` of
   ``test.csv.gz`` (``$TLMAT_DATA_DIR/perov_5``), as CIF files named by
   ``material_id`` with ``id_prop.csv`` files (CGCNN's layout, one folder per part, and
   ALIGNN's, one folder with the parts in order), with the SHA-256 of the id lists. The
   target is ``heat_ref`` (CMR heat of formation, eV per 5-atom cell) divided by the
   number of atoms: eV/atom, the per-atom energy that CHGNet's trainer expects; every
   model learns the same numbers.
3. for each peer, its driver (``drivers/<peer>_driver.py``) in a fresh process of the peer's
   Python, then tlmat's driver (``drivers/tlmat_driver.py``) in a fresh process of this Python
   on the matching architecture; each writes its measurements as JSON.
4. ``OUT/peers.json`` (every number, the command, the machine, the versions and pip
   freezes) and ``OUT/peers.md`` (one table).

Measured by every driver the same way: graph build rate (structures per second to read
the three parts' CIFs and build the package's graphs, from a cold start), seconds per
epoch (median over the epochs; an epoch is the training pass plus validation and
whatever the trainer does before the next pass), inference rate (structures per second
for the package's prediction call on the test CIFs, from files to numbers, model
loaded), the kept model's test MAE (eV/atom) and peak RSS of the driver process (it
reads, trains and predicts; the largest child process's, such as tlmat's
graph-building workers, is in the JSON beside it).

Fairness rules: the same structures and targets; the same number of epochs, no early
stopping; the kept model is the epoch with the lowest validation MAE; batch size 64;
data loading in the training process; each package's default model size, and its
default optimiser, learning rate, loss and schedule (alignn: its example config's; the
drivers' docstrings say which); torch's default threads (all cores) unless
``--threads``. Ratios are written so that > 1 favours tlmat: tlmat/peer for rates,
peer/tlmat for seconds per epoch, peak RSS and test MAE.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import hashlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
DRIVERS = HERE / "drivers"
REPO = HERE.parents[1]  # the checkout whose tlmat is measured
TORCH = "torch==2.13.0+cpu"
#: pip's machine-wide constraints (torch's cap on this machine); kept when present
SITE_CONSTRAINTS = Path("/etc/xdg/pip/constraints.txt")
PARTS = ("train", "val", "test")
TARGET = "heat_ref"


@dataclass(frozen=True)
class Peer:
    """A package compared with tlmat: what pip installs, and tlmat's matching model."""

    requirement: str  # name==version, the newest release that works with torch 2.13 CPU
    tlmat_model: str
    tlmat_config: dict = field(default_factory=dict)
    match: str = ""  # how tlmat's model matches the peer's
    note: str = ""  # said under the table

    @property
    def name(self) -> str:
        return self.requirement.split("==")[0]

    @property
    def version(self) -> str:
        return self.requirement.split("==")[1]


PEERS = {
    "cgcnn2": Peer(
        "cgcnn2==0.6.0",
        "cgcnn",
        match="the same network: 64-d atoms, 3 convolutions, 128-d hidden, 1 hidden layer",
    ),
    "alignn": Peer(
        "alignn==2026.8.11",
        "alignn-atomwise-pure",
        match="alignn's pure-PyTorch ALIGNNAtomWisePure defaults (2 ALIGNN + 2 GCN layers, "
        "64 wide, layer norm), on the same graph (12 nearest within 8 Å, every bond pair)",
    ),
    "matgl": Peer(
        "matgl==4.1.2",
        "m3gnet",
        # matgl 4's own conventions and its default three-body cutoff, so that both train
        # the same network (tlmat's defaults are those of the published weights)
        {"threebody_cutoff": 4.0, "node_aggregation": "source", "three_body_bond": "partner"},
        match="matgl's own M3GNet layers in tlmat (Set2Set readout, 5 Å graph, 4 Å three-body "
        "cutoff, matgl 4's aggregation)",
    ),
    "chgnet": Peer(
        "chgnet==0.4.2",
        "chgnet",
        match="chgnet's own layers in tlmat at CHGNet's default size (6 Å atom graph, "
        "3 Å bond graph)",
    ),
    # not installable beside torch 2.13 (note); kept so that the table says so, and so that
    # it runs once a release fits
    "schnetpack": Peer(
        "schnetpack==2.1.1",
        "schnet",
        # schnetpack's GaussianRBF: 20 centres on 0–5 Å, γ = 1 / (2 · spacing²)
        {
            "n_atom_basis": 128,
            "n_filters": 128,
            "n_interactions": 6,
            "n_rbf": 20,
            "rbf_stop": 5.0,
            "rbf_gamma": round(0.5 / (5.0 / 19) ** 2, 4),
            "cutoff": 5.0,
        },
        match="SchNet 6 × 128, 20 Gaussians on 0–5 Å, 5 Å cutoff (schnetpack's configuration "
        "defaults)",
        note="schnetpack 2.1.1 requires sympy ≤ 1.12 and torch 2.13 sympy ≥ 1.13.3; the newest "
        "release pip can put beside torch 2.13, 2.0.4, fails on import (`from "
        "torch.utils.data.dataloader import T_co`, gone from torch), and 2.1.1 has the same "
        "line. Without the torch pin pip falls back to torch 2.4.1, a CUDA build.",
    ),
}

#: how the table shows each quantity: label, key path, format, ratio (tlmat/peer or peer/tlmat)
COLUMNS = [
    ("graph build (structures/s)", ("graph_build", "per_second"), "{:,.0f}", "tlmat/peer"),
    ("s/epoch", ("seconds_per_epoch",), "{:.2f}", "peer/tlmat"),
    ("inference (structures/s)", ("inference", "per_second"), "{:,.0f}", "tlmat/peer"),
    ("peak RSS (MiB)", ("peak_rss_mib", "self"), "{:,.0f}", "peer/tlmat"),
    ("test MAE (eV/atom)", ("test_mae",), "{:.4f}", "peer/tlmat"),
]


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# ---------------------------------------------------------------------------- installs


def pip_freeze(python: Path) -> list[str]:
    out = subprocess.run(
        [str(python), "-m", "pip", "freeze", "--all"], capture_output=True, text=True, check=False
    )
    return sorted(out.stdout.split())


def pip_reason(output: str, lines: int = 6) -> str:
    """Why a command failed, on one line: pip's conflict and error lines when it printed
    any, else the end of its output (a traceback's last lines)."""
    kept = [line.strip() for line in output.splitlines() if line.strip()]
    kept = [line for line in kept if "is ignored: it is neither" not in line]
    telling = [line for line in kept if "depends on" in line or line.startswith("ERROR")]
    return " | ".join(telling[:lines] or kept[-lines:])


def ensure_venv(peer: Peer, work: Path, torch: str) -> dict:
    """The peer's virtual environment, made or reused: its Python, pip freeze, and
    whether it was reused; ``error`` with pip's reason when the install failed."""
    venv = work / "venvs" / peer.name
    python = venv / "bin" / "python"
    wanted = {peer.requirement.lower(), torch.lower()}
    check = [str(python), "-c", f"import {peer.name}"]
    if python.exists():
        freeze = pip_freeze(python)
        if wanted <= {line.lower() for line in freeze}:
            done = subprocess.run(check, capture_output=True, text=True, check=False)
            if done.returncode == 0:
                return {"python": str(python), "reused": True, "pip_freeze": freeze}
            why = pip_reason(done.stdout + done.stderr)
            return {"python": str(python), "error": f"import {peer.name} failed: {why}"}
        log(f"{peer.name}: the environment has other versions; making it again")
        shutil.rmtree(venv)
    constraints = work / "constraints.txt"
    constraints.write_text(f"{torch}\n")
    pins = ["-c", str(constraints)]
    if SITE_CONSTRAINTS.exists():
        pins += ["-c", str(SITE_CONSTRAINTS)]
    pip = [str(python), "-m", "pip", "install", "--disable-pip-version-check", *pins]
    steps = [
        ("venv", [sys.executable, "-m", "venv", str(venv)]),
        (f"pip install {torch}", [*pip, torch]),
        (f"pip install {peer.requirement}", [*pip, peer.requirement]),
        (f"import {peer.name}", check),
    ]
    start = time.perf_counter()
    for what, step in steps:
        log(f"{peer.name}: {what}")
        done = subprocess.run(step, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            why = pip_reason(done.stdout + done.stderr)
            return {"python": str(python), "error": f"{what} failed: {why}"}
    return {
        "python": str(python),
        "reused": False,
        "install_seconds": time.perf_counter() - start,
        "pip_freeze": pip_freeze(python),
    }


# ------------------------------------------------------------------------------ splits


def ids_sha256(id_lists: dict[str, list[str]]) -> str:
    """SHA-256 of the parts in order, ids in order (``drivers/_common.py`` computes the
    same from what each driver reads)."""
    text = "\n".join(f"{part}:" + ",".join(id_lists[part]) for part in PARTS)
    return hashlib.sha256(text.encode()).hexdigest()


def first_rows(path: Path, n: int) -> list[dict]:
    csv.field_size_limit(1 << 24)
    with gzip.open(path, "rt", newline="") as handle:
        reader = csv.DictReader(handle)
        rows = []
        for row in reader:
            if len(rows) == n:
                break
            rows.append(row)
    if len(rows) < n:
        raise SystemExit(f"{path} has {len(rows)} rows, fewer than the {n} asked for")
    return rows


def atoms_in(cif: str) -> int:
    from pymatgen.core import Structure

    return len(Structure.from_str(cif, fmt="cif"))


def write_splits(source: Path, sizes: dict[str, int], work: Path) -> tuple[Path, dict]:
    """The split folder (reused when its manifest matches) and its manifest."""
    folder = work / "data" / "perov_5-{train}-{val}-{test}".format(**sizes)
    manifest_path = folder / "manifest.json"
    files = {part: source / f"{part}.csv.gz" for part in PARTS}
    digests = {part: hashlib.sha256(files[part].read_bytes()).hexdigest() for part in PARTS}
    if manifest_path.exists():
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("source_sha256") == digests and manifest.get("sizes") == sizes:
            return folder, manifest
    if folder.exists():
        shutil.rmtree(folder)
    ids: dict[str, list[str]] = {}
    alignn = folder / "alignn"
    alignn.mkdir(parents=True)
    alignn_rows = []
    for part in PARTS:
        part_dir = folder / "cgcnn" / part
        part_dir.mkdir(parents=True)
        rows = first_rows(files[part], sizes[part])
        ids[part] = [row["material_id"] for row in rows]
        if len(set(ids[part])) != len(ids[part]):
            raise SystemExit(f"{files[part]}: repeated material_id among the first rows")
        lines = []
        for row in rows:
            n_atoms = atoms_in(row["cif"])
            value = float(row[TARGET]) / n_atoms
            cif = part_dir / f"{row['material_id']}.cif"
            cif.write_text(row["cif"])
            os.link(cif, alignn / cif.name)
            lines.append(f"{row['material_id']},{value!r}\n")
            alignn_rows.append(f"{cif.name},{value!r}\n")
        (part_dir / "id_prop.csv").write_text("".join(lines))
    (alignn / "id_prop.csv").write_text("".join(alignn_rows))
    every = [i for part in PARTS for i in ids[part]]
    if len(set(every)) != len(every):
        raise SystemExit("the parts share material ids")
    manifest = {
        "source": {part: str(files[part]) for part in PARTS},
        "source_sha256": digests,
        "sizes": sizes,
        "rows": "the first rows of each CDVAE file, in file order",
        "target": f"{TARGET} / number of atoms (eV/atom); {TARGET} is CMR's heat of formation "
        "in eV per cell (perov_5 SOURCE.md), every cell has 5 atoms",
        "ids_sha256": ids_sha256(ids),
        "ids": ids,
    }
    manifest_path.write_text(json.dumps(manifest, indent=1))
    return folder, manifest


# ----------------------------------------------------------------------------- drivers


def run_driver(
    name: str, python: str, script: Path, data: Path, work: Path, args, extra: list[str]
) -> dict:
    """One driver in a fresh process; its JSON, or ``error`` with the end of its log."""
    workdir = work / "runs" / name
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    result = workdir / "result.json"
    command = [
        python,
        str(script),
        "--data",
        str(data.resolve()),
        "--epochs",
        str(args.epochs),
        "--batch-size",
        str(args.batch_size),
        "--seed",
        str(args.seed),
        "--workdir",
        str(workdir.resolve()),
        "--result",
        str(result.resolve()),
        *extra,
    ]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(MPLBACKEND="Agg", PYTHONUNBUFFERED="1", TLMAT_CACHE_DIR=str(workdir / "cache"))
    if args.threads:
        env.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    if python == sys.executable:  # tlmat's driver: this checkout's tlmat
        env["PYTHONPATH"] = str(REPO)
    log(f"{name}: running {script.name}")
    load_before = os.getloadavg()
    start = time.perf_counter()
    with open(workdir / "log.txt", "w") as out:
        try:
            done = subprocess.run(
                command,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=workdir,
                env=env,
                timeout=args.timeout,
                check=False,
            )
            code = done.returncode
        except subprocess.TimeoutExpired:
            code = None
    wall = time.perf_counter() - start
    if code != 0 or not result.exists():
        why = f"timed out after {args.timeout} s" if code is None else f"exit {code}"
        why += ": " + pip_reason((workdir / "log.txt").read_text(errors="replace"), lines=3)
        log(f"{name}: failed ({why})")
        return {"error": why, "wall_seconds": wall, "log": str(workdir / "log.txt")}
    measured = json.loads(result.read_text())
    measured.update(
        wall_seconds=wall, load_average_before=load_before, log=str(workdir / "log.txt")
    )
    log(f"{name}: done in {wall:.0f} s")
    return measured


def value(result: dict, path: tuple[str, ...]):
    for key in path:
        if not isinstance(result, dict) or key not in result:
            return None
        result = result[key]
    return result


def median_result(results: list[dict]) -> dict:
    """One driver's measurements over rounds: the first successful round's, with each
    table column the median over the successful rounds, and every round's kept under
    ``rounds``; the first failure when none succeeded."""
    good = [r for r in results if "error" not in r]
    if not good:
        return results[0]
    if len(results) == 1:
        return results[0]
    out = json.loads(json.dumps(good[0]))
    for _, path, _, _ in COLUMNS:
        values = [value(r, path) for r in good]
        if all(isinstance(v, int | float) for v in values):
            place = out
            for key in path[:-1]:
                place = place[key]
            place[path[-1]] = statistics.median(values)
    out["rounds"] = results
    return out


def ratios(peer: dict, ours: dict) -> dict:
    """Each quantity's ratio, oriented so that > 1 favours tlmat."""
    out = {}
    for label, path, _, orientation in COLUMNS:
        a, b = value(peer, path), value(ours, path)
        if a is None or b is None or not (a and b):
            out[label] = None
        else:
            out[label] = b / a if orientation == "tlmat/peer" else a / b
    return out


# ----------------------------------------------------------------------------- reports


def machine() -> dict:
    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
    }
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        names = [
            line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if "model name" in line
        ]
        info["cpu"] = names[0] if names else None
        meminfo = Path("/proc/meminfo").read_text().split()
        info["memory_gib"] = round(int(meminfo[meminfo.index("MemTotal:") + 1]) / 2**20, 1)
    except (OSError, ValueError, IndexError):
        pass
    return info


def table(rows: list[dict], epochs: int, sizes: dict, rounds: int = 1) -> str:
    head = [
        "# Peers side by side",
        "",
        f"perov_5 (CDVAE files): the first {sizes['train']:,} training, {sizes['val']:,} "
        f"validation and {sizes['test']:,} test structures; target heat_ref per atom "
        f"(eV/atom); {epochs} epochs each, no early stopping, the epoch with the lowest "
        "validation MAE kept; batch size 64; each package's default model size, optimiser, "
        "learning rate, loss and schedule (alignn: its example config's). Same run, same "
        "machine; README.md beside run.py says what each driver calls."
        + (
            f" Each number is the median of {rounds} rounds, the peer and tlmat taking turns "
            "to go first."
            if rounds > 1
            else ""
        ),
        "",
        "Each cell: peer / tlmat (ratio). Ratios are oriented so that **> 1 favours tlmat**: "
        "tlmat/peer for the two rates (> 1: tlmat faster), peer/tlmat for seconds per epoch "
        "(> 1: tlmat faster), peak RSS (> 1: tlmat uses less memory) and test MAE "
        "(> 1: tlmat more accurate). Graph build: the three parts' CIFs read and turned into "
        "the package's graphs, from a cold start; s/epoch: median over the epochs (training "
        "pass, validation, checkpoints); inference: the package's prediction call from the "
        "test CIFs to numbers; peak RSS: the process that reads, trains and predicts.",
        "",
        "| peer | tlmat model | parameters | " + " | ".join(c[0] for c in COLUMNS) + " |",
        "|---|---|---|" + "---|" * len(COLUMNS),
    ]
    notes = []
    for row in rows:
        peer, ours = row["peer"], row["tlmat"]
        label = f"{row['name']} {row.get('version') or ''}".strip()
        if row.get("note"):
            notes.append(f"- **{row['name']}**: {row['note']}")
        if "error" in row:
            dashes = " | ".join("—" for _ in range(len(COLUMNS) + 1))
            head.append(f"| {label} | {row['tlmat_model']} | {dashes} |")
            notes.append(f"- **{row['name']}**: not run: {row['error']}")
            continue
        sizes_ = [value(r, ("parameters",)) for r in (peer, ours)]
        cells = [" / ".join(f"{n:,}" if isinstance(n, int) else "—" for n in sizes_)]
        for label_, path, fmt, _ in COLUMNS:
            a, b, r = value(peer, path), value(ours, path), row["ratios"][label_]
            show = [fmt.format(x) if isinstance(x, int | float) else "—" for x in (a, b)]
            cells.append(f"{show[0]} / {show[1]}" + (f" ({r:.2f}×)" if r is not None else ""))
        head.append(f"| {label} | {row['tlmat_model']} | " + " | ".join(cells) + " |")
        notes.append(f"- **{row['name']}** against tlmat's `{row['tlmat_model']}`: {row['match']}")
        for who, result in (("peer", peer), ("tlmat", ours)):
            if "error" in result:
                notes.append(f"- **{row['name']}** ({who}) failed: {result['error']}")
    return "\n".join([*head, "", *notes, ""])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=1000)
    parser.add_argument("--val", type=int, default=500)
    parser.add_argument("--test", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--peers", nargs="+", default=list(PEERS), choices=list(PEERS))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/peers"))
    parser.add_argument("--work", type=Path, default=Path("benchmarks/out/peers"))
    parser.add_argument("--torch", default=TORCH, help="the torch requirement of every venv")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds per driver")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads per driver [all cores]"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="each pair of drivers this many times, in alternating order; the table shows "
        "medians over the rounds [1]",
    )
    args = parser.parse_args()

    sys.path.insert(0, str(REPO))  # this checkout's tlmat, installed or not
    from tlmat.datasets import data_dir

    started = time.strftime("%Y-%m-%dT%H:%M:%S")
    args.work = args.work.resolve()
    args.work.mkdir(parents=True, exist_ok=True)
    sizes = {"train": args.train, "val": args.val, "test": args.test}
    data, manifest = write_splits(data_dir() / "perov_5", sizes, args.work)
    log(f"split {data} (ids sha256 {manifest['ids_sha256'][:12]}…)")

    rows = []
    for name in args.peers:
        peer = PEERS[name]
        row = {"name": name, "requirement": peer.requirement, "version": peer.version}
        row.update(tlmat_model=peer.tlmat_model, tlmat_config=peer.tlmat_config, match=peer.match)
        if peer.note:
            row["note"] = peer.note
        env = ensure_venv(peer, args.work, args.torch)
        row["environment"] = env
        if "error" in env:
            row["error"] = "install failed: " + env["error"]
            row["peer"], row["tlmat"] = {}, {}
            log(f"{name}: {row['error'].splitlines()[0]}")
            rows.append(row)
            report(args, rows, manifest, started, sizes)
            continue
        extra = ["--model", peer.tlmat_model]
        if peer.tlmat_config:
            extra += ["--model-config", json.dumps(peer.tlmat_config)]
        drivers = {
            "peer": (name, env["python"], DRIVERS / f"{name}_driver.py", []),
            "tlmat": (f"tlmat-for-{name}", sys.executable, DRIVERS / "tlmat_driver.py", extra),
        }
        measured: dict[str, list[dict]] = {"peer": [], "tlmat": []}
        for round_ in range(args.rounds):
            # alternate who goes first, so that a machine slowing down over a round
            # weighs on both
            for who in ("peer", "tlmat") if round_ % 2 == 0 else ("tlmat", "peer"):
                label, python, script, more = drivers[who]
                measured[who].append(run_driver(label, python, script, data, args.work, args, more))
        for who in ("peer", "tlmat"):
            row[who] = median_result(measured[who])
        for who in ("peer", "tlmat"):
            got = row[who].get("split_sha256")
            if got is not None and got != manifest["ids_sha256"]:
                row[who]["error"] = f"read another split (ids sha256 {got})"
        row["ratios"] = ratios(row["peer"], row["tlmat"])
        rows.append(row)
        report(args, rows, manifest, started, sizes)

    log(f"wrote {args.out / 'peers.json'} and {args.out / 'peers.md'}")
    print((args.out / "peers.md").read_text())


def report(args, rows: list[dict], manifest: dict, started: str, sizes: dict) -> None:
    """``peers.json`` and ``peers.md`` of the rows so far (written after every peer, so
    that a stopped run keeps what it measured)."""
    import tlmat

    results = {
        "command": " ".join(["python3", *sys.argv]),
        "started": started,
        "written": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "machine": machine(),
        "tlmat": {"version": tlmat.__version__, "pip_freeze": pip_freeze(Path(sys.executable))},
        "split": {k: v for k, v in manifest.items() if k != "ids"},
        "settings": {
            "epochs": args.epochs,
            "early_stopping": "none",
            "selection": "the epoch with the lowest validation MAE",
            "batch_size": args.batch_size,
            "seed": args.seed,
            "torch": args.torch,
            "threads": args.threads or "torch's default (every core)",
            "rounds": args.rounds,
        },
        "ratio_orientation": {c[0]: c[3] for c in COLUMNS} | {"meaning": "> 1 favours tlmat"},
        "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "peers.json").write_text(json.dumps(results, indent=1))
    (args.out / "peers.md").write_text(table(rows, args.epochs, sizes, args.rounds))


if __name__ == "__main__":
    main()
