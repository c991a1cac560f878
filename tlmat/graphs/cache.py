"""On-disk graph cache: build once per (structure content, graph settings), load after.

Layout under ``root/graphs-<settings key>/``::

    settings.json           the GraphSettings (and format version) the key stands for
    index.sqlite            structure key → (shard, row, crc32); safe for many processes;
                            and (table ``texts``) digest of a structure text and its
                            reading options → structure key and reduced formula, so a
                            text read before is not parsed again
    shard-<uuid>/*.npy      one array per field, graphs concatenated, with offset arrays,
                            plus each row's structure key and CRC32 (``keys``, ``row_crc``)

Shards are written to a temporary folder and renamed into place, so a crash never leaves
a half-written shard visible (a failed write removes its temporary folder). Arrays are
memory-mapped: a dataset larger than RAM is read graph by graph (or batch by batch) from
the page cache. Every graph carries a CRC32 of its bytes, and every index entry is checked
against the row it points at before it is used: an entry whose shard is missing or
damaged, or whose checksum or key does not match, is reported, dropped from the index and
rebuilt — never silently used. A damaged index database is set aside
(``index.sqlite.damaged-<time>``) and rebuilt from the intact shards. A cache that cannot
be written (read-only) still serves what it holds and keeps new graphs in memory; a full
disk raises :class:`CacheWriteError`.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import mmap
import os
import shutil
import sqlite3
import time
import uuid
import zlib
from collections.abc import Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pymatgen.core import Molecule, Structure
from torch_geometric.data import Batch

from tlmat.graphs.builder import (
    GraphArrays,
    element_problem,
    iter_graph_arrays,
    ptr_from_counts,
)
from tlmat.graphs.data import CrystalGraph
from tlmat.graphs.settings import GRAPH_FORMAT_VERSION, GraphSettings
from tlmat.io.records import Problem, ProblemLog, Record
from tlmat.progress import track

logger = logging.getLogger("tlmat")

NODE_FIELDS = ("z", "pos")
EDGE_FIELDS = ("edge_dist", "edge_vec", "edge_shift")
LINE_FIELDS = ("line_cos",)
GRAPH_FIELDS = ("cell", "pbc")

#: errno values that mean "this place cannot be written", as opposed to a failing disk
UNWRITABLE = frozenset({errno.EACCES, errno.EPERM, errno.EROFS})
#: SQLite primary result codes that mean the database file itself is damaged
_SQLITE_DAMAGED = frozenset({11, 26})  # SQLITE_CORRUPT, SQLITE_NOTADB
_SQLITE_READONLY = frozenset({8, 14})  # SQLITE_READONLY, SQLITE_CANTOPEN
_SQLITE_FULL = 13

Entry = tuple[str, int, int]


class CacheWriteError(OSError):
    """The cache could not store new graphs (a full disk, a failing device)."""


def _refuse_a_file_in_the_way(directory: Path) -> None:
    """A cache path that is (or lies under) a file is the user's mistake, not a place
    that cannot be written: say which file, instead of ``Not a directory``."""
    place = directory
    while not place.exists() and place != place.parent:
        place = place.parent
    if place.exists() and not place.is_dir():
        raise CacheWriteError(
            errno.ENOTDIR,
            f"graph cache {place} is a file, not a folder; give --cache-dir (or "
            "TLMAT_CACHE_DIR) a folder",
        )


def structure_key(structure: Structure | Molecule) -> str:
    """Content hash of a structure: species, Cartesian positions, cell and periodicity.

    Two files holding the same crystal share a key, so their graph is built once.
    """
    if isinstance(structure, Structure):
        cell, pbc = structure.lattice.matrix, structure.lattice.pbc
    else:
        cell = pbc = None
    return arrays_key(structure.atomic_numbers, structure.cart_coords, cell, pbc)


def arrays_key(z, pos, cell=None, pbc=None) -> str:
    """:func:`structure_key` of a structure given as arrays (atomic numbers, Cartesian
    positions in Å, cell in Å and periodicity; no cell for a molecule)."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(np.asarray(z, dtype=np.int16).tobytes())
    digest.update(np.ascontiguousarray(pos, dtype=np.float64).tobytes())
    if cell is not None:
        digest.update(np.ascontiguousarray(cell, dtype=np.float64).tobytes())
        digest.update(np.asarray(pbc, dtype=bool).tobytes())
    return digest.hexdigest()


