"""What every allocator returns, the Allocator protocol, and the registry of allocators by name.

Allocators are classes whose options go to ``__init__``; :func:`build_allocator` builds one by name (the CLI and
studies use names), and :func:`available_allocators` lists the names. ``bitalloc.solvers`` registers the built-in
ones (``fmpq``, ``ilp``, ``iqp``, ``convex``, ``greedy``, ``uniform``, ``exact``) with :func:`register_allocator`.

A new allocator subclasses :class:`BaseAllocator` and implements ``_solve(table, budget) -> Solution`` (column
indices per layer, a status, a message); the base class validates the budget, times the solve, computes the
plan's size and objective (:meth:`CostTable.objective`), and refuses a plan over the budget::

    @register_allocator("lowest")
    class LowestAllocator(BaseAllocator):
        def _solve(self, table, budget):
            return Solution(np.zeros(table.num_layers, dtype=np.int64), AllocStatus.FEASIBLE, message="all lowest")

An allocator that does not optimise the pairwise terms of a table (:attr:`BaseAllocator.supports_pairwise` False)
is still scored on the whole objective; its result says in ``message`` that it ignored them, and an ``optimal``
status becomes ``feasible`` (it is optimal for the additive part only).
"""

from __future__ import annotations

import enum
import math
import numbers
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, ClassVar, Mapping, Protocol, TypeVar, runtime_checkable

import numpy as np

from bitalloc.costs import Budget, CostTable
from bitalloc.plan import BitPlan

__all__ = ["AllocStatus", "Allocation", "Allocator", "BaseAllocator", "QAT_SUFFIX", "Solution", "register_allocator",
           "build_allocator", "available_allocators", "bool_option", "int_option", "float_option", "ignored_pairwise",
           "VERIFY_SUFFIX", "allocator_parts", "split_qat", "split_suffix", "split_verify"]

#: an allocator name with this suffix allocates on QAT-aware costs (bitalloc.recovery), in QAT rows only
QAT_SUFFIX = "+qat"
#: an allocator name with this suffix is measured and repaired around its plan (bitalloc.repair)
VERIFY_SUFFIX = "+verify"


class AllocStatus(str, enum.Enum):
    """``optimal``: proven optimal, gap 0 (no plan that fits the budget costs less, up to float rounding of the
    sums, 1e-9 relative); ``feasible``: fits the budget, optimality not proven (heuristics, time limits, a
    solver's gap; :attr:`Allocation.gap` says how far at most when known); ``infeasible``: no plan fits;
    ``error``: the solver failed."""

    OPTIMAL = "optimal"
    FEASIBLE = "feasible"
    INFEASIBLE = "infeasible"
    ERROR = "error"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Allocation:
    """Result of one allocation.

    ``objective`` and ``size_bits`` are :meth:`CostTable.objective` and :meth:`CostTable.plan_size` of the plan.
    ``gap``: proven bound on ``(objective - optimum) / objective``; 0.0 when ``optimal``, ``None`` when unknown
    (heuristics). ``extra`` carries solver details (e.g. ``lp_bound``, ``beta``; ``extra["gap"]`` repeats ``gap``
    for readers of older results).
    """

    plan: BitPlan | None
    status: AllocStatus
    objective: float | None
    size_bits: float | None
    solve_time_s: float
    iterations: int
    message: str
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False)
    gap: float | None = None

    @property
    def ok(self) -> bool:
        return self.status in (AllocStatus.OPTIMAL, AllocStatus.FEASIBLE)


@runtime_checkable
class Allocator(Protocol):
    name: ClassVar[str]

    def allocate(self, table: CostTable, budget: Budget) -> Allocation: ...


@dataclass
class Solution:
    """What a solver's ``_solve`` hands back to :class:`BaseAllocator` (choices are column indices).

    ``gap``: see :attr:`Allocation.gap` (``optimal`` implies 0.0). ``allow_over_budget``: the solver was asked to
    accept a plan over the budget (FMPQ's non-strict mode); otherwise such a plan is an ``error``.
    """

    choice: np.ndarray | None
    status: AllocStatus
    iterations: int = 0
    message: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    gap: float | None = None
    allow_over_budget: bool = False


class BaseAllocator:
    """Shared frame: validate the budget against the table before any solver runs, time ``_solve``, build the
    :class:`Allocation`, and check that the plan really fits (a plan over budget is an ``error``).

    ``supports_extra``: the solver honours ``budget.extra`` (else such a budget is refused). ``supports_pairwise``:
    the solver accounts for the table's pairwise terms (else its result says it ignored them, and is at best
    ``feasible``)."""

    name: ClassVar[str] = ""
    supports_extra: ClassVar[bool] = False
    supports_pairwise: ClassVar[bool] = False

    def allocate(self, table: CostTable, budget: Budget) -> Allocation:
        budget.check(table)
        if budget.extra and not self.supports_extra:
            raise ValueError(f"allocator '{self.name}' does not support extra constraints "
                             f"({', '.join(c.name for c in budget.extra)}); use 'ilp'")
        t0 = time.perf_counter()
        if table.act_bits is not None and not budget.extra:
            sol = self._solve_weight_view(table, budget)
        else:
            sol = self._solve(table, budget)
        dt = time.perf_counter() - t0
        if table.pairwise and not self.supports_pairwise and sol.status != AllocStatus.ERROR:
            sol = ignored_pairwise(table, sol, self.name)
        gap = 0.0 if sol.status == AllocStatus.OPTIMAL else sol.gap
        extra = dict(sol.extra)
        if gap is not None:
            extra["gap"] = gap
        if sol.choice is None:
            return Allocation(None, sol.status, None, None, dt, sol.iterations, sol.message, extra, gap)
        choice = np.asarray(sol.choice, dtype=np.int64)
        size = table.plan_size(choice)
        objective = table.objective(choice)
        status, message = sol.status, sol.message
        over = budget.exceeded(table, choice)
        if over is not None and not sol.allow_over_budget:
            status, gap = AllocStatus.ERROR, None
            message = f"{over}; {message}"
        elif not math.isfinite(objective):
            status, gap = AllocStatus.ERROR, None
            message = f"objective is {objective} (costs too large to add up); {message}"
        if gap is None:
            extra.pop("gap", None)
        plan = BitPlan.from_choices(table, choice, allocator=self.name)
        return Allocation(plan, status, objective, size, dt, sol.iterations, message, extra, gap)

    def _solve_weight_view(self, table: CostTable, budget: Budget) -> Solution:
        """A (weight, activation) table under a size budget alone: solve its weight view (per layer and weight
        bits the cheapest activation candidate; :func:`bitalloc.acttable.weight_view`), map the choices back."""
        from bitalloc.acttable import weight_view

        view, pick = weight_view(table)
        sol = self._solve(view, budget)
        if sol.choice is None:
            return sol
        back = pick[np.arange(table.num_layers), np.asarray(sol.choice, dtype=np.int64)]
        return replace(sol, choice=back)

    def _solve(self, table: CostTable, budget: Budget) -> Solution:  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({opts})"


