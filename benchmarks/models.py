"""Benchmark: training speed and peak memory of every registered architecture on the same
real perovskites, and tlmat against the reference packages at equal size in the same run.

Run:  python benchmarks/models.py [--train 1000] [--val 500] [--epochs 3]
                                  [--out benchmarks/results/models.json]

Measured, each in a fresh subprocess (so peak memory is the architecture's own):
- ``tlmat``: seconds per training epoch through ``tlmat.training.fit`` (the path users get:
  Lightning, validation every epoch) and peak RSS, for each architecture at its default
  size and at the sizes the model-zoo grids train (``*-small`` presets are not timed);
- ``loop``: seconds per epoch of a plain forward/backward/Adam loop over prebuilt batches,
  for tlmat's model and for the reference at the same size in the same process:
  PyG's ``torch_geometric.nn.models.SchNet`` (fed tlmat's periodic edges) and the
  ``alignn`` package's pure-torch ALIGNN (fed its own graphs); for ALIGNN also a whole
  epoch as a trainer runs it: batches assembled afresh each epoch in shuffled order
  (tlmat's ``GraphLoader``, alignn's ``batch_torch_graph_pairs``), then validation;
- graph construction: tlmat's builder with line graphs (in chunks of 256, as the cache
  builds them) against ``alignn``'s ``build_pure_torch_graph`` on the same structures,
  and the line-graph step alone (bond pairs and angle cosines from the same neighbour
  lists: tlmat's per chunk, alignn's ``_line_graph_edges`` + ``torch_bond_cosines`` per
  structure, as its builder calls them), as the median of five alternating passes.
Ratios are reference time / tlmat time (> 1: tlmat is faster).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from tlmat.data import Split, load_dataset
from tlmat.datasets import data_dir
from tlmat.models import registry
from tlmat.training import TrainConfig, fit
from tlmat.training.fit import versions
from tlmat.transfer.sources import fresh_model

#: what is timed through fit(): architecture defaults and the sizes the zoo grids train
#: (the default CGAT, 40 M parameters, is left out: ≈ 0.4 s per structure on 2 cores)
CONFIGS = [
    "cgcnn-mp",
    "cgcnn",
    "schnet-arch2",
    "schnet",
    "alignn-atomwise-pure",
    "alignn",
    "cgat-cpu",
]


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def perovskites(settings, n: int, cache: Path):
    path = data_dir() / "perov_5" / "train.csv.gz"
    return load_dataset(path, settings, ["heat_ref"], cache_dir=cache, limit=n)


def time_fit(spec: str, n_train: int, n_val: int, epochs: int, cache: Path) -> dict:
    """Seconds per epoch and peak memory of tlmat's training path for one model."""
    torch.set_num_threads(2)
    trained = fresh_model(registry.model_config(spec), seed=0)
    model = trained.model
    start = time.perf_counter()
    dataset = perovskites(model.graph_settings, n_train + n_val, cache)
    graphs_s = time.perf_counter() - start
    split = Split(np.arange(n_train), np.arange(n_train, n_train + n_val), np.arange(0))
    config = TrainConfig(
        target="heat_ref", epochs=epochs, early_stopping_patience=None, progress_bar=False
    )
    with tempfile.TemporaryDirectory() as run_dir:
        result = fit(trained, dataset, split, config, run_dir)
    return {
        "model": spec,
        "architecture": model.architecture,
        "parameters": sum(p.numel() for p in model.parameters()),
        "graph_seconds": graphs_s,
        "seconds_per_epoch": result.seconds / max(result.epochs, 1),
        "peak_rss_mib": peak_rss_mib(),
    }


def loop_seconds(model_fn, batches, epochs: int = 2) -> float:
    """Seconds per epoch of forward, backward and an Adam step over ``batches`` (the
    first epoch warms up and is not counted)."""
    model, forward = model_fn()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    model.train()
    times = []
    for _ in range(epochs + 1):
        start = time.perf_counter()
        for batch in batches:
            optimizer.zero_grad()
            forward(model, batch).square().mean().backward()
            optimizer.step()
        times.append(time.perf_counter() - start)
    return float(np.mean(times[1:]))


