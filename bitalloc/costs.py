"""Cost tables and budgets: the input of every allocator.

A :class:`CostTable` holds, for L layers and B ascending candidate bit-widths ``bits``,

* ``cost[l, j]``: the loss increase when layer l alone is quantized to ``bits[j]`` (lower is better; measured,
  so possibly noisy and not monotone in bits), and
* ``size_bits[l, j]``: the storage of layer l at ``bits[j]`` (strictly increasing in bits; typically
  ``num_params * b`` plus a per-channel-scale overhead that does not depend on b).

Allocators solve the multiple-choice knapsack over this table::

    minimize    sum_l cost[l, x_l]
    subject to  sum_l size_bits[l, x_l] <= budget.max_size_bits   (+ budget.extra linear constraints)
                x_l in {0, ..., B-1}

(HAWQ-V3, arXiv 2011.10680; Hubara et al., arXiv 2006.10518).

**When a plan fits.** A plan's size and objective are sums over layers, and float sums depend on their order.
Every sum here is :func:`exact_sum` (``math.fsum``: the correctly rounded sum, the same in every order), and a
plan fits iff that sum is at most the budget (:meth:`Budget.fits`), with no tolerance. So a budget built from a
plan's size (``Budget.from_avg_bits`` at a candidate, ``min_size_bits``, ``max_size_bits``) is met by that plan
exactly, and nothing above the budget is ever accepted. Allocators may search with a small slack internally but
accept a plan only under this rule (:meth:`CostTable.plan_size`, :meth:`CostTable.plan_cost`).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from bitalloc.atomic import atomic_write_text  # re-exported: callers import it from here too
from bitalloc.errors import BudgetError, CostTableError

__all__ = ["LayerSpec", "CostTable", "Budget", "LinearConstraint", "atomic_write_text", "exact_sum"]

TABLE_FORMAT = "bitalloc.costtable"
TABLE_VERSION = 1


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


@dataclass(frozen=True)
class LayerSpec:
    """One quantizable layer: its module path, kind (e.g. ``"Conv2d"``), parameter count and branch."""

    name: str
    kind: str = ""
    num_params: int = 0
    branch: str = ""


def _readonly(a: Any, dtype: Any = np.float64) -> np.ndarray:
    out = np.array(a, dtype=dtype, copy=True)
    out.setflags(write=False)
    return out


def _optional_per_layer(name: str, values: Any, layers: Sequence[LayerSpec]) -> np.ndarray | None:
    if values is None:
        return None
    arr = np.asarray(values, dtype=np.float64)
    if arr.shape != (len(layers),):
        raise CostTableError(f"{name} has shape {arr.shape}, expected ({len(layers)},) (one value per layer)")
    for spec, v in zip(layers, arr):
        if not math.isfinite(v) or v < 0:
            raise CostTableError(f"{name} of layer '{spec.name}' is {v}; it must be finite and non-negative")
    return _readonly(arr)


@dataclass(frozen=True)
class CostTable:
    """Layers x ascending candidate bit-widths, with ``cost`` and ``size_bits`` arrays of shape (L, B).

    Validated on construction; the arrays are stored as read-only copies. Costs must be finite and
    non-negative but need not be monotone in bits (see :meth:`monotone`).
    """

    layers: tuple[LayerSpec, ...]
    bits: tuple[int, ...]
    cost: np.ndarray
    size_bits: np.ndarray
    hessian_trace: np.ndarray | None = None
    weight_variance: np.ndarray | None = None

    def __post_init__(self) -> None:
        layers = tuple(self.layers)
        if not layers:
            raise CostTableError("cost table is empty: it needs at least one layer")
        for spec in layers:
            if not isinstance(spec, LayerSpec):
                raise CostTableError(f"layers must be LayerSpec instances, got {type(spec).__name__}")
            if not isinstance(spec.name, str) or not spec.name:
                raise CostTableError(f"layer name {spec.name!r} must be a non-empty string")
            if isinstance(spec.num_params, bool) or not isinstance(spec.num_params, (int, np.integer)) \
                    or spec.num_params < 0:
                raise CostTableError(
                    f"num_params of layer '{spec.name}' is {spec.num_params!r}; it must be a non-negative int")
        seen: set[str] = set()
        for spec in layers:
            if spec.name in seen:
                raise CostTableError(f"duplicate layer name '{spec.name}' in cost table")
            seen.add(spec.name)

        bits = tuple(self.bits)
        if not bits:
            raise CostTableError("cost table has no candidate bit-widths (field 'bits' is empty)")
        for b in bits:
            if isinstance(b, bool) or not isinstance(b, (int, np.integer)) or not 1 <= b <= 32:
                raise CostTableError(f"candidate bit-width {b!r} in field 'bits' must be an int in 1..32")
        bits = tuple(int(b) for b in bits)
        if any(b1 >= b2 for b1, b2 in zip(bits, bits[1:])):
            raise CostTableError(f"field 'bits' must be strictly ascending, got {bits}")

        shape = (len(layers), len(bits))
        arrays = {}
        for fname in ("cost", "size_bits"):
            try:
                arr = np.asarray(getattr(self, fname), dtype=np.float64)
            except (TypeError, ValueError) as exc:
                raise CostTableError(f"field '{fname}' is not numeric: {exc}") from None
            if arr.shape != shape:
                raise CostTableError(f"field '{fname}' has shape {arr.shape}, expected {shape} (layers x bits)")
            bad = ~np.isfinite(arr) | (arr < 0)
            if bad.any():
                l, j = map(int, np.argwhere(bad)[0])
                what = "cost" if fname == "cost" else "size_bits"
                raise CostTableError(
                    f"{what} of layer '{layers[l].name}' at {bits[j]} bits is {arr[l, j]}; "
                    "it must be finite and non-negative")
            worst = arr.max(axis=1)
            if not math.isfinite(exact_sum(worst)):
                l = int(np.argmax(worst))
                raise CostTableError(
                    f"field '{fname}' adds up to more than the float range (largest entry: layer "
                    f"'{layers[l].name}', {arr[l].max():.6g}): a plan's total would be inf; rescale the table")
            arrays[fname] = arr
        size = arrays["size_bits"]
        if len(bits) > 1:
            not_growing = np.diff(size, axis=1) <= 0
            if not_growing.any():
                l, j = map(int, np.argwhere(not_growing)[0])
                raise CostTableError(
                    f"size_bits of layer '{layers[l].name}' does not grow with bits: {size[l, j]} at "
                    f"{bits[j]} bits, {size[l, j + 1]} at {bits[j + 1]} bits")

        object.__setattr__(self, "layers", layers)
        object.__setattr__(self, "bits", bits)
        object.__setattr__(self, "cost", _readonly(arrays["cost"]))
        object.__setattr__(self, "size_bits", _readonly(size))
        object.__setattr__(self, "hessian_trace", _optional_per_layer("hessian_trace", self.hessian_trace, layers))
        object.__setattr__(self, "weight_variance",
                           _optional_per_layer("weight_variance", self.weight_variance, layers))

    # construction -----------------------------------------------------------------------------------------
    @classmethod
    def from_arrays(cls, layer_names: Sequence[str], bits: Sequence[int], cost: Any, size_bits: Any = None, *,
                    num_params: Sequence[int] | None = None, kinds: Sequence[str] | None = None,
                    branches: Sequence[str] | None = None, hessian_trace: Any = None,
                    weight_variance: Any = None) -> "CostTable":
        """Build a table from plain arrays; ``size_bits=None`` means ``num_params * bits``."""
        names = list(layer_names)
        n = len(names)
        for fname, seq in (("num_params", num_params), ("kinds", kinds), ("branches", branches)):
            if seq is not None and len(seq) != n:
                raise CostTableError(f"{fname} has {len(seq)} entries for {n} layers")
        params = [0] * n if num_params is None else [
            int(p) if isinstance(p, (int, np.integer)) and not isinstance(p, bool) else p for p in num_params]
        layers = tuple(
            LayerSpec(name=str(nm), kind="" if kinds is None else str(kinds[i]), num_params=params[i],
                      branch="" if branches is None else str(branches[i]))
            for i, nm in enumerate(names))
        if size_bits is None:
            if num_params is None:
                raise CostTableError("size_bits is None and num_params is not given: one of them is needed")
            size_bits = np.outer(np.asarray(params, dtype=np.float64), np.asarray(list(bits), dtype=np.float64))
        return cls(layers=layers, bits=tuple(bits), cost=cost, size_bits=size_bits, hessian_trace=hessian_trace,
                   weight_variance=weight_variance)

    # properties -------------------------------------------------------------------------------------------
    @property
    def layer_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.layers)

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def num_params(self) -> np.ndarray:
        return np.array([s.num_params for s in self.layers], dtype=np.int64)

    @property
    def min_size_bits(self) -> float:
        """Smallest achievable size: every layer at its lowest candidate."""
        return exact_sum(self.size_bits[:, 0])

    @property
    def max_size_bits(self) -> float:
        """Largest size: every layer at its highest candidate."""
        return exact_sum(self.size_bits[:, -1])

    def _rows(self, choice: Any) -> np.ndarray:
        choice = np.asarray(choice, dtype=np.int64)
        if choice.shape != (self.num_layers,):
            raise CostTableError(f"a plan needs one choice per layer ({self.num_layers}), got shape {choice.shape}")
        if choice.size and (choice.min() < 0 or choice.max() >= len(self.bits)):
            l = int(np.argmax((choice < 0) | (choice >= len(self.bits))))
            raise CostTableError(f"choice {int(choice[l])} of layer '{self.layers[l].name}' is not a column of "
                                 f"bits {self.bits}")
        return choice

    def plan_size(self, choice: Any) -> float:
        """Size in bits of the plan with column ``choice[l]`` for layer l (:func:`exact_sum`)."""
        return exact_sum(self.size_bits[np.arange(self.num_layers), self._rows(choice)])

    def plan_cost(self, choice: Any) -> float:
        """The objective: summed cost of the plan with column ``choice[l]`` for layer l (:func:`exact_sum`)."""
        return exact_sum(self.cost[np.arange(self.num_layers), self._rows(choice)])

    @property
    def fp32_size_bits(self) -> float:
        """32 bits per parameter; needs ``num_params``."""
        total = int(self.num_params.sum())
        if total <= 0:
            raise CostTableError("fp32_size_bits needs num_params, but every layer has num_params == 0")
        return 32.0 * total

    def index(self, name: str) -> int:
        for i, s in enumerate(self.layers):
            if s.name == name:
                return i
        raise KeyError(f"layer '{name}' is not in the cost table")

    def uniform_size_bits(self, avg_bits: float) -> float:
        """Size of the whole table at ``avg_bits``: exact at a candidate, linear per layer in between.

        Outside the candidate range each layer's size is extrapolated along its nearest segment.
        """
        a = float(avg_bits)
        if not math.isfinite(a):
            raise BudgetError(f"avg_bits must be finite, got {avg_bits}")
        bits = np.asarray(self.bits, dtype=np.float64)
        if a in self.bits:
            return exact_sum(self.size_bits[:, self.bits.index(int(a))])
        if len(bits) == 1:
            raise BudgetError(f"avg_bits {a} is not the table's only candidate {self.bits[0]}")
        k = int(np.clip(np.searchsorted(bits, a) - 1, 0, len(bits) - 2))
        t = (a - bits[k]) / (bits[k + 1] - bits[k])
        col = self.size_bits[:, k] + t * (self.size_bits[:, k + 1] - self.size_bits[:, k])
        return exact_sum(col)

    def size_to_avg_bits(self, size_bits: float) -> float:
        """Inverse of :meth:`uniform_size_bits`: the uniform bit-width whose (interpolated) size is ``size_bits``."""
        sizes = np.array([exact_sum(c) for c in self.size_bits.T])
        bits = np.asarray(self.bits, dtype=np.float64)
        if len(bits) == 1:
            return float(bits[0] * size_bits / sizes[0]) if sizes[0] > 0 else float(bits[0])
        k = int(np.clip(np.searchsorted(sizes, size_bits) - 1, 0, len(bits) - 2))
        t = (size_bits - sizes[k]) / (sizes[k + 1] - sizes[k])
        return float(bits[k] + t * (bits[k + 1] - bits[k]))

    def monotone(self) -> "CostTable":
        """A copy whose costs never increase with bits: ``cost[l, j] = min(cost[l, :j+1])``.

        Measured costs are noisy; libraries clip such noise so that more bits never cost more. Allocators do
        not rely on it (a choice with more bits and no lower cost is dominated anyway).
        """
        cost = np.minimum.accumulate(self.cost, axis=1)
        return self.replace(cost=cost)

    def replace(self, **changes: Any) -> "CostTable":
        kw = dict(layers=self.layers, bits=self.bits, cost=self.cost, size_bits=self.size_bits,
                  hessian_trace=self.hessian_trace, weight_variance=self.weight_variance)
        kw.update(changes)
        return CostTable(**kw)

    def subset(self, names: Iterable[str]) -> "CostTable":
        idx = [self.index(n) for n in names]
        pick = (lambda a: None if a is None else a[idx])
        return CostTable(layers=tuple(self.layers[i] for i in idx), bits=self.bits, cost=self.cost[idx],
                         size_bits=self.size_bits[idx], hessian_trace=pick(self.hessian_trace),
                         weight_variance=pick(self.weight_variance))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CostTable):
            return NotImplemented
        def same(a: np.ndarray | None, b: np.ndarray | None) -> bool:
            return (a is None and b is None) or (a is not None and b is not None and np.array_equal(a, b))
        return (self.layers == other.layers and self.bits == other.bits and same(self.cost, other.cost)
                and same(self.size_bits, other.size_bits) and same(self.hessian_trace, other.hessian_trace)
                and same(self.weight_variance, other.weight_variance))

    __hash__ = None  # type: ignore[assignment]

    # serialisation ----------------------------------------------------------------------------------------
    def to_frame(self) -> pd.DataFrame:
        """Tidy frame, one row per (layer, bits)."""
        L, B = self.cost.shape
        data: dict[str, Any] = {
            "layer": np.repeat(self.layer_names, B),
            "kind": np.repeat([s.kind for s in self.layers], B),
            "branch": np.repeat([s.branch for s in self.layers], B),
            "num_params": np.repeat(self.num_params, B),
            "bits": np.tile(np.asarray(self.bits, dtype=np.int64), L),
            "cost": self.cost.reshape(-1),
            "size_bits": self.size_bits.reshape(-1),
        }
        if self.hessian_trace is not None:
            data["hessian_trace"] = np.repeat(self.hessian_trace, B)
        if self.weight_variance is not None:
            data["weight_variance"] = np.repeat(self.weight_variance, B)
        return pd.DataFrame(data)

    @classmethod
    def from_frame(cls, frame: pd.DataFrame) -> "CostTable":
        """Inverse of :meth:`to_frame` (layer order = first appearance); errors name the row and field."""
        from bitalloc.tableio import table_from_frame
        return table_from_frame(frame)

    def to_csv(self, path: str | os.PathLike) -> None:
        atomic_write_text(path, self.to_frame().to_csv(index=False))

    @classmethod
    def from_csv(cls, path: str | os.PathLike) -> "CostTable":
        """Read :meth:`to_csv`'s file; a truncated or hand-edited one raises naming the file, line and field."""
        from bitalloc.tableio import read_table_csv
        return read_table_csv(path)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"format": TABLE_FORMAT, "version": TABLE_VERSION, "bits": list(self.bits),
                               "layers": []}
        for i, s in enumerate(self.layers):
            row: dict[str, Any] = {"name": s.name, "kind": s.kind, "num_params": s.num_params, "branch": s.branch,
                                   "cost": [float(c) for c in self.cost[i]],
                                   "size_bits": [float(c) for c in self.size_bits[i]]}
            if self.hessian_trace is not None:
                row["hessian_trace"] = float(self.hessian_trace[i])
            if self.weight_variance is not None:
                row["weight_variance"] = float(self.weight_variance[i])
            out["layers"].append(row)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "CostTable":
        """Inverse of :meth:`to_dict`; errors name the layer and field."""
        from bitalloc.tableio import table_from_dict
        return table_from_dict(data)

    def to_json(self, path: str | os.PathLike | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=1)
        if path is not None:
            atomic_write_text(path, text)
        return text

    @classmethod
    def from_json(cls, path_or_text: str | os.PathLike) -> "CostTable":
        """Read JSON text or :meth:`to_json`'s file; a truncated or hand-edited one raises naming the file,
        the layer and the field."""
        from bitalloc.tableio import read_table_json
        return read_table_json(path_or_text)


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
                       activation_bits: int = 8, name: str = "bit_operations") -> "LinearConstraint":
        """BOPs = MACs x weight bits x activation bits per layer (HAWQ-V3's second resource)."""
        missing = [n for n in table.layer_names if n not in macs]
        if missing:
            raise BudgetError(f"bit_operations: no MAC count for layer '{missing[0]}'")
        return cls(name, {n: tuple(float(macs[n]) * b * activation_bits for b in table.bits)
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
        """Raise :class:`BudgetError` if no plan of ``table`` can fit (stating the smallest size)."""
        smallest = table.min_size_bits
        if not self.fits(smallest):
            raise BudgetError(
                f"budget of {self.max_size_bits:.6g} bits ({table.size_to_avg_bits(self.max_size_bits):.4g} "
                f"avg bits) is below the smallest achievable size {smallest:.6g} bits "
                f"({table.size_to_avg_bits(smallest):.4g} avg bits: every layer at its lowest candidate, "
                f"{table.bits[0]} bits)")
        for c in self.extra:
            m = c.matrix(table)
            low = exact_sum(m.min(axis=1))
            if not low <= c.max_value:
                raise BudgetError(f"constraint '{c.name}' limit {c.max_value:.6g} is below its smallest "
                                  f"achievable value {low:.6g}")
