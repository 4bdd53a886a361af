"""Reading cost tables from CSV, JSON and data frames, checking every cell.

A truncated or hand-edited file is refused with a :class:`CostTableError` that names the file, the row (CSV: the
line; JSON: the layer's position and name) and the field, never a bare ``ValueError``, ``KeyError`` or
``JSONDecodeError``. Bit-widths must be integers: ``8.7`` is refused, not truncated to 8 (``8.0`` reads as 8).
:meth:`CostTable.from_csv`, :meth:`~CostTable.from_json`, :meth:`~CostTable.from_dict` and
:meth:`~CostTable.from_frame` call these functions.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Mapping

import numpy as np
import pandas as pd

from bitalloc.costs import CostTable
from bitalloc.errors import CostTableError

__all__ = ["table_from_frame", "table_from_dict", "read_table_csv", "read_table_json"]

REQUIRED = ("layer", "bits", "cost", "size_bits")
PER_LAYER = ("kind", "branch", "num_params", "hessian_trace", "weight_variance")


def _blank(v: Any) -> bool:
    return v is None or (isinstance(v, str) and not v.strip()) or (isinstance(v, (float, np.floating))
                                                                   and math.isnan(v))


def _as_int(v: Any, where: str, field: str) -> int:
    """An integer cell: an int, or a float or text equal to an integer (``8``, ``8.0``); ``8.7`` is refused."""
    if _blank(v):
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


def _as_float(v: Any, where: str, field: str) -> float:
    """A finite number cell."""
    if _blank(v):
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


def _as_text(v: Any, where: str, field: str, required: bool = False) -> str:
    if _blank(v):
        if required:
            raise CostTableError(f"{where}: field '{field}' is missing")
        return ""
    if isinstance(v, (list, dict, tuple)):
        raise CostTableError(f"{where}: field '{field}' is {v!r}, not text")
    return v if isinstance(v, str) else str(v)


def _build(source: str, names: list[str], bits: Any, cost: Any, size: Any, **kw: Any) -> CostTable:
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
    records = frame.to_dict(orient="records")
    optional = [c for c in PER_LAYER if c in frame.columns]
    cells: dict[tuple[str, int], tuple[float, float, int]] = {}
    per_layer: dict[str, dict[str, Any]] = {}
    first_at: dict[str, int] = {}
    all_bits: set[int] = set()
    for i, rec in enumerate(records):
        n = first_row + i
        where = f"{source}, {row_word} {n}"
        name = _as_text(rec["layer"], where, "layer", required=True)
        b = _as_int(rec["bits"], where, "bits")
        c = _as_float(rec["cost"], where, "cost")
        s = _as_float(rec["size_bits"], where, "size_bits")
        if (name, b) in cells:
            raise CostTableError(f"{where}: layer '{name}' has a second row at {b} bits (first at {row_word} "
                                 f"{cells[name, b][2]})")
        cells[name, b] = (c, s, n)
        all_bits.add(b)
        vals: dict[str, Any] = {}
        for col in optional:
            v = rec[col]
            if col in ("kind", "branch"):
                vals[col] = _as_text(v, where, col)
            elif col == "num_params":
                vals[col] = 0 if _blank(v) else _as_int(v, where, col)
            else:
                vals[col] = None if _blank(v) else _as_float(v, where, col)
        if name not in per_layer:
            per_layer[name], first_at[name] = vals, n
        else:
            for col, v in vals.items():
                if v != per_layer[name][col]:
                    raise CostTableError(f"{where}: field '{col}' of layer '{name}' is {v!r}, but "
                                         f"{per_layer[name][col]!r} on {row_word} {first_at[name]}")
    names = list(per_layer)
    bits = sorted(all_bits)
    for name in names:
        absent = [b for b in bits if (name, b) not in cells]
        if absent:
            raise CostTableError(f"{source} is not complete: layer '{name}' ({row_word} {first_at[name]}) has no "
                                 f"row at {absent[0]} bits (every layer needs a row for every bit-width {bits})")
    cost = np.array([[cells[n, b][0] for b in bits] for n in names])
    size = np.array([[cells[n, b][1] for b in bits] for n in names])
    proxies: dict[str, Any] = {}
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
    return _build(source, names, bits, cost, size,
                  num_params=[per_layer[n].get("num_params", 0) for n in names],
                  kinds=[per_layer[n].get("kind", "") for n in names],
                  branches=[per_layer[n].get("branch", "") for n in names], **proxies)


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


def _field(row: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in row:
        raise CostTableError(f"{where}: field '{key}' is missing")
    return row[key]


def table_from_dict(data: Any, source: str = "cost-table dict") -> CostTable:
    """A table from the mapping of :meth:`CostTable.to_dict` (format ``bitalloc.costtable``, version 1)."""
    from bitalloc.costs import TABLE_FORMAT, TABLE_VERSION

    if not isinstance(data, Mapping):
        raise CostTableError(f"{source}: not a cost table (a {type(data).__name__}, expected a JSON object)")
    if data.get("format") != TABLE_FORMAT:
        raise CostTableError(f"{source}: not a cost table: field 'format' is {data.get('format')!r}, "
                             f"expected {TABLE_FORMAT!r}")
    if data.get("version") != TABLE_VERSION:
        raise CostTableError(f"{source}: unsupported cost-table version {data.get('version')!r} "
                             f"(this bitalloc reads version {TABLE_VERSION})")
    raw_bits = _field(data, "bits", source)
    if not isinstance(raw_bits, list) or not raw_bits:
        raise CostTableError(f"{source}: field 'bits' is {raw_bits!r}; expected a non-empty list of integers")
    bits = [_as_int(b, f"{source}, bits[{k}]", "bits") for k, b in enumerate(raw_bits)]
    rows = _field(data, "layers", source)
    if not isinstance(rows, list) or not rows:
        raise CostTableError(f"{source}: field 'layers' is {type(rows).__name__}; expected a non-empty list")
    names, costs, sizes, params, kinds, branches = [], [], [], [], [], []
    proxies: dict[str, list[float]] = {"hessian_trace": [], "weight_variance": []}
    present = {k: k in rows[0] if isinstance(rows[0], Mapping) else False for k in proxies}
    for i, row in enumerate(rows):
        where = f"{source}, layers[{i}]"
        if not isinstance(row, Mapping):
            raise CostTableError(f"{where}: a {type(row).__name__}, expected an object")
        name = _as_text(_field(row, "name", where), where, "name", required=True)
        where = f"{where} ('{name}')"
        vec = {}
        for key in ("cost", "size_bits"):
            v = _field(row, key, where)
            if not isinstance(v, list) or len(v) != len(bits):
                raise CostTableError(f"{where}: field '{key}' has {len(v) if isinstance(v, list) else repr(v)} "
                                     f"entries, expected one per bit-width ({len(bits)})")
            vec[key] = [_as_float(x, f"{where}, {key}[{k}]", key) for k, x in enumerate(v)]
        names.append(name)
        costs.append(vec["cost"])
        sizes.append(vec["size_bits"])
        params.append(_as_int(row.get("num_params", 0), where, "num_params"))
        kinds.append(_as_text(row.get("kind", ""), where, "kind"))
        branches.append(_as_text(row.get("branch", ""), where, "branch"))
        for key in proxies:
            if present[key]:
                proxies[key].append(_as_float(_field(row, key, where), where, key))
            elif key in row:
                raise CostTableError(f"{where}: field '{key}' is given but layers[0] lacks it")
    return _build(source, names, bits, np.array(costs), np.array(sizes), num_params=params, kinds=kinds,
                  branches=branches, **{k: v for k, v in proxies.items() if present[k]})


def read_table_json(path_or_text: str | os.PathLike) -> CostTable:
    """Read JSON text, or a file written by :meth:`CostTable.to_json`; errors name the file, layer and field."""
    s = os.fspath(path_or_text)
    if s.lstrip().startswith("{"):
        source, text = "cost-table JSON text", s
    else:
        source = s
        try:
            with open(s, encoding="utf-8") as fh:
                text = fh.read()
        except UnicodeDecodeError as exc:
            raise CostTableError(f"{source}: not a text file ({exc})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CostTableError(f"{source}: not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}; "
                             "truncated?)") from None
    return table_from_dict(data, source)
