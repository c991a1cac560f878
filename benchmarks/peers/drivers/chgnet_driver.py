"""chgnet (PyPI ``chgnet``, CHGNet of Deng et al.) trained from scratch on the split with
its own ``Trainer``, as its README trains on user data: pymatgen structures and energies
per atom in ``StructureData`` (its graphs: atoms within 6 Å, bond pairs within 3 Å,
cached by the dataset), ``collate_graphs`` loaders, ``CHGNet`` at its default size
(64-d features, 4 convolutions; about 400 k parameters) and ``Trainer`` at its defaults
(Adam, learning rate 1e-3, cosine schedule, MSE loss) with ``targets="e"``: the energy
head alone, no forces, stresses or magnetic moments.

From scratch on new data, as CHGNet's composition model is meant to be used: its
``AtomRef`` (a linear model of the composition, which the trainer keeps frozen) fitted
by ``AtomRef.fit`` to the training structures and targets, in place of the default's
MPtrj elemental energies (total energies, not a heat of formation); the network learns
the rest. CHGNet trains per-atom energies natively.

For equal rules: the split is given as three datasets (no random split), batch size 64
(the trainer's loaders' default), data loading in the training process, ``--epochs``
epochs with no early stopping; the kept model is the trainer's ``bestE`` checkpoint (the
epoch with the lowest validation energy MAE).

Measured: graph build (every CIF parsed by pymatgen, then every graph built through
``StructureData``), each epoch (training pass + validation + the trainer's checkpoint of
every epoch), inference as chgnet predicts (``Structure.from_file`` for each test CIF,
then ``model.predict_structure(structures, task="e", batch_size=64)``), the forward pass
alone on the built test graphs, test MAE of the best epoch, peak RSS.

Run by ``benchmarks/peers/run.py`` in chgnet's own virtual environment.
"""

from __future__ import annotations

import importlib.metadata
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as common


def main() -> None:
    args = common.arguments(__doc__.splitlines()[0])
    import numpy as np
    import torch
    from chgnet.data.dataset import StructureData, collate_graphs
    from chgnet.model import CHGNet
    from chgnet.model.composition_model import AtomRef
    from chgnet.trainer import Trainer
    from pymatgen.core import Structure
    from torch.utils.data import DataLoader

    rows = {part: common.rows(args.data, part) for part in common.PARTS}
    start = time.perf_counter()
    datasets = {}
    for part in common.PARTS:
        structures = [
            Structure.from_file(common.cif_path(args.data, part, i)) for i, _ in rows[part]
        ]
        datasets[part] = StructureData(
            structures=structures,
            energies=[y for _, y in rows[part]],
            forces=[np.zeros((len(s), 3)) for s in structures],  # required, unused ("e")
            structure_ids=[i for i, _ in rows[part]],
            shuffle=False,
        )
    for dataset in datasets.values():
        for i in range(len(dataset)):
            dataset[i]  # StructureData caches each graph it builds
    build_s = time.perf_counter() - start

    loaders = {
        part: DataLoader(
            datasets[part],
            batch_size=args.batch_size,
            shuffle=part == "train",
            collate_fn=collate_graphs,
            num_workers=0,
        )
        for part in common.PARTS
    }
    composition = AtomRef(is_intensive=True)
    composition.fit(datasets["train"].structures, datasets["train"].energies)
    model = CHGNet(composition_model=composition)
    trainer = Trainer(
        model=model,
        targets="e",
        optimizer="Adam",
        scheduler="CosLR",
        criterion="MSE",
        epochs=args.epochs,
        learning_rate=1e-3,
        use_device="cpu",
        torch_seed=args.seed,
        data_seed=args.seed,
    )
    clock = common.EpochClock()
    save_dir = args.workdir / "chgnet-out"
    trainer.train(
        common.ClockedLoader(loaders["train"], clock),
        loaders["val"],
        test_loader=None,
        save_dir=str(save_dir),
    )
    clock.stop()

    best_file = next(save_dir.glob("bestE_*.pth.tar"))
    best = CHGNet.from_file(str(best_file))
    best.eval()
    predicted, expected = [], []
    start = time.perf_counter()
    with torch.no_grad():
        for graphs, targets in loaders["test"]:
            predicted += best(graphs, task="e")["e"].view(-1).tolist()
            expected += targets["e"].view(-1).tolist()
    forward_s = time.perf_counter() - start
    test_mae = common.mae(predicted, expected)

    # a user's prediction for new structures: parse, then predict_structure in batches
    start = time.perf_counter()
    structures = [
        Structure.from_file(common.cif_path(args.data, "test", i)) for i, _ in rows["test"]
    ]
    out = best.predict_structure(structures, task="e", batch_size=args.batch_size)
    inference_s = time.perf_counter() - start
    e2e = [float(o["e"]) for o in (out if isinstance(out, list) else [out])]

    common.finish(
        args,
        {
            "package": "chgnet",
            "version": importlib.metadata.version("chgnet"),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "model": "CHGNet, default size (64-d, 4 convolutions; 6 Å atom graph, 3 Å bond "
            "graph), its AtomRef fitted to the training set",
            "parameters": sum(p.numel() for p in model.parameters()),
            "training": {
                "optimizer": "Adam",
                "lr": 1e-3,
                "scheduler": "CosLR (the trainer's default)",
                "loss": "MSE on energy per atom",
                "batch_size": args.batch_size,
                "epochs": args.epochs,
                "selection": "lowest validation energy MAE (bestE checkpoint)",
            },
            "split_sha256": common.split_digest(args.data),
            "graph_build": {
                **common.rate(sum(len(d) for d in datasets.values()), build_s),
                "what": "pymatgen CIF parse, then StructureData's CrystalGraphConverter",
            },
            "epochs_run": len(trainer.training_history["e"]["val"]),
            "epoch_seconds": clock.seconds(args.epochs),
            "val_mae": trainer.training_history["e"]["val"],
            "inference": {
                **common.rate(len(e2e), inference_s),
                "what": "Structure.from_file per CIF, predict_structure(batch_size=64)",
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