def _crc(arrays: GraphArrays) -> int:
    crc = 0
    for name in ("z", "pos", "cell", "pbc", "edge_index", *EDGE_FIELDS, "line_index", "line_cos"):
        value = getattr(arrays, name)
        if value is not None:
            crc = zlib.crc32(np.ascontiguousarray(value), crc)
    return crc


def set_aside(path: Path, problem: object, what: str) -> Path | None:
    """Rename a damaged file or folder to ``<name>.damaged-<time>`` (kept for inspection,
    never deleted) and say so once; ``None`` when it could not be renamed."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = path.with_name(f"{path.name}.damaged-{stamp}")
    n = 1
    while target.exists():  # two in one second: never overwrite an earlier one
        n += 1
        target = path.with_name(f"{path.name}.damaged-{stamp}-{n}")
    try:
        os.replace(path, target)
    except FileNotFoundError:
        return None  # another process set it aside first
    except OSError as error:
        logger.warning(
            "%s is damaged (%s) and could not be set aside (%s); %s",
            path,
            problem,
            error.strerror,
            what,
        )
        return None
    logger.warning("%s is damaged (%s); set aside as %s; %s", path, problem, target.name, what)
    return target


def _sqlite_code(error: sqlite3.Error) -> int | None:
    code = getattr(error, "sqlite_errorcode", None)
    return None if code is None else code & 0xFF  # extended codes keep the primary one low


def _damaged(error: sqlite3.Error) -> bool:
    code = _sqlite_code(error)
    if code is None:  # no error code (old Python): a DatabaseError that is not operational
        return isinstance(error, sqlite3.DatabaseError) and not isinstance(
            error, sqlite3.OperationalError
        )
    return code in _SQLITE_DAMAGED


def _read_only(error: sqlite3.Error) -> bool:
    return _sqlite_code(error) in _SQLITE_READONLY or "readonly" in str(error)


def _pack(graphs: Sequence[GraphArrays], keys: Sequence[str]) -> dict[str, np.ndarray]:
    """Concatenate graphs into shard arrays, with each row's structure key and CRC32."""
    out: dict[str, np.ndarray] = {
        "node_ptr": ptr_from_counts([g.num_nodes for g in graphs]),
        "edge_ptr": ptr_from_counts([g.num_edges for g in graphs]),
        "z": np.concatenate([g.z for g in graphs]),
        "pos": np.concatenate([g.pos for g in graphs]),
        "cell": np.stack([g.cell for g in graphs]),
        "pbc": np.stack([g.pbc for g in graphs]),
        "edge_index": np.concatenate([g.edge_index for g in graphs], axis=1),
        "row_crc": np.array([_crc(g) for g in graphs], dtype=np.uint32),
        "keys": np.array([k.encode() for k in keys]),
    }
    for f in EDGE_FIELDS:
        out[f] = np.concatenate([getattr(g, f) for g in graphs])
    if graphs[0].line_index is not None:
        out["line_ptr"] = ptr_from_counts([g.line_index.shape[1] for g in graphs])
        out["line_index"] = np.concatenate([g.line_index for g in graphs], axis=1)
        out["line_cos"] = np.concatenate([g.line_cos for g in graphs])
    return {key: np.ascontiguousarray(value) for key, value in out.items()}


def pack_graphs(graphs: Sequence[GraphArrays]) -> dict[str, np.ndarray]:
    """Graphs as a few concatenated arrays, which cross a process boundary far faster
    than many small ones (:func:`unpack_graphs` undoes it)."""
    return _pack(graphs, [""] * len(graphs)) if graphs else {}


def unpack_graphs(arrays: dict[str, np.ndarray]) -> list[GraphArrays]:
    """The graphs of :func:`pack_graphs`, as views into its arrays."""
    if not arrays:
        return []
    shard = Shard(Path(), arrays=arrays)
    return [shard.get(row, copy=False) for row in range(shard.num_graphs)]


def _save_array(path: Path, value: np.ndarray) -> None:
    np.save(path, value, allow_pickle=False)


