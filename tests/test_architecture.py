"""Data flows one way: io → graphs → data → models → transfer → training → uncertainty →
inference → evaluation → experiments, the CLI on top. A module never imports from a layer
above its own; every package and top-level module of tlmat has a layer.

Inside packages, where it matters: a CLI command module never imports another command
module (shared CLI code lives in the helper modules, library code in the library), and the
models never import training or the CLI.

No architecture is named outside its own module: everything else asks the registry or the
built model.

Each guard is a function of a module's path and source text, so the tests below also show
that it reports a planted violation (a guard that cannot fail guards nothing)."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

import tlmat

LAYERS = [
    "hints",
    "machine",
    "progress",
    "datasets",
    "catalogue",
    "io",
    "graphs",
    "data",
    "models",
    "transfer",
    "training",
    "uncertainty",
    "inference",
    "labelling",
    "evaluation",
    "screening",
    "experiments",
    "estimator",
    "cli",
]
ROOT = Path(tlmat.__file__).parent
REPO = ROOT.parent

#: modules of tlmat.cli that are not command modules, by role: the package assembles the
#: app from every command (so it imports them all), ``__main__`` runs it, and the helper
#: modules hold what several commands share (options, error reporting, printing). Every
#: other module of tlmat.cli is a command module, so a new one is covered without a word.
CLI_ASSEMBLY = {"tlmat.cli", "tlmat.cli.__main__"}
CLI_HELPERS = {"tlmat.cli.common", "tlmat.cli.options"}

#: package → packages it must never import, on top of the layer order (which already
#: forbids them): said here because these are the edges that matter most — a model that
#: imports training or the CLI cannot be built, saved or loaded without them
NEVER_IMPORTS = {"tlmat.models": ("tlmat.training", "tlmat.cli")}


def module_name(path: str | Path) -> str:
    """The dotted module name of a file of tlmat (``tlmat/cli/data.py`` → ``tlmat.cli.data``,
    ``tlmat/cli/__init__.py`` → ``tlmat.cli``), from its path relative to the repository."""
    parts = list(Path(path).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: str | Path, source: str) -> Iterator[tuple[int, str]]:
    """(line, dotted name) of everything a tlmat module imports from tlmat: absolute
    (``import tlmat.x as y``, ``from tlmat.x import y``) and relative (``from . import x``,
    ``from .common import y``). For ``from M import n`` both ``M`` and ``M.n`` are given,
    since ``n`` may be a submodule (``from tlmat.cli import training``)."""
    name = module_name(path)
    package = name if Path(path).stem == "__init__" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "tlmat":
                    yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if module.split(".")[0] != "tlmat":
                continue
            yield node.lineno, module
            for alias in node.names:
                yield node.lineno, f"{module}.{alias.name}"


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _cli_command_module(module: str) -> str | None:
    """The command module ``module`` is or lies in (``tlmat.cli.training.train`` →
    ``tlmat.cli.training``), or None when it is no command module."""
    parts = module.split(".")
    if parts[:2] != ["tlmat", "cli"] or len(parts) < 3:
        return None
    owner = ".".join(parts[:3])
    return None if owner in CLI_ASSEMBLY | CLI_HELPERS else owner


def layer_violations(path: str | Path, source: str) -> list[str]:
    """Every import of the module at ``path`` (relative to the repository, e.g.
    ``tlmat/models/x.py``) with text ``source`` that breaks a layer rule."""
    name = module_name(path)
    parts = name.split(".")
    if len(parts) < 2 or parts[1] == "__main__":  # the package itself, `python -m tlmat`
        return []
    layer = parts[1]
    out = []
    for line, module in imported_modules(path, source):
        other = module.split(".")[1] if "." in module else None
        if other in LAYERS and LAYERS.index(other) > LAYERS.index(layer):
            out.append(f"{path}:{line} imports {module} (layer {other} above {layer})")
        for package, forbidden in NEVER_IMPORTS.items():
            if _within(name, package) and any(_within(module, f) for f in forbidden):
                out.append(f"{path}:{line} imports {module} ({package} never imports it)")
        mine, theirs = _cli_command_module(name), _cli_command_module(module)
        if mine is not None and theirs is not None and theirs != mine:
            out.append(f"{path}:{line} imports {module} (a CLI command module imports another)")
    return sorted(set(out))


def _tree() -> Iterator[tuple[Path, str]]:
    for path in sorted(ROOT.rglob("*.py")):
        yield path.relative_to(REPO), path.read_text()


def test_every_package_and_module_has_a_layer() -> None:
    parts = {p.relative_to(ROOT).parts[0].removesuffix(".py") for p in ROOT.glob("*")}
    parts -= {"__init__", "__main__", "__pycache__", "py.typed"}
    # data, not code: the shipped sources' weights and model cards
    assert not list((ROOT / "pretrained").rglob("*.py"))
    parts -= {"pretrained"}
    # data, not code: the names the command line checks before torch starts
    parts -= {"catalogue.json"}
    assert sorted(parts - set(LAYERS)) == []


def test_no_module_imports_from_a_layer_above() -> None:
    violations = [v for path, source in _tree() for v in layer_violations(path, source)]
    assert violations == []


@pytest.mark.parametrize(
    ("path", "source", "reason"),
    [
        ("tlmat/models/x.py", "from tlmat.training import fit\n", "layer training above"),
        ("tlmat/models/x.py", "import tlmat.cli.common as c\n", "never imports"),
        ("tlmat/models/x.py", "from tlmat import training\n", "layer training above"),
        ("tlmat/models/x.py", "from ..training import fit\n", "never imports"),
        ("tlmat/graphs/x.py", "from tlmat.data import load_dataset\n", "layer data above"),
        ("tlmat/cli/inference.py", "from tlmat.cli.training import train\n", "another"),
        ("tlmat/cli/inference.py", "from tlmat.cli import training\n", "another"),
        ("tlmat/cli/inference.py", "from . import training\n", "another"),
        ("tlmat/cli/inference.py", "from .training import train\n", "another"),
        ("tlmat/cli/inference.py", "import tlmat.cli.screening as s\n", "another"),
        # a command module added tomorrow is a command module without a word
        ("tlmat/cli/runs.py", "def f():\n    from .data import info\n", "another"),
    ],
)
def test_layer_guard_reports_a_planted_violation(path: str, source: str, reason: str) -> None:
    found = layer_violations(path, source)
    assert any(reason in v for v in found), found


@pytest.mark.parametrize(
    ("path", "source"),
    [
        ("tlmat/cli/inference.py", "from tlmat.cli.common import console\n"),
        ("tlmat/cli/inference.py", "from .common import console\n"),
        ("tlmat/cli/__init__.py", "from tlmat.cli.training import train\n"),
        ("tlmat/cli/__init__.py", "from .screening import screen\n"),
        ("tlmat/cli/__main__.py", "from tlmat.cli import app\n"),
        ("tlmat/cli/inference.py", "from tlmat.training import fit\n"),
        ("tlmat/training/fit.py", "from tlmat.models import registry\n"),
        ("tlmat/models/cgcnn.py", "from . import layers\nfrom .base import CrystalModel\n"),
    ],
)
def test_layer_guard_allows_what_the_rules_allow(path: str, source: str) -> None:
    assert layer_violations(path, source) == []


# --- the architecture guard --------------------------------------------------------------

#: comparisons with a registered name that do not name an architecture: (file, the other
#: side's text or the call, why). Keep it narrow: every entry says why it is not a name.
NOT_ARCHITECTURES = [
    (
        "tlmat/models/alignn.py",
        "atom_features",
        "ALIGNN's choice of atom-feature table: 'cgcnn' is the 92-d table of the CGCNN "
        "paper, which ALIGNN reads too, not the CGCNN architecture",
    ),
]

#: str methods that compare their receiver with a constant
_PREFIX_METHODS = {"startswith", "endswith", "removeprefix", "removesuffix"}


def registered_names() -> dict[str, str]:
    """Every name that picks an architecture → the architecture: its own name, its presets
    (``schnet-arch1``) and its published sources (``chgnet/0.3.0``)."""
    from tlmat.models import registry

    owners = {name: name for name in registry.MODULES}
    owners |= {preset: arch for preset, (arch, _) in registry.presets().items()}
    for name in registry.MODULES:
        owners |= {source: name for source in registry.get(name).sources}
    return owners


def _named(node: ast.AST, owners: dict[str, str], prefix: bool = False) -> list[str]:
    """The registered names a constant, tuple, list or set of constants holds; with
    ``prefix``, also constants that begin with an architecture's name and a separator
    (``"chgnet"``, ``"cgcnn/"``, ``"schnet-"``)."""
    out = []
    for c in ast.walk(node):
        if not (isinstance(c, ast.Constant) and isinstance(c.value, str)):
            continue
        if c.value in owners or (prefix and c.value.rstrip("/-_") in owners):
            out.append(c.value)
    return out


def _comparisons(tree: ast.AST, owners: dict[str, str]) -> Iterator[tuple[ast.AST, list[str]]]:
    """(node, names compared) of every comparison with a registered name: ``==``, ``!=``,
    ``in``, ``not in`` (constants or tuples/lists/sets of them), ``case "cgcnn":`` and
    ``x.startswith("chgnet")``."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            named = [n for side in (node.left, *node.comparators) for n in _named(side, owners)]
        elif isinstance(node, ast.MatchValue):
            named = _named(node.value, owners)
        elif isinstance(node, ast.match_case):
            named = []  # its MatchValue / MatchOr patterns are walked on their own
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in _PREFIX_METHODS
        ):
            named = [n for arg in node.args for n in _named(arg, owners, prefix=True)]
        else:
            continue
        if named:
            yield node, named


