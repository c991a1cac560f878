"""One name space for "a model by name": every place that loads a model by what the
user typed (``--source``, ``tlmat predict NAME``, ``tlmat.load_model``, a grid's
source) resolves it here, in this order:

1. a published model an architecture loads from its own package (``chgnet/0.3.0``);
2. a source tlmat pretrained and ships, checked against its model card's SHA-256
   (``tlmat/mp-eform-cgcnn``);
3. a published CGCNN file, fetched (cached, checksummed) or found in the data folder
   (``cgcnn/formation-energy-per-atom``);
4. a path: a tlmat checkpoint (``model.pt``), an original CGCNN ``.pth.tar``, or a run
   folder (its ``model.pt``). An ensemble folder is named as such: it is read where
   ensembles are taken (``tlmat.uncertainty.load_ensemble``).

Checkpoints are read with ``torch.load(weights_only=True)`` and their format version is
checked (:func:`tlmat.models.checkpoint.load_checkpoint`).
"""

from __future__ import annotations

import csv
import gzip
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tlmat.catalogue import (  # noqa: F401 (SHIPPED_DIR: the hub's name for older imports)
    SHIPPED_DIR,
    cgcnn_files,
    shipped,
    shipped_folder,
    unknown_source,
)
from tlmat.datasets import fetch
from tlmat.models import registry
from tlmat.models.checkpoint import TrainedModel, load_checkpoint

#: Pretrained sources known by name (``tlmat models`` lists them).
PRETRAINED = cgcnn_files()


def training_materials(name: str) -> dict[str, list[tuple[str, str]]]:
    """A shipped source's (id, reduced formula) pairs per part (train, val, test): all
    three were seen while it was built (the validation set picked its epoch)."""
    parts: dict[str, list[tuple[str, str]]] = {"train": [], "val": [], "test": []}
    with gzip.open(shipped_folder(name) / "training.csv.gz", "rt") as handle:
        for row in csv.DictReader(handle):
            parts[row["part"]].append((row["material_id"], row["reduced_formula"]))
    return parts


def seen_materials(name: str, ids: list[str], formulas: list[str]) -> tuple[int, int]:
    """How many of ``ids`` a shipped source trained or validated on, and how many of the
    reduced ``formulas`` it saw (any polymorph): (0, 0) for a clean source."""
    from pymatgen.core import Composition

    parts = training_materials(name)
    seen = parts["train"] + parts["val"]
    seen_ids = {i for i, _ in seen}
    seen_formulas = {f for _, f in seen}
    n_ids = sum(i in seen_ids for i in ids)
    n_formulas = sum(Composition(f).reduced_formula in seen_formulas for f in set(formulas))
    return n_ids, n_formulas


def _load_shipped(name: str) -> TrainedModel:
    folder, card = shipped_folder(name), shipped()[name]
    model_file = folder / "model.pt"
    digest = hashlib.sha256(model_file.read_bytes()).hexdigest()
    if digest != card["model_sha256"]:
        raise ValueError(
            f"{model_file}: SHA-256 {digest} differs from its model card's "
            f"{card['model_sha256']}; the file was changed or damaged, reinstall tlmat"
        )
    trained = load_checkpoint(model_file)
    trained.provenance.update(name=name, model_card=str(folder / "card.md"), sha256=digest)
    return trained


#: what a name stands for (:func:`resolve`)
Kind = Literal["published", "shipped", "cgcnn-file", "checkpoint", "run", "ensemble"]


@dataclass(frozen=True)
class Resolved:
    """What a model name stands for: its kind and, for files and folders, the path."""

    name: str
    kind: Kind
    path: Path | None = None


def names() -> list[str]:
    """Every registered model name, in the order :func:`resolve` tries them."""
    return [*registry.sources(), *shipped(), *PRETRAINED]


def resolve(name: str | Path) -> Resolved:
    """What ``name`` stands for, without loading it (a missing file or unknown name is
    :class:`FileNotFoundError` listing the registered names)."""
    text = str(name)
    if text in registry.sources():
        return Resolved(text, "published")
    if text in shipped():
        return Resolved(text, "shipped", shipped_folder(text) / "model.pt")
    if text in PRETRAINED:
        return Resolved(text, "cgcnn-file")
    path = Path(name)
    if path.is_dir():
        if (path / "ensemble.json").is_file():
            return Resolved(text, "ensemble", path)
        if (path / "model.pt").is_file():
            return Resolved(text, "run", path / "model.pt")
        raise FileNotFoundError(f"{path}: a folder without model.pt or ensemble.json")
    if path.is_file():
        return Resolved(text, "checkpoint", path)
    raise unknown_source(name, names())


def load_source(source: str | Path) -> TrainedModel:
    """The model ``source`` names (:func:`resolve`): a published or shipped model, a
    published CGCNN file, a tlmat checkpoint, an original CGCNN ``.pth.tar`` or a run
    folder. An ensemble folder is refused here, saying where ensembles are used."""
    found = resolve(source)
    if found.kind == "published":
        return registry.load_published(found.name)
    if found.kind == "shipped":
        return _load_shipped(found.name)
    if found.kind == "ensemble":
        raise ValueError(
            f"{source} is an ensemble folder: predict, evaluate, embed and screen take it "
            "as it is; as a source for transfer, name one member (e.g. "
            f"{Path(source) / 'member-0'})"
        )
    if found.kind == "cgcnn-file":
        entry = PRETRAINED[found.name]
        trained = load_checkpoint(fetch(found.name))
        trained.provenance["name"] = found.name
        # the original files do not say what they predict: the registry does
        trained.target = trained.target.model_copy(
            update={
                "name": entry.target or trained.target.name,
                "unit": entry.unit,
                "log10_of": entry.log10_of,
                "classes": entry.classes,
            }
        )
        return trained
    return load_checkpoint(found.path)
