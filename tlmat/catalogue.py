"""Every name a user types — architectures and their presets, pretrained sources,
strategies and methods — and the facts ``tlmat models`` prints, without importing torch.

Importing torch takes 1–2 s and torch_geometric 4–5 s, so a misspelt ``--model cgcn`` or a
missing file would otherwise be said only after them. The names of the registries below
the data layer (architectures, published sources, strategies) are kept in
``catalogue.json``, written from the registries themselves by
``python -m tlmat.experiments.catalogue``; tests/test_catalogue.py fails when it is out of
date. The shipped sources and the original CGCNN files are read where they live (their
model cards and the dataset registry), which needs no torch either.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from functools import cache
from pathlib import Path
from typing import Any

from tlmat.datasets import REGISTRY, data_dir
from tlmat.hints import did_you_mean

PATH = Path(__file__).resolve().parent / "catalogue.json"

#: Sources tlmat pretrained once, leakage-free, and ships: one folder each with
#: ``model.pt``, its model card (``card.json``, ``card.md``) and the ids and reduced
#: formulas it was trained on (``training.csv.gz``); built by ``benchmarks/sources.py``.
SHIPPED_DIR = Path(__file__).resolve().parent / "pretrained"


@cache
def load() -> dict[str, Any]:
    """The catalogue as written: ``architectures`` (name → summary, reference, foundation,
    package, rows of the models table), ``published`` (source → architecture, description,
    location, sha256), ``strategies``, ``methods``, ``scratch_model``,
    ``default_strategies``, ``settings`` (``RunSpec``, ``FitSpec``, ``TrainConfig`` → their
    fields) and ``choices`` (training setting → the values it takes)."""
    return json.loads(PATH.read_text())


@cache
def shipped() -> dict[str, dict]:
    """The shipped tlmat sources, ``tlmat/<folder>`` → model card."""
    cards = sorted(SHIPPED_DIR.glob("*/card.json"))
    return {f"tlmat/{card.parent.name}": json.loads(card.read_text()) for card in cards}


def shipped_folder(name: str) -> Path:
    """The folder of a shipped tlmat source (``tlmat/mp-eform-cgcnn``)."""
    if name not in shipped():
        raise ValueError(f"unknown tlmat source {name!r}; shipped: {', '.join(shipped())}")
    return SHIPPED_DIR / name.removeprefix("tlmat/")


def cgcnn_files() -> dict[str, Any]:
    """The original CGCNN models known by name (``cgcnn/band-gap`` …) → registry entry."""
    return {name: entry for name, entry in REGISTRY.items() if entry.architecture}


def model_names() -> list[str]:
    """Every ``--model`` value: architecture names, then their presets."""
    architectures = load()["architectures"]
    presets = [row["label"] for a in architectures.values() for row in a["rows"][1:]]
    return [*architectures, *presets]


def source_names() -> list[str]:
    """Every registered source, in the order the hub tries them: published foundation
    models, shipped tlmat sources, original CGCNN files."""
    return [*load()["published"], *shipped(), *cgcnn_files()]


def unknown_model(name: str, architectures: list[str], presets: list[str]) -> ValueError:
    """The error of a model name that is no architecture and no preset, with the closest."""
    hint = did_you_mean(str(name), [*architectures, *presets])
    return ValueError(
        f"unknown model {name!r}{hint}; architectures: {', '.join(architectures)}; "
        f"presets: {', '.join(presets)}"
    )


def unknown_source(name: str | Path, known: list[str]) -> FileNotFoundError:
    """The error of a source that is neither a file nor a registered name, with the
    closest names."""
    hint = did_you_mean(str(name), known)
    return FileNotFoundError(
        f"{name}: neither a file nor a registered model{hint} ({', '.join(known)})"
    )


def check_model(name: str | None) -> None:
    """A ValueError naming the closest models when ``name`` is none of them."""
    known = model_names()
    if name is None or name in known:
        return
    architectures = list(load()["architectures"])
    raise unknown_model(name, architectures, known[len(architectures) :])


def check_source(name: str | Path | None) -> None:
    """A FileNotFoundError naming the closest sources when ``name`` is neither a
    registered source nor an existing file or folder."""
    known = source_names()
    if name is None or str(name) in known or Path(name).exists():
        return
    raise unknown_source(name, known)


def split_candidate(text: str) -> tuple[str, str | None]:
    """``"full [tlmat/mp-eform-cgcnn]"`` (or ``"full tlmat/mp-eform-cgcnn"``, or
    ``"scratch"``) as its strategy and source (None when it names none)."""
    strategy, _, source = text.replace("[", " ").replace("]", " ").strip().partition(" ")
    return strategy, source.strip() or None


def check_methods(names: Iterable[str], kind: str = "strategy") -> None:
    """A ValueError naming the closest methods for each unknown one of ``names``."""
    known = load()["methods"]
    for name in names:
        if name not in known:
            raise ValueError(
                f"unknown {kind} {name!r}{did_you_mean(name, known)}; choose from "
                f"{', '.join(known)}"
            )


def check_settings(path: str | Path, spec: str = "RunSpec") -> None:
    """A ValueError listing every key of the YAML settings file ``path`` that neither
    ``spec`` (``RunSpec`` or ``FitSpec``) nor the training settings know (top level or
    under ``training:``), with the closest keys, and every value outside a setting's
    choices; a model, source or strategy it names is checked as on the command line.
    What needs the full reading (types, ranges, a file that is no YAML mapping) is left
    to it."""
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError):
        return
    if not isinstance(data, dict):
        return
    known, choices = load()["settings"], load()["choices"]
    nested = data.get("training") if isinstance(data.get("training"), dict) else {}
    items = [(key, value, known[spec] + known["TrainConfig"]) for key, value in data.items()]
    items += [(key, value, known["TrainConfig"]) for key, value in nested.items()]
    problems = []
    for key, value, allowed in items:
        if key not in allowed:
            problems.append(f"{key}: unknown setting{did_you_mean(str(key), allowed)}")
        elif key in choices and value not in choices[key]:
            allowed_values = ", ".join(map(repr, choices[key]))
            problems.append(f"{key}: {value!r} is not one of {allowed_values}")
    if problems:
        raise ValueError(f"invalid {spec} settings in {path}:\n  " + "\n  ".join(problems))
    for key, check in (("model", check_model), ("source", check_source)):
        if isinstance(data.get(key), str):
            check(data[key])
    if isinstance(data.get("strategy"), str):
        check_methods([data["strategy"]])


def local_copy(location: str) -> bool:
    """Whether a published source's ``$TLMAT_DATA_DIR/…`` location is on this machine."""
    root = data_dir()
    relative = location.removeprefix("$TLMAT_DATA_DIR/")
    return root is not None and relative != location and (root / relative).exists()
