"""Built-in allocators, one module each; importing this package registers them by name.

=========  ============================================================  ==========================
name       method                                                        result
=========  ============================================================  ==========================
fmpq       FMPQ adaptive tolerance search (arXiv 2506.01221)             feasible (heuristic)
ilp        multiple-choice knapsack, LP bound + reduced-cost fixing,     proven optimal
           PuLP/CBC (HAWQ-V3, arXiv 2011.10680)
iqp        ilp plus pairwise interaction terms, linearised exactly,      proven optimal
           HiGHS (SciPy) or CBC
convex     Hessian-proxy reverse water-filling + repair (BAQ)            feasible (heuristic)
greedy     AIMET-style descent by cost per bit saved; Pareto path        feasible (heuristic)
uniform    one bit-width for all layers, the largest that fits           feasible (baseline)
exact      brute force / integer-grid DP / Pareto DP (small tables)      proven optimal
=========  ============================================================  ==========================

Allocators that do not optimise a table's pairwise terms (``ilp``, ``fmpq``, ``uniform``) say so in their
message and are at best ``feasible`` on such a table; ``greedy`` and ``convex``'s repair price moves with them,
``exact`` enumerates them by brute force. To add an allocator, subclass :class:`bitalloc.allocation.BaseAllocator`
and return a :class:`bitalloc.allocation.Solution` (see :mod:`bitalloc.allocation`).
"""

from __future__ import annotations

from . import convex, exact, fmpq, greedy, ilp, iqp, uniform  # noqa: F401  (register the allocators)
from .convex import ConvexAllocator
from .exact import ExactAllocator
from .fmpq import FMPQAllocator
from .greedy import GreedyAllocator
from .ilp import ILPAllocator
from .iqp import IQPAllocator
from .uniform import UniformAllocator

__all__ = ["ConvexAllocator", "ExactAllocator", "FMPQAllocator", "GreedyAllocator", "ILPAllocator",
           "IQPAllocator", "UniformAllocator"]
