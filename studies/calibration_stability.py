"""Do plans chosen from two disjoint calibration sets of equal size give the same Kodak BD-rate?

    BITALLOC_DATA=../shared/data python studies/calibration_stability.py                    # the README's numbers
    python studies/calibration_stability.py --model mbt2018-mean --budget 6 --allocators ilp iqp

FMPQ leaves robustness to the calibration set open; issue 12 asks that the BD-rate of the plans chosen from two
disjoint calibration sets differ by at most 0.5 points at the 6-bit budget. For each cost-table fit (``clip``:
today's additive max(zeta, 0); ``noise``: standard errors, monotone fit, ties within noise broken toward the
bigger plan) and each calibration set (set A: the first ``calib_images`` training photos, the harness default;
set B: the next ``calib_images``, ``calib_offset=calib_images``), the harness (:func:`bitalloc.harness.run_study`,
PTQ) measures the tables, allocates with each allocator and entropy-codes Kodak. Per (allocator, fit): BD-rate
against FP32 on each set, their difference, and how much of the weights get the same bit-width in both sets'
plans (parameter-weighted, mean over qualities).

``--verify-correction context --verify-max-evals N`` runs the ``+verify`` allocators as the in-context repair
(file names get ``_context``). Cells are cached under ``--cache`` (the same cache as
``studies/compare_allocators.py``). Writes
``studies/results/calibration_stability_<model>.{csv,md,png}``.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from bitalloc.atomic import atomic_savefig, atomic_write_text
from bitalloc.harness import StudySpec, run_study
from bitalloc.models import lambda_of, load_model
from bitalloc.repair import CORRECTIONS, split_verify
from bitalloc.report import layer_frame

RESULTS = Path(__file__).resolve().parent / "results"


def stability_table(results: dict, allocators, budget: float, params: dict) -> pd.DataFrame:
    """One row per (allocator, fit) from ``results[(fit, set)]`` (StudyResult), sets "A" and "B" (the study's
    own uniform 8-bit anchor rows are left out: they do not depend on the calibration set's plan choice). With
    held-out photos confirming the repairs, ``repairs_kept_A`` / ``_B``: of the qualities whose repair had to be
    confirmed, how many the held-out photos kept ("kept/confirmed")."""
    rows = []
    for fit in sorted({f for f, _ in results}):
        a, b = results[(fit, "A")], results[(fit, "B")]
        for allocator in allocators:
            ra = a.bd[(a.bd.allocator == allocator) & (a.bd.budget == budget)].iloc[0]
            rb = b.bd[(b.bd.allocator == allocator) & (b.bd.budget == budget)].iloc[0]
            keys = sorted(k for k in a.plans if k[1] == allocator and k[2] == budget and k in b.plans)
            same = [a.plans[k].agreement(b.plans[k], params[k[0]])[0] for k in keys]
            rows.append({"allocator": allocator, "table_fit": fit, "budget": budget,
                         "bd_rate_vs_fp32_A_pct": ra.bd_rate_vs_fp32_pct,
                         "bd_rate_vs_fp32_B_pct": rb.bd_rate_vs_fp32_pct,
                         "abs_diff_points": abs(ra.bd_rate_vs_fp32_pct - rb.bd_rate_vs_fp32_pct),
                         "same_bits_share": float(np.mean(same)) if same else np.nan,
                         "avg_bits_A": ra.avg_bits, "avg_bits_B": rb.avg_bits,
                         **{f"repairs_kept_{name}": _kept(res, allocator, budget) for name, res in (("A", a), ("B", b))
                            if "verify_holdout_kept" in res.results}})
    return pd.DataFrame(rows)


def repair_effects(results: dict, allocators, budget: float) -> pd.DataFrame:
    """What each repair changed, per (fit, set, quality): for every ``X+verify`` with ``X`` also run, the joint loss
    increase on the calibration crops (``plan_measured_cost``, a fraction of the float loss) and the Kodak RD loss
    (lambda * 255^2 * MSE + bpp, mean over the images, the loss the models are trained on) of the repaired plan
    against X's; and, per (fit, set), the change of BD-rate against FP32 in points. Empty rows when the repair kept
    X's plan are left out."""
    rows = []
    for (fit, name), res in sorted(results.items()):
        cells, images = res.results, res.images
        images = images[(images.budget == budget) & (images["mode"] == "ptq")].copy()
        images["rd_loss"] = [lambda_of(int(q)) * 255 ** 2 * 10 ** (-p / 10) + b
                             for q, p, b in zip(images.quality, images.psnr_rgb, images.bpp)]
        kodak = images.groupby(["allocator", "quality"]).rd_loss.mean()
        for allocator in allocators:
            inner, verify = split_verify(allocator)
            if not verify or inner not in allocators:
                continue
            bd = res.bd[(res.bd.budget == budget) & (res.bd["mode"] == "ptq")].set_index("allocator")
            for q in sorted(cells.quality.unique()):
                mine, base = (cells[(cells.allocator == a) & (cells.quality == q) & (cells.budget == budget)].iloc[0]
                              for a in (allocator, inner))
                if res.plans[(q, allocator, budget, "ptq")] == res.plans[(q, inner, budget, "ptq")]:
                    continue
                rows.append({"table_fit": fit, "set": name, "repair": allocator, "quality": int(q),
                             "calib_loss_change": mine.plan_measured_cost - base.plan_measured_cost,
                             "kodak_rd_loss_change_pct": 100 * (kodak[(allocator, q)] / kodak[(inner, q)] - 1),
                             "bd_rate_change_points": bd.loc[allocator, "bd_rate_vs_fp32_pct"]
                             - bd.loc[inner, "bd_rate_vs_fp32_pct"]})
    return pd.DataFrame(rows)


def _kept(result, allocator: str, budget: float) -> str:
    """"kept/confirmed" of ``allocator``'s repairs at ``budget`` (rows without a repair to confirm not counted)."""
    rows = result.results
    held = rows[(rows.allocator == allocator) & (rows.budget == budget)].verify_holdout_kept.dropna()
    return f"{int((held == 'best').sum())}/{len(held)}" if len(held) else ""


def main(argv=None) -> pd.DataFrame:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="bmshj2018-hyperprior")
    p.add_argument("--budget", type=float, default=6.0, help="average weight bits")
    p.add_argument("--allocators", nargs="+", default=["ilp", "iqp"])
    p.add_argument("--fits", nargs="+", default=["clip", "noise"], choices=("clip", "noise"))
    p.add_argument("--qualities", type=int, nargs="+", default=[1, 3, 4, 6])
    p.add_argument("--calib-images", type=int, default=StudySpec.calib_images,
                   help="crops per calibration set (set B starts where set A ends)")
    p.add_argument("--limit", type=int, default=None, help="first N Kodak images only")
    p.add_argument("--verify-noise-z", type=float, default=StudySpec.verify_noise_z,
                   help="'+verify' allocators: noise-aware repair (bitalloc.verify_and_repair's noise_z)")
    p.add_argument("--verify-holdout", type=int, default=StudySpec.verify_holdout,
                   help="'+verify' allocators: further photos per set that confirm a repair (each set then spans "
                        "--calib-images + this many photos; set B starts where set A's end)")
    p.add_argument("--verify-correction", default=StudySpec.verify_correction, choices=CORRECTIONS,
                   help="what a repair learns from a measurement (context: in-context repair; needs "
                        "--verify-max-evals of at least the plan's single-layer moves + 2)")
    p.add_argument("--verify-max-evals", type=int, default=StudySpec.verify_max_evals,
                   help="joint-loss measurements per repair")
    p.add_argument("--verify-snap-ties", action="store_true",
                   help="with --verify-correction context: in-context costs within the noise floor are ties")
    p.add_argument("--bias-correction", action="store_true",
                   help="quantized layers' biases corrected (tables, repairs, evaluation; bitalloc.correct_bias)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--data", default=None)
    p.add_argument("--cache", default="runs/compare_allocators")
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    n, held = args.calib_images, args.verify_holdout
    if n < 1:
        p.error(f"--calib-images must be at least 1, got {n}")
    if held < 0:
        p.error(f"--verify-holdout must be at least 0, got {held}")
    results = {}
    for fit in args.fits:
        for name, offset in (("A", 0), ("B", n + held)):
            spec = StudySpec(model=args.model, allocators=tuple(args.allocators), budgets=(args.budget,),
                             modes=("ptq",), qualities=tuple(args.qualities), eval_limit=args.limit,
                             table_fit=fit, calib_images=n, calib_offset=offset,
                             verify_noise_z=args.verify_noise_z, verify_holdout=held,
                             verify_correction=args.verify_correction, verify_max_evals=args.verify_max_evals,
                             verify_snap_ties=args.verify_snap_ties, bias_correction=args.bias_correction)
            results[(fit, name)] = run_study(spec, Path(args.cache) / args.model, data=args.data)
    layers = layer_frame({q: load_model(args.model, q, pretrained=StudySpec.pretrained) for q in args.qualities})
    params = {q: dict(zip(g.layer, g.num_params)) for q, g in layers.groupby("quality")}
    table = stability_table(results, args.allocators, args.budget, params)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = (f"calibration_stability_{args.model}" + ("" if n == StudySpec.calib_images else f"_{n}crops")
            + (f"_verifyz{args.verify_noise_z:g}" if args.verify_noise_z else "")
            + (f"_holdout{held}" if held else "")
            + ("" if args.verify_correction == StudySpec.verify_correction else f"_{args.verify_correction}")
            + ("_ties" if args.verify_snap_ties else "") + ("_biascorr" if args.bias_correction else ""))
    atomic_write_text(out / f"{stem}.csv", table.to_csv(index=False))
    command = "BITALLOC_DATA=../shared/data python studies/calibration_stability.py " + shlex.join(
        sys.argv[1:] if argv is None else argv)
    machine = f"{platform.machine()} CPU, {os.cpu_count()} cores, torch {torch.__version__}, {args.threads} threads"
    md = [f"# Plans from two disjoint calibration sets: {args.model}, {args.budget:g}-bit budget, PTQ", "",
          f"- command: `{command.strip()}`", f"- machine: {machine}",
          f"- set A: the first {n} training photos (harness default), set B: the next {n} (calib_offset={n + held}); "
          f"{StudySpec.calib_crop}^2 centre crops, {StudySpec.calibration} calibration; Kodak "
          f"{'all 24 images' if args.limit is None else f'first {args.limit} images'}, qualities "
          f"{', '.join(map(str, args.qualities))}",
          "- clip: today's additive table (max(zeta, 0)); noise: standard errors, monotone fit, ties within "
          "noise broken toward the bigger plan; same_bits_share: parameter-weighted share of the weights with "
          "equal bits in both sets' plans (mean over qualities)",
          f"- '+verify': noise-aware repair, noise_z={args.verify_noise_z:g}" if args.verify_noise_z else
          "- '+verify': plain repair (noise_z=0)",
          f"- '+verify': correction={args.verify_correction}, at most {args.verify_max_evals} joint-loss "
          "measurements per repair" + (", in-context ties snapped to the noise floor" if args.verify_snap_ties else ""),
          *(["- biases corrected (bitalloc.correct_bias) in tables, repairs and the models evaluated"]
            if args.bias_correction else []),
          *([f"- '+verify': a repair is kept only when it also measures lower on {held} further photos of its set "
             f"(A: photos {n}-{n + held - 1}, B: {2 * n + held}-{2 * n + 2 * held - 1}; verify_holdout={held})"]
            if held else []), "",
          table.to_markdown(index=False, floatfmt=".3f"), ""]
    effects = repair_effects(results, args.allocators, args.budget)
    if len(effects):
        atomic_write_text(out / f"{stem}_repairs.csv", effects.to_csv(index=False))
        md += ["## What each repair changed", "",
               "Per quality whose repaired plan differs from its allocator's: the joint loss increase on the "
               "calibration crops (fraction of the float loss) and the Kodak RD loss (lambda * 255^2 * MSE + bpp, mean "
               "over the images) of the repaired plan against the allocator's, and the BD-rate change of the whole "
               "curve (4 qualities) in points; negative = the repair helped.", "",
               effects.to_markdown(index=False, floatfmt=".4f"), ""]
    atomic_write_text(out / f"{stem}.md", "\n".join(md))
    _plot(table, out / f"{stem}.png", args.model, args.budget, args.verify_noise_z, args.verify_correction,
          ", ".join(what for what, on in (("biases corrected", args.bias_correction),
                                          ("ties snapped", args.verify_snap_ties)) if on))
    print("\n".join(md))
    return table


