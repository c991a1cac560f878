"""tlmat's SchNet against PyTorch Geometric's, on molecules, and at its published sizes.

Reference: ``torch_geometric.nn.models.SchNet`` (PyG 2.8) carrying tlmat's weights. What
is compared, and why the two are set up as they are:

- **Edges.** PyG builds its own radius graph from ``pos``, which knows no periodic images;
  its ``interaction_graph`` argument is a callable ``(pos, batch) → (edge_index,
  edge_weight)``, so it is handed tlmat's periodic edges and distances (Å) unchanged. Both
  read ``edge_index`` the same way: row 0 the neighbour j (message source), row 1 the
  centre i (summed into), and PyG's ``CFConv`` adds messages x_j ⊙ W(d_ij) as ours does.
- **Radial basis.** PyG's ``GaussianSmearing`` ties its centres to its cutoff (0 … r_c)
  and its width to their spacing Δ (exp(−(d − μ)² / 2Δ²)); the paper's basis for crystals
  (Krawczuk & Venturi) is 300 centres 0 … 30 Å with γ = 10 Å⁻² and a 6 Å cutoff, which
  PyG cannot express through its arguments. The basis has no parameters, so for the
  default configuration PyG's centre buffer and coefficient are set to ours; a second
  configuration uses a basis PyG builds by itself (centres 0 … r_c, γ = 1/2Δ²), and there
  PyG's untouched basis is checked to equal ours first.
- **Cutoff.** Both fade the filters with ½(cos(π d / r_c) + 1) at the same r_c. PyG has no
  mask beyond r_c; every edge here is within r_c, where the two are the same function.
- **Readout.** PyG's lin1 → ssp → lin2 is tlmat's atom-wise head; its ``readout='mean'``
  is tlmat's mean pooling (intensive targets) and ``'add'`` is sum pooling (extensive).
  ``mean``/``std``/``atomref`` stay ``None`` (PyG then applies no scaling and no
  reference energies): tlmat keeps normalisation in :class:`TargetSpec`, outside the
  network, so the raw network outputs are what is compared.
- **Embedding.** PyG's table has rows for Z = 0 … 99 (``padding_idx`` 0, which changes
  nothing for real atoms); tlmat's covers Z = 0 … 100. Rows 0 … 99 are copied.

Weight mapping (tlmat → PyG), exactly the keys of PyG's ``state_dict`` (loaded strictly):

    backbone.embedding.weight[:100]                      → embedding.weight
    backbone.rbf.centers                                 → distance_expansion.offset
    backbone.interactions.k.cfconv.filter_network.lin1   → interactions.k.mlp.0 (= conv.nn.0)
    backbone.interactions.k.cfconv.filter_network.lin2   → interactions.k.mlp.2 (= conv.nn.2)
    backbone.interactions.k.cfconv.in2f (no bias)        → interactions.k.conv.lin1
    backbone.interactions.k.cfconv.f2out                 → interactions.k.conv.lin2
    backbone.interactions.k.dense                        → interactions.k.lin
    head.hidden.0                                        → lin1
    head.out                                             → lin2
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from pymatgen.core import Molecule, Structure
from pymatgen.core.operations import SymmOp
from torch_geometric.data import Batch
from torch_geometric.nn.models import SchNet as PygSchNet

from tlmat.graphs.builder import build_graph, graph_arrays, structure_arrays
from tlmat.graphs.cache import collate
from tlmat.io import read_records
from tlmat.models import CrystalModel, registry
from tlmat.models.schnet import SchNetConfig, build_schnet


@pytest.fixture(scope="module")
def crystals(data: Path) -> list[Structure]:
    """20 real Materials Project crystals."""
    records = read_records(data / "mp_elasticity_3k" / "mp_elasticity_3k.csv.gz", [], limit=20)
    structures = [r.structure for r in records]
    assert len(structures) == 20
    return structures


def batch_of(model: CrystalModel, structures: list[Structure | Molecule]) -> Batch:
    settings = model.graph_settings
    return collate([graph_arrays(*structure_arrays(s), settings) for s in structures])


def pyg_twin(model: CrystalModel, readout: str, fixed_graph: Batch | None = None) -> PygSchNet:
    """PyG's SchNet with ``model``'s weights and basis; edges from ``fixed_graph`` (the
    periodic graph tlmat built) or else every pair within the cutoff, from ``pos``."""
    config: SchNetConfig = model.config

    def interaction_graph(pos: torch.Tensor, batch: torch.Tensor):
        if fixed_graph is not None:
            return fixed_graph.edge_index, fixed_graph.edge_dist
        # brute-force radius graph (PyG's radius_graph needs pyg-lib): molecules only
        same = batch[:, None] == batch[None, :]
        d = torch.cdist(pos, pos)
        j, i = torch.nonzero(same & (d < config.cutoff) & ~torch.eye(len(pos), dtype=bool)).T
        return torch.stack([j, i]), d[j, i]

    ref = PygSchNet(
        hidden_channels=config.n_atom_basis,
        num_filters=config.n_filters,
        num_interactions=config.n_interactions,
        num_gaussians=config.n_rbf,
        cutoff=config.cutoff,
        interaction_graph=interaction_graph,
        readout=readout,
    )
    ours = model.state_dict()
    state = {
        "embedding.weight": ours["backbone.embedding.weight"][:100],
        "distance_expansion.offset": ours["backbone.rbf.centers"],
        "lin1.weight": ours["head.hidden.0.weight"],
        "lin1.bias": ours["head.hidden.0.bias"],
        "lin2.weight": ours["head.out.weight"],
        "lin2.bias": ours["head.out.bias"],
    }
    for k in range(config.n_interactions):
        p, q = f"backbone.interactions.{k}", f"interactions.{k}"
        for mlp in ("mlp", "conv.nn"):  # one module, registered under both names
            for ours_name, theirs in (("lin1", "0"), ("lin2", "2")):
                for kind in ("weight", "bias"):
                    state[f"{q}.{mlp}.{theirs}.{kind}"] = ours[
                        f"{p}.cfconv.filter_network.{ours_name}.{kind}"
                    ]
        state[f"{q}.conv.lin1.weight"] = ours[f"{p}.cfconv.in2f.weight"]
        for ours_name, theirs in (("cfconv.f2out", "conv.lin2"), ("dense", "lin")):
            for kind in ("weight", "bias"):
                state[f"{q}.{theirs}.{kind}"] = ours[f"{p}.{ours_name}.{kind}"]
    ref.load_state_dict(state, strict=True)  # strict: every PyG parameter is mapped
    ref.distance_expansion.coeff = -config.rbf_gamma
    return ref.eval()


def outputs(model: CrystalModel, ref: PygSchNet, batch: Batch, pooling: str):
    model.eval()
    model.pooling = pooling
    with torch.no_grad():
        return model(batch), ref(batch.z, batch.pos, batch.batch)


def pyg_basis_config() -> SchNetConfig:
    """A basis PyG builds by itself: 50 centres 0 … r_c Å, width = their spacing."""
    spacing = 6.0 / 49
    return SchNetConfig(
        n_atom_basis=64,
        n_filters=48,
        n_interactions=3,
        n_rbf=50,
        rbf_stop=6.0,
        rbf_gamma=0.5 / spacing**2,
    )


@pytest.mark.parametrize("which", ["default", "pyg-basis"])
def test_same_outputs_as_pyg_schnet_on_real_crystals(crystals, which: str) -> None:
    torch.manual_seed(0)
    config = SchNetConfig() if which == "default" else pyg_basis_config()
    model = build_schnet(config)
    batch = batch_of(model, crystals)
    # periodic images really are in the edges (so the comparison covers them)
    assert (batch.edge_shift != 0).any(dim=1).any()
    assert batch.edge_dist.max() <= config.cutoff
    if which == "pyg-basis":
        untouched = PygSchNet(num_gaussians=config.n_rbf, cutoff=config.cutoff).distance_expansion
        torch.testing.assert_close(
            untouched(batch.edge_dist), model.backbone.rbf(batch.edge_dist), rtol=1e-5, atol=1e-6
        )
    for pooling, readout in (("mean", "mean"), ("sum", "add")):
        ref = pyg_twin(model, readout, fixed_graph=batch)
        ours, theirs = outputs(model, ref, batch, pooling)
        assert ours.shape == theirs.shape == (20, 1)
        scale = theirs.abs().max()
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5 * scale)


@pytest.fixture(scope="module")
def molecule(crystals) -> Molecule:
    """A real cluster: the first atom of a crystal and its neighbours within 3 Å (images
    included), as a molecule with no cell."""
    s = max(crystals, key=lambda c: len(c.composition.elements))
    neighbours = s.get_neighbors(s[0], 3.0)
    assert len(neighbours) >= 3
    species = [s[0].specie] + [n.specie for n in neighbours]
    coords = np.array([s[0].coords] + [n.coords for n in neighbours])
    return Molecule(species, coords)


def test_molecule_runs_is_invariant_and_matches_pyg(molecule: Molecule) -> None:
    torch.manual_seed(0)
    model = build_schnet(SchNetConfig()).eval()
    settings = model.graph_settings
    graph = build_graph(molecule, settings)
    n = len(molecule)
    # no cell, no images: every ordered pair of the cluster (diameter < 6 Å) is an edge
    assert not graph.pbc.any() and not graph.edge_shift.any()
    assert graph.edge_index.shape == (2, n * (n - 1))

    rotation = SymmOp.from_axis_angle_and_translation([1, 2, 3], 37.0, translation_vec=[3, -2, 5])
    moved = Molecule(molecule.species, rotation.operate_multi(molecule.cart_coords))
    batch = Batch.from_data_list([graph, build_graph(moved, settings)])
    with torch.no_grad():
        out = model(batch)
    assert out.shape == (2, 1) and torch.isfinite(out).all()
    torch.testing.assert_close(out[1], out[0], rtol=1e-4, atol=1e-4)

    # PyG, building the molecule's edges itself from the positions, agrees
    ref = pyg_twin(model, "mean")
    ours, theirs = outputs(model, ref, batch, "mean")
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5 * theirs.abs().max())


@pytest.mark.parametrize(
    ("preset", "interactions", "width"), [("schnet-arch1", 6, 128), ("schnet-arch2", 4, 30)]
)
def test_presets_have_the_published_sizes(preset: str, interactions: int, width: int) -> None:
    config = registry.model_config(preset)
    model = registry.build(config)
    groups = model.groups()
    blocks = [name for name in groups if name.startswith("interactions.")]
    assert len(blocks) == interactions
    assert model.backbone.embedding.embedding_dim == width == model.backbone.embedding_dim
    for name in blocks:
        block = groups[name]
        assert block.cfconv.in2f.out_features == width  # filters
        assert block.cfconv.filter_network.lin1.in_features == 300  # Gaussians
        assert block.dense.out_features == width
    assert model.head.hidden_sizes == [width // 2]
    assert model.backbone.atomwise and model.backbone.elements == list(range(1, 101))
    # the basis and the graph of the paper: 0–30 Å, γ = 10 Å⁻², all pairs within 6 Å
    centers = model.backbone.rbf.centers
    assert (float(centers[0]), float(centers[-1]), model.backbone.rbf.gamma) == (0.0, 30.0, 10.0)
    assert (config.cutoff, config.max_neighbors) == (6.0, None)
    # parameter count, from the layer sizes alone
    f = n = width
    block = f * n + (300 * n + n) + (n * n + n) + (n * f + f) + (f * f + f)
    head = (f * (f // 2) + f // 2) + (f // 2 + 1)
    assert registry.parameter_count(config) == 101 * f + interactions * block + head
