"""SevenNet (Park et al., J. Chem. Theory Comput. 20, 4857, 2024), the scalable
equivariant NequIP-style potential, as a transferable backbone: SevenNet-0 (trained on
MPtrj) and the multi-fidelity SevenNet-MF-0 (MPtrj PBE/PBE+U and MP r2SCAN, Kim et al.
2024), with their published weights from the ``sevenn`` wheel, under tlmat's model
contract.

The layers are the ``sevenn`` package's own (``pip install 'tlmat[foundation]'``): tlmat
builds sevenn's network from the configuration (sevenn's ``build_E3_equivariant_model``),
feeds its modules sevenn's data dictionary made from tlmat's cached graphs, and names
their parameter groups in forward order:

- ``embedding``: the radial (Bessel × cutoff envelope) and spherical-harmonic edge
  embedding, the one-hot of the element (and of the fidelity, for a multi-fidelity
  model) and the linear map of the one-hot to the first atom features;
- ``interactions.0`` … ``interactions.{n-1}``: sevenn's interaction blocks ``{t}_…``
  (self-connection, self-interactions, the equivariant convolution with its radial
  weight network, the gate);
- ``readout``: ``reduce_input_to_hidden``, the linear map of the last block's (scalar)
  features to the hidden width (with the fidelity one-hot as extra input in MF-0);
- ``head``: tlmat's :class:`Head` holding sevenn's ``reduce_hidden_to_energy``, the last
  linear map (hidden → 1), evaluated once from sevenn's own module so e3nn's
  normalisation is kept exactly. It runs on every atom; atom contributions are summed
  for extensive targets and averaged for intensive ones.

The convolutions' fixed denominators (sevenn: ``train_denominator: False``) are buffers
here, so a transfer strategy that trains a block does not unfreeze them.

Graphs. SevenNet's graph is every neighbour within 5 Å (no line graph): tlmat's graph with
``max_neighbors=None``. sevenn's ``edge_index`` is (centre i, neighbour j), messages run
j → i, and its edge vector is r_j + S·cell − r_i; tlmat stores (neighbour, centre) and the
same vector (centre → neighbour), so the index is flipped and the vector kept.

Fidelity. SevenNet-MF-0 takes the fidelity (``modal``) as a one-hot input of its
self-interactions and readout and has one set of per-element energy shifts per fidelity:
``PBE`` (MPtrj, PBE/PBE+U; the package's default) and ``R2SCAN`` (MP r2SCAN). The config
field ``modal`` picks one; sources ``sevennet/mf-0`` (PBE) and ``sevennet/mf-0-r2scan``.

Published weights (:func:`load_published`: ``sevennet/0``, ``sevennet/mf-0``,
``sevennet/mf-0-r2scan``) are the checkpoint files inside the ``sevenn`` wheel, checked
against their SHA-256, read with ``torch.load(weights_only=True)``. sevenn's checkpoints
also hold their training configuration, in which a few statistics (``shift``,
``shift_cp``, ``scale_cp``) are numpy float32 arrays; rebuilding those needs exactly four
numpy globals, allowed with ``torch.serialization.safe_globals`` for these files only
(:func:`_numpy_allowlist`): ``numpy.core.multiarray._reconstruct`` (numpy's array
constructor for pickles), ``numpy.ndarray``, ``numpy.dtype`` and
``numpy.dtypes.Float32DType`` (the dtype of those arrays) — the set PyTorch documents for
numpy arrays under ``weights_only``. The rest of the file (tensors, dicts, lists, numbers,
strings and ``torch.device``) loads without an allowlist. No sevenn class is unpickled
(sevenn's own loader uses ``weights_only=False``). Checkpoints written by sevenn < 0.11
store the convolution weights in their old instruction order; sevenn's own
``patch_state_dict_if_old`` converts them, as sevenn does when it loads them.

Copies. Deep-copying an e3nn layer re-traces its torch.fx code, which adds
``_tensor_constant<k>`` buffers (copies of its fixed Wigner-3j coefficients); the backbone
leaves them out of its state dict, so a copied model (a transfer target) saves and loads
like the original.

What they predict becomes the source target: the total energy in eV/cell, extensive.
sevenn's atom energy is scale·o + shift(Z) (its ``rescale_atomic_energy``): the scale (one
value, 1.73, for every element in both models) is the target's standard deviation and the
per-element shifts (of the chosen fidelity) are :attr:`TargetSpec.atom_refs`, so decoding
gives sevenn's energy. Forces and stresses (sevenn's gradient outputs) are not part of
what tlmat transfers.
"""

