"""The model contract, checked for every registered architecture on real crystals.

Every architecture in :mod:`tlmat.models.registry` must pass these without a line of its
own here: named groups in forward order, output and embedding shapes, layer-wise
features, a checkpoint round trip, every transfer strategy training exactly its groups
(frozen batch-norm statistics untouched), fresh re-initialisation, a head rebuilt for a
new target (and with two outputs for a heteroscedastic one, whose mean and variance round
trip through a checkpoint and scale with the cell), symmetry invariance of intensive
predictions, sum pooling for extensive targets, and fitting 50 real structures. Each
architecture registers a ``<name>-small`` preset that these tests (and CI) use.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from pymatgen.core import Structure
from pymatgen.core.operations import SymmOp

from tlmat.data import load_dataset
from tlmat.graphs.builder import graph_arrays, structure_arrays
from tlmat.graphs.cache import collate
from tlmat.io import read_records
from tlmat.models import TargetSpec, TrainedModel, load_checkpoint, registry, save_checkpoint
from tlmat.models.base import check_groups
from tlmat.models.pooling import MOMENTS
from tlmat.transfer import apply_strategy, keep_frozen_in_eval, preset, trainable_groups
from tlmat.transfer.lora import merge_adapters
from tlmat.transfer.sources import fresh_model, prepare_transfer

ARCHITECTURES = registry.names()
STRATEGIES = [
    "full", "freeze-embedding", "head-only", "freeze-first-k", "discriminative", "l2-sp", "lora",
    "replay",
]  # fmt: skip


def small(name: str):
    return registry.model_config(f"{name}-small")


@pytest.fixture(scope="module")
def mp_structures(data: Path) -> list[Structure]:
    """Real Materials Project crystals (2–40 sites, many chemistries)."""
    records = read_records(data / "mp_elasticity_3k" / "mp_elasticity_3k.csv.gz", [], limit=24)
    return [r.structure for r in records]


class Graphs:
    """Graphs of in-memory structures, built as ``model`` needs them."""

    def __init__(self, model, structures: list[Structure]):
        settings = model.graph_settings
        self.arrays = [graph_arrays(*structure_arrays(s), settings) for s in structures]
        if model.elements is not None:
            assert all(set(a.z.tolist()) <= set(model.elements) for a in self.arrays)

    def __len__(self) -> int:
        return len(self.arrays)

    def batch(self, indices):
        return collate([self.arrays[i] for i in indices])


def dataset_of(model, structures, tmp_path: Path) -> Graphs:
    return Graphs(model, structures)


@pytest.fixture(scope="module", params=ARCHITECTURES)
def built(request, mp_structures, tmp_path_factory):
    """(name, model with random weights, dataset of real crystals built for it)."""
    torch.manual_seed(0)
    try:
        model = fresh_model(small(request.param), seed=0).model
    except ImportError as error:  # a foundation model's package (tlmat[foundation])
        pytest.skip(f"{request.param}: {error}")
    dataset = dataset_of(model, mp_structures, tmp_path_factory.mktemp(request.param))
    assert len(dataset) == len(mp_structures)
    return request.param, model, dataset


def test_registry_entry_is_consistent(built) -> None:
    name, model, _ = built
    architecture = registry.get(name)
    assert architecture.config.architecture == name == model.architecture
    assert f"{name}-small" in architecture.presets
    # the default size builds too, and knows its graph
    default = registry.model_config(name)
    assert default.graph_settings().cutoff > 0
    assert registry.parameter_count(default) > registry.parameter_count(small(name))


def test_groups_are_named_in_forward_order(built) -> None:
    _, model, _ = built
    names = check_groups(model)
    interactions = [n for n in names if n.startswith("interactions.")]
    assert names[0] == "embedding"
    assert interactions == [f"interactions.{k}" for k in range(len(interactions))]
    assert names.index(interactions[-1]) == len(interactions)  # right after the embedding


def test_shapes_of_output_embedding_and_layer_features(built) -> None:
    _, model, dataset = built
    batch = dataset.batch(range(len(dataset)))
    model.eval()
    with torch.no_grad():
        out = model(batch)
        embedding = model.embed(batch)
        layers = model.layer_features(batch)
    n = len(dataset)
    assert out.shape == (n, 1) and torch.isfinite(out).all()
    assert embedding.shape == (n, model.backbone.embedding_dim)
    assert next(iter(layers)).startswith("embedding") and list(layers)[-1] == "embedding_out"
    for name, features in layers.items():
        assert features.shape[0] == n and features.dim() == 2, name
        assert torch.isfinite(features).all(), name


def test_layers_pooled_by_moments_extend_the_mean(built) -> None:
    """Pooled by mean, std, min and max, every layer keeps its mean features and gains
    three more blocks of its width, ordered min ≤ mean ≤ max with std ≥ 0."""
    _, model, dataset = built
    batch = dataset.batch(range(len(dataset)))
    model.eval()
    with torch.no_grad():
        means = model.layer_features(batch)
        pooled = model.layer_features(batch, MOMENTS)
    spread = {name.split("@")[0] for name in pooled if "@" in name}
    # every interaction's atom (bond, angle) features are pooled 4 ways; what is one
    # vector per crystal already (the crystal embedding, CGAT's composition) is not
    assert {n for n in means if n.startswith("interactions.")} <= spread
    assert "embedding_out" not in spread
    for name, mean in means.items():
        assert torch.equal(pooled[name], mean), name
        if name not in spread:
            continue
        low, high, std = (pooled[f"{name}@{s}"] for s in ("min", "max", "std"))
        assert low.shape == high.shape == std.shape == mean.shape, name
        assert (low <= mean + 1e-5).all() and (mean <= high + 1e-5).all(), name
        assert (std >= 0).all() and torch.isfinite(std).all(), name


def test_forward_split_at_each_split_point_is_exact(built) -> None:
    """Resumed from the backbone's state after any of its split points, the model
    predicts exactly what its forward pass does (the same batch: bit for bit); each
    state's rows are grouped by crystal, so they can be kept per structure."""
    _, model, dataset = built
    batch = dataset.batch(range(len(dataset)))
    model.eval()
    with torch.no_grad():
        whole = model(batch)
        for group in model.backbone.split_points():
            assert group in model.groups(), group
            state = model.backbone.state_after(batch, group)
            for name, (values, owner) in state.items():
                assert len(values) == len(owner) and bool((owner.diff() >= 0).all()), name
            resumed = model(batch, (group, {name: v for name, (v, _) in state.items()}))
            assert torch.equal(resumed, whole), group


