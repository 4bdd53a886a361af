"""How far apart two BD-rates must be to differ on these images: bootstrap over the evaluation images.

    python studies/bd_rate_noise.py                 # both committed allocator studies, 200 resamples
    python studies/bd_rate_noise.py --resamples 500

For pairs of curves at the same budget and mode, the evaluation images are drawn with replacement, each
curve's mean bpp and PSNR per quality recomputed, and the difference of the two BD-rates against FP32 taken
(paired: the same draw for both). The table gives the difference on all images and its bootstrap standard
deviation; ``bitalloc.analysis.TIE_PCT`` (0.1 percentage points, the ranking's tie band) is read against it.
Reads only the committed ``images.csv`` files; measures nothing itself.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from bitalloc.atomic import atomic_write_text
from bitalloc.bdrate import bd_rate

RESULTS = Path(__file__).parent / "results"
PAIRS = [("qat", 8.0, "ilp", "uniform"), ("qat", 8.0, "convex", "uniform"), ("ptq", 8.0, "ilp", "convex"),
         ("ptq", 6.0, "ilp", "greedy"), ("qat", 6.0, "ilp", "greedy"), ("qat", 4.0, "ilp", "greedy"),
         ("ptq", 6.0, "iqp", "convex"), ("ptq", 4.0, "iqp", "ilp"), ("qat", 4.0, "iqp", "ilp")]


def _curve(img: pd.DataFrame, weights: pd.Series, allocator: str, budget, mode: str) -> pd.DataFrame:
    d = img[(img.allocator == allocator) & (img["mode"] == mode)]
    d = d[d.budget.isna()] if budget is None else d[d.budget == budget]
    d = d.assign(w=d.image.map(weights).fillna(0.0))
    d = d[d.w > 0]
    return d.groupby("quality").apply(lambda x: pd.Series({"bpp": np.average(x.bpp, weights=x.w),
                                                           "psnr": np.average(x.psnr_rgb, weights=x.w)}),
                                      include_groups=False)


def _difference(img, weights, mode, budget, a, b) -> float:
    fp = _curve(img, weights, "fp32", None, "ptq")
    bd = [bd_rate(fp.bpp, fp.psnr, c.bpp, c.psnr) for c in (_curve(img, weights, x, budget, mode) for x in (a, b))]
    return bd[0] - bd[1]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--resamples", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    rows = []
    for folder in sorted(RESULTS.glob("compare_*")):
        img = pd.read_csv(folder / "images.csv")
        names = img.image.unique()
        present = set(zip(img["mode"], img.budget, img.allocator))
        for mode, budget, a, b in PAIRS:
            if (mode, budget, a) not in present or (mode, budget, b) not in present:
                continue  # a study without this pair (PTQ only, or fewer allocators)
            full = _difference(img, pd.Series(1.0, index=names), mode, budget, a, b)
            draws = []
            for _ in range(args.resamples):
                try:
                    draws.append(_difference(img, pd.Series(rng.choice(names, len(names))).value_counts(),
                                             mode, budget, a, b))
                except ValueError:  # a resampled curve that is not monotone has no BD-rate
                    pass
            rows.append({"model": folder.name.removeprefix("compare_"), "mode": mode, "budget": budget,
                         "pair": f"{a} - {b}", "bd_rate_difference_pp": full,
                         "bootstrap_sd_pp": float(np.std(draws)), "resamples_used": len(draws)})
    table = pd.DataFrame(rows)
    md = ["# BD-rate differences between allocators: bootstrap over the 24 Kodak images", "",
          f"- command: `python studies/bd_rate_noise.py --resamples {args.resamples} --seed {args.seed}`",
          "- difference of two curves' BD-rates against FP32 (percentage points) and its standard deviation over "
          "image resamples (paired)", "", table.to_markdown(index=False, floatfmt=".3f"), ""]
    atomic_write_text(RESULTS / "bd_rate_noise.md", "\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
