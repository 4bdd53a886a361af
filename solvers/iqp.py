"""Exact allocation for the objective with pairwise interaction terms (allocator ``iqp``)::

    minimize    sum_l c[l, x_l] + sum_{(i, j) in pairwise} P_ij[x_i, x_j]
    subject to  sum_l s[l, x_l] <= W  (+ extra resources, min/max bits, tied layers, as for ``ilp``)

a binary quadratic program, linearised exactly over the measured pairs (:mod:`bitalloc.solvers.qmodel`: the
marginal form sum_b w[a, b] = x[i, a], sum_a w[a, b] = x[j, b], tight and indifferent to the sign of P, so
negative interactions need no convexification, unlike CLADO's eigenvalue clipping) and solved by HiGHS
(:func:`scipy.optimize.milp`, in-process; ``solver="auto"`` or ``"highs"``) or CBC (PuLP; ``solver="cbc"``).

* **No pairwise terms:** exactly the additive ``ilp`` (same options, same plan).
* **Proof.** ``optimal`` only when the solver reports a proven optimum with zero gap, the plan meets the
  budget by the exact rule (:meth:`~bitalloc.costs.Budget.exceeded`), and no known plan is cheaper. A solver's
  tolerance can return a plan a hair over the budget: that plan is cut off (``sum_l x[l, plan_l] <= L - 1``,
  which removes no plan that fits) and the model re-solved, up to ``N_CUTS`` times, then the budget rows are
  tightened and the answer is ``optimal`` only if it costs no more than the last proven optimum of the uncut
  rows (:class:`~bitalloc.solvers.cutretry.CutAndRetry`, as for ``ilp``). A time limit (``time_limit_s``) or
  ``gap_rel`` gives ``feasible`` with ``gap`` from the solver's bound.
* **Incumbent and scale.** Greedy descent with pairwise marginal costs plus slack filling gives a plan that fits
  (without extra resources or tied groups; else a first solve at a 1e-4 gap does); it bounds the choices worth
  modelling and scales the objective. If the optimum's excess is below 1 % of the incumbent's, the model is
  re-scaled by it and solved again, so the solver's absolute tolerances stay relative to the optimum.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from bitalloc.allocation import AllocStatus, Solution, register_allocator
from bitalloc.costs import Budget, CostTable

from ._mckp import descend, fill_slack
from .cutretry import CutAndRetry
from .ilp import ILPAllocator, allowed_choices, relative_gap
from .qmodel import SolveResult, build_model, incumbent_excess, solve_cbc, solve_highs

__all__ = ["IQPAllocator"]

RTOL = 1e-9  # objective comparisons: float rounding of the sums, relative


@register_allocator("iqp")
class IQPAllocator(ILPAllocator):
    """Options as for :class:`~bitalloc.solvers.ILPAllocator`: ``time_limit_s``, ``gap_rel``, ``solver`` ("auto"
    and "highs": HiGHS through SciPy; "cbc": CBC through PuLP), ``min_bits`` / ``max_bits``, ``tied``; ``method``
    and ``max_states`` apply to tables without pairwise terms (the additive ILP)."""

    supports_pairwise = True

    def __init__(self, time_limit_s: float | None = None, gap_rel: float = 0.0, solver: str = "auto",
                 min_bits: int | Mapping[str, int] | None = None, max_bits: int | Mapping[str, int] | None = None,
                 tied: Iterable[Sequence[str]] = (), method: str = "auto", max_states: int = 200_000) -> None:
        super().__init__(time_limit_s=time_limit_s, gap_rel=gap_rel, method=method, solver=solver,
                         min_bits=min_bits, max_bits=max_bits, tied=tied, max_states=max_states)

    def _solve(self, table: CostTable, budget: Budget) -> Solution:
        pairs = table.pair_terms
        if pairs is None:
            sol = super()._solve(table, budget)
            return replace(sol, message=f"no pairwise terms, so the additive ILP: {sol.message}")
        allowed = allowed_choices(table, self.min_bits, self.max_bits, self.tied, self.name)
        empty = ~allowed.any(axis=1)
        if empty.any():
            return Solution(None, AllocStatus.INFEASIBLE, 0,
                            f"min_bits/max_bits leave layer '{table.layer_names[int(np.argmax(empty))]}' no candidate")
        index = {n: i for i, n in enumerate(table.layer_names)}
        extras = [(c.name, c.matrix(table), c.max_value) for c in budget.extra]
        tied = [[index[n] for n in g] for g in self.tied]
        deadline = None if self.time_limit_s is None else time.monotonic() + self.time_limit_s

        def fits(choice: np.ndarray) -> bool:
            return budget.exceeded(table, choice) is None and all(len(set(choice[g].tolist())) == 1 for g in tied)

        def left() -> float | None:
            return None if deadline is None else max(deadline - time.monotonic(), 1e-3)

        solve = solve_cbc if self.solver == "cbc" else solve_highs
        info: dict[str, Any] = {"pairs": len(pairs)}
        incumbent = self._greedy(table, budget, allowed) if not extras and not tied else None
        if incumbent is not None and not fits(incumbent):
            incumbent = None
        if incumbent is None:  # a quick plan to scale by: the model at a 1e-4 gap
            model = build_model(table.cost, table.size_bits, budget.max_size_bits, allowed, pairs, extras, tied)
            res = solve(model, left(), max(self.gap_rel, 1e-4))
            first = model.choice_of(res.v, table.num_layers) if res.v is not None else None
            if res.infeasible:
                return Solution(None, AllocStatus.INFEASIBLE, 0, f"the integer program is infeasible ({res.status})",
                                info)
            incumbent = first if first is not None and fits(first) else None
        elif incumbent_excess(table.cost, allowed, pairs, incumbent) <= 0:
            return Solution(incumbent, AllocStatus.OPTIMAL, 0, "the greedy plan takes every row's and pair's "
                            "minimum", info, gap=0.0)
        choice, proven, lower, message = self._search(table, budget, allowed, extras, tied, incumbent, fits,
                                                      solve, left, info)
        if choice is None and incumbent is None:
            return Solution(None, AllocStatus.ERROR, 0, message, info)
        if choice is None:  # e.g. a time limit before the solver found a plan: the incumbent, with the bound
            obj = table.objective(incumbent)
            return Solution(incumbent, AllocStatus.FEASIBLE, 0, f"{message}; kept the incumbent", info,
                            gap=relative_gap(obj, lower) if lower is not None else None)
        obj = table.objective(choice)
        if incumbent is not None and table.objective(incumbent) < obj - RTOL * abs(obj):
            choice, obj, proven = incumbent, table.objective(incumbent), False
            message = f"kept the incumbent, cheaper than the solver's answer ({message})"
        if proven:
            return Solution(choice, AllocStatus.OPTIMAL, 0, f"proven optimal: {message}", info, gap=0.0)
        gap = relative_gap(obj, lower) if lower is not None else None
        return Solution(choice, AllocStatus.FEASIBLE, 0, message, info, gap=gap)

    def _greedy(self, table: CostTable, budget: Budget, allowed: np.ndarray) -> np.ndarray:
        """Greedy descent by pairwise marginal costs from the highest allowed bits, then slack filling."""
        cost, size, W, pairs = table.cost, table.size_bits, budget.max_size_bits, table.pair_terms
        start = np.where(allowed, np.arange(len(table.bits))[None, :], -1).max(axis=1)
        choice, _, _ = descend(cost, size, start, W, keep=allowed, pairs=pairs)
        return fill_slack(cost, size, allowed, choice, W, pairs=pairs)

    def _search(self, table: CostTable, budget: Budget, allowed: np.ndarray, extras: list, tied: list,
                incumbent: np.ndarray | None, fits: Callable[[np.ndarray], bool], solve: Callable[..., SolveResult],
                left: Callable[[], float | None], info: dict[str, Any],
                ) -> tuple[np.ndarray | None, bool, float | None, str]:
        """Solve (re-scaled once if the incumbent was poor), cutting off plans that come back over the budget.
        Returns (plan or None, proven, lower bound or None, message)."""
        L = table.num_layers
        for rescale in range(2):
            model = build_model(table.cost, table.size_bits, budget.max_size_bits, allowed, table.pair_terms,
                                extras, tied, incumbent)
            info.update(variables=int(model.c.size), binaries=model.n_x, product_pairs=model.num_pairs,
                        scale=model.scale)
            lower, first_optimum, choice, proven = None, None, None, False
            retry = CutAndRetry(fits, model.cut, model.tighten)
            status = "not solved"
            for _ in retry.attempts():
                res = solve(model, left(), self.gap_rel)
                status = res.status
                picked = model.choice_of(res.v, L) if res.v is not None else None
                if not retry.tightened and res.bound is not None:
                    lower = model.offset + res.bound * model.scale
                if picked is None:
                    break
                proven = res.optimal and not self.gap_rel
                if proven and not retry.tightened:
                    first_optimum = table.objective(picked)  # optimum of a relaxation: a lower bound
                if retry.accept(picked):
                    choice = picked
                    break
            if choice is None:
                return None, False, lower, f"the solver returned no plan within the budget ({status})"
            obj = table.objective(choice)
            excess = obj - model.offset
            if rescale == 0 and proven and excess < 0.01 * model.scale and excess > 0:
                incumbent = choice  # the incumbent was poor: solve again scaled by the optimum
                continue
            break
        bounds = [b for b in (lower, first_optimum) if b is not None]
        low = max(bounds) if bounds else None
        proven = proven and (not retry.tightened
                             or (first_optimum is not None and obj <= first_optimum + RTOL * abs(obj)))
        info["solver_status"] = status
        return choice, proven, low, f"{status}; {model.num_pairs} pairs with product variables"