def test_checkpoint_round_trip_gives_identical_predictions(built, tmp_path: Path) -> None:
    _, model, dataset = built
    target = TargetSpec(name="K_VRH", unit="GPa", mean=100.0, std=50.0)
    trained = TrainedModel(copy.deepcopy(model), target, {"test": True})
    path = save_checkpoint(trained, tmp_path / "model.pt")
    loaded = load_checkpoint(path)
    batch = dataset.batch(range(len(dataset)))
    assert loaded.model.config == model.config
    assert loaded.model.graph_settings == model.graph_settings
    torch.testing.assert_close(loaded.predict_batch(batch), trained.predict_batch(batch))


def test_fidelities_join_the_head_and_round_trip(built, tmp_path: Path) -> None:
    _, model, dataset = built
    trained = TrainedModel(copy.deepcopy(model), TargetSpec(name="band_gap", unit="eV"))
    batch = dataset.batch(range(len(dataset)))
    before = trained.predict_batch(batch)
    trained.model.add_fidelities(["pbe", "hse"], dim=4)
    assert check_groups(trained.model)[-1] == "head"  # the embedding is the head's
    # the pretrained head predicts as before, at either fidelity, until trained
    for level in (0, 1):
        batch.fidelity = torch.full((len(dataset),), level)
        torch.testing.assert_close(trained.predict_batch(batch), before)
    with torch.no_grad():
        trained.model.head.fidelity.weight.normal_()
        for parameter in trained.model.head.parameters():
            parameter.add_(0.1)
    at = {}
    for level in (0, 1):
        batch.fidelity = torch.full((len(dataset),), level)
        at[level] = trained.predict_batch(batch)
    assert not torch.allclose(at[0], at[1])
    del batch.fidelity  # no fidelity given: the last one, the target
    torch.testing.assert_close(trained.predict_batch(batch), at[1])
    loaded = load_checkpoint(save_checkpoint(trained, tmp_path / "model.pt"))
    assert loaded.model.head.fidelities == ["pbe", "hse"]
    torch.testing.assert_close(loaded.predict_batch(batch), at[1])


def test_new_target_gets_a_fresh_head_of_its_width(built) -> None:
    _, model, dataset = built
    source = TrainedModel(copy.deepcopy(model), TargetSpec(name="formation_energy"))
    source.model.replace_head(2)
    transferred, strategy = prepare_transfer("full", source, "band_gap")
    assert strategy.reinit_head and transferred.model.head.out_dim == 1
    batch = dataset.batch(range(4))
    assert transferred.model(batch).shape == (4, 1)
    # the source is untouched
    assert source.model.head.out_dim == 2


