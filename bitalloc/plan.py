"""BitPlan: layer name -> bit-width, with a versioned JSON format.

A plan may also give layers an input-activation bit-width (``act_bits``, a subset of the weight layers; a layer
without one keeps float activations). JSON form: version 1 for a weight-only plan (unchanged), version 2 when
the plan has activation bits::

    {"format": "bitalloc.plan", "version": 1, "bits": {"g_a.0": 8, "g_a.2": 6, ...}, "meta": {...}}
    {"format": "bitalloc.plan", "version": 2, "bits": {...}, "act_bits": {"g_a.0": 8, ...}, "meta": {...}}

A weight-only plan is written as version 1, so readers that predate activation bits still read it; a plan with
activation bits is version 2, which they refuse instead of dropping its activation bits. Readers reject any
other ``format`` or ``version`` with a sentence, so a future format never loads silently.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Mapping

import numpy as np

from bitalloc.acttable import candidate_label
from bitalloc.bits import check_bits
from bitalloc.errors import PlanError

if TYPE_CHECKING:
    from bitalloc.costs import CostTable

__all__ = ["BitPlan", "PLAN_FORMAT", "PLAN_VERSION", "PLAN_VERSIONS"]

PLAN_FORMAT = "bitalloc.plan"
PLAN_VERSION = 2  # the newest version written (only when the plan has activation bits)
PLAN_VERSIONS = (1, 2)


def _check_entry(name: Any, b: Any) -> int:
    if not isinstance(name, str) or not name:
        raise PlanError(f"layer name {name!r} must be a non-empty string")
    return check_bits(b, name, quantizer=False, error=PlanError)


@dataclass(frozen=True)
class BitPlan:
    """An ordered, read-only mapping from layer name to weight bit-width, with optional input-activation
    bit-widths ``act_bits`` ({layer: bits}, layers of the plan only); equality compares both, not ``meta``."""

    bits: Mapping[str, int]
    meta: Mapping[str, Any] = field(default_factory=dict, compare=False)
    act_bits: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        items = self.bits.items() if isinstance(self.bits, Mapping) else self.bits
        checked: dict[str, int] = {}
        for name, b in items:
            if name in checked:
                raise PlanError(f"duplicate layer '{name}' in bit plan")
            checked[name] = _check_entry(name, b)
        act: dict[str, int] = {}
        for name, b in (self.act_bits or {}).items():
            if name not in checked:
                raise PlanError(f"activation bits for layer '{name}', which has no weight bits in the plan")
            act[name] = check_bits(b, name, quantizer=False, error=PlanError,
                                   subject=f"activation bits of layer '{name}'")
        object.__setattr__(self, "bits", MappingProxyType(checked))
        object.__setattr__(self, "act_bits", MappingProxyType({n: act[n] for n in checked if n in act}))
        object.__setattr__(self, "meta", MappingProxyType(dict(self.meta)))

    @classmethod
    def uniform(cls, names: Iterable[str], bits: int, act_bits: int | None = None, **meta: Any) -> "BitPlan":
        """Every layer at ``bits`` (and, with ``act_bits``, every layer's input at ``act_bits``)."""
        names = list(names)
        return cls({n: bits for n in names}, meta, {n: act_bits for n in names} if act_bits is not None else {})

    @classmethod
    def from_choices(cls, table: "CostTable", choice: Any, **meta: Any) -> "BitPlan":
        """Plan from column indices into ``table.bits`` (one per layer); a (weight, activation) table's candidates
        give the plan its ``act_bits`` (a float-input candidate none)."""
        choice = np.asarray(choice, dtype=np.int64)
        acts = table.act_bits or ()
        return cls({n: table.bits[int(j)] for n, j in zip(table.layer_names, choice)}, meta,
                   {n: acts[int(j)] for n, j in zip(table.layer_names, choice) if acts and acts[int(j)] is not None})

    # mapping behaviour ------------------------------------------------------------------------------------
    def __getitem__(self, name: str) -> int:
        return self.bits[name]

    def __len__(self) -> int:
        return len(self.bits)

    def __iter__(self) -> Iterator[str]:
        return iter(self.bits)

    def __contains__(self, name: object) -> bool:
        return name in self.bits

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, BitPlan):
            return NotImplemented
        return dict(self.bits) == dict(other.bits) and dict(self.act_bits) == dict(other.act_bits)

    def __hash__(self) -> int:
        return hash((tuple(sorted(self.bits.items())), tuple(sorted(self.act_bits.items()))))

    def __repr__(self) -> str:
        act = f", act_bits={dict(self.act_bits)!r}" if self.act_bits else ""
        return f"BitPlan({dict(self.bits)!r}{act})"

    def weights_only(self) -> "BitPlan":
        """The same weight bits without activation bits."""
        return BitPlan(self.bits, self.meta)

    def bit_operations(self, macs: Mapping[str, float], *, float_act_bits: int = 32) -> float:
        """BOPs = sum over the plan's layers of MACs x weight bits x activation bits (HAWQ-V3); a layer without
        activation bits counts ``float_act_bits`` (float32 inputs). ``macs``: {layer: MACs}, e.g.
        :func:`bitalloc.macs.count_macs`; a layer it lacks is a :class:`PlanError` naming it."""
        missing = [n for n in self.bits if n not in macs]
        if missing:
            raise PlanError(f"bit_operations: no MAC count for {_names(missing)}")
        return math.fsum(float(macs[n]) * b * self.act_bits.get(n, float_act_bits) for n, b in self.bits.items())

    # measures ---------------------------------------------------------------------------------------------
    def agreement(self, other: "BitPlan", num_params: Mapping[str, float]) -> tuple[float, float]:
        """(share of the parameters whose layer has the same weight bits in ``other``, parameter-weighted mean
        absolute bit difference) over this plan's layers; ``num_params``: {layer: parameter count}."""
        missing = [n for n in self.bits if n not in other.bits or n not in num_params]
        if missing:
            raise PlanError(f"agreement: layer '{missing[0]}' is not in the other plan or in num_params")
        w = np.array([num_params[n] for n in self.bits], dtype=np.float64)
        diff = np.abs(np.array([self.bits[n] - other.bits[n] for n in self.bits], dtype=np.float64))
        return float(w @ (diff == 0) / w.sum()), float(w @ diff / w.sum())

    def check_layers(self, table: "CostTable") -> None:
        """Raise :class:`PlanError` naming every layer the plan and the table do not share."""
        names = set(table.layer_names)
        missing = [n for n in table.layer_names if n not in self.bits]
        unknown = [n for n in self.bits if n not in names]
        problems = []
        if missing:
            others = f" (nor for {_names(missing[1:], quoted_only=True)})" if len(missing) > 1 else ""
            problems.append(f"no entry for layer '{missing[0]}'{others} of the cost table")
        if unknown:
            problems.append(f"{_names(unknown)} which the cost table lacks")
        if problems:
            raise PlanError("bit plan has " + "; and has ".join(problems))

    def choices(self, table: "CostTable") -> np.ndarray:
        """Column index into ``table.bits`` per table layer; raises if the plan does not cover the table.

        A (weight, activation) table matches each layer's weight and activation bits (none: a float input); a
        weight-only table matches weight bits only."""
        self.check_layers(table)
        if table.act_bits is not None:
            col = {(b, a): j for j, (b, a) in enumerate(zip(table.bits, table.act_bits))}
            out = np.empty(table.num_layers, dtype=np.int64)
            for i, n in enumerate(table.layer_names):
                key = (self.bits[n], self.act_bits.get(n))
                if key not in col:
                    offered = ", ".join(candidate_label(b, a) for b, a in col)
                    raise PlanError(f"layer '{n}' is {candidate_label(*key)} (weight bits, activation bits), not a "
                                    f"candidate of the cost table ({offered})")
                out[i] = col[key]
            return out
        col = {b: j for j, b in enumerate(table.bits)}
        out = np.empty(table.num_layers, dtype=np.int64)
        for i, n in enumerate(table.layer_names):
            b = self.bits[n]
            if b not in col:
                raise PlanError(f"layer '{n}' has {b} bits, not a candidate of the cost table {table.bits}")
            out[i] = col[b]
        return out

    def avg_bits(self, table: "CostTable | None" = None) -> float:
        """Parameter-weighted mean bit-width with a table (that has num_params), else the plain mean.

        With a table the plan must cover exactly its layers (else :class:`PlanError` naming them).
        """
        if not self.bits:
            raise PlanError("average bits of an empty plan is undefined")
        if table is not None:
            self.check_layers(table)
            params = dict(zip(table.layer_names, table.num_params.tolist()))
            total = sum(params.values())
            if total > 0:
                return float(sum(params[n] * b for n, b in self.bits.items()) / total)
        return float(np.mean(list(self.bits.values())))

    def size_bits(self, table: "CostTable") -> float:
        """The plan's size, summed as :meth:`CostTable.plan_size` does (the rule of :meth:`Budget.fits`)."""
        return table.plan_size(self.choices(table))

    def cost(self, table: "CostTable") -> float:
        """The plan's objective, :meth:`CostTable.objective` (its costs plus any pairwise terms)."""
        return table.objective(self.choices(table))

    # JSON -------------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Version 1 without activation bits (as bitalloc always wrote it), version 2 with them."""
        if not self.act_bits:
            return {"format": PLAN_FORMAT, "version": 1, "bits": dict(self.bits), "meta": dict(self.meta)}
        return {"format": PLAN_FORMAT, "version": 2, "bits": dict(self.bits), "act_bits": dict(self.act_bits),
                "meta": dict(self.meta)}

    def to_json(self, path: str | os.PathLike | None = None) -> str:
        """The JSON text; with ``path`` also written atomically."""
        text = json.dumps(self.to_dict(), indent=1, default=_json_default)
        if path is not None:
            from bitalloc.costs import atomic_write_text
            atomic_write_text(path, text)
        return text

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "BitPlan":
        if not isinstance(data, Mapping) or data.get("format") != PLAN_FORMAT:
            got = data.get("format") if isinstance(data, Mapping) else type(data).__name__
            raise PlanError(f"not a bit plan: field 'format' is {got!r}, expected {PLAN_FORMAT!r}")
        version = data.get("version")
        if isinstance(version, bool) or version not in PLAN_VERSIONS:
            raise PlanError(f"unsupported bit-plan version {version!r} "
                            f"(this bitalloc reads versions {', '.join(map(str, PLAN_VERSIONS))})")
        if not isinstance(data.get("bits"), Mapping):
            raise PlanError("bit plan JSON lacks the mapping field 'bits'")
        if version == 1 and "act_bits" in data:
            raise PlanError("bit plan JSON of version 1 has the field 'act_bits', which needs version 2")
        if version == 2 and not isinstance(data.get("act_bits"), Mapping):
            raise PlanError("bit plan JSON of version 2 lacks the mapping field 'act_bits'")
        return cls(dict(data["bits"]), dict(data.get("meta", {})), dict(data.get("act_bits", {})))

    @classmethod
    def from_json(cls, path_or_text: str | os.PathLike) -> "BitPlan":
        s = os.fspath(path_or_text)
        if not s.lstrip().startswith("{"):
            with open(s, encoding="utf-8") as fh:
                s = fh.read()
        try:
            data = json.loads(s)
        except json.JSONDecodeError as exc:
            raise PlanError(f"bit plan is not valid JSON: {exc}") from None
        return cls.from_dict(data)


def _names(names: list[str], limit: int = 8, quoted_only: bool = False) -> str:
    """``layer 'a'`` or ``layers 'a', 'b'`` (``quoted_only``: ``'a', 'b'``): at most ``limit`` names, then how
    many more."""
    shown = ", ".join(f"'{n}'" for n in names[:limit])
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    if quoted_only:
        return shown + more
    return f"layer {shown}" if len(names) == 1 else f"layers {shown}{more}"


def _json_default(o: Any) -> Any:
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Mapping):
        return dict(o)
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")