from __future__ import annotations

import contextlib
import copy
import io
import re
import warnings
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field, model_validator
from torch import nn
from torch_geometric.data import Batch

from tlmat.graphs.settings import GraphSettings
from tlmat.models.base import Backbone, CrystalModel, Head, ModelConfig, TrainedModel
from tlmat.models.foundation import (
    all_neighbours,
    foundation_module,
    package_version,
    packaged_sources,
    packaged_weights,
    published_source,
)
from tlmat.models.pooling import MEAN, pooled_layers
from tlmat.models.registry import Architecture
from tlmat.models.targets import TargetSpec

#: the 89 elements of SevenNet-0 and SevenNet-MF-0 (H … Bi, Ac … Pu), in the order of
#: their one-hot embedding (sevenn sorts the element symbols)
SEVENNET_ELEMENTS = [
    89, 47, 13, 18, 33, 79, 5, 56, 4, 83, 35, 6, 20, 48, 58, 17, 27, 24, 55, 29, 66, 68, 63,
    9, 26, 31, 64, 32, 1, 2, 72, 80, 67, 53, 49, 77, 19, 36, 57, 3, 71, 12, 25, 42, 7, 11,
    41, 60, 10, 28, 93, 8, 76, 15, 91, 82, 46, 61, 59, 78, 94, 37, 75, 45, 44, 16, 51, 21,
    34, 14, 62, 50, 38, 73, 65, 43, 52, 90, 22, 81, 69, 92, 23, 74, 54, 39, 70, 30, 40,
]  # fmt: skip

#: every SevenNet checkpoint inside the ``sevenn`` wheel tlmat reads: file and SHA-256
WEIGHTS: dict[str, tuple[str, str]] = {
    "0": (
        "pretrained_potentials/SevenNet_0__11Jul2024/checkpoint_sevennet_0.pth",
        "7052cb42b7b3be42b40b97fa0d21077a48c54b5548948fc4dcf346629f813c36",
    ),
    "mf-0": (
        "pretrained_potentials/SevenNet_MF_0/checkpoint_sevennet_mf_0.pth",
        "81791329b37d445f46b531578c182c41792d98c7814222c9e5dde276402225fd",
    ),
    "l3i5": (
        "pretrained_potentials/SevenNet_l3i5/checkpoint_l3i5.pth",
        "a7ff190d41efe5b8317a03d20a468e4036a1a3e64e0b14fdbab64ac3f4bfc09d",
    ),
}

#: the sources: version → (checkpoint, fidelity, what it was fitted to)
PUBLISHED: dict[str, tuple[str, str | None, str]] = {
    "0": (
        "0",
        None,
        "SevenNet-0 (11 Jul 2024): energies, forces and stresses of MPtrj (PBE/PBE+U)",
    ),
    "l3i5": (
        "l3i5",
        None,
        "SevenNet-l3i5 (l_max 3, 5 interaction layers): energies, forces and stresses of "
        "MPtrj (PBE/PBE+U)",
    ),
    "mf-0": (
        "mf-0",
        "PBE",
        "SevenNet-MF-0, PBE fidelity: MPtrj (PBE/PBE+U) and MP r2SCAN, multi-fidelity",
    ),
    "mf-0-r2scan": (
        "mf-0",
        "R2SCAN",
        "SevenNet-MF-0, r2SCAN fidelity: MPtrj (PBE/PBE+U) and MP r2SCAN, multi-fidelity",
    ),
}

#: sevenn modules that are not part of the backbone: the last linear map (the head's
#: weights), the per-element rescaling (the target) and the energy sum and its gradients
NOT_IN_BACKBONE = (
    "reduce_hidden_to_energy",
    "rescale_atomic_energy",
    "reduce_total_enegy",  # sevenn's spelling
    "force_output",
)
READOUT = "reduce_input_to_hidden"
#: names torch.fx gives the constants of a re-traced (deep-copied) e3nn layer
TRACED = re.compile(r"\._tensor_constant\d+$")