def _owner(name: str, owners: dict[str, str]) -> str:
    return owners.get(name) or owners[name.rstrip("/-_")]


def architecture_offenders(
    path: str | Path, source: str, owners: dict[str, str] | None = None
) -> list[str]:
    """Every comparison with a registered architecture, preset or source name in the module
    at ``path`` (relative to the repository) with text ``source``, except in that
    architecture's own module, in the registry and in :data:`NOT_ARCHITECTURES`."""
    from tlmat.models import registry

    owners = registered_names() if owners is None else owners
    name = module_name(path)
    if name == registry.__name__:
        return []
    out = []
    for node, named in _comparisons(ast.parse(source), owners):
        text = ast.unparse(node)
        if any(str(path) == f and allowed in text for f, allowed, _ in NOT_ARCHITECTURES):
            continue
        foreign = [n for n in named if registry.MODULES[_owner(n, owners)] != name]
        if foreign:
            out.append(f"{path}:{node.lineno} compares {foreign}: {text[:80]}")
    return out


def test_no_architecture_is_named_outside_its_own_module() -> None:
    """No ``if architecture == "cgcnn"`` outside that architecture's own module (and the
    registry's table): everything else asks the registry or the model."""
    owners = registered_names()
    offenders = [
        o for path, source in _tree() for o in architecture_offenders(path, source, owners)
    ]
    assert offenders == []


