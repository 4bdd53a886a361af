"""Cost tables as JSON (format ``bitalloc.costtable``), every field checked on reading.

Version 1: bits and one entry per layer; version 2 (written when the table has pairwise terms) adds
``"pairwise": [{"layers": [layer_i, layer_j], "cost": B x B nested list}, ...]``, so a reader that would drop the
terms refuses the file. Version 3 (written when the table has (weight, activation) candidates) adds
``"act_bits": [8, 8, null, ...]``, one per entry of ``bits`` (null: a float input; :mod:`bitalloc.acttable`).
Any version may hold the costs' uncertainty: ``"cost_se"`` (one list per layer, beside ``"cost"``) and a top-level
``"noise_floor"``; they change no plan's objective, so they need no new version (an older reader drops them).
A truncated or hand-edited file raises a :class:`CostTableError` naming the file, the layer
(or pairwise term) by position and name, and the field. :meth:`CostTable.to_dict`, :meth:`~CostTable.from_dict`,
:meth:`~CostTable.to_json` and :meth:`~CostTable.from_json` call these functions.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping

import numpy as np

from bitalloc.costs import CostTable
from bitalloc.errors import CostTableError
from bitalloc.tableformats import TABLE_FORMAT, TABLE_VERSION, TABLE_VERSION_ACT, TABLE_VERSION_PAIRWISE
from bitalloc.tableio import as_float, as_int, as_text, build_table

__all__ = ["table_to_dict", "table_from_dict", "read_table_json"]


def table_to_dict(table: CostTable) -> dict[str, Any]:
    """:meth:`CostTable.to_dict`: the JSON-ready mapping (version 2 if the table has pairwise terms)."""
    version = (TABLE_VERSION_ACT if table.act_bits is not None else
               TABLE_VERSION_PAIRWISE if table.pairwise else TABLE_VERSION)
    out: dict[str, Any] = {"format": TABLE_FORMAT, "version": version, "bits": list(table.bits), "layers": []}
    if table.act_bits is not None:
        out["act_bits"] = list(table.act_bits)
    for i, s in enumerate(table.layers):
        row: dict[str, Any] = {"name": s.name, "kind": s.kind, "num_params": s.num_params, "branch": s.branch,
                               "cost": [float(c) for c in table.cost[i]],
                               "size_bits": [float(c) for c in table.size_bits[i]]}
        if table.hessian_trace is not None:
            row["hessian_trace"] = float(table.hessian_trace[i])
        if table.weight_variance is not None:
            row["weight_variance"] = float(table.weight_variance[i])
        if table.cost_se is not None:
            row["cost_se"] = [float(c) for c in table.cost_se[i]]
        out["layers"].append(row)
    if table.noise_floor is not None:
        out["noise_floor"] = table.noise_floor
    if table.pairwise:
        out["pairwise"] = [{"layers": list(k), "cost": [[float(x) for x in r] for r in v]}
                           for k, v in table.pairwise.items()]
    return out


def require_field(row: Mapping[str, Any], key: str, where: str) -> Any:
    """``row[key]``, or an error naming ``where`` and the missing field."""
    if key not in row:
        raise CostTableError(f"{where}: field '{key}' is missing")
    return row[key]


def table_from_dict(data: Any, source: str = "cost-table dict") -> CostTable:
    """A table from the mapping of :meth:`CostTable.to_dict` (format ``bitalloc.costtable``, version 1)."""
    if not isinstance(data, Mapping):
        raise CostTableError(f"{source}: not a cost table (a {type(data).__name__}, expected a JSON object)")
    if data.get("format") != TABLE_FORMAT:
        raise CostTableError(f"{source}: not a cost table: field 'format' is {data.get('format')!r}, "
                             f"expected {TABLE_FORMAT!r}")
    versions = (TABLE_VERSION, TABLE_VERSION_PAIRWISE, TABLE_VERSION_ACT)
    if data.get("version") not in versions:
        raise CostTableError(f"{source}: unsupported cost-table version {data.get('version')!r} "
                             f"(this bitalloc reads versions {', '.join(map(str, versions))})")
    raw_bits = require_field(data, "bits", source)
    if not isinstance(raw_bits, list) or not raw_bits:
        raise CostTableError(f"{source}: field 'bits' is {raw_bits!r}; expected a non-empty list of integers")
    bits = [as_int(b, f"{source}, bits[{k}]", "bits") for k, b in enumerate(raw_bits)]
    acts = None
    if data.get("version") == TABLE_VERSION_ACT:
        raw = require_field(data, "act_bits", source)
        if not isinstance(raw, list) or len(raw) != len(bits):
            raise CostTableError(f"{source}: field 'act_bits' is {raw!r}; expected a list of {len(bits)} integers "
                                 "or nulls, one per entry of 'bits'")
        acts = [None if a is None else as_int(a, f"{source}, act_bits[{k}]", "act_bits") for k, a in enumerate(raw)]
    elif "act_bits" in data:
        raise CostTableError(f"{source}: field 'act_bits' in a version {data.get('version')} table (only version "
                             f"{TABLE_VERSION_ACT} has (weight, activation) candidates)")
    rows = require_field(data, "layers", source)
    if not isinstance(rows, list) or not rows:
        raise CostTableError(f"{source}: field 'layers' is {type(rows).__name__}; expected a non-empty list")
    names, costs, sizes, params, kinds, branches, ses = [], [], [], [], [], [], []
    proxies: dict[str, list[float]] = {"hessian_trace": [], "weight_variance": []}
    present = {k: k in rows[0] if isinstance(rows[0], Mapping) else False for k in proxies}
    has_se = isinstance(rows[0], Mapping) and "cost_se" in rows[0]  # then every layer needs it
    for i, row in enumerate(rows):
        where = f"{source}, layers[{i}]"
        if not isinstance(row, Mapping):
            raise CostTableError(f"{where}: a {type(row).__name__}, expected an object")
        name = as_text(require_field(row, "name", where), where, "name", required=True)
        where = f"{where} ('{name}')"
        vec = {}
        for key in ("cost", "size_bits", *(("cost_se",) if has_se or "cost_se" in row else ())):
            v = require_field(row, key, where)
            if not isinstance(v, list) or len(v) != len(bits):
                raise CostTableError(f"{where}: field '{key}' has {len(v) if isinstance(v, list) else repr(v)} "
                                     f"entries, expected one per bit-width ({len(bits)})")
            vec[key] = [as_float(x, f"{where}, {key}[{k}]", key) for k, x in enumerate(v)]
        names.append(name)
        costs.append(vec["cost"])
        sizes.append(vec["size_bits"])
        if "cost_se" in vec:
            ses.append(vec["cost_se"])
        params.append(as_int(row.get("num_params", 0), where, "num_params"))
        kinds.append(as_text(row.get("kind", ""), where, "kind"))
        branches.append(as_text(row.get("branch", ""), where, "branch"))
        for key in proxies:
            if present[key]:
                proxies[key].append(as_float(require_field(row, key, where), where, key))
            elif key in row:
                raise CostTableError(f"{where}: field '{key}' is given but layers[0] lacks it")
    if ses and len(ses) != len(names):
        raise CostTableError(f"{source}, layers[0]: field 'cost_se' is missing while other layers have it")
    pairwise = _pairs_from_json(data["pairwise"], len(bits), source) if "pairwise" in data else None
    floor = data.get("noise_floor")
    floor = None if floor is None else as_float(floor, source, "noise_floor")
    return build_table(source, names, bits, np.array(costs), np.array(sizes), num_params=params, kinds=kinds,
                  branches=branches, pairwise=pairwise, act_bits=acts, cost_se=np.array(ses) if ses else None,
                  noise_floor=floor, **{k: v for k, v in proxies.items() if present[k]})


def _pairs_from_json(entries: Any, B: int, source: str) -> dict[tuple[str, str], np.ndarray]:
    """``[{"layers": [layer_i, layer_j], "cost": B x B nested list}, ...]`` as a pairwise mapping."""
    if not isinstance(entries, list):
        raise CostTableError(f"{source}: field 'pairwise' is a {type(entries).__name__}; expected a list")
    out: dict[tuple[str, str], np.ndarray] = {}
    for k, entry in enumerate(entries):
        where = f"{source}, pairwise[{k}]"
        if not isinstance(entry, Mapping):
            raise CostTableError(f"{where}: a {type(entry).__name__}, expected an object")
        layers = require_field(entry, "layers", where)
        if not (isinstance(layers, list) and len(layers) == 2 and all(isinstance(n, str) for n in layers)):
            raise CostTableError(f"{where}: field 'layers' is {layers!r}; expected two layer names")
        pair = (layers[0], layers[1])
        where = f"{where} ('{pair[0]}', '{pair[1]}')"
        rows = require_field(entry, "cost", where)
        if not (isinstance(rows, list) and len(rows) == B and all(isinstance(r, list) and len(r) == B for r in rows)):
            raise CostTableError(f"{where}: field 'cost' must be {B} lists of {B} numbers (bits x bits)")
        if pair in out:
            raise CostTableError(f"{where}: the pair is given twice")
        out[pair] = np.array([[as_float(x, f"{where}, cost[{a}][{b}]", "cost") for b, x in enumerate(r)]
                              for a, r in enumerate(rows)])
    return out


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
