"""Size/cost trade-off of one allocator over many budgets, as a tidy DataFrame."""

from __future__ import annotations

from typing import Any, Iterable

import pandas as pd

from bitalloc.allocation import Allocator, build_allocator
from bitalloc.costs import Budget, CostTable

__all__ = ["pareto_front"]

COLUMNS = ["allocator", "budget_bits", "budget_avg_bits", "status", "size_bits", "avg_bits", "cost",
           "solve_time_s", "iterations"]


def pareto_front(table: CostTable, allocator: Allocator | str, budgets: Iterable[Budget | float]) -> pd.DataFrame:
    """One row per budget: the allocator's plan size, parameter-weighted average bits and cost.

    ``budgets`` are :class:`Budget` objects or sizes in bits; ``allocator`` an instance or a registered name.
    """
    alloc = build_allocator(allocator) if isinstance(allocator, str) else allocator
    rows: list[dict[str, Any]] = []
    for b in budgets:
        budget = b if isinstance(b, Budget) else Budget(float(b))
        res = alloc.allocate(table, budget)
        rows.append({
            "allocator": alloc.name,
            "budget_bits": budget.max_size_bits,
            "budget_avg_bits": table.size_to_avg_bits(budget.max_size_bits),
            "status": str(res.status),
            "size_bits": res.size_bits,
            "avg_bits": None if res.plan is None else res.plan.avg_bits(table),
            "cost": res.objective,
            "solve_time_s": res.solve_time_s,
            "iterations": res.iterations,
        })
    return pd.DataFrame(rows, columns=COLUMNS)
