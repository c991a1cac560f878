"""Across the paper re-runs: headline table beside the published numbers, and the sign
test of transfer against scratch over every (task, size) (Gupta et al.).

Reads the benchmark folders that `tlmat benchmark` wrote under benchmarks/results/ (those
holding a benchmark.yaml) and the tables of the benchmarks that are scripts (each
script's README.md or <name>.md under benchmarks/results/, listed in ``SCRIPTED``),
writes benchmarks/results/summary.md. tests/test_results_summary.py fails when the file
is not what this writes from the results now: it cannot go stale.

    python benchmarks/summary.py
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from tlmat.evaluation.report import compare_tasks, load_runs, markdown_table

RESULTS = Path(__file__).resolve().parent / "results"
COMMAND = "python benchmarks/summary.py"
#: Lee & Asahi, 500 training points, their data (scratch → transfer), in the task's unit
PUBLISHED = {
    "lee-asahi-bandgap": "0.978 → 0.815 eV (113k ΔE_f source)",
    "lee-asahi-bulk": "0.123 → 0.112 log10 GPa",
    "lee-asahi-dielectric": "0.181 → 0.163 log10",
    "lee-asahi-eform": "0.184 → 0.149 eV/atom (non-metals, 54k E_g source)",
}
#: the leakage-free transfer row of each task, in order of preference
CLEAN = ["full [mp-all]", "full [pbe-all]", "full [mp-10k]", "full [gap-10k]"]
#: the results of scripted benchmarks, in the order the summary gives them
SCRIPTED = [
    "multifidelity/gap_hse.md",
    "multifidelity/gap_scan.md",
    "transferability.md",
    "hoffmann-budget/README.md",
    "lee-asahi-recipe/README.md",
    "alignn-layers/README.md",
    "ekstrom/README.md",
    "pseudo-labels/README.md",
    "formation-scaling/README.md",
    "screening/README.md",
]


def headline(root: Path) -> dict[str, str]:
    runs = load_runs(root)
    stats = runs.groupby(["method", "size"])["mae"].agg(["mean", "std", "count"])
    size = int(runs["size"].max())
    row = {
        "task": root.name,
        "N": str(size),
        "published (scratch → transfer)": PUBLISHED.get(root.name, ""),
    }
    for label in ["scratch", *CLEAN, "full [cgcnn-mp†]", "features+mlp [mp-all]", "magpie+rf"]:
        if (label, size) in stats.index:
            mean, std, count = stats.loc[(label, size)]
            row[label] = f"{mean:.3f} ± {std:.3f} ({count:.0f})"
    return row


def summary(results: Path = RESULTS) -> str:
    """The summary's Markdown, from the results under ``results`` as they are now."""
    roots = sorted(p for p in results.iterdir() if (p / "benchmark.yaml").exists())
    roots = [p for p in roots if any((p / "common").glob("n*-s*/*/result.json"))]
    if not roots:
        raise SystemExit(f"no benchmark results under {results}")
    table = pd.DataFrame([headline(r) for r in roots]).fillna("")
    comparison, tests = compare_tasks(roots, CLEAN)
    lines = [
        "# Transfer against scratch across the paper re-runs",
        "",
        f"Command: `{COMMAND}`. Test MAE mean ± std (seeds) at each",
        "task's largest training-set size; † = source saw test materials.",
        "",
        *markdown_table(table.set_index("task")),
        "",
        "## Every (task, size): leakage-free full fine-tuning vs scratch",
        "",
        *markdown_table(
            comparison.set_index("task").round({"method MAE": 4, "scratch MAE": 4, "change": 3})
        ),
        "",
        f"Transfer wins {tests['wins']} of {tests['comparisons']}; one-tailed sign test "
        f"p = {tests['sign_test_p']:.3g}; Wilcoxon signed-rank (one-tailed) "
        f"p = {tests.get('wilcoxon_p', float('nan')):.3g}.",
    ]
    for table_md in (results / name for name in SCRIPTED):
        if table_md.exists():
            lines += ["", *_one_level_down(table_md.read_text().strip())]
    return "\n".join(lines) + "\n"


def _one_level_down(text: str) -> list[str]:
    """``text``'s lines with every Markdown heading one level deeper (its title an ``##``)."""
    return ["#" + line if line.startswith("#") else line for line in text.splitlines()]


def main() -> None:
    text = summary()
    (RESULTS / "summary.md").write_text(text)
    print(text, end="")


if __name__ == "__main__":
    main()
