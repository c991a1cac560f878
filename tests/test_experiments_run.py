"""A run is a library object: a RunSpec reads the same from flags, a flat or nested YAML
file and a run's own record; run() reuses a finished run; a comparison is a list of
RunSpecs, each of which repeats its run from its record alone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from tlmat.cli import app
from tlmat.experiments import RunSpec, compare, run


def test_flat_and_nested_yaml_flags_and_the_record_are_one_spec(tmp_path: Path) -> None:
    flat, nested = tmp_path / "flat.yaml", tmp_path / "nested.yaml"
    flat.write_text("data: perov_5/val\ntarget: heat_ref\nlr: 0.01\nepochs: 5\n")
    nested.write_text("data: perov_5/val\ntraining: {target: heat_ref, lr: 0.01, epochs: 5}\n")
    a, b = RunSpec.from_yaml(flat), RunSpec.from_yaml(nested)
    assert a == b and a.training.lr == 0.01
    assert RunSpec.from_yaml(flat, epochs=9, strategy="scratch").training.epochs == 9
    (tmp_path / "record.yaml").write_text(a.to_yaml())
    assert RunSpec.from_yaml(tmp_path / "record.yaml") == a
    # settings left out stay unset, so that the defaults scaled with the data scale again
    assert "early_stopping_patience" not in yaml.safe_load(a.to_yaml())["training"]
    # overwrite is no setting of the run: its record read back reuses, never replaces
    assert "overwrite" not in yaml.safe_load(a.model_copy(update={"overwrite": True}).to_yaml())


@pytest.mark.parametrize(
    ("settings", "reason"),
    [
        ({"strategy": "full"}, "transfers a source: name one"),
        ({"source": "cgcnn/formation-energy-per-atom", "strategy": "full", "model": "schnet"},
         "model applies to strategy scratch"),
        ({"strategy": "fine"}, "'fine' is not one of scratch, full"),
        ({"loss": "gaussian_nll", "strategy": "features+rf", "source": "x"},
         "fits no network head"),
    ],
)  # fmt: skip
def test_settings_that_cannot_run_together_are_refused(settings: dict, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        RunSpec(data="perov_5/val", target="heat_ref", **settings)


def test_set_gives_any_setting_without_a_flag_of_its_own(perov60: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    args = ["train", str(perov60), "-t", "heat_ref", "--model", "cgcnn-small", "--epochs", "1",
            "--cache-dir", str(tmp_path / "cache")]  # fmt: skip
    done = runner.invoke(app, [*args, "--set", "plateau_patience=3", "--run-dir",
                               str(tmp_path / "run")])  # fmt: skip
    assert done.exit_code == 0, done.output
    recorded = RunSpec.from_yaml(tmp_path / "run" / "run.yaml")
    assert recorded.training.plateau_patience == 3
    assert (
        json.loads((tmp_path / "run" / "run.json").read_text())["command_config"][
            "plateau_patience"
        ]
        == 3
    )
    typo = runner.invoke(app, [*args, "--set", "plateau_patienc=3", "--run-dir",
                               str(tmp_path / "typo")])  # fmt: skip
    assert typo.exit_code == 1 and "did you mean 'plateau_patience'" in typo.output


def test_a_comparison_is_runspecs_that_repeat_from_their_records(
    perov60: Path, tmp_path: Path
) -> None:
    base = RunSpec(
        data=str(perov60),
        target="heat_ref",
        source="cgcnn/formation-energy-per-atom",
        epochs=2,
        batch_size=16,
        progress_bar=False,
        run_dir=tmp_path / "cmp",
        cache_dir=tmp_path / "cache",
    )
    result = compare(base, ("scratch", "full"), seeds=2)
    assert set(result.rows) >= {"scratch", "full", "zero-shot"}
    assert [len(v) for v in result.rows.values()] == [2] * len(result.rows)
    (record,) = (tmp_path / "cmp").glob("n*-s1/full/run.yaml")
    spec = RunSpec.from_yaml(record)
    assert spec.split == record.parent.parent / "split.json" and spec.training.seed == 1
    again = run(spec)  # the record alone repeats the run: here, the finished one
    scores = {k: v for k, v in result.rows["full"][1].items() if k != "val_mae"}
    assert again.reused and again.test == scores
