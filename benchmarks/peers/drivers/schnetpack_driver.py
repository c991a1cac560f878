"""schnetpack (PyPI ``schnetpack``, SchNetPack 2 of Schütt et al.) training a SchNet
property model from scratch on the split through its Python API, the way its tutorial
"Training a neural network on QM9" does, with the sizes and settings of its ``spktrain``
configuration: an ``ASEAtomsData`` database, an ``AtomsDataModule`` (transforms
``RemoveOffsets`` of the mean, ``MatScipyNeighborList``, ``CastTo32``), ``SchNet`` with
128 features and 6 interactions, 20 Gaussians and a cosine cutoff at 5 Å, an ``Atomwise``
output averaged over atoms (the target is per atom), ``NeuralNetworkPotential`` with
``PairwiseDistances``, ``AtomisticTask`` with AdamW at learning rate 5e-4 (the
configuration's experiments), MSE loss and schnetpack's ``ReduceLROnPlateau`` (factor
0.5, patience 75), a Lightning ``Trainer`` on the CPU.

The newest release that installs beside torch 2.13 is 2.0.4: schnetpack 2.1.x requires
sympy ≤ 1.12 and torch 2.13 requires sympy ≥ 1.13.3 (pip then falls back to torch 2.4.1,
a CUDA build).

For equal rules: the split is given by index (``split.npz``), batch size 64, data loading
in the training process (``num_workers`` 0; the configuration's default is 8),
``--epochs`` epochs with no early stopping and no weight averaging (the command's
``ema`` callback is off), schnetpack's ``ModelCheckpoint`` on the validation MAE keeps
the best model.

Measured: graph build (every CIF read by ASE into the database, then every structure's
neighbour list once; schnetpack recomputes neighbour lists in each epoch's data loading,
which is in the epoch time), each epoch (training pass with neighbour lists +
validation + checkpoint), inference as schnetpack predicts (``ase.io.read`` of each test
CIF, ``AtomsConverter`` with the same neighbour list in batches of 64, the best model),
the forward pass alone on converted test batches, test MAE of the best epoch, peak RSS.

Run by ``benchmarks/peers/run.py`` in schnetpack's own virtual environment.
"""

from __future__ import annotations

import csv
import importlib.metadata
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as common

CUTOFF, LR = 5.0, 5e-4