def _numpy_allowlist() -> list[tuple[Any, str]]:
    """The numpy globals sevenn's checkpoints need (float32 arrays in their training
    configuration), under the names the files use."""
    import numpy as np

    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]
    return [
        (_reconstruct, "numpy.core.multiarray._reconstruct"),
        (np.ndarray, "numpy.ndarray"),
        (np.dtype, "numpy.dtype"),
        (np.dtypes.Float32DType, "numpy.dtypes.Float32DType"),
    ]


class SevenNetConfig(ModelConfig):
    """SevenNet hyperparameters; names follow sevenn's, defaults are SevenNet-0's."""

    architecture = "sevennet"

    channel: int = Field(128, ge=1)  # multiplicity of the atom features
    lmax: int = Field(2, ge=0)
    lmax_edge: int = -1  # -1: lmax
    lmax_node: int = -1  # -1: lmax
    is_parity: bool = False  # O(3) (True) or SO(3) (False) features
    num_convolution_layer: int = Field(5, ge=1)
    #: irreps of the atom features before and after every block (None: sevenn infers
    #: them from channel and lmax)
    irreps_manual: list[str] | None = Field(
        default_factory=lambda: ["128x0e"] + ["128x0e+64x1e+32x2e"] * 4 + ["128x0e"]
    )
    cutoff: float = Field(5.0, gt=0)  # Å
    bessel_basis_num: int = Field(8, ge=1)
    cutoff_function: Literal["XPLOR", "poly_cut"] = "XPLOR"
    cutoff_on: float = Field(4.5, gt=0)  # Å, XPLOR's inner radius
    poly_cut_p_value: int = Field(6, ge=1)
    weight_nn_hidden_neurons: list[int] = Field(default_factory=lambda: [64, 64])
    act_radial: str = "silu"
    act_scalar: dict[str, str] = Field(default_factory=lambda: {"e": "silu", "o": "tanh"})
    act_gate: dict[str, str] = Field(default_factory=lambda: {"e": "silu", "o": "tanh"})
    #: the convolutions' denominators (one, or one per block): √(mean neighbour count)
    conv_denominator: float | list[float] = 35.98957443237305
    train_denominator: bool = False
    self_connection_type: str | list[str] = "linear"
    use_bias_in_linear: bool = False
    normalize_sph: bool = True
    #: atomic numbers in the order of the one-hot element embedding
    elements: list[int] = Field(default_factory=lambda: list(SEVENNET_ELEMENTS))
    #: fidelities of a multi-fidelity model, in the order of their one-hot ([]: none)
    modals: list[str] = Field(default_factory=list)
    #: the fidelity this model predicts (one of ``modals``; None without fidelities)
    modal: str | None = None
    use_modal_node_embedding: bool = False
    use_modal_self_inter_intro: bool = False
    use_modal_self_inter_outro: bool = False
    use_modal_output_block: bool = False

    @model_validator(mode="after")
    def _consistent(self) -> SevenNetConfig:
        if len(set(self.elements)) != len(self.elements) or not self.elements:
            raise ValueError("elements must be distinct atomic numbers")
        if self.modals and self.modal not in self.modals:
            raise ValueError(
                f"modal {self.modal!r}: this multi-fidelity SevenNet knows the fidelities "
                f"{', '.join(self.modals)}"
            )
        if not self.modals and self.modal is not None:
            raise ValueError(f"modal {self.modal!r}: this SevenNet has no fidelities")
        if self.cutoff_function == "XPLOR" and not self.cutoff_on < self.cutoff:
            raise ValueError(f"cutoff_on ({self.cutoff_on}) must be below cutoff ({self.cutoff})")
        return self

    def graph_settings(self) -> GraphSettings:
        return all_neighbours(self.cutoff)


