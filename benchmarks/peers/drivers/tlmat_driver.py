"""tlmat trained from scratch on the split, through the calls ``tlmat train DATA --val VAL
--test TEST`` makes (``load_dataset`` of each part on every core into an empty graph
cache, then ``fit``), with the architecture and settings of the peer it is compared
with (``--model``, ``--model-config`` as JSON) and tlmat's training defaults otherwise:
Adam, learning rate 1e-3, L1 loss on the standardised target, plateau schedule (factor
0.8 after 25 epochs without improvement), the epoch with the lowest validation MAE kept;
here with ``--epochs`` epochs and no early stopping, batches of 64.

Measured: graph build (the three CIF folders read, checked and turned into graphs,
cold cache), each epoch (training pass + validation + checkpoints), inference through
``tlmat.load_model(model.pt).predict(test folder)`` (as ``tlmat predict``: reads the
CIFs and builds the graphs again, without the cache, then the forward pass), the
forward pass alone on the cached test graphs (batches of 64), test MAE of the kept
epoch, peak RSS.

Run by ``benchmarks/peers/run.py`` with tlmat's own Python.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(HERE))))  # the checkout
import _common as common  # noqa: E402

TARGET = "y"


def main() -> None:
    args = common.arguments(__doc__.splitlines()[0])
    import numpy as np
    import torch

    import tlmat
    from tlmat.data import Split, concat, load_dataset
    from tlmat.data.loader import GraphLoader
    from tlmat.models.registry import model_config
    from tlmat.training import PropertyModule, TrainConfig, fit, predict
    from tlmat.transfer.sources import fresh_model

    fields = json.loads(args.model_config) if args.model_config else {}
    config = TrainConfig(
        target=TARGET,
        unit="eV/atom",
        epochs=args.epochs,
        early_stopping_patience=None,
        batch_size=args.batch_size,
        seed=args.seed,
        accelerator="cpu",
        progress_bar=False,
    )
    spec = model_config(args.model, **fields)
    trained = fresh_model(spec, args.seed, out_dim=config.target_spec().out_dim)
    model = trained.model
    cache = args.workdir / "graph-cache"
    shutil.rmtree(cache, ignore_errors=True)

    start = time.perf_counter()
    parts = {
        part: load_dataset(
            args.data / "cgcnn" / part,
            model.graph_settings,
            [TARGET],
            cache_dir=cache,
            elements=model.elements,
            workers=os.cpu_count() or 1,
        )
        for part in common.PARTS
    }
    build_s = time.perf_counter() - start
    dataset, positions, offset = None, {}, 0
    for part, loaded in parts.items():
        positions[part] = np.arange(offset, offset + len(loaded))
        offset += len(loaded)
        dataset = loaded if dataset is None else concat(dataset, loaded)
    split = Split(positions["train"], positions["val"], positions["test"])
    read_ids = {part: [dataset.ids[i] for i in positions[part]] for part in common.PARTS}

    # the epoch clock: fit() calls the training loader's set_epoch as each epoch starts,
    # and Lightning calls the module's on_train_end after the last epoch's checkpoint
    clock = common.EpochClock()
    set_epoch = GraphLoader.set_epoch

    def ticking_set_epoch(self, epoch: int) -> None:
        clock.tick()
        set_epoch(self, epoch)

    GraphLoader.set_epoch = ticking_set_epoch
    PropertyModule.on_train_end = lambda self: clock.stop()
    try:
        result = fit(trained, dataset, split, config, args.workdir / "run")
    finally:
        GraphLoader.set_epoch = set_epoch
        del PropertyModule.on_train_end

    y = dataset.targets[TARGET]
    start = time.perf_counter()
    predicted = predict(result.trained, dataset, split.test, batch_size=args.batch_size)
    forward_s = time.perf_counter() - start
    test_mae = float(np.abs(predicted - y[split.test]).mean())

    loaded_model = tlmat.load_model(args.workdir / "run" / "model.pt")
    start = time.perf_counter()
    frame = loaded_model.predict(args.data / "cgcnn" / "test")
    inference_s = time.perf_counter() - start
    truth = dict(common.rows(args.data, "test"))
    e2e_mae = common.mae(frame.iloc[:, 1], [truth[str(i)] for i in frame["id"]])

    val_mae = []
    metrics = args.workdir / "run" / "metrics.csv"
    if metrics.exists():
        import pandas as pd

        table = pd.read_csv(metrics)
        if "val_mae" in table:
            val_mae = table["val_mae"].dropna().tolist()
    common.finish(
        args,
        {
            "package": "tlmat",
            "version": tlmat.__version__,
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "model": f"{args.model} {fields}" if fields else args.model,
            "architecture": model.architecture,
            "parameters": sum(p.numel() for p in model.parameters()),
            "training": {
                "optimizer": config.optimizer,
                "lr": config.lr,
                "scheduler": f"{config.scheduler} (factor {config.plateau_factor}, "
                f"patience {config.plateau_patience})",
                "loss": f"{config.loss} on the {config.normalization}-normalised target",
                "batch_size": config.batch_size,
                "epochs": config.epochs,
                "selection": "lowest validation MAE",
            },
            "split_sha256": common.ids_sha256(read_ids),
            "skipped": len(dataset.log.problems) if hasattr(dataset, "log") else None,
            "graph_build": {
                **common.rate(len(dataset), build_s),
                "what": "load_dataset of the three CIF folders on every core, empty cache",
                "workers": os.cpu_count(),
            },
            "epochs_run": result.epochs,
            "epoch_seconds": clock.seconds(args.epochs),
            "val_mae": val_mae,
            "best_val_mae": result.best_val_mae,
            "inference": {
                **common.rate(len(frame), inference_s),
                "what": "tlmat.load_model(model.pt).predict(CIF folder): parse, graph, forward",
                "test_mae": e2e_mae,
            },
            "forward": {
                **common.rate(len(predicted), forward_s),
                "what": "cached test graphs, batches of the training batch size",
            },
            "test_mae": test_mae,
        },
    )


if __name__ == "__main__":
    main()
