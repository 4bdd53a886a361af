"""The public namespace: the core imports without torch, every lazy name resolves."""

import subprocess
import sys

import bitalloc


def test_core_import_does_not_import_torch():
    code = "import sys, bitalloc; bitalloc.CostTable; bitalloc.build_allocator('ilp'); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_every_lazy_name_resolves_and_is_listed():
    for name, module in bitalloc._LAZY.items():
        obj = getattr(bitalloc, name)
        assert obj.__module__.startswith(module), (name, obj.__module__)
    assert set(bitalloc._LAZY) <= set(dir(bitalloc))
    # the module that holds evaluate() must not shadow the function
    assert callable(bitalloc.evaluate)