def _sevenn_config(config: SevenNetConfig) -> dict[str, Any]:
    """sevenn's model configuration for ``config``."""
    import sevenn._keys as KEY
    from sevenn._const import DEFAULT_E3_EQUIVARIANT_MODEL_CONFIG

    envelope: dict[str, Any] = {KEY.CUTOFF_FUNCTION_NAME: config.cutoff_function}
    if config.cutoff_function == "XPLOR":
        envelope["cutoff_on"] = config.cutoff_on
    else:
        envelope["poly_cut_p_value"] = config.poly_cut_p_value
    cfg = copy.deepcopy(DEFAULT_E3_EQUIVARIANT_MODEL_CONFIG)
    cfg.update(
        {
            KEY.CUTOFF: float(config.cutoff),
            KEY.NODE_FEATURE_MULTIPLICITY: config.channel,
            KEY.LMAX: config.lmax,
            KEY.LMAX_EDGE: config.lmax_edge,
            KEY.LMAX_NODE: config.lmax_node,
            KEY.IS_PARITY: config.is_parity,
            KEY.NUM_CONVOLUTION: config.num_convolution_layer,
            KEY.IRREPS_MANUAL: list(config.irreps_manual) if config.irreps_manual else False,
            KEY.RADIAL_BASIS: {
                KEY.RADIAL_BASIS_NAME: "bessel",
                "bessel_basis_num": config.bessel_basis_num,
            },
            KEY.CUTOFF_FUNCTION: envelope,
            KEY.ACTIVATION_RADIAL: config.act_radial,
            KEY.ACTIVATION_SCARLAR: dict(config.act_scalar),  # sevenn's spelling
            KEY.ACTIVATION_GATE: dict(config.act_gate),
            KEY.CONVOLUTION_WEIGHT_NN_HIDDEN_NEURONS: list(config.weight_nn_hidden_neurons),
            KEY.CONV_DENOMINATOR: (
                [float(d) for d in config.conv_denominator]
                if isinstance(config.conv_denominator, list)
                else float(config.conv_denominator)
            ),
            KEY.TRAIN_DENOMINTAOR: config.train_denominator,  # sevenn's spelling
            KEY.TRAIN_SHIFT_SCALE: False,
            KEY.USE_BIAS_IN_LINEAR: config.use_bias_in_linear,
            KEY.READOUT_AS_FCN: False,
            KEY.SELF_CONNECTION_TYPE: copy.copy(config.self_connection_type),
            KEY.INTERACTION_TYPE: "nequip",
            KEY._NORMALIZE_SPH: config.normalize_sph,
            KEY.NUM_SPECIES: len(config.elements),
            KEY.TYPE_MAP: {z: i for i, z in enumerate(config.elements)},
            # sevenn's rescaling is not part of tlmat's network (it is the target's)
            KEY.SHIFT: 0.0,
            KEY.SCALE: 1.0,
            KEY.CUEQUIVARIANCE_CONFIG: {},
            KEY.USE_FLASH_TP: False,
            KEY.USE_OEQ: False,
        }
    )
    if config.modals:
        cfg.update(
            {
                KEY.USE_MODALITY: True,
                KEY.MODAL_MAP: {m: i for i, m in enumerate(config.modals)},
                KEY.NUM_MODALITIES: len(config.modals),
                KEY.USE_MODAL_NODE_EMBEDDING: config.use_modal_node_embedding,
                KEY.USE_MODAL_SELF_INTER_INTRO: config.use_modal_self_inter_intro,
                KEY.USE_MODAL_SELF_INTER_OUTRO: config.use_modal_self_inter_outro,
                KEY.USE_MODAL_OUTPUT_BLOCK: config.use_modal_output_block,
                KEY.USE_MODAL_WISE_SHIFT: False,
                KEY.USE_MODAL_WISE_SCALE: False,
            }
        )
    return cfg


def _sevenn_model(config: SevenNetConfig) -> Any:
    """sevenn's own network of this size (random weights), whose modules tlmat uses."""
    model_build = foundation_module("sevenn.model_build", "the SevenNet backbone")
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return model_build.build_E3_equivariant_model(_sevenn_config(config))


def _scalar_slices(irreps: Any) -> list[tuple[int, int]]:
    """(start, stop) of the scalar (l = 0) channels of e3nn irreps."""
    slices = []
    for piece, (mul, ir) in zip(irreps.slices(), irreps, strict=True):
        if ir.l == 0 and mul > 0:
            slices.append((piece.start, piece.stop))
    return slices


def _constants_as_buffers(module: nn.Module) -> None:
    """Parameters sevenn never trains (``requires_grad=False``: the convolutions' fixed
    denominators) become buffers of the same name, so no strategy trains them."""
    for child in module.modules():
        for name, parameter in list(child._parameters.items()):
            if parameter is not None and not parameter.requires_grad:
                del child._parameters[name]
                child.register_buffer(name, parameter.detach().clone())


