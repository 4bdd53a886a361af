"""Where a low-bit plan's rate goes, and what bias correction gives back.

    BITALLOC_DATA=../shared/data python studies/rate_breakdown.py                  # the README's numbers
    python studies/rate_breakdown.py --model mbt2018-mean --qualities 3 6 --limit 24

For each quality: the additive ILP's plan at ``--budget`` average bits (``ilp`` alone, without the study's
tie-break within noise) on a cost table measured as the allocator study measures it (noise-aware fit, 8
calibration crops of 256^2 of ``train/``, MSE calibration; kept under ``--cache``). The plan is applied to the
whole model and to each transform alone (g_a, h_a, h_s, g_s: that transform at its plan bits, every other layer
at 16 bits), each without and with bias correction (:func:`bitalloc.correct_bias` on the same calibration crops);
the whole plan also with the correction :func:`bitalloc.choose_bias_correction` chooses (the combination of
transforms whose correction measures best on the calibration crops with the coded rate; ``chosen`` names it).
On the first ``--limit`` Kodak images (cropped to a multiple of 64): the rate of ``y`` and of ``z`` from the
model's likelihoods (bits per pixel), the *coded* rate (``coded_bpp``: the likelihoods at the scales the entropy
coder codes with, its scale table's, :func:`bitalloc.coded_rate`) and the PSNR. ``--real`` adds the entropy-coded
bitstreams (:func:`bitalloc.evaluate`) of FP32 and the whole plan: the likelihood rate is off from them by a few
percent, in either direction, the coded rate by the coder's few bytes per stream; the allocator study measures
real bitstreams.

Writes ``studies/results/rate_breakdown_<model>_b<budget>[_real][_plan].{csv,md,png}`` (``_plan``: with
``--no-parts``).
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
from tqdm.auto import tqdm

from bitalloc import (Budget, CostTable, apply_plan, bd_rate, build_allocator, choose_bias_correction, coded_rate,
                      correct_bias, evaluate, measure_sensitivity, resolve_images)
from bitalloc.atomic import atomic_savefig, atomic_write_text
from bitalloc.harness import StudySpec
from bitalloc.models import load_model
from bitalloc.study_steps import TABLE_FITS, calibration_crops

RESULTS = Path(__file__).resolve().parent / "results"
PARTS = ("g_a", "h_a", "h_s", "g_s")


def plan_table(model, name: str, quality: int, calib: torch.Tensor, cache: Path) -> CostTable:
    """The allocator study's noise-aware cost table (measured once, kept under ``cache``)."""
    path = cache / f"{name}_q{quality}_noise.json"
    if path.is_file():
        return CostTable.from_json(path)
    table = measure_sensitivity(model, calib, bits=StudySpec.candidate_bits, calibration=StudySpec.calibration,
                                progress=False, **TABLE_FITS["noise"])
    path.parent.mkdir(parents=True, exist_ok=True)
    table.to_json(path)
    return table


def _bits(out: dict) -> float:
    return sum(float(-torch.log2(lk).sum()) for lk in out["likelihoods"].values())


def rates(model, images: list[torch.Tensor]) -> dict:
    """Mean y and z bits per pixel (likelihoods), the coded rate (likelihoods at the coder's scales) and PSNR (dB,
    from the mean MSE) over ``images``."""
    y = z = coded = mse = 0.0
    with torch.no_grad():
        for x in images:
            out = model(x)
            pixels = x.shape[-1] * x.shape[-2]
            y += float(-torch.log2(out["likelihoods"]["y"]).sum()) / pixels
            z += float(-torch.log2(out["likelihoods"]["z"]).sum()) / pixels
            mse += float(torch.mean((out["x_hat"].clamp(0, 1) - x) ** 2))
            with coded_rate(model):
                coded += _bits(model(x)) / pixels
    n = len(images)
    return {"y_bpp": y / n, "z_bpp": z / n, "bpp": (y + z) / n, "coded_bpp": coded / n,
            "psnr": 10 * np.log10(1 / (mse / n))}


def coded(model, images: list[torch.Tensor]) -> dict:
    """Mean bpp of the real bitstreams and mean PSNR-RGB over ``images`` (:func:`bitalloc.evaluate`)."""
    frame = evaluate(model, {f"image{i}": x[0] for i, x in enumerate(images)}, progress=False)
    return {"real_bpp": float(frame.bpp.mean()), "real_psnr": float(frame.psnr_rgb.mean())}


CORRECTIONS = {"none": "plain PTQ", "all": "bias corrected", "chosen": "correction chosen"}


