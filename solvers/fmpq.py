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

from bitalloc.allocation import (AllocStatus, BaseAllocator, Solution, bool_option, float_option, int_option,
                                 register_allocator)
from bitalloc.costs import Budget, CostTable

from ._mckp import exact_size


@register_allocator("fmpq")
class FMPQAllocator(BaseAllocator):
    def __init__(self, tol: float = 0.01, strict: bool = True, near: float = 0.1, far_factor: float = 5.0,
                 near_factor: float = 2.0, max_iter: int = 60) -> None:
        self.tol = float_option("fmpq", "tol", tol, 0.0, 1.0, high_open=True)
        self.strict = bool_option("fmpq", "strict", strict)
        self.near = float_option("fmpq", "near", near, 0.0, low_open=True)
        self.far_factor = float_option("fmpq", "far_factor", far_factor, 1.0, low_open=True)
        self.near_factor = float_option("fmpq", "near_factor", near_factor, 1.0, low_open=True)
        self.max_iter = int_option("fmpq", "max_iter", max_iter, 1)

    @staticmethod
    def choose(cost: np.ndarray, beta: float) -> np.ndarray:
        ok = cost <= beta
        return np.where(ok.any(axis=1), ok.argmax(axis=1), cost.shape[1] - 1)

    def _solve(self, table: CostTable, budget: Budget) -> Solution:
        cost, size, W = table.cost, table.size_bits, budget.max_size_bits
        if budget.fits(table.max_size_bits):  # the whole model fits: the tolerance below every sensitivity
            return Solution(np.full(table.num_layers, len(table.bits) - 1), AllocStatus.FEASIBLE, 1,
                            "every layer at its highest candidate fits the budget", {"beta": -1.0, "trace": []})
        u = np.unique(cost)  # breakpoints of S(beta)
        a = table.size_to_avg_bits(W)
        jstar = int(np.argmin(np.abs(np.asarray(table.bits) - a)))
        beta = float(np.median(cost[:, jstar]))
        lo, hi = -np.inf, None  # S(lo) > W (too big) ... S(hi) <= W
        best_fit: tuple[float, np.ndarray, float] | None = None  # (size, choice, beta)
        over_ok: tuple[float, np.ndarray, float] | None = None
        max_size = table.max_size_bits
        lo_known = False
        it = 0
        trace = []
        while it < self.max_iter:
            it += 1
            choice = self.choose(cost, beta)
            s = exact_size(size, choice)
            rel = s / W - 1.0
            trace.append((beta, s))
            if budget.fits(s):
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
            pick = (table.min_size_bits, np.zeros(table.num_layers, dtype=np.int64), float(u[-1]))
            trace.append((float(u[-1]), pick[0]))
            note = f"; max_iter={self.max_iter} reached before any plan fit, so every layer is at its lowest bits"
        else:
            note = ""
        s, choice, beta = pick
        return Solution(choice, AllocStatus.FEASIBLE, it,
                        f"tolerance {beta:.4g}, size {s / W:.4f} of the budget after {it} iterations{note}",
                        {"beta": beta, "trace": trace}, allow_over_budget=over_ok is not None)
