"""Benchmark grids: every job runs once, a killed grid resumes, the report is written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from tlmat.evaluation.benchmark import BenchmarkConfig, jobs, run_benchmark


@pytest.fixture(scope="module")
def small_csv(data: Path, tmp_path_factory) -> Path:
    from tlmat.io import read_records, write_csv

    path = tmp_path_factory.mktemp("data") / "perov80.csv"
    write_csv(read_records(data / "perov_5" / "val.csv.gz", ["heat_ref"], limit=80), path)
    return path


def config_for(csv: Path, **overrides) -> dict:
    config = {
        "name": "tiny",
        "data": str(csv),
        "target": "heat_ref",
        "unit": "eV/cell",
        "sizes": [20, 40],
        "seeds": [0, 1],
        "val_size": 10,
        "test_size": 20,
        "methods": ["scratch", "full", "features+rf"],
        "training": {"epochs": 1, "batch_size": 16, "early_stopping_patience": None},
        "executor": {"kind": "local", "workers": 2},
    }
    config.update(overrides)
    return config


def test_grid_runs_every_job_and_reports(small_csv: Path, tmp_path: Path) -> None:
    config = BenchmarkConfig(**config_for(small_csv))
    reports = run_benchmark(config, tmp_path / "results", tmp_path / "cache")
    done = [j for j in jobs(config) if (j.folder(tmp_path / "results") / "result.json").exists()]
    assert len(done) == len(jobs(config)) == 2 * 2 * 3
    manifest = json.loads(
        (jobs(config)[0].folder(tmp_path / "results") / "result.json").read_text()
    )
    for key in ("config", "job", "data_fingerprint", "split_ids", "wall_seconds", "peak_rss_mib"):
        assert key in manifest
    assert len(manifest["split_ids"]["train"]) == 20
    assert "## paired t-test vs scratch" in reports[0].read_text()
    # the same seed draws the same training subset for every method
    a, b = (
        json.loads((tmp_path / "results" / "cgcnn-mp" / "n20-s1" / m / "result.json").read_text())[
            "split_ids"
        ]["train"]
        for m in ("scratch", "full")
    )
    assert a == b


def test_killed_grid_resumes(small_csv: Path, tmp_path: Path) -> None:
    config_path = tmp_path / "grid.yaml"
    config_path.write_text(
        yaml.safe_dump(
            config_for(
                small_csv, executor={"kind": "local", "workers": 1}, methods=["scratch", "full"]
            )
        )
    )
    results = tmp_path / "results"
    command = [
        sys.executable,
        "-m",
        "tlmat.cli",
        "benchmark",
        str(config_path),
        "--results",
        str(results),
        "--cache-dir",
        str(tmp_path / "cache"),
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 300
    while time.time() < deadline and len(list(results.rglob("result.json"))) < 2:
        time.sleep(0.5)
    process.kill()
    process.wait()
    finished = {p: p.stat().st_mtime_ns for p in results.rglob("result.json")}
    assert 2 <= len(finished) < 8, "the grid was meant to be interrupted part-way"

    subprocess.run(command, env=env, check=True, capture_output=True, timeout=600)
    after = list(results.rglob("result.json"))
    assert len(after) == 8
    assert all(p.stat().st_mtime_ns == t for p, t in finished.items())  # not redone


def test_quick_and_bad_configs(small_csv: Path, tmp_path: Path) -> None:
    shipped = BenchmarkConfig.from_yaml(
        Path(__file__).parents[1] / "benchmarks" / "configs" / "perovskites.yaml"
    )
    quick = shipped.quick()
    assert quick.sizes == [50, 100] and quick.seeds == [0]
    assert quick.training["epochs"] == 2
    with pytest.raises(ValueError, match="epochs"):
        BenchmarkConfig(**config_for(small_csv, epochs=3))


@pytest.mark.integration
def test_shipped_perovskite_config_runs_quick(tmp_path: Path) -> None:
    """The shipped config, end to end on the real CDVAE splits, with --quick."""
    from typer.testing import CliRunner

    from tlmat.cli import app

    config = Path(__file__).parents[1] / "benchmarks" / "configs" / "perovskites.yaml"
    result = CliRunner().invoke(
        app,
        [
            "benchmark",
            str(config),
            "--quick",
            "--results",
            str(tmp_path / "res"),
            "--cache-dir",
            str(tmp_path / "c"),
        ],
    )
    assert result.exit_code == 0, result.output
    report = (tmp_path / "res" / "cgcnn-mp" / "report" / "report.md").read_text()
    for method in ("base", "scratch", "full", "features+rf", "zero-shot"):
        assert f"| {method} |" in report


def test_matbench_protocol_tests_on_the_official_fold(data: Path, tmp_path: Path) -> None:
    from sklearn.model_selection import KFold

    config = BenchmarkConfig(
        name="phonons",
        data=str(data / "matbench_phonons" / "matbench_phonons.json.gz"),
        target="last phdos peak",
        protocol="matbench",
        sizes=[40],
        seeds=[2],
        val_size=20,
        methods=["base", "magpie+rf"],
        training={"epochs": 1},
        executor={"kind": "debug"},
    )
    run_benchmark(config, tmp_path / "res", tmp_path / "cache")
    predictions = pd.read_csv(tmp_path / "res" / "cgcnn-mp" / "n40-s2" / "base" / "predictions.csv")
    folds = list(KFold(5, shuffle=True, random_state=18012019).split(np.arange(1265)))
    assert sorted(predictions["id"].astype(str)) == sorted(str(i) for i in folds[2][1])


@pytest.mark.parametrize("name", ["perovskites", "phonons", "dielectric", "tc"])
def test_shipped_configs_are_valid(name: str) -> None:
    config = BenchmarkConfig.from_yaml(
        Path(__file__).parents[1] / "benchmarks" / "configs" / f"{name}.yaml"
    )
    assert config.sizes and config.methods and config.sources
