"""A (weight, activation) cost table end to end on the shipped compact Scale Hyperprior q4.

Measures W4/W6/W8 x (8-bit or float input) on centre crops of two training photos (never Kodak, which is
for evaluation only; measure_sensitivity with act_bits), allocates with the ilp at 6 average weight bits, then
again with a BOPs budget (count_macs at 768x512) at 0.5x and 0.3x the size-only plan's BOPs, and checks each
plan's joint loss (check_plan calibrates its activation ranges on the same crops).
Run: ``python studies/weight_activation_table.py``.
"""

from __future__ import annotations

import os
import time

import torch

from bitalloc import Budget, LinearConstraint, build_allocator
from bitalloc.macs import count_macs
from bitalloc.models import load_model
from bitalloc.sensitivity import check_plan, measure_sensitivity


def main() -> None:
    torch.set_num_threads(1)
    model = load_model("bmshj2018-hyperprior", 4).eval()
    train = os.path.join(os.environ.get("BITALLOC_DATA", "/work/shared/data"), "train")
    t0 = time.time()
    table = measure_sensitivity(model, train, bits=(4, 6, 8), act_bits=(8, None), hessian_samples=0,
                                progress=False, limit=2, crop=256)
    print(f"table: {table.num_layers} layers x {len(table.bits)} candidates in {time.time() - t0:.1f} s")
    macs = count_macs(model, (3, 512, 768))
    budget = Budget.from_avg_bits(table, 6)
    free = build_allocator("ilp").allocate(table, budget)
    ops = free.plan.bit_operations(macs)
    print(f"size-only ilp: objective {free.objective:.5f}, {free.size_bits / 8e3:.1f} KB, BOPs {ops / 1e12:.3f} T, "
          f"8-bit inputs on {len(free.plan.act_bits)}/{len(free.plan)} layers")
    for share in (0.5, 0.3):
        both = Budget(budget.max_size_bits, extra=(LinearConstraint.bit_operations(table, macs, share * ops),))
        r = build_allocator("ilp").allocate(table, both)
        c = check_plan(model, r.plan, table, train, limit=2, crop=256)
        print(f"ilp, BOPs <= {share} x: {r.status.value}, objective {r.objective:.5f}, {r.size_bits / 8e3:.1f} KB, "
              f"BOPs {r.plan.bit_operations(macs) / 1e12:.3f} T, 8-bit inputs on {len(r.plan.act_bits)}/"
              f"{len(r.plan)} layers; check_plan predicted {c.predicted:.4f}, measured {c.measured:.4f}")


if __name__ == "__main__":
    main()
