"""How a structure becomes a graph: cutoff, neighbour count, line graph."""

from __future__ import annotations

import hashlib
import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

#: Bumped whenever the stored graph layout or the neighbour selection changes, so that
#: cached graphs built by an older tlmat are rebuilt instead of silently reused
#: (2: angle cosines from unit bond vectors, computed per chunk).
GRAPH_FORMAT_VERSION = 2

Preset = Literal["cgcnn", "schnet", "alignn"]


class GraphSettings(BaseModel):
    """Neighbour-graph settings.

    ``cutoff``: radius in Å within which neighbours are searched (periodic images included).
    ``max_neighbors``: keep only the nearest this many per atom (CGCNN: 12); ``None`` keeps
    all within the cutoff (SchNet). ``line_graph``: also build bond pairs sharing an atom,
    with the cosine of their angle (ALIGNN). ``line_graph_cutoff``: only bonds shorter than
    this (Å) enter the line graph (``None``: all bonds of the graph).
    ``min_neighbors``: atoms with fewer neighbours make the structure unusable.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    cutoff: float = Field(8.0, gt=0)
    max_neighbors: int | None = Field(12, ge=1)
    line_graph: bool = False
    line_graph_cutoff: float | None = Field(None, gt=0)
    min_neighbors: int = Field(1, ge=0)

    @classmethod
    def preset(cls, name: Preset) -> GraphSettings:
        """The conventions of the published models."""
        presets = {
            "cgcnn": cls(cutoff=8.0, max_neighbors=12),  # Xie & Grossman 2018
            "schnet": cls(cutoff=6.0, max_neighbors=None),  # all pairs within the cutoff
            "alignn": cls(cutoff=8.0, max_neighbors=12, line_graph=True),  # Choudhary 2021
        }
        if name not in presets:
            raise ValueError(f"unknown graph preset {name!r}; choose from {', '.join(presets)}")
        return presets[name]

    def key(self) -> str:
        """A short hash naming these settings (and the graph format) in the cache."""
        payload = json.dumps(
            {"format": GRAPH_FORMAT_VERSION, **self.model_dump()}, sort_keys=True
        ).encode()
        return hashlib.sha256(payload).hexdigest()[:16]
