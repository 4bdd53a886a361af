"""Exception classes of bitalloc.

Every error is a :class:`ValueError` (or :class:`RuntimeError` for a missing solver) whose message is a sentence
naming the culprit: the layer, the field, the budget.
"""

from __future__ import annotations

__all__ = ["CostTableError", "BudgetError", "BudgetTooSmallError", "PlanError", "SolverUnavailableError"]


class CostTableError(ValueError):
    """A cost table is malformed (names the layer or field)."""


class BudgetError(ValueError):
    """A budget is invalid or cannot be met by any plan (states the smallest achievable size)."""


class BudgetTooSmallError(BudgetError):
    """A budget below the smallest achievable size or average bits (every layer at its lowest candidate); the
    message states that smallest value. Catch this type rather than matching the message's text."""


class PlanError(ValueError):
    """A bit plan is malformed or does not match a cost table."""


class SolverUnavailableError(RuntimeError):
    """No integer-programming backend is installed (e.g. PuLP >= 4 without CBC)."""
