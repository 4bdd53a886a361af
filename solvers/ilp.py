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
else PuLP's HiGHS interface if ``highspy`` is installed, else :class:`SolverUnavailableError` saying so.
CBC runs with ``allowableGap 0`` and ``increment 0``: its default cutoff increment, derived from the objective
coefficients, made it stop above the optimum of real-valued tables while reporting "optimal". A time
limit that stops CBC with an incumbent gives status ``feasible`` and, when the LP bound is valid, its gap.
"""

from __future__ import annotations

import warnings
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from bitalloc.allocation import AllocStatus, BaseAllocator, Solution, register_allocator
from bitalloc.costs import Budget, CostTable
from bitalloc.errors import SolverUnavailableError

from ._mckp import dominance_mask, enumerate_pareto, fill_slack, hull_mask, lagrangian, lp_relaxation

METHODS = ("auto", "structured", "pulp")


def milp_solver(name: str = "auto", time_limit_s: float | None = None, gap_rel: float | None = None,
                warm_start: bool = False) -> Any:
    """A PuLP solver object that is available here: CBC (bundled with pulp<4), else HiGHS (highspy)."""
    import pulp

    tried = []
    if name in ("auto", "cbc"):
        # CBC derives a cutoff increment from the objective coefficients and then prunes nodes that improve
        # by less: with real-valued costs it stopped 1.5e-5 above the optimum while reporting "optimal".
        opts = ["allowableGap 0", "increment 0"] if not gap_rel else []
        with warnings.catch_warnings():  # PuLP 3.x warns that PULP_CBC_CMD leaves in 4.0; we pin <4
            warnings.simplefilter("ignore", DeprecationWarning)
            s = pulp.PULP_CBC_CMD(msg=False, timeLimit=time_limit_s, gapRel=gap_rel, warmStart=warm_start,
                                  options=opts)
        if s.available():
            return s
        tried.append("PULP_CBC_CMD")
    if name in ("auto", "highs"):
        highs = getattr(pulp, "HiGHS", None)
        if highs is not None:
            s = highs(msg=False, timeLimit=time_limit_s, gapRel=gap_rel)
            if s.available():
                return s
        tried.append("HiGHS")
    raise SolverUnavailableError(
        f"no MILP solver available to PuLP {pulp.__version__} (tried {', '.join(tried) or name}); PuLP 4 no "
        "longer bundles CBC: install 'pulp<4' (as bitalloc pins) or 'highspy'")


def _bits_mask(table: CostTable, bounds: int | Mapping[str, int] | None, low: bool) -> np.ndarray:
    L, B = table.cost.shape
    bits = np.asarray(table.bits)
    if bounds is None:
        return np.ones((L, B), dtype=bool)
    if isinstance(bounds, Mapping):
        unknown = [n for n in bounds if n not in set(table.layer_names)]
        if unknown:
            raise ValueError(f"ilp: {'min' if low else 'max'}_bits names layer '{unknown[0]}', not in the table")
        lim = np.array([bounds.get(n, -np.inf if low else np.inf) for n in table.layer_names], dtype=float)
    else:
        lim = np.full(L, float(bounds))
    return bits[None, :] >= lim[:, None] if low else bits[None, :] <= lim[:, None]


@register_allocator("ilp")
class ILPAllocator(BaseAllocator):
    """Options: ``time_limit_s``, ``gap_rel`` (CBC's relative gap, default 0: optimal), ``method``,
    ``solver`` ("auto", "cbc", "highs"), ``min_bits`` / ``max_bits`` (int or {layer: bits}),
    ``tied`` (groups of layer names that must share one bit-width), ``max_states`` (reduced DP size)."""

    supports_extra = True

    def __init__(self, time_limit_s: float | None = 60.0, gap_rel: float = 0.0, method: str = "auto",
                 solver: str = "auto", min_bits: int | Mapping[str, int] | None = None,
                 max_bits: int | Mapping[str, int] | None = None, tied: Iterable[Sequence[str]] = (),
                 max_states: int = 200_000) -> None:
        if method not in METHODS:
            raise ValueError(f"ilp: unknown method '{method}', expected one of {METHODS}")
        if solver not in ("auto", "cbc", "highs"):
            raise ValueError(f"ilp: unknown solver '{solver}', expected 'auto', 'cbc' or 'highs'")
        self.time_limit_s, self.gap_rel, self.method, self.solver = time_limit_s, gap_rel, method, solver
        self.min_bits, self.max_bits = min_bits, max_bits
        self.tied = tuple(tuple(g) for g in tied)
        self.max_states = max_states

    # ------------------------------------------------------------------------------------------------------
    def _solve(self, table: CostTable, budget: Budget) -> Solution:
        allowed = _bits_mask(table, self.min_bits, True) & _bits_mask(table, self.max_bits, False)
        empty = ~allowed.any(axis=1)
        if empty.any():
            return Solution(None, AllocStatus.INFEASIBLE, 0,
                            f"min_bits/max_bits leave layer '{table.layer_names[int(np.argmax(empty))]}' no candidate")
        names = set(table.layer_names)
        for g in self.tied:
            for n in g:
                if n not in names:
                    raise ValueError(f"ilp: tied group names layer '{n}', not in the table")
        method = self.method
        if method == "auto":
            method = "pulp" if (budget.extra or self.tied) else "structured"
        if method == "structured" and (budget.extra or self.tied):
            raise ValueError("ilp: method='structured' cannot handle extra resources or tied groups; use 'pulp'")
        if method == "structured":
            return self._structured(table, budget, allowed)
        return self._pulp(table, budget, allowed)

    # ------------------------------------------------------------------------------------------------------
    def _bounds(self, table: CostTable, W: float, allowed: np.ndarray) -> dict[str, Any]:
        cost, size = table.cost, table.size_bits
        keep = dominance_mask(cost, allowed)
        min_size = float(np.where(keep, size, np.inf).min(axis=1).sum())
        if min_size > W:
            return {"infeasible": min_size}
        hull = hull_mask(cost, size, keep)
        lp = lp_relaxation(cost, size, hull, W)
        inc = fill_slack(cost, size, keep, lp.choice, W)
        rows = np.arange(table.num_layers)
        ub = float(cost[rows, inc].sum())
        lb, rc = lagrangian(cost, size, keep, lp.lam, W)
        return {"keep": keep, "lp": lp, "incumbent": inc, "ub": ub, "lb": lb,
                "rc": rc}

    def _structured(self, table: CostTable, budget: Budget, allowed: np.ndarray) -> Solution:
        cost, size, W = table.cost, table.size_bits, budget.max_size_bits
        L = table.num_layers
        bd = self._bounds(table, W, allowed)
        if "infeasible" in bd:
            return Solution(None, AllocStatus.INFEASIBLE, 0,
                            f"min_bits/max_bits raise the smallest size to {bd['infeasible']:.6g} bits, "
                            f"above the budget {W:.6g}")
        keep, inc, ub, lb, rc = bd["keep"], bd["incumbent"], bd["ub"], bd["lb"], bd["rc"]
        tol = 1e-12 + 1e-9 * abs(ub)
        gap = ub - lb
        info: dict[str, Any] = {"lp_bound": lb, "incumbent_cost": ub, "lam": bd["lp"].lam,
                                "kept_choices": int(keep.sum())}
        if gap <= tol:
            info.update(gap=0.0, free_layers=0, states=0)
            return Solution(inc, AllocStatus.OPTIMAL, 0, "incumbent meets the LP bound", info)
        # reduced-cost fixing: choices that cannot be in a plan cheaper than the incumbent
        live = keep & (rc <= gap + tol)
        live[np.arange(L), inc] = True
        free = live.sum(axis=1) > 1
        fixed_choice = live.argmax(axis=1)
        info.update(free_layers=int(free.sum()), live_choices=int(live.sum()))
        fidx = np.nonzero(free)[0]
        rows = np.arange(L)
        fixed_size = float(size[rows[~free], fixed_choice[~free]].sum())
        cap = W - fixed_size
        # layers with the widest reduced-cost spread first: the rc bound prunes earliest
        spread = np.where(live[fidx], rc[fidx], -np.inf).max(axis=1)
        fidx = fidx[np.argsort(-spread, kind="stable")]
        sub, n_states, complete = enumerate_pareto(cost[fidx], size[fidx], live[fidx], cap, rc=rc[fidx],
                                                   rc_limit=gap + tol, max_states=self.max_states,
                                                   lam=bd["lp"].lam)
        info["states"] = n_states
        choice = inc.copy()
        if complete:  # sub is None: no plan beats the incumbent
            cand = fixed_choice.copy()
            if sub is not None:
                cand[fidx] = sub
            if sub is not None and float(cost[rows, cand].sum()) < ub and float(size[rows, cand].sum()) <= W:
                choice = cand
            info["gap"] = 0.0
            return Solution(choice, AllocStatus.OPTIMAL, n_states,
                            f"proven optimal: {len(fidx)} layers left after reduced-cost fixing", info)
        # the reduced problem is too large to enumerate: hand it to the MILP solver, warm-started
        sub_table = table.subset([table.layer_names[i] for i in fidx])
        res = self._pulp(sub_table, Budget(cap), live[fidx], warm=inc[fidx], lb=None)
        info.update(res.extra, reduced_by="milp")
        if res.choice is None:
            return Solution(inc, AllocStatus.FEASIBLE, n_states, f"reduced problem: {res.message}; kept the "
                            "incumbent", {**info, "gap": gap / max(abs(ub), 1e-300)})
        choice = fixed_choice.copy()
        choice[fidx] = res.choice
        obj = float(cost[rows, choice].sum())
        if obj > ub or float(size[rows, choice].sum()) > W:
            choice, obj = inc, ub
        if res.status == AllocStatus.OPTIMAL:
            info["gap"] = 0.0
            return Solution(choice, AllocStatus.OPTIMAL, n_states,
                            f"proven optimal: {len(fidx)} layers left after reduced-cost fixing, solved by "
                            f"{info.get('solver')}", info)
        info["gap"] = max(0.0, obj - lb) / max(abs(obj), 1e-300)
        return Solution(choice, AllocStatus.FEASIBLE, n_states, f"reduced problem: {res.message}", info)

    # ------------------------------------------------------------------------------------------------------
    def _pulp(self, table: CostTable, budget: Budget, allowed: np.ndarray, warm: np.ndarray | None = None,
              lb: float | None = None) -> Solution:
        import pulp

        cost, size, W = table.cost, table.size_bits, budget.max_size_bits
        L, B = cost.shape
        rows = np.arange(L)
        # scale to O(1) coefficients so the solver's absolute tolerances mean something
        c_scale = float(np.abs(cost).max()) or 1.0
        prob = pulp.LpProblem("bitalloc_mckp", pulp.LpMinimize)
        x: dict[tuple[int, int], Any] = {}
        if hasattr(prob, "add_variable"):  # PuLP >= 3.3 attaches variables to the model
            def new_var(name: str) -> Any:
                return prob.add_variable(name, 0, 1, cat="Binary")
        else:
            def new_var(name: str) -> Any:
                return pulp.LpVariable(name, cat="Binary")
        for l in range(L):
            for j in np.nonzero(allowed[l])[0]:
                x[l, int(j)] = new_var(f"x_{l}_{int(j)}")
        prob += pulp.lpSum(float(cost[l, j] / c_scale) * v for (l, j), v in x.items())
        for l in range(L):
            prob += pulp.lpSum(x[l, int(j)] for j in np.nonzero(allowed[l])[0]) == 1, f"one_{l}"
        # the solver's feasibility tolerance (~1e-9 relative here) could admit a plan a hair over W: with
        # integer sizes, flooring W removes that room; a violation left is caught below and re-solved tighter
        integral = bool(np.all(size == np.round(size)))
        W_eff = float(np.floor(W)) if integral else W
        size_con = pulp.lpSum(float(size[l, j] / W) * v for (l, j), v in x.items()) <= W_eff / W
        prob += size_con, "size"
        for k, con in enumerate(budget.extra):
            m = con.matrix(table)
            scale = max(abs(con.max_value), float(np.abs(m).max()), 1e-300)
            prob += (pulp.lpSum(float(m[l, j] / scale) * v for (l, j), v in x.items())
                     <= con.max_value / scale), f"extra_{k}"
        index = {n: i for i, n in enumerate(table.layer_names)}
        for g, group in enumerate(self.tied):
            first = index[group[0]]
            for n in group[1:]:
                other = index[n]
                for j in range(B):
                    a, b = x.get((first, j)), x.get((other, j))
                    if a is None and b is None:
                        continue
                    prob += (a if a is not None else 0) == (b if b is not None else 0), f"tie_{g}_{other}_{j}"
        if warm is not None:
            for (l, j), v in x.items():
                v.setInitialValue(1 if warm[l] == j else 0)
        solver = milp_solver(self.solver, self.time_limit_s, self.gap_rel, warm_start=warm is not None)
        for attempt in range(3):
            try:
                prob.solve(solver)
            except pulp.PulpSolverError as exc:
                return Solution(warm, AllocStatus.FEASIBLE if warm is not None else AllocStatus.ERROR, 0,
                                f"solver failed: {exc}", {})
            picked = [(l, j) for (l, j), v in x.items() if (v.value() or 0) > 0.5]
            used = float(sum(size[l, j] for l, j in picked))
            if used <= W or len(picked) != L:
                break
            prob.constraints["size"].changeRHS(W_eff / W * (1 - 10.0 ** (attempt - 9)))
        sol_status = getattr(prob, "sol_status", None)
        status_name = pulp.LpStatus.get(prob.status, str(prob.status))
        if prob.status == pulp.LpStatusInfeasible:
            return Solution(None, AllocStatus.INFEASIBLE, 0, "the integer program is infeasible", {})
        choice = np.full(L, -1)
        for (l, j), v in x.items():
            val = v.value()
            if val is not None and val > 0.5:
                choice[l] = j
        if (choice < 0).any():
            if warm is not None:
                return Solution(warm, AllocStatus.FEASIBLE, 0, f"solver returned no plan ({status_name}); "
                                "kept the incumbent", {})
            return Solution(None, AllocStatus.ERROR, 0, f"solver returned no plan ({status_name})", {})
        obj = float(cost[rows, choice].sum())
        if warm is not None and float(cost[rows, warm].sum()) < obj:
            choice, obj = warm, float(cost[rows, warm].sum())
        proven = sol_status == pulp.LpSolutionOptimal and self.gap_rel == 0
        extra: dict[str, Any] = {"solver": type(solver).__name__, "solver_status": status_name}
        if proven:
            extra["gap"] = 0.0
            return Solution(choice, AllocStatus.OPTIMAL, 0, f"{type(solver).__name__}: optimal", extra)
        if lb is None and not budget.extra and not self.tied:
            lb = self._bounds(table, W, allowed).get("lb")
        extra["gap"] = None if lb is None else max(0.0, obj - lb) / max(abs(obj), 1e-300)
        return Solution(choice, AllocStatus.FEASIBLE, 0,
                        f"{type(solver).__name__}: {status_name} (time limit or gap_rel), optimality not proven",
                        extra)
