"""Hessian-proxy closed form: reverse water-filling, then rounding and greedy repair.

Model (classical bit allocation, Gersho & Gray ch. 8; BAQ, "Efficient Bit Allocation Quantization for Large
Language Models", 2025; HAWQ, arXiv 1905.03696, for the Hessian-trace weight)::

    c_l(b) ~ w_l * 2^(-2 b),        s_l(b) ~ s_l(b_min) + p_l * (b - b_min)

Relaxing b to reals, the Lagrangian of ``min sum_l w_l 2^(-2 b_l)  s.t.  sum_l s_l(b_l) <= W`` gives
``2 ln2 w_l 2^(-2 b_l) = theta p_l``, i.e. reverse water-filling

    b_l(theta) = clip( 1/2 * log2( w_l / (p_l * theta) ), b_min, b_max ),

(unclipped: b_l = b_bar + 1/2 log2((w_l/p_l) / G), G the p-weighted geometric mean of w/p), with theta found
by bisection so the sizes meet W. Then b_l is rounded to the nearest candidate and repaired on the real table:
descend greedily (least cost increase per bit saved) until the plan fits, then spend leftover slack on the
changes that lower the table's cost most. The budget is never exceeded.

Weights: with ``hessian_trace`` and ``weight_variance`` in the table, ``w_l = trace_l * var_l`` (the expected
loss increase 1/2 tr(H) * Delta^2/12 with step Delta ~ range * 2^-b and range^2 ~ variance; the constant factor
cancels in theta). Otherwise ``w_l`` is fitted to the row: the geometric mean of ``c_l(b) * 2^(2 b)`` over its
positive costs (a least-squares fit in the log domain); a row of zeros gets w_l = 0 (lowest bits before repair).
``p_l`` is the row's size slope per bit, so per-channel overheads are handled.

Pairwise terms (a table's interaction costs) have no place in the per-layer model ``w_l 2^(-2b)``: the
water-filling ignores them, and the repair steps count them (their moves are priced by the change of the whole
objective, as in ``greedy``); the result's message says so.
"""

from __future__ import annotations

import numpy as np

from bitalloc.allocation import AllocStatus, BaseAllocator, Solution, bool_option, register_allocator
from bitalloc.costs import Budget, CostTable

from ._mckp import descend, fill_slack


def proxy_weights(table: CostTable, use_proxies: bool = True) -> np.ndarray:
    if use_proxies and table.hessian_trace is not None and table.weight_variance is not None:
        return table.hessian_trace * table.weight_variance
    bits = np.asarray(table.bits, dtype=np.float64)
    c = table.cost
    pos = c > 0
    logw = np.where(pos, np.log2(np.where(pos, c, 1.0)) + 2 * bits[None, :], 0.0)
    n = pos.sum(axis=1)
    return np.where(n > 0, np.exp2(logw.sum(axis=1) / np.maximum(n, 1)), 0.0)


def water_fill(w: np.ndarray, p: np.ndarray, s0: np.ndarray, bmin: float, bmax: float, W: float,
               iters: int = 200) -> np.ndarray:
    """Continuous optimum b_l in [bmin, bmax] of sum w 2^-2b s.t. sum s0 + p (b - bmin) <= W."""
    def bits_at(log_theta: float) -> np.ndarray:
        with np.errstate(divide="ignore"):
            b = 0.5 * (np.log2(w) - np.log2(p) - log_theta)
        return np.clip(np.where(w > 0, b, bmin), bmin, bmax)

    def size(b: np.ndarray) -> float:
        return float((s0 + p * (b - bmin)).sum())

    pos = w > 0
    if not pos.any() or size(np.where(pos, bmax, bmin)) <= W:
        return np.where(pos, bmax, bmin).astype(np.float64)
    r = np.log2(w[pos]) - np.log2(p[pos])
    lo, hi = float(r.min() - 2 * bmax - 2), float(r.max() - 2 * bmin + 2)  # size(lo) = max, size(hi) = min
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        if size(bits_at(mid)) > W:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12:
            break
    return bits_at(hi)


@register_allocator("convex")
class ConvexAllocator(BaseAllocator):
    """Options: ``use_proxies`` (Hessian trace x weight variance when the table has them, default True),
    ``repair`` (greedy fill of leftover slack after rounding, default True)."""

    supports_pairwise = True  # in the repair only; the message says that the water-filling ignored them

    def __init__(self, use_proxies: bool = True, repair: bool = True) -> None:
        self.use_proxies = bool_option("convex", "use_proxies", use_proxies)
        self.repair = bool_option("convex", "repair", repair)

    def _solve(self, table: CostTable, budget: Budget) -> Solution:
        cost, size, W = table.cost, table.size_bits, budget.max_size_bits
        bits = np.asarray(table.bits, dtype=np.float64)
        L, B = cost.shape
        if B == 1:
            return Solution(np.zeros(L, dtype=np.int64), AllocStatus.FEASIBLE, 0, "single candidate")
        p = (size[:, -1] - size[:, 0]) / (bits[-1] - bits[0])
        w = proxy_weights(table, self.use_proxies)
        b = water_fill(w, p, size[:, 0], bits[0], bits[-1], W)
        choice = np.abs(b[:, None] - bits[None, :]).argmin(axis=1)
        pairs = table.pair_terms
        choice, n_down, _ = descend(cost, size, choice, W, pairs=pairs)
        if self.repair:
            choice = fill_slack(cost, size, np.ones_like(cost, dtype=bool), choice, W, pairs=pairs)
        note = "" if pairs is None else (f"; the water-filling ignored the {len(pairs)} pairwise terms, the repair "
                                         "moves counted them")
        return Solution(choice, AllocStatus.FEASIBLE, n_down,
                        f"water-filling, rounded, {n_down} repair moves down{note}",
                        {"continuous_bits": b, "weights": w})
