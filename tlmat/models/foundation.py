"""What the foundation-model modules share (:mod:`tlmat.models.chgnet`,
:mod:`tlmat.models.sevennet`, :mod:`tlmat.models.m3gnet`, :mod:`tlmat.models.megnet`):
finding the weights a package ships, turning a published model's constructor arguments
into a tlmat config, and the registry's entries for matgl's published models.

Each was written once per architecture before; the messages are unchanged.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from tlmat.models.base import Backbone, CrystalModel, Head, ModelConfig
from tlmat.models.registry import Published

if TYPE_CHECKING:
    from tlmat.models.matgl import MatGLSource

Config = TypeVar("Config", bound=ModelConfig)


def packaged_weights(
    package: str, weights: Mapping[str, tuple[str, str]], key: str, what: str, source: str
) -> Path:
    """The file of the weights ``key`` that the installed ``package`` ships; ``weights``:
    key → (file inside the package, SHA-256); ``what`` names a key in the error for an
    unknown one (``CHGNet version``), ``source`` the model that needs the package."""
    if key not in weights:
        raise ValueError(f"unknown {what} {key!r}; known: {', '.join(weights)}")
    try:
        module = importlib.import_module(package)
    except ImportError as error:
        raise ImportError(
            f"{source} needs the {package} package: pip install 'tlmat[foundation]'"
        ) from error
    return Path(module.__file__).parent / weights[key][0]


def config_from_arguments(
    config: type[Config],
    arguments: Mapping[str, Any],
    supported: Mapping[str, Any],
    where: str,
    what: str,
) -> Config:
    """The tlmat ``config`` of a published model's constructor ``arguments``: each argument
    named in ``supported`` must be absent or have the value given there (tlmat runs only
    that variant of the network); the arguments that are fields of ``config`` make it.
    Errors are :class:`~tlmat.models.checkpoint.CheckpointError` s naming ``where`` (the
    file) and ``what`` (the architecture)."""
    from tlmat.models.checkpoint import CheckpointError

    for name, expected in supported.items():
        if arguments.get(name, expected) != expected:
            raise CheckpointError(
                f"{where}: {what} with {name}={arguments[name]!r} is not supported"
            )
    fields = {k: v for k, v in arguments.items() if k in config.model_fields}
    try:
        return config(**fields)
    except ValueError as error:
        raise CheckpointError(f"{where}: {error}") from None


def matgl_model(backbone: Backbone, config: ModelConfig) -> CrystalModel:
    """A matgl ``backbone`` with matgl's output MLP as a crystal-level head: its widths are
    ``backbone.head_dims`` and its activation ``config.activation_type``."""
    from tlmat.models.matgl import ACTIVATIONS

    dims = backbone.head_dims
    head = Head(dims[0], dims[1:], 1, ACTIVATIONS[config.activation_type])
    return CrystalModel(backbone, head, config)


def matgl_sources(name: str, published: Mapping[str, MatGLSource]) -> dict[str, Published]:
    """The registry's sources of matgl's published models of architecture ``name``:
    ``name/version`` → where the weights are and their SHA-256."""
    from tlmat.models.matgl import FOLDER

    return {
        f"{name}/{version}": Published(
            version,
            source.description,
            f"$TLMAT_DATA_DIR/{FOLDER}/{source.folder}/state.pt",
            source.sha256["state.pt"],
        )
        for version, source in published.items()
    }
