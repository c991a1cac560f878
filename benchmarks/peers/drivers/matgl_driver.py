"""matgl (PyPI ``matgl``, the Materials Virtual Lab's graph library; 4.x runs on PyTorch
Geometric, no DGL) training an M3GNet property model from scratch on the split, the way
its example "Training a M3GNet Formation Energy Model with PyTorch Lightning" does:
pymatgen structures, ``get_element_list``, ``Structure2Graph``, ``MGLDataset`` (graphs
built once), ``MGLDataLoader``, ``M3GNet(element_types=…, is_intensive=True,
readout_type="set2set")`` at its default size (3 blocks, 64 wide, 5 Å graph, 4 Å
three-body cutoff), ``ModelLightningModule`` at its defaults (Adam, learning rate 1e-3,
cosine decay over 1,000 steps, MSE loss, no target scaling), a Lightning ``Trainer`` on
the CPU with a CSV logger.

For equal rules: the split is given by index (``Subset``), batch size 64, data loading
in the training process (``num_workers`` 0; ``MGLDataLoader`` would start
min(4, cores) workers), ``--epochs`` epochs with no early stopping, and a
``ModelCheckpoint`` on ``val_MAE`` keeps the best epoch.

Measured: graph build (every CIF parsed by pymatgen, then ``MGLDataset`` builds and
saves the graphs; matgl 4 builds the three-body line graph inside each forward pass, so
that cost sits in the epochs), each epoch (training pass + validation + checkpoint),
inference as matgl predicts with a property model (``Structure.from_file`` and
``model.predict_structure`` for each test CIF), the forward pass alone on the built
test graphs, test MAE of the best epoch, peak RSS.

Run by ``benchmarks/peers/run.py`` in matgl's own virtual environment.
"""

from __future__ import annotations

import csv
import importlib.metadata
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as common


def main() -> None:
    args = common.arguments(__doc__.splitlines()[0])
    import lightning as pl
    import torch
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger
    from matgl.ext.pymatgen import Structure2Graph, get_element_list
    from matgl.graph.data import MGLDataLoader, MGLDataset
    from matgl.models import M3GNet
    from matgl.utils.training import ModelLightningModule
    from pymatgen.core import Structure
    from torch.utils.data import Subset

    pl.seed_everything(args.seed)
    rows = {part: common.rows(args.data, part) for part in common.PARTS}
    order = [(part, i, y) for part in common.PARTS for i, y in rows[part]]

    start = time.perf_counter()
    structures = [Structure.from_file(common.cif_path(args.data, p, i)) for p, i, _ in order]
    elements = get_element_list(structures)
    converter = Structure2Graph(element_types=elements, cutoff=5.0)
    dataset = MGLDataset(
        structures=structures,
        converter=converter,
        labels={"y": [y for _, _, y in order]},
        root=str(args.workdir / "MGLDataset"),
    )
    build_s = time.perf_counter() - start

    bounds, subsets = 0, {}
    for part in common.PARTS:
        subsets[part] = Subset(dataset, range(bounds, bounds + len(rows[part])))
        bounds += len(rows[part])
    train_loader, val_loader, test_loader = MGLDataLoader(
        train_data=subsets["train"],
        val_data=subsets["val"],
        test_data=subsets["test"],
        batch_size=args.batch_size,
        num_workers=0,
    )
    model = M3GNet(element_types=elements, is_intensive=True, readout_type="set2set")
    module = ModelLightningModule(model=model)

    clock = common.EpochClock()

    class Clock(pl.Callback):
        def on_train_epoch_start(self, trainer, pl_module) -> None:
            clock.tick()

        def on_train_end(self, trainer, pl_module) -> None:
            clock.stop()

    best = ModelCheckpoint(
        dirpath=args.workdir / "checkpoints", filename="best", monitor="val_MAE", mode="min"
    )
    trainer = pl.Trainer(
        max_epochs=args.epochs,
        accelerator="cpu",
        logger=CSVLogger(args.workdir / "logs", name="M3GNet_training"),
        callbacks=[best, Clock()],
        enable_progress_bar=False,
    )
    trainer.fit(model=module, train_dataloaders=train_loader, val_dataloaders=val_loader)
    val_mae = []
    for metrics in (args.workdir / "logs").rglob("metrics.csv"):
        with open(metrics) as handle:
            val_mae = [float(r["val_MAE"]) for r in csv.DictReader(handle) if r.get("val_MAE")]

    # the checkpoint this driver wrote minutes ago in its own work folder (Lightning
    # pickles hyper-parameters, so weights_only=True refuses it); never a downloaded file
    state = torch.load(best.best_model_path, map_location="cpu", weights_only=False)
    module.load_state_dict(state["state_dict"])
    module.eval()
    predicted, expected = [], []
    start = time.perf_counter()
    with torch.no_grad():
        for g, lat, state_attr, labels in test_loader:
            out = module(g=g, lat=lat, state_attr=state_attr)
            predicted += (out * module.data_std + module.data_mean).view(-1).tolist()
            expected += labels.view(-1).tolist()
    forward_s = time.perf_counter() - start
    test_mae = common.mae(predicted, expected)

    # a user's prediction for new structures: parse, then predict_structure one by one
    model.eval()
    start = time.perf_counter()
    e2e = []
    with torch.no_grad():
        for item_id, _ in rows["test"]:
            structure = Structure.from_file(common.cif_path(args.data, "test", item_id))
            e2e.append(float(model.predict_structure(structure)))
    inference_s = time.perf_counter() - start

    common.finish(
        args,
        {
            "package": "matgl",
            "version": importlib.metadata.version("matgl"),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "model": "M3GNet(is_intensive=True, readout_type='set2set'), default size: 3 "
            "blocks, 64 wide, 5 Å graph, 4 Å three-body cutoff",
            "parameters": sum(p.numel() for p in model.parameters()),
            "elements": len(elements),
            "training": {
                "optimizer": "Adam",
                "lr": module.lr,
                "scheduler": f"cosine over {module.decay_steps} steps to {module.decay_alpha} × lr",
                "loss": "MSE (no target scaling)",
                "batch_size": args.batch_size,
                "epochs": args.epochs,
                "selection": "lowest validation MAE (ModelCheckpoint on val_MAE)",
            },
            "split_sha256": common.split_digest(args.data),
            "graph_build": {
                **common.rate(len(order), build_s),
                "what": "pymatgen CIF parse, then MGLDataset (Structure2Graph neighbour "
                "lists, saved); the line graph is built in each forward pass",
            },
            "epochs_run": trainer.current_epoch,
            "epoch_seconds": clock.seconds(args.epochs),
            "val_mae": val_mae,
            "best_val_mae": float(best.best_model_score),
            "inference": {
                **common.rate(len(e2e), inference_s),
                "what": "per structure: Structure.from_file, model.predict_structure",
                "test_mae": common.mae(e2e, [y for _, y in rows["test"]]),
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
