"""Integer program for the multiple-choice knapsack, solved to proven optimality (HAWQ-V3, arXiv 2011.10680;
Hubara et al., arXiv 2006.10518)::

    minimize    sum_{l,j} c[l,j] x[l,j]
    subject to  sum_j x[l,j] = 1                       for every layer l
                sum_{l,j} s[l,j] x[l,j] <= W
                sum_{l,j} a_k[l,j] x[l,j] <= A_k       extra resources (budget.extra, e.g. bit-operations)
                x[l,j] = 0 outside [min_bits_l, max_bits_l];  x[l,j] = x[m,j] for l, m in a tied group
                x binary

Two paths (``method``):

* ``"structured"`` (default when there are no extra resources and no tied groups): drop dominated choices;
  solve the LP relaxation over each row's lower convex hull by the incremental-efficiency greedy (its dual
  price ``lam``, lower bound LB); take an incumbent from the LP solution rounded down plus greedy slack filling
  (upper bound UB); fix away every choice whose reduced cost exceeds UB - LB; solve what is left exactly, by
  Pareto dynamic programming pruned with the same reduced-cost bound or, if that grows past ``max_states``,
  by PuLP/CBC on the reduced model warm-started from the incumbent. The result is proven optimal: every plan
  better than UB survives the fixing (see ``_mckp``).
* ``"pulp"``: the full model above in PuLP (required for extra resources and tied groups).

Solver: PuLP's bundled CBC (``PULP_CBC_CMD``; the project pins ``pulp<4`` because PuLP 4 no longer bundles it),
else PuLP's HiGHS interface if ``highspy`` is installed, else :class:`SolverUnavailableError` saying so. How the
MILP is scaled and when its answer counts as proven: :mod:`bitalloc.solvers.milp`. No time limit unless one is
set (``time_limit_s``); a limit that stops the solver gives status ``feasible`` and the gap to the best lower
bound known (the solver's, the LP relaxation's). ``optimal`` always means proven with gap 0.

Budget boundaries: a plan fits by :meth:`Budget.fits`'s exact rule; the structured path searches with a small
slack and decides plans near the budget exactly (see ``_mckp``), so a budget equal to a plan's size (the
smallest, the largest, a uniform one) gets the true optimum. Costs are scaled by a power of two internally
(exact), so the bounds cannot overflow on tables with huge costs.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from bitalloc.allocation import AllocStatus, BaseAllocator, Solution, float_option, int_option, register_allocator
from bitalloc.costs import Budget, CostTable, exact_sum, plan_objective

from ._mckp import descend, dominance_mask, exact_size, fill_slack, hull_mask, lagrangian, lp_relaxation, margin
from ._pareto import enumerate_pareto
from .milp import milp_solver, solve_mckp

__all__ = ["ILPAllocator", "milp_solver", "allowed_choices", "relative_gap"]

METHODS = ("auto", "structured", "pulp")
OBJ_RTOL = 1e-9  # objective comparisons: float rounding of the sums, relative


def _bits_mask(table: CostTable, bounds: int | Mapping[str, int] | None, low: bool, owner: str) -> np.ndarray:
    L, B = table.cost.shape
    bits = np.asarray(table.bits)
    if bounds is None:
        return np.ones((L, B), dtype=bool)
    if isinstance(bounds, Mapping):
        unknown = [n for n in bounds if n not in set(table.layer_names)]
        if unknown:
            raise ValueError(f"{owner}: {'min' if low else 'max'}_bits names layer '{unknown[0]}', not in the table")
        lim = np.array([bounds.get(n, -np.inf if low else np.inf) for n in table.layer_names], dtype=float)
    else:
        lim = np.full(L, float(bounds))
    return bits[None, :] >= lim[:, None] if low else bits[None, :] <= lim[:, None]


def allowed_choices(table: CostTable, min_bits: int | Mapping[str, int] | None,
                    max_bits: int | Mapping[str, int] | None, tied: Sequence[Sequence[str]] = (),
                    owner: str = "ilp") -> np.ndarray:
    """(L, B) mask of the candidates within ``min_bits`` / ``max_bits`` (an int for all layers or
    ``{layer: bits}``); a ValueError naming the layer if a bound or a ``tied`` group names one not in the table."""
    names = set(table.layer_names)
    for g in tied:
        for n in g:
            if n not in names:
                raise ValueError(f"{owner}: tied group names layer '{n}', not in the table")
    return _bits_mask(table, min_bits, True, owner) & _bits_mask(table, max_bits, False, owner)


def _pow2_scale(cost: np.ndarray, allowed: np.ndarray) -> float:
    """A power of two near the largest allowed cost: dividing by it is exact and keeps the bounds finite."""
    top = float(np.where(allowed, cost, 0.0).max())
    return 2.0 ** math.floor(math.log2(top)) if top > 0 and math.isfinite(top) else 1.0


@register_allocator("ilp")
class ILPAllocator(BaseAllocator):
    """Options: ``time_limit_s`` (None: no limit), ``gap_rel`` (the MILP solver's relative gap, default 0:
    optimal), ``method``, ``solver`` ("auto", "cbc", "highs"), ``min_bits`` / ``max_bits`` (int or
    {layer: bits}), ``tied`` (groups of layer names that must share one bit-width), ``max_states`` (reduced DP
    size)."""

    supports_extra = True

    def __init__(self, time_limit_s: float | None = None, gap_rel: float = 0.0, method: str = "auto",
                 solver: str = "auto", min_bits: int | Mapping[str, int] | None = None,
                 max_bits: int | Mapping[str, int] | None = None, tied: Iterable[Sequence[str]] = (),
                 max_states: int = 200_000) -> None:
        if method not in METHODS:
            raise ValueError(f"ilp: unknown method '{method}', expected one of {METHODS}")
        if solver not in ("auto", "cbc", "highs"):
            raise ValueError(f"ilp: unknown solver '{solver}', expected 'auto', 'cbc' or 'highs'")
        self.time_limit_s = float_option("ilp", "time_limit_s", time_limit_s, 0.0, low_open=True, allow_none=True)
        self.gap_rel = float_option("ilp", "gap_rel", gap_rel, 0.0, 1.0, high_open=True)
        self.method, self.solver = method, solver
        self.min_bits, self.max_bits = min_bits, max_bits
        self.tied = tuple(tuple(g) for g in tied)
        self.max_states = int_option("ilp", "max_states", max_states)

    # ------------------------------------------------------------------------------------------------------
    def _solve(self, table: CostTable, budget: Budget) -> Solution:
        allowed = allowed_choices(table, self.min_bits, self.max_bits, self.tied, self.name)
        empty = ~allowed.any(axis=1)
        if empty.any():
            return Solution(None, AllocStatus.INFEASIBLE, 0,
                            f"min_bits/max_bits leave layer '{table.layer_names[int(np.argmax(empty))]}' no candidate")
        method = self.method
        if method == "auto":
            method = "pulp" if (budget.extra or self.tied) else "structured"
        if method == "structured" and (budget.extra or self.tied):
            raise ValueError("ilp: method='structured' cannot handle extra resources or tied groups; use 'pulp'")
        if method == "structured":
            return self._structured(table, budget, allowed)
        return self._pulp(table, budget, allowed)

    # ------------------------------------------------------------------------------------------------------
    def _structured(self, table: CostTable, budget: Budget, allowed: np.ndarray) -> Solution:
        size, W = table.size_bits, budget.max_size_bits
        scale = _pow2_scale(table.cost, allowed)
        cost = table.cost / scale
        L = table.num_layers
        rows = np.arange(L)
        keep = dominance_mask(cost, allowed)
        min_size = exact_sum(np.where(keep, size, np.inf).min(axis=1))
        if not budget.fits(min_size):
            return Solution(None, AllocStatus.INFEASIBLE, 0,
                            f"min_bits/max_bits raise the smallest size to {min_size:.6g} bits, above the budget "
                            f"{W:.6g}")
        lp = lp_relaxation(cost, size, hull_mask(cost, size, keep), W)
        inc = lp.choice
        if exact_size(size, inc) > W:  # the LP's running sums rounded into the budget: step back down
            inc, _, _ = descend(cost, size, inc, W, keep=keep)
        inc = fill_slack(cost, size, keep, inc, W)
        ub = plan_objective(cost, inc)
        lb, rc = lagrangian(cost, size, keep, lp.lam, W)
        tol = OBJ_RTOL * max(abs(ub), abs(lb)) + 1e-300
        info: dict[str, Any] = {"lp_bound": lb * scale, "incumbent_cost": ub * scale, "lam": lp.lam * scale,
                                "kept_choices": int(keep.sum())}
        bounded = math.isfinite(lb) and bool(np.isfinite(rc[keep]).all())
        gap = ub - lb if bounded else math.inf
        if gap <= tol:
            info.update(free_layers=0, states=0)
            return Solution(inc, AllocStatus.OPTIMAL, 0, "incumbent meets the LP bound", info, gap=0.0)
        # reduced-cost fixing: choices that cannot be in a plan cheaper than the incumbent
        live = keep & (rc <= gap + tol) if bounded else keep.copy()
        live[rows, inc] = True
        free = live.sum(axis=1) > 1
        fixed_choice = np.where(free, 0, live.argmax(axis=1))
        info.update(free_layers=int(free.sum()), live_choices=int(live.sum()))
        fidx = np.nonzero(free)[0]
        cap = W - exact_sum(size[rows[~free], fixed_choice[~free]])
        # layers with the widest reduced-cost spread first: the rc bound prunes earliest
        if bounded:
            spread = np.where(live[fidx], rc[fidx], -np.inf).max(axis=1)
            fidx = fidx[np.argsort(-spread, kind="stable")]

        def full(sub: np.ndarray) -> np.ndarray:
            cand = fixed_choice.copy()
            cand[fidx] = sub
            return cand

        def fits(sub: np.ndarray) -> bool:  # the exact rule on the whole plan, not the reduced capacity
            return budget.fits(exact_size(size, full(sub)))

        sub, n_states, complete = enumerate_pareto(
            cost[fidx], size[fidx], live[fidx], cap, rc=rc[fidx] if bounded else None,
            rc_limit=gap + tol if bounded else math.inf, max_states=self.max_states,
            lam=lp.lam if bounded else 0.0, tol=margin(W, size), fits=fits,
            cost_limit=None if bounded else plan_objective(cost[fidx], inc[fidx]) + tol)
        info["states"] = n_states
        if complete:  # sub is None: no plan beats the incumbent
            choice = inc
            if sub is not None and plan_objective(cost, full(sub)) < ub:
                choice = full(sub)
            return Solution(choice, AllocStatus.OPTIMAL, n_states,
                            f"proven optimal: {len(fidx)} layers left after reduced-cost fixing", info, gap=0.0)
        # the reduced problem is too large to enumerate: hand it to the MILP solver, warm-started
        res = solve_mckp(cost[fidx], size[fidx], cap, live[fidx], solver=self.solver,
                         time_limit_s=self.time_limit_s, gap_rel=self.gap_rel, warm=inc[fidx], incumbent=inc[fidx],
                         fits=fits)
        info.update(solver=res.solver, solver_status=res.solver_status, reduced_by="milp")
        choice, obj = inc, ub
        if res.choice is not None:  # solve_mckp accepted it by the exact rule (fits)
            cand = full(res.choice)
            if plan_objective(cost, cand) < ub:
                choice, obj = cand, plan_objective(cost, cand)
        if res.proven:  # every plan cheaper than the incumbent is in the reduced problem
            return Solution(choice, AllocStatus.OPTIMAL, n_states,
                            f"proven optimal: {len(fidx)} layers left after reduced-cost fixing, solved by "
                            f"{res.solver}", info, gap=0.0)
        low = lb if bounded else -math.inf
        if res.lower_bound is not None:  # the reduced problem's bound plus the fixed layers' cost
            fixed_cost = plan_objective(cost[~free], fixed_choice[~free])
            low = max(low, min(ub, res.lower_bound + fixed_cost))
        return Solution(choice, AllocStatus.FEASIBLE, n_states, f"reduced problem: {res.message}", info,
                        gap=relative_gap(obj, low))

    # ------------------------------------------------------------------------------------------------------
    def _pulp(self, table: CostTable, budget: Budget, allowed: np.ndarray) -> Solution:
        index = {n: i for i, n in enumerate(table.layer_names)}
        extras = [(c.name, c.matrix(table), c.max_value) for c in budget.extra]

        def fits(choice: np.ndarray) -> bool:
            return budget.exceeded(table, choice) is None

        incumbent = None
        if not extras and not self.tied:  # a greedy plan bounds the choices worth modelling (not a warm start)
            cost, size, W = table.cost, table.size_bits, budget.max_size_bits
            start = np.where(allowed, np.arange(len(table.bits))[None, :], -1).max(axis=1)
            inc, _, _ = descend(cost, size, start, W, keep=allowed)
            if fits(inc):
                incumbent = fill_slack(cost, size, allowed, inc, W)
        res = solve_mckp(table.cost, table.size_bits, budget.max_size_bits, allowed, extras=extras,
                         tied=[[index[n] for n in g] for g in self.tied], solver=self.solver,
                         time_limit_s=self.time_limit_s, gap_rel=self.gap_rel, incumbent=incumbent, fits=fits)
        extra: dict[str, Any] = {"solver": res.solver, "solver_status": res.solver_status}
        if res.infeasible:
            return Solution(None, AllocStatus.INFEASIBLE, 0, res.message, extra)
        if res.choice is None:
            return Solution(None, AllocStatus.ERROR, 0, res.message, extra)
        if res.proven:
            return Solution(res.choice, AllocStatus.OPTIMAL, 0, res.message, extra, gap=0.0)
        obj = table.objective(res.choice)
        if res.lower_bound is not None:
            extra["lower_bound"] = res.lower_bound
        return Solution(res.choice, AllocStatus.FEASIBLE, 0, res.message, extra,
                        gap=None if res.lower_bound is None else relative_gap(obj, res.lower_bound))


def relative_gap(objective: float, lower_bound: float) -> float | None:
    """Relative gap ``(objective - bound) / objective`` (>= 0), or None if the bound says nothing."""
    if not math.isfinite(lower_bound):
        return None
    return max(0.0, objective - lower_bound) / max(abs(objective), 1e-300)
