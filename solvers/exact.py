"""Reference optimum of the multiple-choice knapsack for small tables.

    minimize  sum_l c[l, j(l)]   subject to   sum_l s[l, j(l)] <= W

Three exact methods (``method="auto"``: brute force for tiny tables, else the Pareto DP, else the grid DP):

* ``"brute"``: enumerate all B**L plans (at most ``max_plans``);
* ``"grid"``: dynamic programming over capacity (Dudzinski & Walukiewicz 1987). It is exact only because the
  sizes are integers (bits): sizes are shifted by each layer's smallest size and divided by the gcd of all
  increments, and the table is refused (status ``error`` naming a fractional size) if any size is not an
  integer or the grid exceeds ``max_cells``; ``"auto"`` uses it only for integer sizes;
* ``"pareto"``: dynamic programming over Pareto-optimal partial plans (Nemhauser-Ullmann), exact for
  real-valued sizes, limited to ``max_states`` states; partial plans whose cost plus the cheapest remaining
  choices exceeds a greedy plan's cost are pruned (a plain bound, no LP).

Too large for all three: status ``error`` (use ``ilp``). With pairwise terms in the table only brute force is
exact (the DPs add costs layer by layer), so larger tables are an ``error`` naming ``iqp``. This allocator shares
no code with ``ilp``'s reduction, so tests can check one against the other. Plans are accepted by the budget rule
(:meth:`Budget.fits` on exact sums), so a budget exactly at a plan's size admits that plan.
"""

from __future__ import annotations

import math

import numpy as np

from bitalloc.allocation import AllocStatus, BaseAllocator, Solution, int_option, register_allocator
from bitalloc.costs import Budget, CostTable, exact_sum, plan_objective
from bitalloc.pairwise import PairTerms

from ._mckp import descend, exact_size, margin
from ._pareto import enumerate_pareto

METHODS = ("auto", "brute", "grid", "pareto")


def brute_force(cost: np.ndarray, size: np.ndarray, W: float, pairs: PairTerms | None = None) -> np.ndarray | None:
    """The cheapest of all B**L plans that fit (objective with the pairwise terms, if given)."""
    L, B = cost.shape
    plans = np.stack(np.unravel_index(np.arange(B ** L), (B,) * L), axis=1).astype(np.int64).reshape(-1, L)
    rows = np.arange(L)
    total_s = size[rows, plans].sum(axis=1)
    tol = margin(W, size)
    fits = total_s <= W - tol
    for k in np.nonzero(np.abs(total_s - W) <= tol)[0]:  # too close to the budget for a running sum
        fits[k] = exact_size(size, plans[k]) <= W
    total_c = np.where(fits, plan_objective(cost, plans, pairs), np.inf)
    k = int(np.argmin(total_c))
    return plans[k] if np.isfinite(total_c[k]) else None


def fractional_size(size: np.ndarray) -> tuple[int, int] | None:
    """(layer, column) of the first size that is not an integer, or None if all are."""
    bad = size != np.round(size)
    return tuple(map(int, np.argwhere(bad)[0])) if bad.any() else None  # type: ignore[return-value]


def grid_shape(size: np.ndarray, W: float) -> tuple[int, np.ndarray, int] | None:
    """(gcd, integer increments, capacity in grid steps), or None if sizes are not integers (or too large)."""
    if fractional_size(size) is not None or np.abs(size).max() > 2**52:
        return None
    inc = (size - size[:, :1]).astype(np.int64)
    g = int(np.gcd.reduce(inc[:, 1:].ravel())) if inc.shape[1] > 1 else 1
    g = max(g, 1)
    cap = int(math.floor(W - exact_sum(size[:, 0])))  # integer sizes below 2**52: exact
    return g, inc // g, cap // g


def grid_dp(cost: np.ndarray, size: np.ndarray, W: float) -> np.ndarray:
    L, B = cost.shape
    _, inc, cap = grid_shape(size, W)  # type: ignore[misc]
    inc = np.minimum(inc, cap + 1)
    dp = np.zeros(cap + 1)  # dp[w]: min cost of the layers so far with increments <= w
    arg = np.zeros((L, cap + 1), dtype=np.int8)
    for l in range(L):
        new = np.full(cap + 1, np.inf)
        for j in range(B):
            d = int(inc[l, j])
            if d > cap:
                continue
            cand = np.full(cap + 1, np.inf)
            cand[d:] = dp[: cap + 1 - d] + cost[l, j]
            better = cand < new
            new[better] = cand[better]
            arg[l, better] = j
        dp = new
    out = np.empty(L, dtype=np.int64)
    w = cap
    for l in range(L - 1, -1, -1):
        out[l] = arg[l, w]
        w -= int(inc[l, out[l]])
    return out


