"""Pairwise interaction terms of a cost table, and the marginal costs they give a plan.

A cost table may carry, for a sparse set of layer pairs (i, j), a B x B matrix of interaction costs

    P_ij[a, b] = dL(i@bits[a], j@bits[b]) - dL(i@bits[a]) - dL(j@bits[b])

(rows: the candidates of layer i, columns: those of layer j; any sign: layers that hurt each other are
positive, layers whose errors cancel negative). The objective of a plan x (one column per layer) is then

    f(x) = sum_l cost[l, x_l] + sum_{(i, j)} P_ij[x_i, x_j]

(:func:`bitalloc.costs.plan_objective`, :meth:`bitalloc.costs.CostTable.objective`). This module validates the
terms (:func:`validate_pairwise`), holds them as arrays for the solvers (:class:`PairTerms`) and keeps the
marginal costs of a plan up to date while a heuristic moves one layer at a time (:class:`ConditionalCost`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from bitalloc.errors import CostTableError

__all__ = ["PairTerms", "ConditionalCost", "validate_pairwise", "pair_name", "pairwise_frame"]


def pair_name(pair: tuple[str, str]) -> str:
    """``('h_s.0', 'h_s.2')`` as it appears in error messages."""
    return f"('{pair[0]}', '{pair[1]}')"


def validate_pairwise(pairwise: Mapping[Any, Any] | None, layer_names: Sequence[str],
                      bits: Sequence[int]) -> Mapping[tuple[str, str], np.ndarray]:
    """The pairwise terms as a read-only ``{(layer_i, layer_j): read-only (B, B) float array}``, in the given
    order; a :class:`CostTableError` naming the pair if a key is not two distinct layers of the table, a pair
    is given twice (in either order), or a matrix is not (B, B) and finite."""
    if pairwise is None:
        return MappingProxyType({})
    if not isinstance(pairwise, Mapping):
        raise CostTableError(f"pairwise must be a mapping {{(layer_i, layer_j): B x B array}}, got "
                             f"{type(pairwise).__name__}")
    known = set(layer_names)
    B = len(bits)
    out: dict[tuple[str, str], np.ndarray] = {}
    for key, value in pairwise.items():
        if not (isinstance(key, tuple) and len(key) == 2 and all(isinstance(n, str) for n in key)):
            raise CostTableError(f"pairwise key {key!r} must be a pair of layer names (layer_i, layer_j)")
        name = pair_name(key)
        unknown = [n for n in key if n not in known]
        if unknown:
            raise CostTableError(f"pairwise term {name} names layer '{unknown[0]}', which is not in the cost table")
        if key[0] == key[1]:
            raise CostTableError(f"pairwise term {name} pairs a layer with itself; a layer's own cost belongs in "
                                 "its row of 'cost'")
        if key[::-1] in out:
            raise CostTableError(f"pairwise term {name} is given twice, also as {pair_name(key[::-1])}")
        try:
            arr = np.array(value, dtype=np.float64, copy=True)
        except (TypeError, ValueError) as exc:
            raise CostTableError(f"pairwise term {name} is not numeric: {exc}") from None
        if arr.shape != (B, B):
            raise CostTableError(f"pairwise term {name} has shape {arr.shape}, expected ({B}, {B}) (bits of "
                                 f"'{key[0]}' x bits of '{key[1]}', bits {tuple(bits)})")
        bad = ~np.isfinite(arr)
        if bad.any():
            a, b = map(int, np.argwhere(bad)[0])
            raise CostTableError(f"pairwise term {name} at ({bits[a]}, {bits[b]}) bits is {arr[a, b]}; it must be "
                                 "finite")
        arr.setflags(write=False)
        out[key] = arr
    if out:
        worst = [float(np.abs(m).max()) for m in out.values()]
        try:
            total = math.fsum(worst)
        except OverflowError:
            total = math.inf
        if not math.isfinite(total):
            k = int(np.argmax(worst))
            raise CostTableError(f"pairwise terms add up to more than the float range (largest: "
                                 f"{pair_name(list(out)[k])}, {worst[k]:.6g}); rescale the table")
    return MappingProxyType(out)


def pairwise_frame(frame: pd.DataFrame, pairwise: Mapping[tuple[str, str], np.ndarray],
                   bits: Sequence[int]) -> pd.DataFrame:
    """A cost table's tidy ``frame`` with its pairwise terms appended: one row per (pair, bits of the first layer,
    bits of the second) with ``layer``, ``bits``, ``pair_layer``, ``pair_bits`` and ``cost`` (the interaction);
    the per-layer columns of those rows and ``pair_layer`` / ``pair_bits`` of the layers' own rows are blank."""
    B = len(bits)
    b = np.asarray(bits, dtype=np.int64)
    pairs = pd.DataFrame({
        "layer": np.repeat([i for i, _ in pairwise], B * B),
        "bits": np.tile(np.repeat(b, B), len(pairwise)),
        "pair_layer": np.repeat([j for _, j in pairwise], B * B),
        "pair_bits": np.tile(b, B * len(pairwise)),
        "cost": np.concatenate([m.reshape(-1) for m in pairwise.values()]),
    })
    own = frame.assign(pair_layer="", pair_bits=pd.NA)
    columns = list(frame.columns)
    at = columns.index("bits") + 1
    columns[at:at] = ["pair_layer", "pair_bits"]
    out = pd.concat([own, pairs], ignore_index=True)[columns]
    for col in ("kind", "branch"):
        out[col] = out[col].fillna("")
    for col in ("num_params", "pair_bits", "bits"):
        out[col] = out[col].astype("Int64")
    return out


