"""Cut and retry: how the integer-programming allocators (``ilp``'s PuLP path, ``iqp``) turn a solver's answer
that is a hair over the budget into a plan that fits, without giving up the proof of optimality.

A MILP solver accepts a row up to its feasibility tolerance (about 1e-7 of the row), so for a budget one float
step below a plan's size it can return that plan. The plan is then **cut off** (``sum_l x[l, plan_l] <= L - 1``,
which removes no plan that fits) and the model solved again; a proven optimum of the cut model is the optimum.
After ``N_CUTS`` such plans the budget rows' limits are **tightened** instead, by the relative amounts
``TIGHTEN``; from then on a solve proves nothing by itself, so callers keep the last proven optimum before the
first tightening (:attr:`CutAndRetry.tightened` says when) as a lower bound. The solvers differ in how a cut or
a tightening is written into their model; :class:`CutAndRetry` is the schedule they share.
"""

from __future__ import annotations

from typing import Callable, Iterator

import numpy as np

__all__ = ["N_CUTS", "TIGHTEN", "CutAndRetry"]

N_CUTS = 10  # re-solves that exclude a plan that came back a hair over the budget (solver tolerance)
TIGHTEN = (1e-9, 1e-8, 1e-7, 1e-6, 1e-5, 1e-4)  # then relative cuts of the rows' limits


class CutAndRetry:
    """The schedule: ``N_CUTS`` cuts, then one tightening per entry of ``TIGHTEN``, then give up.

    ``fits(plan)`` is the exact acceptance rule, ``cut(plan)`` excludes a plan from the model, ``tighten(t)`` cuts
    the budget rows' room by the relative amount t. Use::

        retry = CutAndRetry(fits, model.cut, model.tighten)
        for attempt in retry.attempts():
            plan = solve()
            if plan is None:
                break
            if retry.accept(plan):
                break  # plan fits
    """

    def __init__(self, fits: Callable[[np.ndarray], bool], cut: Callable[[np.ndarray], None],
                 tighten: Callable[[float], None]) -> None:
        self.fits, self._cut, self._tighten = fits, cut, tighten
        self.steps: tuple[float | None, ...] = (None,) * N_CUTS + TIGHTEN  # None: a cut; t: a tightening by t
        self.applied = 0  # steps applied so far
        self.tightened = False

    def attempts(self) -> Iterator[int]:
        """Solve numbers 0, 1, ...: the first, and one more after each step :meth:`accept` applied."""
        attempt = 0
        yield attempt
        while self.applied > attempt:
            attempt += 1
            yield attempt

    def accept(self, plan: np.ndarray) -> bool:
        """True if ``plan`` fits; else apply the next step of the schedule (if any is left) and return False."""
        if self.fits(plan):
            return True
        if self.applied < len(self.steps):
            t = self.steps[self.applied]
            self.applied += 1
            if t is None:
                self._cut(plan)
            else:
                self.tightened = True
                self._tighten(t)
        return False