class Shard:
    """One memory-mapped block of concatenated graphs (or, given ``arrays``, one held in
    memory because the cache could not be written)."""

    def __init__(self, path: Path, arrays: dict[str, np.ndarray] | None = None):
        self.path = path
        if arrays is not None:
            self.arrays = arrays
            self.checksums: dict[str, int] = {}
            self._intact: bool | None = True
            self._maps: list = []  # nothing mapped
        else:
            # plain ndarray views of the maps: slicing an np.memmap is several times slower
            maps = {
                f.stem: np.load(f, mmap_mode="r", allow_pickle=False) for f in path.glob("*.npy")
            }
            self.arrays = {name: value.view(np.ndarray) for name, value in maps.items()}
            self._maps = [getattr(value, "_mmap", None) for value in maps.values()]
            self.checksums = json.loads((path / "checksums.json").read_text())
            self._intact = None
        required = {"z", "pos", "cell", "pbc", "edge_index", "node_ptr", "edge_ptr", *EDGE_FIELDS}
        missing = required - set(self.arrays)
        if missing:
            raise OSError(f"{path}: missing arrays {sorted(missing)}")
        self._row_crc: np.ndarray | None = self.arrays.get("row_crc")

    def release(self) -> None:
        """Let go of the pages of the maps read so far: they stay in the page cache, but
        no longer count in this process's memory, which would otherwise grow to the size
        of every shard a pass touched (7 GB for 10⁶ MP-like graphs)."""
        for mapped in self._maps:
            # no madvise on this platform, or a map already closed: nothing to let go of
            with contextlib.suppress(AttributeError, OSError, ValueError):
                mapped.madvise(mmap.MADV_DONTNEED)

    def intact(self) -> bool:
        """Whether every array still has the checksum it was written with (one pass over
        the shard at C speed; computed once per process)."""
        if self._intact is None:
            self._intact = all(
                zlib.crc32(np.ascontiguousarray(self.arrays[name])) == crc
                for name, crc in self.checksums.items()
            ) and set(self.checksums) == set(self.arrays)
        return self._intact

    @property
    def row_crc(self) -> np.ndarray:
        """CRC32 of every row's graph, as written (shards written before ``row_crc``
        existed: computed here from the stored bytes, once per process)."""
        if self._row_crc is None or len(self._row_crc) != self.num_graphs:
            self._row_crc = np.array(
                [_crc(self.get(row, copy=False)) for row in range(self.num_graphs)],
                dtype=np.uint32,
            )
        return self._row_crc

    @property
    def keys(self) -> np.ndarray | None:
        """Structure key of every row (``None`` for shards written before keys existed)."""
        keys = self.arrays.get("keys")
        return keys if keys is not None and len(keys) == self.num_graphs else None

    @staticmethod
    def write(directory: Path, graphs: Sequence[GraphArrays], keys: Sequence[str]) -> str:
        """Write graphs as a new shard; returns its name. On any failure the temporary
        folder is removed before the error propagates, so nothing half-written stays."""
        name = f"shard-{uuid.uuid4().hex[:12]}"
        tmp = directory / f".tmp-{name}"
        out = _pack(graphs, keys)
        tmp.mkdir()
        try:
            for key, value in out.items():
                _save_array(tmp / f"{key}.npy", value)
            checksums = {key: zlib.crc32(value) for key, value in out.items()}
            (tmp / "checksums.json").write_text(json.dumps(checksums))
            os.replace(tmp, directory / name)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
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


_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS entries (key TEXT PRIMARY KEY,"
    " shard TEXT NOT NULL, row INTEGER NOT NULL, crc INTEGER NOT NULL)"
)
#: structure texts read before (digest of text and reading options → structure key and
#: reduced formula): a later read of the same file with other targets or another model's
#: elements finds their graphs without parsing them again. An accelerator only: lost when
#: the index is rebuilt, and a text whose graph is gone is parsed again.
_TEXTS_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS texts (digest TEXT PRIMARY KEY,"
    " key TEXT NOT NULL, formula TEXT NOT NULL)"
)


def _create(db: sqlite3.Connection) -> None:
    db.execute(_SCHEMA)
    db.execute(_TEXTS_SCHEMA)


