"""Phase-diagram screening: the hull and the E_hull > k·σ rule on a hand-made Hf–N
diagram whose hull is computed by hand, the cost accounting, the comparison with the
all-oracle hull, and prototype decoration on real structures."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from tlmat.screening import (
    Level,
    TableOracle,
    below_hull,
    decorate,
    hull_energies,
    members_predictor,
    mixture_predictor,
    read_energy_table,
    screen,
)

# Hf–N with formation energies per atom (eV/atom), elements at 0. x = fraction of N.
# Hull by hand: Hf (0, 0) — HfN (1/2, −1.0) — HfN2 (2/3, −0.8) — N (1, 0).
#   Hf2N  (x = 1/3): hull −2/3 → E_hull = −0.5 + 2/3 = 1/6
#   Hf3N4 (x = 4/7): on the HfN–HfN2 line, −1 + 1.2·(4/7 − 1/2) = −0.914286 → E_hull 0.014286
FORMULAS = ["HfN", "Hf2N", "HfN2", "Hf3N4"]
ENERGIES = np.array([-1.0, -0.5, -0.8, -0.9])
HAND_E_HULL = np.array([0.0, 1 / 6, 0.0, -0.9 - (-1 + 1.2 * (4 / 7 - 1 / 2))])


def test_hull_energies_match_the_hand_computation() -> None:
    np.testing.assert_allclose(hull_energies(FORMULAS, ENERGIES), HAND_E_HULL, atol=1e-9)
    # a known phase below a candidate's composition line lifts the candidate off the hull
    assert hull_energies(["HfN"], np.array([-1.0]), known=[("Hf2N2", -1.1)])[0] == pytest.approx(
        0.1
    )


def test_below_hull_is_negative_for_a_phase_the_hull_missed() -> None:
    hull = list(zip(["HfN", "HfN2"], [-1.0, -0.8], strict=True))
    depth = below_hull(["Hf3N4", "Hf2N"], np.array([-0.95, -0.5]), hull)
    np.testing.assert_allclose(depth, [-0.95 + 0.914286, 1 / 6], atol=1e-6)


def _fixed_predictor(values: dict[str, tuple[float, float]]):
    def predict(ids):
        return (np.array([values[i][0] for i in ids]), np.array([values[i][1] for i in ids]))

    return predict


def test_decision_rule_drops_exactly_the_candidates_above_k_sigma() -> None:
    ids = ["a", "b", "c", "d"]
    # Hf2N: E_hull 1/6 > 2·0.05 → dropped; Hf3N4: 0.0143 ≤ 2·0.01 → kept
    predicted = {"a": (-1.0, 0.05), "b": (-0.5, 0.05), "c": (-0.8, 0.05), "d": (-0.9, 0.01)}
    oracle = TableOracle(dict(zip(ids, ENERGIES, strict=True)), cost_core_hours=9.0)
    result = screen(ids, FORMULAS, [Level("prerelax", _fixed_predictor(predicted), 1.0)], oracle)
    level = result.levels[0]
    np.testing.assert_allclose(level.e_hull, HAND_E_HULL, atol=1e-9)
    assert level.kept.tolist() == [True, False, True, True]
    assert result.computed_ids == ["a", "c", "d"]
    assert sorted(result.found_stable) == ["a", "c"]  # Hf3N4 computed above the hull
    # cost: 4 candidates to the level (1 core-h each) + 3 oracle calls (9 each)
    assert result.cost_core_hours == pytest.approx(4 * 1.0 + 3 * 9.0)
    assert result.all_oracle_cost_core_hours == pytest.approx(4 * (1.0 + 9.0))
    assert result.summary()["oracle_calls_saved"] == pytest.approx(0.25)
    # with a larger σ nothing is dropped; with k = 0 only the predicted hull survives
    wide = {i: (m, 0.1) for i, (m, _) in predicted.items()}
    assert screen(ids, FORMULAS, [Level("x", _fixed_predictor(wide))], oracle).computed_ids == ids
    strict = screen(ids, FORMULAS, [Level("x", _fixed_predictor(predicted))], oracle, k=0)
    assert strict.computed_ids == ["a", "c"]


def test_two_levels_pass_only_survivors_on_and_count_their_costs() -> None:
    ids = ["a", "b", "c", "d"]
    first = {"a": (-1.0, 0.1), "b": (-0.5, 0.1), "c": (-0.8, 0.1), "d": (-0.9, 0.1)}
    second = {"a": (-1.0, 0.01), "b": (-0.5, 0.01), "c": (-0.8, 0.01), "d": (-0.9, 0.005)}
    asked: list[list[str]] = []

    def second_predictor(batch):
        asked.append(list(batch))
        return _fixed_predictor(second)(batch)

    levels = [
        Level("preprerelax", _fixed_predictor(first), 5 / 60),
        Level("prerelax", second_predictor, 1.0),
    ]
    oracle = TableOracle(dict(zip(ids, ENERGIES, strict=True)))
    result = screen(ids, FORMULAS, levels, oracle)
    assert asked == [["a", "b", "c", "d"]]  # 2σ = 0.2 > 1/6: all survive the first level
    assert result.levels[1].kept.tolist() == [True, False, True, False]
    assert result.computed_ids == ["a", "c"]
    expected = 4 * 5 / 60 + 4 * 1.0 + 2 * 9.0
    assert result.cost_core_hours == pytest.approx(expected)
    table = result.table()
    assert table["prerelax decision"].tolist() == ["kept", "dropped", "kept", "dropped"]
    assert np.isnan(table["oracle E_f (eV/atom)"].iloc[1])


def test_a_missed_stable_phase_is_reported_with_how_far_below_the_found_hull() -> None:
    ids = ["a", "b", "c", "d"]
    truth = {"a": -1.0, "b": -0.5, "c": -0.8, "d": -0.95}  # Hf3N4 truly stable
    predicted = {"a": (-1.0, 0.05), "b": (-0.5, 0.05), "c": (-0.8, 0.05), "d": (-0.9, 0.005)}
    result = screen(
        ids,
        FORMULAS,
        [Level("final", _fixed_predictor(predicted))],
        TableOracle(truth),
        reference=True,
    )
    summary = result.summary()
    assert summary["reference_stable"] == ["a", "c", "d"]
    assert summary["found_stable"] == ["a", "c"]
    assert summary["precision"] == 1.0
    assert summary["recall"] == pytest.approx(2 / 3)
    assert summary["same_stable_set"] is False
    (missed,) = summary["missed"]
    assert missed["id"] == "d" and missed["dropped_at"] == "final"
    assert missed["predicted_e_hull"] == pytest.approx(0.014286, abs=1e-6)
    assert missed["below_found_hull"] == pytest.approx(-0.95 + 0.914286, abs=1e-6)
    assert summary["calibration"][0]["mae"] == pytest.approx(0.05 / 4)


def test_a_dropped_stable_candidate_whose_twin_was_found_is_not_a_lost_phase() -> None:
    # "a2" relaxes to the same HfN as "a", 0.3 meV/atom lower (relaxation noise): the
    # all-oracle hull holds a2, the screen dropped it but found a — HfN is not lost; Hf3N4
    # ("d", truly stable, dropped, no twin) still is
    ids = ["a", "a2", "b", "c", "d"]
    truth = {"a": -1.0, "a2": -1.0003, "b": -0.5, "c": -0.8, "d": -0.95}
    predicted = {"a": (-1.0, 0.05), "a2": (-0.2, 0.05), "b": (-0.5, 0.05), "c": (-0.8, 0.05),
                 "d": (-0.9, 0.005)}  # fmt: skip
    twins = {frozenset(("a", "a2"))}

    def run(same_phase):
        return screen(ids, ["HfN", "HfN", "Hf2N", "HfN2", "Hf3N4"], [Level("final",
                      _fixed_predictor(predicted))], TableOracle(truth), reference=True,
                      same_phase=same_phase).summary()  # fmt: skip

    plain = run(None)
    assert sorted(m["id"] for m in plain["missed"]) == ["a2", "d"]
    twinned = run(lambda i, j: frozenset((i, j)) in twins)
    assert twinned["reference_stable"] == ["a2", "c", "d"]
    assert [m["id"] for m in twinned["missed"]] == ["d"]
    assert twinned["found_as"] == {"a2": "a"}


def test_the_written_results_hold_table_summary_and_figure(tmp_path) -> None:
    ids = ["a", "b", "c", "d"]
    predicted = {"a": (-1.0, 0.05), "b": (-0.5, 0.05), "c": (-0.8, 0.05), "d": (-0.9, 0.01)}
    result = screen(
        ids,
        FORMULAS,
        [Level("final", _fixed_predictor(predicted), 0.0)],
        TableOracle(dict(zip(ids, ENERGIES, strict=True))),
        reference=True,
    )
    paths = result.write(tmp_path / "out")
    summary = json.loads(paths["summary"].read_text())
    assert summary["same_stable_set"] is True and summary["oracle_calls"] == 3
    assert paths["figure"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert paths["figure"].stat().st_size > 10_000
    assert "computed E_hull (eV/atom)" in paths["table"].read_text().splitlines()[0]


def test_screening_refuses_nonsense() -> None:
    oracle = TableOracle({"a": -1.0})
    nan = {"a": (float("nan"), 0.1)}
    with pytest.raises(ValueError, match="not finite"):
        screen(["a"], ["HfN"], [Level("x", _fixed_predictor(nan))], oracle)
    with pytest.raises(ValueError, match="k must be"):
        screen(["a"], ["HfN"], [], oracle, k=-1)
    with pytest.raises(ValueError, match="no formation energy for 1 id"):
        TableOracle({})(["a"])


def test_read_energy_table_names_the_bad_row(tmp_path) -> None:
    table = tmp_path / "dft.csv"
    table.write_text("id,E_f\nx,-1.0\ny,oops\n")
    with pytest.raises(ValueError, match=r"row 3 \(y\)"):
        read_energy_table(table, "E_f", "id", "oracle")
    with pytest.raises(ValueError, match="no column 'E'"):
        read_energy_table(table, "E", "id", "oracle")


def test_decorate_turns_real_ternary_prototypes_into_candidates_of_another_system(
    data,
) -> None:
    from tlmat.io import read_records

    records = read_records(data / "taata_nitrides_sample" / "examples.json").records
    prototypes = [
        r.structure
        for r in records
        if {e.symbol for e in r.structure.composition} == {"Ti", "Zn", "N"}
    ][:4]
    candidates = decorate(prototypes, ["Hf", "Zn", "N"])
    assert candidates
    for candidate in candidates:
        assert {e.symbol for e in candidate.composition} == {"Hf", "Zn", "N"}
    # Ti → Hf keeps the prototype's sites; the cell grows with the larger atom
    ti_to_hf = decorate(prototypes[:1], ["Hf", "Zn", "N"], scale_volume=True)
    assert any(len(c) == len(prototypes[0]) for c in ti_to_hf)
    # every assignment of 3 elements to 3 species: at most 3! candidates per prototype
    assert len(candidates) <= 6 * len(prototypes)


@pytest.fixture(scope="module")
def hf_zn_n(data, tmp_path_factory):
    """The real Hf–Zn–N sample (Tholander et al.) split for screening: the related
    Ti–Zn–N and Zr–Zn–N phases, the elements and five Hf–Zn–N phases are labelled; the
    other Hf–Zn–N phases are the candidates; an ensemble of 3 is fine-tuned on the
    labelled ones from the MP formation-energy CGCNN."""
    import csv

    from typer.testing import CliRunner

    from tlmat.cli import app
    from tlmat.io import read_records, write_extxyz

    tmp_path = tmp_path_factory.mktemp("hf")
    sample = data / "taata_nitrides_sample"
    records = read_records(sample / "examples.json", targets=["E_f"]).records

    def elements(record):
        return {e.symbol for e in record.structure.composition}

    hf = [r for r in records if elements(r) == {"Hf", "Zn", "N"}]
    unary = [r for r in records if len(elements(r)) == 1]
    related = [r for r in records if r not in hf and r not in unary]
    write_extxyz(related + unary + hf[:5], tmp_path / "labelled.extxyz")
    write_extxyz(hf[5:], tmp_path / "candidates.extxyz")
    write_extxyz([r for r in unary if elements(r) == {"Hf"}], tmp_path / "Hf.extxyz")
    write_extxyz([r for r in unary if elements(r) == {"Ti"}], tmp_path / "Ti.extxyz")
    with (tmp_path / "known.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["formula", "E_f"])
        for r in unary + hf[:5]:
            if elements(r) <= {"Hf", "Zn", "N"}:
                writer.writerow([r.structure.composition.reduced_formula, r.targets["E_f"]])
    cache = ["--cache-dir", str(tmp_path / "cache")]
    args = ["finetune", str(tmp_path / "labelled.extxyz"), "--source",
            "cgcnn/formation-energy-per-atom", "-t", "E_f", "--unit", "eV/atom",
            "--ensemble", "3", "--epochs", "8", "--run-dir", str(tmp_path / "ens")]  # fmt: skip
    result = CliRunner().invoke(app, [*args, *cache])
    assert result.exit_code == 0, result.output
    return tmp_path, len(hf)


@pytest.mark.integration
def test_cli_screen_hf_zn_n_with_an_ensemble_fine_tuned_from_mp(data, hf_zn_n) -> None:
    """End to end on the real Hf–Zn–N sample: the ensemble screens the unlabelled
    Hf–Zn–N phases, their DFT energies the oracle."""
    from typer.testing import CliRunner

    from tlmat.cli import app

    tmp_path, n_hf = hf_zn_n
    sample = data / "taata_nitrides_sample"
    hf = range(n_hf)
    runner = CliRunner()
    cache = ["--cache-dir", str(tmp_path / "cache")]
    args = ["screen", str(tmp_path / "candidates.extxyz"), "--ensemble", str(tmp_path / "ens"),
            "--oracle", str(sample / "examples.csv"), "--oracle-id", "material_id",
            "--oracle-energy", "E_f", "--known", str(tmp_path / "known.csv"),
            "--known-energy", "E_f", "-o", str(tmp_path / "out")]  # fmt: skip
    result = runner.invoke(app, [*args, *cache])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["candidates"] == len(hf) - 5
    (level,) = summary["levels"]
    assert summary["oracle_calls"] == level["kept"] <= level["in"] == len(hf) - 5
    assert summary["cost_core_hours"] == pytest.approx(9.0 * summary["oracle_calls"])
    assert 0 <= summary["recall"] <= 1 and summary["reference_stable"]
    table = pd.read_csv(tmp_path / "out" / "screening.csv")
    dropped = table["final decision"] == "dropped"
    e_hull, sigma = table["final E_hull (eV/atom)"], table["final sigma (eV/atom)"]
    assert (e_hull[dropped] > 2 * sigma[dropped]).all()
    assert (e_hull[~dropped] <= 2 * sigma[~dropped]).all(), table.to_string()
    assert table["oracle E_f (eV/atom)"][dropped].isna().all()
    text = " ".join(result.output.split())
    assert f"{summary['candidates']} candidates: {summary['oracle_calls']} oracle calls" in text
    # the same folder again is refused: nothing tlmat wrote is replaced without --overwrite
    again = runner.invoke(app, [*args, *cache])
    assert again.exit_code == 1 and "--overwrite" in again.output


def test_load_chgnet_safely_reproduces_chgnets_own_loader(data) -> None:
    """The packaged CHGNet weights read with weights_only=True give the energies of
    chgnet's own (unpickling) loader on a real Hf–Zn–N crystal."""
    chgnet = pytest.importorskip("chgnet.model", reason="the chgnet extra is not installed")
    from tlmat.io import read_records
    from tlmat.screening import load_chgnet

    record = read_records(data / "taata_nitrides_sample" / "examples.json", limit=3).records[2]
    ours = load_chgnet("0.3.0").predict_structure(record.structure)
    theirs = chgnet.CHGNet.load(model_name="0.3.0", verbose=False).predict_structure(
        record.structure
    )
    np.testing.assert_allclose(ours["e"], theirs["e"], atol=1e-6)
    np.testing.assert_allclose(ours["f"], theirs["f"], atol=1e-5)


