"""Bit-operations end to end: count_macs -> BOPs constraint with per-layer activation bits -> allocators under
size and BOPs budgets -> a BitPlan with activation bits whose own BOPs count agrees."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import allocations_under_extra

from bitalloc import Budget, CostTable, LinearConstraint, build_allocator
from bitalloc.errors import BudgetError
from bitalloc.graph import quantizable_layers
from bitalloc.macs import count_macs
from bitalloc.plan import BitPlan
from bitalloc.quant import layer_size_bits


@pytest.fixture(scope="module")
def setup(_hyperprior_master):
    model = _hyperprior_master
    layers = quantizable_layers(model)
    names = list(layers)
    bits = (2, 4, 6, 8)
    macs = count_macs(model, (3, 64, 64))
    rng = np.random.default_rng(0)
    sens = rng.lognormal(0, 1, len(names))
    cost = sens[:, None] * 4.0 ** -np.array(bits)[None, :]
    size = [[layer_size_bits(layers[n], b) for b in bits] for n in names]
    table = CostTable.from_arrays(names, bits, cost, size,
                                  num_params=[int(layers[n].weight.numel()) for n in names])
    acts = {n: (4 if i % 3 == 0 else 8) for i, n in enumerate(names)}  # mixed activation bits, fixed
    return table, macs, acts


def test_allocators_keep_both_budgets_and_the_plan_counts_the_same_bops(setup):
    table, macs, acts = setup
    size_only = Budget.from_avg_bits(table, 6)
    free = build_allocator("ilp").allocate(table, size_only)
    free_plan = BitPlan(free.plan.bits, act_bits=acts)
    limit = 0.8 * free_plan.bit_operations(macs)  # binding: the size-only optimum breaks it
    bops = LinearConstraint.bit_operations(table, macs, limit, activation_bits=acts)
    both = Budget(size_only.max_size_bits, extra=(bops,))
    assert both.exceeded(table, free.plan.choices(table)) is not None
    ran = []
    for name, r in allocations_under_extra(table, both):
        plan = BitPlan(r.plan.bits, act_bits=acts)
        assert both.exceeded(table, plan.choices(table)) is None, name
        assert plan.size_bits(table) <= both.max_size_bits
        assert plan.bit_operations(macs) == bops.value(table, plan.choices(table)) <= limit
        assert r.objective >= free.objective
        ran.append(name)
    assert {"ilp", "iqp"} <= set(ran)


def test_bops_constraint_per_layer_activation_bits(setup):
    table, macs, acts = setup
    c = LinearConstraint.bit_operations(table, macs, 1e18, activation_bits=acts)
    n = table.layer_names[0]
    assert c.coeffs[n] == tuple(float(macs[n]) * b * acts[n] for b in table.bits)
    uniform = LinearConstraint.bit_operations(table, macs, 1e18, activation_bits=8)
    assert uniform.coeffs == LinearConstraint.bit_operations(table, macs, 1e18,
                                                             activation_bits=dict.fromkeys(macs, 8)).coeffs
    with pytest.raises(BudgetError, match=f"no activation bits for layer '{table.layer_names[1]}'"):
        LinearConstraint.bit_operations(table, macs, 1e18, activation_bits={n: 8})
