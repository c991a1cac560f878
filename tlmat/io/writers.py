"""Export a cleaned dataset: extended XYZ (targets in ``atoms.info``) or CSV with a CIF column."""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pymatgen.io.ase import AseAtomsAdaptor
from pymatgen.io.cif import CifWriter

from tlmat.io.records import Record

if TYPE_CHECKING:
    import pandas as pd


def _refuse_overwrite(path: Path, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True (--overwrite) to replace it")


def write_extxyz(records: Iterable[Record], path: str | Path, *, overwrite: bool = False) -> int:
    """Write records as extended XYZ; returns the number written."""
    import ase.io

    path = Path(path)
    _refuse_overwrite(path, overwrite)
    frames = []
    for record in records:
        structure = record.structure
        if any(getattr(sp, "oxi_state", None) for sp in structure.composition):
            # ASE has no oxidation states (COD CIFs give "Na+"): write the elements
            structure = structure.copy()
            structure.remove_oxidation_states()
        atoms = AseAtomsAdaptor.get_atoms(structure)
        atoms.info = {"id": record.id}
        for name, value in record.targets.items():
            atoms.info[name] = np.asarray(value) if np.ndim(value) else float(value)
        frames.append(atoms)
    ase.io.write(path, frames, format="extxyz")
    return len(frames)


def write_csv(records: Iterable[Record], path: str | Path, *, overwrite: bool = False) -> int:
    """Write records as CSV: ``id``, one column per scalar target, ``cif``."""
    path = Path(path)
    _refuse_overwrite(path, overwrite)
    records = list(records)
    names: dict[str, None] = {}
    for record in records:
        names.update({k: None for k, v in record.targets.items() if np.ndim(v) == 0})
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", *names, "cif"])
        for record in records:
            values = [repr(float(record.targets[n])) if n in record.targets else "" for n in names]
            writer.writerow([record.id, *values, str(CifWriter(record.structure))])
    return len(records)


#: formats :class:`TableWriter` writes, by file suffix
TABLE_SUFFIXES = (".csv", ".parquet", ".npz")


class TableWriter:
    """A table of per-structure results (``id`` first, then numeric columns) written a
    chunk at a time, so that predictions or embeddings of 10⁶ structures never sit in
    memory whole: CSV rows appended, Parquet row groups, or an ``.npz`` whose matrix is
    streamed into the archive (``ids``, ``values`` under ``matrix_name``, ``columns``; as
    ``np.savez`` writes them, loadable with ``np.load``); ``fmt`` (a suffix) overrides
    the path's. Everything goes to a temporary
    file beside ``path``, renamed into place by :meth:`close`; :meth:`abort` (or leaving
    a ``with`` block by an exception) removes it, so a failed run leaves nothing behind.
    """

    def __init__(
        self,
        path: str | Path,
        n_rows: int | None = None,
        matrix_name: str = "values",
        fmt: str | None = None,
    ):
        self.path = Path(path)
        self.fmt = fmt or self.path.suffix  # the format, as a suffix: ".csv"
        if self.fmt not in TABLE_SUFFIXES:
            raise ValueError(f"{self.path}: tables are written as {', '.join(TABLE_SUFFIXES)}")
        if self.fmt == ".npz" and n_rows is None:
            raise ValueError("an .npz table streams its matrix: give the number of rows")
        self.n_rows, self.matrix_name = n_rows, matrix_name
        self.tmp = self.path.with_name(f".{self.path.name}.tmp{os.getpid()}")
        self.columns: list[str] | None = None
        self.rows = 0
        self._ids: list[str] = []
        self._handle: Any = None
        self._member: Any = None

    def __enter__(self) -> TableWriter:
        return self

    def __exit__(self, kind, error, trace) -> None:
        if kind is None:
            self.close()
        else:
            self.abort()

    def write(self, frame: pd.DataFrame) -> None:
        """Append rows: an ``id`` column, then the same value columns every time."""
        columns = [str(c) for c in frame.columns[1:]]
        if self.columns is None:
            self.columns = columns
            self._open(frame)
        elif columns != self.columns:
            raise ValueError(f"{self.path}: columns changed from {self.columns} to {columns}")
        suffix = self.fmt
        if suffix == ".csv":
            frame.to_csv(self._handle, index=False, header=self.rows == 0)
        elif suffix == ".parquet":
            import pyarrow as pa

            self._handle.write_table(pa.Table.from_pandas(frame, preserve_index=False))
        else:
            values = np.ascontiguousarray(frame.iloc[:, 1:].to_numpy(dtype=self._dtype))
            self._member.write(values.tobytes())
            self._ids.extend(frame.iloc[:, 0].astype(str))
        self.rows += len(frame)

    def _open(self, frame: pd.DataFrame) -> None:
        suffix = self.fmt
        if suffix == ".csv":
            self._handle = self.tmp.open("w", newline="")
        elif suffix == ".parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            schema = pa.Table.from_pandas(frame, preserve_index=False).schema
            self._handle = pq.ParquetWriter(self.tmp, schema)
        else:
            import zipfile

            values = frame.iloc[:, 1:]
            self._dtype = np.result_type(*values.dtypes) if values.shape[1] else np.float32
            self._handle = zipfile.ZipFile(self.tmp, "w", allowZip64=True)
            self._member = self._handle.open(f"{self.matrix_name}.npy", "w", force_zip64=True)
            header = {
                "descr": np.lib.format.dtype_to_descr(np.dtype(self._dtype)),
                "fortran_order": False,
                "shape": (self.n_rows, len(self.columns or [])),
            }
            np.lib.format.write_array_header_2_0(self._member, header)

    def close(self) -> None:
        """Finish the file and move it into place."""
        if self.columns is None:  # no rows: an empty table with no value columns
            import pandas as pd

            self._open(pd.DataFrame({"id": pd.Series([], dtype=str)}))
            self.columns = []
        suffix = self.fmt
        if suffix == ".npz":
            if self.rows != self.n_rows:
                self.abort()
                raise ValueError(f"{self.path}: {self.rows} rows written of {self.n_rows}")
            self._member.close()
            for name, array in (("ids", np.array(self._ids)), ("columns", np.array(self.columns))):
                with self._handle.open(f"{name}.npy", "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, array, allow_pickle=False)
        self._handle.close()
        self._handle = None
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        """Drop what was written."""
        try:
            if self._member is not None and not self._member.closed:
                self._member.close()
            if self._handle is not None:
                self._handle.close()
        except (OSError, ValueError):
            pass
        self._handle = None
        self.tmp.unlink(missing_ok=True)