def _plot(table: pd.DataFrame, path: Path, model: str, budget: float, noise_z: float = 0.0,
          correction: str = StudySpec.verify_correction, pipeline: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    verify = (f", noise_z={noise_z:g}" if noise_z else "") + \
        ("" if correction == StudySpec.verify_correction else f", {correction}")
    labels = [f"{r.allocator}\n({r.table_fit}{verify if 'verify' in r.allocator else ''})" for r in table.itertuples()]
    x = np.arange(len(table))
    fig, ax = plt.subplots(figsize=(max(5.0, 1.3 * len(table)), 3.8))
    ax.bar(x - 0.2, table.bd_rate_vs_fp32_A_pct, 0.4, label="calibration set A")
    ax.bar(x + 0.2, table.bd_rate_vs_fp32_B_pct, 0.4, label="calibration set B")
    ax.axhline(0, color="k", lw=0.6)
    ax.set_xticks(x, labels, fontsize=8)
    ax.set_ylabel("BD-rate vs FP32 [%]")
    ax.set_title(f"{model}, {budget:g}-bit budget, PTQ{' (' + pipeline + ')' if pipeline else ''}: plans from two "
                 "disjoint calibration sets", fontsize=9, wrap=True)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2)  # below the axes: no bar hidden
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    atomic_savefig(fig, path)
    plt.close(fig)


if __name__ == "__main__":
    main()
