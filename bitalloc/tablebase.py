"""The parts of a cost table that need no table: its layer record, the two sums every plan is judged by, and
the checks of its optional uncertainty (``cost_se``, ``noise_floor``).

:func:`exact_sum` is how bitalloc adds up sizes and costs (``math.fsum``: the correctly rounded sum, the same in
every order), and :func:`plan_objective` is a plan's objective. :class:`~bitalloc.costs.CostTable`,
:mod:`bitalloc.budget`, :mod:`bitalloc.tablecheck` and the solvers use them; import them from
:mod:`bitalloc.costs` (which re-exports them) or from here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from bitalloc.errors import CostTableError

if TYPE_CHECKING:
    from bitalloc.pairwise import PairTerms

__all__ = ["LayerSpec", "check_cost_se", "check_noise_floor", "exact_sum", "plan_objective"]


@dataclass(frozen=True)
class LayerSpec:
    """One quantizable layer: its module path, kind (e.g. ``"Conv2d"``), parameter count and branch."""

    name: str
    kind: str = ""
    num_params: int = 0
    branch: str = ""


def check_cost_se(cost_se: Any, layers: Sequence[LayerSpec], bits: Sequence[int]) -> np.ndarray | None:
    """``cost_se`` (the standard error of each cost, (L, B), finite and >= 0) as a read-only copy, or None; a
    :class:`CostTableError` names the shape or the layer and bit-width of a bad cell."""
    if cost_se is None:
        return None
    try:
        arr = np.array(cost_se, dtype=np.float64, copy=True)
    except (TypeError, ValueError) as exc:
        raise CostTableError(f"field 'cost_se' is not numeric: {exc}") from None
    if arr.shape != (len(layers), len(bits)):
        raise CostTableError(f"field 'cost_se' has shape {arr.shape}, expected {(len(layers), len(bits))} "
                             "(layers x bits: one standard error per cost)")
    bad = ~np.isfinite(arr) | (arr < 0)
    if bad.any():
        l, j = map(int, np.argwhere(bad)[0])
        raise CostTableError(f"cost_se of layer '{layers[l].name}' at {bits[j]} bits is {arr[l, j]}; a standard "
                             "error must be finite and non-negative")
    arr.setflags(write=False)
    return arr


def check_noise_floor(value: Any) -> float | None:
    """The table's noise floor (a finite number >= 0, :func:`bitalloc.noise.noise_floor`) as a float, or None."""
    if value is None:
        return None
    try:
        x = float(value) if not isinstance(value, (bool, np.bool_, str)) else math.nan
    except (TypeError, ValueError):
        x = math.nan
    if not (math.isfinite(x) and x >= 0):
        raise CostTableError(f"field 'noise_floor' is {value!r}; it must be a finite number >= 0 (or None)")
    return x


def exact_sum(values: Any) -> float:
    """The correctly rounded sum of ``values`` (``math.fsum``), independent of their order; ``inf`` on overflow.

    The one way bitalloc adds up sizes and costs, so a plan's size compares with a budget the same way everywhere.
    """
    arr = np.asarray(values, dtype=np.float64).ravel()
    try:
        return math.fsum(arr.tolist())
    except OverflowError:  # an intermediate sum left the float range: the plain sum says +-inf (or nan)
        with np.errstate(over="ignore", invalid="ignore"):
            return float(arr.sum())


def plan_objective(cost: np.ndarray, choice: Any, pairs: PairTerms | None = None) -> Any:
    """The objective of a plan: ``sum_l cost[l, choice[l]] + sum_p P_p[choice[i_p], choice[j_p]]``.

    The one definition of a plan's objective (:meth:`CostTable.objective` calls it; solvers call it on their
    scaled or reduced arrays). ``choice`` of shape (L,) gives a float, the :func:`exact_sum` of the terms; a batch
    of shape (N, L) gives N float64 sums (numpy's, for ranking many plans at once).
    """
    choice = np.asarray(choice, dtype=np.int64)
    terms = cost[np.arange(cost.shape[0]), choice]
    if pairs is not None and len(pairs):
        terms = np.concatenate([terms, pairs.values(choice)], axis=-1)
    if terms.ndim == 1:
        return exact_sum(terms)
    with np.errstate(over="ignore", invalid="ignore"):
        return terms.sum(axis=-1)
