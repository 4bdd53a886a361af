"""Property check of every allocator on seeded random tables at boundary budgets (the fast subset of
``python studies/bench_solvers.py --property 10000``; see ``bitalloc.solvers.conformance``)."""

import numpy as np
import pytest

from bitalloc import Budget
from bitalloc.solvers import conformance

FAST = [n for n in conformance.ALLOCATORS if n != "ilp/pulp"]


def assert_clean(counts):
    assert counts.failures() == 0, "\n".join(counts.examples)


def test_every_allocator_on_random_tables_at_boundary_budgets():
    # 200 tables x ~8 budgets: exactly at min / max / every uniform size, one float step below, random
    counts = conformance.run(200, seed=2024, names=FAST, max_layers=16)
    assert counts.tables == 200 and counts.cases >= 1200
    assert_clean(counts)


def test_every_allocator_on_random_tables_with_pairwise_terms():
    # interactions of either sign on half the pairs; iqp and exact (brute force) must agree, nobody exceeds a budget
    counts = conformance.run(12, seed=11, names=FAST, pairwise=True)
    assert counts.tables == 12 and counts.cases >= 60
    assert_clean(counts)


def test_pulp_path_default_path_and_exact_agree():
    counts = conformance.run(24, seed=7, names=("ilp", "ilp/pulp", "exact", "greedy"), max_layers=12)
    assert counts.cases >= 150
    assert_clean(counts)


def test_the_checker_catches_a_plan_over_budget_and_a_false_optimal(monkeypatch):
    # the property test must be able to fail: an allocator that ignores the budget, one that lies about optimality
    from bitalloc.allocation import AllocStatus, BaseAllocator, Solution

    class Greedy8(BaseAllocator):
        name = "all-highest"

        def _solve(self, table, budget):
            return Solution(np.full(table.num_layers, len(table.bits) - 1), AllocStatus.FEASIBLE,
                            allow_over_budget=True)

    class FalseOptimal(BaseAllocator):
        name = "all-lowest"

        def _solve(self, table, budget):
            return Solution(np.zeros(table.num_layers, dtype=np.int64), AllocStatus.OPTIMAL)

    monkeypatch.setitem(conformance.ALLOCATORS, "all-highest", Greedy8)
    monkeypatch.setitem(conformance.ALLOCATORS, "all-lowest", FalseOptimal)
    rng = np.random.default_rng(3)
    table = conformance.random_table(rng)
    while len(table.bits) < 2 or not (table.cost[:, 0] > table.cost[:, -1]).any():
        table = conformance.random_table(rng)
    counts = conformance.Counts()
    mid = 0.5 * (table.min_size_bits + table.max_size_bits)
    conformance.check_case(table, mid, counts, ["all-highest", "exact"], "over")
    conformance.check_case(table, table.max_size_bits, counts, ["all-lowest", "exact"], "lie")
    assert counts.violations == 1 and counts.optimal_worse == 1, counts.examples


@pytest.mark.parametrize("seed", range(3))
def test_boundary_budgets_are_exactly_the_uniform_sizes(seed):
    rng = np.random.default_rng(seed)
    t = conformance.random_table(rng)
    budgets = conformance.boundary_budgets(t, rng)
    for j, b in enumerate(t.bits):
        at = t.plan_size(np.full(t.num_layers, j))
        assert at in budgets and Budget.from_avg_bits(t, b).max_size_bits == at
    assert t.min_size_bits in budgets and t.max_size_bits in budgets
