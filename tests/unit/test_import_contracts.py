"""Architecture contracts: which packages may import which frameworks.

Pure decision code (protocol, membership, planning, operator domain) must not import I/O
frameworks; torch stays in the trainer SDK; pulp stays in the MILP module; the Kubernetes
client stays in kube.py. Checked on the AST, so imports inside functions count too.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCE_ROOTS = (ROOT / "operator", ROOT / "sidecar")

PURE = (
    "chaos_sidecar.protocol",
    "chaos_sidecar.membership",
    "chaos_sidecar.planning",
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
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, node.lineno))
    return found


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
            breaches.extend(check_module(module_name(path, source_root), imports_of(path)))
    return breaches


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
    ],
)
def test_a_broken_contract_is_reported(tmp_path: Path, module: str, source: str, rule: str) -> None:
    path = tmp_path / module
    path.parent.mkdir(parents=True)
    path.write_text(source)
    breaches = check_tree((tmp_path,))
    assert breaches, f"{module} should breach a contract"
    assert any(rule in b.rule for b in breaches), breaches


def test_allowed_imports_pass(tmp_path: Path) -> None:
    for module, source in {
        "chaos_sidecar/planning/milp.py": "import pulp\n",
        "chaos_train/sdk.py": "import torch\n",
        "chaos_operator/kube.py": "import kubernetes\nimport kopf\n",
        "chaos_lab/localjob.py": "from chaos_sidecar.membership.machine import Settings\n",
    }.items():
        path = tmp_path / module
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source)
    assert check_tree((tmp_path,)) == []
