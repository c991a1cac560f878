"""Reports from a real results grid: tables agree with scipy, figures and HTML exist."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from tlmat.data import Split, load_dataset, random_split, subsample
from tlmat.evaluation.report import compare_tasks, load_runs, summary_tables, write_report
from tlmat.experiments.runs import run_strategy, zero_shot
from tlmat.graphs import GraphSettings
from tlmat.training import TrainConfig
from tlmat.transfer.sources import load_source


@pytest.fixture(scope="module")
def grid(data: Path, tmp_path_factory) -> Path:
    """2 sizes × 2 seeds × (scratch, full, features+rf) on real perovskites."""
    import json

    root = tmp_path_factory.mktemp("grid")
    dataset = load_dataset(
        data / "perov_5" / "val.csv.gz",
        GraphSettings.preset("cgcnn"),
        ["heat_ref"],
        cache_dir=root / "cache",
        limit=120,
    )
    source = load_source("cgcnn/formation-energy-per-atom")
    fixed = random_split(len(dataset), (60, 20, 40), seed=0)
    config = TrainConfig(
        target="heat_ref", epochs=2, batch_size=16, progress_bar=False, early_stopping_patience=None
    )
    for size in (20, 60):
        for seed in (0, 1):
            split = Split(subsample(fixed.train, size, seed), fixed.val, fixed.test)
            job = root / f"n{size}-s{seed}"
            job.mkdir()
            (job / "zero-shot.json").write_text(
                json.dumps(zero_shot(source, dataset, split, "heat_ref"))
            )
            for method in ("scratch", "full", "features+rf"):
                run_strategy(
                    method,
                    source,
                    dataset,
                    split,
                    config.model_copy(update={"seed": seed}),
                    job / method,
                )
    return root


def test_runs_and_tables(grid: Path) -> None:
    runs = load_runs(grid)
    assert set(runs["method"]) == {
        "scratch",
        "full",
        "features+rf",
        "zero-shot",
        "zero-shot+linear",
    }
    assert sorted(runs["size"].unique()) == [20, 60] and sorted(runs["seed"].unique()) == [0, 1]
    tables = summary_tables(runs)
    full = runs[(runs.method == "full") & (runs["size"] == 60)].sort_values("seed")["mae"]
    scratch = runs[(runs.method == "scratch") & (runs["size"] == 60)].sort_values("seed")["mae"]
    expected = stats.ttest_rel(full.to_numpy(), scratch.to_numpy()).pvalue
    cell = tables["paired t-test vs scratch"].loc["full", 60]
    assert float(cell.split(" ")[0]) == pytest.approx(expected, rel=1e-2)
    mean = runs.groupby(["method", "size"])["mae"].mean()
    assert tables["test MAE"].loc["scratch", 20].startswith(f"{mean['scratch', 20]:.4f}")
    assert "equivalent scratch training-set size" in tables


def test_write_report(grid: Path, tmp_path: Path) -> None:
    path = write_report(grid, tmp_path / "report", unit="eV/cell", threshold=0.217)
    text = path.read_text()
    for heading in (
        "## test MAE (eV/cell)",
        "## paired t-test vs scratch",
        "## equivalent scratch training-set size",
        "## all metrics at N=60 (mean over seeds)",
        "## fraction of test errors within 0.217 eV/cell",
        "![parity.png](parity.png)",
    ):
        assert heading in text
    for figure in ("learning_curves.png", "parity.png", "error_cdf.png", "error_box.png"):
        assert (tmp_path / "report" / figure).stat().st_size > 10_000  # a real picture
        assert f"![{figure}]({figure})" in text
    assert "*Figure 1.* Test MAE against training-set size" in text
    assert "± is the sample standard deviation over seeds (ddof = 1)" in text
    assert "## test MAE (eV/cell)" in text
    html = (tmp_path / "report" / "report.html").read_text()
    # rendered by markdown-it: tables, images, and `code` as code, not literal backticks
    assert html.count("<table>") == 6 and '<img src="learning_curves.png"' in html
    assert "<code>" in html and "`" not in html.split("<body>")[1]
    # methods in a meaningful order, not alphabetical: base first, scratch before transfer
    rows = [
        line.split(" | ")[0].lstrip("| ")
        for line in text.split("## test MAE")[1].split("##")[0].splitlines()
        if line.startswith("| ") and "---" not in line
    ][1:]
    assert rows.index("scratch") < rows.index("full")
    runs = pd.read_csv(tmp_path / "report" / "runs.csv")
    assert np.isfinite(runs["mae"]).all()
    one = runs[(runs.method == "full") & (runs["size"] == 60)].iloc[0]
    predictions = pd.read_csv(Path(one["path"]) / "predictions.csv")
    errors = (predictions["predicted"] - predictions["true"]).abs()
    assert one["within_threshold"] == pytest.approx((errors <= 0.217).mean())


def test_empty_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no n<size>-s<seed>"):
        load_runs(tmp_path)


def test_compare_tasks_sign_test(grid: Path) -> None:
    """Over tasks × sizes: wins counted from the mean MAEs, p-values as scipy's."""
    table, tests = compare_tasks([grid], ["not-there", "full"])
    runs = load_runs(grid)
    mean = runs.groupby(["method", "size"])["mae"].mean()
    assert list(table["size"]) == [20, 60] and set(table["method"]) == {"full"}
    wins = sum(mean["full", n] < mean["scratch", n] for n in (20, 60))
    assert tests["wins"] == wins and tests["comparisons"] == 2
    assert tests["sign_test_p"] == pytest.approx(stats.binomtest(wins, 2, 0.5, "greater").pvalue)
    with pytest.raises(FileNotFoundError):
        compare_tasks([grid], ["absent"])