def _drop_traced_constants(
    module: nn.Module, state: dict[str, Any], prefix: str, metadata: Any
) -> None:
    """State-dict hook: leave out the ``_tensor_constant<k>`` copies of e3nn's Wigner-3j
    buffers that torch.fx adds to a deep-copied e3nn layer (they are fixed by the layer's
    shapes, not weights), so a copied model saves and loads like the original."""
    for key in [k for k in state if k.startswith(prefix) and TRACED.search(k)]:
        del state[key]


def _ignore_traced_constants(module: nn.Module, keys: Any) -> None:
    """Load hook: those copies are rebuilt with the layer, never missing."""
    keys.missing_keys[:] = [k for k in keys.missing_keys if not TRACED.search(k)]


class SevenNetBackbone(Backbone):
    """sevenn's modules on tlmat graphs: per-atom features after the readout's linear map
    to the hidden width."""

    atomwise = True

    def __init__(self, config: SevenNetConfig):
        super().__init__()
        self.config = config
        net = _sevenn_model(config)
        n = config.num_convolution_layer
        embedding: OrderedDict[str, nn.Module] = OrderedDict()
        blocks: list[OrderedDict[str, nn.Module]] = [OrderedDict() for _ in range(n)]
        readout: OrderedDict[str, nn.Module] = OrderedDict()
        for name, module in net._modules.items():
            index, _, rest = name.partition("_")
            if index.isdigit():
                blocks[int(index)][rest] = module
            elif name == READOUT:
                readout[name] = module
            elif name in NOT_IN_BACKBONE:
                continue
            elif any(blocks) or readout:
                raise TypeError(f"sevenn module {name!r} after the interaction blocks")
            else:
                embedding[name] = module
        self.embedding = nn.ModuleDict(embedding)
        self.interactions = nn.ModuleList(nn.ModuleDict(block) for block in blocks)
        self.readout = nn.ModuleDict(readout)
        _constants_as_buffers(self)
        self.embedding_dim = int(readout[READOUT].irreps_out.dim)
        #: (start, stop) of the scalar channels after the embedding and each block
        self._scalars = [_scalar_slices(embedding["onehot_to_feature_x"].irreps_out)] + [
            _scalar_slices(block["equivariant_gate"].gate.irreps_out) for block in blocks
        ]
        table = torch.full((max(config.elements) + 1,), -1, dtype=torch.long)
        table[torch.tensor(config.elements)] = torch.arange(len(config.elements))
        self.register_buffer("type_index", table, persistent=False)
        self.modal_index = config.modals.index(config.modal) if config.modals else None
        # public from torch 2.5 on; the private name before, with the same signature
        post_hook = getattr(self, "register_state_dict_post_hook", None)
        (post_hook or self._register_state_dict_hook)(_drop_traced_constants)
        self.register_load_state_dict_post_hook(_ignore_traced_constants)

    @property
    def elements(self) -> list[int]:
        return sorted(self.config.elements)

    def _data(self, batch: Batch) -> dict[str, torch.Tensor]:
        """sevenn's data dictionary (``AtomGraphData`` keys) of a batch of tlmat graphs."""
        import sevenn._keys as KEY

        z = batch.z.long()
        known = z < len(self.type_index)
        types = self.type_index[z.clamp(max=len(self.type_index) - 1)]
        types = torch.where(known, types, torch.full_like(types, -1))
        if bool((types < 0).any()):
            from pymatgen.core import Element

            unknown = sorted(set(z[types < 0].tolist()))
            symbols = ", ".join(Element.from_Z(int(u)).symbol for u in unknown)
            known_here = (
                "H … Pu without Po … Ra"
                if set(self.config.elements) == set(SEVENNET_ELEMENTS)
                else f"Z = {', '.join(map(str, self.elements))}"
            )
            raise ValueError(
                f"{symbols} not in SevenNet's element vocabulary ({len(self.config.elements)} "
                f"elements: {known_here})"
            )
        dtype = next(self.parameters()).dtype
        data = {
            KEY.NODE_FEATURE: types,  # the one-hot index; sevenn's onehot module expands it
            KEY.ATOMIC_NUMBERS: z,
            KEY.EDGE_IDX: batch.edge_index.flip(0),  # (centre, neighbour)
            KEY.EDGE_VEC: batch.edge_vec.to(dtype),  # centre → neighbour image, Å
            KEY.BATCH: batch.batch,
        }
        if self.modal_index is not None:
            n_crystals = batch.ptr.numel() - 1
            data[KEY.MODAL_TYPE] = torch.full(
                (n_crystals,), self.modal_index, dtype=torch.long, device=z.device
            )
        return data

    def _states(self, batch: Batch) -> Iterator[tuple[str, dict[str, torch.Tensor]]]:
        """(group name, sevenn's data) after the embedding and after each block; the order
        of the modules is sevenn's."""
        data = self._data(batch)
        for module in self.embedding.values():
            data = module(data)
        yield "embedding", data
        for k, block in enumerate(self.interactions):
            for module in block.values():
                data = module(data)
            yield f"interactions.{k}", data

    def forward(self, batch: Batch) -> torch.Tensor:
        import sevenn._keys as KEY

        *_, (_, data) = self._states(batch)
        for module in self.readout.values():
            data = module(data)
        return data[KEY.NODE_FEATURE]

    def layer_features(
        self, batch: Batch, statistics: Sequence[str] = MEAN
    ) -> OrderedDict[str, torch.Tensor]:
        """The scalar (invariant) channels of the atom features after the embedding and
        each block, pooled over each crystal's atoms by ``statistics``."""
        import sevenn._keys as KEY

        def scalars() -> Iterator[tuple[str, torch.Tensor]]:
            for k, (name, data) in enumerate(self._states(batch)):
                x = data[KEY.NODE_FEATURE]
                yield name, torch.cat([x[:, a:b] for a, b in self._scalars[k]], dim=1)

        return pooled_layers(scalars(), batch, statistics)

    def reset_parameters(self) -> None:
        # e3nn's layers and sevenn's Bessel frequencies have no reset_parameters: take
        # every block from a freshly initialised sevenn network of the same size
        self.load_state_dict(SevenNetBackbone(self.config).state_dict())


