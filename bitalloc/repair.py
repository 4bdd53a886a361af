"""Measured verify-and-repair around any allocator: the plan returned is the best one *measured*.

A cost table predicts a plan's loss by adding single-layer (and measured pairwise) costs; layers that interact
beyond that make the prediction wrong (the Mean-Scale Hyperprior's hyper-synthesis layers at 2 bits: each free
alone, +25 % RD loss together). :func:`verify_and_repair`:

1. allocates with the given allocator and measures the plan's joint loss (all its layers quantized at once,
   :meth:`JointLoss.increase <bitalloc.sensitivity.plan_check.JointLoss.increase>`, as :func:`bitalloc.check_plan`;
   or the ``measure`` given: after QAT, :meth:`bitalloc.recovery.Recovery.increase`, for a QAT-aware table);
2. while the measured loss exceeds the (learned) prediction by more than ``tolerance``, *learns*: the excess is
   added as a correction on the layers the plan pushed lowest (those at its lowest bit-width; with fewer than
   two, those at the next one too), on their cells at the plan's bits and every lower one, so the learned table
   predicts this plan exactly and every plan pushing them as low costs at least as much; then re-solves, the correction
   pairwise (over the group's pairs) for an allocator with ``supports_pairwise``, else unary (over its layers);
3. when the allocator proposes a plan already measured, or fails, or the learned prediction holds for a plan
   that measures worse than an earlier one, a budget-feasible local search scored by the measured joint loss
   takes over from the best plan: raise one layer a step (cheapest learned prediction first), paid for by lowering
   others where the learned table says it costs least; move on the first improvement;
4. stops within ``max_evals`` plans and ``time_limit`` seconds, when the learned prediction holds for the best
   plan measured (within ``tolerance``, :data:`TOLERANCE`), or when no neighbour of it measures better;
With ``correction="context"`` step 2 learns differently: it measures every single-layer move away from the best
plan (any other bit-width of one layer, over the budget too: probes, never candidates) and re-solves on those
*in-context* costs (the loss of the plan with layer l at b bits minus the plan's own), exact for one move and
additive beyond; repeated from each re-solved plan that measures lower, until the re-solved plan is the best plan
itself (converged) or measures no lower. It costs layers x (bits - 1) measurements a round (70 for a 14-layer
hyperprior with 6 candidate bit-widths) and predicts what the additive table cannot: on the Scale Hyperprior's
4-bit budget the additive table predicts 35-52 % of the ILP plan's measured joint loss, the in-context costs
predict the plans they choose within a few percent (``studies/plan_headroom.py``, README).

5. with ``holdout`` (crops the search never saw, or a measure on them): the repaired plan is kept only when it
   also measures lower than the allocator's own there (by ``noise_z`` standard errors of the paired per-crop
   difference when noise-aware), else the allocator's plan is returned: a repair that fits its search crops
   does not survive crops it was not chosen on.

**Noise-aware** (``noise_z > 0``): each plan is measured per calibration crop (:meth:`JointLoss.samples
<bitalloc.sensitivity.plan_check.JointLoss.samples>`; after QAT :meth:`bitalloc.recovery.Recovery.samples`), a
plan replaces the best one only when it measures lower by more than ``noise_z`` standard errors of the paired
per-crop difference, and an excess is learned only when it exceeds ``noise_z`` standard errors of the plan's mean.
A repair scored on a few crops otherwise fits those crops: on the Scale Hyperprior's 6-bit budget the plain repair
moved the ILP's plan from +3.59 to +4.20 % BD-rate on Kodak, and its choice moved 0.62 points between two disjoint
calibration sets (README).

It returns the best measured plan, never over the budget (:meth:`Budget.exceeded`), never worse measured than the
allocator's own (measured first), with every plan measured. :func:`verifying` wraps it as an allocator: the
harness's ``+verify`` names (``ilp+verify``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch.nn as nn

# re-exported: the suffix lives with the allocator names
from bitalloc.allocation import VERIFY_SUFFIX, Allocation, Allocator, AllocStatus, build_allocator, split_verify
from bitalloc.costs import Budget, CostTable
from bitalloc.errors import BudgetError
from bitalloc.objective import Loss
from bitalloc.plan import BitPlan
from bitalloc.repair_search import RepairSearch, measures_lower, standard_error
from bitalloc.sensitivity.plan_check import JointLoss

__all__ = ["CORRECTIONS", "TOLERANCE", "VERIFY_SUFFIX", "Repair", "VerifyingAllocator", "split_verify",
           "verify_and_repair", "verifying"]

CORRECTIONS = ("auto", "unary", "pairwise", "context")
#: repair when a plan's measured joint loss exceeds its prediction by more than this (fraction of the float loss):
#: 6-bit plans cost 0.5-1.2 % of it, so 5 % repaired 4-bit plans only (README: the Mean-Scale 6-bit PTQ budget)
TOLERANCE = 0.002


@dataclass(frozen=True)
class Repair:
    """What :func:`verify_and_repair` found. ``plan``: the best measured plan; ``measured``/``predicted``: its
    measured joint loss increase and the (original) table's prediction; ``start``: the allocator's own
    allocation, measured ``start_measured``; ``history``: one row per measured plan (``iteration``, ``source``,
    ``plan``, ``predicted``, ``learned`` (the learned table's prediction when it was proposed), ``measured``,
    ``excess``, ``measured_se`` (noise-aware only), ``size_bits``, ``avg_bits``, ``time_s``); ``learned``: the
    table with the corrections;
    ``converged``: the learned prediction held within the tolerance for the allocator's last plan (in context: the
    re-solve returned the best plan itself); ``learned_offset``: add it to ``learned.objective(plan)`` for the
    learned prediction (in-context tables are shifted; 0 otherwise); ``evaluations``: plans measured, probes
    included;
    ``holdout``: with held-out crops and a repair to confirm, the search's best plan's and the start's loss
    increase there (``best``, ``start``, ``best_se`` when per crop) and which was ``kept``; else None."""

    plan: BitPlan
    measured: float
    predicted: float
    start: Allocation
    start_measured: float
    history: pd.DataFrame = field(compare=False)
    learned: CostTable = field(compare=False)
    evaluations: int = 0
    time_s: float = 0.0
    converged: bool = False
    correction: str = "unary"
    holdout: dict | None = field(default=None, compare=False)
    learned_offset: float = 0.0

    @property
    def improved(self) -> bool:
        return self.plan != self.start.plan

    @property
    def learned_predicted(self) -> float | None:
        """What the learned table predicted for the returned plan before it was measured (the repair's own,
        interaction-aware prediction); None when the allocator's plan came back (predicted by the table alone)."""
        if not self.improved:
            return None
        bits = dict(self.plan.bits)
        rows = self.history[self.history.plan.apply(lambda plan: plan == bits)]
        return float(rows.learned.iloc[0]) if len(rows) else None


