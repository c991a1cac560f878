"""The suggestion appended to an error about a misspelt name."""

from tlmat.hints import did_you_mean


def test_the_closest_names_are_suggested_and_nothing_when_none_is_close() -> None:
    known = ["heat_ref", "band_gap", "formation_energy_per_atom"]
    assert did_you_mean("heat_rf", known) == "; did you mean 'heat_ref'?"
    assert did_you_mean("cgcn", ["cgcnn", "cgcnn-mp", "schnet"]) == (
        "; did you mean 'cgcnn' or 'cgcnn-mp'?"
    )
    assert did_you_mean("xyz", known) == ""
