"""Registered files: local copy first, else a checked download into the cache; offline
without a copy, a clear error."""

from __future__ import annotations

from pathlib import Path

import pytest

from tlmat import datasets
from tlmat.datasets import REGISTRY, RemoteFile, fetch, resolve, sha256sum


def test_local_copy_is_used_and_verified(data: Path) -> None:
    path = fetch("cgcnn/formation-energy-per-atom")
    assert path == data / "cgcnn_pretrained" / "pre-trained" / "formation-energy-per-atom.pth.tar"
    assert sha256sum(path) == REGISTRY["cgcnn/formation-energy-per-atom"].sha256


def test_download_is_checked_and_cached(data: Path, tmp_path: Path, monkeypatch) -> None:
    real = data / "cgcnn_sample_regression" / "atom_init.json"
    entry = REGISTRY["cgcnn/atom_init.json"]
    monkeypatch.setenv("TLMAT_DATA_DIR", str(tmp_path / "empty"))
    monkeypatch.setenv("TLMAT_CACHE_DIR", str(tmp_path / "cache"))
    # the real download code, pointed at a file:// URL because CI has no internet
    monkeypatch.setitem(
        REGISTRY, "cgcnn/atom_init.json", RemoteFile(real.as_uri(), entry.sha256, entry.local)
    )
    path = fetch("cgcnn/atom_init.json")
    assert path.parent == tmp_path / "cache" / "downloads"
    assert path.read_bytes() == real.read_bytes()
    real_bytes = path.read_bytes()
    assert fetch("cgcnn/atom_init.json") == path and path.read_bytes() == real_bytes

    monkeypatch.setitem(
        REGISTRY, "cgcnn/atom_init.json", RemoteFile(real.as_uri(), "0" * 64, entry.local)
    )
    path.unlink()
    with pytest.raises(ValueError, match="do not match the published checksum"):
        fetch("cgcnn/atom_init.json")
    assert not path.exists()


def test_offline_without_local_copy_is_a_clear_error(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("TLMAT_DATA_DIR", str(tmp_path / "empty"))
    monkeypatch.setenv("TLMAT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setitem(
        REGISTRY,
        "perov_5/test",
        RemoteFile("http://127.0.0.1:9/perov_5/test.csv", None, "perov_5/test.csv.gz"),
    )
    with pytest.raises(FileNotFoundError, match="are you offline"):
        fetch("perov_5/test", timeout=2)


def test_tampered_local_copy_is_refused(data: Path, tmp_path: Path, monkeypatch) -> None:
    copy = tmp_path / "cgcnn_sample_regression" / "atom_init.json"
    copy.parent.mkdir()
    copy.write_text((data / "cgcnn_sample_regression" / "atom_init.json").read_text() + " ")
    monkeypatch.setenv("TLMAT_DATA_DIR", str(tmp_path))
    with pytest.raises(ValueError, match="checksum differs"):
        fetch("cgcnn/atom_init.json")


def test_resolve_names_and_paths(data: Path, tmp_path: Path) -> None:
    assert resolve("perov_5/test") == data / "perov_5" / "test.csv.gz"
    assert resolve(tmp_path) == tmp_path
    with pytest.raises(FileNotFoundError, match="not a registered name"):
        resolve("perov_6/test")
    with pytest.raises(KeyError, match="unknown file"):
        datasets.fetch("nope")


def test_download_without_checksum_is_checked_by_content(data: Path, tmp_path, monkeypatch):
    import gzip

    monkeypatch.setenv("TLMAT_DATA_DIR", str(tmp_path / "empty"))
    monkeypatch.setenv("TLMAT_CACHE_DIR", str(tmp_path / "cache"))
    good = tmp_path / "train.csv"
    good.write_bytes(gzip.decompress((data / "perov_5" / "train.csv.gz").read_bytes()))
    entry = REGISTRY["perov_5/train"]
    monkeypatch.setitem(
        REGISTRY,
        "perov_5/train",
        RemoteFile(good.as_uri(), None, entry.local, rows=entry.rows, columns=entry.columns),
    )
    assert fetch("perov_5/train").name == "train.csv"

    short = tmp_path / "short" / "train.csv"
    short.parent.mkdir()
    short.write_text("\n".join(good.read_text().splitlines()[:50]) + "\n")
    (tmp_path / "cache" / "downloads" / "train.csv").unlink()
    monkeypatch.setitem(
        REGISTRY,
        "perov_5/train",
        RemoteFile(short.as_uri(), None, entry.local, rows=entry.rows, columns=entry.columns),
    )
    with pytest.raises(ValueError, match="rows instead of 11356"):
        fetch("perov_5/train")


def test_published_checksums_match_the_local_copies(data: Path) -> None:
    import gzip
    import hashlib

    for name in ("perov_5/val", "perov_5/test"):
        raw = gzip.decompress((data / REGISTRY[name].local).read_bytes())
        assert hashlib.sha256(raw).hexdigest() == REGISTRY[name].sha256


def test_unknown_name_lists_registered_datasets_not_models(monkeypatch) -> None:
    """The registry says which entries are model weights (``architecture``), whatever
    their name: a dataset under ``cgcnn/`` is listed, weights under any prefix are not."""
    model = RemoteFile("http://127.0.0.1:9/w.pt", None, "w.pt", architecture="schnet")
    table = RemoteFile("http://127.0.0.1:9/t.csv", None, "t.csv")
    monkeypatch.setitem(REGISTRY, "schnet/some-weights", model)
    monkeypatch.setitem(REGISTRY, "cgcnn/some-table", table)
    with pytest.raises(FileNotFoundError) as error:
        resolve("no_such_dataset/nowhere.csv")
    message = str(error.value)
    assert "perov_5/train" in message and "cgcnn/some-table" in message
    assert "schnet/some-weights" not in message
    assert "cgcnn/formation-energy-per-atom" not in message


def test_a_misspelt_path_is_said_before_reading_with_the_closest_names(data: Path) -> None:
    """check says what resolve would, naming the files beside the one meant (here or
    in the data folder) and the registered datasets closest to it, fetching nothing."""
    with pytest.raises(FileNotFoundError, match=r"did you mean 'perov_5/val'"):
        datasets.check("perov_5/vla")
    with pytest.raises(FileNotFoundError, match=r"mp_cgcnn_36k/mp_cgcnn_36k\.csv\.gz'"):
        datasets.check("mp_cgcnn_36k/mp_cgcnn_36k.csv.gzz")
    datasets.check("perov_5/test")  # registered names and real paths pass
    datasets.check(data / "perov_5")
