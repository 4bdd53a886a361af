"""Exact multiple-choice knapsack by dynamic programming over Pareto-optimal partial plans (Nemhauser-Ullmann),
with the pruning rules of :mod:`bitalloc.solvers._mckp` (reduced costs, a cost limit, the capacity); used by the
``ilp`` allocator on its reduced problem and by ``exact``."""

from __future__ import annotations

from typing import Callable

import numpy as np

from ._mckp import INF, exact_size, margin


def enumerate_pareto(cost: np.ndarray, size: np.ndarray, keep: np.ndarray, capacity: float,
                     rc: np.ndarray | None = None, rc_limit: float = INF,
                     max_states: int = 2_000_000, cost_limit: float | None = None, lam: float = 0.0,
                     tol: float | None = None, fits: Callable[[np.ndarray], bool] | None = None,
                     ) -> tuple[np.ndarray | None, int, bool]:
    """Exact MCKP by dynamic programming over Pareto-optimal partial plans (Nemhauser-Ullmann).

    Exact for real-valued sizes (no grid). States are (size, cost) of partial plans; a state dominated in
    both is dropped, as is one that cannot fit with the smallest remaining choices, or (with reduced costs
    ``rc`` and the budget's dual price ``lam``) one whose reduced costs plus ``lam`` times the
    capacity it must leave unused exceed ``rc_limit``, or (with ``cost_limit``, e.g. an incumbent's cost) one whose
    cost plus the cheapest remaining choices exceeds it. Sizes are compared with the slack ``tol`` (default
    :func:`margin`); of the complete plans, the cheapest that ``fits`` (default: exact size <= capacity) wins.
    Returns the optimal choice (None if no plan passes), the largest number of states held, and whether the
    enumeration completed (False: it stopped at more than ``max_states``).
    """
    L, B = cost.shape
    if tol is None:
        tol = margin(capacity, size)
    if fits is None:
        def fits(plan: np.ndarray) -> bool:
            return exact_size(size, plan) <= capacity
    min_rest = np.concatenate([np.cumsum(np.where(keep, size, INF).min(axis=1)[::-1])[::-1][1:], [0.0]])
    max_rest = np.concatenate([np.cumsum(np.where(keep, size, -INF).max(axis=1)[::-1])[::-1][1:], [0.0]])
    min_rest_cost = np.concatenate([np.cumsum(np.where(keep, cost, INF).min(axis=1)[::-1])[::-1][1:], [0.0]])
    st_size = np.zeros(1)
    st_cost = np.zeros(1)
    st_rc = np.zeros(1)
    parents: list[np.ndarray] = []
    choices: list[np.ndarray] = []
    peak = 1
    for l in range(L):
        js = np.nonzero(keep[l])[0]
        n_s = st_size.size
        # choice-major layout: B runs each sorted by size, which the stable sort (timsort) merges cheaply
        ns = (size[l, js][:, None] + st_size[None, :]).ravel()
        nc = (cost[l, js][:, None] + st_cost[None, :]).ravel()
        nr = ((rc[l, js][:, None] if rc is not None else np.zeros((js.size, 1))) + st_rc[None, :]).ravel()
        par = np.tile(np.arange(n_s), js.size)
        ch = np.repeat(js, n_s)
        # a complete plan x costs LB + sum rc + lam * (W - size(x)), and size(x) <= ns + max_rest
        unused = np.maximum(capacity - ns - max_rest[l], 0.0)
        ok = (ns + min_rest[l] <= capacity + tol) & (nr + lam * unused <= rc_limit)
        if cost_limit is not None:
            ok &= nc + min_rest_cost[l] <= cost_limit
        ns, nc, nr, par, ch = ns[ok], nc[ok], nr[ok], par[ok], ch[ok]
        if ns.size == 0:
            return None, peak, True
        # by size; equal sizes may keep a dominated twin, which is harmless
        order = np.argsort(ns, kind="stable")
        ns, nc, nr, par, ch = ns[order], nc[order], nr[order], par[order], ch[order]
        prev_best = np.concatenate([[INF], np.minimum.accumulate(nc)[:-1]])
        front = nc < prev_best
        st_size, st_cost, st_rc = ns[front], nc[front], nr[front]
        parents.append(par[front])
        choices.append(ch[front])
        peak = max(peak, st_size.size)
        if st_size.size > max_states:
            return None, peak, False
    def plan(state: int) -> np.ndarray:
        out = np.empty(L, dtype=np.int64)
        for l in range(L - 1, -1, -1):
            out[l] = choices[l][state]
            state = int(parents[l][state])
        return out

    # the front runs from small and dear to large and cheap: the cheapest state that fits is the optimum
    for state in np.argsort(st_cost, kind="stable"):
        if st_size[state] <= capacity - tol:
            return plan(int(state)), peak, True
        p = plan(int(state))
        if fits(p):
            return p, peak, True
    return None, peak, True
