"""The command line end to end on small real datasets."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from tlmat.cli import app

runner = CliRunner()


def test_help_shows_examples() -> None:
    for command in ("info", "cache"):
        result = runner.invoke(app, [command, "--help"])
        assert result.exit_code == 0 and "Example" in result.output


def test_info_summarises_a_dataset(data: Path, tmp_path: Path) -> None:
    skipped = tmp_path / "skipped.csv"
    result = runner.invoke(
        app,
        [
            "info",
            str(data / "jarvis_tc_supercon" / "jarvis_tc_supercon_merged.csv.gz"),
            "--target",
            "Tc_K",
            "--skipped-csv",
            str(skipped),
        ],
    )
    assert result.exit_code == 0, result.output
    out = result.output
    assert "structures read" in out and "616" in out
    assert "Tc_K" in out and "missing target" in out and "440" in out
    assert skipped.read_text().splitlines()[0] == "where,id,reason,detail"
    assert len(skipped.read_text().splitlines()) == 441


def test_info_says_the_same_on_the_fast_read_as_on_the_pymatgen_path(
    data: Path, tmp_path: Path
) -> None:
    """info reads through the fast first read; --export (which needs the structures)
    through pymatgen: the same tables, skipped rows included."""
    source = str(data / "jarvis_tc_supercon" / "jarvis_tc_supercon_merged.csv.gz")
    fast = runner.invoke(app, ["info", source, "-t", "Tc_K"])
    export = tmp_path / "clean.csv"
    slow = runner.invoke(app, ["info", source, "-t", "Tc_K", "--export", str(export)])
    assert fast.exit_code == 0 and slow.exit_code == 0, fast.output + slow.output
    assert slow.output.startswith(fast.output) and "616 cleaned structures" in slow.output


def test_info_shows_each_targets_unit(data: Path) -> None:
    """A unit given per target is shown beside its statistics; without one, info says
    the file has none and where the dataset's documentation is."""
    source = str(data / "perov_5" / "val.csv.gz")
    args = ["info", source, "-t", "heat_ref", "-t", "dir_gap", "--limit", "50"]
    given = runner.invoke(app, [*args, "--unit", "heat_ref=eV/cell", "--unit", "eV"])
    assert given.exit_code == 0, given.output

    def units(output: str) -> dict[str, str]:  # target → its unit, from the first column
        cells = [line.split("│")[0].strip() for line in output.splitlines() if "│" in line]
        return dict(c[:-1].split(" (", 1) for c in cells if c.endswith(")"))

    assert units(given.output) == {"heat_ref": "eV/cell", "dir_gap": "eV"}, given.output
    bare = runner.invoke(app, args)
    unknown = list(units(bare.output).values())
    assert unknown == ["?", "?"] and "perov_5/SOURCE.md" in bare.output


def test_info_strict_fails_with_the_reason(cgcnn_folder: Path) -> None:
    path = cgcnn_folder / "1000050.cif"
    path.write_text("not a cif")
    result = runner.invoke(app, ["info", str(cgcnn_folder), "--strict"])
    assert result.exit_code == 1
    assert "id_prop.csv:line 2" in result.output and "unparsable" in result.output


def test_cache_builds_then_loads(data: Path, tmp_path: Path) -> None:
    args = [
        "cache",
        str(data / "cgcnn_sample_regression"),
        "--cache-dir",
        str(tmp_path),
        "--preset",
        "alignn",
    ]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    assert "10 graphs built" in first.output and "structures/s" in first.output
    second = runner.invoke(app, args)
    assert "10 graphs loaded from cache" in second.output


def test_cache_rejects_bad_settings(data: Path, tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        [
            "cache",
            str(data / "cgcnn_sample_regression"),
            "--cache-dir",
            str(tmp_path),
            "--cutoff",
            "-2",
        ],
    )
    assert result.exit_code == 1 and "cutoff" in result.output