def ignored_pairwise(table: CostTable, sol: Solution, name: str) -> Solution:
    """``sol`` of an allocator that optimised only the additive part of a table with pairwise terms: the message
    says so, and ``optimal`` becomes ``feasible`` with an unknown gap."""
    status, gap = sol.status, sol.gap
    if status == AllocStatus.OPTIMAL:
        status, gap = AllocStatus.FEASIBLE, None
    note = (f"{name} ignored the {len(table.pairwise)} pairwise terms of the cost table (it optimises the "
            "per-layer costs only; 'iqp' optimises both)")
    return replace(sol, status=status, gap=gap, message=f"{note}; {sol.message}" if sol.message else note)


def bool_option(owner: str, name: str, value: Any) -> bool:
    """A True/False option, else a ValueError naming the allocator and option."""
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{owner}: {name} must be True or False, got {value!r}")
    return bool(value)


def int_option(owner: str, name: str, value: Any, minimum: int = 1) -> int:
    """An integer option ``>= minimum`` (bools refused), else a ValueError naming the allocator and option."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{owner}: {name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def float_option(owner: str, name: str, value: Any, low: float = -math.inf, high: float = math.inf, *,
                 low_open: bool = False, high_open: bool = False, allow_none: bool = False) -> float | None:
    """A finite real option in the interval ``[low, high]`` (ends open if asked), else a ValueError naming it."""
    if value is None and allow_none:
        return None
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        v = float(value)
        ok = (v > low if low_open else v >= low) and (v < high if high_open else v <= high)
    if not ok:
        lo, hi = ("(" if low_open else "[") + f"{low:g}", f"{high:g}" + (")" if high_open else "]")
        none = " or None" if allow_none else ""
        raise ValueError(f"{owner}: {name} must be a finite number in {lo}, {hi}{none}, got {value!r}")
    return float(value)


_REGISTRY: dict[str, type] = {}
A = TypeVar("A", bound=type)


def register_allocator(name: str) -> Callable[[A], A]:
    """Class decorator: register an allocator class under ``name`` (sets its ``name`` attribute)."""

    def deco(cls: A) -> A:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"allocator name '{name}' is already registered by {_REGISTRY[name].__name__}")
        cls.name = name  # type: ignore[attr-defined]
        _REGISTRY[name] = cls
        return cls

    return deco


def _load_builtin() -> None:
    import bitalloc.solvers  # noqa: F401  (registers the built-in allocators)


def available_allocators() -> list[str]:
    _load_builtin()
    return sorted(_REGISTRY)


def build_allocator(name: str, **options: Any) -> Allocator:
    """Build the allocator registered as ``name`` with ``options`` passed to its constructor."""
    _load_builtin()
    if name not in _REGISTRY:
        raise ValueError(f"unknown allocator '{name}'; available: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name](**options)


def split_suffix(name: str, suffix: str) -> tuple[str, bool]:
    """``(inner, True)`` for a name ``inner + suffix`` (``"ilp+verify"``, ``"ilp+qat"``), ``(name, False)`` else."""
    return (name[: -len(suffix)], True) if name.endswith(suffix) else (name, False)


def split_qat(name: str) -> tuple[str, bool]:
    """``("ilp", True)`` for ``"ilp+qat"``; ``(name, False)`` for a name without the suffix."""
    return split_suffix(name, QAT_SUFFIX)


def split_verify(name: str) -> tuple[str, bool]:
    """``("ilp", True)`` for ``"ilp+verify"``, ``("ilp", False)`` for ``"ilp"``."""
    return split_suffix(name, VERIFY_SUFFIX)


def allocator_parts(name: str) -> tuple[str, bool, bool]:
    """``(inner, verify, qat)`` of a study allocator name: ``"ilp+verify+qat"`` -> ``("ilp", True, True)`` (QAT-aware
    costs, verified and repaired by measurement after the same QAT), ``"ilp+verify"`` -> ``("ilp", True, False)``,
    ``"ilp+qat"`` -> ``("ilp", False, True)``. The ``+qat`` suffix comes last: it changes what every part measures."""
    rest, qat = split_qat(name)
    inner, verify = split_verify(rest)
    return inner, verify, qat