@pytest.mark.integration
def test_cli_screen_decorated_candidates_with_the_chgnet_oracle(hf_zn_n) -> None:
    """Candidates made by substitution (hcp Ti → Hf, the cell rescaled), predicted by the
    ensemble, relaxed by a real CHGNet: a strained hcp Hf relaxes back to the reference,
    so its formation energy is ≈ 0 eV/atom."""
    pytest.importorskip("chgnet.model", reason="the chgnet extra is not installed")
    from typer.testing import CliRunner

    from tlmat.cli import app

    tmp_path, _ = hf_zn_n
    out = tmp_path / "chgnet-out"
    args = ["screen", "--prototypes", str(tmp_path / "Ti.extxyz"), "--substitute", "Ti=Hf",
            "--ensemble", str(tmp_path / "ens"), "--oracle", "chgnet", "--references",
            str(tmp_path / "Hf.extxyz"), "-k", "100", "-o", str(out),
            "--cache-dir", str(tmp_path / "cache")]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["oracle"] == "CHGNet 0.3.0 relaxation" and summary["oracle_calls"] == 1
    table = pd.read_csv(out / "screening.csv")
    assert table["formula"].tolist() == ["Hf"]
    assert abs(table["oracle E_f (eV/atom)"].iloc[0]) < 0.01
    assert (out / "candidates.extxyz").is_file() and (out / "relaxed.extxyz").is_file()