@pytest.mark.parametrize(
    "source",
    [
        'def f(name):\n    if name == "cgcnn":\n        return 1\n',
        'def f(config):\n    return "schnet" != config.name\n',
        'def f(x):\n    return x in ("alignn", "cgat")\n',
        'def f(x):\n    return x not in {"megnet"}\n',
        'def f(x):\n    match x:\n        case "m3gnet":\n            return 1\n',
        'def f(x):\n    match x:\n        case "a" | "sevennet":\n            return 1\n',
        'def f(x):\n    return x == "schnet-arch1"\n',
        'def f(x):\n    return x == "chgnet/0.3.0"\n',
        'def f(oracle):\n    return oracle.startswith("chgnet")\n',
    ],
)
def test_architecture_guard_reports_a_planted_comparison(source: str) -> None:
    assert architecture_offenders("tlmat/transfer/strategies.py", source)


def test_architecture_guard_leaves_an_architecture_its_own_module() -> None:
    source = 'def f(name):\n    return name == "cgcnn"\n'
    assert architecture_offenders("tlmat/models/cgcnn.py", source) == []
    assert architecture_offenders("tlmat/models/registry.py", source) == []
    # but not another architecture's module
    assert architecture_offenders("tlmat/models/schnet.py", source)
    # strings that are no comparison (messages, dict keys) are not names being compared
    source = 'MESSAGE = "train a cgcnn first"\nTABLE = {"cgcnn": 1}\n'
    assert architecture_offenders("tlmat/transfer/strategies.py", source) == []
