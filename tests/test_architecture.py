"""Data flows one way: io → graphs → data → models → transfer → training → uncertainty →
inference → evaluation → experiments, the CLI on top. A module never imports from a layer
above its own; every package and top-level module of tlmat has a layer."""

from __future__ import annotations

import ast
from pathlib import Path

import tlmat

LAYERS = [
    "progress",
    "datasets",
    "io",
    "graphs",
    "data",
    "models",
    "transfer",
    "training",
    "uncertainty",
    "inference",
    "evaluation",
    "screening",
    "experiments",
    "cli",
]
ROOT = Path(tlmat.__file__).parent


def _imports(path: Path) -> list[str]:
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tlmat."):
            out.append(node.module)
        elif isinstance(node, ast.Import):
            out += [a.name for a in node.names if a.name.startswith("tlmat.")]
    return out


def test_every_package_and_module_has_a_layer() -> None:
    parts = {p.relative_to(ROOT).parts[0].removesuffix(".py") for p in ROOT.glob("*")}
    parts -= {"__init__", "__main__", "__pycache__", "py.typed"}
    # data, not code: the shipped sources' weights and model cards
    assert not list((ROOT / "pretrained").rglob("*.py"))
    parts -= {"pretrained"}
    assert sorted(parts - set(LAYERS)) == []


def test_no_module_imports_from_a_layer_above() -> None:
    violations = []
    for path in ROOT.rglob("*.py"):
        layer = path.relative_to(ROOT).parts[0].removesuffix(".py")
        if layer in ("__init__", "__main__"):  # the package itself and `python -m tlmat`
            continue
        for module in _imports(path):
            other = module.split(".")[1]
            if LAYERS.index(other) > LAYERS.index(layer):
                violations.append(f"{path.relative_to(ROOT)} imports {module}")
    assert violations == []


def _names_architecture(node: ast.AST) -> bool:
    """Whether an expression reads an architecture (``x.architecture``, ``arch``, …)."""
    text = ast.unparse(node).lower()
    return "arch" in text or "model.config" in text


def test_no_architecture_is_named_outside_its_own_module() -> None:
    """No ``if architecture == "cgcnn"`` outside that architecture's own module (and the
    registry's table): everything else asks the registry or the model."""
    from tlmat.models.registry import MODULES

    offenders = []
    for path in ROOT.rglob("*.py"):
        if path.name == "registry.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Compare):
                continue
            sides = [node.left, *node.comparators]
            named = [c.value for c in sides if isinstance(c, ast.Constant) and c.value in MODULES]
            if named and any(_names_architecture(c) for c in sides) and path.stem not in named:
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} compares {named}")
    assert offenders == []
