"""What tlmat's two matgl backbones share (:mod:`tlmat.models.m3gnet`,
:mod:`tlmat.models.megnet`): importing matgl and building its networks, the element
vocabulary, the backbone's common part (:class:`MatGLBackbone`), and reading matgl's
published property models from a local folder, safely.

The layers are the ``matgl`` package's own (``pip install 'tlmat[foundation]'``,
matgl ≥ 4.1, whose models are PyTorch Geometric modules; DGL is not needed).

Published models. matgl's pre-trained property models live, offline, in
``$TLMAT_DATA_DIR/matgl_pretrained/<name>/`` (:func:`tlmat.datasets.data_dir`): the
files of matgl's ``pretrained_models/<name>/`` (MatGL, BSD-3-Clause). Of each folder
tlmat reads three files, each checked against its SHA-256 first:

- ``model.json``: plain JSON (``json.load``): matgl's class and constructor arguments,
  which become the tlmat config (and the element vocabulary, ``element_types``);
- ``state.pt``: the weights, ``torch.load(weights_only=True)`` with no allowlist: tensors
  in an ordered dict, nothing else;
- ``model.pt``: a small PyTorch zip pickle, ``{"model": {constructor arguments},
  "target_transformer": matgl.data.transformer.Normalizer(mean, std)}``. It is read with
  ``torch.load(weights_only=True)`` under ``torch.serialization.safe_globals`` with one
  entry: the name ``matgl.data.transformer.Normalizer`` mapped onto tlmat's empty stub
  class :class:`_Normalizer`, which only receives the pickled attribute dict. No matgl
  class is rebuilt and no matgl code runs; only the two numbers ``mean`` and ``std`` are
  used (the network predicts (y − mean)/std). A file that needs any other global is
  refused.

``README.md`` is not read. matgl's own loader (``matgl.load_model``) fails on these
folders with PyTorch ≥ 2.6 (``Normalizer`` is not on its ``weights_only`` allowlist) and,
for M3GNet, on the state-dict names (see :mod:`tlmat.models.m3gnet`).

Importing matgl adds numpy's array classes to PyTorch's process-wide ``weights_only``
allowlist (``matgl.utils.io``); :func:`import_matgl` takes them off again, so tlmat's own
checkpoints are still read with no allowlist at all.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

import torch
from pydantic import BaseModel
from pymatgen.core import Element
from torch import nn

from tlmat.models.base import Backbone, CrystalModel, Head
from tlmat.models.foundation import package_version

#: the elements of matgl's models (``matgl.config.DEFAULT_ELEMENTS``): H … Pu without
#: Po, At, Rn, Fr and Ra, in this order (the row of each in the element embedding)
ELEMENT_SYMBOLS: tuple[str, ...] = tuple(
    Element.from_Z(z).symbol for z in range(1, 95) if z not in (84, 85, 86, 87, 88)
)
#: their atomic numbers
ELEMENTS: list[int] = [Element(s).Z for s in ELEMENT_SYMBOLS]

#: the folder (under the data directory) that holds matgl's published models
FOLDER = "matgl_pretrained"

#: matgl's activations and tlmat's names for them (the head's)
ACTIVATIONS = {"swish": "silu", "softplus2": "ssp"}

#: where a matgl backbone sums (or averages) the messages into the atoms: the edge's
#: destination atom, as matgl's DGL code did when the published weights were trained, or
#: its source atom, as matgl ≥ 4 does (see :mod:`tlmat.models.m3gnet`)
Aggregation = Literal["destination", "source"]


@dataclass(frozen=True)
class MatGLSource:
    """One published matgl property model: its folder, what it predicts, and the SHA-256
    of the files tlmat reads."""

    folder: str
    description: str
    target: str  # tlmat's name of the property
    unit: str
    sha256: Mapping[str, str]  # model.json, model.pt, state.pt


def import_matgl(what: str = "the matgl backbones") -> ModuleType:
    """The ``matgl`` package (imported on first use), leaving PyTorch's ``weights_only``
    allowlist as it was before."""
    before = list(torch.serialization.get_safe_globals())
    try:
        import matgl
        import matgl.models
    except ImportError as error:
        raise ImportError(
            f"{what} need the matgl package (≥ 4.1): pip install 'tlmat[foundation]'"
        ) from error
    finally:
        if list(torch.serialization.get_safe_globals()) != before:
            torch.serialization.clear_safe_globals()
            torch.serialization.add_safe_globals(before)
    return matgl


def element_table(elements: list[int] = ELEMENTS) -> torch.Tensor:
    """Atomic number → row of the element embedding, −1 for an element the model lacks."""
    table = torch.full((119,), -1, dtype=torch.long)
    table[torch.tensor(elements)] = torch.arange(len(elements))
    return table


def node_types(table: torch.Tensor, z: torch.Tensor, architecture: str) -> torch.Tensor:
    """The embedding rows of the atoms ``z``; a clear error for an unknown element (the
    data layer leaves such structures out when given :attr:`Backbone.elements`)."""
    types = table[z.clamp(0, len(table) - 1)]
    unknown = (types < 0) | (z >= len(table))
    if bool(unknown.any()):
        symbols = sorted({Element.from_Z(int(v)).symbol for v in z[unknown].unique()})
        raise ValueError(
            f"{architecture}: element(s) {', '.join(symbols)} not in the model's element "
            "vocabulary (matgl's 89 elements, H–Pu without Po, At, Rn, Fr, Ra)"
        )
    return types


class MatGLBackbone(Backbone):
    """What the matgl backbones share: a crystal-level readout, matgl's elements, the
    output MLP as the head (:meth:`with_head`) and fresh weights from each layer's own
    initialisation."""

    atomwise = False

    @staticmethod
    def _matgl_network(
        architecture: str, config: BaseModel, exclude: set[str], **fixed: Any
    ) -> Any:
        """matgl's own ``architecture`` (a class of ``matgl.models``) with random weights,
        whose layers the backbone takes: its arguments are the fields of ``config`` but
        those in ``exclude`` (tlmat's own settings), and ``fixed`` (the variant tlmat
        runs)."""
        matgl = import_matgl(f"the {architecture} backbone")
        network = getattr(matgl.models, architecture)
        return network(element_types=ELEMENT_SYMBOLS, **fixed, **config.model_dump(exclude=exclude))

    def _take_output_mlp(self, mlp: nn.Module) -> None:
        """The widths of matgl's output ``mlp`` (the inputs of its linear maps: the first
        is the crystal embedding's) and the element table; called last in ``__init__``."""
        self.head_dims = [m.in_features for m in mlp.layers if hasattr(m, "in_features")]
        self.embedding_dim = self.head_dims[0]
        self.register_buffer("type_of", element_table(), persistent=False)

    def with_head(self) -> CrystalModel:
        """A crystal model of this backbone with matgl's output MLP as its crystal-level
        head: its widths are ``head_dims`` and its activation ``config.activation_type``."""
        dims = self.head_dims
        head = Head(dims[0], dims[1:], 1, ACTIVATIONS[self.config.activation_type])
        return CrystalModel(self, head, self.config)

    @property
    def elements(self) -> list[int]:
        return ELEMENTS

    def _types(self, z: torch.Tensor) -> torch.Tensor:
        """The element-embedding rows of the atoms ``z`` (:func:`node_types`)."""
        return node_types(self.type_of, z, self.config.architecture)

    def reset_parameters(self) -> None:
        from tlmat.models.layers import reset_all

        for module in self.groups().values():
            # a group that initialises itself (M3GNet's Set2Set readout) does so; the
            # others reset their outermost sub-modules that can
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
            else:
                reset_all(module)