def bd_lines(numbers: pd.DataFrame) -> list[str]:
    """BD-rate against FP32 of the whole plan, plain, corrected and with the chosen correction, over the qualities
    measured: on the likelihood rate and the coded rate (PSNR of the mean MSE) and, with ``--real``, on the
    bitstreams (mean PSNR); none with under 4 qualities."""
    fp = numbers[numbers.quantized == "none (FP32)"].sort_values("quality")
    if len(fp) < 4:
        return []
    lines = ["BD-rate of the whole plan against FP32 over the qualities above:", ""]
    for correction, label in CORRECTIONS.items():
        plan = numbers[(numbers.quantized == "whole plan") & (numbers.bias_correction == correction)]
        if plan.empty:
            continue
        plan = plan.sort_values("quality")
        parts = [f"likelihoods {bd_rate(fp.bpp, fp.psnr, plan.bpp, plan.psnr):+.2f} %"]
        if "coded_bpp" in numbers:
            parts.append(f"coded {bd_rate(fp.coded_bpp, fp.psnr, plan.coded_bpp, plan.psnr):+.2f} %")
        if "real_bpp" in numbers:
            parts.append(f"bitstreams {bd_rate(fp.real_bpp, fp.real_psnr, plan.real_bpp, plan.real_psnr):+.2f} %")
        lines.append(f"- {label}: " + ", ".join(parts))
    return [*lines, ""]


