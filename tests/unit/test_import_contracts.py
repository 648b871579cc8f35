"""Architecture contracts: which packages may import which frameworks, and the layer order.

Pure decision code (protocol, membership, planning, parties, operator domain) must not import I/O
frameworks; torch stays in the trainer SDK; pulp stays in the MILP module; the Kubernetes
client stays in kube.py; the product never imports the lab, nor names its modules in strings.
The layers are read from the table in docs/design.md: no module imports upward across them.
Checked on the AST, so imports inside functions count too.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCE_ROOTS = (ROOT / "operator", ROOT / "sidecar")
DESIGN = ROOT / "docs" / "design.md"

PURE = (
    "chaos_sidecar.protocol",
    "chaos_sidecar.membership",
    "chaos_sidecar.planning",
    "chaos_sidecar.parties",
    "chaos_sidecar.clock_skew",
    "chaos_sidecar.self_check",
    "chaos_operator.domain",
)
PURE_EXCEPTIONS = ("chaos_sidecar.planning.milp",)
PRODUCT = ("chaos_sidecar", "chaos_train", "chaos_operator")
LAB = "chaos_lab"
IO_FRAMEWORKS = ("aiohttp", "kubernetes", "kopf", "torch")

# framework -> module prefixes allowed to import it (everything else is forbidden)
ONLY_IN = {
    "torch": ("chaos_train", "chaos_lab"),  # the lab's baselines run plain torch loops
    "pulp": ("chaos_sidecar.planning.milp",),
    "kubernetes": ("chaos_operator.kube",),
    "kopf": (
        "chaos_operator.main",
        "chaos_operator.handlers",
        "chaos_operator.kube",
        "chaos_operator.settings",
        "chaos_operator.runner",
    ),
}


@dataclass(frozen=True)
class Breach:
    module: str
    imported: str
    line: int
    rule: str

    def __str__(self) -> str:
        return f"{self.module}:{self.line} imports {self.imported} ({self.rule})"


def _within(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def module_name(path: Path, source_root: Path) -> str:
    parts = list(path.relative_to(source_root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> list[tuple[str, int]]:
    """Imported names, as dotted paths: ``from a.b import c`` gives ``a.b.c``, so importing a
    submodule from its package counts as importing the submodule."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.extend((f"{node.module}.{alias.name}", node.lineno) for alias in node.names)
    return found


def lab_names_in_strings(path: Path) -> list[tuple[str, int]]:
    """String constants (docstrings aside) naming a lab module, e.g. an importlib target."""
    tree = ast.parse(path.read_text(), filename=str(path))
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return [
        (node.value, node.lineno)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in docstrings
        and re.search(rf"\b{LAB}\b", node.value)
    ]


def check_module(module: str, imports: list[tuple[str, int]]) -> list[Breach]:
    breaches = []
    for imported, line in imports:
        top = imported.split(".")[0]
        if _within(module, PURE) and not _within(module, PURE_EXCEPTIONS) and top in IO_FRAMEWORKS:
            breaches.append(Breach(module, imported, line, "pure package imports an I/O framework"))
        if _within(module, PRODUCT) and top == LAB:
            breaches.append(Breach(module, imported, line, "the product never imports the lab"))
        allowed = ONLY_IN.get(top)
        if allowed is not None and not _within(module, allowed):
            breaches.append(Breach(module, imported, line, f"only {', '.join(allowed)} may import {top}"))
    return breaches


def check_tree(source_roots: tuple[Path, ...]) -> list[Breach]:
    breaches = []
    for source_root in source_roots:
        for path in sorted(source_root.rglob("*.py")):
            module = module_name(path, source_root)
            breaches.extend(check_module(module, imports_of(path)))
            if _within(module, PRODUCT):
                breaches.extend(
                    Breach(module, text, line, "the product never names a lab module")
                    for text, line in lab_names_in_strings(path)
                )
    return breaches


# --- layers ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Layer:
    rank: int
    name: str
    modules: tuple[str, ...]


# top-level package files that hold only a docstring and the version: no layer
UNLAYERED = ("chaos_sidecar", "chaos_operator")


def read_layers(design: str) -> list[Layer]:
    """The table of the "Layers" section: rows ``| rank | name | `module`, ... | why |``."""
    section = design.split("\n## 3. Layers\n", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\|\s*(\d+)\s*\|([^|]+)\|([^|]+)\|", section, flags=re.MULTILINE)
    return [
        Layer(int(rank), name.strip(), tuple(re.findall(r"`([\w.]+)`", names))) for rank, name, names in rows
    ]


def layer_of(module: str, layers: list[Layer]) -> Layer | None:
    """The layer of the most specific name that covers ``module``."""
    covering = [(len(name), layer) for layer in layers for name in layer.modules if _within(module, (name,))]
    return max(covering, key=lambda pair: pair[0])[1] if covering else None


def check_layers(modules: dict[str, list[tuple[str, int]]], layers: list[Layer]) -> list[Breach]:
    breaches = []
    for module, imports in modules.items():
        own = layer_of(module, layers)
        if own is None:
            if module not in UNLAYERED:
                breaches.append(Breach(module, "", 0, "has no layer in docs/design.md"))
            continue
        for imported, line in imports:
            target = layer_of(imported, layers)
            if target is None:
                continue
            if target.rank > own.rank:
                rule = f"imports upward: layer {own.rank} ({own.name}) -> {target.rank} ({target.name})"
                breaches.append(Breach(module, imported, line, rule))
            elif target.rank == own.rank and imported.split(".")[0] != module.split(".")[0]:
                rule = f"imports another package within layer {own.rank} ({own.name})"
                breaches.append(Breach(module, imported, line, rule))
    return breaches


def modules_of(source_roots: tuple[Path, ...]) -> dict[str, list[tuple[str, int]]]:
    return {
        module_name(path, root): imports_of(path)
        for root in source_roots
        for path in sorted(root.rglob("*.py"))
    }


def write_tree(root: Path, sources: dict[str, str]) -> tuple[Path, ...]:
    """A source tree of the given files under ``root``, as ``check_tree``'s source roots."""
    for module, source in sources.items():
        path = root / module
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source)
    return (root,)


