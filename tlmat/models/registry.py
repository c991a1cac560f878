"""The architectures tlmat knows, each owning its requirements.

Every architecture module defines one :class:`Architecture` named ``ARCHITECTURE``: its
pydantic config (which also says what graph the model needs), its builder, named presets
of published sizes, and, where published weights exist, an :class:`Importer` with its own
``torch.load(weights_only=True)`` allowlist. Everything else — training, transfer,
prediction, embedding, grids, the CLI — asks this registry or the built model and never
names an architecture. Adding one is a module, a line in ``MODULES`` and a test file.

Modules are imported on first use, so ``tlmat --help`` does not pay for all of them.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tlmat.catalogue import unknown_model
from tlmat.models.base import CrystalModel, ModelConfig, TrainedModel

#: architecture name → module defining ``ARCHITECTURE`` (one line per architecture)
MODULES: dict[str, str] = {
    "cgcnn": "tlmat.models.cgcnn",
    "alignn": "tlmat.models.alignn",
    "cgat": "tlmat.models.cgat",
    "schnet": "tlmat.models.schnet",
    "chgnet": "tlmat.models.chgnet",
    "sevennet": "tlmat.models.sevennet",
    "m3gnet": "tlmat.models.m3gnet",
    "megnet": "tlmat.models.megnet",
}


@dataclass(frozen=True)
class Importer:
    """Reads published weights of one architecture (e.g. the original CGCNN files).

    ``allowlist``: the classes ``torch.load(weights_only=True)`` may rebuild for these files
    and no others; ``recognise(data)``: whether a loaded dict is such a file;
    ``load(data, path)``: the imported model.
    """

    description: str
    allowlist: tuple[Any, ...]
    recognise: Callable[[dict[str, Any]], bool]
    load: Callable[[dict[str, Any], str | Path], TrainedModel]


@dataclass(frozen=True)
class Published:
    """A published model an architecture loads from files it knows itself (a package's
    own weights): what ``Architecture.load_source`` takes, what it predicts, where the
    weights are and their SHA-256."""

    version: str
    description: str
    location: str
    sha256: str


@dataclass(frozen=True)
class Architecture:
    """One registered architecture.

    ``build(config, state)``: a model with random weights; ``state`` is the state dict
    about to be loaded into it, when there is one (so element tables can come from it
    instead of from a file). ``sources``: published models the architecture loads from
    files it knows itself (a package's own weights), by name.
    """

    name: str
    config: type[ModelConfig]
    build: Callable[[ModelConfig, Mapping[str, torch.Tensor] | None], CrystalModel]
    summary: str
    reference: str
    presets: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    importer: Importer | None = None
    sources: Mapping[str, Published] = field(default_factory=dict)
    load_source: Callable[[str], TrainedModel] | None = None
    #: a foundation model, whose worth is its published weights (trained on far more
    #: data than a grid here pretrains on): the model-zoo grids leave it out
    foundation: bool = False
    #: the optional package the architecture is built from (``tlmat[foundation]``)
    package: str | None = None


def names(foundation: bool = True) -> list[str]:
    """Registered architecture names (``foundation=False``: without foundation models)."""
    return [name for name in MODULES if foundation or not get(name).foundation]


def get(name: str) -> Architecture:
    """The registered architecture ``name``."""
    if name not in MODULES:
        raise ValueError(f"unknown architecture {name!r}; choose from {', '.join(MODULES)}")
    architecture = importlib.import_module(MODULES[name]).ARCHITECTURE
    if architecture.name != name or architecture.config.architecture != name:
        raise TypeError(f"{MODULES[name]} registers {architecture.name!r}, not {name!r}")
    return architecture


def presets() -> dict[str, tuple[str, Mapping[str, Any]]]:
    """Every preset name → (architecture, settings), e.g. ``schnet-arch1``."""
    out: dict[str, tuple[str, Mapping[str, Any]]] = {}
    for name in MODULES:
        for preset, settings in get(name).presets.items():
            out[preset] = (name, settings)
    return out


ModelSpec = str | Mapping[str, Any] | ModelConfig


def model_config(spec: ModelSpec | None = None, **overrides: Any) -> ModelConfig:
    """A model configuration from an architecture name (``schnet``), a preset
    (``schnet-arch2``), or a mapping ``{architecture: NAME, preset: P, field: value…}``
    (a YAML ``model:`` entry); ``overrides`` are further fields. ``None``: CGCNN."""
    if isinstance(spec, ModelConfig):
        return spec.model_copy(update=overrides) if overrides else spec
    fields: dict[str, Any] = {}
    if spec is None:
        spec = "cgcnn"
    if isinstance(spec, Mapping):
        fields = dict(spec)
        spec = fields.pop("preset", None) or fields.pop("architecture", None)
        fields.pop("architecture", None)
        if spec is None:
            raise ValueError(f"a model entry needs 'architecture' or 'preset': {dict(fields)}")
    known = presets()
    if spec in known:
        name, settings = known[spec]
        fields = {**settings, **fields}
    elif spec in MODULES:
        name = spec
    else:
        raise unknown_model(spec, list(MODULES), list(known))
    try:
        return get(name).config(**{**fields, **overrides})
    except ValueError as error:  # pydantic's message names the bad field
        raise ValueError(f"model {spec!r}: {error}") from None


def build(config: ModelConfig, state: Mapping[str, torch.Tensor] | None = None) -> CrystalModel:
    """A model of ``config``'s architecture with random weights."""
    return get(config.architecture).build(config, state)


def importers() -> list[Importer]:
    """Importers of published weights, one per architecture that has them."""
    return [a.importer for name in MODULES if (a := get(name)).importer is not None]


def parameter_count(config: ModelConfig) -> int:
    """Number of trainable parameters of a model of ``config`` (one output)."""
    model = build(config)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def sources() -> dict[str, str]:
    """Published models the architectures load themselves, name → architecture (e.g.
    ``chgnet/0.3.0`` → ``chgnet``)."""
    return {source: name for name in MODULES for source in get(name).sources}


def load_published(source: str) -> TrainedModel:
    """A published model by its registered name (:func:`sources`)."""
    known = sources()
    if source not in known:
        raise ValueError(f"unknown published model {source!r}; known: {', '.join(known)}")
    architecture = get(known[source])
    assert architecture.load_source is not None
    trained = architecture.load_source(architecture.sources[source].version)
    trained.provenance["name"] = source
    return trained
