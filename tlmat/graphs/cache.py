"""On-disk graph cache: build once per (structure content, graph settings), load after.

Layout under ``root/graphs-<settings key>/``::

    settings.json           the GraphSettings (and format version) the key stands for
    index.sqlite            structure key → (shard, row, crc32); safe for many processes
    shard-<uuid>/*.npy      one array per field, graphs concatenated, with offset arrays

Shards are written to a temporary folder and renamed into place, so a crash never leaves
a half-written shard visible. Arrays are memory-mapped: a dataset larger than RAM is
read graph by graph (or batch by batch) from the page cache. Every graph carries a CRC32
of its bytes; an entry whose shard is missing or damaged, or whose checksum fails, is
reported, dropped from the index and rebuilt — never silently used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sqlite3
import uuid
import zlib
from collections.abc import Collection, Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from pymatgen.core import Molecule, Structure
from torch_geometric.data import Batch

from tlmat.graphs.builder import GraphArrays, element_problem, iter_graph_arrays
from tlmat.graphs.data import CrystalGraph
from tlmat.graphs.settings import GRAPH_FORMAT_VERSION, GraphSettings
from tlmat.io.records import Problem, ProblemLog, Record
from tlmat.progress import track

logger = logging.getLogger("tlmat")

NODE_FIELDS = ("z", "pos")
EDGE_FIELDS = ("edge_dist", "edge_vec", "edge_shift")
LINE_FIELDS = ("line_cos",)
GRAPH_FIELDS = ("cell", "pbc")


def structure_key(structure: Structure | Molecule) -> str:
    """Content hash of a structure: species, Cartesian positions, cell and periodicity.

    Two files holding the same crystal share a key, so their graph is built once.
    """
    digest = hashlib.blake2b(digest_size=16)
    digest.update(np.asarray(structure.atomic_numbers, dtype=np.int16).tobytes())
    digest.update(np.ascontiguousarray(structure.cart_coords, dtype=np.float64).tobytes())
    if isinstance(structure, Structure):
        digest.update(np.ascontiguousarray(structure.lattice.matrix, dtype=np.float64).tobytes())
        digest.update(np.asarray(structure.lattice.pbc, dtype=bool).tobytes())
    return digest.hexdigest()


def _crc(arrays: GraphArrays) -> int:
    crc = 0
    for name in ("z", "pos", "cell", "pbc", "edge_index", *EDGE_FIELDS, "line_index", "line_cos"):
        value = getattr(arrays, name)
        if value is not None:
            crc = zlib.crc32(np.ascontiguousarray(value), crc)
    return crc


def _ptr(counts: Sequence[int]) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])


class Shard:
    """One memory-mapped block of concatenated graphs."""

    def __init__(self, path: Path):
        self.path = path
        # plain ndarray views of the maps: slicing an np.memmap is several times slower
        self.arrays = {
            f.stem: np.load(f, mmap_mode="r", allow_pickle=False).view(np.ndarray)
            for f in path.glob("*.npy")
        }
        required = {"z", "pos", "cell", "pbc", "edge_index", "node_ptr", "edge_ptr", *EDGE_FIELDS}
        missing = required - set(self.arrays)
        if missing:
            raise OSError(f"{path}: missing arrays {sorted(missing)}")
        self.checksums = json.loads((path / "checksums.json").read_text())
        self._intact: bool | None = None

    def intact(self) -> bool:
        """Whether every array still has the checksum it was written with (one pass over
        the shard at C speed; computed once per process)."""
        if self._intact is None:
            self._intact = all(
                zlib.crc32(np.ascontiguousarray(self.arrays[name])) == crc
                for name, crc in self.checksums.items()
            ) and set(self.checksums) == set(self.arrays)
        return self._intact

    @staticmethod
    def write(directory: Path, graphs: Sequence[GraphArrays]) -> str:
        """Write graphs as a new shard; returns its name."""
        name = f"shard-{uuid.uuid4().hex[:12]}"
        tmp = directory / f".tmp-{name}"
        tmp.mkdir()
        out: dict[str, np.ndarray] = {
            "node_ptr": _ptr([g.num_nodes for g in graphs]),
            "edge_ptr": _ptr([g.num_edges for g in graphs]),
            "z": np.concatenate([g.z for g in graphs]),
            "pos": np.concatenate([g.pos for g in graphs]),
            "cell": np.stack([g.cell for g in graphs]),
            "pbc": np.stack([g.pbc for g in graphs]),
            "edge_index": np.concatenate([g.edge_index for g in graphs], axis=1),
        }
        for f in EDGE_FIELDS:
            out[f] = np.concatenate([getattr(g, f) for g in graphs])
        if graphs[0].line_index is not None:
            out["line_ptr"] = _ptr([g.line_index.shape[1] for g in graphs])
            out["line_index"] = np.concatenate([g.line_index for g in graphs], axis=1)
            out["line_cos"] = np.concatenate([g.line_cos for g in graphs])
        out = {key: np.ascontiguousarray(value) for key, value in out.items()}
        for key, value in out.items():
            np.save(tmp / f"{key}.npy", value, allow_pickle=False)
        checksums = {key: zlib.crc32(value) for key, value in out.items()}
        (tmp / "checksums.json").write_text(json.dumps(checksums))
        os.replace(tmp, directory / name)
        return name

    @property
    def num_graphs(self) -> int:
        return len(self.arrays["node_ptr"]) - 1

    def get(self, row: int, copy: bool = True) -> GraphArrays:
        """Graph ``row``; ``copy=False`` returns read-only views into the map."""
        a = self.arrays
        take = np.array if copy else np.asarray
        n0, n1 = a["node_ptr"][row], a["node_ptr"][row + 1]
        e0, e1 = a["edge_ptr"][row], a["edge_ptr"][row + 1]
        graph = GraphArrays(
            z=take(a["z"][n0:n1]),
            pos=take(a["pos"][n0:n1]),
            cell=take(a["cell"][row]),
            pbc=take(a["pbc"][row]),
            edge_index=take(a["edge_index"][:, e0:e1]),
            edge_dist=take(a["edge_dist"][e0:e1]),
            edge_vec=take(a["edge_vec"][e0:e1]),
            edge_shift=take(a["edge_shift"][e0:e1]),
        )
        if "line_ptr" in a:
            t0, t1 = a["line_ptr"][row], a["line_ptr"][row + 1]
            graph.line_index = take(a["line_index"][:, t0:t1])
            graph.line_cos = take(a["line_cos"][t0:t1])
        return graph


class GraphCache:
    """Graphs of one :class:`GraphSettings`, keyed by structure content.

    Example:
        >>> cache = GraphCache(".tlmat-cache", GraphSettings(cutoff=8.0, max_neighbors=12))
        >>> graphs = cache.graphs(read_records("perov_5/test.csv.gz").records)
        >>> graphs[0]  # a CrystalGraph, loaded from disk on the second run
    """

    def __init__(self, root: str | Path, settings: GraphSettings):
        self.settings = settings
        self.directory = Path(root) / f"graphs-{settings.key()}"
        self.directory.mkdir(parents=True, exist_ok=True)
        self._check_settings()
        self._db = sqlite3.connect(self.directory / "index.sqlite", timeout=60)
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS entries (key TEXT PRIMARY KEY,"
            " shard TEXT NOT NULL, row INTEGER NOT NULL, crc INTEGER NOT NULL)"
        )
        self._db.commit()
        self._shards: dict[str, Shard | None] = {}

    def _check_settings(self) -> None:
        meta_path = self.directory / "settings.json"
        meta = {"format": GRAPH_FORMAT_VERSION, "settings": self.settings.model_dump()}
        if meta_path.exists():
            try:
                stored = json.loads(meta_path.read_text())
            except json.JSONDecodeError:
                stored = None
            if stored != meta:
                logger.warning("%s: cache settings do not match; clearing it", self.directory)
                shutil.rmtree(self.directory)
                self.directory.mkdir(parents=True)
        if not meta_path.exists():
            meta_path.write_text(json.dumps(meta, indent=2))

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM entries").fetchone()[0]

    def _shard(self, name: str) -> Shard | None:
        if name not in self._shards:
            try:
                self._shards[name] = Shard(self.directory / name)
            except (OSError, ValueError) as error:
                logger.warning("graph cache shard %s is unreadable (%s); rebuilding", name, error)
                self._shards[name] = None
        return self._shards[name]

    def lookup(self, keys: Sequence[str]) -> dict[str, tuple[str, int, int]]:
        """Index entries (shard, row, crc) of the keys that are cached."""
        found: dict[str, tuple[str, int, int]] = {}
        for start in range(0, len(keys), 900):  # SQLite's bound-parameter limit
            chunk = list(keys[start : start + 900])
            marks = ",".join("?" * len(chunk))
            for key, shard, row, crc in self._db.execute(
                f"SELECT key, shard, row, crc FROM entries WHERE key IN ({marks})", chunk
            ):
                found[key] = (shard, row, crc)
        return found

    def load(
        self, key: str, entry: tuple[str, int, int], verify: bool = True
    ) -> GraphArrays | None:
        """The cached graph, or ``None`` (and the entry dropped) when it is damaged."""
        shard_name, row, crc = entry
        shard = self._shard(shard_name)
        graph = None
        if shard is not None:
            try:
                graph = shard.get(row)
            except (IndexError, ValueError, OSError):
                graph = None
        if graph is None or (verify and not shard.intact() and _crc(graph) != crc):
            logger.warning("graph cache entry %s is damaged (checksum mismatch); rebuilding", key)
            self._db.execute("DELETE FROM entries WHERE key = ?", (key,))
            self._db.commit()
            return None
        return graph

    def _usable(self, key: str, entry: tuple[str, int, int]) -> bool:
        shard = self._shard(entry[0])
        if shard is not None and shard.intact():
            return entry[1] < shard.num_graphs
        return self.load(key, entry) is not None

    def store(self, keys: Sequence[str], graphs: Sequence[GraphArrays]) -> None:
        """Add graphs under their structure keys (one new shard)."""
        if not graphs:
            return
        name = Shard.write(self.directory, graphs)
        self._db.executemany(
            "INSERT OR REPLACE INTO entries VALUES (?, ?, ?, ?)",
            [(k, name, row, _crc(g)) for row, (k, g) in enumerate(zip(keys, graphs, strict=True))],
        )
        self._db.commit()

    def graphs(
        self,
        records: Iterable[Record],
        log: ProblemLog | None = None,
        elements: Collection[int] | None = None,
        workers: int = 1,
        shard_size: int = 20_000,
        progress: bool = False,
    ) -> CachedGraphs:
        """Graphs of ``records``: loaded when cached, built (and stored) otherwise.

        Records without a usable graph are skipped into ``log``;
        ``CachedGraphs.source_index`` gives the input position of every graph kept.
        """
        log = log if log is not None else ProblemLog()
        records = list(records)
        keys = [structure_key(r.structure) for r in records]
        entries = self.lookup(keys)
        # verify every hit once, here, so that damage is repaired before training starts
        missing = [
            i for i, k in enumerate(keys) if k not in entries or not self._usable(k, entries[k])
        ]
        self.n_built = 0
        if missing:
            todo = [records[i] for i in missing]
            built = track(
                iter_graph_arrays(todo, self.settings, log, elements, workers),
                "building graphs",
                len(todo),
                enabled=progress,
            )
            batch_keys: list[str] = []
            batch: list[GraphArrays] = []
            for record, arrays in built:
                batch_keys.append(structure_key(record.structure))
                batch.append(arrays)
                if len(batch) >= shard_size:
                    self.store(batch_keys, batch)
                    self.n_built += len(batch)
                    batch_keys, batch = [], []
            self.store(batch_keys, batch)
            self.n_built += len(batch)
            entries = self.lookup(keys)
        kept = [i for i, k in enumerate(keys) if k in entries]
        if elements is not None:  # cached graphs were built without this vocabulary check
            kept = [i for i in kept if self._known(entries[keys[i]], elements, records[i], log)]
        return CachedGraphs(self, [entries[keys[i]] for i in kept], kept, [keys[i] for i in kept])

    def _known(self, entry, elements, record, log) -> bool:
        graph = self._shard(entry[0]).get(entry[1], copy=False)
        fault = element_problem(graph.z.astype(np.int64), elements)
        if fault:
            log.skip(Problem(record.where or record.id, fault[0], fault[1], record.id))
            return False
        return True

    def entries_for(self, keys: Sequence[str]) -> list[tuple[str, int, int]] | None:
        """Verified entries for all ``keys``, or ``None`` when any is missing or damaged."""
        entries = self.lookup(keys)
        if len(entries) != len(set(keys)) or not all(self._usable(k, entries[k]) for k in entries):
            return None
        return [entries[k] for k in keys]


class CachedGraphs(Sequence[CrystalGraph]):
    """Graphs read lazily from the cache's memory-mapped shards."""

    def __init__(
        self,
        cache: GraphCache,
        entries: list[tuple[str, int, int]],
        source_index: list[int] | None = None,
        keys: list[str] | None = None,
    ):
        self.cache = cache
        self.entries = entries
        #: structure content key of each graph (when known)
        self.keys = keys
        #: position of each graph's record in the input (records without a graph skipped)
        self.source_index = source_index if source_index is not None else list(range(len(entries)))

    def __len__(self) -> int:
        return len(self.entries)

    def arrays(self, index: int, copy: bool = True) -> GraphArrays:
        shard, row, _ = self.entries[index]
        return self.cache._shard(shard).get(row, copy=copy)

    def __getitem__(self, index: int) -> CrystalGraph:  # type: ignore[override]
        return self.arrays(index).to_data()

    def batch(self, indices: Sequence[int]) -> Batch:
        """A PyG ``Batch`` of several graphs, assembled straight from the arrays (the fast
        path for data loaders; equal to ``Batch.from_data_list`` of the same graphs)."""
        return collate([self.arrays(i, copy=False) for i in indices])