def epoch_seconds(model_fn, train_batches, val_batches, epochs: int = 2) -> float:
    """Seconds per full epoch: the batches are assembled afresh each epoch (shuffled, as
    a data loader does), forward, backward and an Adam step on each, then a forward pass
    over the validation batches; the first epoch warms up and is not counted."""
    model, forward = model_fn()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    times = []
    for epoch in range(epochs + 1):
        start = time.perf_counter()
        model.train()
        for batch in train_batches(epoch):
            optimizer.zero_grad()
            forward(model, batch).square().mean().backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            for batch in val_batches():
                forward(model, batch)
        times.append(time.perf_counter() - start)
    return float(np.mean(times[1:]))


def reference_schnet(n_train: int, cache: Path) -> dict:
    """tlmat's SchNet and PyG's at equal size on the same periodic edges."""
    from torch_geometric.nn.models import SchNet as PygSchNet

    from tlmat.data.loader import GraphLoader

    torch.set_num_threads(2)
    config = registry.model_config("schnet-arch1")
    dataset = perovskites(config.graph_settings(), n_train, cache)
    batches = list(GraphLoader(dataset, None, 64))

    def ours():
        return registry.build(config), lambda m, b: m(b)

    def pyg():
        holder: dict = {}
        model = PygSchNet(
            hidden_channels=config.n_atom_basis,
            num_filters=config.n_filters,
            num_interactions=config.n_interactions,
            num_gaussians=config.n_rbf,
            cutoff=config.cutoff,
            interaction_graph=lambda pos, batch: (holder["b"].edge_index, holder["b"].edge_dist),
        )

        def forward(m, b):
            holder["b"] = b
            return m(b.z, b.pos, b.batch)

        return model, forward

    tlmat_s, pyg_s = loop_seconds(ours, batches), loop_seconds(pyg, batches)
    return {
        "model": "schnet-arch1 (6 × 128, 300 Gaussians, 6 Å)",
        "structures": n_train,
        "tlmat_seconds_per_epoch": tlmat_s,
        "pyg_seconds_per_epoch": pyg_s,
        "ratio_pyg_over_tlmat": pyg_s / tlmat_s,
    }


