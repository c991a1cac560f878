"""The catalogue: every name a user types, read without torch, equal to the registries
it is written from, and the checks that say a misspelt name with the closest ones."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tlmat import catalogue


def test_the_catalogue_is_what_the_registries_say() -> None:
    """Out of date after a new architecture, preset, source, strategy or setting: run
    ``python -m tlmat.experiments.catalogue`` and commit tlmat/catalogue.json."""
    from tlmat.experiments.catalogue import build, text

    assert catalogue.PATH.read_text() == text(build()), (
        "tlmat/catalogue.json is out of date: python -m tlmat.experiments.catalogue"
    )


def test_every_registered_name_is_known_and_the_hub_agrees() -> None:
    from tlmat.models import hub, registry

    assert set(registry.presets()) | set(registry.names()) == set(catalogue.model_names())
    assert catalogue.source_names() == hub.names()


@pytest.mark.parametrize(
    ("check", "name", "said"),
    [
        (catalogue.check_model, "cgcn", "unknown model 'cgcn'; did you mean 'cgcnn'"),
        (catalogue.check_model, "schnet-arch3", "did you mean 'schnet-arch2' or 'schnet-arch1'"),
        (catalogue.check_source, "chgnet/0.3", "did you mean 'chgnet/0.3.0'"),
        (catalogue.check_source, "tlmat/mp-eform", "did you mean 'tlmat/mp-eform-cgcnn'"),
        (lambda n: catalogue.check_methods([n]), "ful", "strategy 'ful'; did you mean 'full'"),
    ],
)  # fmt: skip
def test_a_misspelt_name_is_refused_with_the_closest_ones(check, name: str, said: str) -> None:
    with pytest.raises((ValueError, FileNotFoundError)) as error:
        check(name)
    assert said in str(error.value)


def test_registered_names_and_existing_files_pass(tmp_path: Path) -> None:
    catalogue.check_model("cgcnn-mp")
    catalogue.check_source("sevennet/0")
    catalogue.check_source(tmp_path)  # a run folder or checkpoint is the user's
    catalogue.check_methods(["full", "moments+gbt", "magpie+rf", "base"])


def test_a_settings_file_with_an_unknown_key_is_refused(tmp_path: Path) -> None:
    settings = tmp_path / "run.yaml"
    settings.write_text("epochs: 3\ntraining:\n  batchsize: 4\n")
    with pytest.raises(ValueError, match="batchsize: unknown setting; did you mean 'batch_size'"):
        catalogue.check_settings(settings)
    settings.write_text("budget: 3\nfolds: 2\nepochs: 4\n")
    catalogue.check_settings(settings, "FitSpec")
    with pytest.raises(ValueError, match="budget: unknown setting"):
        catalogue.check_settings(settings, "RunSpec")
    settings.write_text("model: schnet-arch\n")
    with pytest.raises(ValueError, match="unknown model 'schnet-arch'; did you mean"):
        catalogue.check_settings(settings)


#: the command runs in a fresh process that reports whether torch was imported
_WITHOUT_TORCH = """
import sys
from tlmat.cli import app
try:
    app(prog_name="tlmat")
finally:
    print("torch imported" if "torch" in sys.modules else "torch never imported")
"""


@pytest.mark.parametrize(
    ("mistake", "said"),
    [
        (["train", "{data}", "-t", "heat_ref", "--model", "cgcn"], "did you mean 'cgcnn'"),
        (["train", "{data}x", "-t", "heat_ref"], "did you mean"),
        (["finetune", "{data}", "-t", "heat_ref", "--strategy", "ful"], "did you mean 'full'"),
        (["finetune", "{data}", "-t", "heat_ref", "--source", "chgnet/0.3"], "'chgnet/0.3.0'"),
        (["compare", "{data}", "-t", "heat_ref", "--strategies", "scratch,lroa"], "'lora'"),
        (["fit", "{data}", "-t", "heat_ref", "--candidate", "features+mpl [chgnet/0.3.0]"],
         "did you mean 'features+mlp'"),
        (["train", "{data}", "-t", "heat_ref", "--loss", "l3"], "is not one of l1"),
        (["train", "{data}", "-t", "heat_ref", "--epochs", "0"], "greater than or equal to 1"),
        (["train", "{data}", "-t", "heat_ref", "--config", "{data}.yaml"], "no such file"),
    ],
)  # fmt: skip
def test_mistakes_are_said_before_torch_is_imported(
    perov60: Path, mistake: list[str], said: str
) -> None:
    argv = [part.format(data=perov60) for part in mistake]
    done = subprocess.run(
        [sys.executable, "-c", _WITHOUT_TORCH, *argv], capture_output=True, text=True, timeout=60
    )
    output = " ".join((done.stdout + done.stderr).split()).replace("│", "")
    assert done.returncode in (1, 2) and said in " ".join(output.split()), output
    assert "torch never imported" in output