def collate(graphs: Sequence[GraphArrays]) -> Batch:
    """Concatenate graphs into a PyG ``Batch`` with offset edge (and line-graph) indices."""
    n_nodes = np.array([g.num_nodes for g in graphs])
    n_edges = np.array([g.num_edges for g in graphs])
    node_offset = np.repeat(_ptr(n_nodes)[:-1], n_edges)
    edge_index = np.concatenate([g.edge_index for g in graphs], axis=1) + node_offset
    fields: dict[str, torch.Tensor] = {
        "z": torch.from_numpy(np.concatenate([g.z for g in graphs]).astype(np.int64)),
        "pos": torch.from_numpy(np.concatenate([g.pos for g in graphs])),
        "cell": torch.from_numpy(np.stack([g.cell for g in graphs])),
        "pbc": torch.from_numpy(np.stack([g.pbc for g in graphs])),
        "edge_index": torch.from_numpy(edge_index.astype(np.int64)),
        "edge_dist": torch.from_numpy(np.concatenate([g.edge_dist for g in graphs])),
        "edge_vec": torch.from_numpy(np.concatenate([g.edge_vec for g in graphs])),
        "edge_shift": torch.from_numpy(
            np.concatenate([g.edge_shift for g in graphs]).astype(np.int64)
        ),
    }
    if graphs[0].line_index is not None:
        n_lines = np.array([g.line_index.shape[1] for g in graphs])
        edge_offset = np.repeat(_ptr(n_edges)[:-1], n_lines)
        line_index = np.concatenate([g.line_index for g in graphs], axis=1) + edge_offset
        fields["line_index"] = torch.from_numpy(line_index.astype(np.int64))
        fields["line_cos"] = torch.from_numpy(np.concatenate([g.line_cos for g in graphs]))
    batch = torch.from_numpy(np.repeat(np.arange(len(graphs)), n_nodes))
    return Batch(
        batch=batch, ptr=torch.from_numpy(_ptr(n_nodes)), num_nodes=int(n_nodes.sum()), **fields
    )
