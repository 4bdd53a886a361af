"""One bit-width rule (issue 11, item 4): plans, cost tables and the quantizer share bitalloc.bits."""

import ast
from pathlib import Path

import numpy as np
import pytest

from bitalloc import BitPlan, CostTable, CostTableError, PlanError
from bitalloc.bits import MAX_BITS, MIN_BITS, QUANT_MAX_BITS, QUANT_MIN_BITS, check_bits

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("b, plan_ok, quant_ok", [
    (1, True, False), (2, True, True), (16, True, True), (17, True, False), (32, True, False), (33, False, False),
    (0, False, False), (np.int64(8), True, True),
])
def test_plan_and_quantizer_ranges(b, plan_ok, quant_ok):
    for quantizer, ok in ((False, plan_ok), (True, quant_ok)):
        if ok:
            assert check_bits(b, "x", quantizer=quantizer) == int(b)
        else:
            with pytest.raises(ValueError, match="bits of layer 'x' is"):
                check_bits(b, "x", quantizer=quantizer)


@pytest.mark.parametrize("b", [True, np.bool_(True), 4.0, "8", None])
def test_only_integers(b):
    with pytest.raises(ValueError, match="must be an int"):
        check_bits(b, quantizer=False)


def test_plans_tables_and_quantizers_use_it():
    assert (MIN_BITS, MAX_BITS, QUANT_MIN_BITS, QUANT_MAX_BITS) == (1, 32, 2, 16)
    with pytest.raises(PlanError, match="bits of layer 'a' is 33; it must be in 1..32"):
        BitPlan({"a": 33})
    assert BitPlan({"a": 1, "b": 32})["b"] == 32
    with pytest.raises(CostTableError, match="candidate bit-width in field 'bits' is 0; it must be in 1..32"):
        CostTable.from_arrays(["a"], (0, 4), [[1.0, 0.0]], num_params=[1])
    fake_quant = pytest.importorskip("bitalloc.fake_quant")
    assert fake_quant.check_bits is check_bits
    assert (fake_quant.MIN_BITS, fake_quant.MAX_BITS) == (QUANT_MIN_BITS, QUANT_MAX_BITS)


def test_no_other_module_defines_the_bit_range():
    """MIN_BITS / MAX_BITS are assigned and a check_bits is defined only in bitalloc/bits.py."""
    found = []
    for top in ("bitalloc", "solvers", "models"):
        for path in sorted((ROOT / top).rglob("*.py")):
            if path == ROOT / "bitalloc" / "bits.py":
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                targets = [t for n in ([node] if isinstance(node, ast.Assign) else [])
                           for t in n.targets for t in (t.elts if isinstance(t, ast.Tuple) else [t])]
                if any(isinstance(t, ast.Name) and t.id in ("MIN_BITS", "MAX_BITS") for t in targets):
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno} assigns the bit range")
                if isinstance(node, ast.FunctionDef) and node.name in ("check_bits", "_check_bits"):
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno} defines {node.name}")
    assert not found, "\n".join(found)
