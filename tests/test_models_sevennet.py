"""SevenNet as a backbone: the published weights (SevenNet-0, SevenNet-MF-0 at either
fidelity) give sevenn's own energies on real crystals, the groups follow sevenn's forward
order, and a fine-tuned model records the foundation weights it started from. (The model
contract itself runs in test_models_contract.py on ``sevennet-small``.)"""

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
from tlmat.models.base import check_groups
from tlmat.transfer import apply_strategy, trainable_groups
from tlmat.transfer.sources import load_source, prepare_transfer

pytest.importorskip("sevenn", reason="the SevenNet backbone needs pip install 'tlmat[foundation]'")

from tlmat.models.sevennet import PUBLISHED, WEIGHTS, SevenNetConfig

BLOCKS = [f"interactions.{k}" for k in range(5)]


@pytest.fixture(scope="module")
def crystals(data: Path) -> list[Structure]:
    """Real Materials Project crystals (2–40 sites, many chemistries)."""
    records = read_records(data / "mp_elasticity_3k" / "mp_elasticity_3k.csv.gz", [], limit=10)
    return [r.structure for r in records]


@pytest.fixture(scope="module")
def sources():
    """Published models, each loaded once for the module."""
    loaded: dict = {}

    def get(name: str):
        if name not in loaded:
            loaded[name] = load_source(name)
        return loaded[name]

    return get


def batch_of(model, structures):
    return collate([graph_arrays(*structure_arrays(s), model.graph_settings) for s in structures])


@pytest.mark.parametrize(
    ("version", "calculator", "modal"),
    [
        ("0", "7net-0", None),
        ("l3i5", "7net-l3i5", None),
        ("mf-0", "7net-mf-0", "PBE"),
        ("mf-0-r2scan", "7net-mf-0", "R2SCAN"),
    ],
)
def test_published_weights_give_sevenns_own_energies(
    version, calculator, modal, crystals, sources
) -> None:
    """Energies per atom (eV/atom) of sevenn's own calculator, which loads the same
    checkpoint with sevenn's classes and builds its own neighbour list, within float32
    tolerance."""
    from pymatgen.io.ase import AseAtomsAdaptor
    from sevenn.calculator import SevenNetCalculator

    trained = sources(f"sevennet/{version}")
    assert trained.target.unit == "eV/cell" and trained.target.extensive
    assert trained.provenance["name"] == f"sevennet/{version}"
    assert trained.provenance["sha256"] == WEIGHTS[PUBLISHED[version][0]][1]
    assert trained.provenance["modal"] == modal == trained.model.config.modal
    crystals = crystals[:3] if version == "l3i5" else crystals  # l_max 3: slow on a CPU
    batch = batch_of(trained.model, crystals)
    n_atoms = batch.ptr.diff().double()
    ours = trained.predict_batch(batch).flatten().double() / n_atoms
    reference = SevenNetCalculator(calculator, device="cpu", **({"modal": modal} if modal else {}))
    theirs = []
    for structure in crystals:
        atoms = AseAtomsAdaptor.get_atoms(structure)
        atoms.calc = reference
        theirs.append(atoms.get_potential_energy() / len(atoms))
    torch.testing.assert_close(ours, torch.tensor(theirs, dtype=torch.float64), rtol=0, atol=5e-5)


def test_fidelity_is_a_checked_config_field() -> None:
    """SevenNet-MF-0 knows PBE and R2SCAN; another name, or a fidelity for a model
    without any, is refused naming what exists."""
    modals = {"modals": ["R2SCAN", "PBE"], "use_modal_self_inter_intro": True}
    assert SevenNetConfig(**modals, modal="R2SCAN").modal == "R2SCAN"
    with pytest.raises(ValueError, match=r"modal 'HSE'.* fidelities R2SCAN, PBE"):
        SevenNetConfig(**modals, modal="HSE")
    with pytest.raises(ValueError, match="has no fidelities"):
        SevenNetConfig(modal="PBE")
    assert set(registry.sources()) >= {"sevennet/0", "sevennet/mf-0", "sevennet/mf-0-r2scan"}


