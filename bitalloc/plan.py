"""BitPlan: layer name -> bit-width, with a versioned JSON format.

JSON form (version 1)::

    {"format": "bitalloc.plan", "version": 1, "bits": {"g_a.0": 8, "g_a.2": 6, ...}, "meta": {...}}

Readers reject any other ``format`` or ``version`` with a sentence, so a future format never loads silently.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Mapping

import numpy as np

from bitalloc.bits import check_bits
from bitalloc.errors import PlanError

if TYPE_CHECKING:
    from bitalloc.costs import CostTable

__all__ = ["BitPlan", "PLAN_FORMAT", "PLAN_VERSION"]

PLAN_FORMAT = "bitalloc.plan"
PLAN_VERSION = 1


def _check_entry(name: Any, b: Any) -> int:
    if not isinstance(name, str) or not name:
        raise PlanError(f"layer name {name!r} must be a non-empty string")
    return check_bits(b, name, quantizer=False, error=PlanError)


@dataclass(frozen=True)
class BitPlan:
    """An ordered, read-only mapping from layer name to bit-width; equality compares the bits only."""

    bits: Mapping[str, int]
    meta: Mapping[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        items = self.bits.items() if isinstance(self.bits, Mapping) else self.bits
        checked: dict[str, int] = {}
        for name, b in items:
            if name in checked:
                raise PlanError(f"duplicate layer '{name}' in bit plan")
            checked[name] = _check_entry(name, b)
        object.__setattr__(self, "bits", MappingProxyType(checked))
        object.__setattr__(self, "meta", MappingProxyType(dict(self.meta)))

    @classmethod
    def uniform(cls, names: Iterable[str], bits: int, **meta: Any) -> "BitPlan":
        return cls({n: bits for n in names}, meta)

    @classmethod
    def from_choices(cls, table: "CostTable", choice: Any, **meta: Any) -> "BitPlan":
        """Plan from column indices into ``table.bits`` (one per layer)."""
        choice = np.asarray(choice, dtype=np.int64)
        return cls({n: table.bits[int(j)] for n, j in zip(table.layer_names, choice)}, meta)

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
        return dict(self.bits) == dict(other.bits)

    def __hash__(self) -> int:
        return hash(tuple(sorted(self.bits.items())))

    def __repr__(self) -> str:
        return f"BitPlan({dict(self.bits)!r})"

    # measures ---------------------------------------------------------------------------------------------
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
        """Column index into ``table.bits`` per table layer; raises if the plan does not cover the table."""
        self.check_layers(table)
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
        return {"format": PLAN_FORMAT, "version": PLAN_VERSION, "bits": dict(self.bits), "meta": dict(self.meta)}

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
        if data.get("version") != PLAN_VERSION:
            raise PlanError(f"unsupported bit-plan version {data.get('version')!r} "
                            f"(this bitalloc reads version {PLAN_VERSION})")
        if not isinstance(data.get("bits"), Mapping):
            raise PlanError("bit plan JSON lacks the mapping field 'bits'")
        return cls(dict(data["bits"]), dict(data.get("meta", {})))

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
