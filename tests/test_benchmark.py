"""Benchmark grids: every job runs once, a killed grid resumes, the report is written."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from tlmat.experiments.benchmark import (
    BenchmarkConfig,
    changed_jobs,
    jobs,
    method_configs,
    run_benchmark,
)


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
    report = run_benchmark(config, tmp_path / "results", tmp_path / "cache")
    done = [j for j in jobs(config) if (j.folder(tmp_path / "results") / "result.json").exists()]
    assert len(done) == len(jobs(config)) == 2 * 2 * 3
    assert {j.source for j in jobs(config) if j.method == "scratch"} == {"common"}
    manifest = json.loads(
        (jobs(config)[0].folder(tmp_path / "results") / "result.json").read_text()
    )
    for key in ("config", "job", "data_fingerprint", "split_ids", "wall_seconds", "peak_rss_mib"):
        assert key in manifest
    assert len(manifest["split_ids"]["train"]) == 20
    text = report.read_text()
    assert "## paired t-test vs scratch" in text and "| full [cgcnn-mp] |" in text
    # the same seed draws the same training subset for every method
    a, b = (
        json.loads((tmp_path / "results" / s / "n20-s1" / m / "result.json").read_text())[
            "split_ids"
        ]["train"]
        for s, m in (("common", "scratch"), ("cgcnn-mp", "full"))
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
    lee_asahi = BenchmarkConfig.from_yaml(
        Path(__file__).parents[1] / "benchmarks" / "configs" / "lee-asahi-bulk.yaml"
    ).quick()
    spec = lee_asahi.sources["mp-10k"].pretrain
    assert spec.size == 400 and spec.training["epochs"] == 1
    # the full-data source is shipped, not pretrained again (not even in --quick)
    assert lee_asahi.sources["mp-all"].checkpoint == "tlmat/mp-eform-cgcnn"
    assert lee_asahi.sources["mp-all"].pretrain is None
    assert lee_asahi.sources["cgcnn-mp"].saw_test  # the leaky checkpoint stays marked


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
    report = (tmp_path / "res" / "report" / "report.md").read_text()
    for method in ("base", "scratch", "full [cgcnn-mp]", "features+rf [cgcnn-mp]"):
        assert f"| {method} |" in report
    assert "| zero-shot+linear [cgcnn-mp] |" in report


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
    predictions = pd.read_csv(tmp_path / "res" / "common" / "n40-s2" / "base" / "predictions.csv")
    folds = list(KFold(5, shuffle=True, random_state=18012019).split(np.arange(1265)))
    assert sorted(predictions["id"].astype(str)) == sorted(str(i) for i in folds[2][1])


@pytest.mark.parametrize(
    "name",
    [
        "perovskites",
        "phonons",
        "dielectric",
        "tc",
        "lee-asahi-bandgap",
        "lee-asahi-bulk",
        "lee-asahi-dielectric",
        "lee-asahi-recipe",
        "hoffmann-pbe-hse",
        "foundation-perovskites",
        "foundation-phonons",
        "foundation-dielectric",
    ],
)
def test_shipped_configs_are_valid(name: str) -> None:
    config = BenchmarkConfig.from_yaml(
        Path(__file__).parents[1] / "benchmarks" / "configs" / f"{name}.yaml"
    )
    assert config.sizes and config.methods and config.sources


def test_pretrained_sources_never_see_the_test_materials(
    data: Path, small_csv: Path, tmp_path: Path
) -> None:
    """Sources pretrained inside the grid lose every test id and test formula; two
    pretraining sizes give the error-vs-pretraining-size table; a finished source is
    reused, and a changed one is refused rather than overwritten."""
    from tlmat.io import read_records, write_csv

    source_csv = tmp_path / "source.csv"  # contains all 80 target materials
    write_csv(read_records(data / "perov_5" / "val.csv.gz", ["heat_all"], limit=400), source_csv)

    def pretrained(size: int) -> dict:
        spec = {"data": str(source_csv), "target": "heat_all", "size": size, "seed": 1}
        return {"pretrain": {**spec, "training": {"epochs": 1, "batch_size": 32}}}

    raw = config_for(
        small_csv,
        sizes=[20],
        methods=["scratch", "full"],
        sources={"p100": pretrained(100), "p200": pretrained(200)},
        executor={"kind": "debug"},
    )
    results = tmp_path / "results"
    report = run_benchmark(BenchmarkConfig(**raw), results, tmp_path / "cache")

    test_ids = pd.read_csv(results / "common" / "n20-s0" / "scratch" / "predictions.csv")["id"]
    formulas = {
        r.formula for r in read_records(small_csv, ["heat_ref"]).records if r.id in set(test_ids)
    }
    summary_sizes = {}
    for name, size in (("p100", 100), ("p200", 200)):
        summary = json.loads((results / "sources" / name / "pretrain.json").read_text())
        summary_sizes[name] = summary["n_pretrain"]
        assert summary["n_excluded_same_id"] == 20  # the 20 test materials are in source.csv
        assert summary["n_pretrain"] + summary["n_val"] + summary["n_test"] == size
        seen = json.loads((results / "sources" / name / "split.json").read_text())
        used = {i for part in seen.values() for i in part}
        assert not used & set(test_ids)
        source_formulas = {
            r.formula for r in read_records(source_csv, ["heat_all"]).records if r.id in used
        }
        assert not source_formulas & formulas
    text = report.read_text()
    assert "## Sources" in text and "## test MAE vs pretraining-set size" in text
    assert "| full (heat_all), N=20 |" in text  # one curve: what the sources learned
    assert (results / "report" / "pretraining_scaling.png").exists()

    stamp = (results / "sources" / "p100" / "pretrain.json").stat().st_mtime_ns
    run_benchmark(BenchmarkConfig(**raw), results, tmp_path / "cache")  # reused, not retrained
    assert (results / "sources" / "p100" / "pretrain.json").stat().st_mtime_ns == stamp
    # a committed results folder keeps summaries, not weights or ledgers: with every job
    # finished its sources are described from their summaries, not pretrained again
    for name in ("model.pt", ".tlmat-files.json", "checkpoints"):
        shutil.rmtree(results / "sources" / "p100" / name, ignore_errors=True)
        (results / "sources" / "p100" / name).unlink(missing_ok=True)
    run_benchmark(BenchmarkConfig(**raw), results, tmp_path / "cache")
    assert (results / "sources" / "p100" / "pretrain.json").stat().st_mtime_ns == stamp
    described = json.loads((results / "sources.json").read_text())
    assert described["p100"]["n_pretrain"] == summary_sizes["p100"]
    # what a source's entry says beside its weights decides no finished job's numbers
    labelled = {"methods": ["full", "head-only"], "saw_test": "a note", "series": "heat"}
    raw["sources"]["p100"].update(labelled)
    assert changed_jobs(BenchmarkConfig(**raw), results) == {}
    raw["sources"]["p100"]["pretrain"]["size"] = 150
    with pytest.raises(ValueError, match="other settings"):
        run_benchmark(BenchmarkConfig(**raw), results, tmp_path / "cache")


def test_fewer_seeds_for_large_sizes(small_csv: Path) -> None:
    config = BenchmarkConfig(
        **config_for(small_csv, sizes=[10, 20, 40], seeds=[0, 1, 2], fewer_seeds={20: 2, 40: 1})
    )
    per_size = {n: sorted({j.seed for j in jobs(config) if j.size == n}) for n in (10, 20, 40)}
    assert per_size == {10: [0, 1, 2], 20: [0, 1], 40: [0]}


def test_source_needs_one_origin(small_csv: Path) -> None:
    with pytest.raises(ValueError, match="exactly one"):
        BenchmarkConfig(**config_for(small_csv, sources={"x": {"methods": ["full"]}}))


def test_concatenated_sources_join_their_members_features(small_csv: Path, tmp_path) -> None:
    """A ``concat`` source runs the feature methods on its members' tables side by side
    (each computed once), runs no network method, and is marked when a member saw test
    materials."""
    from tlmat.experiments.benchmark import OUTPUTS, grid_data, source_outputs
    from tlmat.models.pooling import MEAN
    from tlmat.transfer.features import statistic_columns

    sources = {
        "eform": "cgcnn/formation-energy-per-atom",
        "gap": {"checkpoint": "cgcnn/band-gap", "saw_test": "planted for this test"},
        "both": {"concat": ["eform", "gap"]},
    }
    config = BenchmarkConfig(
        **config_for(small_csv, sizes=[20], seeds=[0], methods=["full", "features+rf"],
                     sources=sources, executor={"kind": "debug"})
    )  # fmt: skip
    assert {j.method for j in jobs(config) if j.source == "both"} == {"features+rf"}
    assert config.sources["both"].saw_test.startswith("joins gap")
    root = tmp_path / "results"
    run_benchmark(config, root, tmp_path / "cache")
    dataset, _ = grid_data(config, tmp_path / "cache")
    joined, names, _ = source_outputs(config, "both", root, None, dataset)
    members = [np.load(root / m / OUTPUTS) for m in ("eform", "gap")]
    np.testing.assert_array_equal(joined, np.hstack([m["features"] for m in members]))
    assert names[0].startswith("eform/") and names[-1].startswith("gap/")
    assert not (root / "both" / OUTPUTS).exists()  # nothing stored twice
    done = json.loads((root / "both" / "n20-s0" / "features+rf" / "result.json").read_text())
    one = json.loads((root / "eform" / "n20-s0" / "features+rf" / "result.json").read_text())
    means = statistic_columns(names, MEAN).sum()
    assert done["n_features"] == means == 2 * one["n_features"] < joined.shape[1]
    assert json.loads((root / "sources.json").read_text())["both"]["concat"] == ["eform", "gap"]
    for bad, match in (
        ({"both": {"concat": ["eform", "nowhere"]}}, "not a checkpoint"),
        ({"both": {"concat": ["eform", "gap"], "methods": ["full"]}}, "feature methods"),
    ):
        with pytest.raises(ValueError, match=match):
            BenchmarkConfig(**config_for(small_csv, sources={**sources, **bad}))


def test_disjoint_sub_splits_protocol(small_csv: Path, tmp_path: Path) -> None:
    """Krawczuk & Venturi: 40 → 2×20 → 4×10, disjoint within a size, nested across."""
    config = BenchmarkConfig(
        **config_for(
            small_csv,
            sizes=[10, 20, 40],
            disjoint_pool=40,
            methods=["base"],
            executor={"kind": "debug"},
        )
    )
    assert sorted((j.size, j.seed) for j in jobs(config)) == [
        (10, 0), (10, 1), (10, 2), (10, 3), (20, 0), (20, 1), (40, 0)
    ]  # fmt: skip
    run_benchmark(config, tmp_path / "res", tmp_path / "cache")

    def train_ids(size: int, block: int) -> set[str]:
        path = tmp_path / "res" / "common" / f"n{size}-s{block}" / "base" / "result.json"
        return set(json.loads(path.read_text())["split_ids"]["train"])

    quarters = [train_ids(10, b) for b in range(4)]
    halves = [train_ids(20, b) for b in range(2)]
    assert all(len(q) == 10 for q in quarters) and len(set.union(*quarters)) == 40
    assert quarters[0] | quarters[1] == halves[0] and quarters[2] | quarters[3] == halves[1]
    assert halves[0] | halves[1] == train_ids(40, 0)


@pytest.mark.integration
def test_model_zoo_grid_pretrains_and_transfers_every_architecture(
    data: Path, tmp_path: Path
) -> None:
    """The shipped model-zoo config on real data, shrunk: a source of each architecture
    pretrained on MP formation energies (300 rows of mp_cgcnn_36k that include materials
    of the target) without the target's test materials, then scratch, full and
    frozen-embedding transfer of every architecture, scored on the same materials."""
    from tlmat.models import load_checkpoint, registry

    target = pd.read_csv(data / "mp_elasticity_3k" / "mp_elasticity_3k.csv.gz", nrows=160)
    mp = pd.read_csv(data / "mp_cgcnn_36k" / "mp_cgcnn_36k.csv.gz")
    shared = mp[mp["material_id"].isin(target["material_id"])]
    assert len(shared) > 50  # the two tables share materials: removal has work to do
    pretrain = pd.concat([shared, mp.head(300 - len(shared))]).drop_duplicates("material_id")
    target.to_csv(tmp_path / "bulk.csv", index=False)
    pretrain.to_csv(tmp_path / "mp.csv", index=False)

    path = Path(__file__).parents[1] / "benchmarks" / "configs" / "model-zoo-bulk.yaml"
    config = BenchmarkConfig.from_yaml(path).quick()
    config = config.model_copy(
        update={
            "data": str(tmp_path / "bulk.csv"),
            "sizes": [60],
            "test_size": 40,
            "val_size": 20,
            "sources": {
                name: source.model_copy(
                    update={
                        "pretrain": source.pretrain.model_copy(
                            update={"data": str(tmp_path / "mp.csv"), "size": 120}
                        )
                    }
                )
                for name, source in config.sources.items()
            },
        }
    )
    report = run_benchmark(config, tmp_path / "res", tmp_path / "cache").read_text()
    architectures = set()
    for name in config.sources:
        folder = tmp_path / "res" / "sources" / name
        architectures.add(load_checkpoint(folder / "model.pt").model.architecture)
        summary = json.loads((folder / "pretrain.json").read_text())
        assert summary["n_excluded_same_id"] > 0  # shared test materials were removed
        for method in ("full", "freeze-embedding"):
            assert f"| {method} [{name}] |" in report
    assert architectures == set(registry.names(foundation=False))
    for method in ("base", "scratch", "scratch-schnet", "scratch-alignn", "scratch-cgat"):
        assert f"| {method} |" in report
    # every network saw the same test materials
    tests = {
        tuple(pd.read_csv(p)["id"]) for p in (tmp_path / "res").glob("*/n60-s0/*/predictions.csv")
    }
    assert len(tests) == 1


def test_a_method_runs_only_up_to_its_max_size(small_csv: Path) -> None:
    config = BenchmarkConfig(
        **config_for(
            small_csv,
            methods=["scratch", {"name": "full", "strategy": "full", "max_size": 20}],
        )
    )
    sizes = {(j.method, j.size) for j in jobs(config)}
    assert sizes == {("scratch", 20), ("scratch", 40), ("full", 20)}


def test_a_methods_training_settings_reach_its_jobs_only(small_csv: Path, tmp_path) -> None:
    """Lee & Asahi's recipe (SGD, tanh) trains its jobs; scratch keeps the grid's Adam."""
    methods = [
        "scratch",
        {"name": "lee-asahi-scratch", "strategy": "lee-asahi-scratch", "training": {"epochs": 1}},
        {"name": "full-sgd", "strategy": "full", "training": {"optimizer": "sgd", "lr": 0.005}},
    ]
    overrides = {"sizes": [20], "seeds": [0], "methods": methods}
    config = BenchmarkConfig(**config_for(small_csv, executor={"kind": "debug"}, **overrides))
    root = tmp_path / "results"
    report = run_benchmark(config, root, tmp_path / "cache")
    recorded = {
        j.method: json.loads((j.folder(root) / "result.json").read_text()) for j in jobs(config)
    }
    settings = {m: {k: r["config"][k] for k in ("optimizer", "lr", "normalization", "batch_size",
                                               "epochs")} for m, r in recorded.items()}  # fmt: skip
    assert settings == {
        "scratch": {"optimizer": "adam", "lr": 1e-3, "normalization": "standard",
                    "batch_size": 16, "epochs": 1},
        "lee-asahi-scratch": {"optimizer": "sgd", "lr": 0.01, "normalization": "tanh",
                              "batch_size": 256, "epochs": 1},
        "full-sgd": {"optimizer": "sgd", "lr": 0.005, "normalization": "standard",
                     "batch_size": 16, "epochs": 1},
    }  # fmt: skip
    assert recorded["lee-asahi-scratch"]["job"]["source"] == "common"
    assert np.isfinite(recorded["lee-asahi-scratch"]["test"]["mae"])
    text = report.read_text()
    assert "| lee-asahi-scratch |" in text and "| full-sgd [cgcnn-mp] |" in text
    # a method's settings are part of its jobs' signature: the same ones are the same
    # jobs, changing them is refused
    assert changed_jobs(config, root) == {}
    methods[2]["training"]["lr"] = 0.01
    with pytest.raises(ValueError, match="other settings"):
        run_benchmark(BenchmarkConfig(**config_for(small_csv, **overrides)), root)


@pytest.mark.parametrize(
    ("training", "message"),
    [
        ({"lrr": 0.01}, "cannot set 'lrr'.*allowed: .*lr"),
        ({"seed": 3}, "cannot set 'seed': the grid sets target, unit, seed"),
        ({"optimizer": "sgdd"}, "optimizer"),
    ],
)
def test_a_methods_unknown_training_settings_are_refused(
    small_csv: Path, training: dict, message: str
) -> None:
    method = {"name": "full-x", "strategy": "full", "training": training}
    with pytest.raises(ValueError, match=message):
        BenchmarkConfig(**config_for(small_csv, methods=["scratch", method]))


def test_lee_asahi_presets_expand_to_the_papers_recipe(small_csv: Path) -> None:
    shorter = {"name": "lee-asahi-150", "strategy": "lee-asahi", "training": {"epochs": 150}}
    methods = ["scratch", "lee-asahi-scratch", "lee-asahi", shorter]
    config = BenchmarkConfig(**config_for(small_csv, sizes=[20], seeds=[0], methods=methods))
    expanded = {m.name: m for m in method_configs(config.methods)}
    recipe = {"optimizer": "sgd", "momentum": 0.9, "weight_decay": 0.0, "batch_size": 256,
              "normalization": "tanh", "scheduler": "step", "step_milestones": (100,),
              "step_factor": 0.1, "epochs": 500, "early_stopping_patience": None}  # fmt: skip
    assert expanded["lee-asahi-scratch"].strategy == "scratch"
    assert expanded["lee-asahi-scratch"].training == {**recipe, "lr": 0.01}
    assert expanded["lee-asahi"].strategy == "full"
    assert expanded["lee-asahi"].training == {**recipe, "lr": 0.005}
    assert expanded["lee-asahi-150"].training == {**recipe, "lr": 0.005, "epochs": 150}
    assert {(j.source, j.method) for j in jobs(config)} == {
        ("common", "scratch"), ("common", "lee-asahi-scratch"),
        ("cgcnn-mp", "lee-asahi"), ("cgcnn-mp", "lee-asahi-150"),
    }  # fmt: skip
    # --quick shortens a method's own epochs too
    quick = {m.name: m for m in method_configs(config.quick().methods)}
    assert quick["lee-asahi"].training["epochs"] == 2
    assert quick["lee-asahi"].training["lr"] == 0.005


def test_source_outputs_are_computed_once_as_each_job_would(small_csv: Path, tmp_path) -> None:
    """Features and raw predictions of every structure, computed once per source for the
    zero-shot rows and the features+MLP/RF jobs, equal what a job computes alone."""
    from tlmat.experiments.benchmark import OUTPUTS, grid_data
    from tlmat.models.pooling import MEAN, MOMENTS
    from tlmat.models.prediction import predict
    from tlmat.transfer.features import extract_features, statistic_columns
    from tlmat.transfer.sources import load_source

    config = BenchmarkConfig(
        **config_for(small_csv, sizes=[20], seeds=[0], methods=["features+rf"],
                     executor={"kind": "debug"})
    )  # fmt: skip
    root = tmp_path / "results"
    run_benchmark(config, root, tmp_path / "cache")
    stored = np.load(root / "cgcnn-mp" / OUTPUTS)
    dataset, fixed = grid_data(config, tmp_path / "cache")
    assert stored["ids"].tolist() == dataset.ids
    source = load_source("cgcnn/formation-energy-per-atom")
    alone = extract_features(source, dataset, fixed.test, "layers", statistics=MOMENTS)
    np.testing.assert_allclose(stored["features"][fixed.test], alone, rtol=1e-5, atol=1e-5)
    # a features+ job reads the mean columns: the features it would extract alone
    means = stored["features"][fixed.test][:, statistic_columns(stored["names"], MEAN)]
    mean_alone = extract_features(source, dataset, fixed.test, "layers")
    np.testing.assert_allclose(means, mean_alone, rtol=1e-5, atol=1e-5)
    raw = predict(source, dataset, fixed.test).reshape(len(fixed.test), -1)
    np.testing.assert_allclose(stored["predictions"][fixed.test], raw, rtol=1e-5, atol=1e-6)


def test_ray_executor_gives_the_local_numbers(small_csv: Path, tmp_path: Path) -> None:
    pytest.importorskip("ray", reason="executor kind ray needs the optional extra tlmat[ray]")
    overrides = {"sizes": [20], "seeds": [0], "methods": ["scratch", "features+rf"]}
    maes = {}
    for kind in ("debug", "ray"):
        executor = {"kind": kind, "workers": 2}
        config = BenchmarkConfig(**config_for(small_csv, executor=executor, **overrides))
        root = tmp_path / kind
        run_benchmark(config, root, tmp_path / "cache")
        maes[kind] = {
            str(j): json.loads((j.folder(root) / "result.json").read_text())["test"]["mae"]
            for j in jobs(config)
        }
    # the same jobs, the same numbers (to the last bits of a random forest's sums)
    assert len(maes["ray"]) == 2 and maes["ray"] == pytest.approx(maes["debug"], rel=1e-12)


def test_source_summary_recorded_under_an_earlier_setting_name(tmp_path: Path) -> None:
    """Summaries written when the pretrained network was named ``architecture:
    cgcnn/formation-energy-per-atom`` still describe a source now named ``model:
    cgcnn-mp``, but only for the held-out materials their hash was computed with."""
    import hashlib

    from tlmat.experiments.pretraining import (
        PretrainConfig,
        _held_out_digest,
        pretrained_summary,
    )

    spec = PretrainConfig(data="mp_cgcnn_36k/mp_cgcnn_36k.csv.gz", target="band_gap")
    then = {
        ("architecture" if k == "model" else k): (
            "cgcnn/formation-energy-per-atom" if k == "model" else v
        )
        for k, v in spec.model_dump().items()
    }
    ids, formulas = ["mp-1", "mp-2"], ["Cs", "NaCl"]
    text = json.dumps(then, separators=(",", ":")) + _held_out_digest(ids, formulas)
    summary = {"spec": then, "spec_hash": hashlib.sha256(text.encode()).hexdigest()[:16]}
    (tmp_path / "pretrain.json").write_text(json.dumps(summary))
    assert pretrained_summary(spec, ids, formulas, tmp_path) == summary
    assert pretrained_summary(spec, ids[:1], formulas, tmp_path) is None  # other held-out
    other = PretrainConfig(data="mp_cgcnn_36k/mp_cgcnn_36k.csv.gz", target="band_gap", seed=1)
    assert pretrained_summary(other, ids, formulas, tmp_path) is None


def test_a_config_that_is_no_yaml_mapping_names_the_file(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from tlmat.cli import app

    config = tmp_path / "grid.yaml"
    config.write_text('!!python/object/apply:os.system ["echo hi"]\n')
    result = CliRunner().invoke(app, ["benchmark", str(config)])
    said = " ".join(result.output.split())
    assert result.exit_code == 1 and f"error: {config}: not valid YAML settings" in said
    assert "internal error" not in said


def test_extrapolation_protocol_tests_on_the_lowest_targets(small_csv: Path, tmp_path) -> None:
    from tlmat.experiments.benchmark import grid_data

    config = BenchmarkConfig(**config_for(small_csv, protocol="extrapolation", test_size=0.1))
    dataset, fixed = grid_data(config, tmp_path / "cache")
    y = dataset.targets["heat_ref"]
    assert len(fixed.test) == 8  # 10 % of 80 perovskites
    seen = np.concatenate([fixed.train, fixed.val])
    assert y[fixed.test].max() <= y[seen].min()  # eV/cell: none of those targets is seen
    assert len(np.intersect1d(seen, fixed.test)) == 0 and len(fixed.val) == 10
    with pytest.raises(ValueError, match="draws its own test set"):
        grid_data(
            BenchmarkConfig(**config_for(small_csv, protocol="extrapolation", test=str(small_csv))),
            tmp_path / "cache",
        )


def test_where_keeps_only_rows_inside_other_columns_ranges(data: Path, tmp_path) -> None:
    """Lee & Asahi's non-metal formation energies: a grid of one column restricted by
    another (here the perovskites without an indirect gap, 114 of the first 120)."""
    from tlmat.experiments.benchmark import grid_data
    from tlmat.io import read_records, write_csv

    path = tmp_path / "perov120.csv"
    write_csv(
        read_records(data / "perov_5" / "val.csv.gz", ["heat_ref", "ind_gap"], limit=120), path
    )
    raw = config_for(path, sizes=[20], seeds=[0], test_size=10, where={"ind_gap": [None, 0.0]})
    dataset, split = grid_data(BenchmarkConfig(**raw), tmp_path / "cache", every_model=False)
    gaps = dataset.targets["ind_gap"]
    used = np.concatenate([split.train, split.val, split.test])
    assert (gaps[used] <= 0.0).all()
    assert (gaps > 0.0).sum() >= 5  # rows that were there to drop
    with pytest.raises(ValueError, match="matbench protocol keeps every row"):
        grid_data(BenchmarkConfig(**{**raw, "protocol": "matbench"}), tmp_path / "cache")
