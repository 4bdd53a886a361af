"""Cost tables and budgets: the input of every allocator.

A :class:`CostTable` holds, for L layers and B ascending candidate bit-widths ``bits``,

* ``cost[l, j]``: the loss increase when layer l alone is quantized to ``bits[j]`` (lower is better; measured,
  so possibly noisy and not monotone in bits), and
* ``size_bits[l, j]``: the storage of layer l at ``bits[j]`` (strictly increasing in bits; typically
  ``num_params * b`` plus a per-channel-scale overhead that does not depend on b).

and optionally, for a sparse set of layer pairs, B x B matrices of interaction costs (``pairwise``,
:mod:`bitalloc.pairwise`), and the costs' uncertainty: ``cost_se[l, j]`` (the standard error of each cost) and
the table's ``noise_floor`` (:mod:`bitalloc.noise`; ``measure_sensitivity(uncertainty=True)`` fills both).
Allocators solve::

    minimize    f(x) = sum_l cost[l, x_l] + sum_{(i, j) in pairwise} P_ij[x_i, x_j]
    subject to  sum_l size_bits[l, x_l] <= budget.max_size_bits   (+ budget.extra linear constraints)
                x_l in {0, ..., B-1}

without pairwise terms the multiple-choice knapsack (HAWQ-V3, arXiv 2011.10680; Hubara et al., arXiv
2006.10518). f is :func:`plan_objective` (:meth:`CostTable.objective`): the one function every allocator,
:class:`~bitalloc.plan.BitPlan` and the harness use for a plan's objective.

Sizes and objectives are sums over layers, and float sums depend on their order: every one here is
:func:`exact_sum` (``math.fsum``: the correctly rounded sum, the same in every order). A plan fits a budget iff
its :meth:`CostTable.plan_size` is at most the budget, with no tolerance (:mod:`bitalloc.budget`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from bitalloc.acttable import check_act_bits, weight_columns
from bitalloc.atomic import atomic_write_text  # re-exported: callers import it from here too
from bitalloc.errors import BudgetError, CostTableError
from bitalloc.pairwise import PairTerms, validate_pairwise
from bitalloc.tablebase import LayerSpec, exact_sum, plan_objective  # re-exported: the public home is here
from bitalloc.tablebase import check_cost_se, check_noise_floor
from bitalloc.tablecheck import check_fields, per_layer
from bitalloc.tableformats import TABLE_FORMAT, TABLE_VERSION, TABLE_VERSION_PAIRWISE, TableFormats

__all__ = ["LayerSpec", "CostTable", "Budget", "LinearConstraint", "atomic_write_text", "exact_sum",
           "plan_objective", "TABLE_FORMAT", "TABLE_VERSION", "TABLE_VERSION_PAIRWISE"]


@dataclass(frozen=True)
class CostTable(TableFormats):
    """Layers x ascending candidate bit-widths, with ``cost`` and ``size_bits`` arrays of shape (L, B), and
    optional ``pairwise`` interaction terms ``{(layer_i, layer_j): (B, B) array}`` (:mod:`bitalloc.pairwise`).

    Validated on construction; the arrays are stored as read-only copies. Costs must be finite and
    non-negative but need not be monotone in bits (see :meth:`monotone`); pairwise terms may have any sign.
    ``cost_se`` (L, B) and ``noise_floor`` (optional, finite, >= 0) say how well the costs are known; they change
    no objective (:func:`bitalloc.tie_break_within_noise` uses them), and a table without them is today's.
    """

    layers: tuple[LayerSpec, ...]
    bits: tuple[int, ...]
    cost: np.ndarray
    size_bits: np.ndarray
    hessian_trace: np.ndarray | None = None
    weight_variance: np.ndarray | None = None
    pairwise: Mapping[tuple[str, str], np.ndarray] = field(default_factory=dict)
    act_bits: tuple[int | None, ...] | None = None  # (weight, activation) candidates: :mod:`bitalloc.acttable`
    cost_se: np.ndarray | None = None  # standard error of each cost (L, B)
    noise_floor: float | None = None  # the cost difference one cell resolves (:func:`bitalloc.noise.noise_floor`)

    def __post_init__(self) -> None:
        layers, bits, cost, size = check_fields(self.layers, self.bits, self.cost, self.size_bits,
                                                weight_only=self.act_bits is None)
        if self.act_bits is not None:
            object.__setattr__(self, "act_bits", check_act_bits(self.act_bits, bits, layers, size, self.pairwise))
        object.__setattr__(self, "layers", layers)
        object.__setattr__(self, "bits", bits)
        object.__setattr__(self, "cost", cost)
        object.__setattr__(self, "size_bits", size)
        object.__setattr__(self, "hessian_trace", per_layer("hessian_trace", self.hessian_trace, layers))
        object.__setattr__(self, "weight_variance", per_layer("weight_variance", self.weight_variance, layers))
        object.__setattr__(self, "cost_se", check_cost_se(self.cost_se, layers, bits))
        object.__setattr__(self, "noise_floor", check_noise_floor(self.noise_floor))
        names = tuple(s.name for s in layers)
        pairwise = validate_pairwise(self.pairwise, names, bits)
        object.__setattr__(self, "pairwise", pairwise)
        object.__setattr__(self, "_pairs", PairTerms.from_mapping(pairwise, names, len(bits)) if pairwise else None)

    # construction -----------------------------------------------------------------------------------------
    @classmethod
    def from_arrays(cls, layer_names: Sequence[str], bits: Sequence[int], cost: Any, size_bits: Any = None, *,
                    num_params: Sequence[int] | None = None, kinds: Sequence[str] | None = None,
                    branches: Sequence[str] | None = None, hessian_trace: Any = None,
                    weight_variance: Any = None,
                    pairwise: Mapping[tuple[str, str], Any] | None = None,
                    act_bits: Sequence[int | None] | None = None, cost_se: Any = None,
                    noise_floor: float | None = None) -> "CostTable":
        """Build a table from plain arrays; ``size_bits=None`` means ``num_params * bits``; ``pairwise`` maps
        layer-name pairs to (B, B) interaction costs (rows: bits of the first layer); ``act_bits``: one input
        activation bit-width (None: float) per candidate, for (weight, activation) candidates; ``cost_se`` and
        ``noise_floor``: the costs' standard errors (L, B) and the table's noise floor."""
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
                   weight_variance=weight_variance, pairwise=pairwise or {},
                   act_bits=None if act_bits is None else tuple(act_bits), cost_se=cost_se, noise_floor=noise_floor)

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

    def objective(self, choice: Any) -> float:
        """The objective of the plan with column ``choice[l]`` for layer l: its costs plus its pairwise terms
        (:func:`plan_objective`, summed by :func:`exact_sum`)."""
        return plan_objective(self.cost, self._rows(choice), self._pairs)

    @property
    def pair_terms(self) -> PairTerms | None:
        """The pairwise terms as arrays for solvers (:class:`~bitalloc.pairwise.PairTerms`), None without any."""
        return self._pairs

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
        if a in self.bits:
            return exact_sum(self.size_bits[:, self.bits.index(int(a))])
        bits, size = self._weight_sizes()
        if len(bits) == 1:
            raise BudgetError(f"avg_bits {a} is not the table's only candidate {self.bits[0]}")
        k = int(np.clip(np.searchsorted(bits, a) - 1, 0, len(bits) - 2))
        t = (a - bits[k]) / (bits[k + 1] - bits[k])
        col = size[:, k] + t * (size[:, k + 1] - size[:, k])
        return exact_sum(col)

    def _weight_sizes(self) -> tuple[np.ndarray, np.ndarray]:
        """The distinct weight bit-widths and their (L, W) sizes (all columns of a weight-only table)."""
        cols = weight_columns(self.bits)
        return np.asarray(self.bits, dtype=np.float64)[cols], self.size_bits[:, cols]

    def size_to_avg_bits(self, size_bits: float) -> float:
        """Inverse of :meth:`uniform_size_bits`: the uniform bit-width whose (interpolated) size is ``size_bits``."""
        bits, size = self._weight_sizes()
        sizes = np.array([exact_sum(c) for c in size.T])
        if len(bits) == 1:
            return float(bits[0] * size_bits / sizes[0]) if sizes[0] > 0 else float(bits[0])
        k = int(np.clip(np.searchsorted(sizes, size_bits) - 1, 0, len(bits) - 2))
        t = (size_bits - sizes[k]) / (sizes[k + 1] - sizes[k])
        return float(bits[k] + t * (bits[k + 1] - bits[k]))

    def require_weight_only(self, who: str, why: str) -> None:
        """A ValueError naming ``who`` (and ``why``) if the table has (weight, activation) candidates."""
        if self.act_bits is not None:
            raise ValueError(f"{who}: the cost table has (weight, activation) candidates, which it does not handle "
                             f"yet ({why}); use a weight-only table")

    def monotone(self) -> "CostTable":
        """A copy whose costs never increase with bits: ``cost[l, j] = min(cost[l, :j+1])``.

        Measured costs are noisy; libraries clip such noise so that more bits never cost more. With (weight,
        activation) candidates: more weight bits at the same activation bits, and more activation bits (a float
        input the most) at the same weight bits. Allocators do
        not rely on it (a choice with more bits and no lower cost is dominated anyway).
        """
        if self.act_bits is None:
            return self.replace(cost=np.minimum.accumulate(self.cost, axis=1))
        cost = np.array(self.cost)  # (weight, activation): along weight bits per activation, then along activation
        for group in ([j for j, a in enumerate(self.act_bits) if a == x] for x in dict.fromkeys(self.act_bits)):
            cost[:, group] = np.minimum.accumulate(cost[:, group], axis=1)
        for group in ([j for j, w in enumerate(self.bits) if w == x] for x in dict.fromkeys(self.bits)):
            cost[:, group] = np.minimum.accumulate(cost[:, group], axis=1)
        return self.replace(cost=cost)

    def replace(self, **changes: Any) -> "CostTable":
        kw = dict(layers=self.layers, bits=self.bits, cost=self.cost, size_bits=self.size_bits,
                  hessian_trace=self.hessian_trace, weight_variance=self.weight_variance, pairwise=self.pairwise,
                  act_bits=self.act_bits, cost_se=self.cost_se, noise_floor=self.noise_floor)
        kw.update(changes)
        return CostTable(**kw)

    def subset(self, names: Iterable[str]) -> "CostTable":
        """The table of the layers ``names`` (in that order), with the pairwise terms among them."""
        idx = [self.index(n) for n in names]
        kept = {self.layers[i].name for i in idx}

        def pick(a):
            return None if a is None else a[idx]

        return CostTable(layers=tuple(self.layers[i] for i in idx), bits=self.bits, cost=self.cost[idx],
                         size_bits=self.size_bits[idx], hessian_trace=pick(self.hessian_trace),
                         weight_variance=pick(self.weight_variance),
                         pairwise={k: v for k, v in self.pairwise.items() if k[0] in kept and k[1] in kept},
                         act_bits=self.act_bits, cost_se=pick(self.cost_se), noise_floor=self.noise_floor)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CostTable):
            return NotImplemented
        def same(a: np.ndarray | None, b: np.ndarray | None) -> bool:
            return (a is None and b is None) or (a is not None and b is not None and np.array_equal(a, b))
        return (self.layers == other.layers and self.bits == other.bits and self.act_bits == other.act_bits
                and same(self.cost, other.cost)
                and same(self.size_bits, other.size_bits) and same(self.hessian_trace, other.hessian_trace)
                and same(self.weight_variance, other.weight_variance) and same(self.cost_se, other.cost_se)
                and self.noise_floor == other.noise_floor
                and self.pairwise.keys() == other.pairwise.keys()
                and all(same(v, other.pairwise[k]) for k, v in self.pairwise.items()))

    __hash__ = None  # type: ignore[assignment]

    def __reduce__(self) -> tuple:
        """Pickle (and deepcopy) by the constructor's arguments: the read-only pairwise mapping cannot be pickled."""
        return (CostTable, (self.layers, self.bits, self.cost, self.size_bits, self.hessian_trace,
                            self.weight_variance, dict(self.pairwise), self.act_bits, self.cost_se,
                            self.noise_floor))


from bitalloc.budget import Budget, LinearConstraint  # noqa: E402  (re-exported; budget.py imports this module)
