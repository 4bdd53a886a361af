"""Docstring examples are tests: every ``>>>`` example in bitalloc/, solvers/ and models/ runs (issue 11, item 6).

The modules are found by scanning the sources (so collection imports nothing) and imported under their installed
names (``solvers/`` is ``bitalloc.solvers``, ``models/`` is ``bitalloc.models``), as a user imports them.
"""

from __future__ import annotations

import doctest
import importlib
import io
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = {"bitalloc": "bitalloc", "solvers": "bitalloc.solvers", "models": "bitalloc.models"}


def _module_name(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = [PACKAGES[rel.parts[0]], *rel.parts[1:]]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules_with_examples() -> list[str]:
    return sorted(_module_name(p) for top in PACKAGES for p in (REPO / top).rglob("*.py")
                  if p.name != "__main__.py" and ">>>" in p.read_text(encoding="utf-8"))


MODULES = modules_with_examples()


def test_the_scan_finds_the_documented_modules():
    assert {"bitalloc.atomic", "bitalloc.analysis", "bitalloc.reference", "bitalloc.models.losses"} <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    tests = doctest.DocTestFinder().find(module, name)
    out = io.StringIO()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in tests:
        runner.run(test, out=out.write)
    results = runner.summarize(verbose=False)
    assert results.attempted > 0, f"{name} has '>>>' in its source but no docstring example doctest can find"
    assert results.failed == 0, out.getvalue()
