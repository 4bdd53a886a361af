"""The tables, figures and dynaquant.md of ``studies/dynaquant_study.py`` (DynaQuant against the static ILP plans).

Reads the per-image frame the study measured (one row per quality, method and Kodak image, with weight ``bits:``
and input ``act:`` bits per layer) and measures nothing itself; the study script imports it from this folder.
"""

from __future__ import annotations

import os
import platform
import shlex
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from bitalloc.atomic import atomic_savefig, atomic_write_text

ARCH = "bmshj2018-hyperprior"
STATIC = ("ilp", "ilp_a8", "ilp_bops")  # the static plans, each evaluated with PTQ and QAT
METHODS = ("fp32", *(f"{k}_{m}" for k in STATIC for m in ("ptq", "qat")), "dynaquant", "dynaquant_ste",
           "dynaquant_wonly")
FLOAT_ACT = 32  # a float input counts 32 bits in the bit-operations


def bits_columns(df: pd.DataFrame) -> list[str]:
    return [c for c in df.columns if c.startswith("bits:")]


def summarize(images: pd.DataFrame) -> pd.DataFrame:
    agg = {"bpp": "mean", "psnr_rgb": "mean", "ms_ssim_rgb": "mean", "avg_bits": "mean", "max_avg_bits": "max",
           "wbit_macs": "mean", "bit_ops": "mean"}
    for extra in ("gamma", "bit_bias", "train_avg_bits", "train_time_s"):
        if extra in images:
            agg[extra] = "first"
    res = images.groupby(["quality", "method"], sort=False).agg({**agg, "image": "count"}).reset_index()
    res = res.rename(columns={"image": "num_images"})
    res["gbit_ops"] = res.bit_ops / 1e9
    res["gwbit_macs"] = res.wbit_macs / 1e9
    res["act_bits_eff"] = res.bit_ops / res.wbit_macs
    return res


def bd_table(results: pd.DataFrame) -> pd.DataFrame:
    """Per method: mean bits and bit-operations, PSNR/bpp change and BD-rate/BD-PSNR against FP32, BD-rate
    against DynaQuant (the harness's analysis helpers, :mod:`bitalloc.analysis`, over methods instead of
    allocators)."""
    from bitalloc.analysis import bd_against, paired_deltas

    fp = results[results.method == "fp32"].sort_values("quality")
    dq = results[results.method == "dynaquant"].sort_values("quality")
    rows = []
    for method in [m for m in METHODS if m != "fp32" and m in set(results.method)]:
        cur = results[results.method == method].sort_values("quality")
        entry = {"method": method, "num_points": len(cur), "avg_bits": cur.avg_bits.mean(),
                 "max_avg_bits": cur.max_avg_bits.max(), "gwbit_macs": cur.gwbit_macs.mean(),
                 "gbit_ops": cur.gbit_ops.mean(), "act_bits_eff": cur.act_bits_eff.mean(), **paired_deltas(fp, cur)}
        notes = []
        for anchor, name, psnr in ((fp, "fp32", True), (dq, "dynaquant", False)):
            values, note = bd_against(anchor, cur, name, psnr=psnr)
            entry.update(values if note is None else {f"bd_rate_vs_{name}_pct": float("nan")})
            notes += [] if note is None else [f"vs {name}: {note}"]
        if method == "dynaquant":
            entry["bd_rate_vs_dynaquant_pct"] = 0.0
        if notes:
            entry["note"] = "; ".join(notes)[:200]
        rows.append(entry)
    return pd.DataFrame(rows)


LIKE_FOR_LIKE = {
    "dynaquant": "DynaQuant: weights {4,6,8} chosen per image, inputs 8 bits",
    "ilp_ptq": "equal weight size, float inputs", "ilp_qat": "equal weight size, float inputs",
    "ilp_a8_ptq": "equal weight size, inputs 8 bits", "ilp_a8_qat": "equal weight size, inputs 8 bits",
    "ilp_bops_ptq": "equal bit-operations, weight size <=", "ilp_bops_qat": "equal bit-operations, weight size <=",
}


def like_for_like(bd: pd.DataFrame) -> pd.DataFrame:
    """DynaQuant and the static plans, with what they are held equal at."""
    cols = ["method", "basis", "avg_bits", "gbit_ops", "act_bits_eff", "bd_rate_vs_fp32_pct",
            "bd_rate_vs_dynaquant_pct"]
    order = {m: i for i, m in enumerate(LIKE_FOR_LIKE)}
    df = bd[bd.method.isin(list(order))].sort_values("method", key=lambda m: m.map(order))
    df = df.assign(basis=df.method.map(LIKE_FOR_LIKE))
    return df[[c for c in cols if c in df]]


def plans_table(images: pd.DataFrame) -> pd.DataFrame:
    """Per quality, the static plans' (weight, input) bits per layer as ``w6a8`` (``w6``: a float input)."""
    from bitalloc.acttable import candidate_label

    rows = []
    for (q, method), cur in images[images.method.isin([f"{k}_ptq" for k in STATIC])].groupby(
            ["quality", "method"], sort=False):
        first = cur.iloc[0]
        rows.append({"quality": q, "plan": method[:-4], **{
            c[5:]: candidate_label(int(first[c]), None if first[f"act:{c[5:]}"] == FLOAT_ACT else
                                   int(first[f"act:{c[5:]}"])) for c in bits_columns(cur)}})
    return pd.DataFrame(rows)