def main(argv=None) -> pd.DataFrame:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="bmshj2018-hyperprior")
    p.add_argument("--qualities", type=int, nargs="+", default=[3, 6])
    p.add_argument("--budget", type=float, default=4.0, help="average weight bits of the ILP's plan")
    p.add_argument("--limit", type=int, default=6, help="first N Kodak images")
    p.add_argument("--real", action="store_true",
                   help="also entropy-code the images (real bitstreams, bitalloc.evaluate) for FP32 and the whole plan")
    p.add_argument("--no-parts", action="store_true",
                   help="the whole plan only (no per-transform rows): the BD-rate lines in a third of the time")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--data", default=None)
    p.add_argument("--cache", default="runs/rate_breakdown")
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args(argv)
    if args.limit < 1:
        p.error(f"--limit must be at least 1, got {args.limit}")
    torch.set_num_threads(args.threads)
    calib = calibration_crops(None, StudySpec.calib_images, StudySpec.calib_crop, args.data)
    kodak = [x[None, :, : x.shape[-2] // 64 * 64, : x.shape[-1] // 64 * 64]
             for x in resolve_images(None, root=args.data, limit=args.limit).values()]
    real = (lambda m: coded(m, kodak)) if args.real else (lambda m: {})
    rows = []
    parts = () if args.no_parts else PARTS
    bar = tqdm(total=len(args.qualities) * (2 + 3 + 2 * len(parts)), desc="rate breakdown")
    for q in args.qualities:
        model = load_model(args.model, q, pretrained=StudySpec.pretrained).eval()
        table = plan_table(model, args.model, q, calib, Path(args.cache))
        plan = build_allocator("ilp").allocate(table, Budget.from_avg_bits(table, args.budget)).plan.bits
        rows.append({"quality": q, "quantized": "none (FP32)", "bias_correction": "none", **rates(model, kodak),
                     **real(model)})
        bar.update(2)
        for part in ("all", *parts):
            bits = plan if part == "all" else {n: (b if n.startswith(part + ".") else 16) for n, b in plan.items()}
            for correction in ("none", "all", "chosen") if part == "all" else ("none", "all"):
                qmodel = apply_plan(model, bits, calibration=StudySpec.calibration).eval()
                chosen = {}
                if correction == "all":
                    correct_bias(qmodel, calib)
                elif correction == "chosen":
                    chosen = {"chosen": choose_bias_correction(qmodel, calib).label}
                rows.append({"quality": q, "quantized": "whole plan" if part == "all" else f"{part} alone",
                             "bias_correction": correction, **chosen, **rates(qmodel, kodak),
                             **(real(qmodel) if part == "all" else {})})
                bar.update()
        rows.append({"quality": q, "quantized": "plan bits", "bias_correction": None,
                     **{"plan": " ".join(f"{n}:{b}" for n, b in plan.items())}})
    bar.close()
    frame = pd.DataFrame(rows)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"rate_breakdown_{args.model}_b{args.budget:g}" + ("_real" if args.real else "") + \
        ("_plan" if args.no_parts else "")
    atomic_write_text(out / f"{stem}.csv", frame.to_csv(index=False))
    command = "BITALLOC_DATA=../shared/data python studies/rate_breakdown.py " + shlex.join(
        sys.argv[1:] if argv is None else argv)
    machine = f"{platform.machine()} CPU, {os.cpu_count()} cores, torch {torch.__version__}, {args.threads} threads"
    numbers = frame[frame.quantized != "plan bits"].drop(columns=["plan"], errors="ignore")
    md = [f"# Where the rate of the ILP's {args.budget:g}-bit plan goes: {args.model}", "",
          f"- command: `{command.strip()}`", f"- machine: {machine}",
          f"- Kodak: first {args.limit} images, rate from the likelihoods (bits per pixel), PSNR-RGB"
          + ("; real_bpp / real_psnr: entropy-coded bitstreams (mean over the images)" if args.real else ""),
          "- plan: `ilp` on the study's noise-aware cost table (8 crops of 256^2, MSE calibration); "
          "'<part> alone': that transform at its plan bits, every other layer at 16 bits",
          "- bias_correction: none, all (every quantized layer with a bias, `correct_bias`), chosen (the "
          "transforms `choose_bias_correction` keeps: lowest coded RD loss on the calibration crops; `chosen`)",
          "- coded_bpp: the likelihoods at the entropy coder's scales (`coded_rate`)", "",
          numbers.to_markdown(index=False, floatfmt=".3f"), "", *bd_lines(numbers), "Plans:", "",
          *[f"- q{r.quality}: {r.plan}" for r in frame[frame.quantized == "plan bits"].itertuples()], ""]
    atomic_write_text(out / f"{stem}.md", "\n".join(md))
    (_plot_plan if args.no_parts else _plot)(numbers, out / f"{stem}.png", args.model, args.budget)
    print("\n".join(md))
    return frame


def _plot(frame: pd.DataFrame, path: Path, model: str, budget: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    qualities = sorted(frame.quality.unique())
    fig, axes = plt.subplots(1, len(qualities), figsize=(4.6 * len(qualities), 3.8), squeeze=False)
    for ax, q in zip(axes[0], qualities):
        rows = frame[frame.quality == q]
        fp = rows[rows.quantized == "none (FP32)"].iloc[0]
        labels = [lab for lab in rows.quantized.unique() if lab != "none (FP32)"]
        x = np.arange(len(labels))
        width = 0.27
        for k, (correction, color) in enumerate((("none", "tab:red"), ("all", "tab:green"), ("chosen", "tab:blue"))):
            sub = rows[rows.bias_correction == correction].set_index("quantized")
            at = [i for i, lab in enumerate(labels) if lab in sub.index]
            if not at:
                continue
            sub = sub.loc[[labels[i] for i in at]]
            ax.bar(x[at] + (k - 1) * width, sub.y_bpp, width, color=color, label=CORRECTIONS[correction])
            ax.bar(x[at] + (k - 1) * width, sub.z_bpp, width, bottom=sub.y_bpp, color="k", alpha=0.5)
        ax.axhline(fp.bpp, color="k", ls="--", lw=1, label=f"FP32 ({fp.bpp:.2f} bpp)")
        ax.set_xticks(x, labels, fontsize=8, rotation=20)
        ax.set_title(f"q{q}", fontsize=9)
        ax.set_ylabel("bits per pixel (y; z in grey on top)")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"{model}: rate of the ILP's {budget:g}-bit PTQ plan, whole and per transform", fontsize=10)
    fig.tight_layout()
    atomic_savefig(fig, path)
    plt.close(fig)


def _plot_plan(frame: pd.DataFrame, path: Path, model: str, budget: float) -> None:
    """The whole plan's rate over FP32's (%) per quality and correction: likelihoods, coded rate, bitstreams."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    qualities = sorted(frame.quality.unique())
    rates = [("bpp", "likelihoods", 0.35), ("coded_bpp", "coded rate", 0.65), ("real_bpp", "bitstreams", 1.0)]
    rates = [r for r in rates if r[0] in frame]
    fig, axes = plt.subplots(1, len(qualities), figsize=(3.6 * len(qualities), 3.6), squeeze=False, sharey=True)
    for ax, q in zip(axes[0], qualities):
        rows = frame[frame.quality == q]
        fp = rows[rows.quantized == "none (FP32)"].iloc[0]
        plan = rows[rows.quantized == "whole plan"].set_index("bias_correction")
        corrections = [c for c in CORRECTIONS if c in plan.index]
        x = np.arange(len(corrections))
        width = 0.8 / len(rates)
        for k, (col, label, alpha) in enumerate(rates):
            over = [100 * (plan.loc[c, col] / fp[col] - 1) for c in corrections]
            ax.bar(x + (k - (len(rates) - 1) / 2) * width, over, width, color="tab:blue", alpha=alpha, label=label)
        ax.axhline(0, color="k", lw=0.8)
        ax.set_xticks(x, [CORRECTIONS[c] for c in corrections], fontsize=8, rotation=15)
        ax.set_title(f"q{q}" + (f" (chosen: {plan.loc['chosen', 'chosen']})" if "chosen" in plan.index else ""),
                     fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("rate over FP32's (%)")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"{model}: rate of the ILP's {budget:g}-bit PTQ plan over FP32, by bias correction (PSNR in the "
                 "table)", fontsize=10)
    fig.tight_layout()
    atomic_savefig(fig, path)
    plt.close(fig)


if __name__ == "__main__":
    main()
