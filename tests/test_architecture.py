"""Data flows one way: io → graphs → data → models → transfer → training → evaluation,
the CLI on top. A module never imports from a layer above its own."""

from __future__ import annotations

import ast
from pathlib import Path

import tlmat

LAYERS = ["io", "graphs", "data", "models", "transfer", "training", "evaluation", "cli"]


def test_no_module_imports_from_a_layer_above() -> None:
    root = Path(tlmat.__file__).parent
    violations = []
    for path in root.rglob("*.py"):
        layer = path.relative_to(root).parts[0].removesuffix(".py")
        if layer not in LAYERS:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tlmat."):
                other = node.module.split(".")[1]
                if other in LAYERS and LAYERS.index(other) > LAYERS.index(layer):
                    violations.append(f"{path.relative_to(root)} imports {node.module}")
    assert violations == []