@register_allocator("exact")
class ExactAllocator(BaseAllocator):
    supports_pairwise = True  # by brute force; the DPs refuse a table with pairwise terms

    def __init__(self, method: str = "auto", max_plans: int = 100_000, max_cells: int = 20_000_000,
                 max_states: int = 1_000_000) -> None:
        if method not in METHODS:
            raise ValueError(f"exact: unknown method '{method}', expected one of {METHODS}")
        self.method = method
        self.max_plans = int_option("exact", "max_plans", max_plans)
        self.max_cells = int_option("exact", "max_cells", max_cells)
        self.max_states = int_option("exact", "max_states", max_states)

    @staticmethod
    def _ub(cost: np.ndarray, size: np.ndarray, W: float) -> float:
        """Cost of a greedy plan: partial plans that cannot beat it are pruned (with a margin for rounding)."""
        choice, _, _ = descend(cost, size, np.full(cost.shape[0], cost.shape[1] - 1), W)
        ub = plan_objective(cost, choice)
        return ub + 1e-9 * max(1.0, abs(ub))

    def _pareto(self, cost: np.ndarray, size: np.ndarray, W: float) -> tuple[np.ndarray | None, int, bool]:
        return enumerate_pareto(cost, size, np.ones_like(cost, dtype=bool), W, max_states=self.max_states,
                                cost_limit=self._ub(cost, size, W))

    def _solve(self, table: CostTable, budget: Budget) -> Solution:
        cost, size, W = table.cost, table.size_bits, budget.max_size_bits
        L, B = cost.shape
        method = self.method
        pairs = table.pair_terms
        if pairs is not None and (method != "brute" and B ** L > self.max_plans or method in ("grid", "pareto")):
            return Solution(None, AllocStatus.ERROR, 0,
                            f"exact handles the {len(pairs)} pairwise terms by brute force only, and {B}**{L} plans "
                            f"exceed max_plans={self.max_plans} (or method '{method}' was asked for); use 'iqp'")
        if method == "auto":
            if B ** L <= self.max_plans:
                method = "brute"
            else:
                choice, n, complete = self._pareto(cost, size, W)
                if complete:
                    return self._done(choice, n, "pareto")
                if fractional_size(size) is not None:
                    return Solution(None, AllocStatus.ERROR, n,
                                    f"more than max_states={self.max_states} Pareto states, and the grid DP needs "
                                    "integer sizes; use 'ilp'")
                method = "grid"
        if method == "brute":
            if B ** L > self.max_plans:
                return Solution(None, AllocStatus.ERROR, 0, f"{B}**{L} plans exceed max_plans={self.max_plans}")
            return self._done(brute_force(cost, size, W, pairs), B ** L, "brute")
        if method == "grid":
            frac = fractional_size(size)
            if frac is not None:
                l, j = frac
                return Solution(None, AllocStatus.ERROR, 0,
                                f"grid DP needs integer sizes in bits, but layer '{table.layer_names[l]}' has "
                                f"{size[l, j]!r} bits at {table.bits[j]} bits; use method 'pareto' or 'auto'")
            gs = grid_shape(size, W)
            if gs is None:
                return Solution(None, AllocStatus.ERROR, 0, "grid DP needs sizes below 2**52 bits")
            if L * (gs[2] + 1) > self.max_cells:
                return Solution(None, AllocStatus.ERROR, 0,
                                f"grid of {L} x {gs[2] + 1} cells exceeds max_cells={self.max_cells}")
            return self._done(grid_dp(cost, size, W), L * (gs[2] + 1), "grid")
        choice, n, complete = self._pareto(cost, size, W)
        if not complete:
            return Solution(None, AllocStatus.ERROR, n,
                            f"more than max_states={self.max_states} Pareto states; use 'ilp'")
        return self._done(choice, n, "pareto")

    @staticmethod
    def _done(choice: np.ndarray | None, n: int, method: str) -> Solution:
        if choice is None:  # the budget check guarantees the all-lowest plan fits: a bug if reached
            return Solution(None, AllocStatus.ERROR, n, f"exact ({method}) found no plan within the budget")
        return Solution(choice, AllocStatus.OPTIMAL, n, f"exact ({method})", {"method": method}, gap=0.0)
