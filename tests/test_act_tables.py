"""Cost tables with (weight, activation) candidates (issue 14, item 1): validation, CSV/JSON round trip, every
allocator under a size budget, ilp/iqp under a size and a BOPs budget, plans carrying the activation bits."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import allocations_under_extra

from bitalloc import Budget, CostTable, LinearConstraint, available_allocators, build_allocator
from bitalloc.acttable import weight_view
from bitalloc.errors import BudgetError, CostTableError, PlanError
from bitalloc.graph import quantizable_layers
from bitalloc.macs import count_macs
from bitalloc.plan import BitPlan
from bitalloc.quant import layer_size_bits

BITS = (4, 4, 8, 8, 8)
ACTS = (4, 8, 8, 16, None)  # W4A4, W4A8, W8A8, W8A16, W8 with a float input


def _cost(sens: np.ndarray, w: int, a: int | None) -> np.ndarray:
    return sens * (4.0 ** -w + (0.0 if a is None else 0.5 * 2.0 ** -a))


@pytest.fixture(scope="module")
def setup(_hyperprior_master):
    layers = quantizable_layers(_hyperprior_master)
    names = list(layers)
    sens = np.random.default_rng(0).lognormal(0, 1, len(names))
    cost = np.stack([_cost(sens, w, a) for w, a in zip(BITS, ACTS)], axis=1)
    size = [[layer_size_bits(layers[n], w) for w in BITS] for n in names]
    table = CostTable.from_arrays(names, BITS, cost, size, num_params=[layers[n].weight.numel() for n in names],
                                  act_bits=ACTS)
    return table, count_macs(_hyperprior_master, (3, 64, 64))


def test_csv_and_json_round_trip(setup, tmp_path):
    table, _ = setup
    table.to_csv(tmp_path / "t.csv")
    assert CostTable.from_csv(tmp_path / "t.csv") == table
    frame = pd.read_csv(tmp_path / "t.csv", dtype=str, keep_default_na=False)
    assert list(frame.act_bits[:5]) == ["4", "8", "8", "16", ""]  # a float input is a blank cell
    table.to_json(tmp_path / "t.json")
    assert CostTable.from_json(tmp_path / "t.json") == table
    data = json.loads((tmp_path / "t.json").read_text())
    assert data["version"] == 3 and data["act_bits"] == [4, 8, 8, 16, None]
    weights = table.replace(bits=(4, 8), cost=table.cost[:, [0, 2]], size_bits=table.size_bits[:, [0, 2]],
                            act_bits=None)
    assert weights != table
    assert weights.to_dict()["version"] == 1 and "act_bits" not in weights.to_dict()
    assert "act_bits" not in weights.to_frame().columns  # weight-only files unchanged
    assert CostTable.from_dict(weights.to_dict()) == weights
    with pytest.raises(CostTableError, match="field 'act_bits' in a version 1 table"):
        CostTable.from_dict({**weights.to_dict(), "act_bits": [8, 8]})


def test_validation_names_the_culprit(setup):
    table, _ = setup
    with pytest.raises(CostTableError, match=r"w4a8 then w4a4 at columns 0, 1"):
        table.replace(act_bits=(8, 4, 8, 16, None))
    with pytest.raises(CostTableError, match="4 entries for 5 candidates"):
        table.replace(act_bits=ACTS[:4])
    size = table.size_bits.copy()
    size[2, 1] += 1
    with pytest.raises(CostTableError, match=f"layer '{table.layer_names[2]}' at w4a8 .* size counts weights"):
        table.replace(size_bits=size)
    with pytest.raises(CostTableError, match="cannot have pairwise terms"):
        table.replace(pairwise={table.layer_names[:2]: np.zeros((5, 5))})


def test_every_allocator_under_a_size_budget_plans_with_activation_bits(setup):
    table, _ = setup
    budget = Budget.from_avg_bits(table, 6)
    view, pick = weight_view(table)
    assert view.bits == (4, 8) and view.act_bits is None
    assert (pick[:, 0] == 1).all() and (pick[:, 1] == 4).all()  # W4A8 beats W4A4; a float input is free
    best = build_allocator("ilp").allocate(view, budget)
    for name in available_allocators():
        r = build_allocator(name).allocate(table, budget)
        assert r.ok, (name, r.message)
        choice = r.plan.choices(table)
        assert r.size_bits == table.plan_size(choice) <= budget.max_size_bits
        assert r.objective == table.objective(choice) >= best.objective * (1 - 1e-12)
        for n, j in zip(table.layer_names, choice):
            assert r.plan.bits[n] == BITS[j] and r.plan.act_bits.get(n) == ACTS[j], name
        assert set(r.plan.act_bits) == {n for n, j in zip(table.layer_names, choice) if ACTS[j] is not None}
    ilp = build_allocator("ilp").allocate(table, budget)
    assert ilp.objective == best.objective and {4, 8} == set(ilp.plan.bits.values())
    assert set(ilp.plan.act_bits.values()) == {8}  # the W4 layers keep 8-bit inputs, the W8 ones float


def test_ilp_and_iqp_keep_the_size_and_the_bops_budget(setup):
    table, macs = setup
    size_only = Budget.from_avg_bits(table, 6)
    free = build_allocator("ilp").allocate(table, size_only)
    free_bops = free.plan.bit_operations(macs)
    limit = 0.5 * free_bops
    bops = LinearConstraint.bit_operations(table, macs, limit)
    assert bops.value(table, free.plan.choices(table)) == free_bops  # a float input counts 32 bits, as the plan
    both = Budget(size_only.max_size_bits, extra=(bops,))
    for name, r in allocations_under_extra(table, both):
        assert r.ok, (name, r.message)
        assert r.plan.size_bits(table) <= both.max_size_bits
        assert r.plan.bit_operations(macs) == bops.value(table, r.plan.choices(table)) <= limit
        assert r.objective > free.objective and r.plan.act_bits  # the BOPs budget costs activation bits
    with pytest.raises(BudgetError, match="carry their own activation bits"):
        LinearConstraint.bit_operations(table, macs, limit, activation_bits=8)


def test_plans_and_tables_match_on_both_bit_widths(setup):
    table, _ = setup
    names = table.layer_names
    plan = BitPlan.uniform(names, 8, act_bits=16)
    assert (plan.choices(table) == 3).all()
    assert plan.weights_only().cost(table) == table.objective(np.full(len(names), 4))  # float input: W8
    with pytest.raises(PlanError, match=f"layer '{names[0]}' is w8a4 .*not a candidate.*w4a4, w4a8"):
        BitPlan.uniform(names, 8, act_bits=4).choices(table)
    assert BitPlan.from_choices(table, plan.choices(table)) == plan


def test_ilp_is_optimal_under_both_budgets_by_brute_force(setup):
    """Equal sizes within a weight bit-width do not upset the ilp's bounds: on six layers (5^6 plans) its plan
    is the cheapest of all that keep both budgets."""
    import itertools

    table, macs = setup
    small = table.subset(table.layer_names[:6])
    grid = np.array(list(itertools.product(range(len(BITS)), repeat=small.num_layers)))
    rows = np.arange(small.num_layers)
    bops = LinearConstraint.bit_operations(small, macs, 1.0)
    size, ops = small.size_bits[rows, grid].sum(1), bops.matrix(small)[rows, grid].sum(1)
    cost = small.cost[rows, grid].sum(1)
    for avg, share in ((6, 0.5), (5, 0.3), (7, 0.8)):
        budget = Budget.from_avg_bits(small, avg)
        limit = share * ops.max()
        both = Budget(budget.max_size_bits, extra=(LinearConstraint.bit_operations(small, macs, limit),))
        ok = (size <= budget.max_size_bits) & (ops <= limit)
        for name in ("ilp", "iqp"):
            r = build_allocator(name).allocate(small, both)
            assert r.objective == pytest.approx(cost[ok].min(), rel=1e-9), (name, avg, share)


def test_monotone_along_weight_bits_and_along_activation_bits():
    # candidates W4A4, W4A8, W8A4, W8A8, W8 (float input); one layer with noisy costs
    t = CostTable.from_arrays(["a"], (4, 4, 8, 8, 8), [[0.5, 0.7, 0.6, 0.1, 0.3]], num_params=[10],
                              act_bits=(4, 8, 4, 8, None))
    # W4A8 <= W4A4; W8A4 <= W4A4; W8A8 <= W4A8 and W8A4; W8 <= W8A8
    assert t.monotone().cost.tolist() == [[0.5, 0.5, 0.5, 0.1, 0.1]]
    assert t.monotone().act_bits == t.act_bits


def test_verify_and_repair_refuses_a_weight_activation_table_by_name(setup):
    from bitalloc.repair import verify_and_repair

    table, _ = setup
    with pytest.raises(ValueError, match=r"verify_and_repair: the cost table has \(weight, activation\) candidates"):
        verify_and_repair(None, None, table, Budget.from_avg_bits(table, 6))
