"""The state of one measured repair (:func:`bitalloc.verify_and_repair`): the plans measured, the corrections
learned from them, the comparison of two measured plans (plain or noise-aware), the incumbent and the
budget-feasible neighbours of a plan; the clock and the evaluation budget."""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from bitalloc.costs import Budget, CostTable
from bitalloc.errors import BudgetError
from bitalloc.interactions import with_pairwise
from bitalloc.plan import BitPlan

__all__ = ["RepairSearch", "measures_lower", "standard_error"]


def _key(choice) -> tuple[int, ...]:
    """A plan's choices (array or sequence) as the key its measurements are kept under."""
    return tuple(int(c) for c in choice)


def standard_error(x: np.ndarray) -> float:
    """The standard error of the mean of ``x`` (two or more values)."""
    return float(x.std(ddof=1)) / math.sqrt(len(x))


def measures_lower(new, old, noise_z: float = 0.0) -> bool:
    """Whether measurement ``new`` is lower than ``old`` (floats, or per-sample arrays of the same samples): their
    means, by more than ``noise_z`` standard errors of the paired per-sample difference when ``noise_z > 0``."""
    new, old = np.asarray(new, dtype=float), np.asarray(old, dtype=float)
    gain = float(old.mean() - new.mean())
    return gain > (noise_z * standard_error(new - old) if noise_z > 0 else 0.0)


class RepairSearch:
    """The state of one repair: measured plans, the learned corrections, the clock and the budgets."""

    def __init__(self, table: CostTable, budget: Budget, score: Callable[[BitPlan], Any], max_evals: int,
                 time_limit: float | None, correction: str, noise_z: float = 0.0):
        self.table, self.budget, self.score, self.learned = table, budget, score, table
        self.max_evals, self.time_limit, self.correction, self.noise_z = max_evals, time_limit, correction, noise_z
        self.t0 = time.perf_counter()
        self.unary = np.zeros(table.cost.shape)
        self.pairs: dict[tuple[str, str], np.ndarray] = {}
        self.measured: dict[tuple[int, ...], float] = {}
        self.samples: dict[tuple[int, ...], np.ndarray] = {}
        self.rows: list[dict] = []

    def out_of_budget(self) -> bool:
        late = self.time_limit is not None and time.perf_counter() - self.t0 >= self.time_limit
        return late or len(self.measured) >= self.max_evals

    def measure(self, choice: np.ndarray, source: str) -> float:
        key = _key(choice)
        if key in self.measured:
            return self.measured[key]
        problem = self.budget.exceeded(self.table, choice)
        if problem is not None:  # never measured, never returned
            raise BudgetError(f"verify_and_repair: a {source} plan does not fit: {problem}")
        plan = BitPlan.from_choices(self.table, choice)
        value = self.score(plan)
        if self.noise_z > 0:
            samples = np.asarray(value, dtype=float)
            if samples.ndim != 1 or len(samples) < 2:
                raise ValueError(f"verify_and_repair: noise_z={self.noise_z:g} needs a measure that returns the loss "
                                 f"increase per calibration sample (two or more), got {type(value).__name__} "
                                 f"of shape {samples.shape}")
            self.samples[key], value = samples, float(samples.mean())
        value = float(value)
        self.measured[key] = value
        predicted = self.table.objective(choice)
        self.rows.append({"iteration": len(self.rows), "source": source, "plan": dict(plan.bits),
                          "predicted": predicted, "learned": self.learned.objective(choice), "measured": value,
                          "excess": value - predicted, **self._se(key), "size_bits": self.table.plan_size(choice),
                          "avg_bits": plan.avg_bits(self.table), "time_s": time.perf_counter() - self.t0})
        return value

    def beats(self, new, old) -> bool:
        """Whether measured plan ``new`` (choices) measured lower than ``old``: by more than ``noise_z`` standard
        errors of their paired per-sample difference when noise-aware, else at all."""
        new, old = _key(new), _key(old)
        if self.noise_z <= 0:
            return measures_lower(self.measured[new], self.measured[old])
        return measures_lower(self.samples[new], self.samples[old], self.noise_z)

    def _se(self, key: tuple[int, ...]) -> dict[str, float]:
        s = self.samples.get(key)
        return {} if s is None else {"measured_se": standard_error(s)}

    def noise(self, choice) -> float:
        """``noise_z`` standard errors of a measured plan's mean (0 unless noise-aware)."""
        return self.noise_z * standard_error(self.samples[_key(choice)]) if self.noise_z > 0 else 0.0

    def best(self) -> tuple[np.ndarray, float]:
        """The incumbent: the first plan measured, replaced by each later one that :meth:`beats` it (the lowest
        measured, earliest on ties, when not noise-aware)."""
        keys = list(self.measured)
        best = keys[0]
        for key in keys[1:]:
            if self.beats(key, best):
                best = key
        return np.array(best), self.measured[best]

    def learn(self, choice: np.ndarray, excess: float) -> None:
        """Add ``excess`` on the layers ``choice`` pushed lowest, at their bits and below (module docstring)."""
        bits = np.asarray(self.table.bits)[choice]
        levels = np.unique(bits)
        group = np.nonzero(bits == levels[0])[0]
        if len(group) < 2 and len(levels) > 1:
            group = np.nonzero(bits <= levels[1])[0]
        names = self.table.layer_names
        if self.correction == "pairwise" and len(group) >= 2:
            pairs = list(itertools.combinations(group, 2))
            for a, b in pairs:
                key = (names[a], names[b])
                m = self.pairs.setdefault(key, np.zeros((len(self.table.bits),) * 2))
                m[: choice[a] + 1, : choice[b] + 1] += excess / len(pairs)
        else:
            for l in group:
                self.unary[l, : choice[l] + 1] += excess / len(group)
        learned = self.table.replace(cost=np.asarray(self.table.cost) + self.unary)
        self.learned = with_pairwise(learned, self.pairs, add=True) if self.pairs else learned

    def neighbours(self, choice: np.ndarray) -> list[np.ndarray]:
        """Budget-feasible plans one layer a step higher (others lowered where the learned table says it costs
        least per bit saved), not measured yet, cheapest learned prediction first."""
        cost, size = np.asarray(self.learned.cost), np.asarray(self.table.size_bits)
        top = len(self.table.bits) - 1
        out = []
        for l in np.argsort(np.asarray(self.table.bits)[choice], kind="stable"):
            if choice[l] == top:
                continue
            cand = choice.copy()
            cand[l] += 1
            while not self.budget.fits(self.table.plan_size(cand)):
                rows = [k for k in range(len(cand)) if k != l and cand[k] > 0]
                if not rows:
                    break
                k = min(rows, key=lambda k: (cost[k, cand[k] - 1] - cost[k, cand[k]])
                        / (size[k, cand[k]] - size[k, cand[k] - 1]))
                cand[k] -= 1
            if self.budget.exceeded(self.table, cand) is None and tuple(cand) not in self.measured:
                out.append(cand)
        return sorted(out, key=lambda c: self.learned.objective(c))
