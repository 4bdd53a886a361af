"""The parts of a cost table that need no table: its layer record and the two sums every plan is judged by.

:func:`exact_sum` is how bitalloc adds up sizes and costs (``math.fsum``: the correctly rounded sum, the same in
every order), and :func:`plan_objective` is a plan's objective. :class:`~bitalloc.costs.CostTable`,
:mod:`bitalloc.budget`, :mod:`bitalloc.tablecheck` and the solvers use them; import them from
:mod:`bitalloc.costs` (which re-exports them) or from here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from bitalloc.pairwise import PairTerms

__all__ = ["LayerSpec", "exact_sum", "plan_objective"]


@dataclass(frozen=True)
class LayerSpec:
    """One quantizable layer: its module path, kind (e.g. ``"Conv2d"``), parameter count and branch."""

    name: str
    kind: str = ""
    num_params: int = 0
    branch: str = ""



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