def test_groups_follow_sevenns_forward_order_and_cover_every_parameter(sources) -> None:
    model = sources("sevennet/0").model
    assert check_groups(model) == ["embedding", *BLOCKS, "readout", "head"]
    groups = model.groups()
    assert list(groups["embedding"]) == [
        "edge_embedding",
        "onehot_idx_to_onehot",
        "onehot_to_feature_x",
    ]
    assert list(groups["interactions.0"]) == [
        "self_connection_intro",
        "self_interaction_1",
        "convolution",
        "self_interaction_2",
        "self_connection_outro",
        "equivariant_gate",
    ]
    assert list(groups["readout"]) == ["reduce_input_to_hidden"]
    assert model.head.out.weight.shape == (1, 64)
    # sevenn's fixed convolution denominators are constants, not parameters
    parameters = dict(model.named_parameters())
    assert not any(name.endswith("denominator") for name in parameters)
    assert float(model.backbone.interactions[0]["convolution"].denominator) == pytest.approx(
        35.98957, abs=1e-4
    )
    # MF-0's fidelity one-hot enters before the first block
    mf = sources("sevennet/mf-0").model
    assert list(mf.groups()["embedding"])[2] == "one_hot_modality"
    assert check_groups(mf) == ["embedding", *BLOCKS, "readout", "head"]


def test_fine_tuned_sevennet_records_its_foundation_weights(crystals, sources, tmp_path) -> None:
    source = sources("sevennet/0")
    trained, strategy = prepare_transfer("freeze-first-k", source, "K_VRH", freeze_k=2)
    assert strategy.reinit_head and trained.model.head.out_dim == 1
    assert source.model.head.out.bias.item() == 0.0  # the source's energy head untouched
    groups = apply_strategy(trained.model, strategy, lr=1e-3)
    assert set(trained.model.frozen_groups) == {"embedding", "interactions.0", "interactions.1"}
    assert trainable_groups(trained.model) == [*BLOCKS[2:], "readout", "head"]
    before = {n: [p.clone() for p in m.parameters()] for n, m in trained.model.groups().items()}
    optimizer = torch.optim.Adam(groups)
    batch = batch_of(trained.model, crystals[:4])
    trained.model.train()
    optimizer.zero_grad()
    trained.model(batch).square().mean().backward()
    optimizer.step()
    for name, module in trained.model.groups().items():
        changed = any(
            not torch.equal(a, b) for a, b in zip(before[name], module.parameters(), strict=True)
        )
        assert changed == (name not in trained.model.frozen_groups), name
    loaded = load_checkpoint(save_checkpoint(trained, tmp_path / "model.pt"))
    assert loaded.provenance["source"] == "sevennet/0"
    assert loaded.provenance["sha256"] == source.provenance["sha256"]
    torch.testing.assert_close(loaded.predict_batch(batch), trained.predict_batch(batch))


def test_a_saved_fidelity_stays_the_same(crystals, sources, tmp_path) -> None:
    """SevenNet-MF-0 at r2SCAN, saved and loaded, predicts the same r2SCAN energies."""
    source = sources("sevennet/mf-0-r2scan")
    loaded = load_checkpoint(save_checkpoint(source, tmp_path / "r2scan.pt"))
    assert loaded.model.config.modal == "R2SCAN" and loaded.target == source.target
    assert loaded.provenance["modal"] == "R2SCAN"
    batch = batch_of(source.model, crystals[:4])
    torch.testing.assert_close(loaded.predict_batch(batch), source.predict_batch(batch))
    pbe = sources("sevennet/mf-0").predict_batch(batch)
    assert not torch.allclose(pbe, loaded.predict_batch(batch))  # a different fidelity


def test_layer_features_follow_the_blocks(crystals, sources) -> None:
    source = sources("sevennet/0")
    batch = batch_of(source.model, crystals[:4])
    with torch.no_grad():
        layers = source.model.layer_features(batch)
    assert list(layers) == ["embedding", *BLOCKS, "embedding_out"]
    # the 128 scalar channels of every block (its l = 1, 2 channels are not invariant)
    assert {name: tuple(v.shape) for name, v in layers.items()} == {
        **{name: (4, 128) for name in ["embedding", *BLOCKS]},
        "embedding_out": (4, 64),
    }
    assert np.isfinite(torch.cat(list(layers.values()), 1).numpy()).all()