@pytest.mark.integration
def test_cli_screen_two_levels_from_yaml_and_a_level_lacking_candidates(data, hf_zn_n) -> None:
    """A screen over two levels described in YAML: the second level predicts only the
    first level's survivors; a level without structures for some candidates is refused
    naming them."""
    from typer.testing import CliRunner

    from tlmat.cli import app
    from tlmat.io import read_records, write_extxyz

    tmp_path, _ = hf_zn_n
    candidates = str(tmp_path / "candidates.extxyz")
    ens = str(tmp_path / "ens")
    oracle = {"table": str(data / "taata_nitrides_sample" / "examples.csv"),
              "id_column": "material_id", "energy_column": "E_f"}  # fmt: skip
    config = {
        "levels": [
            {"name": "prerelax", "ensemble": ens, "structures": [candidates], "cost_core_hours": 1},
            {"name": "final", "ensemble": ens, "structures": [candidates]},
        ],
        "oracle": oracle,
        "known": {"table": str(tmp_path / "known.csv"), "energy_column": "E_f"},
        "k": 1.0,
    }
    (tmp_path / "two.yaml").write_text(json.dumps(config))  # JSON is YAML
    out = tmp_path / "two-levels"
    cache = ["--cache-dir", str(tmp_path / "cache")]
    result = CliRunner().invoke(app, ["screen", "--config", str(tmp_path / "two.yaml"),
                                      "-o", str(out), *cache])  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    first, second = summary["levels"]
    assert second["in"] == first["kept"] and summary["oracle_calls"] == second["kept"]
    assert summary["cost_core_hours"] == pytest.approx(first["in"] + 9.0 * second["kept"])
    table = pd.read_csv(out / "screening.csv")
    dropped_first = table["prerelax decision"] == "dropped"
    assert table["final decision"][dropped_first].isna().all()  # never predicted there
    # a second level lacking some candidates' structures is refused, naming them
    records = read_records(candidates).records
    write_extxyz(records[:-2], tmp_path / "fewer.extxyz")
    config["levels"][1]["structures"] = [str(tmp_path / "fewer.extxyz")]
    (tmp_path / "fewer.yaml").write_text(json.dumps(config))
    result = CliRunner().invoke(app, ["screen", "--config", str(tmp_path / "fewer.yaml"),
                                      "-o", str(tmp_path / "fewer-out"), *cache])  # fmt: skip
    text = " ".join(result.output.split())
    assert result.exit_code == 1 and "no structure for 2 candidate(s)" in text
    assert records[-1].id in text or records[-2].id in text


