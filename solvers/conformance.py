"""Property check of every allocator on seeded random cost tables (used by the tests and the solver benchmark).

:func:`random_table` draws small tables of every shape that has broken an allocator before: fractional and
integer sizes, one layer or one candidate, ties and zeros in the costs, costs not monotone in bits, costs spanning
twelve orders of magnitude. :func:`boundary_budgets` puts budgets exactly at the smallest size, the largest size and
every uniform size, one float step below each, and at random points between. :func:`check_case` runs every
allocator on one (table, budget) and counts:

* ``crashes``: an exception, or a status other than ``optimal``/``feasible`` (every budget here can be met);
* ``violations``: a plan whose size exceeds the budget: its sizes are added exactly in rational arithmetic
  (``Fraction``, not the library's own sum) and rounded once to a float, as a float budget can only be compared
  with a float; or whose reported size or objective is not the plan's (beyond rounding), or an ``optimal`` one
  whose gap is not 0;
* ``optimal_worse``: an allocator says ``optimal`` but another allocator's plan that fits costs less (by more than
  1e-9 relative: float rounding of the sums);
* ``disagreements``: the exact allocators (``ilp``'s default path, its PuLP path, ``iqp`` and ``exact``; with
  pairwise terms ``iqp`` and ``exact``) do not reach the same objective.

With ``pairwise=True``, :func:`random_table` adds interaction terms of either sign on a random subset of the
layer pairs, and objectives are checked with them (added in rational arithmetic as well).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from bitalloc.allocation import AllocStatus, build_allocator
from bitalloc.costs import Budget, CostTable

__all__ = ["random_table", "boundary_budgets", "check_case", "Counts", "run", "ALLOCATORS"]

BIT_SETS = ((2, 3, 4, 5, 6, 8), (2, 4, 8), (4, 8), (2, 3, 4), (1, 2, 3, 4, 5, 6, 7, 8), (8,), (3, 5, 6, 8))
# name -> factory; "ilp/pulp" is the full MILP model in PuLP/CBC, "ilp" the default (structured) path
ALLOCATORS: dict[str, Callable[[], Any]] = {
    "ilp": lambda: build_allocator("ilp"),
    "ilp/pulp": lambda: build_allocator("ilp", method="pulp"),
    "iqp": lambda: build_allocator("iqp"),
    "exact": lambda: build_allocator("exact"),
    "greedy": lambda: build_allocator("greedy"),
    "convex": lambda: build_allocator("convex"),
    "fmpq": lambda: build_allocator("fmpq"),
    "uniform": lambda: build_allocator("uniform"),
}
EXACT_ONES = ("ilp", "ilp/pulp", "iqp", "exact")
EXACT_PAIRWISE = ("iqp", "exact")  # the ILP optimises the additive part only
RTOL = 1e-9


def random_table(rng: np.random.Generator, max_layers: int = 24, pairwise: bool = False) -> CostTable:
    """A random small table; see the module docstring for the shapes it covers."""
    L = int(rng.integers(1, max_layers + 1)) if rng.random() > 0.05 else 1
    bits = BIT_SETS[int(rng.integers(len(BIT_SETS)))]
    b = np.asarray(bits, dtype=np.float64)
    params = rng.integers(1, 5000, L)
    kind = int(rng.integers(5))
    if kind == 0:  # integer sizes: params * bits + an integer per-channel overhead
        size = np.outer(params, b) + rng.integers(0, 64, L)[:, None]
    elif kind == 1:  # tenths of bits: sums that floats cannot represent exactly
        size = np.round(np.outer(params * rng.uniform(0.5, 1.5, L), b) + rng.uniform(0, 64, L)[:, None], 1)
    else:  # arbitrary reals
        size = np.outer(params * rng.uniform(0.5, 1.5, L), b) + rng.uniform(0, 64, L)[:, None]
    size = np.maximum.accumulate(size + np.arange(len(bits))[None, :] * 1e-3, axis=1)  # strictly growing
    shape = int(rng.integers(5))
    if shape == 0:  # LIC-like: w * 2^-2b with measurement noise, weights spanning e^+-8
        cost = rng.lognormal(0, 2.5, L)[:, None] * 2.0 ** (-2 * b)[None, :] * rng.lognormal(0, 0.3, (L, len(bits)))
    elif shape == 1:
        cost = rng.uniform(0, 1, (L, len(bits)))
    elif shape == 2:  # ties and zeros
        cost = rng.integers(0, 4, (L, len(bits))).astype(np.float64) * 0.1
    elif shape == 3:  # monotone, spanning twelve orders of magnitude
        cost = np.sort(10.0 ** rng.uniform(-12, 0, (L, len(bits))), axis=1)[:, ::-1].copy()
    else:  # all zero but one layer
        cost = np.zeros((L, len(bits)))
        cost[int(rng.integers(L))] = np.linspace(1.0, 0.0, len(bits))
    pairs = {}
    if pairwise:  # few enough plans for exact's brute force (B**L <= 100,000), the reference with pairs
        L = min(L, max(1, int(math.log(100_000) / math.log(len(bits)))) if len(bits) > 1 else L)
        size, cost, params = size[:L], cost[:L], params[:L]
    names = [f"l{i}" for i in range(L)]
    if pairwise:  # each pair with probability 1/2: interactions up to the typical cost, either sign, some zero
        typical = float(np.median(cost)) or 1.0
        for i in range(L):
            for j in range(i + 1, L):
                if rng.random() < 0.5:
                    m = rng.normal(0.0, typical, (len(bits), len(bits))) * (rng.random((len(bits),) * 2) < 0.7)
                    pairs[(names[i], names[j]) if rng.random() < 0.5 else (names[j], names[i])] = m
    return CostTable.from_arrays(names, bits, cost, size, num_params=params.tolist(), pairwise=pairs)


def boundary_budgets(table: CostTable, rng: np.random.Generator, n_random: int = 2) -> list[float]:
    """Budgets at the smallest and largest sizes and every uniform size (and one float step below each but the
    smallest), plus ``n_random`` uniform draws between the smallest and largest."""
    at = [table.uniform_size_bits(b) for b in table.bits]  # includes min (first) and max (last)
    below = [math.nextafter(w, 0.0) for w in at[1:]]
    lo, hi = table.min_size_bits, table.max_size_bits
    between = [lo + float(rng.random()) * (hi - lo) for _ in range(n_random)]
    return [w for w in dict.fromkeys(at + below + between) if w > 0]


def _exact(values: np.ndarray) -> float:
    """The sum in rational arithmetic, rounded once (Fraction -> float rounds correctly)."""
    return float(sum((Fraction(float(v)) for v in values), Fraction(0)))


def _worse(a: float, b: float) -> bool:
    """a is worse than b beyond float rounding of the sums."""
    return a > b + RTOL * max(abs(a), abs(b))


@dataclass
class Counts:
    tables: int = 0
    cases: int = 0
    pulp_cases: int = 0  # budgets on which the PuLP path ran
    runs: int = 0
    crashes: int = 0
    violations: int = 0
    optimal_worse: int = 0
    disagreements: int = 0
    seconds: float = 0.0
    examples: list[str] = field(default_factory=list)

    def merge(self, other: "Counts") -> None:
        """Add another run's counts (``seconds`` adds up CPU work, not wall time)."""
        for k in ("tables", "cases", "pulp_cases", "runs", "crashes", "violations", "optimal_worse", "disagreements",
                  "seconds"):
            setattr(self, k, getattr(self, k) + getattr(other, k))
        self.examples.extend(other.examples[:max(0, 20 - len(self.examples))])

    def failures(self) -> int:
        return self.crashes + self.violations + self.optimal_worse + self.disagreements

    def note(self, kind: str, text: str) -> None:
        setattr(self, kind, getattr(self, kind) + 1)
        if len(self.examples) < 20:
            self.examples.append(f"{kind}: {text}")


