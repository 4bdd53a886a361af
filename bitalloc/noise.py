"""Noise-aware cost tables: a monotone fit over bits, the noise floor, and a tie-break toward bigger plans.

A measured cost ``zeta[l, j]`` (layer l alone at ``bits[j]``) is a mean over calibration crops, so it carries a
standard error ``se[l, j]`` (:func:`bitalloc.measure_sensitivity` with ``uncertainty=True``). Clipping negative
values to 0 keeps the noise (a 6-bit cell may look cheaper than the 4-bit one); :func:`fit_costs` instead

1. fits each layer's costs by a weighted isotonic regression, non-increasing in bits (pool-adjacent-violators,
   weights ``1/se^2``: more bits never cost more, and a noisy cell is pooled with its neighbours);
2. clips the fit at 0 (it stays monotone), and takes the pooled standard error of each fitted cell;
3. optionally (``snap_z > 0``) sets to 0 every cell within ``snap_z`` standard errors of 0 (and every cell with
   more bits than such a cell, so the fit stays monotone). Off by default: with a handful of crops the
   standard errors are themselves noisy and large costs get zeroed (``studies/noise_stability.py``: at
   ``snap_z=2`` the plans of two disjoint calibration sets agree *less* than with clipping).

When many cells are 0 (the 6- and 8-bit cells of most layers), allocators are indifferent between plans of
different sizes, and a generous budget can be left unused (the ILP left 12 % of an 8-bit budget unused).
:func:`tie_break_within_noise` adds a cost proportional to the size a plan leaves unused, at most a fraction
(``share``) of the noise floor over the whole plan: among plans that tie, the bigger one wins, and no two plans
whose costs differ by more than ``share`` times the noise floor change order. :func:`within_noise` wraps any
allocator so that it allocates on that table and reports the plan's objective on the table itself (the harness's
``StudySpec(table_fit="noise")``). The table keeps its standard errors and noise floor
(:attr:`CostTable.cost_se`, :attr:`CostTable.noise_floor`). Torch-free.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from bitalloc.allocation import Allocation, build_allocator
from bitalloc.costs import Budget, CostTable

__all__ = ["TieBreakingAllocator", "fit_costs", "isotonic_nonincreasing", "noise_floor", "tie_break_within_noise",
           "within_noise"]


def isotonic_nonincreasing(values: Any, weights: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """Weighted least-squares fit of ``values`` by a non-increasing sequence (pool-adjacent-violators).

    Returns ``(fit, pooled_weight)``: each entry's fitted value and the total weight of the block it was pooled
    into (so ``1/sqrt(pooled_weight)`` is the fitted value's standard error when ``weights`` are ``1/se^2``).
    """
    y = np.asarray(values, dtype=np.float64)
    w = np.ones_like(y) if weights is None else np.asarray(weights, dtype=np.float64)
    if y.ndim != 1 or w.shape != y.shape:
        raise ValueError(f"values and weights must be 1-D of one length, got shapes {y.shape} and {w.shape}")
    if not (np.isfinite(y).all() and np.isfinite(w).all() and (w > 0).all()):
        raise ValueError(f"isotonic fit needs finite values and positive finite weights, got {y} and {w}")
    # blocks of (mean, weight, length); a non-increasing fit: each block's mean >= the next one's
    means: list[float] = []
    wts: list[float] = []
    lens: list[int] = []
    for v, wt in zip(y, w):
        means.append(float(v))
        wts.append(float(wt))
        lens.append(1)
        while len(means) > 1 and means[-2] < means[-1]:
            m2, w2, n2 = means.pop(), wts.pop(), lens.pop()
            total = wts[-1] + w2
            means[-1] = (means[-1] * wts[-1] + m2 * w2) / total
            wts[-1] = total
            lens[-1] += n2
    fit = np.repeat(means, lens)
    pooled = np.repeat(wts, lens)
    return fit, pooled


def fit_costs(zeta: Any, se: Any = None, *, snap_z: float = 0.0) -> tuple[np.ndarray, np.ndarray | None]:
    """Noise-aware costs of a (layers x bits) array of raw measurements (module docstring).

    ``se``: the standard error of each cell (same shape), or None for an unweighted fit with no noise floor.
    Cells with a zero or non-finite standard error weigh as the most certain cell of their row. ``snap_z``:
    cells whose fitted cost is at most ``snap_z`` standard errors are set to 0 (0, the default: none). Returns
    ``(cost, cost_se)``: non-negative, non-increasing in bits; ``cost_se`` the pooled standard errors (None
    without ``se``). Non-finite raw values must be handled by the caller (a prohibitive cost) beforehand.
    """
    zeta = np.asarray(zeta, dtype=np.float64)
    if zeta.ndim != 2:
        raise ValueError(f"zeta must be a (layers, bits) array, got shape {zeta.shape}")
    if not math.isfinite(snap_z) or snap_z < 0:
        raise ValueError(f"snap_z must be a finite number >= 0, got {snap_z}")
    cost = np.empty_like(zeta)
    cost_se = None if se is None else np.empty_like(zeta)
    if se is not None:
        se = np.asarray(se, dtype=np.float64)
        if se.shape != zeta.shape:
            raise ValueError(f"se has shape {se.shape}, zeta {zeta.shape}: one standard error per cell")
    for l, row in enumerate(zeta):
        if se is None:
            fit, _ = isotonic_nonincreasing(row)
            cost[l] = np.maximum(fit, 0.0)
            continue
        s = se[l].copy()
        good = np.isfinite(s) & (s > 0)
        s[~good] = s[good].min() if good.any() else 1.0
        fit, pooled = isotonic_nonincreasing(row, 1.0 / s ** 2)
        c = np.maximum(fit, 0.0)
        cse = 1.0 / np.sqrt(pooled)
        if not good.any():  # no standard error in this row: nothing is known to be noise
            cse[:] = np.nan
        elif snap_z > 0:
            within = np.logical_or.accumulate(c <= snap_z * cse)
            c[within] = 0.0
        cost[l], cost_se[l] = c, cse
    return cost, cost_se


def noise_floor(cost_se: Any, z: float = 2.0) -> float:
    """The table's noise floor: ``z`` times the median finite, positive standard error of its cells (NaN when
    there is none): a cost difference of this size is what one cell resolves, typically."""
    s = np.asarray(cost_se, dtype=np.float64).ravel()
    s = s[np.isfinite(s) & (s > 0)]
    return float(z * np.median(s)) if s.size else float("nan")


def tie_break_within_noise(table: CostTable, noise_floor: float | None = None, *, share: float = 0.5) -> CostTable:
    """A copy of ``table`` in which plans that tie within noise differ by the size they leave unused.

    Adds ``share * noise_floor * (size[l, -1] - size[l, j]) / S`` to cell (l, j), with ``S`` the difference
    between the largest and the smallest plan: a plan's added cost is ``share * noise_floor`` times the fraction
    of the size range it leaves unused, so between two plans within noise the bigger one costs less, and no
    plan gains more than ``share * noise_floor`` over another. Monotone costs stay monotone. ``noise_floor=None``:
    the table's own (:attr:`CostTable.noise_floor`).
    """
    if noise_floor is None:
        noise_floor = table.noise_floor
    if noise_floor is None or not (math.isfinite(noise_floor) and noise_floor > 0):
        raise ValueError(f"noise_floor must be a positive finite number (the noise_floor of a table measured with "
                         f"measure_sensitivity(uncertainty=True)), got {noise_floor}")
    if not (math.isfinite(share) and 0 < share <= 1):
        raise ValueError(f"share must be in (0, 1], got {share}")
    size = np.asarray(table.size_bits, dtype=np.float64)
    span = float(np.sum(size[:, -1] - size[:, 0]))
    if span <= 0:  # one candidate bit-width: every plan has one size
        return table
    extra = share * noise_floor * (size[:, -1:] - size) / span
    return table.replace(cost=np.asarray(table.cost) + extra)


class TieBreakingAllocator:
    """``allocator`` run on :func:`tie_break_within_noise` of the table (with the table's own noise floor, times
    ``share``): among plans whose costs tie within noise it returns one that uses more of the budget. The
    :class:`Allocation`'s ``objective`` is the plan's on the table itself, which is at most ``share`` times the
    noise floor above the table's optimum when the inner allocator is exact; ``extra["tie_break"]`` is that
    bound. A table without a noise floor is refused by name; a noise floor of 0 (every standard error 0: nothing
    ties within noise) allocates on the table unchanged."""

    def __init__(self, allocator: Any, share: float = 0.5):
        self.inner = build_allocator(allocator) if isinstance(allocator, str) else allocator
        self.name = getattr(self.inner, "name", type(self.inner).__name__)
        self.share = share
        self.supports_extra = getattr(self.inner, "supports_extra", False)
        self.supports_pairwise = getattr(self.inner, "supports_pairwise", False)

    def allocate(self, table: CostTable, budget: Budget) -> Allocation:
        floor = table.noise_floor
        if floor is None:
            raise ValueError(f"allocator '{self.name}' within noise: the cost table has no noise_floor; measure it "
                             "with measure_sensitivity(uncertainty=True) (StudySpec(table_fit='noise'))")
        if floor == 0:
            return self.inner.allocate(table, budget)
        alloc = self.inner.allocate(tie_break_within_noise(table, floor, share=self.share), budget)
        if alloc.plan is None:
            return alloc
        bound = self.share * floor
        note = f"ties within noise broken toward the bigger plan (objective within {bound:.3g} of the table's)"
        return dataclasses.replace(alloc, objective=table.objective(alloc.plan.choices(table)),
                                   message=f"{alloc.message}; {note}" if alloc.message else note,
                                   extra={**alloc.extra, "tie_break": bound})

    def __repr__(self) -> str:
        return f"TieBreakingAllocator({self.inner!r}, share={self.share})"


def within_noise(allocator: Any, share: float = 0.5) -> TieBreakingAllocator:
    """``allocator`` (a registered name or an allocator object) wrapped in :class:`TieBreakingAllocator`."""
    return TieBreakingAllocator(allocator, share)