def build_sevennet(config: SevenNetConfig) -> CrystalModel:
    """A SevenNet with random weights and its last linear map as an atom-wise head."""
    backbone = SevenNetBackbone(config)
    head = Head(backbone.embedding_dim, [], 1, config.act_radial)
    return CrystalModel(backbone, head, config)


def _build(config: SevenNetConfig, state: Mapping[str, torch.Tensor] | None) -> CrystalModel:
    return build_sevennet(config)


def tlmat_name(key: str, embedding: set[str]) -> str | None:
    """sevenn's state-dict name → tlmat's (None: not a backbone tensor)."""
    first, _, rest = key.partition(".")
    index, _, block = first.partition("_")
    if index.isdigit():
        return f"backbone.interactions.{index}.{block}.{rest}"
    if first == READOUT:
        return f"backbone.readout.{key}"
    if first in embedding:
        return f"backbone.embedding.{key}"
    return None


def weights_path(weights: str) -> Path:
    """A SevenNet checkpoint inside the installed ``sevenn`` package."""
    return packaged_weights(
        "sevenn", WEIGHTS, weights, "SevenNet checkpoint", f"sevennet/{weights}"
    )


def read_weights(weights: str) -> dict[str, Any]:
    """A SevenNet checkpoint, after checking its SHA-256, read with
    ``torch.load(weights_only=True)`` and the four numpy globals of :func:`_numpy_allowlist`."""
    from tlmat.models.checkpoint import CheckpointError, read_published_weights

    path, checksum = weights_path(weights), WEIGHTS[weights][1]
    stored = read_published_weights(
        path, checksum, f"SevenNet {weights} weights", tuple(_numpy_allowlist())
    )
    if not isinstance(stored, dict) or not {"config", "model_state_dict"} <= set(stored):
        raise CheckpointError(f"{path}: not a sevenn checkpoint (no config and model_state_dict)")
    return stored


