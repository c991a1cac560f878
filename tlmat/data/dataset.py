"""A dataset of cached graphs with their ids, formulas and targets, loaded from any
structure source in one call; a second call on unchanged input parses nothing."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch_geometric.data import Batch

from tlmat.graphs.cache import CachedGraphs, GraphCache
from tlmat.graphs.data import CrystalGraph
from tlmat.graphs.settings import GraphSettings
from tlmat.io.readers import iter_records
from tlmat.io.records import InputError, Problem, ProblemLog, Reason

#: Bumped when the manifest layout changes.
MANIFEST_VERSION = 1


def default_cache_dir() -> Path:
    """``$TLMAT_CACHE_DIR``, else ``~/.cache/tlmat`` (point it at shared disk on a cluster)."""
    return Path(os.environ.get("TLMAT_CACHE_DIR", Path.home() / ".cache" / "tlmat"))


def source_fingerprint(path: Path) -> str:
    """SHA-256 of a file's bytes, or of every file (name and bytes) under a folder."""
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        digest.update(str(file.relative_to(path) if file != path else file.name).encode())
        with file.open("rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


@dataclass
class GraphDataset(Sequence[CrystalGraph]):
    """Graphs plus what describes them: ``ids``, reduced ``formulas`` and ``targets``
    (name → array of shape (n,) or (n, k), units as in the source)."""

    graphs: CachedGraphs
    ids: list[str]
    formulas: list[str]
    targets: dict[str, np.ndarray]
    log: ProblemLog = field(default_factory=ProblemLog)
    source: str = ""
    from_cache: bool = False

    def __len__(self) -> int:
        return len(self.graphs)

    def __getitem__(self, index: int) -> CrystalGraph:  # type: ignore[override]
        graph = self.graphs[index]
        graph.id = self.ids[index]
        return graph

    @property
    def target_names(self) -> list[str]:
        return list(self.targets)

    def batch(self, indices: Sequence[int], target: str | None = None) -> Batch:
        """A PyG ``Batch`` of the given graphs, with ``y`` from ``target`` when named."""
        batch = self.graphs.batch(indices)
        if target is not None:
            batch.y = torch.as_tensor(self.targets[target][list(indices)], dtype=torch.float32)
        return batch

    def subset(self, indices: Sequence[int]) -> GraphDataset:
        idx = list(indices)
        graphs = CachedGraphs(
            self.graphs.cache,
            [self.graphs.entries[i] for i in idx],
            [self.graphs.source_index[i] for i in idx],
        )
        return GraphDataset(
            graphs,
            [self.ids[i] for i in idx],
            [self.formulas[i] for i in idx],
            {k: v[idx] for k, v in self.targets.items()},
            self.log,
            self.source,
            self.from_cache,
        )


def concat(first: GraphDataset, second: GraphDataset) -> GraphDataset:
    """Two datasets built with the same graph settings as one (targets both have)."""
    if first.graphs.cache.directory != second.graphs.cache.directory:
        raise ValueError("datasets built with different graph settings cannot be joined")
    names = [n for n in first.targets if n in second.targets]
    graphs = CachedGraphs(first.graphs.cache, first.graphs.entries + second.graphs.entries)
    log = ProblemLog()
    log.problems = first.log.problems + second.log.problems
    log.n_ok = len(first) + len(second)
    return GraphDataset(
        graphs,
        first.ids + second.ids,
        first.formulas + second.formulas,
        {n: np.concatenate([first.targets[n], second.targets[n]]) for n in names},
        log,
        f"{first.source} + {second.source}",
    )


def _targets_array(values: list[Any], name: str) -> np.ndarray:
    try:
        return np.asarray(values, dtype=np.float64)
    except ValueError as error:  # ragged vectors
        raise ValueError(f"target {name!r} has rows of different lengths") from error


def _manifest_key(fingerprint: str, options: dict[str, Any], settings: GraphSettings) -> str:
    payload = json.dumps(
        {
            "v": MANIFEST_VERSION,
            "source": fingerprint,
            "options": options,
            "graphs": settings.key(),
        },
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


def load_dataset(
    path: str | Path,
    settings: GraphSettings | None = None,
    targets: Sequence[str] | None = None,
    *,
    cache_dir: str | Path | None = None,
    strict: bool = False,
    disorder: str = "skip",
    elements: Collection[int] | None = None,
    workers: int = 1,
    progress: bool = False,
    chunk_size: int = 20_000,
    **read_options: Any,
) -> GraphDataset:
    """Read a structure source and return its graphs, through the on-disk cache.

    The first call parses, checks and builds; later calls with the same file contents
    and options load the ids, targets and graphs from the cache without parsing.

    Example:
        >>> ds = load_dataset("perov_5/train.csv.gz", GraphSettings(cutoff=8.0, max_neighbors=12),
        ...                   targets=["heat_ref"])
        >>> ds.batch(range(64), target="heat_ref")
    """
    path = Path(path)
    settings = settings or GraphSettings()
    cache = GraphCache(cache_dir or default_cache_dir(), settings)
    options = {
        "targets": list(targets) if targets is not None else None,
        "disorder": disorder,
        "elements": sorted(elements) if elements is not None else None,
        **{k: v for k, v in read_options.items() if k != "workers"},
    }
    manifest_dir = (
        cache.directory / "datasets" / _manifest_key(source_fingerprint(path), options, settings)
    )
    cached = _read_manifest(manifest_dir, cache, strict)
    if cached is not None:
        cached.source = str(path)
        return cached

    # Stream: parse, check and build a chunk at a time, keeping only ids, formulas,
    # targets and cache entries, so that no dataset has to fit in memory as structures.
    log = ProblemLog(strict=strict)
    records = iter_records(
        path,
        targets,
        log=log,
        disorder=disorder,
        workers=workers,
        progress=progress,
        **read_options,
    )
    ids: list[str] = []
    formulas: list[str] = []
    keys: list[str] = []
    entries: list[tuple[str, int, int]] = []
    values: list[dict[str, Any]] = []
    while chunk := list(islice(records, chunk_size)):
        graphs = cache.graphs(chunk, log, elements, workers)
        for position, entry, key in zip(
            graphs.source_index, graphs.entries, graphs.keys, strict=True
        ):
            record = chunk[position]
            ids.append(record.id)
            formulas.append(record.formula)
            keys.append(key)
            entries.append(entry)
            values.append(record.targets)
    if not ids:
        what = "could be read" if log.n_ok == 0 else "has a usable graph"
        raise InputError(f"{path}: no structure {what} ({log.summary()})")
    log.n_ok = len(ids)
    names = list(dict.fromkeys(name for row in values for name in row))
    dataset = GraphDataset(
        CachedGraphs(cache, entries),
        ids,
        formulas,
        {n: _targets_array([row.get(n, np.nan) for row in values], n) for n in names},
        log,
        str(path),
    )
    _write_manifest(manifest_dir, dataset, keys)
    return dataset


def _write_manifest(directory: Path, dataset: GraphDataset, keys: list[str]) -> None:
    tmp = directory.with_name(directory.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    arrays = {f"target:{k}": v for k, v in dataset.targets.items()}
    np.savez(
        tmp / "arrays.npz",
        ids=np.array(dataset.ids),
        formulas=np.array(dataset.formulas),
        keys=np.array(keys),
        **arrays,
    )
    problems = [
        {"where": p.where, "reason": p.reason.value, "detail": p.detail, "id": p.id}
        for p in dataset.log.problems
    ]
    (tmp / "manifest.json").write_text(
        json.dumps({"version": MANIFEST_VERSION, "n": len(dataset), "problems": problems})
    )
    shutil.rmtree(directory, ignore_errors=True)
    os.replace(tmp, directory)


def _read_manifest(directory: Path, cache: GraphCache, strict: bool) -> GraphDataset | None:
    try:
        manifest = json.loads((directory / "manifest.json").read_text())
        with np.load(directory / "arrays.npz", allow_pickle=False) as arrays:
            ids = arrays["ids"].tolist()
            formulas = arrays["formulas"].tolist()
            keys = arrays["keys"].tolist()
            targets = {
                k.removeprefix("target:"): arrays[k] for k in arrays if k.startswith("target:")
            }
    except (OSError, ValueError, KeyError):
        return None
    if manifest.get("version") != MANIFEST_VERSION or len(ids) != manifest.get("n"):
        return None
    entries = cache.entries_for(keys)
    if entries is None:  # graphs evicted or damaged: rebuild from the source
        return None
    log = ProblemLog(strict=strict)
    for p in manifest["problems"]:
        log.skip(Problem(p["where"], Reason(p["reason"]), p["detail"], p["id"]))
    log.n_ok = len(ids)
    return GraphDataset(CachedGraphs(cache, entries), ids, formulas, targets, log, from_cache=True)