def test_info_exports_the_cleaned_dataset(cgcnn_folder: Path, tmp_path: Path) -> None:
    (cgcnn_folder / "1000050.cif").write_text("not a cif")
    out = tmp_path / "clean.extxyz"
    result = runner.invoke(app, ["info", str(cgcnn_folder), "--export", str(out)])
    assert result.exit_code == 0 and "9 cleaned structures" in result.output
    from tlmat.io import read_records

    assert [r.id for r in read_records(out)] == [
        "1000041",
        "1101051",
        "1507756",
        "7206075",
        "9000046",
        "9009743",
        "9011050",
        "9011998",
        "9012304",
    ]
    again = runner.invoke(app, ["info", str(cgcnn_folder), "--export", str(out)])
    assert again.exit_code == 1 and "overwrite" in again.output


def test_version_and_bare_command() -> None:
    from tlmat import __version__

    assert runner.invoke(app, ["--version"]).output.strip() == f"tlmat {__version__}"
    assert "Commands" in runner.invoke(app, []).output


def test_help_and_version_load_no_heavy_library() -> None:
    """Start-up stays fast because `--help`, `--version` and every subcommand's help run
    without torch, PyG, Lightning, pymatgen or matminer (timed in benchmarks/startup.py)."""
    import subprocess
    import sys

    script = """
import sys
from typer.testing import CliRunner
from tlmat.cli import app
runner = CliRunner()
for args in (["--version"], ["--help"], *([c, "--help"] for c in sys.argv[1:])):
    result = runner.invoke(app, args)
    assert result.exit_code == 0, (args, result.output)
heavy = ("torch", "torch_geometric", "lightning", "pymatgen", "matminer", "sklearn", "ase")
print(",".join(sorted(m for m in heavy if m in sys.modules)))
"""
    names = [c.name or c.callback.__name__ for c in app.registered_commands]
    assert len(names) == 14
    out = subprocess.run(
        [sys.executable, "-c", script, *names], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "", f"imported at start-up: {out.stdout.strip()}"


def said(result) -> str:
    return " ".join(result.output.split())


def test_config_errors_name_the_field_the_value_and_what_is_allowed(
    perov60: Path, tmp_path: Path
) -> None:
    """Unknown keys and values outside a setting's choices are said before torch is
    imported, all at once; a value of the wrong type by the full reading."""
    config = tmp_path / "train.yaml"
    config.write_text("optimiser: adam\noptimizer: adm\nlr: 0.01\n")
    command = ["train", str(perov60), "-t", "heat_ref", "--config", str(config),
               "--run-dir", str(tmp_path / "run")]  # fmt: skip
    text = said(runner.invoke(app, command))
    assert f"invalid RunSpec settings in {config}" in text
    assert "optimizer: 'adm' is not one of 'adam', 'adamw', 'sgd'" in text
    assert "optimiser: unknown setting; did you mean 'optimizer'?" in text
    config.write_text("optimizer: adam\nlr: fast\n")
    result = runner.invoke(app, command)
    text = said(result)
    assert result.exit_code == 1 and f"invalid RunSpec settings in {config}" in text
    assert "(got 'fast')" in text and "errors.pydantic.dev" not in text


def test_unknown_target_lists_the_numeric_columns_and_close_matches(data: Path) -> None:
    result = runner.invoke(app, ["info", str(data / "perov_5" / "test.csv.gz"), "-t", "heat_reff"])
    text = said(result)
    assert result.exit_code == 1 and "no column 'heat_reff'" in text
    assert "numeric columns are heat_all, heat_ref, dir_gap, ind_gap" in text
    assert "did you mean 'heat_ref'?" in text


def test_repeated_skips_are_one_line_each_and_hints_name_real_options(
    cgcnn_folder: Path, caplog
) -> None:
    import logging

    from tlmat.io import read_records

    id_prop = cgcnn_folder / "id_prop.csv"
    lines = id_prop.read_text().splitlines()
    blanked = [f"{line.split(',')[0]}," for line in lines[1:7]]  # six rows without a target
    id_prop.write_text("\n".join(lines[:1] + blanked + lines[7:]) + "\n")
    with caplog.at_level(logging.WARNING, logger="tlmat"):
        result = read_records(cgcnn_folder, ["target"])
    assert result.log.n_skipped == 6 and len(result) == 4
    assert len(caplog.records) == 2  # the first, then one line that the rest are counted
    assert "further 'missing target' items are counted" in caplog.records[1].getMessage()
    for command in ("train", "finetune", "compare", "predict", "evaluate", "embed", "info"):
        help_text = said(runner.invoke(app, [command, "--help"]))
        assert "--disorder" in help_text, command  # the partial-occupancy hint's option
        assert "<bool>" not in help_text, command


def test_default_run_folder_inside_a_git_checkout_is_announced(tmp_path: Path, monkeypatch) -> None:
    import shutil
    import subprocess

    if shutil.which("git") is None:
        import pytest

        pytest.skip("git is not installed")
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    monkeypatch.chdir(tmp_path)
    Path("missing.csv").write_text("id,y\n")  # exists (checked first), holds no structure
    result = runner.invoke(app, ["train", "missing.csv", "-t", "y"])
    named = tmp_path.resolve() / "runs" / "train-y-cgcnn-mp"  # command, target, model
    assert f"results go to {named}, inside the git" in said(result)
    (tmp_path / ".gitignore").write_text("runs/\n")
    assert "inside the git" not in said(runner.invoke(app, ["train", "missing.csv", "-t", "y"]))
    own = runner.invoke(app, ["train", "missing.csv", "-t", "y", "--run-dir", "elsewhere"])
    assert "inside the git" not in said(own)


def test_inference_commands_honour_tlmat_cache_dir(data: Path, tmp_path: Path) -> None:
    sample = str(data / "cgcnn_sample_regression")
    model = "cgcnn/band-gap"
    for command in (
        ["predict", model, sample, "-o", str(tmp_path / "p.csv")],
        ["embed", model, sample, "-o", str(tmp_path / "e.npz")],
        ["evaluate", model, sample, "-t", "target"],
    ):
        cache = tmp_path / f"cache-{command[0]}"
        result = runner.invoke(app, command, env={"TLMAT_CACHE_DIR": str(cache)})
        assert result.exit_code == 0, result.output
        assert any(cache.rglob("*.npy")), f"{command[0]} did not use $TLMAT_CACHE_DIR"
    # evaluate's JSON says the unit of its errors
    assert '"unit": "eV"' in result.output and '"target": "band_gap"' in result.output


def _read_by_run(data: Path, cache: Path, **model) -> bool:
    """Whether a run of ``model`` (or ``source``) — the very read train and finetune do
    (:func:`tlmat.experiments.runspec.prepared_data`) — finds its graphs cached."""
    from tlmat.experiments import runspec as run

    run._DATA.clear()  # a dataset read earlier in this process is no cache hit
    spec = run.RunSpec(data=str(data), cache_dir=cache, training={"target": "target"}, **model)
    dataset, _ = run.prepared_data(spec, run.RunModels.of(spec).source_or_model, lambda _: None)
    return dataset.from_cache


def test_cache_prebuilds_what_train_reads(data: Path, tmp_path: Path) -> None:
    """After `tlmat cache --model NAME`, `tlmat train --model NAME` reads no structure:
    the cache holds its graph settings and its elements (a SchNet, a CGCNN preset)."""
    folder, cache = data / "cgcnn_sample_regression", tmp_path / "cache"
    args = ["cache", str(folder), "-t", "target", "--cache-dir", str(cache), "--workers", "1"]
    result = runner.invoke(app, [*args, "--model", "schnet-small", "--model", "cgcnn-small"])
    assert result.exit_code == 0, result.output
    assert result.output.count("10 graphs built") == 2
    assert _read_by_run(folder, cache, model="schnet-small")
    assert _read_by_run(folder, cache, model="cgcnn-small")
    assert not _read_by_run(folder, cache, model="alignn-small")  # never cached


def test_cache_by_default_serves_train_by_default(data: Path, tmp_path: Path) -> None:
    folder, cache = data / "cgcnn_sample_regression", tmp_path / "cache"
    args = ["cache", str(folder), "-t", "target", "--cache-dir", str(cache), "--workers", "1"]
    assert runner.invoke(app, args).exit_code == 0
    assert _read_by_run(folder, cache)  # no --model: the architecture train uses


def test_cache_prebuilds_what_finetune_reads(data: Path, tmp_path: Path) -> None:
    """A registered source (a shipped one, a published CGCNN file) and a checkpoint: the
    graphs of the model finetune starts from; sources that read alike share one cache."""
    folder, cache = data / "cgcnn_sample_regression", tmp_path / "cache"
    args = ["cache", str(folder), "-t", "target", "--cache-dir", str(cache), "--workers", "1"]
    sources = ["tlmat/mp-eform-cgcnn", "cgcnn/formation-energy-per-atom"]
    result = runner.invoke(app, [*args, "--model", sources[0], "--model", sources[1]])
    assert result.exit_code == 0, result.output
    assert "10 graphs built" in result.output and f"for {', '.join(sources)}:" in result.output
    assert _read_by_run(folder, cache, source=sources[0], strategy="full")
    checkpoint = data / "cgcnn_pretrained" / "pre-trained" / "band-gap.pth.tar"
    again = runner.invoke(app, [*args, "--model", str(checkpoint)])
    assert "10 graphs loaded from cache" in again.output, again.output


def test_cache_refuses_an_unknown_model_listing_the_known(data: Path, tmp_path: Path) -> None:
    folder = data / "cgcnn_sample_regression"
    result = runner.invoke(
        app, ["cache", str(folder), "--cache-dir", str(tmp_path), "--model", "schnet-huge"]
    )
    assert result.exit_code == 1
    text = " ".join(result.output.split())  # one line, as the terminal wraps it
    assert text.startswith("error: unknown model 'schnet-huge'") and text.count("error:") == 1
    for known in ("megnet", "schnet-small", "chgnet/0.3.0", "tlmat/mp-eform-cgcnn"):
        assert known in text
    assert "cgcnn/formation-energy-per-atom" in text and "Traceback" not in text
    assert not list(tmp_path.iterdir())  # nothing built before the refusal


def test_cache_takes_a_run_folder_and_an_ensemble_folder(data: Path, tmp_path: Path) -> None:
    """Folders hold the shipped CGCNN source's real model.pt: a run folder is read as its
    model, an ensemble folder as its members, whose graphs are one and the same."""
    import json
    import shutil

    from tlmat.models.hub import shipped_folder

    model = shipped_folder("tlmat/mp-eform-cgcnn") / "model.pt"
    run_folder, ensemble = tmp_path / "run", tmp_path / "ensemble"
    for folder in (run_folder, ensemble / "member-0"):
        folder.mkdir(parents=True)
        shutil.copy(model, folder / "model.pt")
    (ensemble / "ensemble.json").write_text(json.dumps({"members": ["member-0"], "val_mse": [1]}))
    folder = data / "cgcnn_sample_regression"
    args = ["cache", str(folder), "--cache-dir", str(tmp_path / "cache"), "--workers", "1"]
    first = runner.invoke(app, [*args, "--model", str(run_folder)])
    assert first.exit_code == 0 and "10 graphs built" in first.output, first.output
    second = runner.invoke(app, [*args, "--model", str(ensemble)])
    assert "10 graphs loaded from cache" in second.output, second.output