def config_from_checkpoint(
    stored: Mapping[str, Any], modal: str | None, path: str = "checkpoint"
) -> SevenNetConfig:
    """tlmat's configuration of a sevenn checkpoint (its ``config`` and state dict)."""
    from sevenn.scripts.backward_compatibility import patch_old_config

    from tlmat.models.checkpoint import CheckpointError

    cfg = patch_old_config(copy.deepcopy(dict(stored["config"])))
    state = stored["model_state_dict"]
    unsupported = {
        "interaction_type": (cfg.get("interaction_type", "nequip"), "nequip"),
        "readout_as_fcn": (cfg.get("readout_as_fcn", False), False),
        "radial_basis": (cfg["radial_basis"]["radial_basis_name"], "bessel"),
    }
    for name, (value, expected) in unsupported.items():
        if value != expected:
            raise CheckpointError(f"{path}: SevenNet with {name}={value!r} is not supported")
    n = int(cfg["num_convolution_layer"])
    denominators = [float(state[f"{t}_convolution.denominator"]) for t in range(n)]
    type_map = cfg["_type_map"]
    modal_map = (cfg.get("_modal_map") or {}) if cfg.get("use_modality", False) else {}
    modals = sorted(modal_map, key=modal_map.get)
    if modals and modal is None:
        modal = cfg.get("default_modal") or modals[0]
    envelope = cfg["cutoff_function"]
    irreps = cfg.get("irreps_manual", False)
    fields: dict[str, Any] = {
        "channel": cfg["channel"],
        "lmax": cfg["lmax"],
        "lmax_edge": cfg.get("lmax_edge", -1),
        "lmax_node": cfg.get("lmax_node", -1),
        "is_parity": cfg["is_parity"],
        "num_convolution_layer": n,
        "irreps_manual": list(irreps) if irreps else None,
        "cutoff": float(cfg["cutoff"]),
        "bessel_basis_num": cfg["radial_basis"].get("bessel_basis_num", 8),
        "cutoff_function": envelope["cutoff_function_name"],
        "weight_nn_hidden_neurons": list(cfg["weight_nn_hidden_neurons"]),
        "act_radial": cfg["act_radial"],
        "act_scalar": dict(cfg["act_scalar"]),
        "act_gate": dict(cfg["act_gate"]),
        "conv_denominator": (denominators[0] if len(set(denominators)) == 1 else denominators),
        "train_denominator": bool(cfg.get("train_denominator", False)),
        "self_connection_type": cfg.get("self_connection_type", "nequip"),
        "use_bias_in_linear": cfg.get("use_bias_in_linear", False),
        "normalize_sph": cfg.get("_normalize_sph", True),
        "elements": sorted(type_map, key=type_map.get),
        "modals": modals,
        "modal": modal,
    }
    if "cutoff_on" in envelope:
        fields["cutoff_on"] = envelope["cutoff_on"]
    if "poly_cut_p_value" in envelope:
        fields["poly_cut_p_value"] = envelope["poly_cut_p_value"]
    if modals:
        for flag in (
            "use_modal_node_embedding",
            "use_modal_self_inter_intro",
            "use_modal_self_inter_outro",
            "use_modal_output_block",
        ):
            fields[flag] = bool(cfg.get(flag, False))
    try:
        return SevenNetConfig(**fields)
    except ValueError as error:
        raise CheckpointError(f"{path}: {error}") from None


def load_published(version: str = "0", modal: str | None = None) -> TrainedModel:
    """SevenNet's published weights as a tlmat model whose target is the total energy
    (eV/cell): atom contributions summed, scaled by sevenn's energy scale, plus its
    per-element shifts (of fidelity ``modal``, for SevenNet-MF-0; default: the source's)."""
    import sevenn._keys as KEY

    from tlmat.models.checkpoint import CheckpointError, load_state

    weights, default_modal, description = published_source("SevenNet", version, PUBLISHED)
    stored = read_weights(weights)
    relative, checksum = WEIGHTS[weights]
    path = f"sevenn/{relative}"
    config = config_from_checkpoint(stored, modal or default_modal, path)
    # sevenn's own network checks the file and converts old layouts, as sevenn does
    reference = _sevenn_model(config)
    sevenn_version = stored["config"].get("version", "0.0.0")
    state, expected = _sevenn_state(stored, reference, sevenn_version, path)

    model = build_sevennet(config)
    embedding = set(model.backbone.embedding.keys())
    names = {k: tlmat_name(k, embedding) for k in expected}
    mapped = {name: state[k] for k, name in names.items() if name is not None}
    # the head: sevenn's last linear map (e3nn-normalised), evaluated as an affine map
    last = reference._modules["reduce_hidden_to_energy"]
    if getattr(last, "num_modalities", 0) > 1:
        raise CheckpointError(f"{path}: a fidelity input to the last layer is not supported")
    width = model.backbone.embedding_dim
    with torch.no_grad():
        probe = torch.cat([torch.zeros(1, width), torch.eye(width)])
        out = last({KEY.NODE_FEATURE: probe})[KEY.SCALED_ATOMIC_ENERGY]
    mapped["head.out.weight"] = (out[1:] - out[:1]).T.contiguous()
    mapped["head.out.bias"] = out[0].clone()
    load_state(model, mapped, path)
    provenance = {
        "source": f"sevennet/{version}",
        "description": description,
        "weights": path,
        "sha256": checksum,
        "modal": config.modal,
        "checkpoint_version": sevenn_version,
        "package_version": package_version("sevenn"),
    }
    return TrainedModel(model, _energy_target(state, config, path), provenance)


