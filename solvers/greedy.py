"""Greedy descent from the highest bits, as in Qualcomm AIMET's automatic mixed precision.

Start with every layer at its highest candidate; while the plan exceeds the budget W, make the move with the
least cost increase per bit saved,

    min_{l, k < j(l)}  (c[l, k] - c[l, j(l)]) / (s[l, j(l)] - s[l, k]),

kept in a heap with one entry per layer (stale entries are skipped). The visited states are a path of
(size, cost) points from the largest to the smallest plan: :meth:`GreedyAllocator.front` returns the whole path
in one pass, with the Pareto-optimal points marked. After reaching the budget, ``fill=True`` spends leftover
slack on the single-layer changes that lower cost most (never leaving the budget).

With pairwise terms in the table, a move's cost is its change of the whole objective: the layer's own cost
change plus the change of its pairwise terms with its partners' current bit-widths (the marginal costs of
:class:`~bitalloc.pairwise.ConditionalCost`), re-priced for the partners after every move.

Greedy is a heuristic: it can be far from optimal on tight budgets (35 % objective gap on HAWQ-V3's ResNet18
table, arXiv 2011.10680), so the benchmark reports its gap to the ILP optimum.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from bitalloc.allocation import AllocStatus, BaseAllocator, Solution, bool_option, register_allocator
from bitalloc.costs import Budget, CostTable
from bitalloc.pairwise import ConditionalCost

from ._mckp import descend, fill_slack


@register_allocator("greedy")
class GreedyAllocator(BaseAllocator):
    """Options: ``fill`` (spend leftover slack after the descent, default True)."""

    supports_pairwise = True

    def __init__(self, fill: bool = True) -> None:
        self.fill = bool_option("greedy", "fill", fill)

    def _solve(self, table: CostTable, budget: Budget) -> Solution:
        cost, size = table.cost, table.size_bits
        W = budget.max_size_bits
        start = np.full(table.num_layers, len(table.bits) - 1)
        pairs = table.pair_terms
        choice, n, _ = descend(cost, size, start, W, pairs=pairs)
        if self.fill:
            choice = fill_slack(cost, size, np.ones_like(cost, dtype=bool), choice, W, pairs=pairs)
        note = f" (marginal costs include the {len(pairs)} pairwise terms)" if pairs is not None else ""
        return Solution(choice, AllocStatus.FEASIBLE, n, f"{n} greedy moves{note}")

    def front(self, table: CostTable) -> pd.DataFrame:
        """The whole descent path in one pass: one row per state (step 0 = all highest bits); ``cost`` is the
        objective (with pairwise terms, if any), updated by each move's change."""
        cost, size = table.cost, table.size_bits
        L = table.num_layers
        start = np.full(L, len(table.bits) - 1)
        _, _, moves = descend(cost, size, start, None, record=True, pairs=table.pair_terms)
        cond = ConditionalCost(cost, table.pair_terms, start)
        choice, marginal = cond.choice, cond.matrix
        s = float(size[np.arange(L), choice].sum())
        c = table.objective(choice)
        out = [(0, "", table.bits[-1], s, c)]
        for step, (l, k) in enumerate(moves, 1):
            s += float(size[l, k] - size[l, choice[l]])
            c += float(marginal[l, k] - marginal[l, choice[l]])
            cond.move(l, k)
            out.append((step, table.layers[l].name, table.bits[k], s, c))
        df = pd.DataFrame(out, columns=["step", "layer", "bits", "size_bits", "cost"])
        # a state is Pareto-optimal along the path if no smaller-or-equal state is cheaper
        by_size = df.sort_values(["size_bits", "cost"], kind="stable")
        best = by_size["cost"].cummin().shift(fill_value=np.inf)
        df["pareto"] = (by_size["cost"] < best).reindex(df.index)
        df["avg_bits"] = [table.size_to_avg_bits(x) for x in df["size_bits"]]
        return df
