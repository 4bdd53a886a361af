"""Cost tables as tidy data frames and CSV files (JSON: :mod:`bitalloc.tablejson`), every cell checked.

A truncated or hand-edited file is refused with a :class:`CostTableError` that names the file, the row (CSV: the
line; JSON: the layer's position and name, or the pairwise term's position and pair) and the field, never a bare
``ValueError``, ``KeyError`` or ``JSONDecodeError``. Bit-widths must be integers: ``8.7`` is refused, not truncated
to 8 (``8.0`` reads as 8). :meth:`CostTable.from_csv`, :meth:`~CostTable.from_json`, :meth:`~CostTable.from_dict` and
:meth:`~CostTable.from_frame` call these functions.
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np
import pandas as pd

from bitalloc.acttable import FLOAT_ORDER, candidate_label
from bitalloc.costs import CostTable
from bitalloc.errors import CostTableError
from bitalloc.pairwise import pairwise_frame

__all__ = ["table_from_frame", "table_to_frame", "read_table_csv", "as_int", "as_float", "as_text", "is_blank",
           "build_table"]

REQUIRED = ("layer", "bits", "cost", "size_bits")
PER_LAYER = ("kind", "branch", "num_params", "hessian_trace", "weight_variance")


def is_blank(v: Any) -> bool:
    """An empty cell: None, blank text or NaN."""
    return v is None or (isinstance(v, str) and not v.strip()) or (isinstance(v, (float, np.floating))
                                                                   and math.isnan(v))


def as_int(v: Any, where: str, field: str) -> int:
    """An integer cell: an int, or a float or text equal to an integer (``8``, ``8.0``); ``8.7`` is refused."""
    if is_blank(v):
        raise CostTableError(f"{where}: field '{field}' is missing")
    if isinstance(v, (bool, np.bool_)):
        raise CostTableError(f"{where}: field '{field}' is {v!r}, not an integer")
    if isinstance(v, (int, np.integer)):
        return int(v)
    try:
        x = float(v.strip()) if isinstance(v, str) else float(v)
    except (TypeError, ValueError):
        raise CostTableError(f"{where}: field '{field}' is {v!r}, not an integer") from None
    if not math.isfinite(x) or x != math.floor(x):
        raise CostTableError(f"{where}: field '{field}' is {v!r}, not an integer (it is not rounded)")
    return int(x)


def as_float(v: Any, where: str, field: str) -> float:
    """A finite number cell."""
    if is_blank(v):
        raise CostTableError(f"{where}: field '{field}' is missing")
    if isinstance(v, (bool, np.bool_)):
        raise CostTableError(f"{where}: field '{field}' is {v!r}, not a number")
    try:
        x = float(v.strip()) if isinstance(v, str) else float(v)
    except (TypeError, ValueError):
        raise CostTableError(f"{where}: field '{field}' is {v!r}, not a number") from None
    if not math.isfinite(x):
        raise CostTableError(f"{where}: field '{field}' is {v!r}; it must be a finite number")
    return x


def as_text(v: Any, where: str, field: str, required: bool = False) -> str:
    """A text cell (blank: "" unless ``required``)."""
    if is_blank(v):
        if required:
            raise CostTableError(f"{where}: field '{field}' is missing")
        return ""
    if isinstance(v, (list, dict, tuple)):
        raise CostTableError(f"{where}: field '{field}' is {v!r}, not text")
    return v if isinstance(v, str) else str(v)


def build_table(source: str, names: list[str], bits: Any, cost: Any, size: Any, **kw: Any) -> CostTable:
    """``CostTable.from_arrays`` with ``source`` in front of its errors."""
    try:
        return CostTable.from_arrays(names, bits, cost, size, **kw)
    except CostTableError as exc:
        raise CostTableError(f"{source}: {exc}") from None


def table_from_frame(frame: pd.DataFrame, source: str = "cost-table frame", first_row: int = 0,
                     row_word: str = "row") -> CostTable:
    """A table from the tidy frame of :meth:`CostTable.to_frame` (one row per layer and bit-width; layer order =
    first appearance). Errors name ``source``, the row (``first_row`` + position) and the field."""
    missing = [c for c in REQUIRED if c not in frame.columns]
    if missing:
        raise CostTableError(f"{source} lacks the column '{missing[0]}' (needs {', '.join(REQUIRED)})")
    if len(frame) == 0:
        raise CostTableError(f"{source} has no rows")
    records = list(enumerate(frame.to_dict(orient="records")))
    pair_rows = [(i, r) for i, r in records if not is_blank(r.get("pair_layer"))]
    records = [(i, r) for i, r in records if is_blank(r.get("pair_layer"))]
    optional = [c for c in PER_LAYER if c in frame.columns]
    has_act = "act_bits" in frame.columns  # (weight, activation) candidates: bitalloc.acttable
    has_se = "cost_se" in frame.columns  # the costs' standard errors, and one noise floor per table
    floor: tuple[float, int] | None = None
    cells: dict[tuple[str, Any], tuple[float, float, int, float]] = {}
    per_layer: dict[str, dict[str, Any]] = {}
    first_at: dict[str, int] = {}
    all_bits: set[Any] = set()
    for i, rec in records:
        n = first_row + i
        where = f"{source}, {row_word} {n}"
        name = as_text(rec["layer"], where, "layer", required=True)
        b = as_int(rec["bits"], where, "bits")
        if has_act:
            b = (b, None if is_blank(rec["act_bits"]) else as_int(rec["act_bits"], where, "act_bits"))
        c = as_float(rec["cost"], where, "cost")
        s = as_float(rec["size_bits"], where, "size_bits")
        se = as_float(rec["cost_se"], where, "cost_se") if has_se else 0.0
        if "noise_floor" in rec:  # one value per table, repeated on every layer row
            v = as_float(rec["noise_floor"], where, "noise_floor")
            if floor is not None and v != floor[0]:
                raise CostTableError(f"{where}: field 'noise_floor' is {v!r}, but {floor[0]!r} on {row_word} "
                                     f"{floor[1]} (one noise floor per table)")
            floor = floor or (v, n)
        if (name, b) in cells:
            raise CostTableError(f"{where}: layer '{name}' has a second row at {_label(b)} bits (first at "
                                 f"{row_word} {cells[name, b][2]})")
        cells[name, b] = (c, s, n, se)
        all_bits.add(b)
        vals: dict[str, Any] = {}
        for col in optional:
            v = rec[col]
            if col in ("kind", "branch"):
                vals[col] = as_text(v, where, col)
            elif col == "num_params":
                vals[col] = 0 if is_blank(v) else as_int(v, where, col)
            else:
                vals[col] = None if is_blank(v) else as_float(v, where, col)
        if name not in per_layer:
            per_layer[name], first_at[name] = vals, n
        else:
            for col, v in vals.items():
                if v != per_layer[name][col]:
                    raise CostTableError(f"{where}: field '{col}' of layer '{name}' is {v!r}, but "
                                         f"{per_layer[name][col]!r} on {row_word} {first_at[name]}")
    names = list(per_layer)
    bits = sorted(all_bits, key=lambda k: (k[0], FLOAT_ORDER if k[1] is None else k[1]) if has_act else k)
    for name in names:
        absent = [b for b in bits if (name, b) not in cells]
        if absent:
            raise CostTableError(f"{source} is not complete: layer '{name}' ({row_word} {first_at[name]}) has no "
                                 f"row at {_label(absent[0])} bits (every layer needs a row for every candidate "
                                 f"{', '.join(map(_label, bits))})")
    cost = np.array([[cells[n, b][0] for b in bits] for n in names])
    size = np.array([[cells[n, b][1] for b in bits] for n in names])
    proxies: dict[str, Any] = {}
    if has_se:
        proxies["cost_se"] = np.array([[cells[n, b][3] for b in bits] for n in names])
    if floor is not None:
        proxies["noise_floor"] = floor[0]
    for col in ("hessian_trace", "weight_variance"):
        if col in optional:
            vals = [per_layer[n][col] for n in names]
            if all(v is None for v in vals):
                continue
            if any(v is None for v in vals):
                n = names[[v is None for v in vals].index(True)]
                raise CostTableError(f"{source}, {row_word} {first_at[n]}: field '{col}' of layer '{n}' is "
                                     "missing while other layers have it")
            proxies[col] = vals
    if has_act:
        if pair_rows:
            raise CostTableError(f"{source}: pairwise rows in a table with (weight, activation) candidates "
                                 "(column 'act_bits'), which cannot have pairwise terms yet")
        proxies["act_bits"] = [a for _, a in bits]
        bits = [w for w, _ in bits]
    pairwise = _pairs_from_rows(pair_rows, bits, source, first_row, row_word) if pair_rows else None
    return build_table(source, names, bits, cost, size,
                  num_params=[per_layer[n].get("num_params", 0) for n in names],
                  kinds=[per_layer[n].get("kind", "") for n in names],
                  branches=[per_layer[n].get("branch", "") for n in names], pairwise=pairwise, **proxies)


def _label(key: Any) -> str:
    """A candidate in messages: ``8``, or ``w8a8`` / ``w8`` for (weight, activation) candidates."""
    return candidate_label(*key) if isinstance(key, tuple) else str(key)


def _pairs_from_rows(rows: list[tuple[int, dict]], bits: list[int], source: str, first_row: int,
                     row_word: str) -> dict[tuple[str, str], np.ndarray]:
    """The pairwise terms of :func:`~bitalloc.pairwise.pairwise_frame`'s rows: every pair needs one row per
    (bits, pair_bits) of the table's candidates."""
    col = {b: k for k, b in enumerate(bits)}
    cells: dict[tuple[str, str], dict[tuple[int, int], int]] = {}
    values: dict[tuple[str, str], np.ndarray] = {}
    for i, rec in rows:
        n = first_row + i
        where = f"{source}, {row_word} {n}"
        pair = (as_text(rec["layer"], where, "layer", required=True),
                as_text(rec["pair_layer"], where, "pair_layer", required=True))
        a, b = as_int(rec["bits"], where, "bits"), as_int(rec.get("pair_bits"), where, "pair_bits")
        for field, v in (("bits", a), ("pair_bits", b)):
            if v not in col:
                raise CostTableError(f"{where}: field '{field}' of the pairwise term ('{pair[0]}', '{pair[1]}') is "
                                     f"{v}, not a candidate bit-width of the table {bits}")
        seen = cells.setdefault(pair, {})
        if (a, b) in seen:
            raise CostTableError(f"{where}: the pairwise term ('{pair[0]}', '{pair[1]}') has a second row at "
                                 f"({a}, {b}) bits (first at {row_word} {seen[a, b]})")
        seen[a, b] = n
        values.setdefault(pair, np.full((len(bits), len(bits)), np.nan))[col[a], col[b]] = \
            as_float(rec["cost"], where, "cost")
    for pair, m in values.items():
        if np.isnan(m).any():
            a, b = map(int, np.argwhere(np.isnan(m))[0])
            raise CostTableError(f"{source} is not complete: the pairwise term ('{pair[0]}', '{pair[1]}') has no row "
                                 f"at ({bits[a]}, {bits[b]}) bits (every pair needs one per pair of candidates)")
    return values


