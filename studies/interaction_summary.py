"""Issue 12's checks, read off the committed allocator studies: are the interaction-aware allocators
(``iqp`` and the ``+verify`` names: ``ilp+verify``, ``iqp+verify``, ``ilp+verify+qat``) as good as the best
allocator of each table, do their plans' measured joint losses match the predictions, do they use the budget?
And in QAT rows, where the QAT-aware allocators (``+qat``: allocated on costs measured after a short QAT) stand.

    python studies/interaction_summary.py                        # every studies/results/compare_*/ with them
    python studies/interaction_summary.py --model mbt2018-mean

Per (model, mode, budget): the best allocator of the whole table and its BD-rate against FP32, the best
interaction-aware one and its gap to it (percentage points), its ``plan_excess_max`` (measured minus predicted
joint RD loss, fraction of the float loss, worst quality) and the smallest share of the budget any
interaction-aware plan used (QAT rows: also the best QAT-aware one, its gap and plan_excess_max, measured after
its QAT); then, per allocator and PTQ budget, the range over the qualities of measured /
predicted joint loss, where the prediction is at least 1 % of the float loss (the additive allocators beside
them). QAT rows rank by BD-rate against the FP32 model fine-tuned with the same QAT steps (the fair anchor for
them), PTQ rows against FP32. Reads only the CSVs ``studies/compare_allocators.py`` wrote; measures nothing.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from bitalloc.allocation import allocator_parts, split_qat
from bitalloc.harness import StudySpec

RESULTS = Path(__file__).parent / "results"
#: plans predicted to cost less (fraction of the float RD loss) get no ratio: their costs sit in the noise
MIN_PREDICTED = 0.01


def interaction_aware(allocator: str) -> bool:
    """Whether ``allocator`` sees interactions: it optimises pairwise terms, or verifies its plans jointly."""
    inner, verify, _ = allocator_parts(str(allocator))
    return verify or inner in StudySpec.pairwise_allocators  # the allocators a study gives pairwise terms


def best_rows(bd: pd.DataFrame) -> pd.DataFrame:
    """One row per (mode, budget): best allocator of the table, best interaction-aware one, the gap."""
    rows = []
    for (mode, budget), cur in bd.groupby(["mode", "budget"], sort=False):
        key = "bd_rate_vs_fp32_qat_pct" if mode == "qat" else "bd_rate_vs_fp32_pct"
        cur = cur.dropna(subset=[key])
        aware = cur[cur.allocator.map(interaction_aware)]
        if cur.empty or aware.empty:
            continue
        best, mine = cur.loc[cur[key].idxmin()], aware.loc[aware[key].idxmin()]
        row = {"mode": mode, "budget": budget, "anchor": "FP32 + same QAT" if mode == "qat" else "FP32",
               "best_allocator": best.allocator, "best_bd_pct": best[key],
               "best_aware": mine.allocator, "aware_bd_pct": mine[key],
               "gap_points": mine[key] - best[key],
               "aware_plan_excess_max": mine.get("plan_excess_max"),
               "aware_budget_used_min_pct": aware.get("budget_used_pct_min", pd.Series(dtype=float)).min()}
        qat_aware = cur[cur.allocator.map(lambda a: split_qat(a)[1])]
        if not qat_aware.empty:
            top = qat_aware.loc[qat_aware[key].idxmin()]
            row.update(best_qat_aware=top.allocator, qat_aware_bd_pct=top[key],
                       qat_aware_gap_points=top[key] - best[key], qat_aware_plan_excess_max=top.get("plan_excess_max"))
        rows.append(row)
    return pd.DataFrame(rows)


def prediction_ratios(results: pd.DataFrame, min_predicted: float = MIN_PREDICTED) -> pd.DataFrame:
    """Per PTQ (allocator, budget): the range over qualities of measured / predicted joint loss, over the plans
    predicted to cost at least ``min_predicted`` (a ratio of two costs inside measurement noise says nothing)."""
    cur = results[(results["mode"] == "ptq") & (results.plan_predicted_cost >= min_predicted)]
    ratio = cur.plan_measured_cost / cur.plan_predicted_cost
    out = cur.assign(ratio=ratio).groupby(["budget", "allocator"]).ratio.agg(["min", "max"]).reset_index()
    return out.rename(columns={"min": "ratio_min", "max": "ratio_max"})


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", nargs="*", default=None, help="families (default: every compare_<family> folder)")
    p.add_argument("--results", default=str(RESULTS))
    args = p.parse_args(argv)
    root = Path(args.results)
    folders = ([root / f"compare_{m}" for m in args.model] if args.model
               else sorted(f for f in root.glob("compare_*") if f.is_dir()))
    shown = 0
    for folder in folders:
        for name in ("bd_rate.csv", "results.csv"):
            if not (folder / name).is_file():
                raise SystemExit(f"{folder / name} not found; run studies/compare_allocators.py")
        bd = pd.read_csv(folder / "bd_rate.csv")
        if not bd.allocator.map(interaction_aware).any():
            continue
        shown += 1
        print(f"## {folder.name}\n")
        print(best_rows(bd).to_markdown(index=False, floatfmt=".3g"), "\n")
        print(prediction_ratios(pd.read_csv(folder / "results.csv")).to_markdown(index=False, floatfmt=".3g"), "\n")
    if not shown:
        raise SystemExit("no study with interaction-aware allocators found")


if __name__ == "__main__":
    main()
