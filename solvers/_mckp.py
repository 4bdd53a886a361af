"""Structure of the multiple-choice knapsack (MCKP), shared by the allocators.

Problem (one choice j(l) per layer l)::

    minimize  sum_l c[l, j(l)]   subject to   sum_l s[l, j(l)] <= W

with sizes strictly increasing along a row. Tools here (Sinha & Zoltners 1979; Pisinger 1995; Kellerer,
Pferschy & Pisinger, *Knapsack Problems*, ch. 11):

* **dominance**: a choice with larger size and not-smaller cost than a smaller choice is never needed;
* **LP-dominance / lower convex hull**: choices above the lower convex hull of a row's (size, cost) points are
  never used by the LP relaxation;
* **LP relaxation**: start every layer at its smallest choice and take hull steps in decreasing order of
  efficiency (cost saved per bit) until the budget is spent; at most one layer ends fractional. Its
  efficiency is the optimal dual price ``lam`` of the budget;
* **Lagrangian / reduced costs**: ``u_l = min_j c[l,j] + lam * s[l,j]``, ``rc[l,j] = c + lam*s - u_l >= 0``,
  lower bound ``LB = sum_l u_l - lam * W``. Every feasible plan x has
  ``cost(x) = LB + sum_l rc[l, x_l] + lam * (W - size(x)) >= LB + sum_l rc[l, x_l]``, so a choice with
  ``rc > UB - LB`` cannot be in a plan better than an incumbent of cost ``UB`` (reduced-cost fixing), and a
  partial plan whose reduced costs already exceed ``UB - LB`` can be pruned.

**Budget boundaries.** A plan fits iff its :func:`~bitalloc.costs.exact_sum` size is at most the capacity
(:meth:`bitalloc.costs.Budget.fits`). The searches here keep running float sums, whose rounding could reject a plan
that fits exactly (a budget equal to a plan's size) or accept one a hair over. So they search with a slack of
``SLACK`` (relative) and decide every plan within that slack of the capacity by its exact sum (:func:`exact_size`).
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import numpy as np

from bitalloc.costs import exact_sum, plan_objective
from bitalloc.pairwise import ConditionalCost, PairTerms

INF = np.inf
SLACK = 1e-9  # relative margin around the capacity inside which a running sum is re-added exactly


def exact_size(size: np.ndarray, choice: np.ndarray) -> float:
    """The plan's size by the budget rule (:func:`~bitalloc.costs.exact_sum` of its chosen sizes)."""
    return exact_sum(size[np.arange(size.shape[0]), choice])


def margin(capacity: float, size: np.ndarray) -> float:
    """Absolute slack for running sums near ``capacity``: ``SLACK`` times the larger of it and the largest plan."""
    return SLACK * max(abs(float(capacity)), float(np.abs(size).max(axis=1).sum()), 1e-300)


def dominance_mask(cost: np.ndarray, allowed: np.ndarray | None = None) -> np.ndarray:
    """Keep (l, j) iff allowed and its cost is strictly below every allowed smaller choice of its row.

    Sizes grow along a row, so this drops every choice that is larger and not cheaper than another.
    """
    c = np.where(allowed, cost, INF) if allowed is not None else np.asarray(cost, dtype=np.float64)
    prev_min = np.minimum.accumulate(np.concatenate([np.full((c.shape[0], 1), INF), c[:, :-1]], axis=1), axis=1)
    return np.isfinite(c) & (c < prev_min)


