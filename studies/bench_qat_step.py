"""Cost of a QAT step relative to a full-precision training step (target: at most 1.3x).

    BITALLOC_DATA=../shared/data python studies/bench_qat_step.py --model bmshj2018-hyperprior --quality 4

Both steps are :func:`bitalloc.training.train_step` (RD loss + aux loss, Adam, gradient clipping) on the same
batches of random crops; the QAT model carries a uniform ``--bits`` plan with FMPQ's leaky clip and learnable
LSQ scales. Steps alternate FP / QAT so both see the same background load; the median is reported. Writes
studies/results/bench_qat_step_<model>_q<q>.md.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

from bitalloc.atomic import atomic_write_text
from bitalloc.study_args import add_model_args, command_line, kodak_folder, load_model_arg, machine_line

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_args(p, RESULTS)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--crop", type=int, default=128)
    p.add_argument("--steps", type=int, default=10, help="timed steps per mode")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--bits", type=int, default=4)
    p.add_argument("--estimator", default="leaky_clip")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from bitalloc.data import ImageFolder
    from bitalloc.graph import quantizable_layers
    from bitalloc.models import RateDistortionLoss, split_parameters
    from bitalloc.plan import BitPlan
    from bitalloc.quant import apply_plan
    from bitalloc.training import train_step

    model, source = load_model_arg(args)
    data = ImageFolder(kodak_folder(args), crop=args.crop, seed=0)  # timing only: content does not matter
    fp = copy.deepcopy(model)
    qat = apply_plan(model, BitPlan.uniform(list(quantizable_layers(model)), args.bits), estimator=args.estimator,
                     calibration="mse", learn_scale=True)
    crit = RateDistortionLoss(model.meta["lambda"])
    setups = {}
    for name, m in (("fp32", fp), ("qat", qat)):
        main_p, aux_p = split_parameters(m)
        setups[name] = (m, torch.optim.Adam(main_p, lr=1e-5), torch.optim.Adam(aux_p, lr=1e-4))
    times: dict[str, list[float]] = {"fp32": [], "qat": []}
    for i in range(args.warmup + args.steps):
        x = data.batch(args.batch_size)
        for name, (m, opt, aux) in setups.items():
            t0 = time.perf_counter()
            train_step(m, x, crit, opt, aux)
            if i >= args.warmup:
                times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = med["qat"] / med["fp32"]
    lines = [
        f"# QAT step vs full-precision step ({args.model} q{args.quality})",
        "",
        f"- model: {source}; QAT plan: uniform {args.bits}-bit weights, estimator {args.estimator}, LSQ scales",
        f"- batch {args.batch_size} x {args.crop}x{args.crop} crops; {args.steps} timed steps per mode after "
        f"{args.warmup} warm-up, alternating; median",
        machine_line(args.threads),
        command_line("studies/bench_qat_step.py", argv),
        "",
        "| step | median_s | min_s | ratio to fp32 |",
        "| --- | --- | --- | --- |",
        *(f"| {k} | {med[k]:.3f} | {min(times[k]):.3f} | {med[k] / med['fp32']:.3f} |" for k in times),
        "",
    ]
    atomic_write_text(Path(args.out) / f"bench_qat_step_{args.model}_q{args.quality}.md", "\n".join(lines))
    print("\n".join(lines))
    print(f"QAT step / FP step: {ratio:.3f}x (target <= 1.3x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