@pytest.mark.parametrize("strategy_name", STRATEGIES)
def test_heteroscedastic_head_has_width_two_and_strategies_keep_their_groups(
    built, strategy_name: str
) -> None:
    """Loss gaussian_nll: prepare_transfer rebuilds the head with two outputs (mean and
    log-variance) and every strategy freezes and trains the same groups as for one."""
    _, model, dataset = built
    source = TrainedModel(copy.deepcopy(model), TargetSpec(name="formation_energy"))
    plain, plain_strategy = prepare_transfer(strategy_name, source, "band_gap")
    wide, strategy = prepare_transfer(strategy_name, source, "band_gap", out_dim=2)
    assert strategy == plain_strategy and strategy.reinit_head
    assert wide.model.head.out_dim == 2 and source.model.head.out_dim == 1
    apply_strategy(plain.model, plain_strategy, lr=1e-3)
    apply_strategy(wide.model, strategy, lr=1e-3)
    assert list(wide.model.groups()) == list(plain.model.groups())
    assert wide.model.frozen_groups == plain.model.frozen_groups
    assert trainable_groups(wide.model) == trainable_groups(plain.model)
    assert wide.model(dataset.batch(range(4))).shape == (4, 2)
    # the same target again with a heteroscedastic source: its head is kept
    again, kept = prepare_transfer(
        strategy_name, TrainedModel(wide.model, TargetSpec(name="band_gap")), "band_gap", out_dim=2
    )
    assert not kept.reinit_head and again.model.head.out_dim == 2


def test_heteroscedastic_model_round_trips_with_mean_and_variance(built, tmp_path: Path) -> None:
    """Saved and loaded, a heteroscedastic model gives the mean in the target's unit (eV)
    and the variance in its square: s²·exp(v), v clamped."""
    _, model, dataset = built
    wide = copy.deepcopy(model)
    torch.manual_seed(3)
    wide.replace_head(2)
    target = TargetSpec(name="band_gap", unit="eV", mean=1.0, std=0.5, heteroscedastic=True)
    trained = TrainedModel(wide, target, {"test": True})
    loaded = load_checkpoint(save_checkpoint(trained, tmp_path / "model.pt"))
    assert loaded.target == target and loaded.model.head.out_dim == 2
    batch = dataset.batch(range(len(dataset)))
    mean = loaded.predict_batch(batch)
    with torch.no_grad():
        out, original = loaded.model(batch), trained.model.eval()(batch)
    torch.testing.assert_close(out, original)
    assert out.shape == (len(dataset), 2) and mean.shape == (len(dataset),)
    torch.testing.assert_close(mean, 1.0 + 0.5 * out[:, 0])  # eV
    variance = loaded.target.decode_variance(out, batch)
    torch.testing.assert_close(variance, 0.25 * out[:, 1].clamp(-10.0, 10.0).exp())  # eV²
    big = torch.tensor([[0.0, 50.0], [0.0, -50.0]])  # clamped: finite, never 0
    torch.testing.assert_close(target.decode_variance(big), 0.25 * torch.tensor([1e1, -1e1]).exp())


