"""Uniform baseline: one bit-width for every layer, the largest candidate whose total size fits.

    b* = max { b in bits : sum_l size_bits[l, b] <= W }

This is the fixed-precision baseline of FMPQ (arXiv 2506.01221) and of every mixed-precision paper. The budget
check guarantees the lowest candidate fits.
"""

from __future__ import annotations

import numpy as np

from bitalloc.allocation import AllocStatus, BaseAllocator, Solution, register_allocator
from bitalloc.costs import Budget, CostTable


@register_allocator("uniform")
class UniformAllocator(BaseAllocator):
    def _solve(self, table: CostTable, budget: Budget) -> Solution:
        totals = table.size_bits.sum(axis=0)
        j = int(np.nonzero(totals <= budget.max_size_bits)[0][-1])
        return Solution(np.full(table.num_layers, j), AllocStatus.FEASIBLE, 1,
                        f"uniform {table.bits[j]} bits")
