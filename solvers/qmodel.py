"""The pairwise (quadratic) allocation problem as a mixed-integer linear program, and its solvers.

Problem (one column x_l per layer; P_ij the table's B x B interaction terms on a sparse set of pairs)::

    minimize    sum_l c[l, x_l] + sum_{(i, j)} P_ij[x_i, x_j]
    subject to  sum_l s[l, x_l] <= W,  extra rows <= their limits,  tied layers equal,  x_l allowed

**Linearisation.** Binary x[l, a] = [x_l = a] with ``sum_a x[l, a] = 1``. Each pair gets continuous
w[a, b] >= 0 standing for the product x[i, a] x[j, b], tied to the x by its marginals::

    sum_b w[a, b] = x[i, a]   for every a,        sum_a w[a, b] = x[j, b]   for every b,

and contributes ``sum_{a,b} P_ij[a, b] w[a, b]``. For binary x these force w[a, b] = x[i, a] x[j, b] exactly
(only row x_i and column x_j hold mass, and w[x_i, x_j] = 1), whatever the sign of P, so no convexity is needed.
This is the local-marginal-polytope (Sherali-Adams level-1) form: its LP relaxation is at least as tight as the
standard product linearisation (w <= x[i,a], w <= x[j,b], w >= x[i,a] + x[j,b] - 1, which follows from the
marginals and w >= 0), and exact for tree-structured pair graphs without the budget row.

**Smaller models.** Rows (columns) of P that are equal are merged into one class, with the marginals summed over
the class: the same argument holds with x replaced by class indicators. A pair whose P has one row class (or one
column class) depends on one layer only and is folded into that layer's costs. Each row of costs and each P is
shifted by its minimum (an exact constant, since every layer takes one choice and every pair one cell), so every
coefficient is >= 0 and the model minimises the *excess* over those minima. A known plan that fits (an incumbent)
bounds the excess, so choices whose own excess exceeds the incumbent's are dropped. The objective is divided by
the incumbent's excess (clamped so that no coefficient exceeds 1e6), so the optimum scores at most 1 and the
solver's absolute tolerances are relative to it.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import scipy.sparse as sp

from bitalloc.pairwise import PairTerms

__all__ = ["QuadraticModel", "build_model", "incumbent_excess", "solve_highs", "solve_cbc", "SolveResult",
           "HIGHS_OPTIONS"]

# passed to HiGHS verbatim: gaps 0 (a proof, not a stop at HiGHS's default 1e-6 absolute gap), tight tolerances
HIGHS_OPTIONS = {"mip_abs_gap": 0.0, "dual_feasibility_tolerance": 1e-10, "primal_feasibility_tolerance": 1e-9,
                 "mip_feasibility_tolerance": 1e-9}


@dataclass
class QuadraticModel:
    """``minimize c @ v  s.t.  lo <= A @ v <= hi,  0 <= v <= 1,  v[:n_x] binary``; the objective in cost units is
    ``offset + scale * (c @ v)``. ``column[k] = (l, a)`` for the k-th x variable; ``size_row`` and ``extra_rows``
    index the budget rows (for tightening)."""

    c: np.ndarray
    A: sp.csr_matrix
    lo: np.ndarray
    hi: np.ndarray
    n_x: int
    column: np.ndarray  # (n_x, 2): layer, choice
    offset: float
    scale: float
    size_row: int
    extra_rows: list[int]
    num_pairs: int      # pairs modelled with product variables (the others were folded into unary costs)

    def choice_of(self, v: np.ndarray, num_layers: int) -> np.ndarray | None:
        """The plan in a solution vector (None if some layer has no x near 1)."""
        x = v[: self.n_x]
        on = x > 0.5
        choice = np.full(num_layers, -1, dtype=np.int64)
        choice[self.column[on, 0]] = self.column[on, 1]
        return None if (choice < 0).any() or on.sum() != num_layers else choice

    def cut(self, choice: np.ndarray) -> None:
        """Exclude one plan: ``sum_l x[l, choice_l] <= L - 1``."""
        hit = (choice[self.column[:, 0]] == self.column[:, 1]).astype(np.float64)
        row = sp.csr_matrix(np.concatenate([hit, np.zeros(self.c.size - self.n_x)])[None, :])
        self.A = sp.vstack([self.A, row], format="csr")
        self.lo = np.append(self.lo, -np.inf)
        self.hi = np.append(self.hi, float(len(choice) - 1))

    def tighten(self, t: float) -> None:
        """Cut the budget rows' room by the relative amount t (their limits are O(1) after scaling)."""
        for r in [self.size_row, *self.extra_rows]:
            self.hi[r] = self.hi[r] * (1 - t) if self.hi[r] > 0 else self.hi[r] - t