def _allocator(allocator: Any) -> Allocator:
    if isinstance(allocator, str):
        return build_allocator(allocator)
    if not callable(getattr(allocator, "allocate", None)):
        raise TypeError(f"allocator must be a registered name or have .allocate(table, budget), got "
                        f"{type(allocator).__name__}")
    return allocator


def _correction_kind(correction: str, inner: Allocator) -> str:
    if correction not in CORRECTIONS:
        raise ValueError(f"correction must be one of {', '.join(CORRECTIONS)}, got {correction!r}")
    auto = "pairwise" if getattr(inner, "supports_pairwise", False) else "unary"
    return auto if correction == "auto" else correction


def verify_and_repair(model: nn.Module, data: Any, table: CostTable, budget: Budget, allocator: Any = "ilp", *,
                      loss: Loss | None = None, lmbda: float | None = None, calibration: str = "minmax",
                      crop: int = 256, limit: int | None = 4, tolerance: float = TOLERANCE, max_evals: int = 12,
                      time_limit: float | None = None, correction: str = "auto",
                      start: Allocation | None = None, measure: Callable[[BitPlan], Any] | None = None,
                      noise_z: float = 0.0, holdout: Any = None, bias_correction: bool = False,
                      snap_ties: bool = False) -> Repair:
    """Allocate, measure, learn and re-solve, then search locally by measurement (module docstring).

    ``data``, ``loss``, ``lmbda``, ``calibration``, ``crop``, ``limit``: the data and settings the table was
    measured with (as :func:`bitalloc.check_plan` takes them). ``allocator``: a registered name or an
    allocator object. ``tolerance``: the excess (fraction of the float loss) the learned prediction may miss
    by (the in-context correction stops at its fixed point instead). ``max_evals``: plans measured at most (the
    first is the allocator's; in-context probes count); ``time_limit``: seconds after which no new measurement
    starts. ``correction``: "auto", "unary", "pairwise" or "context"
    (module docstring; it needs ``max_evals`` of at least one round of probes plus two). ``start``: the allocator's
    allocation when already computed. ``measure``: a function of a :class:`BitPlan` returning its measured loss
    increase (fraction of the float loss) in place of the joint loss after PTQ; ``data`` and the loss settings are
    then unused (:meth:`bitalloc.recovery.Recovery.increase`: after QAT, what a QAT-aware table predicts); with
    ``noise_z > 0`` it must return the increase per calibration sample (``Recovery.samples``). ``noise_z``: how many
    standard errors a plan must measure lower by to replace the best one, and an excess must exceed to be learned
    (module docstring); 0 compares plain means. ``holdout``: crops (as ``data``, measured with the same settings)
    or a function of a :class:`BitPlan` returning its loss increase on them (per crop, for ``noise_z > 0``) that
    confirm a repair before it is returned (module docstring, step 5); a ``measure`` other than the joint loss
    needs a function here. ``bias_correction``: plans are measured with their biases corrected
    (:func:`bitalloc.correct_bias`), as the table was. ``snap_ties`` (``correction="context"``): in-context costs
    within the table's ``noise_floor`` count as ties, so a plan is not shrunk on noise.
    """
    table.require_weight_only("verify_and_repair", "its corrections and local search step along weight bits")
    if isinstance(max_evals, bool) or not isinstance(max_evals, int) or max_evals < 1:
        raise ValueError(f"verify_and_repair: max_evals must be an integer >= 1, got {max_evals!r}")
    if not (isinstance(tolerance, (int, float)) and math.isfinite(tolerance) and tolerance >= 0):
        raise ValueError(f"verify_and_repair: tolerance must be a finite number >= 0, got {tolerance!r}")
    if isinstance(noise_z, bool) or not (isinstance(noise_z, (int, float)) and math.isfinite(noise_z)
                                         and noise_z >= 0):
        raise ValueError(f"verify_and_repair: noise_z must be a finite number >= 0, got {noise_z!r}")
    if time_limit is not None and not (isinstance(time_limit, (int, float)) and time_limit > 0):
        raise ValueError(f"verify_and_repair: time_limit must be a positive number of seconds, got {time_limit!r}")
    inner = _allocator(allocator)
    name = getattr(inner, "name", type(inner).__name__)
    kind = _correction_kind(correction, inner)
    t0 = time.perf_counter()
    first = start if start is not None else inner.allocate(table, budget)
    if first.plan is None or not first.ok:
        raise ValueError(f"verify_and_repair: allocator '{name}' returned no plan ({first.status}: {first.message})")
    choice = start_choice = first.plan.choices(table)
    over = budget.exceeded(table, choice)
    if over is not None:
        raise BudgetError(f"verify_and_repair: allocator '{name}' returned a plan over the budget: {over}")
    def joint(images) -> JointLoss:  # the joint loss with the table's data settings
        return JointLoss(model, images, loss=loss, calibration=calibration, lmbda=lmbda, crop=crop, limit=limit,
                         bias_correction=bias_correction)

    if measure is None:
        on_data = joint(data)
        measure = on_data.samples if noise_z > 0 else on_data.increase
    elif not callable(measure):
        raise TypeError(f"verify_and_repair: measure must be a function of a BitPlan, got {type(measure).__name__}")
    elif holdout is not None and not callable(holdout):
        raise TypeError("verify_and_repair: with measure= given, holdout must be a function of a BitPlan measuring "
                        "the same loss on the held-out crops")
    if holdout is not None and not callable(holdout):
        holdout = joint(holdout).samples
    search = RepairSearch(table, budget, measure, max_evals, time_limit, kind, noise_z, snap_ties)
    search.t0 = t0
    if kind == "context" and max_evals < len(search.moves(choice)) + 2:
        raise ValueError(f"verify_and_repair: correction='context' probes every single-layer move of a plan "
                         f"({len(search.moves(choice))} for this table) and measures the re-solved plan: max_evals "
                         f"must be at least {len(search.moves(choice)) + 2}, got {max_evals}")
    start_measured = measured = search.measure(choice, "allocator")
    if kind == "context":  # learn in the best plan's context and re-solve
        converged, measured = search.resolve_in_context(inner, measured)
    else:  # learn the excess and re-solve
        converged, measured = search.resolve_learned(inner, choice, measured, tolerance)
    if not converged or measured > search.best()[1]:  # local search by measurement from the best plan
        search.local_search()
    best, best_m = search.best()
    confirmed = None
    if holdout is not None and tuple(best) != tuple(start_choice):
        confirmed = _confirm(holdout, table, start_choice, best, noise_z)
        if confirmed["kept"] == "start":
            best, best_m = start_choice, start_measured
    history = pd.DataFrame(search.rows)
    return Repair(plan=BitPlan.from_choices(table, best, allocator=f"{name}{VERIFY_SUFFIX}"), measured=best_m,
                  predicted=table.objective(best), start=first, start_measured=start_measured, history=history,
                  learned=search.learned, evaluations=search.evaluations, time_s=time.perf_counter() - t0,
                  converged=converged, correction=kind, holdout=confirmed, learned_offset=search.offset)


