"""Shared fixtures: the real datasets in $TLMAT_DATA_DIR (default ../shared/data)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tlmat.datasets import data_dir


@pytest.fixture(scope="session")
def data() -> Path:
    root = data_dir()
    if root is None or not root.is_dir():
        pytest.skip("real datasets not found: set TLMAT_DATA_DIR")
    return root


@pytest.fixture()
def cgcnn_folder(data: Path, tmp_path: Path) -> Path:
    """A writable copy of the original CGCNN sample folder (10 COD CIFs + id_prop.csv)."""
    folder = tmp_path / "sample"
    shutil.copytree(data / "cgcnn_sample_regression", folder)
    for path in folder.iterdir():
        path.chmod(0o644)
    folder.chmod(0o755)
    return folder


@pytest.fixture(scope="session")
def perovskites(data: Path, tmp_path_factory):
    """The first 120 Castelli perovskites of perov_5/val as CGCNN graphs (heat_ref, eV per
    cell): built once for every module that trains small models on them."""
    from tlmat.data import load_dataset
    from tlmat.graphs import GraphSettings

    return load_dataset(
        data / "perov_5" / "val.csv.gz",
        GraphSettings.preset("cgcnn"),
        ["heat_ref"],
        cache_dir=tmp_path_factory.mktemp("cache"),
        limit=120,
    )


@pytest.fixture(scope="session")
def perov60(data: Path, tmp_path_factory) -> Path:
    """The first 60 Castelli perovskites of perov_5/val as a CSV with a CIF column and
    heat_ref (eV per cell): small enough for commands run end to end, several times."""
    from tlmat.io import read_records, write_csv

    path = tmp_path_factory.mktemp("perov60") / "perov60.csv"
    write_csv(read_records(data / "perov_5" / "val.csv.gz", ["heat_ref"], limit=60), path)
    return path


@pytest.fixture()
def tiny_grid(perov60: Path, tmp_path: Path):
    """A benchmark YAML on :func:`perov60` (one size of 20, one seed, 10 validation and 20
    test structures, one local worker); ``tiny_grid(methods=[...], training={...})``
    writes it with those settings and returns its path."""
    import yaml

    def write(**changes) -> Path:
        grid = {
            "name": "tiny",
            "data": str(perov60),
            "target": "heat_ref",
            "sizes": [20],
            "seeds": [0],
            "val_size": 10,
            "test_size": 20,
            "executor": {"kind": "local", "workers": 1},
            **changes,
        }
        path = tmp_path / "grid.yaml"
        path.write_text(yaml.safe_dump(grid))
        return path

    return write