def test_report_says_which_figures_it_could_not_draw(grid: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "grid"
    shutil.copytree(grid, copy)
    for file in copy.rglob("predictions.csv"):
        file.unlink()
    text = write_report(copy, tmp_path / "report", unit="eV/cell").read_text()
    assert "Not drawn:" in text and "parity and error figures: no predictions.csv" in text
    assert not (tmp_path / "report" / "parity.png").exists()


def test_published_results_sit_beside_the_grids_best_rows(grid: Path, tmp_path: Path) -> None:
    from tlmat.evaluation.report import beside_published

    runs = load_runs(grid)
    table = beside_published(runs, 60, {"CGCNN (Matbench v0.1)": 0.0452})
    assert table.loc["CGCNN (Matbench v0.1)", "origin"] == "published"
    scratch = runs[(runs.method == "scratch") & (runs["size"] == 60)]["mae"].mean()
    assert table.loc["scratch", "test MAE"] == f"{scratch:.4f}"
    assert "zero-shot" not in table.index  # raw outputs in the source's unit
    assert list(table["test MAE"].astype(float)) == sorted(table["test MAE"].astype(float))
    text = write_report(
        grid, tmp_path / "r", unit="eV/cell", references={"CGCNN (Matbench v0.1)": 0.0452}
    ).read_text()
    assert "## beside published results (N = 60 here)" in text
    assert "| CGCNN (Matbench v0.1) | 0.0452 | published |" in text


def test_log_axes_read_in_plain_decimals() -> None:
    """Learning curves label sizes and errors as numbers (50, 200, 0.4), not 5×10¹."""
    import matplotlib.pyplot as plt

    from tlmat.evaluation.report import decimal_log_axes

    fig, ax = plt.subplots()
    ax.plot([20, 50, 100, 500, 1000], [0.9, 0.5, 0.4, 0.2, 0.12])
    decimal_log_axes(ax)
    fig.canvas.draw()
    ticks = [axis.get_ticklabels(minor=minor) for axis in (ax.xaxis, ax.yaxis)
             for minor in (False, True)]  # fmt: skip
    shown = [t.get_text() for labels in ticks for t in labels]
    plt.close(fig)
    labels = [text for text in shown if text]
    assert {"100", "1000", "50", "200", "0.1", "0.2", "0.5"} <= set(labels), labels
    assert not any("10^" in text or "times" in text or "×" in text for text in labels), labels


def test_report_tables_read_method_names_left_aligned() -> None:
    from tlmat.evaluation.report import _html

    page = _html("| method | MAE |\n|---|---|\n| full | 0.1 |\n", "t")
    assert "td:first-child,th:first-child{text-align:left}" in page and "<td>full</td>" in page


def test_one_seed_gives_no_empty_t_test_table() -> None:
    import pandas as pd

    rows = [("scratch", 20, 0.5), ("scratch", 60, 0.3), ("full", 20, 0.4), ("full", 60, 0.2)]
    one_seed = pd.DataFrame(rows, columns=["method", "size", "mae"]).assign(seed=0)
    assert "paired t-test vs scratch" not in summary_tables(one_seed)
    two_seeds = pd.concat([one_seed, one_seed.assign(seed=1, mae=one_seed.mae * 1.1)])
    assert "paired t-test vs scratch" in summary_tables(two_seeds)


def test_every_method_of_a_figure_has_its_own_colour_and_line_style() -> None:
    """Methods whose families share a colour (the descriptor baselines, the source as it
    is) or one family's variants still differ in colour, and in line style for print."""
    from tlmat.evaluation.report import ORDER, method_styles

    methods = [*ORDER, "full [mp-cgcnn]", "full [chgnet/0.3.0]", "scratch-alignn"]
    styles = method_styles(methods)
    colours = [s["color"] for s in styles.values()]
    assert len(set(colours)) == len(methods), colours
    # seven line styles: any seven methods in a row differ in greyscale too
    ordered = list(styles.values())
    for k in range(len(ordered) - 6):
        assert len({str(s["linestyle"]) for s in ordered[k : k + 7]}) == 7
    # a family keeps its colour when it is alone in a figure
    assert method_styles(["full", "scratch"])["full"]["color"] == styles["full"]["color"]


def test_parity_panels_share_one_axis_range(tmp_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    from tlmat.evaluation import report

    narrow = pd.DataFrame({"true": [0.0, 0.1], "predicted": [0.05, 0.1], "seed": 0})
    wide = pd.DataFrame({"true": [-1.0, 3.0], "predicted": [-0.5, 2.0], "seed": 0})
    saved = []
    real_savefig = plt.Figure.savefig

    def keep(fig, *args, **kwargs):
        saved.append([(ax.get_xlim(), ax.get_ylim()) for ax in fig.axes if ax.has_data()])
        return real_savefig(fig, *args, **kwargs)

    plt.Figure.savefig = keep
    try:
        report.plot_parity({"scratch": narrow, "full": wide}, tmp_path / "p.png", "eV", 20)
    finally:
        plt.Figure.savefig = real_savefig
    (limits,) = saved
    assert len(limits) == 2 and limits[0] == limits[1]
    (lo, hi), _ = limits[0]
    assert lo < -1.0 and hi > 3.0 and (tmp_path / "p.png").stat().st_size > 10_000
