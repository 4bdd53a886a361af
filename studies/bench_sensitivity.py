"""Sensitivity table of a compact LIC model on training crops, and the cached method's speed-up over the naive one.

    BITALLOC_DATA=../shared/data python studies/bench_sensitivity.py --model bmshj2018-hyperprior --quality 4

Writes (atomically) to ``--out`` (default studies/results/):
  sensitivity_<model>_q<q>.csv       the CostTable (cost = max(zeta, 0), size_bits, hessian_trace, ...)
  sensitivity_<model>_q<q>_raw.csv   one row per (layer, bits): raw zeta, loss, bpp, mse
  bench_sensitivity_<model>_q<q>.md  timing of the naive (full re-run per layer and bit-width) and cached runs

Calibration: centre crops of the first ``--images`` photos of ``<data>/train`` (the harness's calibration photos;
Kodak stays the evaluation set). The model is the shipped compact checkpoint (or ``--checkpoint FILE``); without
one the script says so and exits with status 2. ``--run-state`` reads a training run's state.pt instead (marked
as such in the results).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from bitalloc.atomic import atomic_write_text
from bitalloc.study_args import add_model_args, command_line, kodak_folder, load_model_arg, machine_line
from bitalloc.study_steps import calibration_crops

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_args(p, RESULTS)
    p.add_argument("--images", type=int, default=4, help="training photos (first N, centre crops)")
    p.add_argument("--crop", type=int, default=256)
    p.add_argument("--bits", type=int, nargs="+", default=[2, 3, 4, 5, 6, 8])
    p.add_argument("--hessian-samples", type=int, default=4)
    p.add_argument("--repeats", type=int, default=1, help="timing repeats (min is reported)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from bitalloc.sensitivity import measure_sensitivity

    model, source = load_model_arg(args)
    kodak_folder(args)  # the data root must be there (exits 2 naming it otherwise)
    x = calibration_crops(None, args.images, args.crop, args.data)
    kw = dict(bits=args.bits, progress=False, return_frame=True)
    times: dict[str, list[float]] = {"naive": [], "cached": []}
    frames = {}
    for _ in range(args.repeats):  # interleaved, so both methods see the same background load
        for method in ("naive", "cached"):
            _, frames[method] = measure_sensitivity(model, x, method=method, hessian_samples=0, **kw)
            times[method].append(frames[method].attrs["time_s"])
    t_naive, t_cached = min(times["naive"]), min(times["cached"])
    max_diff = float(np.max(np.abs(frames["naive"]["loss"].to_numpy() - frames["cached"]["loss"].to_numpy())))
    t0 = time.perf_counter()
    table, raw = measure_sensitivity(model, x, method="cached", hessian_samples=args.hessian_samples, **kw)
    t_total = time.perf_counter() - t0
    out = Path(args.out)
    stem = f"{args.model}_q{args.quality}"
    table.to_csv(out / f"sensitivity_{stem}.csv")
    atomic_write_text(out / f"sensitivity_{stem}_raw.csv", raw.to_csv(index=False))
    speedup = t_naive / t_cached
    lines = [
        f"# Sensitivity measurement: cached vs naive ({args.model} q{args.quality})",
        "",
        f"- model: {source}",
        f"- calibration: {x.shape[0]} centre crops of training photos {args.crop}x{args.crop}; bits {args.bits}; "
        f"{table.num_layers} layers -> {table.num_layers * len(args.bits)} (layer, bits) evaluations",
        machine_line(args.threads) + f"; timings are the min of {args.repeats} run(s)",
        command_line("studies/bench_sensitivity.py", argv),
        "",
        "| method | time_s | speed-up |",
        "| --- | --- | --- |",
        f"| naive (full re-run) | {t_naive:.2f} | 1.00x |",
        f"| cached (re-run downstream only) | {t_cached:.2f} | {speedup:.2f}x |",
        "",
        f"Largest |loss difference| cached vs naive: {max_diff:.3g}. Full cached run with "
        f"{args.hessian_samples} Hutchinson samples: {t_total:.2f} s.",
        "",
    ]
    atomic_write_text(out / f"bench_sensitivity_{stem}.md", "\n".join(lines))
    print("\n".join(lines))
    print(f"speed-up of the cached method over the naive one: {speedup:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
