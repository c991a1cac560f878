"""Across the paper re-runs: headline table beside the published numbers, and the sign
test of transfer against scratch over every (task, size) (Gupta et al.).

Reads the benchmark folders that `tlmat benchmark` wrote under benchmarks/results/ (those
holding a benchmark.yaml), the multi-fidelity tables (benchmarks/multifidelity.py) and
the transferability ranking (benchmarks/transferability.py),
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
}
#: the leakage-free transfer row of each task, in order of preference
CLEAN = ["full [mp-all]", "full [pbe-all]", "full [mp-10k]"]


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
    others = [*sorted((results / "multifidelity").glob("*.md")), results / "transferability.md"]
    for table_md in (path for path in others if path.exists()):
        text = table_md.read_text().strip()  # its title one level down
        lines += ["", "#" + text if text.startswith("# ") else text]
    return "\n".join(lines) + "\n"


def main() -> None:
    text = summary()
    (RESULTS / "summary.md").write_text(text)
    print(text, end="")


if __name__ == "__main__":
    main()
