"""Render the README's headline table of the allocator study from its committed results.

    python studies/headline_table.py                       # every studies/results/compare_*/bd_rate.csv
    python studies/headline_table.py --model mbt2018-mean

One markdown table per model family: per budget and mode, the allocators ranked by BD-rate against FP32
(search time, size, PSNR change, BD-rate against FP32 and against uniform 8-bit PTQ; QAT rows also against
the FP32 model fine-tuned with the same QAT steps). Reads only what
``studies/compare_allocators.py`` wrote; measures nothing itself.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import pandas as pd

RESULTS = Path(__file__).parent / "results"
MODE_ORDER = {"ptq": 0, "qat": 1}


def _pct(value, note: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        for key, why in (("overlap", "no overlap"), ("monotone", "curve not monotone"), ("points", "< 4 points")):
            if key in str(note):
                return f"n/a ({why})"
        return "n/a"
    if value == 0:
        return "0"
    return f"{value:+.0f} %" if abs(value) >= 100 else f"{value:+.2f} %"


def headline(bd: pd.DataFrame) -> str:
    """Markdown rows: budgets high to low, PTQ before QAT, allocators by BD-rate against FP32."""
    bd = bd.assign(_mode=bd["mode"].map(MODE_ORDER).fillna(9),
                   _bd=bd["bd_rate_vs_fp32_pct"].fillna(float("inf")))
    bd = bd.sort_values(["budget", "_mode", "_bd"], ascending=[False, True, True])
    lines = ["| budget (avg bits) | mode | allocator | avg bits | size (Mbit) | solve (ms) | d PSNR (dB) "
             "| BD-rate vs FP32 | BD-rate vs uniform 8 | BD-rate vs FP32 + same QAT |",
             "| ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in bd.itertuples(index=False):
        note = r.note if isinstance(r.note, str) else ""
        ms = 1e3 * r.solve_time_s if hasattr(r, "solve_time_s") else r.solve_time_ms  # bd_rate.csv: seconds
        solve = "-" if math.isnan(ms) else f"{ms:.2f}"
        lines.append(f"| {r.budget:g} | {r.mode.upper()} | {r.allocator} | {r.avg_bits:.2f} | {r.size_mbit:.2f} "
                     f"| {solve} | {r.delta_psnr_db:+.3g} | {_pct(r.bd_rate_vs_fp32_pct, note)} "
                     f"| {_pct(r.bd_rate_vs_uniform8_pct, note)} "
                     f"| {'-' if r.mode != 'qat' else _pct(r.bd_rate_vs_fp32_qat_pct, note)} |")
    return "\n".join(lines)


def qat_gain(results: pd.DataFrame) -> str:
    """What the QAT steps alone do to the float model: bpp and PSNR change per quality (FP32 + QAT vs FP32)."""
    fp = results[results.allocator == "fp32"].pivot(index="quality", columns="mode", values=["bpp", "psnr_rgb"])
    if ("bpp", "qat") not in fp:
        return "(no FP32 + QAT reference in these results)"
    bpp = 100 * (fp["bpp"]["qat"] / fp["bpp"]["ptq"] - 1)
    dpsnr = fp["psnr_rgb"]["qat"] - fp["psnr_rgb"]["ptq"]
    return ("FP32 + the same QAT steps against FP32, per quality: bpp "
            + ", ".join(f"q{q} {v:+.1f} %" for q, v in bpp.items())
            + f"; PSNR within {dpsnr.abs().max():.3f} dB")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", nargs="*", default=None, help="families (default: every compare_* folder)")
    p.add_argument("--results", default=str(RESULTS))
    args = p.parse_args(argv)
    root = Path(args.results)
    folders = ([root / f"compare_{m}" for m in args.model] if args.model
               else sorted(root.glob("compare_*")))
    if not folders:
        raise SystemExit(f"no compare_* results under {root}; run studies/compare_allocators.py first")
    for folder in folders:
        csv = folder / "bd_rate.csv"
        if not csv.is_file():
            raise SystemExit(f"{csv} not found; run studies/compare_allocators.py --model "
                             f"{folder.name.removeprefix('compare_')}")
        print(f"### {folder.name.removeprefix('compare_')}\n")
        print(headline(pd.read_csv(csv)))
        print()
        print(qat_gain(pd.read_csv(folder / "results.csv")))
        print()


if __name__ == "__main__":
    main()
