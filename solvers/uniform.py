"""Uniform baseline: one bit-width for every layer, the largest candidate whose total size fits.

    b* = max { b in bits : sum_l size_bits[l, b] <= W }

This is the fixed-precision baseline of FMPQ (arXiv 2506.01221) and of every mixed-precision paper. Sizes are
summed and compared by the budget rule (:meth:`Budget.fits` on :meth:`CostTable.plan_size`), the same rule as
the budget check, which guarantees the lowest candidate fits; a budget built from a uniform plan's size
(``Budget.from_avg_bits(table, b)``) gets exactly that plan.
"""

from __future__ import annotations

import numpy as np

from bitalloc.allocation import AllocStatus, BaseAllocator, Solution, register_allocator
from bitalloc.costs import Budget, CostTable


@register_allocator("uniform")
class UniformAllocator(BaseAllocator):
    def _solve(self, table: CostTable, budget: Budget) -> Solution:
        fitting = [j for j in range(len(table.bits))
                   if budget.fits(table.plan_size(np.full(table.num_layers, j)))]
        if not fitting:  # budget.check ran before _solve, so the lowest candidate fits; kept as a clear error
            return Solution(None, AllocStatus.INFEASIBLE, 0, "no uniform bit-width fits the budget")
        j = fitting[-1]
        return Solution(np.full(table.num_layers, j), AllocStatus.FEASIBLE, len(table.bits),
                        f"uniform {table.bits[j]} bits")
