"""The allocator study: fmpq, ilp, convex, greedy and uniform on the compact Scale Hyperprior and Mean-Scale
Hyperprior, budgets equal to uniform 8, 6 and 4 bits (weights), calibration only (PTQ) and with QAT;
DynaQuant (a dynamic, per-image bit-width model trained for the same steps) joins the QAT rows at 6 bits.

    BITALLOC_DATA=../shared/data python studies/compare_allocators.py            # both families, PTQ + QAT
    BITALLOC_DATA=../shared/data python studies/compare_allocators.py --model mbt2018-mean --modes ptq

Results: studies/results/compare_<model>/ (report.md, CSV, figures; the cache under runs/ makes reruns and
interrupted runs resume). Sensitivity is measured on centre crops of training photos, never on Kodak;
evaluation entropy-codes all 24 Kodak images. QAT uses the same steps, learning rate and data for every plan.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from pathlib import Path

import torch

from bitalloc import StudySpec, run_study, write_report
from bitalloc.analysis import merge_results

RESULTS = Path(__file__).parent / "results"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", nargs="+", default=["bmshj2018-hyperprior", "mbt2018-mean"])
    p.add_argument("--modes", nargs="+", default=["ptq", "qat"])
    p.add_argument("--qat-budgets", type=float, nargs="+", default=[8.0, 6.0, 4.0],
                   help="budgets that also get QAT (default: all three)")
    p.add_argument("--dynaquant-budgets", type=float, nargs="*", default=[6.0],
                   help="average bits at which DynaQuant (trained for --qat-steps) joins the QAT comparison; "
                        "its smallest achievable average is about 5.3 bits (pass none to skip)")
    p.add_argument("--qualities", type=int, nargs="+", default=list(StudySpec.qualities))
    p.add_argument("--qat-steps", type=int, default=StudySpec.qat_steps)
    p.add_argument("--limit", type=int, default=None, help="first N Kodak images only")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--data", default=None)
    p.add_argument("--cache", default="runs/compare_allocators")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    machine = f"{platform.machine()} CPU, {os.cpu_count()} cores, torch {torch.__version__}"
    command = "python studies/compare_allocators.py " + " ".join(sys.argv[1:] if argv is None else argv)
    for model in args.model:
        results = []
        for mode in args.modes:
            budgets = (8.0, 6.0, 4.0) if mode == "ptq" else tuple(args.qat_budgets)
            spec = StudySpec(model=model, budgets=budgets, modes=(mode,), qat_steps=args.qat_steps,
                             eval_limit=args.limit, qualities=tuple(args.qualities))
            results.append(run_study(spec, Path(args.cache) / model, data=args.data))
        if "qat" in args.modes and args.dynaquant_budgets:
            spec = StudySpec(model=model, allocators=("dynaquant",), budgets=tuple(args.dynaquant_budgets),
                             modes=("qat",), qat_steps=args.qat_steps, eval_limit=args.limit,
                             qualities=tuple(args.qualities))
            results.append(run_study(spec, Path(args.cache) / model, data=args.data))
        merged = merge_results(*results)
        report = write_report(merged, RESULTS / f"compare_{model}", command=command, machine=machine)
        print(report.read_text())


if __name__ == "__main__":
    main()
