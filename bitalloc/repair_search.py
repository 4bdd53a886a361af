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
                 time_limit: float | None, correction: str, noise_z: float = 0.0, snap_ties: bool = False):
        self.table, self.budget, self.score, self.learned = table, budget, score, table
        #: in-context costs within this of 0 are ties (the table's noise floor with ``snap_ties``, else 0)
        self.tie = float(table.noise_floor or 0.0) if snap_ties else 0.0
        self.max_evals, self.time_limit, self.correction, self.noise_z = max_evals, time_limit, correction, noise_z
        self.t0 = time.perf_counter()
        self.unary = np.zeros(table.cost.shape)
        self.pairs: dict[tuple[str, str], np.ndarray] = {}
        self.measured: dict[tuple[int, ...], float] = {}
        self.samples: dict[tuple[int, ...], np.ndarray] = {}
        self.rows: list[dict] = []
        #: plans measured only to learn from (in-context moves, some over the budget): never candidates
        self.probes: dict[tuple[int, ...], float] = {}
        #: the learned prediction of a plan is ``learned.objective(plan) + offset`` (in-context tables are offset)
        self.offset = 0.0

    @property
    def evaluations(self) -> int:
        """Plans measured: candidates and probes."""
        return len(self.measured) + len(self.probes)

    def out_of_budget(self) -> bool:
        late = self.time_limit is not None and time.perf_counter() - self.t0 >= self.time_limit
        return late or self.evaluations >= self.max_evals

    def predict(self, choice) -> float:
        """The learned prediction of a plan's measured loss."""
        return self.learned.objective(choice) + self.offset

    def _score(self, choice) -> tuple[float, np.ndarray | None]:
        """The measure of a plan: its mean and, when noise-aware, its per-sample values."""
        value = self.score(BitPlan.from_choices(self.table, choice))
        if self.noise_z <= 0:
            return float(value), None
        samples = np.asarray(value, dtype=float)
        if samples.ndim != 1 or len(samples) < 2:
            raise ValueError(f"verify_and_repair: noise_z={self.noise_z:g} needs a measure that returns the loss "
                             f"increase per calibration sample (two or more), got {type(value).__name__} "
                             f"of shape {samples.shape}")
        return float(samples.mean()), samples

    def measure(self, choice: np.ndarray, source: str) -> float:
        key = _key(choice)
        if key in self.measured:
            return self.measured[key]
        problem = self.budget.exceeded(self.table, choice)
        if problem is not None:  # never measured, never returned
            raise BudgetError(f"verify_and_repair: a {source} plan does not fit: {problem}")
        plan = BitPlan.from_choices(self.table, choice)
        value, samples = self.probes.pop(key, None), self.samples.get(key)
        if value is None:
            value, samples = self._score(choice)
        if samples is not None:
            self.samples[key] = samples
        self.measured[key] = value
        predicted = self.table.objective(choice)
        self.rows.append({"iteration": len(self.rows), "source": source, "plan": dict(plan.bits),
                          "predicted": predicted, "learned": self.predict(choice), "measured": value,
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

    def probe(self, choice: np.ndarray) -> float:
        """Measure a plan to learn from it only (it may be over the budget): never a candidate, never returned."""
        key = _key(choice)
        if key in self.measured:
            return self.measured[key]
        if key not in self.probes:
            self.probes[key], samples = self._score(choice)
            if samples is not None:
                self.samples[key] = samples
        return self.probes[key]

    def moves(self, choice: np.ndarray) -> list[np.ndarray]:
        """Every plan one layer away from ``choice`` (any other bit-width of one layer)."""
        out = []
        for layer in range(len(choice)):
            for b in range(len(self.table.bits)):
                if b != choice[layer]:
                    move = np.array(choice)
                    move[layer] = b
                    out.append(move)
        return out

    def learn_in_context(self, choice: np.ndarray) -> None:
        """Learn the costs *in the context of* measured plan ``choice``: cell (l, b) is the measured loss of
        ``choice`` with layer l at bits b minus that of ``choice`` (every single-layer move probed), each layer's
        row shifted to a minimum of 0 (one choice per layer: the optimum does not move); with ``snap_ties``, a move
        within the table's noise floor of 0 counts as a tie (0), so the inner allocator's tie-break toward the bigger
        plan decides it, not the noise. The learned prediction is
        exact for ``choice`` and its single-layer moves and additive beyond; unary and pairwise corrections are
        dropped (the measurements hold what they learned)."""
        base = self.measured[_key(choice)]
        cost = np.zeros(np.shape(self.table.cost))
        for move in self.moves(choice):
            layer = int(np.nonzero(move != choice)[0][0])
            cost[layer, move[layer]] = self.probe(move) - base
        cost[np.abs(cost) <= self.tie] = 0.0  # a move inside the noise floor ties with staying
        cost -= cost.min(axis=1, keepdims=True)
        self.learned = self.table.replace(cost=cost, pairwise=None)
        self.offset = base - self.learned.objective(choice)

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
        return sorted(out, key=self.learned.objective)

    def resolve_learned(self, inner, choice: np.ndarray, measured: float, tolerance: float) -> tuple[bool, float]:
        """Learn each plan's excess over its learned prediction and re-solve with ``inner`` (step 2 of
        :func:`bitalloc.verify_and_repair`); whether the prediction held (converged) and the last plan's measure."""
        while not self.out_of_budget():
            excess = measured - self.predict(choice)
            if excess <= max(tolerance, self.noise(choice)):
                return True, measured
            self.learn(choice, excess)
            alloc = inner.allocate(self.learned, self.budget)
            if alloc.plan is None or not alloc.ok:
                break
            nxt = alloc.plan.choices(self.table)
            if tuple(nxt) in self.measured or self.budget.exceeded(self.table, nxt) is not None:
                break
            choice, measured = nxt, self.measure(nxt, "allocator (learned)")
        return False, measured

    def resolve_in_context(self, inner, measured: float) -> tuple[bool, float]:
        """Learn the best plan's in-context costs and re-solve with ``inner``, from each re-solved plan that measures
        lower; converged when the re-solve returns the best plan itself (no single move pays)."""
        while not self.out_of_budget():
            best, _ = self.best()
            self.learn_in_context(best)
            alloc = inner.allocate(self.learned, self.budget)
            if alloc.plan is None or not alloc.ok or self.out_of_budget():
                break
            nxt = alloc.plan.choices(self.table)
            if tuple(nxt) == tuple(best):
                return True, measured
            if tuple(nxt) in self.measured or self.budget.exceeded(self.table, nxt) is not None:
                break
            measured = self.measure(nxt, "allocator (in context)")
            if not self.beats(nxt, best):
                break
        return False, measured

    def local_search(self) -> None:
        """From the best plan, measure its :meth:`neighbours` and move to the first that :meth:`beats` it, until none
        does or the budgets run out."""
        best, _ = self.best()
        improved = True
        while improved and not self.out_of_budget():
            improved = False
            for cand in self.neighbours(best):
                if self.out_of_budget():
                    break
                self.measure(cand, "local search")
                if self.beats(cand, best):
                    best, _ = self.best()
                    improved = True
                    break
