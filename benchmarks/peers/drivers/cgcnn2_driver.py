"""cgcnn2 (PyPI ``cgcnn2``, a maintained reproduction of Xie & Grossman's CGCNN) trained
from scratch on the split, through its public pieces the way its ``cgcnn-tr`` command
trains: ``CIFData`` folders (``id_prop.csv`` + CIFs + ``atom_init.json``, copied from the
package as ``cgcnn-init`` does), ``collate_pool``, ``CrystalGraphConvNet`` at the
command's defaults (atom_fea_len 64, 3 convolutions, h_fea_len 128, one hidden layer;
12 neighbours within 8 Å, Gaussians every 0.2 Å), Adam at the command's learning rate
1e-2, MSE loss on the raw target (``cgcnn-tr`` computes a ``Normalizer`` but trains on
the raw values), no scheduler, a checkpoint written at each better epoch.

Differences from ``cgcnn-tr``, both for equal rules across packages: the batch size is
the benchmark's (64; the command's default is 256) and the kept epoch is the one with
the lowest validation MAE (the command keeps the lowest validation MSE).

Measured: graph build (every structure of the three parts read and turned into its
graph through ``CIFData``, which caches them), each epoch (training pass + validation +
checkpoint), inference through ``cgcnn2.utils.cgcnn_pred`` (checkpoint + CIF folder →
predictions, as a user predicts new structures: it reads and builds each graph again,
batch size 1 as the function fixes it), the forward pass alone on the built test graphs
(batches of 64), test MAE of the kept epoch, peak RSS.

Run by ``benchmarks/peers/run.py`` in cgcnn2's own virtual environment.
"""

from __future__ import annotations

import importlib.metadata
import importlib.resources
import logging
import os
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as common


def main() -> None:
    args = common.arguments(__doc__.splitlines()[0])
    import torch
    from cgcnn2.data import CIFData, collate_pool
    from cgcnn2.model import CrystalGraphConvNet
    from cgcnn2.utils import Normalizer, cgcnn_pred, seed_everything
    from torch import nn
    from torch.utils.data import DataLoader

    logging.disable(logging.INFO)  # cgcnn_pred logs every structure otherwise
    seed_everything(args.seed)
    folders = {part: args.data / "cgcnn" / part for part in common.PARTS}
    atom_init = importlib.resources.files("cgcnn2") / "asset" / "atom_init.json"
    with importlib.resources.as_file(atom_init) as source:
        for folder in folders.values():
            shutil.copyfile(source, folder / "atom_init.json")

    # graphs of every part, built once and kept (CIFData's default unlimited cache)
    start = time.perf_counter()
    datasets = {part: CIFData(str(folder)) for part, folder in folders.items()}
    for dataset in datasets.values():
        for i in range(len(dataset)):
            dataset[i]
    build_s = time.perf_counter() - start
    n_all = sum(len(d) for d in datasets.values())

    # cgcnn-tr computes (and saves) a normaliser from ≤ 500 structures, unused in the loss
    sample = [datasets["train"][i] for i in range(min(500, len(datasets["train"])))]
    _, sample_target, _ = collate_pool(sample)
    normalizer = Normalizer(sample_target)

    structures, _, _ = datasets["train"][0]
    model = CrystalGraphConvNet(
        orig_atom_fea_len=structures[0].shape[-1],
        nbr_fea_len=structures[1].shape[-1],
        atom_fea_len=64,
        n_conv=3,
        h_fea_len=128,
        n_h=1,
    )
    loader = {
        part: DataLoader(
            datasets[part],
            batch_size=args.batch_size,
            shuffle=part == "train",
            num_workers=0,
            collate_fn=collate_pool,
        )
        for part in common.PARTS
    }
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    criterion = nn.MSELoss()

    def outputs(part: str) -> tuple[list[float], list[float]]:
        model.eval()
        predicted, expected = [], []
        with torch.inference_mode():
            for (atom_fea, nbr_fea, nbr_idx, crystal_idx), target, _ in loader[part]:
                output, _ = model(atom_fea, nbr_fea, nbr_idx, crystal_idx)
                predicted += output.view(-1).tolist()
                expected += target.view(-1).tolist()
        return predicted, expected

    clock = common.EpochClock()
    train_loader = common.ClockedLoader(loader["train"], clock)
    checkpoint = args.workdir / "best_model.ckpt"
    best_val, best_epoch, val_history = float("inf"), -1, []
    for epoch in range(args.epochs):
        model.train()
        for (atom_fea, nbr_fea, nbr_idx, crystal_idx), target, _ in train_loader:
            optimizer.zero_grad()
            output, _ = model(atom_fea, nbr_fea, nbr_idx, crystal_idx)
            loss = criterion(output, target)
            loss.backward()
            optimizer.step()
        val_mae = common.mae(*outputs("val"))
        val_history.append(val_mae)
        if val_mae < best_val:
            best_val, best_epoch = val_mae, epoch
            savepoint = {
                "epoch": epoch + 1,
                "state_dict": model.state_dict(),
                "normalizer": normalizer.state_dict(),
                "best_mae_error": val_mae,
                # what cgcnn_pred reads back to rebuild the network
                "args": {"atom_fea_len": 64, "n_conv": 3, "h_fea_len": 128, "n_h": 1},
            }
            torch.save(savepoint, checkpoint)
    clock.stop()

    # tensors, numbers and dicts only: no unpickling of objects
    model.load_state_dict(torch.load(checkpoint, weights_only=True)["state_dict"])
    start = time.perf_counter()
    predicted, expected = outputs("test")
    forward_s = time.perf_counter() - start
    test_mae = common.mae(predicted, expected)

    # a user's prediction for new structures: checkpoint + folder of CIFs
    start = time.perf_counter()
    e2e, _ = cgcnn_pred(str(checkpoint), str(folders["test"]), verbose=0)
    inference_s = time.perf_counter() - start
    truth = dict(common.rows(args.data, "test"))
    e2e_ids = sorted(truth)  # CIFData_NoTarget reads the folder's CIFs sorted by id
    e2e_mae = common.mae(e2e, [truth[i] for i in e2e_ids])

    common.finish(
        args,
        {
            "package": "cgcnn2",
            "version": importlib.metadata.version("cgcnn2"),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "model": "CrystalGraphConvNet, cgcnn-tr defaults (64-d atoms, 3 convolutions, "
            "128-d hidden, 1 hidden layer; 12 neighbours within 8 Å)",
            "parameters": sum(p.numel() for p in model.parameters()),
            "training": {
                "optimizer": "Adam",
                "lr": 1e-2,
                "scheduler": "none",
                "loss": "MSE (raw target)",
                "batch_size": args.batch_size,
                "epochs": args.epochs,
                "selection": "lowest validation MAE",
            },
            "split_sha256": common.split_digest(args.data),
            "graph_build": {
                **common.rate(n_all, build_s),
                "what": "CIFData: pymatgen CIF parse + neighbour list + Gaussian expansion",
            },
            "epochs_run": len(val_history),
            "epoch_seconds": clock.seconds(args.epochs),
            "val_mae": val_history,
            "best_epoch": best_epoch,
            "inference": {
                **common.rate(len(e2e), inference_s),
                "what": "cgcnn_pred(checkpoint, CIF folder): parse, graph, forward (batch 1)",
                "test_mae": e2e_mae,
            },
            "forward": {
                **common.rate(len(predicted), forward_s),
                "what": "built test graphs, batches of the training batch size",
            },
            "test_mae": test_mae,
        },
    )


if __name__ == "__main__":
    main()
