"""(weight, activation) candidates in a cost table.

A :class:`~bitalloc.costs.CostTable` whose ``act_bits`` is set has one candidate per column ``j``: weight bits
``bits[j]`` with the layer's input at ``act_bits[j]`` bits (``None``: a float input). For example AIMET-style
W4A8, W8A8, W8A16 and weight-only W8 candidates::

    bits     = (4, 8, 8,  8)
    act_bits = (8, 8, 16, None)

Rules (checked on construction, errors name the column or the layer):

* the candidates are distinct and ordered by weight bits, then activation bits (a float input last);
* size counts weights only, so every candidate of a layer with the same weight bits has the same size, and
  size grows with weight bits;
* pairwise interaction terms are not supported on such a table yet (refused by name).

A table without ``act_bits`` is a weight-only table and behaves as before. Allocators: a size budget alone
cannot tell candidates of equal weight bits apart except by cost, so every allocator solves the table's
:func:`weight_view` (per layer and weight bit-width, the cheapest activation candidate; exact, since the
activation choice changes no size) and its choices are mapped back; with extra constraints such as a BOPs
budget (:meth:`bitalloc.budget.LinearConstraint.bit_operations`) the allocators that support them (``ilp``,
``iqp``) solve the whole table.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from bitalloc.bits import check_bits
from bitalloc.errors import CostTableError

if TYPE_CHECKING:
    from bitalloc.costs import CostTable

__all__ = ["candidate_label", "check_act_bits", "float_act", "weight_columns", "weight_view"]

FLOAT_ORDER = 33  # a float input sorts after every integer activation bit-width


def float_act(a: Any) -> bool:
    """Whether an ``act_bits`` entry means a float input (None, or blank / NaN as read from a file)."""
    return a is None or (isinstance(a, float) and a != a) or (isinstance(a, str) and a.strip() in ("", "float"))


def candidate_label(w: int, a: int | None) -> str:
    """``"w4a8"``, or ``"w8"`` for a float input."""
    return f"w{w}" if a is None else f"w{w}a{a}"


def check_act_bits(act_bits: Any, bits: Sequence[int], layers: Sequence[Any], size: np.ndarray,
                   pairwise: Any) -> tuple[int | None, ...]:
    """``act_bits`` (one entry per candidate column) checked against the rules of the module docstring."""
    acts = tuple(act_bits)
    if len(acts) != len(bits):
        raise CostTableError(f"field 'act_bits' has {len(acts)} entries for {len(bits)} candidates (field 'bits' "
                             f"{tuple(bits)}): one activation bit-width (or None) per candidate")
    acts = tuple(None if float_act(a) else check_bits(a, quantizer=False, error=CostTableError,
                                                      subject=f"activation bit-width of candidate {j} in field "
                                                              "'act_bits'")
                 for j, a in enumerate(acts))
    keys = [(w, FLOAT_ORDER if a is None else a) for w, a in zip(bits, acts)]
    for j in range(1, len(keys)):
        if keys[j] <= keys[j - 1]:
            raise CostTableError(
                f"candidates must be distinct and ordered by weight bits, then activation bits (float last): "
                f"{candidate_label(bits[j - 1], acts[j - 1])} then {candidate_label(bits[j], acts[j])} at columns "
                f"{j - 1}, {j}")
    for j in range(1, len(bits)):
        same = bits[j] == bits[j - 1]
        bad = (size[:, j] != size[:, j - 1]) if same else (size[:, j] <= size[:, j - 1])
        if bad.any():
            l = int(np.argmax(bad))
            rule = "equals that of" if same else "grows from"
            raise CostTableError(
                f"size_bits of layer '{layers[l].name}' at {candidate_label(bits[j], acts[j])} "
                f"({size[l, j]}) must be the size at {candidate_label(bits[j - 1], acts[j - 1])} ({size[l, j - 1]}) "
                f"or more: size counts weights, so it {rule} the previous candidate's")
    if pairwise:
        raise CostTableError("a cost table with (weight, activation) candidates cannot have pairwise terms yet; "
                             "measure the interactions on a weight-only table")
    return acts


def weight_columns(bits: Sequence[int]) -> np.ndarray:
    """The first column of each distinct weight bit-width (every column of a weight-only table)."""
    return np.array([j for j, b in enumerate(bits) if j == 0 or bits[j - 1] != b], dtype=np.int64)


def weight_view(table: "CostTable") -> tuple["CostTable", np.ndarray]:
    """``(view, pick)``: the weight-only table with, per layer and weight bit-width, the cost of the cheapest
    activation candidate (ties: fewer activation bits), and ``pick`` (L, W) the column of ``table`` it came
    from; a plan's choice ``k`` in ``view`` is column ``pick[l, k]`` of ``table``."""
    cols = weight_columns(table.bits)
    ends = list(cols[1:]) + [len(table.bits)]
    pick = np.empty((table.num_layers, len(cols)), dtype=np.int64)
    for k, (lo, hi) in enumerate(zip(cols, ends)):
        pick[:, k] = lo + np.argmin(table.cost[:, lo:hi], axis=1)  # argmin takes the first of equal costs
    rows = np.arange(table.num_layers)[:, None]
    view = table.replace(bits=tuple(table.bits[j] for j in cols), cost=table.cost[rows, pick],
                         size_bits=table.size_bits[:, cols], act_bits=None,
                         cost_se=None if table.cost_se is None else table.cost_se[rows, pick])
    return view, pick
