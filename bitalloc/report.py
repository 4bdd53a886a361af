"""Reports of a study: CSV files, a markdown table and matplotlib figures (written atomically)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .atomic import atomic_savefig, atomic_write_text

__all__ = ["write_report", "plot_rd_curves", "plot_bd_vs_size", "plot_bit_heatmap", "settings_line"]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_rd_curves(results: pd.DataFrame, path: Path) -> None:
    """One panel per (budget, mode): PSNR over bpp of each allocator, with the FP32 curve."""
    plt = _plt()
    fp = results[(results.allocator == "fp32") & (results["mode"] == "ptq")].sort_values("quality")
    panels = results[results.allocator != "fp32"].groupby(["mode", "budget"], sort=True)
    n = max(1, panels.ngroups)
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 3.8), squeeze=False)
    for ax, ((mode, budget), df) in zip(axes[0], panels):
        ax.plot(fp.bpp, fp.psnr_rgb, "k--", label="fp32")
        for allocator, cur in df.groupby("allocator"):
            cur = cur.sort_values("quality")
            ax.plot(cur.bpp, cur.psnr_rgb, "o-", ms=3, label=allocator)
        ax.set(title=f"{budget:g} avg bits, {mode}" if df.budget_kind.iloc[0] == "avg_bits"
               else f"ratio {budget:g}, {mode}", xlabel="bpp", ylabel="PSNR-RGB [dB]")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    atomic_savefig(fig, path)
    plt.close(fig)


def plot_bd_vs_size(bd: pd.DataFrame, path: Path) -> None:
    """BD-rate against FP32 over model size, one line per (allocator, mode)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for (allocator, mode), cur in bd.groupby(["allocator", "mode"]):
        cur = cur.sort_values("size_mbit")
        ax.plot(cur.size_mbit, cur.bd_rate_vs_fp32_pct, "o-", ms=4, label=f"{allocator} ({mode})")
    ax.set(xlabel="weights size [Mbit] (mean over qualities)", ylabel="BD-rate vs FP32 [%]")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    atomic_savefig(fig, path)
    plt.close(fig)


def plot_bit_heatmap(plans: dict, quality: int, budget: float, mode: str, path: Path) -> None:
    """Bits per layer (columns) per allocator (rows) for one quality and budget."""
    plt = _plt()
    chosen = {a: p for (q, a, b, m), p in plans.items() if q == quality and b == budget and m == mode}
    if not chosen:
        return
    layers = list(next(iter(chosen.values())).bits)
    grid = np.array([[chosen[a].bits.get(n, np.nan) for n in layers] for a in chosen], dtype=float)
    fig, ax = plt.subplots(figsize=(max(6, 0.28 * len(layers)), 0.5 * len(chosen) + 2))
    im = ax.imshow(grid, aspect="auto", cmap="viridis")
    ax.set_yticks(range(len(chosen)), list(chosen))
    ax.set_xticks(range(len(layers)), layers, rotation=90, fontsize=7)
    for i in range(grid.shape[0]):
        for j in range(grid.shape[1]):
            ax.text(j, i, f"{grid[i, j]:.0f}", ha="center", va="center", fontsize=6, color="w")
    fig.colorbar(im, ax=ax, label="bits")
    ax.set_title(f"bits per layer, quality {quality}, budget {budget:g}, {mode}")
    fig.tight_layout()
    atomic_savefig(fig, path)
    plt.close(fig)


def settings_line(settings: dict) -> str:
    """One line of what a study ran on: images, calibration, candidates, QAT and the weights' fingerprints."""
    inputs = settings.get("inputs", {})
    names = inputs.get("eval_image_names", [])
    shown = ", ".join(names[:3]) + (f", ... {names[-1]}" if len(names) > 3 else "")
    line = (f"Settings: {settings.get('model')} qualities {settings.get('qualities')}, modes {settings.get('modes')}; "
            f"{len(names)} evaluation images ({shown}; sha256 {str(inputs.get('eval_images'))[:12]}); "
            f"{settings.get('calib_images')} calibration crops of {settings.get('calib_crop')} px "
            f"({settings.get('calibration')}); candidate bits {settings.get('candidate_bits')}; "
            f"budgets {settings.get('budgets')} ({settings.get('budget_kind')})")
    if "qat" in settings.get("modes", ()):
        line += f"; QAT {settings.get('qat_steps')} steps at lr {settings.get('qat_lr')}, seed {settings.get('seed')}"
    weights = settings.get("weights") or {}
    if weights:
        line += "; weights sha256 " + ", ".join(f"q{q} {d[:12]}" for q, d in weights.items())
    return line + f"; cache version {settings.get('cost_model_version')}."


def write_report(result, out, command: str = "", machine: str = "") -> Path:
    """Write results.csv, images.csv, bd_rate.csv, ranking.csv, report.md and figures under ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name, df in (("results", result.results), ("images", result.images), ("bd_rate", result.bd),
                     ("ranking", result.ranking)):
        atomic_write_text(out / f"{name}.csv", df.to_csv(index=False))
    plot_rd_curves(result.results, out / "rd_curves.png")
    if not result.bd.empty:
        plot_bd_vs_size(result.bd, out / "bd_rate_vs_size.png")
    if result.plans:
        q, _, b, m = max(result.plans, key=lambda k: (k[0], -k[2]))
        plot_bit_heatmap(result.plans, q, b, m, out / "bits_heatmap.png")
    cols = ["allocator", "budget", "mode", "num_points", "avg_bits", "max_avg_bits", "size_mbit",
            "compression_ratio", "solve_time_ms", "delta_psnr_db", "bd_rate_vs_fp32_pct", "bd_rate_vs_uniform8_pct",
            "bd_rate_vs_fp32_qat_pct", "plan_excess_max"]
    bd = result.bd[[c for c in cols if c in result.bd]] if not result.bd.empty else result.bd
    md = ["# Allocator comparison", ""]
    if command:
        md += [f"Command: `{command}`", ""]
    if machine:
        md += [f"Machine: {machine}", ""]
    settings = getattr(result, "settings", None) or {}
    for part in settings.get("parts", [settings]):
        if part:
            md += [settings_line(part), ""]
    md += ["BD-rate: PCHIP over PSNR-RGB on real bitstreams; anchors are the FP32 model and uniform 8-bit PTQ of the "
           "same checkpoints; QAT rows also against the FP32 model fine-tuned with the same QAT steps "
           "(`bd_rate_vs_fp32_qat_pct`: their gain over FP32 includes that extra RD training). Negative is better. "
           "`avg_bits`/`max_avg_bits`: mean and largest parameter-weighted weight bits over the qualities (for a "
           "dynamic model, the largest per-image average); `delta_psnr_db`: mean PSNR change against FP32 at equal "
           "quality; `plan_excess_max`: the largest (over qualities) fractional RD loss the plan adds on the "
           "calibration crops beyond the cost table's additive prediction (`check_plan`).", "",
           bd.to_markdown(index=False, floatfmt=".3g"), "",
           "Per quality:", "",
           result.results.drop(columns=["model", "budget_kind", "cached"], errors="ignore")
           .to_markdown(index=False, floatfmt=".4g"), ""]
    atomic_write_text(out / "report.md", "\n".join(md))
    return out / "report.md"
