"""CHGNet as a backbone: the published weights give chgnet's own energies and features on
real crystals, bonds pair with their reverse, and a fine-tuned model records the
foundation weights it started from. (The model contract itself runs in
test_models_contract.py on ``chgnet-small``.)"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from pymatgen.core import Structure

from tlmat.graphs.builder import graph_arrays, structure_arrays
from tlmat.graphs.cache import collate
from tlmat.io import read_records
from tlmat.models import load_checkpoint, registry, save_checkpoint
from tlmat.transfer import apply_strategy, trainable_groups
from tlmat.transfer.sources import load_source, prepare_transfer

pytest.importorskip("chgnet", reason="the CHGNet backbone needs pip install 'tlmat[foundation]'")

from tlmat.models.chgnet import reverse_edges


@pytest.fixture(scope="module")
def crystals(data: Path) -> list[Structure]:
    """Real Materials Project crystals (2–40 sites, many chemistries)."""
    records = read_records(data / "mp_elasticity_3k" / "mp_elasticity_3k.csv.gz", [], limit=12)
    return [r.structure for r in records]


def batch_of(model, structures):
    return collate([graph_arrays(*structure_arrays(s), model.graph_settings) for s in structures])


@pytest.mark.parametrize("version", ["0.3.0", "r2scan"])
def test_published_weights_give_chgnets_own_energies_and_features(version, crystals) -> None:
    """Energies per atom (eV/atom) and crystal features of chgnet's own model, loaded by
    chgnet's classes from the same weights, within float32 tolerance."""
    from tlmat.screening import load_chgnet

    trained = load_source(f"chgnet/{version}")
    assert trained.target.unit == "eV/cell" and trained.target.extensive
    assert trained.provenance["sha256"] and trained.provenance["name"] == f"chgnet/{version}"
    batch = batch_of(trained.model, crystals)
    n_atoms = batch.ptr.diff().double()
    ours = trained.predict_batch(batch).flatten().double() / n_atoms
    reference = load_chgnet(version)
    theirs = reference.predict_structure(crystals, task="e", return_crystal_feas=True)
    energies = torch.tensor([float(p["e"]) for p in theirs], dtype=torch.float64)
    torch.testing.assert_close(ours, energies, rtol=0, atol=5e-5)  # eV/atom
    with torch.no_grad():
        embedding = trained.model.embed(batch)
    # chgnet's crystal feature sums the atoms (its mlp_first readout); tlmat's averages
    summed = torch.stack([torch.as_tensor(p["crystal_fea"]) for p in theirs])
    torch.testing.assert_close(embedding * n_atoms[:, None].float(), summed, rtol=1e-4, atol=1e-4)


def test_reverse_edges_pair_every_bond_with_itself_seen_from_the_other_atom(crystals) -> None:
    model = registry.build(registry.model_config("chgnet-small"))
    batch = batch_of(model, crystals)
    neighbour, centre = batch.edge_index
    shift = batch.edge_shift.round().long()
    reverse = reverse_edges(centre, neighbour, batch.edge_shift, batch.num_nodes)
    assert torch.equal(centre[reverse], neighbour) and torch.equal(neighbour[reverse], centre)
    assert torch.equal(shift[reverse], -shift)
    assert torch.equal(reverse[reverse], torch.arange(len(reverse)))
    assert not torch.any(reverse == torch.arange(len(reverse)))  # no bond lacks its reverse
    # the row-wise comparison used when the integer keys would overflow agrees
    huge = reverse_edges(centre, neighbour, batch.edge_shift, 2**31)
    assert torch.equal(huge, reverse)


def test_a_bond_without_its_reverse_stands_alone() -> None:
    centre, neighbour = torch.tensor([0, 1, 0]), torch.tensor([1, 0, 1])
    shift = torch.tensor([[0.0, 0, 0], [0, 0, 0], [1, 0, 0]])  # 0 → 1 (+a) has no partner
    assert reverse_edges(centre, neighbour, shift, 2).tolist() == [1, 0, 2]


def test_fine_tuned_chgnet_records_its_foundation_weights(crystals, tmp_path: Path) -> None:
    source = load_source("chgnet/0.3.0")
    trained, strategy = prepare_transfer("freeze-first-k", source, "K_VRH", freeze_k=2)
    assert strategy.reinit_head and trained.model.head.out_dim == 1
    # the source is untouched, its energy head still there
    assert source.model.head.out.weight.shape == (1, 64)
    groups = apply_strategy(trained.model, strategy, lr=1e-3)
    assert set(trained.model.frozen_groups) == {"embedding", "interactions.0", "interactions.1"}
    assert trainable_groups(trained.model) == [
        "interactions.2",
        "interactions.3",
        "readout",
        "head",
    ]
    optimizer = torch.optim.Adam(groups)
    batch = batch_of(trained.model, crystals[:6])
    frozen = trained.model.backbone.embedding.atom_embedding.embedding.weight.clone()
    trained.model.train()
    optimizer.zero_grad()
    trained.model(batch).square().mean().backward()
    optimizer.step()
    assert torch.equal(frozen, trained.model.backbone.embedding.atom_embedding.embedding.weight)
    loaded = load_checkpoint(save_checkpoint(trained, tmp_path / "model.pt"))
    assert loaded.provenance["source"] == "chgnet/0.3.0"
    assert loaded.provenance["sha256"] == source.provenance["sha256"]
    torch.testing.assert_close(loaded.predict_batch(batch), trained.predict_batch(batch))


def test_layer_features_follow_the_blocks(crystals) -> None:
    source = load_source("chgnet/0.3.0")
    batch = batch_of(source.model, crystals[:4])
    with torch.no_grad():
        layers = source.model.layer_features(batch)
    assert list(layers) == [
        "embedding",
        *(f"interactions.{k}" for k in range(4)),
        "embedding_out",
    ]
    assert all(v.shape == (4, 64) for v in layers.values())
    assert np.isfinite(torch.cat(list(layers.values()), 1).numpy()).all()