def main() -> None:
    args = common.arguments(__doc__.splitlines()[0])
    import ase.io
    import numpy as np
    import pytorch_lightning as pl
    import schnetpack as spk
    import schnetpack.transform as trn
    import torch
    import torchmetrics
    from pytorch_lightning.loggers import CSVLogger
    from schnetpack.data import ASEAtomsData, AtomsDataModule

    pl.seed_everything(args.seed)
    rows = {part: common.rows(args.data, part) for part in common.PARTS}
    order = [(part, i, y) for part in common.PARTS for i, y in rows[part]]
    sizes = [len(rows[part]) for part in common.PARTS]
    bounds = np.cumsum([0, *sizes])
    np.savez(
        args.workdir / "split.npz",
        train_idx=np.arange(bounds[0], bounds[1]),
        val_idx=np.arange(bounds[1], bounds[2]),
        test_idx=np.arange(bounds[2], bounds[3]),
    )

    start = time.perf_counter()
    atoms = [ase.io.read(common.cif_path(args.data, p, i)) for p, i, _ in order]
    database = args.workdir / "perov.db"
    if database.exists():
        database.unlink()
    data = ASEAtomsData.create(str(database), distance_unit="Ang", property_unit_dict={"y": "eV"})
    data.add_systems([{"y": np.array([y])} for _, _, y in order], atoms)
    datamodule = AtomsDataModule(
        str(database),
        batch_size=args.batch_size,
        num_train=sizes[0],
        num_val=sizes[1],
        num_test=sizes[2],
        split_file=str(args.workdir / "split.npz"),
        transforms=[
            trn.RemoveOffsets("y", remove_mean=True, is_extensive=False),
            trn.MatScipyNeighborList(cutoff=CUTOFF),
            trn.CastTo32(),
        ],
        property_units={"y": "eV"},
        distance_unit="Ang",
        num_workers=0,
        pin_memory=False,
    )
    datamodule.prepare_data()
    datamodule.setup()
    for subset in (datamodule.train_dataset, datamodule.val_dataset, datamodule.test_dataset):
        for i in range(len(subset)):
            subset[i]
    build_s = time.perf_counter() - start

    schnet = spk.representation.SchNet(
        n_atom_basis=128,
        n_interactions=6,
        radial_basis=spk.nn.GaussianRBF(n_rbf=20, cutoff=CUTOFF),
        cutoff_fn=spk.nn.CosineCutoff(CUTOFF),
    )
    model = spk.model.NeuralNetworkPotential(
        representation=schnet,
        input_modules=[spk.atomistic.PairwiseDistances()],
        output_modules=[spk.atomistic.Atomwise(n_in=128, output_key="y", aggregation_mode="avg")],
        postprocessors=[trn.CastTo64(), trn.AddOffsets("y", add_mean=True, is_extensive=False)],
    )
    task = spk.task.AtomisticTask(
        model=model,
        outputs=[
            spk.task.ModelOutput(
                name="y",
                loss_fn=torch.nn.MSELoss(),
                loss_weight=1.0,
                metrics={"MAE": torchmetrics.MeanAbsoluteError()},
            )
        ],
        optimizer_cls=torch.optim.AdamW,
        optimizer_args={"lr": LR, "weight_decay": 0.0},
        scheduler_cls=spk.train.ReduceLROnPlateau,
        scheduler_args={
            "mode": "min",
            "factor": 0.5,
            "patience": 75,
            "threshold": 0.0,
            "threshold_mode": "rel",
            "cooldown": 10,
            "min_lr": 0.0,
            "smoothing_factor": 0.0,
        },
        scheduler_monitor="val_loss",
    )

    clock = common.EpochClock()

    class Clock(pl.Callback):
        def on_train_epoch_start(self, trainer, pl_module) -> None:
            clock.tick()

        def on_train_end(self, trainer, pl_module) -> None:
            clock.stop()

    best_path = args.workdir / "best_model"
    checkpoint = spk.train.ModelCheckpoint(
        model_path=str(best_path),
        dirpath=str(args.workdir / "checkpoints"),
        monitor="val_y_MAE",
        mode="min",
        save_top_k=1,
    )
    trainer = pl.Trainer(
        max_epochs=args.epochs,
        accelerator="cpu",
        callbacks=[checkpoint, Clock()],
        logger=CSVLogger(str(args.workdir / "logs")),
        default_root_dir=str(args.workdir),
        enable_progress_bar=False,
    )
    trainer.fit(task, datamodule=datamodule)
    val_mae = []
    for metrics in (args.workdir / "logs").rglob("metrics.csv"):
        with open(metrics) as handle:
            val_mae = [float(r["val_y_MAE"]) for r in csv.DictReader(handle) if r.get("val_y_MAE")]

    # schnetpack saves the whole model object, written by this run in its own work
    # folder; never a downloaded file
    best = torch.load(best_path, map_location="cpu", weights_only=False)
    best.eval()
    converter = spk.interfaces.AtomsConverter(
        neighbor_list=trn.MatScipyNeighborList(cutoff=CUTOFF), dtype=torch.float32
    )
    test_rows = rows["test"]
    truth = [y for _, y in test_rows]
    n = args.batch_size

    # a user's prediction for new structures: read, convert in batches, predict
    start = time.perf_counter()
    e2e = []
    test_atoms = [ase.io.read(common.cif_path(args.data, "test", i)) for i, _ in test_rows]
    for k in range(0, len(test_atoms), n):
        e2e += best(converter(test_atoms[k : k + n]))["y"].detach().view(-1).tolist()
    inference_s = time.perf_counter() - start

    batches = [converter(test_atoms[k : k + n]) for k in range(0, len(test_atoms), n)]
    predicted = []
    start = time.perf_counter()
    for batch in batches:
        predicted += best(batch)["y"].detach().view(-1).tolist()
    forward_s = time.perf_counter() - start

    common.finish(
        args,
        {
            "package": "schnetpack",
            "version": importlib.metadata.version("schnetpack"),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "model": "SchNet 6 × 128, 20 Gaussians, cosine cutoff 5 Å, Atomwise (avg)",
            "parameters": sum(p.numel() for p in model.parameters()),
            "training": {
                "optimizer": "AdamW (weight decay 0)",
                "lr": LR,
                "scheduler": "ReduceLROnPlateau (factor 0.5, patience 75)",
                "loss": "MSE on the mean-removed target",
                "batch_size": args.batch_size,
                "epochs": args.epochs,
                "selection": "lowest validation MAE (ModelCheckpoint on val_y_MAE)",
            },
            "split_sha256": common.split_digest(args.data),
            "graph_build": {
                **common.rate(len(order), build_s),
                "what": "ase.io.read of each CIF, ASE database, then each neighbour list once "
                "(recomputed every epoch by the data loaders)",
            },
            "epochs_run": trainer.current_epoch,
            "epoch_seconds": clock.seconds(args.epochs),
            "val_mae": val_mae,
            "inference": {
                **common.rate(len(e2e), inference_s),
                "what": "ase.io.read per CIF, AtomsConverter + model in batches of 64",
                "test_mae": common.mae(e2e, truth),
            },
            "forward": {
                **common.rate(len(predicted), forward_s),
                "what": "converted test batches (neighbour lists built), batches of 64",
            },
            "test_mae": common.mae(predicted, truth),
        },
    )


if __name__ == "__main__":
    main()
