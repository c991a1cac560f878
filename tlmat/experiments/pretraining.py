"""Sources pretrained inside a benchmark, with the target's test materials held out.

A transfer score means nothing if the source saw the test materials. A pretrained source
of a benchmark is therefore trained on its own data *minus* every entry whose id, or
whose reduced formula (any polymorph, Krawczuk & Venturi), belongs to the target's held-out
materials. What was removed is written to ``pretrain.json`` beside the model, with the
pretraining-set size that Hoffmann et al.'s error-vs-pretraining-size curve needs.

A finished source is reused when its specification and held-out set are unchanged; an
interrupted one resumes from its last checkpoint; a changed one is refused rather than
overwritten.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from tlmat.data import Split, composition_disjoint, load_dataset, random_split, subsample
from tlmat.data.dataset import default_cache_dir
from tlmat.datasets import resolve
from tlmat.experiments.runspec import RunSpec, run
from tlmat.io.table import join_labels
from tlmat.models.registry import model_config
from tlmat.training import TrainConfig
from tlmat.training.rundir import record, replaced, write_json

logger = logging.getLogger("tlmat")

#: the architecture sources are pretrained with unless told: CGCNN of the size of the
#: published Materials Project models (64/4/32)
DEFAULT_MODEL = "cgcnn-mp"


class PretrainConfig(BaseModel):
    """How to pretrain a source: data, target, size and training settings.

    Example (Lee & Asahi's 10k formation-energy source)::

        data: mp_cgcnn_36k/mp_cgcnn_36k.csv.gz
        target: formation_energy_per_atom
        unit: eV/atom
        size: 10000
        max_abs_target: 5.0      # drop the |E_f| > 5 eV/atom MP artefacts
        training: {epochs: 12, batch_size: 128}
    """

    model_config = ConfigDict(extra="forbid")

    data: str
    #: optional label-only table joined to ``data`` on ``join_on``
    labels: str | None = None
    join_on: str = "material_id"
    target: str
    unit: str = ""
    #: structures to pretrain on (drawn after the exclusions); ``None``: all that remain
    size: int | None = Field(None, ge=10)
    max_abs_target: float | None = None
    #: what of the target's held-out materials to remove: same ids, same reduced formulas
    exclude: list[Literal["ids", "formulas"]] = Field(default_factory=lambda: ["ids", "formulas"])
    #: the architecture to pretrain: a name (``schnet``), a preset (``cgcnn-mp``,
    #: ``schnet-arch1``) or a mapping ``{architecture: alignn, hidden_features: 64}``
    model: str | dict[str, Any] = DEFAULT_MODEL
    val_fraction: float = 0.05
    test_fraction: float = 0.05
    seed: int = 0
    training: dict[str, Any] = Field(default_factory=dict)


def table_path(spec: str, labels: str | None, join_on: str, cache_dir: Path | None) -> Path:
    """The structure table of a config entry, joined to its label table when it has one."""
    path = resolve(spec)
    if labels is None:
        return path
    return join_labels(
        path, resolve(labels), join_on, (cache_dir or default_cache_dir()) / "joined"
    )


def _held_out_digest(ids: list[str], formulas: list[str]) -> str:
    return hashlib.sha256(json.dumps([sorted(ids), sorted(formulas)]).encode()).hexdigest()


def spec_hash(spec: PretrainConfig, held_out_ids: list[str], held_out_formulas: list[str]) -> str:
    """What decides a pretrained source: its settings and the held-out materials removed."""
    return hashlib.sha256(
        (spec.model_dump_json() + _held_out_digest(held_out_ids, held_out_formulas)).encode()
    ).hexdigest()[:16]


#: settings earlier versions recorded under another name: old key → (key, old → new value);
#: ``architecture: cgcnn/formation-energy-per-atom`` (a fresh network shaped like that
#: checkpoint) became the preset ``model: cgcnn-mp`` of the same shape
RENAMED_SPEC = {"architecture": ("model", {"cgcnn/formation-energy-per-atom": "cgcnn-mp"})}


def _renamed(recorded: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in recorded.items():
        if key in RENAMED_SPEC:
            key, values = RENAMED_SPEC[key]
            value = values.get(value, value)
        out[key] = value
    return out


def pretrained_summary(
    spec: PretrainConfig, held_out_ids: list[str], held_out_formulas: list[str], folder: Path
) -> dict[str, Any] | None:
    """``folder``'s ``pretrain.json`` when it was written for these settings and held-out
    materials (the summary outlives the weights, which results folders do not keep). A
    summary recording a setting under its earlier name counts when its hash proves the
    same held-out materials and the renamed settings equal these."""
    try:
        done = json.loads((folder / "pretrain.json").read_text())
    except (OSError, ValueError):
        return None
    if done.get("spec_hash") == spec_hash(spec, held_out_ids, held_out_formulas):
        return done
    recorded = done.get("spec")
    if not isinstance(recorded, dict) or _renamed(recorded) == recorded:
        return None
    # the hash of the settings as then recorded, with these held-out materials
    then = json.dumps(recorded, separators=(",", ":")) + _held_out_digest(
        held_out_ids, held_out_formulas
    )
    same_held_out = hashlib.sha256(then.encode()).hexdigest()[:16] == done.get("spec_hash")
    return done if same_held_out and _renamed(recorded) == spec.model_dump() else None


def pretrain_source(
    spec: PretrainConfig,
    held_out_ids: list[str],
    held_out_formulas: list[str],
    folder: Path,
    cache_dir: Path | None = None,
) -> Path:
    """Pretrain (or reuse) a source in ``folder``; returns its ``model.pt``."""
    digest = spec_hash(spec, held_out_ids, held_out_formulas)
    model_file, summary_file = folder / "model.pt", folder / "pretrain.json"
    if model_file.exists():
        done = json.loads(summary_file.read_text()) if summary_file.exists() else {}
        if done.get("spec_hash") == digest:
            return model_file
        raise ValueError(
            f"{folder} holds a source pretrained with other settings or another held-out "
            "set; give this source a new name or delete that folder"
        )
    settings = model_config(spec.model).graph_settings()
    dataset = load_dataset(
        table_path(spec.data, spec.labels, spec.join_on, cache_dir),
        settings,
        [spec.target],
        cache_dir=cache_dir,
        progress=True,
    )
    y = dataset.targets[spec.target]
    keep = np.isfinite(y)
    if spec.max_abs_target is not None:
        keep &= np.abs(y) <= spec.max_abs_target
    n_valid = int(keep.sum())
    by_id = np.zeros(len(dataset), dtype=bool)
    if "ids" in spec.exclude:
        held = set(held_out_ids)
        by_id = np.array([i in held for i in dataset.ids])
    by_formula = np.zeros(len(dataset), dtype=bool)
    if "formulas" in spec.exclude:
        by_formula = ~composition_disjoint(dataset.formulas, held_out_formulas)
    keep &= ~by_id & ~by_formula
    indices = np.flatnonzero(keep)
    if spec.size is not None:
        if spec.size > len(indices):
            raise ValueError(
                f"pretraining size {spec.size} exceeds the {len(indices)} structures left "
                "after removing the held-out materials"
            )
        indices = np.sort(subsample(indices, spec.size, spec.seed))
    # counts, not fractions: 1 - 0.05 - 0.05 is 0.8999… and would ask for one too many
    n_val, n_test = (
        round(spec.val_fraction * len(indices)),
        round(spec.test_fraction * len(indices)),
    )
    inner = random_split(len(indices), (len(indices) - n_val - n_test, n_val, n_test), spec.seed)
    split = Split(indices[inner.train], indices[inner.val], indices[inner.test])
    logger.info("pretraining %s on %d structures", folder.name, len(split.train))
    result = run(
        _run_spec(spec, folder, _saved_split(folder, split, dataset), cache_dir, digest),
        dataset=dataset,
    )
    summary = {
        "spec": spec.model_dump(),
        "spec_hash": digest,
        "source_data": dataset.source,
        "n_valid": n_valid,
        "n_excluded_same_id": int((by_id & np.isfinite(y)).sum()),
        "n_excluded_same_formula": int((by_formula & ~by_id & np.isfinite(y)).sum()),
        "n_held_out_materials": len(held_out_ids),
        "n_pretrain": len(split.train),
        "n_val": len(split.val),
        "n_test": len(split.test),
        "test": result.test,
        "epochs": result.epochs,
        "seconds": result.seconds,
    }
    record(folder, summary_file.name)
    write_json(summary_file, summary)
    return model_file


def _run_spec(spec: PretrainConfig, folder: Path, split: Path, cache_dir, digest: str) -> RunSpec:
    """The RunSpec of a source's pretraining: its model from scratch on its split, with
    every training setting given (a source's epochs do not scale with its size)."""
    config = TrainConfig(
        target=spec.target,
        unit=spec.unit,
        seed=spec.seed,
        progress_bar=False,
        **{"batch_size": 128, "plateau_patience": 3, "early_stopping_patience": 6} | spec.training,
    )
    return RunSpec(
        data=str(table_path(spec.data, spec.labels, spec.join_on, cache_dir)),
        split=split,
        model=spec.model,
        training=TrainConfig.model_validate(config.model_dump()),
        run_dir=folder,
        zero_shot=False,
        cache_dir=cache_dir,
        provenance={"pretrained_for_benchmark": folder.name, "spec_hash": digest},
    )


def _saved_split(folder: Path, split: Split, dataset) -> Path:
    """The pretraining split as ids, in the source's folder, which its RunSpec names."""
    path = folder / "pretrain-split.json"
    folder.mkdir(parents=True, exist_ok=True)
    record(folder, path.name)
    with replaced(path) as tmp:
        split.save(tmp, dataset.ids)
    return path