def _confirm(holdout: Callable[[BitPlan], Any], table: CostTable, start, best, noise_z: float) -> dict:
    """Measure the start and the repaired plan on the held-out crops; keep the repair only when it measures lower
    there (by ``noise_z`` standard errors of the paired per-crop difference when noise-aware)."""
    values = {}
    for which, choice in (("start", start), ("best", best)):
        value = np.asarray(holdout(BitPlan.from_choices(table, choice)), dtype=float)
        if not np.isfinite(value).all():
            raise ValueError(f"verify_and_repair: the holdout measure of the {which} plan is not finite: {value}")
        values[which] = value
    if values["start"].shape != values["best"].shape:
        raise ValueError(f"verify_and_repair: the holdout measure returned shapes {values['start'].shape} and "
                         f"{values['best'].shape} for two plans")
    out = {"start": float(values["start"].mean()), "best": float(values["best"].mean())}
    if values["best"].ndim == 1 and len(values["best"]) >= 2:
        out["gain_se"] = standard_error(values["start"] - values["best"])
    elif noise_z > 0:
        raise ValueError(f"verify_and_repair: noise_z={noise_z:g} needs a holdout measure per crop (two or more)")
    out["kept"] = "best" if measures_lower(values["best"], values["start"], noise_z) else "start"
    return out