def test_no_module_imports_upward_across_the_layers_of_the_design() -> None:
    breaches = check_layers(modules_of(SOURCE_ROOTS), read_layers(DESIGN.read_text()))
    assert not breaches, "\n".join(map(str, breaches))


def test_the_design_names_the_layers_in_order() -> None:
    layers = read_layers(DESIGN.read_text())
    assert [layer.rank for layer in layers] == list(range(1, len(layers) + 1))
    assert "chaos_train" in layer_of("chaos_train.sdk", layers).modules
    # the pure-decision layer is the one whose packages may not import I/O frameworks
    assert set(layer_of("chaos_sidecar.membership.machine", layers).modules) == set(PURE)


@pytest.mark.parametrize(
    ("module", "source", "rule"),
    [
        ("chaos_sidecar/membership/bad.py", "from chaos_sidecar.transfer import snapshot\n", "upward"),
        ("chaos_sidecar/errors.py", "def f():\n    import chaos_sidecar.cli\n", "upward"),
        ("chaos_lab/commands/bad.py", "from chaos_sidecar.cli import main\n", "within layer 6"),
        ("chaos_sidecar/adapters/bad.py", "import chaos_train.sdk\n", "within layer 4"),
        ("chaos_sidecar/newpart/thing.py", "import json\n", "no layer"),
    ],
)
def test_a_broken_layer_is_reported(tmp_path: Path, module: str, source: str, rule: str) -> None:
    breaches = check_layers(
        modules_of(write_tree(tmp_path, {module: source})), read_layers(DESIGN.read_text())
    )
    assert any(rule in b.rule for b in breaches), breaches


def test_source_tree_keeps_the_import_contracts() -> None:
    breaches = check_tree(SOURCE_ROOTS)
    assert not breaches, "\n".join(map(str, breaches))


def test_checker_sees_packages() -> None:
    modules = {module_name(p, r) for r in SOURCE_ROOTS for p in r.rglob("*.py")}
    assert "chaos_sidecar.membership.machine" in modules
    assert "chaos_sidecar.protocol.messages" in modules


@pytest.mark.parametrize(
    ("module", "source", "rule"),
    [
        ("chaos_sidecar/membership/bad.py", "import aiohttp\n", "pure package"),
        ("chaos_sidecar/protocol/bad.py", "def f():\n    from torch import nn\n", "pure package"),
        ("chaos_sidecar/planning/greedy2.py", "import pulp\n", "only chaos_sidecar.planning.milp"),
        ("chaos_sidecar/transfer/bad.py", "import torch\n", "only chaos_train"),
        (
            "chaos_operator/handlers/bad.py",
            "from kubernetes import client\n",
            "only chaos_operator.kube",
        ),
        ("chaos_operator/domain/bad.py", "import kopf\n", "pure package"),
        (
            "chaos_sidecar/adapters/bad.py",
            "from chaos_lab.churn import ChurnEvent\n",
            "never imports the lab",
        ),
        ("chaos_train/bad.py", "def f():\n    import chaos_lab.localjob\n", "never imports the lab"),
        (
            "chaos_sidecar/cli.py",
            '"""Loads chaos_lab commands."""\nCOMMANDS = {"sim": "chaos_lab.commands.sim:run"}\n',
            "never names a lab module",
        ),
    ],
)
def test_a_broken_contract_is_reported(tmp_path: Path, module: str, source: str, rule: str) -> None:
    breaches = check_tree(write_tree(tmp_path, {module: source}))
    assert breaches, f"{module} should breach a contract"
    assert any(rule in b.rule for b in breaches), breaches


def test_allowed_imports_pass(tmp_path: Path) -> None:
    """Frameworks where they belong, imports downward and within a package."""
    roots = write_tree(
        tmp_path,
        {
            "chaos_sidecar/planning/milp.py": "import pulp\n",
            "chaos_train/sdk.py": "import torch\n",
            "chaos_operator/kube.py": "import kubernetes\nimport kopf\n",
            "chaos_operator/runner.py": "from chaos_operator import kube, main\n",
            "chaos_lab/localjob.py": "from chaos_sidecar.membership.machine import Settings\n",
            "chaos_sidecar/commands/sidecar.py": "from chaos_sidecar.adapters.http_app import build_app\n",
            "chaos_sidecar/cli.py": "from chaos_sidecar import __version__\n",
        },
    )
    assert check_tree(roots) == []
    assert check_layers(modules_of(roots), read_layers(DESIGN.read_text())) == []
