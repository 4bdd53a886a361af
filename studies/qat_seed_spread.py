"""How much of a QAT ranking is the seed? The allocator study's QAT rows rerun with other seeds of the QAT
batches, and the spread of each allocator's BD-rate and of the gaps between allocators.

    BITALLOC_DATA=../shared/data python studies/compare_allocators.py --model mbt2018-mean --modes qat \\
        --qat-budgets 4 --allocators convex ilp+verify iqp --dynaquant-budgets --qat-steps 100 --threads 1 \\
        --table-fit noise --seed 1 --out 'studies/results/qat_seed/compare_{model}_seed1'    # and --seed 2
    python studies/qat_seed_spread.py --model mbt2018-mean --budget 4

Seed 0 is the committed study (``studies/results/compare_<model>_noise``); the other seeds are the folders
``studies/results/qat_seed/compare_<model>_seed<N>``. Each seed's BD-rates are against the FP32 model fine-tuned
with the same QAT steps *and the same seed* (``bd_rate_vs_fp32_qat_pct``), so the anchor moves with the batches as
the plans do. Writes ``studies/results/qat_seed/<model>_<budget>bits.md``; measures nothing.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pandas as pd

from bitalloc.atomic import atomic_write_text

RESULTS = Path(__file__).parent / "results"
KEY = "bd_rate_vs_fp32_qat_pct"


def seed_frames(model: str, results: Path = RESULTS, fit: str = "noise") -> dict[int, pd.DataFrame]:
    """``{seed: QAT rows of bd_rate.csv}``: seed 0 from the committed study, the others from qat_seed/."""
    folders = {0: results / f"compare_{model}{'' if fit == 'clip' else '_' + fit}"}
    for folder in sorted((results / "qat_seed").glob(f"compare_{model}_seed*")):
        found = re.fullmatch(rf"compare_{re.escape(model)}_seed(\d+)", folder.name)
        if found:
            folders[int(found.group(1))] = folder
    frames = {}
    for seed, folder in folders.items():
        path = folder / "bd_rate.csv"
        if not path.is_file():
            raise FileNotFoundError(f"seed {seed}: no {path} (run studies/compare_allocators.py first)")
        bd = pd.read_csv(path)
        frames[seed] = bd[bd["mode"] == "qat"]
    return frames


def spread(frames: dict[int, pd.DataFrame], budget: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per allocator: BD-rate per seed, mean, standard deviation (allocators every seed has); and per seed the
    gap of each allocator to the best of that seed (points)."""
    per_seed = {}
    for seed, bd in frames.items():
        cur = bd[(bd.budget == budget)].dropna(subset=[KEY])
        if cur.empty:
            raise ValueError(f"seed {seed}: no QAT rows at the {budget:g}-bit budget")
        per_seed[seed] = cur.set_index("allocator")[KEY]
    table = pd.DataFrame(per_seed).dropna()
    if table.empty:
        raise ValueError(f"no allocator has QAT rows at the {budget:g}-bit budget for every seed "
                         f"({', '.join(str(s) for s in sorted(per_seed))})")
    table = table[sorted(table.columns)]
    seeds = list(table.columns)
    gaps = table - table.min(axis=0)
    summary = table.copy()
    summary.columns = [f"seed {s}" for s in seeds]
    summary["mean"], summary["sd"] = table.mean(axis=1), table.std(axis=1)  # sd: NaN with one seed
    summary["gap to best, mean"] = gaps.mean(axis=1)
    summary["best at seeds"] = [", ".join(str(s) for s in seeds if gaps.loc[a, s] == 0) or "-" for a in table.index]
    return summary.sort_values("mean"), gaps


def pair_gaps(table: pd.DataFrame, seeds: list[int], reference: str) -> pd.DataFrame:
    """Per allocator: its BD-rate minus ``reference``'s, per seed, with mean and sd (points)."""
    cols = [f"seed {s}" for s in seeds]
    diff = table[cols].sub(table.loc[reference, cols], axis=1)
    out = diff.copy()
    out["mean"], out["sd"] = diff.mean(axis=1), diff.std(axis=1)
    return out.drop(index=reference)


def render(model: str, budget: float, summary: pd.DataFrame, seeds: list[int], reference: str) -> str:
    def fmt(v):
        return "" if pd.isna(v) else f"{v:+.2f}" if isinstance(v, float) else str(v)

    def md(frame):
        head = "| allocator | " + " | ".join(frame.columns) + " |"
        rule = "| --- |" + " ---: |" * len(frame.columns)
        rows = ["| " + str(a) + " | " + " | ".join(fmt(v) for v in row) + " |" for a, row in frame.iterrows()]
        return "\n".join([head, rule, *rows])

    diffs = pair_gaps(summary, seeds, reference)
    return "\n".join([
        f"# QAT seed spread: {model}, {budget:g} average weight bits", "",
        f"BD-rate (%) against the FP32 model fine-tuned with the same QAT steps and seed; seeds {seeds} "
        "(seed 0: the committed study). `python studies/qat_seed_spread.py --model "
        f"{model} --budget {budget:g}`.", "", md(summary), "",
        f"Each allocator minus {reference} (points, per seed; negative: better than {reference}):", "",
        md(diffs), ""])


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="mbt2018-mean")
    p.add_argument("--budget", type=float, default=4.0)
    p.add_argument("--reference", default="convex", help="allocator the others are differenced against")
    p.add_argument("--results", default=str(RESULTS))
    args = p.parse_args(argv)
    results = Path(args.results)
    frames = seed_frames(args.model, results)
    summary, _ = spread(frames, args.budget)
    if args.reference not in summary.index:
        p.error(f"--reference {args.reference!r}: not among the allocators every seed has "
                f"({', '.join(summary.index)})")
    text = render(args.model, args.budget, summary, sorted(frames), args.reference)
    out = results / "qat_seed" / f"{args.model}_{args.budget:g}bits.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, text)
    print(text)


if __name__ == "__main__":
    main()
