"""tlmat fit: the choice by cross-validation inside the training data, within a budget,
on real perovskites; the test data read once, after the choice, and unable to change it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from tlmat.cli import app
from tlmat.experiments.selection import Candidate, FitSpec, default_candidates, select_model

#: the cheapest real candidates: the shipped CGCNN's pooled features + MLP or ridge, and
#: scratch
CHEAP = ["features+mlp [tlmat/mp-eform-cgcnn]", "features+ridge [tlmat/mp-eform-cgcnn]"]


@pytest.fixture(scope="module")
def perov_sets(data: Path, tmp_path_factory) -> tuple[Path, Path, Path]:
    """300 Castelli perovskites to train on, 100 to test on, and the same 100 with their
    heat_ref shuffled (CSV with a CIF column)."""
    folder = tmp_path_factory.mktemp("perov")
    rows = pd.read_csv(data / "perov_5" / "train.csv.gz", nrows=300)
    rows[["material_id", "cif", "heat_ref"]].to_csv(folder / "train.csv", index=False)
    test = pd.read_csv(data / "perov_5" / "test.csv.gz", nrows=100)[
        ["material_id", "cif", "heat_ref"]
    ]
    test.to_csv(folder / "test.csv", index=False)
    test["heat_ref"] = np.random.default_rng(0).permutation(test["heat_ref"].to_numpy())
    test.to_csv(folder / "shuffled.csv", index=False)
    return folder / "train.csv", folder / "test.csv", folder / "shuffled.csv"


def test_candidates_parse_and_default() -> None:
    assert Candidate.parse("features+mlp [chgnet/0.3.0]") == Candidate(
        "features+mlp", "chgnet/0.3.0"
    )
    assert Candidate.parse("full tlmat/mp-eform-cgcnn").label == "full [tlmat/mp-eform-cgcnn]"
    for bad in ("scratch [chgnet/0.3.0]", "full", "features+rf [chgnet/0.3.0]"):
        with pytest.raises(ValueError):
            Candidate.parse(bad)
    labels = [c.label for c in default_candidates(["runs/mine/model.pt"])]
    assert "scratch" in labels and "features+mlp [chgnet/0.3.0]" in labels
    assert "features+ridge [chgnet/0.3.0]" in labels
    assert "full [runs/mine/model.pt]" in labels
    spec = FitSpec(data="x.csv", target="y", candidates=CHEAP)
    assert [c.label for c in spec.chosen_candidates()] == [*CHEAP, "scratch"]


def test_fit_chooses_by_validation_within_its_budget_and_predict_gives_sigma(
    perov_sets, tmp_path: Path
) -> None:
    """The acceptance run: 300 perovskites, the CLI, inside its budget; the chosen one is
    the lowest CV MAE; the model folder gives σ through tlmat predict."""
    train, test, _ = perov_sets
    run_dir, budget = tmp_path / "fit", 4.0
    args = ["fit", str(train), "-t", "heat_ref", "--unit", "eV/cell", "--test", str(test)]
    args += ["--budget", str(budget), "--folds", "3", "--ensemble", "2", "--epochs", "40"]
    args += ["--run-dir", str(run_dir), "--cache-dir", str(tmp_path / "cache")]
    args += [f"--candidate={c}" for c in CHEAP]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads((run_dir / "report.json").read_text())
    assert report["seconds"] <= budget * 60
    ran = {c["label"]: c["cv_mae_mean"] for c in report["candidates"] if c["cv_mae"]}
    assert set(ran) == {*CHEAP, "scratch"} and all(
        len(c["cv_mae"]) == 3 for c in report["candidates"]
    )
    assert report["chosen"] == min(ran, key=ran.get)
    assert set(report["test"]) == {"chosen", "scratch"}
    assert report["calibration"]["calibrated"] and report["calibration"]["n"] == 300
    assert f"★ {report['chosen']}" in " ".join(result.output.split())
    # the gain over scratch on the same folds, when scratch did not win
    gain = report["gain_over_scratch"]
    assert (gain is None) == (report["chosen"] == "scratch")
    if gain is not None:
        assert gain["relative_ci"][0] <= gain["relative"] <= gain["relative_ci"][1]
    out = tmp_path / "predictions.csv"
    predicted = CliRunner().invoke(
        app, ["predict", str(run_dir / "model"), str(test), "-o", str(out)]
    )
    assert predicted.exit_code == 0, predicted.output
    table = pd.read_csv(out)
    sigma = table["sigma (eV/cell)"]
    assert len(table) == 100 and (sigma > 0).all()
    # the folder's model is the one scored in the report
    error = np.abs(table["heat_ref (eV/cell)"] - pd.read_csv(test)["heat_ref"]).mean()
    assert error == pytest.approx(report["test"]["chosen"]["mae"], rel=1e-5)


def test_the_test_data_cannot_change_the_choice(perov_sets, tmp_path: Path, monkeypatch) -> None:
    """The test file is read only after the choice is made, and shuffling its targets
    leaves the folds' scores and the chosen method unchanged."""
    from tlmat.data.dataset import Reading

    train, test, shuffled = perov_sets
    said: list[str] = []
    load = Reading.load

    def logged_load(self, sources, *args, **kwargs):
        said.append(f"read {sources}")
        return load(self, sources, *args, **kwargs)

    monkeypatch.setattr(Reading, "load", logged_load)
    results = []
    for name, held_out in (("a", test), ("b", shuffled)):
        spec = FitSpec(
            data=str(train), test=str(held_out), target="heat_ref", budget=10, folds=2,
            ensemble=2, candidates=CHEAP, run_dir=tmp_path / name, cache_dir=tmp_path / "cache",
            epochs=5,
        )  # fmt: skip
        results.append(select_model(spec, said.append))
        chosen_at = next(i for i, s in enumerate(said) if s.startswith("chosen by"))
        reads = [i for i, s in enumerate(said) if str(held_out) in s]
        assert reads and min(reads) > chosen_at
        said.clear()
    first, second = results
    assert first.chosen == second.chosen
    assert [r.maes for r in first.rows] == [r.maes for r in second.rows]
    assert first.test["chosen"]["mae"] != second.test["chosen"]["mae"]