def folder_path(source: MatGLSource) -> Path:
    """The local folder of a published matgl model, or a clear error naming it."""
    from tlmat.datasets import data_dir

    root = data_dir()
    folder = (root / FOLDER / source.folder) if root is not None else None
    if folder is None or not folder.is_dir():
        shown = folder if folder is not None else Path("$TLMAT_DATA_DIR") / FOLDER / source.folder
        raise FileNotFoundError(
            f"{shown}: matgl's published model {source.folder} is not there (a copy of "
            f"matgl's pretrained_models/{source.folder}/ with model.json, model.pt and "
            "state.pt); set TLMAT_DATA_DIR to the data folder that holds "
            f"{FOLDER}/{source.folder}"
        )
    return folder


class _Normalizer:
    """Receives the attributes of a pickled ``matgl.data.transformer.Normalizer``
    (``mean``, ``std``); nothing else of it is rebuilt."""


@dataclass
class PublishedFiles:
    """What tlmat takes from a published matgl folder."""

    folder: Path
    model_class: str  # matgl's class: M3GNet or MEGNet
    init_args: dict[str, Any]
    state: dict[str, torch.Tensor]  # matgl's names, without the wrapper's ``model.``
    mean: float
    std: float


def read_published(source: MatGLSource) -> PublishedFiles:
    """The files of a published matgl model, each checked against its SHA-256 first
    (see the module's docstring for how each is read)."""
    from tlmat.models.checkpoint import CheckpointError, require_sha256

    folder = folder_path(source)
    for name, checksum in source.sha256.items():
        path = folder / name
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing from matgl's published {source.folder}")
        require_sha256(path, checksum, f"matgl {source.folder} {name}")
    with (folder / "model.json").open() as handle:
        described = json.load(handle)
    inner = described.get("kwargs", {}).get("model", {})
    if described.get("@class") != "TransformedTargetModel" or "init_args" not in inner:
        raise CheckpointError(f"{folder / 'model.json'}: not a matgl TransformedTargetModel")
    state = torch.load(folder / "state.pt", map_location="cpu", weights_only=True)
    try:
        with torch.serialization.safe_globals([(_Normalizer, "matgl.data.transformer.Normalizer")]):
            pickled = torch.load(folder / "model.pt", map_location="cpu", weights_only=True)
    except Exception as error:
        raise CheckpointError(
            f"{folder / 'model.pt'}: refused to load with weights_only=True and only "
            f"matgl.data.transformer.Normalizer allowed ({str(error).splitlines()[-1][:200]})"
        ) from error
    transformer = pickled.get("target_transformer") if isinstance(pickled, dict) else None
    if not isinstance(transformer, _Normalizer):
        raise CheckpointError(f"{folder / 'model.pt'}: its target transformer is no Normalizer")
    mean, std = float(transformer.__dict__["mean"]), float(transformer.__dict__["std"])
    init_args = dict(inner["init_args"])
    elements = init_args.get("element_types")
    if elements is not None and tuple(elements) != ELEMENT_SYMBOLS:
        raise CheckpointError(
            f"{folder / 'model.json'}: element_types differ from matgl's 89 default elements"
        )
    prefix = "model."
    if not all(k.startswith(prefix) for k in state):
        raise CheckpointError(f"{folder / 'state.pt'}: not the state of a TransformedTargetModel")
    return PublishedFiles(
        folder=folder,
        model_class=str(inner.get("@class")),
        init_args=init_args,
        state={k[len(prefix) :]: v for k, v in state.items()},
        mean=mean,
        std=std,
    )