def read_table_csv(path: str | os.PathLike) -> CostTable:
    """Read a CSV written by :meth:`CostTable.to_csv`; errors name the file, the line and the field."""
    source = os.fspath(path)
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except FileNotFoundError:
        raise
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as exc:
        raise CostTableError(f"{source}: not a readable cost-table CSV: {str(exc).strip()}") from None
    return table_from_frame(frame, source=source, first_row=2, row_word="line")  # line 1 is the header


def table_to_frame(table: CostTable) -> pd.DataFrame:
    """:meth:`CostTable.to_frame`: one row per (layer, bits); with pairwise terms also one row per (pair, bits,
    bits) with ``pair_layer`` and ``pair_bits`` (:func:`~bitalloc.pairwise.pairwise_frame`)."""
    L, B = table.cost.shape
    data: dict[str, Any] = {
        "layer": np.repeat(table.layer_names, B),
        "kind": np.repeat([s.kind for s in table.layers], B),
        "branch": np.repeat([s.branch for s in table.layers], B),
        "num_params": np.repeat(table.num_params, B),
        "bits": np.tile(np.asarray(table.bits, dtype=np.int64), L),
        **({} if table.act_bits is None else {"act_bits": pd.array(list(table.act_bits) * L, dtype="Int64")}),
        "cost": table.cost.reshape(-1),
        **({} if table.cost_se is None else {"cost_se": table.cost_se.reshape(-1)}),
        "size_bits": table.size_bits.reshape(-1),
    }
    if table.hessian_trace is not None:
        data["hessian_trace"] = np.repeat(table.hessian_trace, B)
    if table.weight_variance is not None:
        data["weight_variance"] = np.repeat(table.weight_variance, B)
    if table.noise_floor is not None:  # one value per table, on every layer row (blank on pairwise rows)
        data["noise_floor"] = np.full(L * B, table.noise_floor)
    frame = pd.DataFrame(data)
    return pairwise_frame(frame, table.pairwise, table.bits) if table.pairwise else frame
