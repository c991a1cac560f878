"""Fault cases of models, ensembles and splits: nothing that mixes what should not be
mixed, or scores a model on what it trained on, passes without a refusal.

Every case uses real Castelli perovskites (perov_5) and asserts the exact outcome."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from tlmat.cli import app
from tlmat.data import Split, random_split
from tlmat.models import TargetSpec, TrainedModel
from tlmat.models.atom_features import load_atom_init
from tlmat.models.cgcnn import CGCNNConfig, build_cgcnn
from tlmat.training import TrainConfig

runner = CliRunner()


def said(result) -> str:
    """A command's output with rich's line wrapping undone."""
    return " ".join(result.output.split())


def small_cgcnn(seed: int = 0) -> TrainedModel:
    torch.manual_seed(seed)
    config = CGCNNConfig(atom_fea_len=32, n_conv=2, h_fea_len=32)
    return TrainedModel(build_cgcnn(config, load_atom_init()), TargetSpec())


def quick(**overrides) -> TrainConfig:
    base = dict(target="heat_ref", unit="eV/cell", epochs=1, batch_size=16, progress_bar=False,
                early_stopping_patience=None, scheduler="none")  # fmt: skip
    return TrainConfig(**{**base, **overrides})


def _table(data: Path, tmp_path: Path, name: str, part: str = "val", limit: int = 60) -> Path:
    """The first ``limit`` perovskites of perov_5/``part`` as a CSV with a CIF column."""
    from tlmat.io import read_records, write_csv

    table = tmp_path / f"{name}.csv"
    write_csv(read_records(data / "perov_5" / f"{part}.csv.gz", ["heat_ref"], limit=limit), table)
    return table


# --- split files: a test id that also trains, or an id listed twice, is refused ----------


def _split_file(tmp_path: Path, parts: dict[str, list[str]]) -> Path:
    path = tmp_path / "split.json"
    path.write_text(json.dumps(parts))
    return path


def test_split_with_test_ids_in_training_is_refused(perovskites, tmp_path) -> None:
    ids = perovskites.ids
    leaked = ids[30:35]  # five test structures that also train
    path = _split_file(tmp_path, {"train": ids[:30] + leaked, "val": ids[30:40],
                                  "test": ids[40:60]})  # fmt: skip
    with pytest.raises(ValueError, match="5 ids are in both 'train' and 'val'"):
        Split.load(path, ids)
    path = _split_file(tmp_path, {"train": ids[:30] + ids[40:45], "val": ids[30:40],
                                  "test": ids[40:60]})  # fmt: skip
    with pytest.raises(ValueError, match="5 ids are in both 'train' and 'test'") as refused:
        Split.load(path, ids)
    assert ", ".join(ids[40:45]) in str(refused.value) and str(path) in str(refused.value)


def test_split_with_an_id_listed_twice_is_refused(perovskites, tmp_path) -> None:
    ids = perovskites.ids
    path = _split_file(tmp_path, {"train": [*ids[:30], ids[3]], "val": ids[30:40],
                                  "test": ids[40:60]})  # fmt: skip
    with pytest.raises(ValueError, match=f"1 ids are listed more than once in 'train': {ids[3]}"):
        Split.load(path, ids)
    clean = _split_file(tmp_path, {"train": ids[:30], "val": ids[30:40], "test": ids[40:60]})
    assert len(Split.load(clean, ids).train) == 30  # a clean split still loads


def test_cli_train_refuses_an_overlapping_split_in_one_line(data, tmp_path) -> None:
    import pandas as pd

    table = _table(data, tmp_path, "perov60")
    ids = pd.read_csv(table)["id"].astype(str).tolist()
    path = _split_file(tmp_path, {"train": ids[:30], "val": ids[30:40],
                                  "test": ids[40:60] + ids[:5]})  # fmt: skip
    result = runner.invoke(app, ["train", str(table), "-t", "heat_ref", "--split", str(path),
                                 "--epochs", "1", "--run-dir", str(tmp_path / "run"),
                                 "--cache-dir", str(tmp_path / "cache")])  # fmt: skip
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert f"error: {path}: 5 ids are in both 'train' and 'test': {', '.join(ids[:5])}" in said(
        result
    )
    assert not (tmp_path / "run" / "model.pt").exists()


# --- checkpoints: a newer format, or a config at odds with its graph settings -----------


def _edited_checkpoint(tmp_path: Path, edit) -> Path:
    """A small CGCNN checkpoint, then ``edit`` applied to its stored dictionary."""
    from tlmat.models.checkpoint import save_checkpoint

    path = save_checkpoint(small_cgcnn(), tmp_path / "model.pt")
    payload = torch.load(path, weights_only=True)
    edit(payload)
    torch.save(payload, path)
    return path


def _predict(data: Path, checkpoint: Path, tmp_path: Path):
    table = _table(data, tmp_path, "five", limit=5)
    return runner.invoke(app, ["predict", str(checkpoint), str(table), "-o",
                               str(tmp_path / "pred.csv"), "--cache-dir",
                               str(tmp_path / "cache")])  # fmt: skip


def test_checkpoint_of_a_newer_format_is_refused(data, tmp_path) -> None:
    from tlmat.models import CheckpointError, load_checkpoint

    path = _edited_checkpoint(tmp_path, lambda payload: payload.update(checkpoint_version=99))
    expected = "written by a newer tlmat (format 99; this one reads ≤ 3): upgrade tlmat"
    with pytest.raises(CheckpointError, match=re.escape(expected)):
        load_checkpoint(path)
    result = _predict(data, path, tmp_path)
    assert result.exit_code == 1 and f"error: {path}: {expected}" in said(result)
    assert "Traceback" not in result.output and not (tmp_path / "pred.csv").exists()


def test_checkpoint_whose_config_and_graph_settings_disagree_is_refused(data, tmp_path) -> None:
    from tlmat.models import CheckpointError, load_checkpoint

    path = _edited_checkpoint(tmp_path, lambda payload: payload["config"].update(cutoff=6.0))
    with pytest.raises(CheckpointError, match=re.escape("cutoff = 6.0, the checkpoint's")):
        load_checkpoint(path)
    result = _predict(data, path, tmp_path)
    assert result.exit_code == 1, result.output
    assert "graph setting cutoff = 6.0, the checkpoint's graph_settings say 8.0" in said(result)
    assert not (tmp_path / "pred.csv").exists()
    same = _edited_checkpoint(tmp_path, lambda payload: None)  # an unedited one still loads
    assert load_checkpoint(same).model.graph_settings.cutoff == 8.0


# --- ensembles: members that predict another target, or live outside the folder --------


def _member_split(seed: int):
    return random_split(60, (30, 15, 15), seed=seed)


def _small_member(seed: int):
    return small_cgcnn(seed), None


@pytest.fixture(scope="module")
def tiny_ensemble(perovskites, tmp_path_factory) -> Path:
    """Two small CGCNN members (1 epoch) on splits of the first 60 perovskites."""
    from tlmat.uncertainty import train_ensemble

    folder = tmp_path_factory.mktemp("models-ensemble") / "ens"
    train_ensemble(_small_member, perovskites, _member_split, quick(), folder, n_members=2)
    return folder


def _copy(folder: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(folder, tmp_path / "ens"))


def _retarget(checkpoint: Path, **target) -> None:
    """Make a member predict another target (as if trained on another column)."""
    payload = torch.load(checkpoint, weights_only=True)
    payload["target"].update(target)
    torch.save(payload, checkpoint)


def test_ensemble_member_with_another_target_and_unit_is_refused(
    data, tiny_ensemble, tmp_path
) -> None:
    from tlmat.uncertainty import load_ensemble

    folder = _copy(tiny_ensemble, tmp_path)
    _retarget(folder / "member-1" / "model.pt", name="formation_energy_per_atom", unit="eV/atom")
    expected = ("member member-1 predicts another target than the ensemble (ensemble.json): "
                "name 'formation_energy_per_atom' (the ensemble: 'heat_ref'); unit 'eV/atom' "
                "(the ensemble: 'eV/cell')")  # fmt: skip
    with pytest.raises(ValueError, match=re.escape(expected)):
        load_ensemble(folder)
    result = _predict(data, folder, tmp_path)
    assert result.exit_code == 1 and expected in said(result), result.output
    assert "Traceback" not in result.output and not (tmp_path / "pred.csv").exists()


def test_ensemble_member_normalised_another_way_is_refused(tiny_ensemble, tmp_path) -> None:
    """A manifest from before ``target`` was recorded: members are compared with the first."""
    from tlmat.uncertainty import load_ensemble

    folder = _copy(tiny_ensemble, tmp_path)
    manifest = json.loads((folder / "ensemble.json").read_text())
    del manifest["target"]
    (folder / "ensemble.json").write_text(json.dumps(manifest))
    assert len(load_ensemble(folder).members) == 2  # the members agree: loaded
    _retarget(folder / "member-1" / "model.pt", log10=True)
    with pytest.raises(ValueError, match=re.escape("log10 True (the ensemble: False)")) as refused:
        load_ensemble(folder)
    assert "member member-1" in str(refused.value) and "member-0/model.pt" in str(refused.value)


@pytest.mark.parametrize("where", ["parent", "absolute"])
def test_ensemble_member_outside_its_folder_is_refused(tiny_ensemble, tmp_path, where) -> None:
    from tlmat.uncertainty import load_ensemble

    folder = _copy(tiny_ensemble, tmp_path)
    outside = Path(shutil.copytree(folder / "member-1", tmp_path / "elsewhere"))
    name = "../elsewhere" if where == "parent" else str(outside)
    manifest = json.loads((folder / "ensemble.json").read_text())
    manifest["members"][1] = name
    (folder / "ensemble.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=re.escape(f"member {name!r} lies outside the ensemble")):
        load_ensemble(folder)


# --- evaluation and recalibration on what the members trained or validated on ------------


def _evaluate(folder: Path, table: Path, tmp_path: Path, *extra: str):
    return runner.invoke(app, ["evaluate", str(folder), str(table), "-t", "heat_ref",
                               "--cache-dir", str(tmp_path / "cache"), "--figures",
                               str(tmp_path / "figures"), "--overwrite", *extra])  # fmt: skip


def _members_saw(folder: Path) -> set[str]:
    seen = set()
    for member in ("member-0", "member-1"):
        split = json.loads((folder / member / "split.json").read_text())
        seen |= set(split["train"]) | set(split["val"])
    return seen


@pytest.mark.parametrize("recalibrate", [True, False], ids=["recalibrate", "evaluate"])
def test_evaluation_on_what_the_members_saw_is_refused(
    data, tiny_ensemble, tmp_path, recalibrate
) -> None:
    folder = _copy(tiny_ensemble, tmp_path)
    before = (folder / "ensemble.json").read_bytes()
    table = _table(data, tmp_path, "trained-on")  # the members' own 60 perovskites
    seen = _members_saw(folder)
    extra = ["--recalibrate"] if recalibrate else []
    result = _evaluate(folder, table, tmp_path, *extra)
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    text = said(result)
    assert (
        f"error: {table}: {len(seen)} of its 60 structures were in a member's training "
        "or validation set (member-0: 45, member-1: 45; their split.json), e.g." in text
    )
    assert "pass --allow-seen" in text
    assert (folder / "ensemble.json").read_bytes() == before, "no σ scale was fitted"


def test_allow_seen_recalibrates_and_records_it(data, tiny_ensemble, tmp_path) -> None:
    folder = _copy(tiny_ensemble, tmp_path)
    table = _table(data, tmp_path, "trained-on")
    seen = _members_saw(folder)
    result = _evaluate(folder, table, tmp_path, "--recalibrate", "--allow-seen")
    assert result.exit_code == 0, result.output
    assert f"warning: {len(seen)} of the 60 structures of {table} were in a member's" in said(
        result
    )
    record = json.loads((folder / "ensemble.json").read_text())["recalibration"]["seen"]
    assert record["n"] == len(seen) and record["of"] == 60 and record["allowed"] is True
    assert record["members"] == {"member-0": 45, "member-1": 45}
    assert set(record["examples"]) <= seen


def test_held_out_data_is_recalibrated_without_a_seen_record(data, tiny_ensemble, tmp_path):
    folder = _copy(tiny_ensemble, tmp_path)
    table = _table(data, tmp_path, "held-out", part="test", limit=20)
    result = _evaluate(folder, table, tmp_path, "--recalibrate")
    assert result.exit_code == 0, result.output
    assert "warning" not in said(result)
    assert "seen" not in json.loads((folder / "ensemble.json").read_text())["recalibration"]


@pytest.mark.parametrize("name", ["magpie+pls", "magpie+lasso"])
def test_a_linear_baseline_does_not_extrapolate_without_bound(name, data: Path) -> None:
    """Found in the Lee & Asahi bulk-modulus grid (N = 250, seed 0): PLS on Magpie
    descriptors predicted -16,646 log10 GPa for Co (mp-54) and three Fe-Co-Ni alloys, one
    of whose descriptors (standard deviation 4e-7 over the 250 training materials) lay 4
    million standard deviations out; the linear baselines now see descriptors scaled to
    the training range and clipped to it."""
    from types import SimpleNamespace

    import numpy as np
    import pandas as pd
    from pymatgen.core import Structure

    from tlmat.experiments.baselines import fit_predict

    grid = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "lee-asahi-bulk"
    job = json.loads((grid / "common" / "n250-s0" / "scratch" / "result.json").read_text())
    table = pd.read_csv(data / "mp_elasticity_3k" / "mp_elasticity_3k.csv.gz")
    table = table.set_index("material_id")
    train, test = job["split_ids"]["train"], ["mp-54", "mp-2090", "mp-18695", "mp-1418"]
    formulas = [
        Structure.from_str(table.loc[i, "cif"], "cif").reduced_formula for i in [*train, *test]
    ]
    y = np.log10(table.loc[train, "K_VRH"].to_numpy())  # log10 GPa
    dataset = SimpleNamespace(formulas=formulas)
    rows = np.arange(len(train)), np.arange(len(train), len(formulas))
    predicted, _ = fit_predict(name, dataset, *rows, y, seed=0)
    spread = y.max() - y.min()
    assert (predicted > y.min() - spread).all() and (predicted < y.max() + spread).all()
