"""Public means public: no project module uses another module's ``_private`` name (issue 11, item 5).

Scanned: the sources of bitalloc/, solvers/ (installed as bitalloc.solvers), models/ (bitalloc.models) and
studies/. A violation is ``from X import _name``, or ``X._name`` where X is bound to a project module, with X
another module; a private *module* (``solvers/_mckp.py``) may be imported inside its own package only.
Third-party privates (``torch.utils._pytree``) are out of scope. Dunder names are public.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"bitalloc": "bitalloc", "solvers": "bitalloc.solvers", "models": "bitalloc.models", "studies": "studies"}


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = [PACKAGES[rel.parts[0]], *rel.parts[1:]]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    out = {}
    for top in PACKAGES:
        for path in sorted((ROOT / top).rglob("*.py")):
            out[_module_name(path)] = path
    return out


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _is_project(dotted: str, modules: set[str]) -> bool:
    return dotted in modules or dotted.split(".")[0] in {"bitalloc", "studies"}


def _private_module_outside(target: str, importer: str) -> bool:
    """``target`` has a private component whose parent package does not contain ``importer``."""
    parts = target.split(".")
    for i, part in enumerate(parts):
        if _private(part):
            package = ".".join(parts[:i])
            return not (importer == package or importer.startswith(package + "."))
    return False


def violations(source: str, module: str, modules: set[str], is_package: bool = False) -> list[str]:
    """Cross-module uses of private names in ``source`` (the module ``module``), as readable strings."""
    tree = ast.parse(source)
    package = module if is_package else module.rpartition(".")[0]
    bound: dict[str, str] = {}  # local name -> project module it refers to
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if not _is_project(alias.name, modules):
                    continue
                if _private_module_outside(alias.name, module):
                    found.append(f"line {node.lineno}: import {alias.name}")
                top = alias.name.split(".")[0]
                bound[alias.asname or top] = alias.name if alias.asname else top
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".") if package else []
                base = base[:len(base) - (node.level - 1)] if node.level > 1 else base
                source_mod = ".".join(base + ([node.module] if node.module else []))
            else:
                source_mod = node.module or ""
            if not _is_project(source_mod, modules) or source_mod == module:
                continue
            if _private_module_outside(source_mod, module):
                found.append(f"line {node.lineno}: from {source_mod} import ...")
            for alias in node.names:
                full = f"{source_mod}.{alias.name}"
                if full in modules:
                    if _private_module_outside(full, module):
                        found.append(f"line {node.lineno}: from {source_mod} import {alias.name}")
                    bound[alias.asname or alias.name] = full
                elif _private(alias.name):
                    found.append(f"line {node.lineno}: from {source_mod} import {alias.name}")
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _private(node.attr):
            chain, value = [], node.value
            while isinstance(value, ast.Attribute):
                chain.append(value.attr)
                value = value.value
            if isinstance(value, ast.Name) and value.id in bound:
                target = ".".join([bound[value.id], *reversed(chain)])
                if target != module and (target in modules or target.split(".")[0] == "bitalloc"):
                    found.append(f"line {node.lineno}: {target}.{node.attr}")
    return found


@pytest.mark.parametrize("source, module, expected", [
    ("from bitalloc.quant import _Round", "bitalloc.dynaquant.quantizers", 1),
    ("from ..quant import _axis, calibrate_range", "bitalloc.dynaquant.quantizers", 1),
    ("import bitalloc.quant as q\nq._quantizer(m)", "bitalloc.export", 1),
    ("from bitalloc import quant\nquant._axis(m)", "bitalloc.sensitivity.measure", 1),
    ("import bitalloc\nbitalloc.quant._Round.apply(u)", "studies.x", 1),
    ("from bitalloc.solvers._mckp import descend", "bitalloc.harness", 1),
    ("from ._mckp import descend", "bitalloc.solvers.greedy", 0),
    ("from bitalloc.quant import RoundClamp\nself._cache = RoundClamp", "bitalloc.dynaquant.quantizers", 0),
    ("from torch.utils._pytree import tree_flatten\nimport torch\ntorch._C", "bitalloc.graph", 0),
    ("def _mine():\n    pass\n_mine()", "bitalloc.quant", 0),
], ids=["from-import", "relative", "module-alias", "from-package", "dotted-chain", "private-module-outside",
        "private-module-inside", "self-attribute", "third-party", "own-private"])
def test_the_scanner_finds_cross_module_private_uses(source, module, expected):
    modules = set(project_modules()) | {"bitalloc.solvers._mckp"}
    assert len(violations(source, module, modules)) == expected


def test_no_module_uses_another_modules_private_names():
    modules = project_modules()
    found = []
    for name, path in modules.items():
        for v in violations(path.read_text(), name, set(modules), is_package=path.name == "__init__.py"):
            found.append(f"{path.relative_to(ROOT)} {v}")
    assert not found, "private names used across modules (promote them to public names):\n" + "\n".join(found)


MAX_LINES = 300  # issue 11: no module over about 300 lines; split along real seams instead


def test_no_library_module_is_over_300_lines():
    long = []
    for top in ("bitalloc", "solvers", "models"):
        for path in sorted((ROOT / top).rglob("*.py")):
            n = len(path.read_text().splitlines())
            if n > MAX_LINES:
                long.append(f"{path.relative_to(ROOT)}: {n} lines")
    assert not long, f"modules over {MAX_LINES} lines (split them along their seams):\n" + "\n".join(long)