def plot_bits(images: pd.DataFrame, candidates, path: Path) -> None:
    """Stacked bars per dynamic layer: the share of Kodak images that chose each candidate, one panel per
    quality."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dq = images[images.method == "dynaquant"]
    quals = sorted(dq.quality.unique())
    cols = [c for c in bits_columns(dq) if c[5:].split(".")[0] in ("g_a", "h_s", "g_s")
            and c[5:] not in ("g_a.0", "g_s.0")]  # the dynamic layers (the others are fixed at 8 bits)
    fig, axes = plt.subplots(1, len(quals), figsize=(max(6.5, 3.6 * len(quals)), 4.2), squeeze=False,
                             sharey=True)
    colors = plt.cm.viridis(np.linspace(0.15, 0.85, len(candidates)))
    for ax, q in zip(axes[0], quals):
        cur = dq[dq.quality == q]
        bottom = np.zeros(len(cols))
        for b, color in zip(candidates, colors):
            share = np.array([(cur[c] == b).mean() for c in cols])
            ax.bar(range(len(cols)), share, bottom=bottom, color=color, label=f"{b} bits")
            bottom += share
        ax.set_xticks(range(len(cols)), [c[5:] for c in cols], rotation=60, fontsize=7)
        ax.set_title(f"q{q}: {cur.avg_bits.mean():.2f} avg bits", fontsize=9)
    axes[0][0].set_ylabel("share of Kodak images")
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    n_img = dq[dq.quality == quals[0]].shape[0]
    fig.suptitle(f"DynaQuant (DGM): chosen weight bits per layer across {n_img} Kodak images", fontsize=9)
    fig.tight_layout()
    atomic_savefig(fig, path)
    plt.close(fig)


def plot_rd(results: pd.DataFrame, path: Path) -> None:
    """The harness's RD figure (:func:`bitalloc.figures.plot_rd_curves`): PTQ panels with the static plans, QAT
    panels with their QAT and DynaQuant (trained for as many steps), each over its PSNR gap to FP32."""
    from bitalloc.figures import plot_rd_curves

    labels = {"ilp": "ilp (float inputs)", "ilp_a8": "ilp_a8 (8-bit inputs)",
              "ilp_bops": "ilp_bops (DynaQuant's bit-ops)"}
    df = results.assign(
        allocator=results.method.str.replace(r"_(ptq|qat)$", "", regex=True).replace(labels),
        mode=np.where(results.method.str.endswith("_ptq") | (results.method == "fp32"), "ptq", "qat"),
        budget=round(float(results[results.method == "dynaquant"].avg_bits.mean()), 2), budget_kind="avg_bits")
    plot_rd_curves(df, path, model=f"{ARCH} (compact), static plans and DynaQuant",
                   images=int(results.num_images.max()))


def md_table(df: pd.DataFrame, floatfmt=".4g") -> str:
    return df.to_markdown(index=False, floatfmt=floatfmt)


def write_markdown(out: Path, args, results: pd.DataFrame, images: pd.DataFrame, bd: pd.DataFrame,
                   elapsed: float, argv) -> None:
    data = f"BITALLOC_DATA={os.environ['BITALLOC_DATA']} " if os.environ.get("BITALLOC_DATA") else ""
    cmd = f"{data}python studies/dynaquant_study.py" + (" " + shlex.join(argv) if argv else "")
    machine = (f"{platform.machine()} CPU sandbox, {os.cpu_count()} cores shared with other jobs (load average "
               f"{args.load_at_start:.1f} at the start), {args.threads} torch threads, torch {torch.__version__}")
    cols = ["quality", "method", "bpp", "psnr_rgb", "ms_ssim_rgb", "avg_bits", "max_avg_bits", "gwbit_macs",
            "gbit_ops", "act_bits_eff", "gamma", "bit_bias", "train_avg_bits", "train_time_s"]
    res = results[[c for c in cols if c in results]]
    lines = [
        "# DynaQuant against static ILP plans at equal weight size and at equal bit-operations (compact Scale "
        "Hyperprior, Kodak)", "",
        f"Command: `{cmd}`  ",
        f"Machine: {machine}; wall time of this invocation {elapsed / 60:.1f} min (cells cached by an earlier "
        "invocation are reused, not re-timed; `train_time_s` is each training's own time).  ",
        f"Settings: candidates {tuple(args.candidates)}, target {args.target_bits:g} avg bits, {args.steps} "
        f"training steps per model (batch {args.batch_size}, 128x128 crops of train/), Kodak "
        f"{'all 24 images' if args.eval_limit is None else f'first {args.eval_limit} images'}, seed {args.seed}; "
        f"static plans: activation candidates {tuple(args.act_candidates)} for `ilp_bops`, observer "
        f"`{args.act_observer}` on the 8 calibration crops.",
        f"Qualities measured: {', '.join(map(str, args.measured))}"
        + (f"; requested but without a shipped checkpoint: {', '.join(map(str, args.missing))} -- BD-rate needs "
           "4 rate points, so with fewer qualities the BD columns are NaN and `delta_psnr_db` (mean PSNR change "
           "against FP32 at each measured quality) is the comparison." if args.missing else "."),
        "",
        "## Like for like", "",
        "DynaQuant against the static ILP plans held at its weight size (its Kodak average weight bits; float or "
        "8-bit inputs) and at its bit-operations (its Kodak mean MACs x weight bits x input bits, with weight "
        "size no larger). BD-rates: PCHIP over PSNR-RGB, negative is better; `bd_rate_vs_dynaquant_pct` < 0 "
        "means the static plan needs fewer bits than DynaQuant for the same PSNR. `act_bits_eff` = bit-operations "
        "/ (MACs x weight bits): the mean input bit-width weighted by each layer's share (32 for float inputs).",
        "", md_table(like_for_like(bd)), "",
        "## BD-rate against FP32 and DynaQuant (PCHIP over PSNR-RGB; negative is better)", "", md_table(bd), "",
        "## Per quality", "", md_table(res), "",
        "Columns: `avg_bits` parameter-weighted mean weight bits (DynaQuant: mean over the Kodak images of each "
        "image's configuration; the static plans: the plan's), `max_avg_bits` the most expensive image, "
        "`gwbit_macs` 1e9 x sum over layers of MACs x weight bits per image, `gbit_ops` 1e9 x sum over layers "
        "of MACs x weight bits x input-activation bits per image (8 for DynaQuant and the `ilp_a8` plans, the "
        "plan's per layer for `ilp_bops`, 32 for float inputs: `fp32`, `ilp_ptq`/`ilp_qat`, `dynaquant_wonly`), "
        "`act_bits_eff` their ratio, `gamma` the final penalty weight of the dual ascent, `bit_bias` the "
        "calibrated decision bias, `train_avg_bits` the average on 16 fresh 256x256 crops of the training photos "
        "(<= target by construction).", "",
        "## Static plans (weight and input bits per layer)", "",
        "`ilp_a8` is `ilp` with every input at 8 bits; `w6` alone: a float input.", "",
        md_table(plans_table(images)), "",
        "![chosen bits per layer](bits_per_layer.png)", "",
        "![RD curves](rd_curves.png)", "",
        "*rd_curves.png*: top, PTQ of the static plans; bottom, their QAT with DynaQuant (trained for as many "
        "steps); under each, the PSNR gap to FP32 at the same rate.", "",
        "## How to read it", "",
        "* Equal weight size: the ILP budget is DynaQuant's measured Kodak average (`avg_bits` of the "
        "`dynaquant` row), so both spend the same parameter-weighted mean weight bits; DynaQuant's own target "
        "holds on the training distribution, its Kodak average can differ slightly.",
        "* Equal bit-operations: `ilp_bops` is the ILP on a (weight, activation) cost table (every weight "
        f"candidate with every input candidate of {tuple(args.act_candidates)}, measured by "
        "`measure_sensitivity(act_bits=...)` on the calibration crops) under two budgets: bit-operations at most "
        "DynaQuant's Kodak mean at that quality, weight size at most DynaQuant's. Float inputs are not "
        "candidates: the plan is fully integer, as DynaQuant is.",
        "* DynaQuant keeps g_a.0, g_s.0 and h_a at 8 bits (the paper's choice), so its smallest average with "
        "candidates {4,6,8} is about 5.32 bits; the ILP may place any layer at 4 bits.",
        "* DynaQuant stores the 8-bit integers (lower precisions are derived by a rounding right shift), so its "
        "storage is that of an 8-bit model: the dynamic bits lower the compute precision (bit-operations), "
        "not the file. The static plans' average bits is also their storage.",
        "* `ilp_ptq`/`ilp_qat` keep float inputs (weight-only, as before); `ilp_a8_*` and `ilp_bops_*` quantize "
        "every layer's input per tensor (asymmetric, `bitalloc.ActQuantizer`), ranges calibrated once by the "
        "observer and frozen for PTQ; their QAT starts from those ranges and learns them with the weights "
        "(LSQ, `finetune`'s `learn_act_range`, on since the weight scales are learned too).",
        "* The `*_qat` rows are fine-tuned for the same number of steps as DynaQuant trains "
        "(bitalloc.qat.finetune, DGM estimator, learnable scales); `*_ptq` is calibration only.",
        "* `dynaquant_ste` is the same training with the straight-through estimator instead of the DGM "
        "(beta = 2) for weights and activations: the gradient-modulator ablation.",
        "* `dynaquant_wonly` (with `--weights-only`): DynaQuant with float activations, as the weight-only plans, "
        "to separate the cost of the 8-bit activations from that of the dynamic weight bits.",
    ]
    atomic_write_text(out / "dynaquant.md", "\n".join(lines) + "\n")
