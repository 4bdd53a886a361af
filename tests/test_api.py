"""The public namespace: the core imports without torch, every lazy name resolves to where the table says."""

import importlib
import subprocess
import sys

import pytest

import bitalloc


def _fresh(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()


def test_core_import_does_not_import_torch():
    code = "import sys, bitalloc; bitalloc.CostTable; bitalloc.build_allocator('ilp'); print('torch' in sys.modules)"
    assert _fresh(code) == "False"


def test_listing_the_namespace_imports_no_torch_and_a_lazy_name_does():
    code = ("import sys, bitalloc; names = dir(bitalloc); a = 'torch' in sys.modules; bitalloc.apply_plan; "
            "print(a, 'torch' in sys.modules, 'apply_plan' in names)")
    assert _fresh(code) == "False True True"


def test_every_lazy_name_comes_from_the_module_the_table_names():
    for name, module in bitalloc._LAZY.items():
        obj = getattr(bitalloc, name)
        assert obj.__module__ == module, f"bitalloc.{name} is defined in {obj.__module__}, the table says {module}"
        assert getattr(importlib.import_module(module), name) is obj
    # the module that holds evaluate() must not shadow the function
    assert callable(bitalloc.evaluate)


def test_all_matches_dir_and_every_name_resolves():
    public = {n for n in dir(bitalloc) if not n.startswith("_")}
    assert public == set(bitalloc.__all__)
    assert len(bitalloc.__all__) == len(set(bitalloc.__all__))
    assert set(bitalloc._LAZY) <= set(bitalloc.__all__)
    for name in bitalloc.__all__:
        assert getattr(bitalloc, name) is not None, name
    assert "__version__" in dir(bitalloc)


def test_an_unknown_name_is_an_attribute_error_naming_it():
    with pytest.raises(AttributeError, match="no_such_thing"):
        bitalloc.no_such_thing  # noqa: B018