def test_the_oracle_name_picks_the_calculator_only_by_chgnets_registered_name(
    tmp_path, monkeypatch
) -> None:
    from tlmat.screening import CHGNET_VERSION, OracleConfig

    references = {"references": ["Hf.cif"]}
    assert OracleConfig.from_name("chgnet", **references).chgnet == CHGNET_VERSION
    assert OracleConfig.from_name("chgnet/0.2.0", **references).chgnet == "0.2.0"
    with pytest.raises(ValueError, match=r"no CHGNet 9\.9"):
        OracleConfig.from_name("chgnet/9.9", **references)
    # a table whose name begins like the calculator's is still a table
    assert OracleConfig.from_name("chgnet_dft.csv").table == "chgnet_dft.csv"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "chgnet").write_text("id,formation_energy_per_atom\n")
    assert OracleConfig.from_name("chgnet").table == "chgnet"


def test_members_sigma_is_ekstroms_and_a_mixture_of_ensembles_is_their_union() -> None:
    """σ = √(mean validation MSE + the members' variance); an equal mixture of two
    ensembles of as many members and the same validation MSE predicts exactly what one
    ensemble of all their members would (the variance of a union: the mean of the
    variances plus the variance of the means)."""
    rng = np.random.default_rng(0)
    ids = [f"c{n}" for n in range(6)]
    first, second = rng.normal(-1, 0.3, (5, 6)), rng.normal(-0.8, 0.2, (5, 6))  # eV/atom
    wanted = ["c4", "c0", "c2"]
    columns = [4, 0, 2]
    mean, sigma = members_predictor(ids, first, [0.01] * 5)(wanted)
    assert mean == pytest.approx(first[:, columns].mean(0))
    assert sigma == pytest.approx(np.sqrt(0.01 + first[:, columns].var(0)))
    mixed = mixture_predictor(
        members_predictor(ids, first, [0.01] * 5), members_predictor(ids, second, [0.01] * 5)
    )(wanted)
    union = members_predictor(ids, np.vstack([first, second]), [0.01] * 10)(wanted)
    assert mixed[0] == pytest.approx(union[0]) and mixed[1] == pytest.approx(union[1])
    # a mixture with itself changes nothing
    alone = members_predictor(ids, first, [0.01] * 5)
    assert mixture_predictor(alone, alone)(wanted)[1] == pytest.approx(sigma)