class VerifyingAllocator:
    """An allocator that runs :func:`verify_and_repair` around ``allocator`` on ``model`` and ``data``;
    ``options`` go to :func:`verify_and_repair`. ``allocate(table, budget)`` returns an :class:`Allocation` of
    the best measured plan: ``objective``/``size_bits`` as the table says, ``solve_time_s`` the whole repair
    (allocations and measurements), ``iterations`` the plans measured, ``extra`` the start's and the best
    plan's predicted and measured losses, the history (a list of records) and the inner allocator's name."""

    def __init__(self, allocator: Any, model: nn.Module, data: Any, **options: Any):
        self.inner = _allocator(allocator)
        self.model, self.data, self.options = model, data, options
        self.inner_name = getattr(self.inner, "name", type(self.inner).__name__)
        self.name = f"{self.inner_name}{VERIFY_SUFFIX}"
        self.last: Repair | None = None

    def allocate(self, table: CostTable, budget: Budget) -> Allocation:
        t0 = time.perf_counter()
        first = self.inner.allocate(table, budget)
        if first.plan is None or not first.ok:
            return first
        self.last = rep = verify_and_repair(self.model, self.data, table, budget, self.inner, start=first,
                                            **self.options)
        choice, same = rep.plan.choices(table), not rep.improved
        msg = (f"verified {rep.evaluations} plan(s): measured {rep.measured:.4g} (predicted {rep.predicted:.4g}); "
               f"the {self.inner_name} plan measured {rep.start_measured:.4g} (predicted {first.objective:.4g})"
               + ("" if same else f"; repaired ({rep.correction} corrections, local search)")
               + ("" if rep.holdout is None or rep.holdout["kept"] == "best" else
                  f"; the repair measured {rep.holdout['best']:.4g} on the held-out crops against the start's "
                  f"{rep.holdout['start']:.4g}: the start plan kept"))
        extra = {"inner": self.inner_name, "measured": rep.measured, "predicted": rep.predicted,
                 "start_measured": rep.start_measured, "start_predicted": first.objective,
                 "learned_predicted": rep.learned_predicted,
                 "evaluations": rep.evaluations, "converged": rep.converged, "correction": rep.correction,
                 "holdout": rep.holdout, "history": rep.history.to_dict("records")}
        return Allocation(BitPlan.from_choices(table, choice, allocator=self.name),
                          first.status if same else AllocStatus.FEASIBLE, table.objective(choice),
                          table.plan_size(choice), time.perf_counter() - t0, rep.evaluations, msg, extra,
                          first.gap if same else None)

    def __repr__(self) -> str:
        return f"VerifyingAllocator({self.inner!r}, options={self.options!r})"


def verifying(allocator: Any, model: nn.Module, data: Any, **options: Any) -> VerifyingAllocator:
    """``allocator`` (a name, with or without the ``+verify`` suffix, or an allocator object) wrapped in
    :func:`verify_and_repair` on ``model`` and ``data``; ``options`` as :func:`verify_and_repair` takes them."""
    if isinstance(allocator, str):
        allocator = split_verify(allocator)[0]
    return VerifyingAllocator(allocator, model, data, **options)
