"""Cost of one training step by model size, crop shape, memory format and threads (what a CPU-hour buys).

    python studies/bench_train_step.py --model bmshj2018-hyperprior --quality 6

Each setting times :func:`bitalloc.training.train_step` (RD loss + aux loss, Adam, gradient clipping: the step of
``bitalloc.models.train.train``) on random batches of the given shape, after ``--warmup`` untimed steps; the
median of ``--steps`` is reported with the pixels it trains per second, and each size's time relative to the
registry's compact size at the same crops, format and threads. Random pixels: the time of a step does not depend
on the content. Settings run one after another in one process, so stop other jobs on the cores first (the
results' machine line records the load average). Writes studies/results/bench_train_step_<model>.md.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from bitalloc.atomic import atomic_write_text
from bitalloc.study_args import command_line, machine_line

RESULTS = Path(__file__).resolve().parent / "results"


def pair(text: str) -> tuple[int, ...]:
    """``"96,192"`` -> (96, 192)."""
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected channels like 96,192, got {text!r}") from None


def shape(text: str) -> tuple[int, int]:
    """``"256x4"`` -> (crop 256, batch 4)."""
    try:
        crop, batch = (int(v) for v in text.split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected CROPxBATCH like 256x4, got {text!r}") from None
    return crop, batch


def time_step(name: str, quality: int, channels, crop: int, batch: int, channels_last: bool, steps: int,
              warmup: int) -> float:
    """Median seconds of one training step of ``name`` at ``channels`` on ``batch`` random ``crop``^2 crops."""
    from bitalloc.models import RateDistortionLoss, build_model, lambda_of, split_parameters
    from bitalloc.training import train_step

    torch.manual_seed(0)
    model = build_model(name, quality, channels=channels)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    main_params, aux_params = split_parameters(model)
    opt, aux = torch.optim.Adam(main_params, lr=1e-5), torch.optim.Adam(aux_params, lr=1e-4)
    loss = RateDistortionLoss(lambda_of(quality))
    times = []
    for i in range(warmup + steps):
        x = torch.rand(batch, 3, crop, crop)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        t0 = time.perf_counter()
        train_step(model, x, loss, opt, aux)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv=None) -> int:
    from bitalloc.models import MODELS

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="bmshj2018-hyperprior", choices=sorted(MODELS))
    p.add_argument("--quality", type=int, default=6)
    p.add_argument("--sizes", type=pair, nargs="+", default=[(48, 64), (64, 96), (96, 192), (128, 192)],
                   help="channels N,M (N alone for cheng2020-anchor)")
    p.add_argument("--shapes", type=shape, nargs="+", default=[(128, 8), (256, 4)], help="CROPxBATCH")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--formats", nargs="+", default=["contiguous", "channels_last"],
                   choices=["contiguous", "channels_last"])
    p.add_argument("--steps", type=int, default=6, help="timed steps per setting")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    compact = MODELS[args.model].compact
    sizes = list(dict.fromkeys([compact, *args.sizes]))  # the reference size first, once
    settings = [(t, f, s, c) for t in args.threads for f in args.formats for s in args.shapes for c in sizes]
    rows = []
    for threads, fmt, (crop, batch), channels in tqdm(settings, desc="settings"):
        torch.set_num_threads(threads)
        sec = time_step(args.model, args.quality, channels, crop, batch, fmt == "channels_last", args.steps,
                        args.warmup)
        rows.append({"channels": ",".join(map(str, channels)), "crop_x_batch": f"{crop}x{batch}", "format": fmt,
                     "threads": threads, "s_per_step": sec, "mpixels_per_s": crop * crop * batch / sec / 1e6})
    df = pd.DataFrame(rows)
    ref = df[df.channels == ",".join(map(str, compact))].set_index(["crop_x_batch", "format", "threads"]).s_per_step
    df["vs_compact"] = [r.s_per_step / ref[(r.crop_x_batch, r.format, r.threads)] for r in df.itertuples()]
    out = args.out or RESULTS / f"bench_train_step_{args.model}.md"
    atomic_write_text(out, "\n".join([
        f"# Training step of {args.model} (quality {args.quality}) by size, crops, format and threads", "",
        command_line("studies/bench_train_step.py", argv), machine_line(max(args.threads)) + " (most threads used)",
        f"- median of {args.steps} steps after {args.warmup} warm-up steps; random pixels; the step of "
        f"`bitalloc.models.train.train` (RD + aux loss, Adam, clipping)", "",
        df.to_markdown(index=False, floatfmt=".3f"), ""]))
    print(df.to_markdown(index=False, floatfmt=".3f"))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
