"""Fault cases of foundation-model sources: weights that are not the published ones, an
unknown version, a source name mistyped on the command line, and a structure with an
element the foundation model has no embedding for. Each ends in a clear error (or a
skipped row, named), never in a silently different model."""

from __future__ import annotations

import shutil

import pytest
import torch
from typer.testing import CliRunner

from tlmat.cli import app
from tlmat.models import registry
from tlmat.models.checkpoint import CheckpointError

pytest.importorskip("chgnet", reason="the CHGNet backbone needs pip install 'tlmat[foundation]'")

from tlmat.models import chgnet as chgnet_module


def test_changed_weights_are_refused_by_checksum(tmp_path, monkeypatch) -> None:
    """A weights file whose bytes differ from the published ones (here one tensor
    altered) is refused, naming the file and the published SHA-256; nothing is built."""
    original = chgnet_module.weights_path("0.3.0")
    altered = tmp_path / original.name
    shutil.copy(original, altered)
    stored = torch.load(altered, map_location="cpu", weights_only=True)
    stored["model"]["state_dict"]["atom_embedding.embedding.weight"][0, 0] += 1.0
    torch.save(stored, altered)
    monkeypatch.setattr(chgnet_module, "weights_path", lambda version: altered)
    with pytest.raises(CheckpointError, match=r"SHA-256 differs .* \(d14ab7c0"):
        registry.load_published("chgnet/0.3.0")


def test_unknown_version_and_source_name(tmp_path) -> None:
    with pytest.raises(ValueError, match=r"unknown CHGNet version '9\.9'; known: 0\.3\.0, r2scan"):
        chgnet_module.weights_path("9.9")
    with pytest.raises(ValueError, match=r"unknown published model 'chgnet/0\.3'"):
        registry.load_published("chgnet/0.3")
    result = CliRunner().invoke(
        app, ["predict", "chgnet/0.3", str(tmp_path), "-o", str(tmp_path / "p.csv")]
    )
    text = " ".join(result.output.split())
    assert result.exit_code == 1
    assert "neither a file nor a registered model" in text and "chgnet/0.3.0" in text


def test_element_beyond_the_embedding_is_skipped_by_name(data, tmp_path) -> None:
    """CHGNet embeds H … Pu (Z ≤ 94): a real perovskite with its A site replaced by
    americium is skipped as an unknown element, naming the row; the others predict."""
    from tlmat.io import read_records, write_extxyz

    records = read_records(data / "perov_5" / "val.csv.gz", [], limit=3).records
    records[1].structure.replace(0, "Am")
    write_extxyz(records, tmp_path / "three.extxyz")
    out = tmp_path / "pred.csv"
    result = CliRunner().invoke(
        app, ["predict", "chgnet/0.3.0", str(tmp_path / "three.extxyz"), "-o", str(out),
              "--cache-dir", str(tmp_path / "cache")],
    )  # fmt: skip
    text = " ".join(result.output.split())
    assert result.exit_code == 0, text
    assert "2 predictions" in text and "1 skipped" in text
    assert "three.extxyz:frame 1" in text and "Am not in the model's element vocabulary" in text
    assert len(out.read_text().splitlines()) == 3  # header + 2 rows


def test_damaged_sevennet_checkpoint_is_refused_naming_the_file(tmp_path, monkeypatch) -> None:
    """A SevenNet checkpoint whose bytes differ from the published ones (here cut in
    half) is refused by checksum, naming the file and the published SHA-256; one that
    passed the checksum but cannot be read is refused naming the file, never unpickled."""
    pytest.importorskip("sevenn", reason="the SevenNet backbone needs tlmat[foundation]")
    from tlmat.datasets import sha256sum
    from tlmat.models import sevennet as sevennet_module

    original = sevennet_module.weights_path("0")
    damaged = tmp_path / original.name
    damaged.write_bytes(original.read_bytes()[: original.stat().st_size // 2])
    monkeypatch.setattr(sevennet_module, "weights_path", lambda weights: damaged)
    with pytest.raises(
        CheckpointError, match=r"checkpoint_sevennet_0\.pth: SHA-256 differs .*7052cb42"
    ):
        registry.load_published("sevennet/0")
    relative, _ = sevennet_module.WEIGHTS["0"]
    monkeypatch.setitem(sevennet_module.WEIGHTS, "0", (relative, sha256sum(damaged)))
    with pytest.raises(CheckpointError, match=r"checkpoint_sevennet_0\.pth: refused to load"):
        registry.load_published("sevennet/0")
    with pytest.raises(ValueError, match=r"SevenNet 9 is not a source; sources: 0, l3i5, mf-0"):
        sevennet_module.load_published("9")


def test_sevennet_refuses_an_element_outside_its_vocabulary(data, tmp_path) -> None:
    """SevenNet embeds 89 elements (H … Bi, Ac … Pu): a real perovskite with its A site
    replaced by polonium is skipped by name on the command line, and a graph that still
    reaches the model directly is refused naming the element."""
    pytest.importorskip("sevenn", reason="the SevenNet backbone needs tlmat[foundation]")
    from tlmat.graphs.builder import graph_arrays, structure_arrays
    from tlmat.graphs.cache import collate
    from tlmat.io import read_records, write_extxyz

    records = read_records(data / "perov_5" / "val.csv.gz", [], limit=3).records
    records[1].structure.replace(0, "Po")
    model = registry.build(registry.model_config("sevennet-small"))
    assert 84 not in model.elements
    graph = graph_arrays(*structure_arrays(records[1].structure), model.graph_settings)
    with pytest.raises(ValueError, match=r"Po not in SevenNet's element vocabulary"):
        model(collate([graph]))
    write_extxyz(records, tmp_path / "three.extxyz")
    out = tmp_path / "pred.csv"
    result = CliRunner().invoke(
        app, ["predict", "sevennet/0", str(tmp_path / "three.extxyz"), "-o", str(out),
              "--cache-dir", str(tmp_path / "cache")],
    )  # fmt: skip
    text = " ".join(result.output.split())
    assert result.exit_code == 0, text
    assert "2 predictions" in text and "1 skipped" in text
    assert "three.extxyz:frame 1" in text and "Po not in the model's element vocabulary" in text
    assert len(out.read_text().splitlines()) == 3  # header + 2 rows