def load_mapped(model: torch.nn.Module, mapped: dict[str, torch.Tensor], path: Path) -> None:
    """Load matgl's weights under tlmat's names; buffers the published state lacks (the
    fixed bases' cutoff, which matgl ≥ 4 stores and older matgl did not) keep the values
    the model was built with."""
    from tlmat.models.checkpoint import load_state

    parameters = {name for name, _ in model.named_parameters()}
    own = model.state_dict()
    for key, value in own.items():
        if key not in mapped and key not in parameters:
            mapped[key] = value
    load_state(model, mapped, path)


def trained_from_published(
    architecture: str,
    version: str,
    source: MatGLSource,
    files: PublishedFiles,
    model: torch.nn.Module,
    names: Mapping[str, str],
    settings: Mapping[str, Any],
) -> Any:
    """A published matgl model as a tlmat :class:`TrainedModel`: the weights of ``files``
    loaded into ``model`` under tlmat's ``names`` (any tensor without one is refused),
    matgl's target normaliser as the target, and where it came from (with the
    ``settings`` it runs with) as provenance."""
    from tlmat.models.base import TrainedModel
    from tlmat.models.checkpoint import CheckpointError
    from tlmat.models.targets import TargetSpec

    weights = files.folder / "state.pt"
    unknown = sorted(set(files.state) - set(names))
    if unknown:
        raise CheckpointError(f"{weights}: unexpected tensor {unknown[0]!r}")
    load_mapped(model, {names[k]: v for k, v in files.state.items()}, weights)
    target = TargetSpec(
        name=source.target,
        unit=source.unit,
        normalization="standard",
        mean=files.mean,
        std=files.std,
    )
    provenance = {
        "source": f"{architecture}/{version}",
        "description": source.description,
        "weights": f"{FOLDER}/{source.folder}/state.pt",
        "sha256": source.sha256["state.pt"],
        "files_sha256": dict(source.sha256),
        **settings,
        "package_version": package_version("matgl"),
    }
    return TrainedModel(model, target, provenance)
