"""Print the headline table of each committed allocator study (the one its report.md opens with) and what the QAT
steps alone do to the float model.

    python studies/headline_table.py                       # every studies/results/compare_*/
    python studies/headline_table.py --model mbt2018-mean

The table is :func:`bitalloc.report.headline_table` of the study's ``ranking.csv`` and ``bd_rate.csv``: per mode
and budget, the allocators in ranking order with their BD-rates against FP32, uniform 8-bit PTQ and (QAT rows)
the FP32 model fine-tuned with the same QAT steps, size, bits, PSNR change and solve time. Reads only what
``studies/compare_allocators.py`` wrote; measures nothing itself.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from bitalloc.analysis import qat_drift
from bitalloc.report import headline_table

RESULTS = Path(__file__).parent / "results"


def qat_gain(results: pd.DataFrame) -> str:
    """What the QAT steps alone do to the float model: bpp and PSNR change per quality (FP32 + QAT vs FP32)."""
    fp = results[results.allocator == "fp32"].pivot(index="quality", columns="mode", values=["bpp", "psnr_rgb"])
    if ("bpp", "qat") not in fp:
        return "(no FP32 + QAT reference in these results)"
    bpp = 100 * (fp["bpp"]["qat"] / fp["bpp"]["ptq"] - 1)
    dpsnr = fp["psnr_rgb"]["qat"] - fp["psnr_rgb"]["ptq"]
    drift, why = qat_drift(results)
    return ("FP32 + the same QAT steps against FP32, per quality: bpp "
            + ", ".join(f"q{q} {v:+.1f} %" for q, v in bpp.items())
            + f"; PSNR within {dpsnr.abs().max():.3f} dB; BD-rate "
            + (f"{drift:+.2f} %" if why is None else f"n/a ({why})"))


def study_headline(folder: Path) -> str:
    """The headline table of the study in ``folder`` (from its ranking.csv and bd_rate.csv) and its QAT gain."""
    for name in ("ranking.csv", "bd_rate.csv", "results.csv"):
        if not (folder / name).is_file():
            raise SystemExit(f"{folder / name} not found; run studies/compare_allocators.py --model "
                             f"{folder.name.removeprefix('compare_')}")
    table = headline_table(pd.read_csv(folder / "ranking.csv"), pd.read_csv(folder / "bd_rate.csv"))
    return f"{table}\n\n{qat_gain(pd.read_csv(folder / 'results.csv'))}"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", nargs="*", default=None, help="families (default: every compare_* folder)")
    p.add_argument("--results", default=str(RESULTS),
                   help="folder of the compare_<model> results (default: %(default)s)")
    args = p.parse_args(argv)
    root = Path(args.results)
    folders = [root / f"compare_{m}" for m in args.model] if args.model else sorted(root.glob("compare_*"))
    if not folders:
        raise SystemExit(f"no compare_* results under {root}; run studies/compare_allocators.py first")
    for folder in folders:
        print(f"### {folder.name.removeprefix('compare_')}\n\n{study_headline(folder)}\n")


if __name__ == "__main__":
    main()
