"""Do plans chosen from two disjoint calibration sets agree? Clipped tables against noise-aware ones.

    BITALLOC_DATA=../shared/data python studies/noise_stability.py            # the README's numbers
    python studies/noise_stability.py --models mbt2018-mean --qualities 4 --images 2 --crop 64   # quick

For each shipped compact checkpoint, two cost tables are measured on disjoint sets of training photos (the
first ``--images`` and the next ``--images``, centre crops of ``--crop``), each crop one observation
(``uncertainty=True``). From each measurement two tables: today's (``clip``: max(zeta, 0)) and the noise-aware
one (``noise``: the monotone fit, 0 within 2 standard errors, and :func:`bitalloc.tie_break_within_noise`).
The ILP allocates every table at each budget; the two sets' plans are compared by the share of the weights
that get the same bit-width (param-weighted) and the mean absolute bit difference. Also the average bits the
plans use: at a generous budget a noise-aware plan should not leave it unused.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from bitalloc import Budget, CostTable, build_allocator
from bitalloc.noise import tie_break_within_noise

OUT = Path(__file__).resolve().parent / "results"


def tables(model, images, crop: int) -> dict[str, CostTable]:
    """{"clip": today's table, "noise": the noise-aware table with the tie-break}, from one measurement."""
    from bitalloc.sensitivity import measure_sensitivity

    noise, frame = measure_sensitivity(model, images, calibration="mse", crop=crop, limit=None, hessian_samples=0,
                                       progress=False, return_frame=True, uncertainty=True, fit="isotonic")
    zeta = frame.pivot(index="layer", columns="bits", values="zeta").loc[list(noise.layer_names)].to_numpy()
    return {"clip": noise.replace(cost=np.maximum(zeta, 0.0)),
            "noise": tie_break_within_noise(noise, frame.attrs["noise_floor"])}


def run(models, qualities, budgets, n_images: int, crop: int, data=None, allocator: str = "ilp") -> pd.DataFrame:
    from bitalloc.data import data_root, image_paths
    from bitalloc.models import load_model

    root = data_root(data)
    if root is None:
        raise SystemExit("set BITALLOC_DATA (or --data) to a folder with train/")
    paths = image_paths(root / "train")
    if len(paths) < 2 * n_images:
        raise SystemExit(f"{root / 'train'} has {len(paths)} images; --images {n_images} needs {2 * n_images}")
    sets = {"A": paths[:n_images], "B": paths[n_images:2 * n_images]}
    rows = []
    for name in models:
        for q in qualities:
            model = load_model(name, q).eval()
            per_set = {s: tables(model, p, crop) for s, p in sets.items()}
            for kind in ("clip", "noise"):
                for avg in budgets:
                    plans = {}
                    for s, t in per_set.items():
                        plans[s] = build_allocator(allocator).allocate(t[kind], Budget.from_avg_bits(t[kind], avg)).plan
                    ref = per_set["A"][kind]
                    same, diff = plans["A"].agreement(plans["B"], dict(zip(ref.layer_names, ref.num_params)))
                    rows.append({"model": name, "quality": q, "budget": avg, "table": kind, "same_bits": same,
                                 "mean_abs_bit_diff": diff, "avg_bits_A": plans["A"].avg_bits(ref),
                                 "avg_bits_B": plans["B"].avg_bits(per_set["B"][kind])})
    return pd.DataFrame(rows)


def summary(df: pd.DataFrame) -> pd.DataFrame:
    """Mean over models and qualities, per budget and table kind."""
    return df.groupby(["budget", "table"], sort=False)[["same_bits", "mean_abs_bit_diff", "avg_bits_A",
                                                         "avg_bits_B"]].mean().reset_index()


def main(argv=None) -> pd.DataFrame:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["bmshj2018-hyperprior", "mbt2018-mean"])
    p.add_argument("--qualities", nargs="+", type=int, default=[1, 3, 4, 6])
    p.add_argument("--budgets", nargs="+", type=float, default=[8.0, 6.0, 4.0])
    p.add_argument("--images", type=int, default=4, help="photos per calibration set")
    p.add_argument("--crop", type=int, default=128)
    p.add_argument("--allocator", default="ilp")
    p.add_argument("--data", default=None)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(OUT))
    args = p.parse_args(argv)
    import torch

    from bitalloc.atomic import atomic_write_text
    from bitalloc.study_args import command_line, machine_line

    torch.set_num_threads(args.threads)
    df = run(args.models, args.qualities, args.budgets, args.images, args.crop, args.data, args.allocator)
    s = summary(df)
    text = "\n".join([
        "# Plans from two disjoint calibration sets: clipped vs noise-aware tables", "",
        command_line("studies/noise_stability.py", argv), machine_line(args.threads),
        f"- {args.images} photos per set (train/ in file order: set A the first, set B the next), centre crops "
        f"{args.crop}^2, MSE calibration, allocator {args.allocator}; same_bits: share of the weights with equal "
        "bits in both sets' plans; mean |bit diff| parameter-weighted", "",
        "## Mean over models and qualities", "", s.to_markdown(index=False, floatfmt=".3f"), "",
        "## Per model and quality", "", df.to_markdown(index=False, floatfmt=".3f"), ""])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "noise_stability.md", text)
    atomic_write_text(out / "noise_stability.csv", df.to_csv(index=False))
    print(s.to_markdown(index=False, floatfmt=".3f"))
    return df


if __name__ == "__main__":
    sys.exit(main() is None)