def _sevenn_state(
    stored: Mapping[str, Any], reference: nn.Module, sevenn_version: str, path: str
) -> tuple[dict[str, torch.Tensor], set[str]]:
    """A checkpoint's state dict in the current layout (sevenn's own conversion), checked
    against and loaded into sevenn's own network ``reference``, and the names of its
    tensors that are network weights (not the energy's rescaling)."""
    from sevenn.scripts.backward_compatibility import patch_state_dict_if_old

    from tlmat.models.checkpoint import CheckpointError

    state = patch_state_dict_if_old(
        dict(stored["model_state_dict"]), {"version": sevenn_version}, reference
    )
    expected = {k for k in reference.state_dict() if not k.startswith("rescale_atomic_energy.")}
    lacking = sorted(expected - set(state))
    unexpected = sorted(set(state) - expected - {k for k in state if k.startswith("rescale_")})
    if lacking or unexpected:
        raise CheckpointError(
            f"{path}: {'lacks tensor ' + repr(lacking[0]) if lacking else ''}"
            f"{'; ' if lacking and unexpected else ''}"
            f"{'unexpected tensor ' + repr(unexpected[0]) if unexpected else ''}"
        )
    reference.load_state_dict({k: state[k] for k in expected}, strict=False)
    return state, expected


def _energy_target(
    state: Mapping[str, torch.Tensor], config: SevenNetConfig, path: str
) -> TargetSpec:
    """The total energy (eV/cell) as sevenn rescales it: one energy scale, and per-element
    shifts as atom references (of the fidelity ``config.modal``)."""
    from tlmat.models.checkpoint import CheckpointError

    shift = state["rescale_atomic_energy.shift"].double()
    scale = state["rescale_atomic_energy.scale"].double()
    modal_index = config.modals.index(config.modal) if config.modals else 0
    if shift.dim() == 2:
        shift = shift[modal_index]
    if scale.dim() == 2:
        scale = scale[modal_index]
    if not torch.all(scale == scale.flatten()[0]):
        raise CheckpointError(f"{path}: per-element energy scales are not supported")
    if shift.numel() == 1:
        shift = shift.expand(len(config.elements))
    return TargetSpec(
        name="energy",
        unit="eV/cell",
        extensive=True,
        normalization="standard",
        mean=0.0,
        std=float(scale.flatten()[0]),
        atom_refs={z: float(shift[i]) for i, z in enumerate(config.elements)},
    )


ARCHITECTURE = Architecture(
    name="sevennet",
    config=SevenNetConfig,
    build=_build,
    summary=(
        "foundation model (MPtrj; MF-0 also MP r2SCAN): E(3)-equivariant NequIP blocks on "
        "all pairs within 5 Å; atom-wise readout"
    ),
    reference="Park et al., J. Chem. Theory Comput. 20, 4857 (2024); sevenn package",
    presets={
        # for tests and quick looks
        "sevennet-small": {
            "channel": 32,
            "lmax": 1,
            "num_convolution_layer": 2,
            "irreps_manual": None,
            "cutoff": 4.0,
            "cutoff_on": 3.5,
            "bessel_basis_num": 8,
            "weight_nn_hidden_neurons": [32],
            "conv_denominator": 5.0,
        },
    },
    sources=packaged_sources(
        "sevennet",
        "sevenn",
        WEIGHTS,
        {v: (weights, what) for v, (weights, _, what) in PUBLISHED.items()},
    ),
    load_source=load_published,
    foundation=True,
    package="sevenn",
)
