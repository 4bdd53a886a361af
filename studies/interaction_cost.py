"""What pairwise interaction costs cost to measure, what they see, and what verify-and-repair makes of them.

    BITALLOC_DATA=../shared/data python studies/interaction_cost.py                  # Mean-Scale q4 (README)
    BITALLOC_DATA=../shared/data python studies/interaction_cost.py --model bmshj2018-hyperprior

On the harness's calibration crops (the first ``--images`` training photos, centre crops of ``--crop``, MSE
calibration): the single-layer table (forward passes, seconds), :func:`bitalloc.measure_interactions` with its
default pairs (passes, seconds, pairs), the hyper-synthesis layers' interactions at 2 bits, the three of them
together (table prediction with and without the pairwise terms against the measured joint loss), and
:func:`bitalloc.verify_and_repair` around the ILP at each budget (start plan and best measured plan).
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import pandas as pd

OUT = Path(__file__).resolve().parent / "results"


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="mbt2018-mean")
    p.add_argument("--quality", type=int, default=4)
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--crop", type=int, default=256)
    p.add_argument("--budgets", nargs="+", type=float, default=[8.0, 6.0, 4.0])
    p.add_argument("--max-evals", type=int, default=12)
    p.add_argument("--data", default=None)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(OUT))
    args = p.parse_args(argv)
    import torch

    from bitalloc import BitPlan, Budget, measure_interactions, measure_sensitivity, verify_and_repair
    from bitalloc.atomic import atomic_write_text
    from bitalloc.models import load_model
    from bitalloc.repair import TOLERANCE
    from bitalloc.sensitivity import JointLoss
    from bitalloc.study_args import command_line, machine_line
    from bitalloc.study_steps import calibration_crops

    torch.set_num_threads(args.threads)
    model = load_model(args.model, args.quality).eval()
    calib = calibration_crops(None, args.images, args.crop, args.data)
    t0 = time.perf_counter()
    table, frame = measure_sensitivity(model, calib, calibration="mse", hessian_samples=0, progress=False,
                                       return_frame=True)
    table_s = time.perf_counter() - t0
    inter = measure_interactions(model, calib, table, frame=frame, calibration="mse", progress=False)
    joint_table = inter.attach(table)
    lines = ["# Pairwise interaction costs and verify-and-repair", "", command_line("studies/interaction_cost.py",
             argv), machine_line(args.threads),
             f"- {args.model} q{args.quality} (shipped), {calib.shape[0]} crops {args.crop}^2 of train/, MSE "
             "calibration (the harness's settings)", "",
             "| measurement | forward passes | seconds |", "| --- | ---: | ---: |",
             f"| single-layer table ({table.num_layers} layers x {len(table.bits)} bits) | "
             f"{frame.attrs['evaluations']} | {table_s:.1f} |",
             f"| pairwise interactions ({len(inter.pairwise)} default pairs, "
             f"{len(inter.frame)} bit pairs in play) | {inter.forward_passes} | {inter.time_s:.1f} |", ""]
    hs = [n for n in table.layer_names if n.startswith("h_s.")]
    col = table.bits.index(2) if 2 in table.bits else 0
    rows = []
    for a, b in itertools.combinations(hs, 2):
        if (a, b) in inter.pairwise or (b, a) in inter.pairwise:
            rows.append({"pair": f"{a} + {b}", "interaction at 2+2 bits": inter.matrix(a, b)[col, col]})
    if rows:
        lines += ["Interactions of the hyper-synthesis layers at 2 bits (fraction of the float RD loss):", "",
                  pd.DataFrame(rows).to_markdown(index=False, floatfmt=".4f"), ""]
    joint = JointLoss(model, calib, calibration="mse")
    top = max(table.bits)
    triple = BitPlan({**{n: top for n in table.layer_names}, **{n: table.bits[col] for n in hs}})
    check = joint.check(triple, table)
    lines += [f"All of {', '.join(hs)} at {table.bits[col]} bits (the rest at {top}): table predicts "
              f"{check.predicted:.4f}, with the pairwise terms {triple.cost(joint_table):.4f}; measured "
              f"{check.measured:.4f}.", ""]
    rep_rows = []
    for avg in args.budgets:
        for name, t in (("ilp", table), ("iqp", joint_table)):
            budget = Budget.from_avg_bits(t, avg)
            rep = verify_and_repair(model, calib, t, budget, name, calibration="mse", max_evals=args.max_evals)
            rep_rows.append({"budget": avg, "allocator": f"{name}+verify", "start avg bits":
                             rep.start.plan.avg_bits(t), "start predicted": rep.start.objective,
                             "start measured": rep.start_measured, "best avg bits": rep.plan.avg_bits(t),
                             "best predicted": rep.predicted, "best measured": rep.measured,
                             "plans measured": rep.evaluations, "seconds": rep.time_s})
    lines += ["verify_and_repair (ilp on the single-layer table, iqp on the table with the pairwise terms; "
              f"at most {args.max_evals} plans measured, tolerance {TOLERANCE:g} of the float loss):", "",
              pd.DataFrame(rep_rows).to_markdown(index=False, floatfmt=".4f"), ""]
    text = "\n".join(lines)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / f"interactions_{args.model}_q{args.quality}.md", text)
    print(text)
    return {"table": table, "interactions": inter, "repairs": pd.DataFrame(rep_rows)}


if __name__ == "__main__":
    sys.exit(main() is None)
