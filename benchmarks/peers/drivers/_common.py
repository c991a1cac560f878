"""What every driver of the peer benchmark shares: its arguments, the split it reads, the
clock of its epochs, its peak memory and the JSON it writes.

Standard library only: the drivers run in the peers' own virtual environments, where
tlmat is not installed. Each driver is run as ``python drivers/<name>.py --data DIR
--epochs N --workdir DIR --result FILE`` by ``benchmarks/peers/run.py``.

The split folder (written once by run.py) holds ``cgcnn/{train,val,test}/``: an
``id_prop.csv`` (``id,value``, no header) and one ``<id>.cif`` per row, and
``alignn/``: every CIF of the three parts once more, with an ``id_prop.csv`` whose
first column is the file name, in the order train, val, test.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import itertools
import json
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

PARTS = ("train", "val", "test")


def arguments(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--data", type=Path, required=True, help="split folder (run.py)")
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, required=True, help="scratch folder")
    parser.add_argument("--result", type=Path, required=True, help="JSON to write")
    parser.add_argument("--model", default=None, help="tlmat driver: architecture or preset")
    parser.add_argument("--model-config", default=None, help="tlmat driver: JSON of settings")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    return args


def rows(data: Path, part: str) -> list[tuple[str, float]]:
    """``(id, target)`` of one part, in file order."""
    with open(data / "cgcnn" / part / "id_prop.csv", newline="") as handle:
        return [(row[0], float(row[1])) for row in csv.reader(handle) if row]


def cif_path(data: Path, part: str, item_id: str) -> Path:
    return data / "cgcnn" / part / f"{item_id}.cif"


def ids_sha256(id_lists: dict[str, list[str]]) -> str:
    """The digest run.py records for the split: parts in order, ids in order."""
    text = "\n".join(f"{part}:" + ",".join(id_lists[part]) for part in PARTS)
    return hashlib.sha256(text.encode()).hexdigest()


def split_digest(data: Path) -> str:
    return ids_sha256({part: [i for i, _ in rows(data, part)] for part in PARTS})


class EpochClock:
    """Epoch boundaries from the training loader: an epoch starts when the trainer asks
    its loader for a fresh iterator; the last one ends at :meth:`stop`. So an epoch is
    one pass over the training set and then whatever the trainer does before the next
    pass (validation, checkpoints, logging), the same for every package."""

    def __init__(self) -> None:
        self.starts: list[float] = []
        self.end: float | None = None

    def tick(self) -> None:
        self.starts.append(time.perf_counter())

    def stop(self) -> None:
        self.end = time.perf_counter()

    def seconds(self, epochs: int) -> list[float]:
        marks = [*self.starts[:epochs], self.end if self.end is not None else time.perf_counter()]
        return [b - a for a, b in itertools.pairwise(marks)]


class ClockedLoader:
    """A training loader that ticks an :class:`EpochClock` on each ``iter()``; every
    other attribute is the wrapped loader's."""

    def __init__(self, loader, clock: EpochClock):
        self.__dict__["_loader"] = loader
        self.__dict__["_clock"] = clock

    def __iter__(self):
        self._clock.tick()
        return iter(self._loader)

    def __len__(self) -> int:
        return len(self._loader)

    def __getattr__(self, name):
        return getattr(self._loader, name)

    def __setattr__(self, name, value):
        setattr(self._loader, name, value)


def peak_rss_mib() -> dict[str, float]:
    """Peak resident memory, in MiB, of this process (``self``: the one that reads,
    trains and predicts) and of its largest finished child (``children``: graph-building
    workers, subprocesses). They are not added up: a forked child's resident set counts
    the pages it shares with its parent, so even a shell started by a 1 GB process
    reports about 1 GB."""
    scale = 1024 if sys.platform != "darwin" else 1024 * 1024  # Linux reports KiB
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / scale
    return {"self": own, "children": children}


def mae(predicted, expected) -> float:
    pairs = list(zip(predicted, expected, strict=True))
    return sum(abs(float(p) - float(e)) for p, e in pairs) / len(pairs)


def rate(count: int, seconds: float) -> dict[str, float]:
    return {"structures": count, "seconds": seconds, "per_second": count / seconds}


def finish(args: argparse.Namespace, result: dict) -> None:
    """Add the epoch summary, memory and machine, then write ``--result``."""
    epochs = result.get("epoch_seconds") or []
    if epochs:
        result["seconds_per_epoch"] = statistics.median(epochs)
    result["peak_rss_mib"] = peak_rss_mib()
    result["machine"] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
    }
    args.result.parent.mkdir(parents=True, exist_ok=True)
    args.result.write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "epoch_seconds"}))