@dataclass(frozen=True)
class PairTerms:
    """The pairwise terms as arrays: pair p couples layers ``first[p]`` and ``second[p]`` (row indices of the
    table) with ``matrix[p]`` (rows: columns of ``first[p]``, columns: columns of ``second[p]``)."""

    first: np.ndarray
    second: np.ndarray
    matrix: np.ndarray

    @classmethod
    def from_mapping(cls, pairwise: Mapping[tuple[str, str], np.ndarray], layer_names: Sequence[str],
                     num_bits: int) -> "PairTerms":
        index = {n: i for i, n in enumerate(layer_names)}
        first = np.array([index[i] for i, _ in pairwise], dtype=np.int64)
        second = np.array([index[j] for _, j in pairwise], dtype=np.int64)
        matrix = np.array(list(pairwise.values()), dtype=np.float64).reshape(len(first), num_bits, num_bits)
        for a in (first, second, matrix):
            a.setflags(write=False)
        return cls(first, second, matrix)

    def __len__(self) -> int:
        return len(self.first)

    def values(self, choice: np.ndarray) -> np.ndarray:
        """Each pair's term under ``choice`` (shape (L,) -> (P,); (N, L) -> (N, P))."""
        return self.matrix[np.arange(len(self)), choice[..., self.first], choice[..., self.second]]


class ConditionalCost:
    """Each layer's cost row given the other layers' current choices: the marginal costs of the objective.

    ``matrix[l, j] = cost[l, j] + sum_{p = (l, m)} P_p[j, x_m] + sum_{p = (m, l)} P_p[x_m, j]``, so moving layer l
    from ``choice[l]`` to k changes the objective by ``matrix[l, k] - matrix[l, choice[l]]``. :meth:`move` updates
    ``choice`` and the rows of l's partners. Without pairwise terms ``matrix`` is ``cost`` itself (no copy), so a
    heuristic that uses it does exactly what it did on the additive table.
    """

    def __init__(self, cost: np.ndarray, pairs: PairTerms | None, choice: np.ndarray) -> None:
        self.choice = np.array(choice, dtype=np.int64)
        self.pairs = pairs if pairs is not None and len(pairs) else None
        if self.pairs is None:
            self.matrix = cost
            return
        f, s, m = self.pairs.first, self.pairs.second, self.pairs.matrix
        p = np.arange(len(f))
        self.matrix = np.array(cost, dtype=np.float64, copy=True)
        np.add.at(self.matrix, f, m[p, :, self.choice[s]])
        np.add.at(self.matrix, s, m[p, self.choice[f], :])
        ends = np.concatenate([f, s])
        order = np.argsort(ends, kind="stable")
        self._pair = np.concatenate([p, p])[order]
        self._is_first = np.concatenate([np.ones(len(f), bool), np.zeros(len(f), bool)])[order]
        self._start = np.searchsorted(ends[order], np.arange(cost.shape[0] + 1))

    def neighbours(self, l: int) -> np.ndarray:
        """The layers that share a pairwise term with layer l."""
        if self.pairs is None:
            return np.zeros(0, dtype=np.int64)
        sl = slice(self._start[l], self._start[l + 1])
        p, first = self._pair[sl], self._is_first[sl]
        return np.where(first, self.pairs.second[p], self.pairs.first[p])

    def move(self, l: int, k: int) -> None:
        """Set layer l to column k and update its partners' rows."""
        old = int(self.choice[l])
        self.choice[l] = k
        if self.pairs is None or old == k:
            return
        sl = slice(self._start[l], self._start[l + 1])
        p, first = self._pair[sl], self._is_first[sl]
        m = self.pairs.matrix
        pf, ps = p[first], p[~first]
        np.add.at(self.matrix, self.pairs.second[pf], m[pf, k, :] - m[pf, old, :])
        np.add.at(self.matrix, self.pairs.first[ps], m[ps, :, k] - m[ps, :, old])
