"""Predictions in one call from pymatgen, ASE or files, with units in the headers; the
registered checkpoints know what they predict."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from ase.io import read as ase_read
from pymatgen.core import Structure
from typer.testing import CliRunner

import tlmat
from tlmat.cli import app
from tlmat.io import read_records


@pytest.fixture(scope="module")
def sample(data: Path) -> Path:
    return data / "cgcnn_sample_regression"


def test_load_model_predicts_pymatgen_ase_and_paths_alike(sample: Path) -> None:
    model = tlmat.load_model("cgcnn/formation-energy-per-atom")
    assert "formation_energy_per_atom (eV/atom)" in repr(model)
    cif = sample / "1000041.cif"
    from_path = model.predict(sample)
    assert list(from_path.columns) == ["id", "formation_energy_per_atom (eV/atom)"]
    assert len(from_path) == 10 and from_path.attrs["skipped"] == []
    one = from_path.set_index("id").loc["1000041"].iloc[0]
    by_pymatgen = model.predict(Structure.from_file(cif)).iloc[0, 1]
    by_ase = model.predict([ase_read(cif)]).iloc[0, 1]
    assert by_pymatgen == pytest.approx(one, abs=1e-5) and by_ase == pytest.approx(one, abs=1e-4)
    # the same numbers as the dataset path the CLI takes
    records = read_records(sample)
    batched = model.predict([r.structure for r in records], batch_size=3)
    np.testing.assert_allclose(batched.iloc[:, 1], from_path.iloc[:, 1], atol=1e-5)


def test_registered_checkpoints_carry_units_transform_and_labels(sample: Path) -> None:
    bulk = tlmat.load_model("cgcnn/bulk-moduli")
    assert bulk.target.unit == "log10 GPa" and bulk.target.log10_of == "GPa"
    log10 = bulk.predict(sample)
    gpa = bulk.predict(sample, inverse_transform=True)
    assert list(log10.columns) == ["id", "K_VRH (log10 GPa)"]
    np.testing.assert_allclose(gpa["K_VRH (GPa)"], 10 ** log10["K_VRH (log10 GPa)"])
    with pytest.raises(ValueError, match="not log10 of a quantity"):
        tlmat.load_model("cgcnn/band-gap").predict(sample, inverse_transform=True)
    classes = tlmat.load_model("cgcnn/semi-metal-classification").predict(sample)
    assert list(classes.columns) == ["id", "p(semiconductor)", "p(metal)"]
    np.testing.assert_allclose(classes.iloc[:, 1:].sum(axis=1), 1.0, atol=1e-6)


def test_cli_predict_writes_units_and_the_inverse_transform(sample: Path, tmp_path) -> None:
    runner = CliRunner()
    out = tmp_path / "bulk.csv"
    cache = ["--cache-dir", str(tmp_path / "cache")]
    result = runner.invoke(app, ["predict", "cgcnn/bulk-moduli", str(sample), "-o", str(out),
                                 "--inverse-transform", *cache])  # fmt: skip
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out)
    assert list(table.columns) == ["id", "K_VRH (GPa)"] and (table["K_VRH (GPa)"] > 1).all()
    gap = str(tmp_path / "gap.csv")
    refused = runner.invoke(
        app, ["predict", "cgcnn/band-gap", str(sample), "-o", gap, "--inverse-transform", *cache]
    )
    assert refused.exit_code == 1 and "not log10 of a quantity" in refused.output


def test_predictions_and_embeddings_in_chunks_equal_one_pass(perovskites) -> None:
    """What ``tlmat predict`` / ``tlmat embed`` write a chunk at a time is the one-pass
    result, in order, whatever the chunk and batch sizes."""
    from tlmat.models.prediction import iter_predictions, predict
    from tlmat.transfer.features import feature_table, iter_layer_features

    gap = tlmat.load_model("cgcnn/band-gap").trained
    whole = predict(gap, perovskites)
    parts = list(iter_predictions(gap, perovskites, batch_size=7, rows=50))
    assert [len(p) for p, _ in parts] == [56, 56, 8]  # whole batches of 7 per chunk
    np.testing.assert_array_equal(np.concatenate([p for p, _ in parts]), np.arange(120))
    np.testing.assert_allclose(np.concatenate([v for _, v in parts]), whole, atol=1e-6)
    features, names = feature_table(iter_layer_features(gap, perovskites, layers="all"))
    chunks = list(iter_layer_features(gap, perovskites, layers="all", batch_size=16, rows=40))
    assert all(c[2] == names for c in chunks) and len(chunks) == 3
    np.testing.assert_allclose(np.concatenate([c[1] for c in chunks]), features, atol=1e-5)
