"""FMPQ's adaptive tolerance search (Hossain, Duan, Zhu, "Flexible Mixed Precision Quantization for Learned
Image Compression", arXiv 2506.01221, ICME 2024).

Rule: for a tolerance beta each layer takes the lowest candidate whose sensitivity is within it,

    b_l(beta) = min { b : c[l, b] <= beta }      (the highest candidate if none qualifies),

so the model size S(beta) never increases with beta. beta is searched towards the target size W: steps of a
factor of 5 while far from it (|S/W - 1| > ``near``), of 2 when near, until the size is within ``tol``
(the paper's +-0.01) of the target.

Choices made here (the paper gives no more detail):

* Costs are the table's loss increases; the paper's zeta = (L - L_fp) / L_fp is the same up to the constant
  L_fp, which only rescales beta.
* "Within +-0.01 of the target ratio" is read as a relative size error |S/W - 1| <= ``tol``.
* Once a step overshoots (a beta above and one below the target are known), plain factor steps would
  oscillate; the search then bisects the bracket over the distinct sensitivity values inside it (S only
  changes there), which ends in at most log2(L*B) steps even if no beta lands within ``tol``.
* The start is the median sensitivity at the candidate nearest the target's average bits.
* A budget that holds every layer at its highest candidate returns that plan at once (the limit of a
  tolerance below every sensitivity), rather than any plan within ``tol`` of it.
* ``strict=True`` (default) returns the best plan that fits (within ``tol`` below W when one exists);
  ``strict=False`` also accepts a plan up to ``tol`` above W, as the paper does.
"""

from __future__ import annotations

import numpy as np

from bitalloc.allocation import AllocStatus, BaseAllocator, Solution, register_allocator
from bitalloc.costs import Budget, CostTable


@register_allocator("fmpq")
class FMPQAllocator(BaseAllocator):
    def __init__(self, tol: float = 0.01, strict: bool = True, near: float = 0.1, far_factor: float = 5.0,
                 near_factor: float = 2.0, max_iter: int = 60) -> None:
        if not 0 <= tol < 1:
            raise ValueError(f"fmpq: tol must be in [0, 1), got {tol}")
        if far_factor <= 1 or near_factor <= 1:
            raise ValueError("fmpq: step factors must exceed 1")
        self.tol, self.strict, self.near = tol, strict, near
        self.far_factor, self.near_factor, self.max_iter = far_factor, near_factor, max_iter

    @staticmethod
    def choose(cost: np.ndarray, beta: float) -> np.ndarray:
        ok = cost <= beta
        return np.where(ok.any(axis=1), ok.argmax(axis=1), cost.shape[1] - 1)

    def _solve(self, table: CostTable, budget: Budget) -> Solution:
        cost, size, W = table.cost, table.size_bits, budget.max_size_bits
        rows = np.arange(table.num_layers)
        if float(size[:, -1].sum()) <= W:  # the whole model fits: the tolerance below every sensitivity
            return Solution(np.full(table.num_layers, len(table.bits) - 1), AllocStatus.FEASIBLE, 1,
                            "every layer at its highest candidate fits the budget", {"beta": -1.0, "trace": []})
        u = np.unique(cost)  # breakpoints of S(beta)
        a = table.size_to_avg_bits(W)
        jstar = int(np.argmin(np.abs(np.asarray(table.bits) - a)))
        beta = float(np.median(cost[:, jstar]))
        lo, hi = -np.inf, None  # S(lo) > W (too big) ... S(hi) <= W
        best_fit: tuple[float, np.ndarray, float] | None = None  # (size, choice, beta)
        over_ok: tuple[float, np.ndarray, float] | None = None
        max_size = float(size[:, -1].sum())
        lo_known = False
        it = 0
        trace = []
        while it < self.max_iter:
            it += 1
            choice = self.choose(cost, beta)
            s = float(size[rows, choice].sum())
            rel = s / W - 1.0
            trace.append((beta, s))
            if s <= W:
                if best_fit is None or s > best_fit[0]:
                    best_fit = (s, choice, beta)
                if rel >= -self.tol or s >= max_size:
                    break
                hi = beta if hi is None else min(hi, beta)
            else:
                if not self.strict and rel <= self.tol and (over_ok is None or s < over_ok[0]):
                    over_ok = (s, choice, beta)
                    break
                lo = max(lo, beta)
                lo_known = True
            if lo_known and hi is not None:
                cand = u[(u > lo) & (u <= hi)]
                if cand.size <= 1:
                    break  # no beta between gives another plan
                beta = float(cand[(cand.size - 1) // 2])
                continue
            step = self.far_factor if abs(rel) > self.near else self.near_factor
            if s > W:  # too big: raise the tolerance
                beta = beta * step if beta > 0 else float(u[u > 0][0]) if (u > 0).any() else float(u[-1])
                beta = min(beta, float(u[-1]))
            else:  # room left: lower the tolerance
                smaller = beta / step
                beta = smaller if smaller >= u[0] and beta > u[0] else -1.0
        pick = over_ok if over_ok is not None else best_fit
        if pick is None:  # max_iter reached before any fit: the all-lowest plan always fits
            pick = (float(size[:, 0].sum()), np.zeros(table.num_layers, dtype=np.int64), float(u[-1]))
        s, choice, beta = pick
        return Solution(choice, AllocStatus.FEASIBLE, it,
                        f"tolerance {beta:.4g}, size {s / W:.4f} of the budget after {it} iterations",
                        {"beta": beta, "trace": trace, "allow_over_budget": over_ok is not None})
