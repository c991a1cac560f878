"""One target specification: extensive targets and per-element references, fitted on
real structures, encoded and decoded in one place, and trained through `fit`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tlmat.data import load_dataset, random_split
from tlmat.models import TargetSpec
from tlmat.training import TrainConfig, fit, predict
from tlmat.transfer.sources import fresh_model


@pytest.fixture(scope="module")
def carbon(data: Path, tmp_path_factory):
    """Real carbon allotropes (6–24 atoms per cell) with their energy per atom."""
    return load_dataset(
        data / "carbon_24" / "val.csv.gz",
        fresh_model("cgcnn-small").model.graph_settings,
        ["energy_per_atom"],
        cache_dir=tmp_path_factory.mktemp("cache"),
        limit=80,
    )


def atoms_of(dataset, indices):
    return [dataset.graphs.arrays(i, copy=False).z for i in indices]


def test_extensive_target_is_normalised_per_atom_and_round_trips(carbon) -> None:
    counts = np.array([len(z) for z in atoms_of(carbon, range(len(carbon)))])
    assert len(set(counts)) > 3  # cells of different sizes: the test means something
    energy = carbon.targets["energy_per_atom"] * counts  # eV/cell
    spec = TargetSpec(name="energy", unit="eV/cell", extensive=True)
    fitted = spec.fit(energy, atoms_of(carbon, range(len(carbon))))
    per_atom = carbon.targets["energy_per_atom"]
    assert fitted.mean == pytest.approx(per_atom.mean()) and fitted.std == pytest.approx(
        per_atom.std()
    )
    batch = carbon.batch(range(len(carbon)))
    y = torch.as_tensor(energy, dtype=torch.float32)
    encoded = fitted.encode(y, batch)
    # the network's target is a sum of per-atom contributions of unit scale
    per_atom_encoded = encoded / torch.as_tensor(counts)
    assert float(per_atom_encoded.std(correction=0)) == pytest.approx(1.0, rel=1e-4)
    torch.testing.assert_close(fitted.decode(encoded, batch), y, rtol=1e-5, atol=1e-4)
    with pytest.raises(ValueError, match="only be encoded or decoded with the structures"):
        fitted.decode(encoded)


def test_element_references_are_subtracted_then_restored(carbon) -> None:
    batch = carbon.batch(range(10))
    counts = torch.bincount(batch.batch).double()
    y = torch.as_tensor(carbon.targets["energy_per_atom"][:10], dtype=torch.float64) * counts
    spec = TargetSpec(name="energy", extensive=True, atom_refs={6: -9.2}).fit(
        y.numpy(), atoms_of(carbon, range(10))
    )
    # carbon only: the reference removes −9.2 eV per atom
    assert spec.mean == pytest.approx(float((y / counts).mean()) + 9.2)
    torch.testing.assert_close(spec.decode(spec.encode(y, batch), batch), y)


def test_inconsistent_specifications_are_refused() -> None:
    with pytest.raises(ValueError, match="extensive target"):
        TargetSpec(name="E", extensive=True, log10=True)
    with pytest.raises(ValueError, match="extensive target"):
        TargetSpec(name="E", atom_refs={1: -13.6}, normalization="tanh")


def test_heteroscedastic_specification_and_its_head_width() -> None:
    """Loss gaussian_nll: the specification records it (so checkpoints decode the
    variance), its head has two outputs, and only a linear normalisation is allowed."""
    spec = TrainConfig(target="K", loss="gaussian_nll", log10=True).target_spec()
    assert spec.heteroscedastic and spec.out_dim == 2
    assert TrainConfig(target="K").target_spec().out_dim == 1
    fitted = spec.fit(np.array([10.0, 100.0, 1000.0]))  # log10: 1, 2, 3
    out = torch.tensor([[0.0, 0.0], [1.0, float(np.log(0.25))]])
    # the mean as for any log10 target; the variance is of log10 y: std² exp(v)
    torch.testing.assert_close(fitted.decode(out), torch.pow(10.0, 2.0 + fitted.std * out[:, 0]))
    torch.testing.assert_close(
        fitted.decode_variance(out), fitted.std**2 * torch.tensor([1.0, 0.25])
    )
    with pytest.raises(ValueError, match="must give 2 outputs"):
        fitted.decode(torch.zeros(3, 1))
    with pytest.raises(ValueError, match="not heteroscedastic"):
        TargetSpec(name="K").decode_variance(out)
    with pytest.raises(ValueError, match="not 'tanh'"):
        TargetSpec(name="K", normalization="tanh", heteroscedastic=True)


def test_training_an_extensive_target_predicts_in_its_unit(carbon, tmp_path: Path) -> None:
    """eV/cell in, eV/cell out: `fit` sums atoms for an extensive target."""
    counts = np.array([len(z) for z in atoms_of(carbon, range(len(carbon)))])
    carbon.targets["energy_cell"] = carbon.targets["energy_per_atom"] * counts
    split = random_split(len(carbon), (50, 15, 15), seed=0)
    config = TrainConfig(
        target="energy_cell", unit="eV/cell", extensive=True, epochs=3, progress_bar=False
    )
    result = fit(fresh_model("cgcnn-small"), carbon, split, config, tmp_path / "run")
    assert result.trained.target.extensive and result.trained.model.pooling == "sum"
    values = predict(result.trained, carbon, split.test)
    # a constant per-atom energy times the atom count is already close: the error must
    # be far below the spread of eV/cell values across cell sizes
    error = np.abs(values - carbon.targets["energy_cell"][split.test]).mean()
    assert error < 0.2 * carbon.targets["energy_cell"].std()


def test_training_a_heteroscedastic_extensive_target(carbon, tmp_path: Path) -> None:
    """eV/cell with loss gaussian_nll: the mean in eV/cell, the variance in (eV/cell)²."""
    from tlmat.models.prediction import predict_with_variance

    counts = np.array([len(z) for z in atoms_of(carbon, range(len(carbon)))])
    carbon.targets["energy_cell"] = carbon.targets["energy_per_atom"] * counts
    split = random_split(len(carbon), (50, 15, 15), seed=0)
    config = TrainConfig(target="energy_cell", unit="eV/cell", extensive=True, epochs=2,
                         loss="gaussian_nll", progress_bar=False)  # fmt: skip
    model = fresh_model("cgcnn-small", out_dim=config.target_spec().out_dim)
    result = fit(model, carbon, split, config, tmp_path / "run")
    assert result.trained.target.heteroscedastic and result.trained.model.head.out_dim == 2
    mean, variance = predict_with_variance(result.trained, carbon, split.test)
    np.testing.assert_array_equal(mean, predict(result.trained, carbon, split.test))
    assert mean.shape == variance.shape == (15,) and (variance > 0).all()
    assert np.isfinite(result.best_val_mae)
