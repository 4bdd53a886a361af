"""Budgets: the model-size limit of an allocation, plus optional extra linear resources (e.g. bit-operations).

**When a plan fits.** A plan's size is a sum over layers, and float sums depend on their order. Every sum is
:func:`~bitalloc.costs.exact_sum` (``math.fsum``: the correctly rounded sum, the same in every order), and a plan
fits iff that sum is at most the budget (:meth:`Budget.fits`), with no tolerance. So a budget built from a plan's
size (``Budget.from_avg_bits`` at a candidate, ``min_size_bits``, ``max_size_bits``) is met by that plan exactly,
and nothing above the budget is ever accepted. Allocators may search with a small slack internally but accept a
plan only under this rule (:meth:`Budget.exceeded`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from bitalloc.costs import CostTable, exact_sum
from bitalloc.errors import BudgetError, BudgetTooSmallError

__all__ = ["Budget", "LinearConstraint"]


@dataclass(frozen=True)
class LinearConstraint:
    """An extra resource: ``sum_l coeffs[layer][j(l)] <= max_value`` (e.g. bit-operations, latency).

    ``coeffs`` maps every layer name to one coefficient per candidate bit-width of the table it is used with.
    """

    name: str
    coeffs: Mapping[str, tuple[float, ...]]
    max_value: float

    def __post_init__(self) -> None:
        if not math.isfinite(self.max_value):
            raise BudgetError(f"constraint '{self.name}' has a non-finite limit {self.max_value}")
        object.__setattr__(self, "coeffs", {str(k): tuple(float(x) for x in v) for k, v in self.coeffs.items()})

    @classmethod
    def bit_operations(cls, table: CostTable, macs: Mapping[str, float], max_value: float, *,
                       activation_bits: int | Mapping[str, int] | None = None,
                       name: str = "bit_operations") -> "LinearConstraint":
        """BOPs = MACs x weight bits x activation bits per layer (HAWQ-V3's second resource); ``activation_bits``
        one width for every layer or {layer: width} (e.g. a plan's ``act_bits``; 32 for a float input), 8 when
        not given. A (weight, activation) table (``table.act_bits``) takes each candidate's own activation bits
        (32 for a float input) and refuses ``activation_bits``."""
        missing = [n for n in table.layer_names if n not in macs]
        if missing:
            raise BudgetError(f"bit_operations: no MAC count for layer '{missing[0]}'")
        if table.act_bits is not None:
            if activation_bits is not None:
                raise BudgetError("bit_operations: activation_bits= was given for a table whose candidates carry "
                                  "their own activation bits (table.act_bits); leave it out")
            per_candidate = [32 if a is None else a for a in table.act_bits]
            return cls(name, {n: tuple(float(macs[n]) * b * a for b, a in zip(table.bits, per_candidate))
                              for n in table.layer_names}, max_value)
        activation_bits = 8 if activation_bits is None else activation_bits
        acts = activation_bits if isinstance(activation_bits, Mapping) else dict.fromkeys(table.layer_names,
                                                                                           activation_bits)
        missing = [n for n in table.layer_names if n not in acts]
        if missing:
            raise BudgetError(f"bit_operations: no activation bits for layer '{missing[0]}'")
        return cls(name, {n: tuple(float(macs[n]) * b * acts[n] for b in table.bits)
                          for n in table.layer_names}, max_value)

    def matrix(self, table: CostTable) -> np.ndarray:
        """Coefficients as an (L, B) array aligned with ``table``."""
        out = np.empty(table.cost.shape)
        for i, n in enumerate(table.layer_names):
            if n not in self.coeffs:
                raise BudgetError(f"constraint '{self.name}' has no coefficients for layer '{n}'")
            row = self.coeffs[n]
            if len(row) != len(table.bits):
                raise BudgetError(f"constraint '{self.name}' has {len(row)} coefficients for layer '{n}', "
                                  f"expected one per candidate ({len(table.bits)})")
            out[i] = row
        if not np.isfinite(out).all():
            raise BudgetError(f"constraint '{self.name}' has non-finite coefficients")
        return out

    def value(self, table: CostTable, choice: Any) -> float:
        """The constraint's left-hand side for the plan with column ``choice[l]`` per layer (:func:`exact_sum`)."""
        m = self.matrix(table)
        return exact_sum(m[np.arange(table.num_layers), np.asarray(choice, dtype=np.int64)])


@dataclass(frozen=True)
class Budget:
    """A model-size budget ``max_size_bits`` plus optional extra linear constraints."""

    max_size_bits: float
    extra: tuple[LinearConstraint, ...] = field(default=())

    def __post_init__(self) -> None:
        try:
            v = float(self.max_size_bits)
        except (TypeError, ValueError):
            raise BudgetError(f"max_size_bits must be a number, got {self.max_size_bits!r}") from None
        if not math.isfinite(v) or v <= 0:
            raise BudgetError(f"max_size_bits must be positive and finite, got {self.max_size_bits!r}")
        object.__setattr__(self, "max_size_bits", v)
        extra = tuple(self.extra)
        for c in extra:
            if not isinstance(c, LinearConstraint):
                raise BudgetError(f"budget extra constraints must be LinearConstraint, got {type(c).__name__}")
        object.__setattr__(self, "extra", extra)

    @classmethod
    def from_avg_bits(cls, table: CostTable, avg_bits: float, **kw: Any) -> "Budget":
        """The size of the uniform ``avg_bits`` plan (exact at a candidate, per-layer linear in between)."""
        size = table.uniform_size_bits(avg_bits)
        if size <= 0:
            raise BudgetError(f"avg_bits {avg_bits} gives a non-positive size {size} bits")
        budget = cls(size, **kw)
        budget.check(table)
        return budget

    @classmethod
    def from_compression_ratio(cls, table: CostTable, ratio: float, **kw: Any) -> "Budget":
        """``fp32_size_bits / ratio`` (e.g. ratio 4 is about 8 bits per weight)."""
        if not (isinstance(ratio, (int, float)) and math.isfinite(ratio) and ratio > 0):
            raise BudgetError(f"compression ratio must be positive and finite, got {ratio!r}")
        budget = cls(table.fp32_size_bits / ratio, **kw)
        budget.check(table)
        return budget

    def fits(self, size_bits: float) -> bool:
        """Whether a plan of ``size_bits`` (as :meth:`CostTable.plan_size` sums it) meets the budget.

        The one rule every allocator, :meth:`check` and the harness use: ``size_bits <= max_size_bits``, with no
        tolerance; sizes are :func:`exact_sum` totals, so a plan exactly at the budget fits in every code path.
        """
        return float(size_bits) <= self.max_size_bits

    def exceeded(self, table: CostTable, choice: Any) -> str | None:
        """``None`` if the plan (column ``choice[l]`` per layer) meets the size and every extra constraint under
        :meth:`fits`'s rule, else a sentence naming what it exceeds and by how much."""
        size = table.plan_size(choice)
        if not self.fits(size):
            return (f"plan of {size:.10g} bits exceeds the budget of {self.max_size_bits:.10g} bits by "
                    f"{size - self.max_size_bits:.6g} bits")
        for c in self.extra:
            v = c.value(table, choice)
            if not v <= c.max_value:
                return f"plan's '{c.name}' of {v:.10g} exceeds its limit {c.max_value:.10g} by {v - c.max_value:.6g}"
        return None

    def check(self, table: CostTable) -> None:
        """Raise :class:`~bitalloc.errors.BudgetTooSmallError` if no plan of ``table`` can fit, naming the budget
        and the smallest achievable size (or the extra constraint, its limit and its smallest value).

        Every allocator calls it before solving (:meth:`bitalloc.allocation.BaseAllocator.allocate`), so a budget
        below the table's smallest plan raises this one type everywhere."""
        smallest = table.min_size_bits
        if not self.fits(smallest):
            raise BudgetTooSmallError(
                f"budget of {self.max_size_bits:.6g} bits ({table.size_to_avg_bits(self.max_size_bits):.4g} "
                f"avg bits) is below the smallest achievable size {smallest:.6g} bits "
                f"({table.size_to_avg_bits(smallest):.4g} avg bits: every layer at its lowest candidate, "
                f"{table.bits[0]} bits)")
        for c in self.extra:
            m = c.matrix(table)
            low = exact_sum(m.min(axis=1))
            if not low <= c.max_value:
                raise BudgetTooSmallError(f"constraint '{c.name}' limit {c.max_value:.6g} is below its smallest "
                                  f"achievable value {low:.6g}")