def check_case(table: CostTable, max_size_bits: float, counts: Counts, names: Iterable[str], where: str) -> None:
    """Run the allocators ``names`` on one (table, budget) and add what goes wrong to ``counts``."""
    budget = Budget(max_size_bits)
    counts.cases += 1
    counts.pulp_cases += "ilp/pulp" in names
    results = {}
    for name in names:
        counts.runs += 1
        try:
            r = ALLOCATORS[name]().allocate(table, budget)
        except Exception as exc:  # noqa: BLE001 - the property is "no crash"
            counts.note("crashes", f"{where} {name}: {type(exc).__name__}: {exc}")
            continue
        if r.status not in (AllocStatus.OPTIMAL, AllocStatus.FEASIBLE) or r.plan is None:
            counts.note("crashes", f"{where} {name}: status {r.status}: {r.message}")
            continue
        choice = r.plan.choices(table)
        rows = np.arange(table.num_layers)
        pair_terms = [m[choice[table.index(i)], choice[table.index(j)]] for (i, j), m in table.pairwise.items()]
        size = _exact(table.size_bits[rows, choice])
        objective = _exact(np.concatenate([table.cost[rows, choice], pair_terms]))
        if size > max_size_bits:
            counts.note("violations", f"{where} {name}: size {size!r} > budget {max_size_bits!r}")
            continue
        if _worse(r.size_bits, size) or _worse(size, r.size_bits) or _worse(r.objective, objective) \
                or _worse(objective, r.objective):
            counts.note("violations", f"{where} {name}: reports size {r.size_bits!r} and objective "
                                      f"{r.objective!r}, the plan has {size!r} and {objective!r}")
        gap = getattr(r, "gap", r.extra.get("gap"))
        if r.status == AllocStatus.OPTIMAL and gap != 0.0:
            counts.note("violations", f"{where} {name}: optimal with gap {gap!r}")
        results[name] = r
    if not results:
        return
    best = min(r.objective for r in results.values())
    for name, r in results.items():
        if r.status == AllocStatus.OPTIMAL and _worse(r.objective, best):
            counts.note("optimal_worse", f"{where} {name}: optimal {r.objective!r} > {best!r} "
                                         f"({min(results, key=lambda n: results[n].objective)}): {r.message}")
    exact_ones = EXACT_PAIRWISE if table.pairwise else EXACT_ONES
    exact = [results[n].objective for n in exact_ones if n in results]
    if len(exact) > 1 and _worse(max(exact), min(exact)):
        counts.note("disagreements", f"{where}: " + ", ".join(
            f"{n} {results[n].objective!r} ({results[n].status})" for n in exact_ones if n in results))


def run(num_tables: int, seed: int | Sequence[int] = 0, pulp_every: int = 1,
        names: Iterable[str] = tuple(ALLOCATORS), max_layers: int = 24,
        progress: Callable[[Counts], None] | None = None, pairwise: bool = False) -> Counts:
    """Check ``num_tables`` tables drawn from ``np.random.default_rng(seed)`` at their boundary budgets; the PuLP
    path runs on every ``pulp_every``-th table (it starts a CBC process per solve); ``pairwise``: tables with
    interaction terms."""
    rng = np.random.default_rng(seed)
    counts = Counts()
    t0 = time.perf_counter()
    names = tuple(names)
    for k in range(num_tables):
        table = random_table(rng, max_layers, pairwise)
        counts.tables += 1
        use = tuple(n for n in names if n != "ilp/pulp" or k % pulp_every == 0)
        for w in boundary_budgets(table, rng):
            check_case(table, w, counts, use, f"seed {seed} table {k} ({table.num_layers}x{len(table.bits)}) "
                                              f"budget {w!r}")
        if progress is not None and (k + 1) % 500 == 0:
            counts.seconds = time.perf_counter() - t0
            progress(counts)
    counts.seconds = time.perf_counter() - t0
    return counts
