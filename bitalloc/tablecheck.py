"""Validation of a cost table's fields on construction; every error names the layer or the field.

:class:`~bitalloc.costs.CostTable` calls :func:`check_fields` and :func:`per_layer`; its pairwise terms are
validated by :func:`bitalloc.pairwise.validate_pairwise`.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from bitalloc.bits import check_bits
from bitalloc.errors import CostTableError
from bitalloc.tablebase import LayerSpec, exact_sum

__all__ = ["check_fields", "per_layer", "readonly"]


def readonly(a: Any, dtype: Any = np.float64) -> np.ndarray:
    """A read-only copy of ``a``."""
    out = np.array(a, dtype=dtype, copy=True)
    out.setflags(write=False)
    return out


def per_layer(name: str, values: Any, layers: Sequence[Any]) -> np.ndarray | None:
    """``values`` (one finite, non-negative number per layer) as a read-only array, or None."""
    if values is None:
        return None
    arr = np.asarray(values, dtype=np.float64)
    if arr.shape != (len(layers),):
        raise CostTableError(f"{name} has shape {arr.shape}, expected ({len(layers)},) (one value per layer)")
    for spec, v in zip(layers, arr):
        if not math.isfinite(v) or v < 0:
            raise CostTableError(f"{name} of layer '{spec.name}' is {v}; it must be finite and non-negative")
    return readonly(arr)


def check_fields(layers_in: Any, bits_in: Any, cost: Any, size_bits: Any, *,
                 weight_only: bool = True) -> tuple[tuple[Any, ...], tuple[int, ...], np.ndarray, np.ndarray]:
    """The layers (LayerSpec, unique non-empty names, non-negative num_params), the ascending candidate bits and
    read-only (L, B) ``cost`` and ``size_bits`` (finite, non-negative, sizes growing with bits, totals within the
    float range), or a :class:`CostTableError` naming the culprit. ``weight_only=False``: (weight, activation)
    candidates, whose order and sizes :func:`bitalloc.acttable.check_act_bits` checks instead."""
    arrays_in = {"cost": cost, "size_bits": size_bits}
    layers = tuple(layers_in)
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

    bits = tuple(bits_in)
    if not bits:
        raise CostTableError("cost table has no candidate bit-widths (field 'bits' is empty)")
    bits = tuple(check_bits(b, quantizer=False, error=CostTableError,
                            subject="candidate bit-width in field 'bits'") for b in bits)
    if weight_only and any(b1 >= b2 for b1, b2 in zip(bits, bits[1:])):
        raise CostTableError(f"field 'bits' must be strictly ascending, got {bits}")

    shape = (len(layers), len(bits))
    arrays = {}
    for fname in ("cost", "size_bits"):
        try:
            arr = np.asarray(arrays_in[fname], dtype=np.float64)
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
    if weight_only and len(bits) > 1:
        not_growing = np.diff(size, axis=1) <= 0
        if not_growing.any():
            l, j = map(int, np.argwhere(not_growing)[0])
            raise CostTableError(
                f"size_bits of layer '{layers[l].name}' does not grow with bits: {size[l, j]} at "
                f"{bits[j]} bits, {size[l, j + 1]} at {bits[j + 1]} bits")
    return layers, bits, readonly(arrays["cost"]), readonly(size)