def compact(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the column indices where ``mask`` holds, left-aligned and padded with -1; and their counts."""
    L, B = mask.shape
    counts = mask.sum(axis=1)
    order = np.argsort(~mask, axis=1, kind="stable")
    idx = np.where(np.arange(B)[None, :] < counts[:, None], order, -1)
    return idx, counts


def hull_mask(cost: np.ndarray, size: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Lower convex hull of each row's kept (size, cost) points (Andrew's monotone chain, vectorised over rows).

    Expects ``keep`` from :func:`dominance_mask` (costs strictly falling with size among kept points). A point
    on a segment between its neighbours is dropped, so hull efficiencies strictly decrease along a row.
    """
    L, B = cost.shape
    idx, counts = compact(keep)
    stack = np.full((L, B), -1, dtype=np.int64)
    top = np.zeros(L, dtype=np.int64)  # stack length
    rows = np.arange(L)
    for k in range(B):
        active = k < counts
        if not active.any():
            break
        p = np.where(active, idx[:, k], 0)
        px, py = size[rows, p], cost[rows, p]
        while True:
            can = active & (top >= 2)
            if not can.any():
                break
            o = stack[rows, np.maximum(top - 2, 0)]
            a = stack[rows, np.maximum(top - 1, 0)]
            ox, oy, ax, ay = size[rows, o], cost[rows, o], size[rows, a], cost[rows, a]
            # pop a unless o -> a -> p turns strictly counter-clockwise (strictly convex from below)
            cross = (ax - ox) * (py - oy) - (ay - oy) * (px - ox)
            pop = can & (cross <= 0)
            if not pop.any():
                break
            top = top - pop
        stack[rows[active], top[active]] = p[active]
        top = top + active
    mask = np.zeros((L, B), dtype=bool)
    r, c = np.nonzero(np.arange(B)[None, :] < top[:, None])
    mask[r, stack[r, c]] = True
    return mask


@dataclass
class LPResult:
    value: float            # LP optimum (a lower bound on the integer optimum)
    lam: float              # optimal dual price of the budget (cost per bit)
    choice: np.ndarray      # integral part: per layer the column of its last fully taken hull point
    frac_layer: int         # the layer left fractional (-1 if none)
    frac_share: float       # how much of that layer's next hull step the LP takes


def lp_relaxation(cost: np.ndarray, size: np.ndarray, hull: np.ndarray, capacity: float) -> LPResult:
    """Solve the MCKP's LP relaxation over hull points by the incremental-efficiency greedy (Sinha-Zoltners)."""
    L, B = cost.shape
    idx, counts = compact(hull)
    rows = np.arange(L)
    first = idx[:, 0]
    choice = first.copy()
    base_size = float(size[rows, first].sum())
    value = plan_objective(cost, first)
    slack = capacity - base_size
    # steps from hull point k-1 to k, for k >= 1
    r, k = np.nonzero((np.arange(B)[None, :] >= 1) & (np.arange(B)[None, :] < counts[:, None]))
    if r.size == 0:
        return LPResult(value, 0.0, choice, -1, 0.0)
    j_from, j_to = idx[r, k - 1], idx[r, k]
    ds = size[r, j_to] - size[r, j_from]
    dc = cost[r, j_from] - cost[r, j_to]
    # absurd tables (1e300 cost over 1e-12 bits): inf sorts first, still valid; a step of equal size (candidates
    # of equal weight bits in a (weight, activation) table) saves cost for free: inf too, taken first
    with np.errstate(over="ignore", divide="ignore"):
        eff = dc / ds
    order = np.lexsort((k, -eff))  # by efficiency, ties in row order of hull steps
    cum = np.cumsum(ds[order])
    n_full = int(np.searchsorted(cum, slack, side="right"))
    taken = order[:n_full]
    # hull steps of a row are taken in order (strictly decreasing efficiency), so the last one wins
    last = np.full(L, -1)
    np.maximum.at(last, r[taken], k[taken])
    has = last >= 0
    choice[has] = idx[has, last[has]]
    value -= float(dc[taken].sum())
    if n_full < len(order):
        nxt = order[n_full]
        left = slack - (float(cum[n_full - 1]) if n_full else 0.0)
        share = max(0.0, left / ds[nxt])
        value -= share * float(dc[nxt])
        return LPResult(value, float(eff[nxt]), choice, int(r[nxt]), float(share))
    return LPResult(value, 0.0, choice, -1, 0.0)


def lagrangian(cost: np.ndarray, size: np.ndarray, keep: np.ndarray, lam: float,
               capacity: float) -> tuple[float, np.ndarray]:
    """Lagrangian bound ``sum_l u_l - lam*W`` and reduced costs (``inf`` where not kept)."""
    with np.errstate(over="ignore", invalid="ignore"):  # an infinite price gives a non-finite bound: callers check
        v = np.where(keep, cost + lam * size, INF)
        u = v.min(axis=1)
        rc = v - u[:, None]
        return float(u.sum() - lam * capacity), rc


def _best_move(cost: np.ndarray, size: np.ndarray, keep: np.ndarray | None, l: int, j: int) -> tuple[float, int]:
    """The cheapest move of layer l down from column j: (cost increase per bit saved, new column).

    Callers silence overflow (:func:`descend`): a huge cost over a tiny size step is an infinite ratio, the last
    resort, but still a move."""
    if j == 0:
        return INF, -1
    ratio = (cost[l, :j] - cost[l, j]) / (size[l, j] - size[l, :j])
    if keep is None:
        k = int(np.argmin(ratio))
        return float(ratio[k]), k
    ok = keep[l, :j]
    if not ok.any():
        return INF, -1
    k = int(np.argmin(np.where(ok, ratio, INF)))
    if not ok[k]:  # every allowed move has an infinite ratio and argmin picked a disallowed one
        k = int(np.nonzero(ok)[0][-1])
    return float(ratio[k]), k


def descend(cost: np.ndarray, size: np.ndarray, choice: np.ndarray, capacity: float | None,
            record: bool = False, keep: np.ndarray | None = None,
            pairs: PairTerms | None = None) -> tuple[np.ndarray, int, list[tuple[int, int]]]:
    """Lower layers by least cost increase per bit saved until the plan fits ``capacity`` (None: to the end).

    AIMET's greedy descent, one heap entry per layer (stale entries skipped); moves only to ``keep`` columns when
    given. With pairwise terms the cost of a move is its change of the whole objective (the layer's row of
    :class:`~bitalloc.pairwise.ConditionalCost`), and a move re-prices the moved layer's partners. Whether the
    plan fits is decided by its exact size near the capacity. Returns the final choice, the number of moves and
    (if ``record``) the moves as (layer, new column).
    """
    with np.errstate(over="ignore"):  # see _best_move
        return _descend(cost, size, choice, capacity, record, keep, pairs)


def _descend(cost: np.ndarray, size: np.ndarray, choice: np.ndarray, capacity: float | None, record: bool,
             keep: np.ndarray | None, pairs: PairTerms | None) -> tuple[np.ndarray, int, list[tuple[int, int]]]:
    cond = ConditionalCost(cost, pairs, choice)
    choice = cond.choice
    cost = cond.matrix  # the cost itself without pairwise terms; updated in place by cond.move
    L = cost.shape[0]
    used = exact_size(size, choice)
    tol = margin(capacity, size) if capacity is not None else 0.0
    version = np.zeros(L, dtype=np.int64)  # a partner's move re-prices a layer: older heap entries are stale
    heap = []
    for l in range(L):
        r, k = _best_move(cost, size, keep, l, int(choice[l]))
        if k >= 0:
            heap.append((r, l, int(choice[l]), k, 0))
    heapq.heapify(heap)
    moves: list[tuple[int, int]] = []
    n = 0

    def over() -> bool:
        nonlocal used
        if capacity is None:
            return True
        if abs(used - capacity) <= tol:  # too close to trust the running sum
            used = exact_size(size, choice)
        return used > capacity

    while heap and over():
        r, l, j, k, v = heapq.heappop(heap)
        if choice[l] != j or version[l] != v:
            continue  # stale entry
        used += float(size[l, k] - size[l, j])
        cond.move(l, k)
        n += 1
        if record:
            moves.append((l, k))
        for m in (l, *cond.neighbours(l)):
            version[m] += 1
            r2, k2 = _best_move(cost, size, keep, m, int(choice[m]))
            if k2 >= 0:
                heapq.heappush(heap, (r2, m, int(choice[m]), k2, int(version[m])))
    return choice.copy(), n, moves


def fill_slack(cost: np.ndarray, size: np.ndarray, keep: np.ndarray, choice: np.ndarray,
               capacity: float, max_moves: int | None = None, pairs: PairTerms | None = None) -> np.ndarray:
    """Improve a plan that fits: repeatedly make the single-layer change with the largest cost decrease that
    still fits (upgrades into the slack, or downgrades that lower cost); with pairwise terms, the largest decrease
    of the whole objective. Never leaves the budget: a move that ends within the slack of the capacity is checked
    on the plan's exact size."""
    cond = ConditionalCost(cost, pairs, choice)
    choice = cond.choice
    cost = cond.matrix
    L = cost.shape[0]
    rows = np.arange(L)
    used = exact_size(size, choice)
    tol = margin(capacity, size)
    banned = np.zeros(cost.shape, dtype=bool)  # moves found over the capacity since the last move made
    moves = 0
    limit = max_moves if max_moves is not None else 4 * L * cost.shape[1]
    while moves < limit:
        c_now = cost[rows, choice][:, None]
        s_now = size[rows, choice][:, None]
        gain = np.where(keep & ~banned & (size - s_now <= capacity - used + tol), c_now - cost, -INF)
        flat = int(np.argmax(gain))
        l, j = divmod(flat, cost.shape[1])
        if not gain[l, j] > 0:
            break
        new_used = used + float(size[l, j] - size[l, choice[l]])
        if new_used > capacity - tol:
            old = choice[l]
            choice[l] = j
            new_used = exact_size(size, choice)
            choice[l] = old
            if new_used > capacity:
                banned[l, j] = True
                continue
        cond.move(l, j)
        used = new_used
        banned[:] = False
        moves += 1
    return choice.copy()