def test_heteroscedastic_extensive_target_doubles_mean_and_quadruples_variance(
    built, mp_structures, tmp_path: Path
) -> None:
    """The log-variance is per atom, like the mean: a 2×1×1 supercell has twice the
    mean and four times the variance (n²·s²·exp(v)), whichever readout sums the atoms."""
    _, model, _ = built
    s = mp_structures[0]
    dataset = dataset_of(model, [s, s * (2, 1, 1)], tmp_path)
    wide = copy.deepcopy(model)
    torch.manual_seed(3)
    wide.replace_head(2)
    target = TargetSpec(
        name="energy", unit="eV/cell", extensive=True, mean=-5.0, std=2.0, heteroscedastic=True
    )
    trained = TrainedModel(wide, target)
    batch = dataset.batch([0, 1])
    values = trained.predict_batch(batch)
    torch.testing.assert_close(values[1], 2 * values[0], rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        variance = target.decode_variance(trained.model(batch), batch)
        wide.pooling = "mean"  # the head's per-atom value, averaged over the atoms
        per_atom = wide(batch)[:, 1].clamp(-10.0, 10.0)
    torch.testing.assert_close(variance[1], 4 * variance[0], rtol=1e-4, atol=0.0)
    n = batch.ptr.diff().to(variance.dtype)
    torch.testing.assert_close(variance, n**2 * 4.0 * per_atom.exp(), rtol=1e-4, atol=0.0)


def _bn_stats(module: torch.nn.Module) -> list[torch.Tensor]:
    return [b.clone() for n, b in module.named_buffers() if "running" in n]


def _train_steps(model, param_groups, dataset, steps: int):
    """``steps`` Adam steps on the whole dataset (frozen groups in eval mode, as the
    training module keeps them); returns the batch."""
    optimizer = torch.optim.Adam(param_groups)
    model.train()
    keep_frozen_in_eval(model)
    batch = dataset.batch(range(len(dataset)))
    for _ in range(steps):
        optimizer.zero_grad()
        model(batch).square().mean().backward()
        optimizer.step()
    return batch


@pytest.mark.parametrize("strategy_name", STRATEGIES)
def test_strategy_trains_exactly_its_groups(built, strategy_name: str) -> None:
    _, model, dataset = built
    model = copy.deepcopy(model)
    strategy = preset(strategy_name, k=1)
    param_groups = apply_strategy(model, strategy, lr=1e-2)
    groups = model.groups()
    frozen = set(model.frozen_groups)
    expected_frozen = {
        "full": set(),
        "discriminative": set(),
        "l2-sp": set(),
        "lora": set(groups) - {"head"},
        "replay": set(),
        "freeze-embedding": {"embedding"},
        "head-only": set(groups) - {"head"},
        "freeze-first-k": {"embedding", "interactions.0"},
    }[strategy_name]
    assert frozen == expected_frozen
    adapted = {
        n for n, m in groups.items() if any(k.endswith(".A") for k, _ in m.named_parameters())
    }
    assert set(trainable_groups(model)) == {n for n in groups if n not in frozen} | adapted
    if strategy_name == "l2-sp":  # the backbone's groups are anchored, the head is not
        anchored = {g["name"] for g in param_groups if g["l2_sp"] > 0}
        assert anchored == set(groups) - {"head"}
    if strategy_name == "discriminative":
        rates = {g["name"]: g["lr"] for g in param_groups}
        assert rates["head"] == pytest.approx(1e-2)
        assert all(rates[n] == pytest.approx(1e-3) for n in rates if n != "head")
    before = {n: [p.clone() for p in m.parameters()] for n, m in groups.items()}
    stats = {n: _bn_stats(m) for n, m in groups.items()}
    _train_steps(model, param_groups, dataset, 2)
    for name, module in groups.items():
        # LoRA's adapters train inside frozen groups: the weights of the group must not
        weights = [p for n, p in module.named_parameters() if n.split(".")[-1] not in "AB"]
        old = [p for (n, _), p in zip(module.named_parameters(), before[name], strict=True)
               if n.split(".")[-1] not in "AB"]  # fmt: skip
        changed = any(not torch.equal(a, b) for a, b in zip(old, weights, strict=True))
        assert changed == (name not in frozen), name
        if name in frozen:
            assert all(
                torch.equal(a, b) for a, b in zip(stats[name], _bn_stats(module), strict=True)
            ), f"{name}: frozen batch-norm statistics moved"


def test_lora_trains_adapters_alone_and_merges_into_a_plain_model(built, tmp_path) -> None:
    """LoRA: the backbone's weights never move, its linear layers' adapters and the head
    train, and merged, the model is a plain one of its architecture (same state-dict
    names) with the adapted predictions, through a checkpoint too."""
    _, model, dataset = built
    model = copy.deepcopy(model)
    plain = set(model.state_dict())
    backbone = sum(p.numel() for p in model.backbone.parameters())
    param_groups = apply_strategy(model, preset("lora"), lr=1e-2)
    linears = [m for m in model.backbone.modules() if isinstance(m, torch.nn.Linear)]
    adapters = [p for g in param_groups if g["name"] == "lora" for p in g["params"]]
    assert len(adapters) == 2 * len(linears) and {g["name"] for g in param_groups} <= {
        "head",
        "lora",
    }
    assert sum(p.numel() for p in adapters) < backbone
    frozen = {n: p.clone() for n, p in model.backbone.named_parameters() if not p.requires_grad}
    batch = _train_steps(model, param_groups, dataset, 3)
    assert all(
        torch.equal(p, frozen[n]) for n, p in model.backbone.named_parameters() if n in frozen
    )
    assert not linears or any(p.abs().sum() > 0 for p in adapters[1::2])  # B left zero
    model.eval()
    with torch.no_grad():
        adapted = model(batch)
    assert merge_adapters(model) == len(linears)
    assert set(model.state_dict()) == plain
    trained = TrainedModel(model, TargetSpec(name="band_gap", unit="eV"), {"test": True})
    loaded = load_checkpoint(save_checkpoint(trained, tmp_path / "model.pt"))
    with torch.no_grad():
        torch.testing.assert_close(loaded.model.eval()(batch), adapted, rtol=1e-4, atol=1e-5)


def test_reset_parameters_gives_fresh_weights(built) -> None:
    _, model, _ = built
    model = copy.deepcopy(model)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(1.0)
    perturbed = {n: p.clone() for n, p in model.named_parameters()}
    torch.manual_seed(1)
    model.reset_parameters()
    same = [n for n, p in model.named_parameters() if torch.equal(p, perturbed[n])]
    assert same == []


def _rotated(structure: Structure) -> Structure:
    rotation = SymmOp.from_axis_angle_and_translation([1, 2, 3], 37.0)
    lattice = rotation.operate_multi(structure.lattice.matrix)
    return Structure(lattice, structure.species, structure.frac_coords)


def _no_neighbour_ties(structure: Structure, k: int | None, cutoff: float) -> bool:
    """True when the k-th and (k+1)-th neighbour distances differ for every atom (then
    a supercell has the same k nearest neighbours, whatever breaks ties)."""
    if k is None:
        return True
    for neighbours in structure.get_all_neighbors(cutoff + 2.0):
        d = np.sort([n.nn_distance for n in neighbours])
        if len(d) > k and d[k] - d[k - 1] < 1e-3:
            return False
    return True


def test_intensive_prediction_is_invariant(built, mp_structures, tmp_path: Path) -> None:
    """Rotation, translation, site permutation and a 2×1×1 supercell change nothing
    (float32: within 1e-4)."""
    _, model, _ = built
    settings = model.graph_settings
    chosen = [
        s
        for s in mp_structures
        if len(s) <= 12 and _no_neighbour_ties(s, settings.max_neighbors, settings.cutoff)
    ][:4]
    assert chosen, "no tie-free structures among the sample"
    variants = []
    for s in chosen:
        shifted = s.copy()
        shifted.translate_sites(list(range(len(s))), [0.13, 0.27, 0.41])
        permuted = Structure.from_sites(list(reversed(s.sites)))
        variants += [s, _rotated(s), shifted, permuted, s * (2, 1, 1)]
    dataset = dataset_of(model, variants, tmp_path)
    model.eval()
    with torch.no_grad():
        out = model(dataset.batch(range(len(dataset)))).reshape(len(chosen), 5)
    torch.testing.assert_close(out, out[:, :1].expand_as(out), rtol=1e-4, atol=1e-4)


def test_extensive_target_sums_over_atoms(built, mp_structures, tmp_path: Path) -> None:
    """For an extensive target the prediction of a 2×1×1 supercell is twice the cell's."""
    _, model, _ = built
    s = mp_structures[0]
    dataset = dataset_of(model, [s, s * (2, 1, 1)], tmp_path)
    target = TargetSpec(name="energy", unit="eV/cell", extensive=True, mean=-5.0, std=2.0)
    trained = TrainedModel(copy.deepcopy(model), target)
    values = trained.predict_batch(dataset.batch([0, 1])).flatten()
    torch.testing.assert_close(values[1], 2 * values[0], rtol=1e-4, atol=1e-4)


def test_fits_fifty_real_structures(built, data: Path, tmp_path: Path) -> None:
    """Training error on 50 real perovskites falls well below the target's spread."""
    name, model, _ = built
    model = copy.deepcopy(model)
    dataset = load_dataset(
        data / "perov_5" / "val.csv.gz",
        model.graph_settings,
        ["heat_ref"],
        cache_dir=tmp_path,
        elements=model.elements,
        limit=50,
    )
    y = torch.as_tensor(dataset.targets["heat_ref"], dtype=torch.float32)
    target = TargetSpec(name="heat_ref").fit(y.numpy())
    batch = dataset.batch(range(len(dataset)))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    torch.manual_seed(0)
    model.train()
    for _ in range(150):
        optimizer.zero_grad()
        loss = (model(batch).squeeze(-1) - target.encode(y)).abs().mean()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        mae = (target.decode(model(batch).squeeze(-1)) - y).abs().mean()
    spread = (y - y.mean()).abs().mean()
    assert mae < 0.25 * spread, f"{name}: MAE {mae:.3f} vs mean deviation {spread:.3f}"
