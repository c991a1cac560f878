"""alignn (PyPI ``alignn``, NIST's ALIGNN) trained from scratch on the split through
``alignn.train_alignn.train_for_folder``, the function behind its ``train_alignn.py``
command: a folder of CIFs with ``id_prop.csv`` (file name, value) and a config file.

The config is the training part of alignn's example config (``config_example.json``,
the command's default ``--config_name``): AdamW, learning rate 1e-3, weight decay 1e-5,
one-cycle schedule (the trainer's loss for ALIGNN models is L1; ``TrainingConfig``'s own
default learning rate, 1e-2, diverges in a few epochs here), with what this benchmark
fixes or the folder needs: the model ``alignn_atomwise_pure`` at its default size (2
ALIGNN + 2 GCN layers, 64 wide; the DGL-free model of this release, so no DGL is
installed) with CGCNN atom features (92) and no force head; its graph builder
``pure_torch`` with the 12 nearest neighbours within 8 Å and every pair of those bonds
in the line graph (``three_body_cutoff`` = cutoff, the graph of the ALIGNN paper and of
tlmat's ``alignn``; the config default cuts angles at 3.5 Å); the split given by counts
with the data order kept (``id_prop.csv`` lists train, val, test in order); batch size
64; data loaders in the training process (``num_workers`` 0, as alignn's example
config); ``--epochs`` epochs, no early stopping.

Measured: graph build (``train_for_folder`` from its start, which parses every CIF with
jarvis, to the end of ``get_train_val_loaders``, which builds every graph and line
graph into LMDB), each epoch (training pass + validation + alignn's per-epoch
checkpoints and JSON logs), inference as alignn predicts with a trained pure-torch model
(``load_pure_torch_model`` once, then for each test CIF ``Atoms.from_cif`` →
``build_pure_torch_graph`` → forward, the steps of its ``get_prediction_pure``), the
forward pass alone on the built test graphs, test MAE of ``best_model.pt`` (the epoch
with the lowest validation L1 loss, i.e. MAE; alignn's own end-of-training test score
uses the last epoch), peak RSS.

Run by ``benchmarks/peers/run.py`` in alignn's own virtual environment.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as common

CUTOFF, NEIGHBOURS = 8.0, 12


class StopOnIter:
    """The test loader: the trainer's first use of it marks the end of the last epoch;
    its LMDB stays open after training for the forward-pass measurement."""

    def __init__(self, loader, clock: common.EpochClock):
        self.__dict__.update(_loader=loader, _clock=clock)
        loader.dataset.close = lambda: None  # train_dgl closes it; we close it later

    def __iter__(self):
        if self._clock.end is None:
            self._clock.stop()
        return iter(self._loader)

    def __len__(self) -> int:
        return len(self._loader)

    def __getattr__(self, name):
        return getattr(self._loader, name)


def main() -> None:
    args = common.arguments(__doc__.splitlines()[0])
    import alignn.train_alignn as train_alignn
    import torch
    from alignn.deprecated.pretrained import load_pure_torch_model
    from alignn.torch_graph_builder import build_pure_torch_graph
    from jarvis.core.atoms import Atoms
    from torch.utils.data import DataLoader

    sizes = {part: len(common.rows(args.data, part)) for part in common.PARTS}
    out_dir = args.workdir / "alignn-out"
    config = {
        "dataset": "user_data",
        "target": "target",
        "id_tag": "jid",
        "neighbor_strategy": "pure_torch",
        "atom_features": "cgcnn",
        "cutoff": CUTOFF,
        "max_neighbors": NEIGHBOURS,
        "three_body_cutoff": CUTOFF,
        "n_train": sizes["train"],
        "n_val": sizes["val"],
        "n_test": sizes["test"],
        "keep_data_order": True,
        "learning_rate": 1e-3,
        "weight_decay": 1e-5,
        "optimizer": "adamw",
        "scheduler": "onecycle",
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "num_workers": 0,
        "random_seed": args.seed,
        "output_dir": str(out_dir),
        "filename": str(args.workdir / "lmdb-"),
        "model": {
            "name": "alignn_atomwise_pure",
            "atom_input_features": 92,
            "calculate_gradient": False,
            "gradwise_weight": 0.0,
            "three_body_cutoff": CUTOFF,
        },
    }
    config_file = args.workdir / "config.json"
    config_file.write_text(json.dumps(config, indent=1))

    clock, marks, kept = common.EpochClock(), {}, {}
    get_loaders = train_alignn.get_train_val_loaders

    def timed_loaders(*a, **k):
        train, val, test, prepare = get_loaders(*a, **k)
        marks["graphs_built"] = time.perf_counter()
        kept["test"] = test
        return common.ClockedLoader(train, clock), val, StopOnIter(test, clock), prepare

    train_alignn.get_train_val_loaders = timed_loaders
    start = time.perf_counter()
    train_alignn.train_for_folder(
        root_dir=str(args.data / "alignn"),
        config_name=str(config_file),
        file_format="cif",
        output_dir=str(out_dir),
    )
    build_s = marks["graphs_built"] - start
    history = json.loads((out_dir / "history_val.json").read_text())
    val_mae = [epoch[1] for epoch in history]  # graph-level L1 loss of each epoch

    model, saved = load_pure_torch_model(str(out_dir), device="cpu")
    # the built test graphs in batches of the training batch size (alignn's own test loader
    # takes one structure per batch)
    test_loader = DataLoader(
        kept["test"].dataset,
        batch_size=args.batch_size,
        shuffle=False,
        collate_fn=kept["test"].collate_fn,
    )
    predicted, expected = [], []
    start = time.perf_counter()
    with torch.no_grad():
        for g, lg, lat, target in test_loader:
            predicted += model([g, lg, lat])["out"].view(-1).tolist()
            expected += target.view(-1).tolist()
    forward_s = time.perf_counter() - start
    del test_loader.dataset.close  # the dataset's own close again
    test_loader.dataset.close()
    test_mae = common.mae(predicted, expected)

    # a user's prediction for new structures, as get_prediction_pure does it
    test_rows = common.rows(args.data, "test")
    start = time.perf_counter()
    e2e = []
    with torch.no_grad():
        for item_id, _ in test_rows:
            atoms = Atoms.from_cif(str(common.cif_path(args.data, "test", item_id)))
            g, lg = build_pure_torch_graph(
                atoms=atoms,
                two_body_cutoff=float(saved["cutoff"]),
                max_neighbors=int(saved["max_neighbors"]),
                atom_features="cgcnn",
                compute_line_graph=True,
            )
            lat = torch.tensor(atoms.lattice_mat).type(torch.get_default_dtype())
            e2e.append(float(model([g, lg, lat])["out"].view(-1)[0]))
    inference_s = time.perf_counter() - start

    common.finish(
        args,
        {
            "package": "alignn",
            "version": importlib.metadata.version("alignn"),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "model": "alignn_atomwise_pure at its defaults (2 ALIGNN + 2 GCN layers, 64 "
            "wide), CGCNN atom features; 12 nearest within 8 Å, every bond pair",
            "parameters": sum(p.numel() for p in model.parameters()),
            "training": {
                "optimizer": f"AdamW (weight decay {saved['weight_decay']})",
                "lr": saved["learning_rate"],
                "scheduler": saved["scheduler"],
                "loss": "L1 (train_dgl's loss for ALIGNN models)",
                "batch_size": saved["batch_size"],
                "epochs": saved["epochs"],
                "selection": "lowest validation MAE (best_model.pt)",
            },
            "split_sha256": common.split_digest(args.data),
            "graph_build": {
                **common.rate(sum(sizes.values()), build_s),
                "what": "train_for_folder: jarvis CIF parse, then get_train_val_loaders "
                "(pure-torch graphs + line graphs into LMDB)",
            },
            "epochs_run": len(history),
            "epoch_seconds": clock.seconds(args.epochs),
            "val_mae": val_mae,
            "inference": {
                **common.rate(len(e2e), inference_s),
                "what": "per structure: Atoms.from_cif, build_pure_torch_graph, forward",
                "test_mae": common.mae(e2e, [v for _, v in test_rows]),
            },
            "forward": {
                **common.rate(len(predicted), forward_s),
                "what": "LMDB test graphs, batches of the training batch size",
            },
            "test_mae": test_mae,
        },
    )


if __name__ == "__main__":
    main()
