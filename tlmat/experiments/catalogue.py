"""Writes ``tlmat/catalogue.json`` (:mod:`tlmat.catalogue`) from the registries: every
architecture built at its default and preset sizes (parameters, graph, readout), the
published sources, the strategies and methods.

    python -m tlmat.experiments.catalogue

after adding an architecture, preset, source or strategy (tests/test_catalogue.py says
when it is due). Builds every model, so it needs ``tlmat[foundation]`` installed.
"""

from __future__ import annotations

import json
import typing
from typing import Any

from tlmat import catalogue


def _row(label: str, architecture: str, settings: dict[str, Any]) -> dict[str, Any]:
    """One line of the models table: parameters (one output), graph and readout."""
    from tlmat.models import registry

    config = registry.model_config({"architecture": architecture, **settings})
    model = registry.build(config)
    graph = config.graph_settings()
    neighbours = (
        (f"{graph.max_neighbors} nearest" if graph.max_neighbors else "all")
        + f" within {graph.cutoff:g} Å"
        + (", line graph" if graph.line_graph else "")
    )
    return {
        "label": label,
        "parameters": sum(p.numel() for p in model.parameters()),
        "graph": neighbours,
        "readout": "atom-wise" if model.backbone.atomwise else "crystal",
    }


def build() -> dict[str, Any]:
    """The catalogue as the registries say it now."""
    from tlmat.experiments.comparison import DEFAULT_STRATEGIES
    from tlmat.experiments.runspec import SCRATCH_MODEL, STRATEGIES, RunSpec, methods
    from tlmat.experiments.selection import FitSpec
    from tlmat.models import registry
    from tlmat.training.config import TrainConfig

    architectures = {}
    for name in registry.names():
        a = registry.get(name)
        rows = [(name, {}), *a.presets.items()]
        architectures[name] = {
            "summary": a.summary,
            "reference": a.reference,
            "foundation": a.foundation,
            "package": a.package,
            "rows": [_row(label, name, dict(settings)) for label, settings in rows],
        }
    published = {
        source: {
            "architecture": name,
            "description": (entry := registry.get(name).sources[source]).description,
            "location": entry.location,
            "sha256": entry.sha256,
        }
        for source, name in registry.sources().items()
    }
    return {
        "architectures": architectures,
        "published": published,
        "strategies": list(STRATEGIES),
        "methods": list(methods()),
        "scratch_model": SCRATCH_MODEL,
        "default_strategies": list(DEFAULT_STRATEGIES),
        "settings": {  # the keys a --config file may hold, besides the training settings
            spec.__name__: list(spec.model_fields) for spec in (RunSpec, FitSpec, TrainConfig)
        },
        "choices": {  # the training settings that take one of a few values
            name: list(typing.get_args(field.annotation))
            for name, field in TrainConfig.model_fields.items()
            if typing.get_origin(field.annotation) is typing.Literal
        },
    }


def text(entries: dict[str, Any]) -> str:
    """The catalogue as the JSON file holds it."""
    return json.dumps(entries, indent=1, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    catalogue.PATH.write_text(text(build()))
    print(f"catalogue → {catalogue.PATH}")
