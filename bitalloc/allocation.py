"""What every allocator returns, the Allocator protocol, and the registry of allocators by name.

Allocators are classes whose options go to ``__init__``; :func:`build_allocator` builds one by name (the CLI and
studies use names), and :func:`available_allocators` lists the names. ``bitalloc.solvers`` registers the built-in
ones (``fmpq``, ``ilp``, ``convex``, ``greedy``, ``uniform``, ``exact``) with :func:`register_allocator`.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Mapping, Protocol, TypeVar, runtime_checkable

import numpy as np

from bitalloc.costs import Budget, CostTable
from bitalloc.plan import BitPlan

__all__ = ["AllocStatus", "Allocation", "Allocator", "BaseAllocator", "register_allocator", "build_allocator",
           "available_allocators"]


class AllocStatus(str, enum.Enum):
    """``optimal``: proven optimal; ``feasible``: fits the budget, optimality not proven (heuristics, time
    limits); ``infeasible``: no plan fits; ``error``: the solver failed."""

    OPTIMAL = "optimal"
    FEASIBLE = "feasible"
    INFEASIBLE = "infeasible"
    ERROR = "error"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Allocation:
    """Result of one allocation; ``extra`` carries solver details (e.g. ``gap``, ``front``)."""

    plan: BitPlan | None
    status: AllocStatus
    objective: float | None
    size_bits: float | None
    solve_time_s: float
    iterations: int
    message: str
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False)

    @property
    def ok(self) -> bool:
        return self.status in (AllocStatus.OPTIMAL, AllocStatus.FEASIBLE)


@runtime_checkable
class Allocator(Protocol):
    name: ClassVar[str]

    def allocate(self, table: CostTable, budget: Budget) -> Allocation: ...


@dataclass
class Solution:
    """What a solver's ``_solve`` hands back to :class:`BaseAllocator` (choices are column indices)."""

    choice: np.ndarray | None
    status: AllocStatus
    iterations: int = 0
    message: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


class BaseAllocator:
    """Shared frame: validate the budget against the table before any solver runs, time ``_solve``, build the
    :class:`Allocation`, and check that the plan really fits (a plan over budget is an ``error``)."""

    name: ClassVar[str] = ""
    supports_extra: ClassVar[bool] = False

    def allocate(self, table: CostTable, budget: Budget) -> Allocation:
        budget.check(table)
        if budget.extra and not self.supports_extra:
            raise ValueError(f"allocator '{self.name}' does not support extra constraints "
                             f"({', '.join(c.name for c in budget.extra)}); use 'ilp'")
        t0 = time.perf_counter()
        sol = self._solve(table, budget)
        dt = time.perf_counter() - t0
        if sol.choice is None:
            return Allocation(None, sol.status, None, None, dt, sol.iterations, sol.message, sol.extra)
        choice = np.asarray(sol.choice, dtype=np.int64)
        rows = np.arange(table.num_layers)
        size = float(table.size_bits[rows, choice].sum())
        objective = float(table.cost[rows, choice].sum())
        status, message = sol.status, sol.message
        if size > budget.max_size_bits and not sol.extra.get("allow_over_budget", False):
            status = AllocStatus.ERROR
            message = f"plan of {size:.6g} bits exceeds the budget {budget.max_size_bits:.6g} bits; {message}"
        plan = BitPlan.from_choices(table, choice, allocator=self.name)
        return Allocation(plan, status, objective, size, dt, sol.iterations, message, sol.extra)

    def _solve(self, table: CostTable, budget: Budget) -> Solution:  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({opts})"


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