def reference_alignn(n_train: int, n_val: int, cache: Path) -> dict:
    """Graph construction and epoch time against the ``alignn`` package at equal size
    (its pure-torch ALIGNN, 2 + 2 layers, 64 wide, layer norm — its own defaults)."""
    from alignn import torch_graph_builder as builder
    from alignn.models import alignn_atomwise_pure as pure
    from jarvis.core.atoms import pmg_to_atoms

    from tlmat.data.loader import GraphLoader, inference_batch_size
    from tlmat.graphs.builder import (
        add_line_graphs,
        atom_graph,
        graphs_or_problems,
        structure_arrays,
    )
    from tlmat.io import read_records

    torch.set_num_threads(2)
    n = n_train + n_val
    records = list(read_records(data_dir() / "perov_5" / "train.csv.gz", [], limit=n))
    structures = [r.structure for r in records]
    config = registry.model_config("alignn-atomwise-pure")
    settings = config.graph_settings()
    # whole graphs (neighbour search + line graph), in chunks of 256 as the cache builds them
    start = time.perf_counter()
    for i in range(0, n, 256):
        graphs_or_problems(records[i : i + 256], settings)
    tlmat_graph_s = time.perf_counter() - start
    start = time.perf_counter()
    theirs = [
        builder.build_pure_torch_graph(pmg_to_atoms(s), two_body_cutoff=8.0, max_neighbors=12)
        for s in structures
    ]
    alignn_graph_s = time.perf_counter() - start

    # the line graph alone, from the same neighbour lists (alignn's own from its graphs);
    # five passes each, alternating: the first pass of either pays for fresh memory pages
    atom_graphs = [atom_graph(*structure_arrays(s), settings) for s in structures]

    def tlmat_line_graphs() -> float:
        start = time.perf_counter()
        for i in range(0, n, 256):
            chunk = atom_graphs[i : i + 256]
            add_line_graphs([g for g, _ in chunk], [p for _, p in chunk], settings)
        return time.perf_counter() - start

    def alignn_line_graphs() -> float:
        start = time.perf_counter()
        for g, _ in theirs:
            a, b = builder._line_graph_edges(g.src, g.dst, g.num_nodes)
            builder.torch_bond_cosines(g.edata["r"][a], g.edata["r"][b])
        return time.perf_counter() - start

    line_passes = [(tlmat_line_graphs(), alignn_line_graphs()) for _ in range(5)]
    tlmat_line_s, alignn_line_s = np.median(line_passes, axis=0)

    dataset = perovskites(settings, n, cache)
    ours_batches = list(GraphLoader(dataset, np.arange(n_train), 64))
    their_batches = [
        builder.batch_torch_graph_pairs(theirs[i : i + 64]) for i in range(0, n_train, 64)
    ]
    val = np.arange(n_train, n)

    def our_train(epoch: int):
        loader = GraphLoader(dataset, np.arange(n_train), 64, shuffle=True, seed=0)
        loader.set_epoch(epoch)
        return loader

    def our_val():
        # batches sized to the graphs, as tlmat.training.fit validates
        return GraphLoader(dataset, val, inference_batch_size(dataset, val))

    def their_train(epoch: int):
        order = np.random.default_rng(epoch).permutation(n_train)
        for i in range(0, n_train, 64):
            yield builder.batch_torch_graph_pairs([theirs[k] for k in order[i : i + 64]])

    def their_val():
        # alignn's trainer validates in batches of its training batch size (64)
        for i in range(n_train, n, 64):
            yield builder.batch_torch_graph_pairs(theirs[i : min(i + 64, n)])

    def ours():
        return registry.build(config), lambda m, b: m(b)

    def reference():
        settings_ = pure.ALIGNNAtomWisePureConfig(
            name="alignn_atomwise_pure",
            atom_input_features=92,
            gradwise_weight=0.0,
            calculate_gradient=False,
        )
        return pure.ALIGNNAtomWisePure(settings_), lambda m, b: m((b[0], b[1], None))["out"]

    tlmat_s = loop_seconds(ours, ours_batches)
    alignn_s = loop_seconds(reference, their_batches)
    tlmat_epoch = epoch_seconds(ours, our_train, our_val)
    alignn_epoch = epoch_seconds(reference, their_train, their_val)
    return {
        "model": "ALIGNN 2 + 2 layers, 64 wide (alignn's ALIGNNAtomWisePure defaults)",
        "structures": n_train,
        "graph_structures": n,
        "tlmat_graphs_per_s": n / tlmat_graph_s,
        "alignn_graphs_per_s": n / alignn_graph_s,
        "graph_ratio_alignn_over_tlmat": alignn_graph_s / tlmat_graph_s,
        "tlmat_line_graphs_per_s": n / tlmat_line_s,
        "alignn_line_graphs_per_s": n / alignn_line_s,
        "line_graph_ratio_alignn_over_tlmat": alignn_line_s / tlmat_line_s,
        "line_graph_first_pass_ratio": line_passes[0][1] / line_passes[0][0],
        "tlmat_seconds_per_epoch": tlmat_s,
        "alignn_seconds_per_epoch": alignn_s,
        "ratio_alignn_over_tlmat": alignn_s / tlmat_s,
        "epoch_with_batching_and_validation": {
            "validation_structures": n_val,
            "tlmat_seconds": tlmat_epoch,
            "alignn_seconds": alignn_epoch,
            "ratio_alignn_over_tlmat": alignn_epoch / tlmat_epoch,
        },
    }


def subprocess_json(*args: str) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, *args], capture_output=True, text=True, check=False
    )
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr else "failed"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=1000)
    parser.add_argument("--val", type=int, default=500)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/models.json"))
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--reference", choices=["schnet", "alignn"], help=argparse.SUPPRESS)
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "tlmat-bm")
    args = parser.parse_args()
    if args.one:
        print(json.dumps(time_fit(args.one, args.train, args.val, args.epochs, args.cache)))
        return
    if args.reference == "schnet":
        print(json.dumps(reference_schnet(args.train, args.cache)))
        return
    if args.reference == "alignn":
        print(json.dumps(reference_alignn(args.train, args.val, args.cache)))
        return
    sizes = ["--train", str(args.train), "--val", str(args.val), "--epochs", str(args.epochs)]
    common = [*sizes, "--cache", str(args.cache)]
    # graphs first, untimed, so that every run below reads a warm cache
    for spec in CONFIGS:
        perovskites(registry.model_config(spec).graph_settings(), args.train + args.val, args.cache)
    rows = [subprocess_json("--one", spec, *common) for spec in CONFIGS]
    references = [subprocess_json("--reference", name, *common) for name in ("schnet", "alignn")]
    results = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            **versions(),
        },
        "data": f"perov_5/train.csv.gz: first {args.train} train + {args.val} validation",
        "fit": rows,
        "references": references,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    for row in rows + references:
        print(row)
    print(f"→ {args.out}")


if __name__ == "__main__":
    main()