class GraphCache:
    """Graphs of one :class:`GraphSettings`, keyed by structure content.

    Example:
        >>> cache = GraphCache(".tlmat-cache", GraphSettings(cutoff=8.0, max_neighbors=12))
        >>> graphs = cache.graphs(read_records("perov_5/test.csv.gz").records)
        >>> graphs[0]  # a CrystalGraph, loaded from disk on the second run
    """

    #: whether the index is an in-memory database (the folder's could not be used)
    _index_in_memory = False

    def __init__(self, root: str | Path, settings: GraphSettings):
        self.settings = settings
        self.directory = Path(root) / f"graphs-{settings.key()}"
        self._shards: dict[str, Shard | None] = {}
        #: entries of graphs that could not be written, held in memory for this process
        self._memory: dict[str, Entry] = {}
        #: why new graphs cannot be written here (reported once), or None
        self.unwritable: str | None = None
        self.n_built = 0
        usable = True
        _refuse_a_file_in_the_way(self.directory)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            usable = self._check_settings()
        except OSError as error:
            if error.errno not in UNWRITABLE:
                raise
            self._cannot_write(error.strerror or str(error))
            usable = self.directory.is_dir() and self._settings_match()
        self._db = self._open_index() if usable else self._memory_index()

    # --- pickling (a dataset sent to worker processes, e.g. parallel ensemble members) --

    def __getstate__(self) -> dict[str, Any]:
        # an SQLite connection cannot cross processes, and copying memory-mapped shards
        # would send every graph's bytes: the other process reopens both from the folder;
        # only shards held in memory (an unwritable cache) travel with the cache
        state = self.__dict__.copy()
        state["_db"] = None  # (pickled in a feeder thread: the connection is not touched)
        state["_shards"] = {
            name: shard
            for name, shard in self._shards.items()
            if shard is not None and name.startswith("memory-")
        }
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._db = self._memory_index() if self._index_in_memory else self._open_index()

    # --- settings ------------------------------------------------------------------------

    def _meta(self) -> dict[str, Any]:
        return {"format": GRAPH_FORMAT_VERSION, "settings": self.settings.model_dump()}

    def _settings_match(self) -> bool:
        try:
            return json.loads((self.directory / "settings.json").read_text()) == self._meta()
        except (OSError, ValueError):
            return False

    def _check_settings(self) -> bool:
        """Clear the folder when it was built for other settings; whether it is usable."""
        meta_path = self.directory / "settings.json"
        if meta_path.exists() and not self._settings_match():
            logger.warning("%s: cache settings do not match; clearing it", self.directory)
            try:
                shutil.rmtree(self.directory)
                self.directory.mkdir(parents=True)
            except OSError as error:  # graphs of other settings must never be served
                self._cannot_write(error.strerror or str(error))
                return False
        if not meta_path.exists():
            meta_path.write_text(json.dumps(self._meta(), indent=2))
        return True

    # --- the index database ----------------------------------------------------------------

    @property
    def index_path(self) -> Path:
        return self.directory / "index.sqlite"

    def _memory_index(self) -> sqlite3.Connection:
        db = sqlite3.connect(":memory:")
        _create(db)
        self._index_in_memory = True
        return db

    def _open_index(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.index_path, timeout=60)
        try:
            _create(db)
            db.commit()
            db.execute("SELECT COUNT(*) FROM entries LIMIT 1").fetchone()
        except sqlite3.Error as error:
            db.close()
            if _damaged(error):
                return self._recover_index(error)
            if _read_only(error):  # no table could be created: nothing is held here
                self._cannot_write(str(error))
                return self._memory_index()
            raise
        return db

    @contextmanager
    def _index_lock(self) -> Iterator[None]:
        """Serialise index recovery between processes (a no-op where no lock file fits)."""
        try:
            handle = open(self.directory / ".index.lock", "a")  # noqa: SIM115
        except OSError:
            yield
            return
        with handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield

    def _recover_index(self, error: sqlite3.Error) -> sqlite3.Connection:
        """Set a damaged index aside and rebuild it from the shards' own keys and checksums."""
        with self._index_lock():
            # another process may have replaced it while we waited for the lock
            db = sqlite3.connect(self.index_path, timeout=60)
            try:
                _create(db)
                db.execute("SELECT COUNT(*) FROM entries").fetchone()
                return db
            except sqlite3.Error as again:
                db.close()
                if not _damaged(again):
                    raise
            aside = set_aside(self.index_path, error, "rebuilding it from the intact shards")
            if aside is None and self.index_path.exists():  # could not be moved: read-only
                self._cannot_write("the index could not be replaced")
                db = self._memory_index()
            else:
                for suffix in ("-journal", "-wal", "-shm"):  # never replay them on a new file
                    side = self.index_path.with_name(self.index_path.name + suffix)
                    if side.exists() and aside is not None:
                        os.replace(side, aside.with_name(aside.name + suffix))
                db = sqlite3.connect(self.index_path, timeout=60)
                _create(db)
            rows = self._shard_entries()
            db.executemany("INSERT OR REPLACE INTO entries VALUES (?, ?, ?, ?)", rows)
            db.commit()
            logger.info("%s: index rebuilt with %d graphs", self.directory, len(rows))
            return db

    def _shard_entries(self) -> list[tuple[str, str, int, int]]:
        """Index rows recovered from every intact shard that records its keys (oldest
        first, so that the newest copy of a structure wins)."""
        rows: list[tuple[str, str, int, int]] = []
        paths = sorted(self.directory.glob("shard-*"), key=lambda p: p.stat().st_mtime)
        for path in paths:
            shard = self._shard(path.name)
            if shard is None or shard.keys is None or not shard.intact():
                continue
            keys = [k.decode() for k in shard.keys.tolist()]
            rows.extend(
                zip(
                    keys,
                    [path.name] * len(keys),
                    range(len(keys)),
                    shard.row_crc.tolist(),
                    strict=True,
                )
            )
        return rows

    def _sql(self, sql: str, params: Sequence[Any] = (), many: bool = False) -> list[Any]:
        """Run one statement; a damaged index is set aside, rebuilt, and the statement run
        again. Writes are committed."""
        for attempt in (0, 1):
            try:
                cursor = (self._db.executemany if many else self._db.execute)(sql, params)
                rows = cursor.fetchall()
                if self._db.in_transaction:
                    self._db.commit()
                return rows
            except sqlite3.Error as error:
                if attempt or not _damaged(error):
                    raise
                self._db.close()
                self._db = self._recover_index(error)
        raise AssertionError("unreachable")

    def _write_sql(self, sql: str, params: Sequence[Any], many: bool = False) -> bool:
        """Run a write; ``False`` (reported once) when the index is read-only."""
        try:
            self._sql(sql, params, many)
        except sqlite3.Error as error:
            if self._db.in_transaction:
                self._db.rollback()
            if _read_only(error):
                self._cannot_write(str(error))
                return False
            if _sqlite_code(error) == _SQLITE_FULL:
                raise CacheWriteError(
                    errno.ENOSPC,
                    f"graph cache index {self.index_path} could not be written"
                    f" ({error}); free space or set TLMAT_CACHE_DIR to another disk",
                ) from error
            raise
        return True

    def _cannot_write(self, reason: str) -> None:
        if self.unwritable is None:
            self.unwritable = reason
            logger.warning(
                "graph cache %s cannot be written (%s): it serves the graphs it holds;"
                " new graphs are kept in memory for this run only",
                self.directory,
                reason,
            )

    def __len__(self) -> int:
        stored = self._sql("SELECT COUNT(*) FROM entries")[0][0]
        return stored + len(self._memory) - len(self._lookup_db(list(self._memory)))

    def _shard(self, name: str) -> Shard | None:
        if name not in self._shards:
            try:
                self._shards[name] = Shard(self.directory / name)
            except (OSError, ValueError) as error:
                logger.warning("graph cache shard %s is unreadable (%s); rebuilding", name, error)
                self._shards[name] = None
        return self._shards[name]

    def _lookup_db(self, keys: Sequence[str]) -> dict[str, Entry]:
        found: dict[str, Entry] = {}
        for start in range(0, len(keys), 900):  # SQLite's bound-parameter limit
            chunk = list(keys[start : start + 900])
            marks = ",".join("?" * len(chunk))
            for key, shard, row, crc in self._sql(
                f"SELECT key, shard, row, crc FROM entries WHERE key IN ({marks})", chunk
            ):
                found[key] = (shard, row, crc)
        return found

    def parsed_texts(self, digests: Sequence[str]) -> dict[str, tuple[str, str]]:
        """Structure key and reduced formula of texts read before, by digest."""
        found: dict[str, tuple[str, str]] = {}
        for start in range(0, len(digests), 900):  # SQLite's bound-parameter limit
            chunk = list(digests[start : start + 900])
            marks = ",".join("?" * len(chunk))
            for digest, key, formula in self._sql(
                f"SELECT digest, key, formula FROM texts WHERE digest IN ({marks})", chunk
            ):
                found[digest] = (key, formula)
        return found

    def remember_texts(self, rows: Sequence[tuple[str, str, str]]) -> None:
        """Record (digest, structure key, reduced formula) of texts just read."""
        if rows and self.unwritable is None:
            self._write_sql("INSERT OR REPLACE INTO texts VALUES (?, ?, ?)", list(rows), True)

    def lookup(self, keys: Sequence[str]) -> dict[str, Entry]:
        """Index entries (shard, row, crc) of the keys that are cached (not yet verified)."""
        found = self._lookup_db(keys)
        found.update({k: self._memory[k] for k in keys if k in self._memory})
        return found

    def verify(self, entries: dict[str, Entry]) -> list[str]:
        """Keys whose entry does not match the graph it points at: shard unreadable, row out
        of range, or the row's checksum (and, where the shard records it, its structure
        key) not the entry's own.

        Cost: per intact shard, one CRC32 pass over its bytes (once per process, as before),
        then a vectorised gather-and-compare of the stored row checksums and keys: about
        1 µs per entry (5 ms for 5000 perov_5 graphs, measured), where hashing each graph's
        bytes again would cost ~9 µs. Only a damaged shard takes that per-graph path.
        """
        by_shard: dict[str, list[str]] = {}
        for key, entry in entries.items():
            by_shard.setdefault(entry[0], []).append(key)
        bad: list[str] = []
        for name, keys in by_shard.items():
            shard = self._shard(name)
            if shard is None:
                bad.extend(keys)
                continue
            rows = np.array(
                [r if isinstance(r, int) else -1 for r in (entries[k][1] for k in keys)],
                dtype=np.int64,
            )
            crcs = np.array(
                [c if isinstance(c, int) else -1 for c in (entries[k][2] for k in keys)],
                dtype=np.int64,
            )
            ok = (rows >= 0) & (rows < shard.num_graphs)
            safe = np.where(ok, rows, 0)
            if shard.intact():  # its stored row checksums and keys can be trusted
                ok &= shard.row_crc[safe].astype(np.int64) == crcs
                stored_keys = shard.keys
                if stored_keys is not None:
                    ok &= stored_keys[safe] == np.array([k.encode() for k in keys])
            else:  # damaged somewhere: hash each graph's own stored bytes
                for i in np.flatnonzero(ok):
                    try:
                        ok[i] = _crc(shard.get(int(rows[i]), copy=False)) == crcs[i]
                    except (IndexError, ValueError, OSError):
                        ok[i] = False
            bad.extend(k for k, good in zip(keys, ok.tolist(), strict=True) if not good)
            # each shard's pages as soon as it is checked: verifying the 50 shards of 10⁶
            # graphs had mapped them all at once, 7 GB
            shard.release()
        return bad

    def _drop(self, bad: Sequence[str]) -> None:
        """Report and forget entries that failed verification (they are rebuilt)."""
        shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        logger.warning(
            "graph cache %s: %d entr%s damaged (checksum mismatch: %s); rebuilding",
            self.directory,
            len(bad),
            "y is" if len(bad) == 1 else "ies are",
            shown,
        )
        for key in bad:
            self._memory.pop(key, None)
        for start in range(0, len(bad), 900):
            chunk = list(bad[start : start + 900])
            marks = ",".join("?" * len(chunk))
            if not self._write_sql(f"DELETE FROM entries WHERE key IN ({marks})", chunk):
                break  # read-only: the rebuilt graphs are held in memory instead

    def release(self) -> None:
        """:meth:`Shard.release` for every open shard."""
        for shard in self._shards.values():
            if shard is not None:
                shard.release()

    def _verified(self, keys: Sequence[str]) -> dict[str, Entry]:
        entries = self.lookup(keys)
        bad = self.verify(entries)
        self.release()  # verifying read every row
        if bad:
            self._drop(bad)
            for key in bad:
                entries.pop(key)
        return entries

    def load(self, key: str, entry: Entry, verify: bool = True) -> GraphArrays | None:
        """The cached graph, or ``None`` (and the entry dropped) when it is damaged."""
        if verify and self.verify({key: entry}):
            self._drop([key])
            return None
        shard = self._shard(entry[0])
        return None if shard is None else shard.get(entry[1])

    def store(self, keys: Sequence[str], graphs: Sequence[GraphArrays]) -> None:
        """Add graphs under their structure keys (one new shard; held in memory when the
        cache cannot be written)."""
        if not graphs:
            return
        if self.unwritable is None:
            try:
                name = Shard.write(self.directory, graphs, keys)
            except OSError as error:
                if error.errno not in UNWRITABLE:
                    raise CacheWriteError(
                        error.errno,
                        f"graph cache {self.directory}: a new shard could not be written"
                        f" ({error.strerror or error}); nothing partial was left behind."
                        " Free space or set TLMAT_CACHE_DIR to another disk",
                    ) from error
                self._cannot_write(error.strerror or str(error))
            else:
                crcs = self._shard(name).row_crc.tolist()
                rows = [
                    (k, name, row, crc) for row, (k, crc) in enumerate(zip(keys, crcs, strict=True))
                ]
                try:
                    if self._write_sql(
                        "INSERT OR REPLACE INTO entries VALUES (?, ?, ?, ?)", rows, True
                    ):
                        return
                except CacheWriteError:
                    shutil.rmtree(self.directory / name, ignore_errors=True)  # never indexed
                    raise
                for k, _, row, crc in rows:  # written but not indexed: serve it this run
                    self._memory[k] = (name, row, crc)
                return
        name = f"memory-{uuid.uuid4().hex[:12]}"
        shard = Shard(self.directory / name, arrays=_pack(graphs, keys))
        self._shards[name] = shard
        for row, (key, crc) in enumerate(zip(keys, shard.row_crc.tolist(), strict=True)):
            self._memory[key] = (name, row, crc)

    def add(self, keys: Sequence[str], graphs: Sequence[GraphArrays]) -> list[Entry]:
        """The entries of graphs built elsewhere (:mod:`tlmat.data.ingest`): those already
        cached (and intact) are reused, the others stored, each structure once."""
        entries = self._verified(keys)
        todo = {k: g for k, g in zip(keys, graphs, strict=True) if k not in entries}
        gone = [k for k, g in todo.items() if g is None]
        if gone:  # found in the cache when read, damaged or removed since
            raise CacheWriteError(
                errno.ENOENT,
                f"graph cache {self.directory}: {len(gone)} graph(s) found when the data was "
                "read have since been removed or damaged (by another process?); run again",
            )
        self.store(list(todo), list(todo.values()))
        self.n_built = len(todo)
        if todo:
            entries = self.lookup(keys)
        return [entries[k] for k in keys]

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
        # verify every hit once, here, so that damage is repaired before training starts
        entries = self._verified(keys)
        missing = [i for i, k in enumerate(keys) if k not in entries]
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

    def entries_for(self, keys: Sequence[str]) -> list[Entry] | None:
        """Verified entries for all ``keys``, or ``None`` when any is missing or damaged."""
        entries = self._verified(keys)
        if len(entries) != len(set(keys)):
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
    node_offset = np.repeat(ptr_from_counts(n_nodes)[:-1], n_edges)
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
        edge_offset = np.repeat(ptr_from_counts(n_edges)[:-1], n_lines)
        line_index = np.concatenate([g.line_index for g in graphs], axis=1) + edge_offset
        fields["line_index"] = torch.from_numpy(line_index.astype(np.int64))
        fields["line_cos"] = torch.from_numpy(np.concatenate([g.line_cos for g in graphs]))
    batch = torch.from_numpy(np.repeat(np.arange(len(graphs)), n_nodes))
    return Batch(
        batch=batch,
        ptr=torch.from_numpy(ptr_from_counts(n_nodes)),
        num_nodes=int(n_nodes.sum()),
        **fields,
    )
