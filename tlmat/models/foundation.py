"""What the foundation-model modules share (:mod:`tlmat.models.chgnet`,
:mod:`tlmat.models.sevennet`, :mod:`tlmat.models.m3gnet`, :mod:`tlmat.models.megnet`):
importing the package whose layers they use, the graphs they were trained on, finding
the weights a package ships, turning a published model's constructor arguments into a
tlmat config, renaming a published state dict, and the registry's entries for matgl's
published models.

Each was written once per architecture before; the messages are unchanged.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, TypeVar

from torch import nn

from tlmat.graphs.settings import GraphSettings
from tlmat.models.base import ModelConfig
from tlmat.models.registry import Published

if TYPE_CHECKING:
    from tlmat.models.matgl import MatGLSource

Config = TypeVar("Config", bound=ModelConfig)
Entry = TypeVar("Entry")


class NetworkPart(nn.Module):
    """Some modules of a foundation model's own network, taken as one of tlmat's
    parameter groups: the attributes of the network named in ``parts``, under the same
    names (so the published weights map by name) and in that order."""

    parts: tuple[str, ...] = ()

    def __init__(self, net: nn.Module):
        super().__init__()
        for name in self.parts:
            self.add_module(name, getattr(net, name))


def foundation_module(module: str, who: str) -> ModuleType:
    """The installed ``module`` of a foundation model's package, or an ImportError telling
    how to install it; ``who`` names what needs it (``the CHGNet backbone``)."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        package = module.partition(".")[0]
        raise ImportError(
            f"{who} needs the {package} package: pip install 'tlmat[foundation]'"
        ) from error


def package_version(package: str) -> str:
    """The installed version of ``package`` (recorded in a published model's provenance)."""
    from importlib.metadata import version

    return version(package)


def all_neighbours(cutoff: float, line_graph_cutoff: float | None = None) -> GraphSettings:
    """The graphs the foundation models were trained on: every neighbour within ``cutoff``
    (Å, no neighbour limit) and, with ``line_graph_cutoff``, the line graph of the bonds
    shorter than that."""
    if line_graph_cutoff is None:
        return GraphSettings(cutoff=cutoff, max_neighbors=None)
    return GraphSettings(
        cutoff=cutoff, max_neighbors=None, line_graph=True, line_graph_cutoff=line_graph_cutoff
    )


def published_source(what: str, version: str, published: Mapping[str, Entry]) -> Entry:
    """The entry of source ``version`` in an architecture's ``published`` table, or a
    ValueError listing the sources; ``what`` names the architecture (``CHGNet``)."""
    if version not in published:
        raise ValueError(f"{what} {version} is not a source; sources: {', '.join(published)}")
    return published[version]


def packaged_weights(
    package: str, weights: Mapping[str, tuple[str, str]], key: str, what: str, source: str
) -> Path:
    """The file of the weights ``key`` that the installed ``package`` ships; ``weights``:
    key → (file inside the package, SHA-256); ``what`` names a key in the error for an
    unknown one (``CHGNet version``), ``source`` the model that needs the package."""
    if key not in weights:
        raise ValueError(f"unknown {what} {key!r}; known: {', '.join(weights)}")
    module = foundation_module(package, source)
    return Path(module.__file__).parent / weights[key][0]


def packaged_sources(
    name: str,
    package: str,
    weights: Mapping[str, tuple[str, str]],
    published: Mapping[str, tuple[str, str]],
) -> dict[str, Published]:
    """The registry's sources of architecture ``name`` whose weights ``package`` ships:
    ``name/version`` → the file and its SHA-256 (``weights``: key → (file inside the
    package, SHA-256)); ``published``: version → (its key in ``weights``, description)."""
    return {
        f"{name}/{version}": Published(
            version, what, f"{package}/{weights[key][0]}", weights[key][1]
        )
        for version, (key, what) in published.items()
    }


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


def head_names(state: Mapping[str, Any], prefix: str) -> dict[str, str]:
    """A published ``MLP`` at ``prefix`` (``…layers.0``, ``…layers.2``, …: linear maps
    between activations, as matgl's and chgnet's are) → tlmat's :class:`Head`
    (``head.hidden.0``, ``head.hidden.2``, …, ``head.out``)."""
    start = f"{prefix}.layers."
    layers = sorted({int(k[len(start) :].split(".")[0]) for k in state if k.startswith(start)})
    names = {}
    for key in state:
        if not key.startswith(start):
            continue
        index, _, rest = key[len(start) :].partition(".")
        position = layers.index(int(index))
        layer = "head.out" if position == len(layers) - 1 else f"head.hidden.{2 * position}"
        names[key] = f"{layer}.{rest}"
    return names


def published_names(
    state: Mapping[str, Any], head: str, renames: Sequence[tuple[str, str]]
) -> dict[str, str]:
    """A published state dict's names → tlmat's: the output MLP at ``head``
    (:func:`head_names`), and every other name by the first of ``renames`` (a pattern
    matched at the start of the name, and its replacement, :func:`re.sub`'s) that
    matches; a name none matches is left out."""
    names = head_names(state, head)
    for key in state:
        for pattern, replacement in renames:
            renamed, found = re.subn(f"^{pattern}", replacement, key, count=1)
            if found:
                names[key] = renamed
                break
    return names


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
