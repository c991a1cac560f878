"""tlmat's CGCNN against the original network on real structures.

Reference: the original CGCNN forward pass (``cgcnn/model.py``: padded (N, M) neighbour
tensors, ``ConvLayer``/``CrystalGraphConvNet``) and the original neighbour selection
(``get_all_neighbors(8)``, sorted by distance, first 12, ``atom_init.json`` features,
Gaussian filter 0–8 Å step 0.2), re-implemented here in a few lines and run on the
checkpoint's own ``state_dict``, untouched by tlmat's key mapping.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tlmat.data import load_dataset
from tlmat.graphs import GraphSettings
from tlmat.io import read_records
from tlmat.models import CheckpointError, load_checkpoint, safe_load
from tlmat.models.atom_features import load_atom_init

CHECKPOINTS = [
    "formation-energy-per-atom",
    "final-energy-per-atom",
    "band-gap",
    "efermi",
    "bulk-moduli",
    "shear-moduli",
    "poisson-ratio",
]


def original_inputs(structures, atom_init: torch.Tensor):
    atom_fea, nbr_fea, nbr_idx, crystal_atom_idx, offset = [], [], [], [], 0
    centers = torch.arange(0.0, 8.2, 0.2)
    for s in structures:
        nbrs = [sorted(n, key=lambda x: x[1]) for n in s.get_all_neighbors(8.0, include_index=True)]
        assert all(len(n) >= 12 for n in nbrs)  # no padding in these: compare like with like
        idx = torch.tensor([[x[2] for x in n[:12]] for n in nbrs]) + offset
        dist = torch.tensor([[x[1] for x in n[:12]] for n in nbrs], dtype=torch.float32)
        atom_fea.append(atom_init[[site.specie.Z for site in s]])
        nbr_fea.append(torch.exp(-((dist[..., None] - centers) ** 2) / 0.2**2))
        nbr_idx.append(idx)
        crystal_atom_idx.append(torch.arange(len(s)) + offset)
        offset += len(s)
    return torch.cat(atom_fea), torch.cat(nbr_fea), torch.cat(nbr_idx), crystal_atom_idx


def batch_norm(x, sd, prefix):
    return F.batch_norm(
        x,
        sd[f"{prefix}.running_mean"],
        sd[f"{prefix}.running_var"],
        sd[f"{prefix}.weight"],
        sd[f"{prefix}.bias"],
        False,
        0.0,
        1e-5,
    )


def original_forward(sd, n_conv, atom_fea, nbr_fea, nbr_idx, crystal_atom_idx):
    x = F.linear(atom_fea, sd["embedding.weight"], sd["embedding.bias"])
    n, m = nbr_idx.shape
    for k in range(n_conv):
        p = f"convs.{k}"
        total = torch.cat([x.unsqueeze(1).expand(n, m, x.shape[1]), x[nbr_idx], nbr_fea], dim=2)
        gated = F.linear(total, sd[f"{p}.fc_full.weight"], sd[f"{p}.fc_full.bias"])
        gated = batch_norm(gated.view(-1, gated.shape[-1]), sd, f"{p}.bn1").view(n, m, -1)
        nbr_filter, nbr_core = gated.chunk(2, dim=2)
        summed = torch.sum(torch.sigmoid(nbr_filter) * F.softplus(nbr_core), dim=1)
        x = F.softplus(x + batch_norm(summed, sd, f"{p}.bn2"))
    crys = torch.stack([x[idx].mean(dim=0) for idx in crystal_atom_idx])
    crys = F.softplus(F.linear(F.softplus(crys), sd["conv_to_fc.weight"], sd["conv_to_fc.bias"]))
    return F.linear(crys, sd["fc_out.weight"], sd["fc_out.bias"])


@pytest.fixture(scope="module")
def structures(data: Path):
    # real Materials Project crystals, 2–40 sites, many chemistries
    result = read_records(
        data / "mp_elasticity_3k" / "mp_elasticity_3k.csv.gz", targets=[], limit=40
    )
    return result


@pytest.mark.parametrize("name", CHECKPOINTS)
def test_imported_checkpoint_reproduces_the_original_network(
    name: str, data: Path, structures, tmp_path: Path
) -> None:
    path = data / "cgcnn_pretrained" / "pre-trained" / f"{name}.pth.tar"
    raw = safe_load(path)
    trained = load_checkpoint(path)
    atom_init = load_atom_init()
    inputs = original_inputs([r.structure for r in structures], atom_init)
    with torch.no_grad():
        reference = original_forward(raw["state_dict"], raw["args"]["n_conv"], *inputs)
        reference = reference * raw["normalizer"]["std"] + raw["normalizer"]["mean"]
    dataset = load_dataset(
        data / "mp_elasticity_3k" / "mp_elasticity_3k.csv.gz",
        GraphSettings.preset("cgcnn"),
        [],
        cache_dir=tmp_path,
        limit=40,
    )
    ours = trained.predict_batch(dataset.batch(range(len(dataset))))
    assert dataset.ids == [r.id for r in structures]
    np.testing.assert_allclose(ours.numpy(), reference.numpy(), rtol=1e-4, atol=1e-5)


def test_classification_checkpoint_gives_probabilities(data: Path, tmp_path: Path) -> None:
    path = data / "cgcnn_pretrained" / "pre-trained" / "semi-metal-classification.pth.tar"
    trained = load_checkpoint(path)
    dataset = load_dataset(data / "cgcnn_sample_regression", cache_dir=tmp_path)
    probabilities = trained.predict_batch(dataset.batch(range(len(dataset))))
    assert probabilities.shape == (10, 2)
    torch.testing.assert_close(probabilities.sum(dim=1), torch.ones(10))


def test_mismatched_tensor_is_named(data: Path, tmp_path: Path) -> None:
    raw = safe_load(data / "cgcnn_pretrained" / "pre-trained" / "band-gap.pth.tar")
    raw["state_dict"]["convs.1.fc_full.weight"] = torch.zeros(128, 170)
    bad = tmp_path / "bad.pth.tar"
    torch.save(raw, bad)
    with pytest.raises(CheckpointError, match=r"'convs.1.fc_full.weight' has shape \(128, 170\)"):
        load_checkpoint(bad)


def test_unknown_and_unsafe_files_are_refused(tmp_path: Path) -> None:
    unknown = tmp_path / "weights.pt"
    torch.save({"weights": torch.zeros(3)}, unknown)
    with pytest.raises(CheckpointError, match="neither a tlmat checkpoint nor published weights"):
        load_checkpoint(unknown)

    class Payload:
        def __reduce__(self):
            return (print, ("this must never run",))

    evil = tmp_path / "evil.pt"
    torch.save({"state_dict": {}, "args": Payload()}, evil)
    with pytest.raises(CheckpointError, match="refused to load"):
        load_checkpoint(evil)