def _classes(m: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Equal rows (axis 0) or columns (axis 1) of m: (the distinct ones, class index of each)."""
    uniq, inverse = np.unique(m, axis=axis, return_inverse=True)
    return uniq, np.asarray(inverse).ravel()


def incumbent_excess(cost: np.ndarray, live: np.ndarray, pairs: PairTerms, choice: np.ndarray) -> float:
    """The plan's objective minus every row's and every pair's minimum over ``live``: a sum of terms >= 0."""
    L = cost.shape[0]
    terms = [cost[np.arange(L), choice] - np.where(live, cost, np.inf).min(axis=1)]
    for i, j, m in zip(pairs.first, pairs.second, pairs.matrix):
        terms.append([m[choice[i], choice[j]] - m[np.ix_(live[i], live[j])].min()])
    return math.fsum(np.concatenate(terms).tolist())


def build_model(cost: np.ndarray, size: np.ndarray, capacity: float, live: np.ndarray, pairs: PairTerms,
                extras: Sequence[tuple[str, np.ndarray, float]] = (), tied: Sequence[Sequence[int]] = (),
                incumbent: np.ndarray | None = None) -> QuadraticModel:
    """The MILP of the module docstring over the ``live`` (L, B) choices; ``incumbent``: a plan that satisfies
    the whole model (it bounds the excess and sets the scale)."""
    L, B = cost.shape
    excess = incumbent_excess(cost, live, pairs, incumbent) if incumbent is not None else None
    if excess is not None:  # a choice whose own excess is above the incumbent's whole excess is never needed
        own = np.where(live, cost - np.where(live, cost, np.inf).min(axis=1)[:, None], 0.0)
        live = live & (own <= excess * (1 + 1e-9) + 1e-300)
    rows = np.nonzero(live)
    n_x = len(rows[0])
    col_of = np.full((L, B), -1, dtype=np.int64)
    col_of[rows] = np.arange(n_x)
    masked = np.where(live, cost, np.inf)
    row_min = masked.min(axis=1)
    unary = np.where(live, cost - row_min[:, None], 0.0)
    offsets = [*row_min.tolist()]
    w_coef: list[np.ndarray] = []
    trip_r: list[np.ndarray] = []  # marginal rows as (row, column, value) triplets
    trip_c: list[np.ndarray] = []
    trip_v: list[np.ndarray] = []
    n_rows = n_cols = 0
    n_pairs = 0
    for i, j, m in zip(pairs.first, pairs.second, pairs.matrix):
        ai, bj = np.nonzero(live[i])[0], np.nonzero(live[j])[0]
        sub = m[np.ix_(ai, bj)]
        low = float(sub.min())
        offsets.append(low)
        sub = sub - low
        ur, r_of = _classes(sub, 0)
        uc, c_of = _classes(sub, 1)
        if len(ur) == 1:  # the term depends on layer j only
            unary[j, bj] += sub[0]
            continue
        if len(uc) == 1:
            unary[i, ai] += sub[:, 0]
            continue
        n_pairs += 1
        nr, nc = len(ur), uc.shape[1]
        vals = ur[:, [int(np.nonzero(c_of == k)[0][0]) for k in range(nc)]]  # (nr, nc): class x class
        w = n_cols + np.arange(nr * nc).reshape(nr, nc)
        w_coef.append(vals.ravel())
        # row class r: sum_c w[r, c] - sum_{a in r} x[i, a] = 0; column class k likewise with layer j
        trip_r += [n_rows + np.repeat(np.arange(nr), nc), n_rows + r_of, n_rows + nr + np.tile(np.arange(nc), nr),
                   n_rows + nr + c_of]
        trip_c += [w.ravel(), -1 - col_of[i, ai], w.ravel(), -1 - col_of[j, bj]]
        trip_v += [np.ones(nr * nc), -np.ones(len(ai)), np.ones(nr * nc), -np.ones(len(bj))]
        n_rows += nr + nc
        n_cols += nr * nc
    c = np.concatenate([unary[rows], *w_coef]) if w_coef else unary[rows].copy()
    n = n_x + n_cols
    # columns: x first (encoded above as -1 - index), then the w variables after them
    cols = np.concatenate(trip_c) if trip_c else np.zeros(0, dtype=np.int64)
    cols = np.where(cols < 0, -1 - cols, n_x + cols)
    marg = sp.csr_matrix((np.concatenate(trip_v) if trip_v else [], (np.concatenate(trip_r) if trip_r else [], cols)),
                         shape=(n_rows, n))
    one = sp.csr_matrix((np.ones(n_x), (rows[0], np.arange(n_x))), shape=(L, n))
    integral = bool(np.all(size == np.round(size)))  # integer sizes: flooring W keeps the same plans
    limit = (math.floor(capacity) if integral else capacity) / capacity
    budget_rows = [sp.csr_matrix((size[rows] / capacity, (np.zeros(n_x, dtype=np.int64), np.arange(n_x))),
                                 shape=(1, n))]
    his = [limit]
    for _, mat, lim in extras:
        sc = max(abs(lim), float(np.abs(mat).max()), 1e-300)
        budget_rows.append(sp.csr_matrix((mat[rows] / sc, (np.zeros(n_x, dtype=np.int64), np.arange(n_x))),
                                         shape=(1, n)))
        his.append(lim / sc)
    ties = []
    for group in tied:
        for other in group[1:]:
            for a in range(B):
                u, v = col_of[group[0], a], col_of[other, a]
                if u < 0 and v < 0:
                    continue
                row = np.zeros(n)
                if u >= 0:
                    row[u] += 1.0
                if v >= 0:
                    row[v] -= 1.0
                ties.append(sp.csr_matrix(row[None, :]))
    A = sp.vstack([one, *budget_rows, marg, *ties], format="csr")
    lo = np.concatenate([np.ones(L), np.full(len(budget_rows), -np.inf), np.zeros(n_rows), np.zeros(len(ties))])
    hi = np.concatenate([np.ones(L), his, np.zeros(n_rows), np.zeros(len(ties))])
    top = float(c.max()) if c.size else 0.0
    scale = excess if excess is not None and excess > 0 else top
    scale = max(scale, 1e-6 * top)  # no coefficient above 1e6
    scale = scale if scale > 0 and math.isfinite(scale) else 1.0
    return QuadraticModel(c / scale, A, lo, hi, n_x, np.stack([rows[0], rows[1]], axis=1), math.fsum(offsets), scale,
                          L, list(range(L + 1, L + len(budget_rows))), n_pairs)


@dataclass
class SolveResult:
    v: np.ndarray | None          # solution vector, None if none
    optimal: bool                 # the solver reports a proven optimum (zero gap unless gap_rel was given)
    infeasible: bool
    bound: float | None           # the solver's lower bound on c @ v (model units), if known
    status: str


def solve_highs(model: QuadraticModel, time_limit_s: float | None = None, gap_rel: float = 0.0) -> SolveResult:
    """HiGHS through :func:`scipy.optimize.milp` (in-process)."""
    from scipy.optimize import Bounds, LinearConstraint, milp

    options = {"mip_rel_gap": gap_rel, **HIGHS_OPTIONS}
    if time_limit_s is not None:
        options["time_limit"] = max(time_limit_s, 1e-3)
    integrality = np.concatenate([np.ones(model.n_x), np.zeros(model.c.size - model.n_x)])
    with warnings.catch_warnings():  # scipy warns that it passes HIGHS_OPTIONS to HiGHS verbatim: intended
        warnings.simplefilter("ignore", RuntimeWarning)
        res = milp(model.c, integrality=integrality, bounds=Bounds(0.0, 1.0),
                   constraints=LinearConstraint(model.A, model.lo, model.hi), options=options)
    bound = getattr(res, "mip_dual_bound", None)
    bound = float(bound) if bound is not None and np.isfinite(bound) else None
    return SolveResult(res.x if res.x is not None else None, res.status == 0, res.status == 2, bound,
                       f"HiGHS: {res.message}")


def solve_cbc(model: QuadraticModel, time_limit_s: float | None = None, gap_rel: float = 0.0) -> SolveResult:
    """CBC through PuLP, with the tolerances of :data:`bitalloc.solvers.milp.CBC_OPTIONS`."""
    import pulp

    from .milp import milp_solver

    prob = pulp.LpProblem("bitalloc_iqp", pulp.LpMinimize)
    new = getattr(prob, "add_variable", None) or pulp.LpVariable  # PuLP >= 3.3 attaches variables to the model
    v = [new(f"v{k}", 0, 1, cat="Binary" if k < model.n_x else "Continuous") for k in range(model.c.size)]
    prob += pulp.lpSum(float(model.c[k]) * v[k] for k in np.nonzero(model.c)[0])
    A = model.A.tocsr()
    for r in range(A.shape[0]):
        lo, hi = model.lo[r], model.hi[r]
        expr = pulp.lpSum(float(a) * v[k] for k, a in zip(A.indices[A.indptr[r]:A.indptr[r + 1]],
                                                          A.data[A.indptr[r]:A.indptr[r + 1]]))
        if lo == hi:
            prob += expr == float(hi), f"r{r}"
        else:
            prob += expr <= float(hi), f"r{r}"
    prob.solve(milp_solver("cbc", time_limit_s, gap_rel))
    values = np.array([x.value() if x.value() is not None else np.nan for x in v])
    status = pulp.LpStatus.get(prob.status, str(prob.status))
    found = not np.isnan(values).any() and prob.status == pulp.LpStatusOptimal
    optimal = found and getattr(prob, "sol_status", None) == pulp.LpSolutionOptimal and not gap_rel
    return SolveResult(values if found else None, optimal, prob.status == pulp.LpStatusInfeasible,
                       None, f"CBC: {status}")
