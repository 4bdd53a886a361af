"""studies/plan_headroom.py: the annealing search stays within the budget and returns the lowest plan it measured;
the BD table compares each method's curve with FP32 and the ILP's."""

import numpy as np
import pandas as pd
import pytest

from bitalloc import Budget, CostTable
from conftest import load_study


@pytest.fixture(scope="module")
def study():
    return load_study("plan_headroom")


def _table(n=6):
    rng = np.random.default_rng(0)
    bits = (2, 4, 8)
    cost = np.sort(rng.uniform(0, 1, (n, 3)), axis=1)[:, ::-1].copy()
    size = np.outer(rng.integers(100, 1000, n), bits).astype(float)
    return CostTable.from_arrays([f"l{i}" for i in range(n)], bits, cost, size)


def test_the_search_stays_in_budget_and_keeps_the_lowest_measured_plan(study):
    table = _table()
    budget = Budget.from_avg_bits(table, 4.0)
    start = np.zeros(len(table.layer_names), dtype=int)
    seen = {}

    class Measured(dict):  # the study's Measured, on a loss the table does not predict: layer pairs interact
        values = seen

        def __call__(self, choice):
            key = tuple(int(c) for c in choice)
            if key not in seen:
                seen[key] = float(table.objective(np.array(key)) + 0.5 * (key[0] == key[1]))
            return seen[key]

    found = study.search(Measured(), table, budget, start, evals=40, seed=0, temperature=0.05, desc="test")
    assert len(seen) == 41  # the start and 40 more
    assert all(budget.exceeded(table, np.array(k)) is None for k in seen)
    assert found["measured"] == min(seen.values()) and seen[tuple(found["choice"])] == found["measured"]
    assert found["measured"] < seen[tuple(start)]


def test_the_bd_table_compares_each_method_with_fp32_and_the_ilp(study):
    q = [1, 2, 3, 4]
    rate = np.array([0.1, 0.2, 0.4, 0.8])
    psnr = np.array([26.0, 28.0, 30.0, 32.0])
    rows = [{"quality": k, "method": "fp32", "bpp": r, "psnr_rgb": p} for k, r, p in zip(q, rate, psnr)]
    for method, factor in (("ilp", 2.0), ("ilp+verify", 1.5), ("in-context", 1.5), ("search", 3.0)):
        rows += [{"quality": k, "method": method, "bpp": r * factor, "psnr_rgb": p, "measured": 0.1, "predicted": 0.05,
                  "evals": 1} for k, r, p in zip(q, rate, psnr)]
    bd = study.bd_table(pd.DataFrame(rows)).set_index("method")
    assert bd.bd_rate_vs_fp32_pct["ilp"] == pytest.approx(100.0, abs=1e-6)
    assert bd.bd_rate_vs_fp32_pct["search"] == pytest.approx(200.0, abs=1e-6)
    assert bd.bd_change_vs_ilp_pct["ilp+verify"] == pytest.approx(-50.0, abs=1e-6)  # +50 % against +100 %
    assert bd.bd_change_vs_ilp_pct["ilp"] == 0.0
