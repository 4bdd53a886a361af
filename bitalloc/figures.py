"""The three figures of a study report (matplotlib, Agg; written with :func:`bitalloc.atomic.atomic_savefig`).

- :func:`plot_rd_curves`: per mode and budget, PSNR over bpp of every allocator with the FP32 curve, and under
  it the PSNR gap to FP32 at the same bpp (where the 8-bit curves, on top of the FP32 line above, come apart).
- :func:`plot_bd_vs_size`: BD-rate against FP32 over model size, on a symmetric-log axis (linear within
  +-1 %) that shows the 8-bit spread (tenths of a percent) and the 4-bit PTQ values (100+ %) together.
- :func:`plot_bit_heatmaps`: bits per layer of every allocator, one panel per quality (rows) and budget
  (columns), layers in data-flow order labelled with their parameter counts.

Curves that coincide (allocators returning the same plan) are drawn once with the names joined by "=".
Torch-free: layer order and sizes come in as a frame (:func:`bitalloc.report.layer_frame` builds it).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .atomic import atomic_savefig

__all__ = ["gap_to_anchor", "plot_bd_vs_size", "plot_bit_heatmaps", "plot_rd_curves"]

_COLORS = {"fp32": "black", "uniform": "#7f7f7f", "fmpq": "#1f77b4", "ilp": "#d62728", "convex": "#2ca02c",
           "greedy": "#ff7f0e", "dynaquant": "#9467bd", "iqp": "#8c564b", "ilp+verify": "#e377c2"}
_MARKERS = "osD^vP*Xh<>"


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _style(allocators) -> dict[str, tuple[str, str]]:
    """A fixed (colour, marker) per allocator, the same in every figure of a report."""
    import matplotlib

    spare = iter(c for c in matplotlib.colormaps["tab10"].colors if c not in _COLORS.values())
    out = {}
    for i, name in enumerate(sorted(set(allocators))):
        out[name] = (_COLORS.get(name) or next(spare, "#17becf"), _MARKERS[i % len(_MARKERS)])
    return out


def _merged_curves(df: pd.DataFrame, x: str, y: str) -> list[tuple[str, pd.DataFrame]]:
    """``[(label, curve)]`` by quality, allocators with identical (x, y) points joined as "a = b"."""
    seen: dict[tuple, list] = {}
    for allocator, cur in df.groupby("allocator", sort=False):
        cur = cur.sort_values("quality")
        key = tuple(np.round(cur[[x, y]].to_numpy(float), 10).ravel())
        seen.setdefault(key, [[], cur])[0].append(allocator)
    return [(" = ".join(names), cur) for names, cur in seen.values()]


def gap_to_anchor(anchor_bpp, anchor_psnr, bpp) -> tuple[np.ndarray, np.ndarray]:
    """FP32 PSNR at ``bpp`` (PCHIP over log bpp inside the anchor's range, the end segment's line beyond it) and
    a mask of the extrapolated points; NaN everywhere when the anchor has fewer than two distinct rates."""
    from scipy.interpolate import PchipInterpolator

    rate, inverse = np.unique(np.log(np.asarray(anchor_bpp, float)), return_inverse=True)
    ya = np.bincount(inverse, np.asarray(anchor_psnr, float)) / np.bincount(inverse)  # equal rates: mean PSNR
    x = np.log(np.asarray(bpp, float))
    if len(rate) < 2 or not np.isfinite(rate).all():
        return np.full(x.shape, np.nan), np.ones(x.shape, bool)
    out = PchipInterpolator(rate, ya, extrapolate=False)(x)
    lo, hi = x < rate[0], x > rate[-1]
    out[lo] = ya[0] + (x[lo] - rate[0]) * (ya[1] - ya[0]) / (rate[1] - rate[0])
    out[hi] = ya[-1] + (x[hi] - rate[-1]) * (ya[-1] - ya[-2]) / (rate[-1] - rate[-2])
    return out, lo | hi


def _budget_label(budget: float, kind: str) -> str:
    return f"{budget:g} avg weight bits" if kind == "avg_bits" else f"compression ratio {budget:g}x"


def plot_rd_curves(results: pd.DataFrame, path: Path, model: str = "", images: int | None = None) -> None:
    """Per mode, a row of RD panels (one per budget, FP32 dashed) over a row of PSNR-gap-to-FP32 panels;
    ``images``: how many images each point averages (named in the title)."""
    plt = _plt()
    fp = results[(results.allocator == "fp32") & (results["mode"] == "ptq")].sort_values("quality")
    cells = results[results.allocator != "fp32"]
    modes = sorted(cells["mode"].unique(), key=lambda m: (m != "ptq", m))
    budgets = sorted(cells.budget.unique(), reverse=True)
    kind = str(cells.budget_kind.iloc[0]) if "budget_kind" in cells and len(cells) else "avg_bits"
    style = _style(cells.allocator)
    nrow, ncol = 2 * max(1, len(modes)), max(1, len(budgets))
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.3 * ncol, 3.0 * nrow), squeeze=False,
                             gridspec_kw={"height_ratios": [1.3, 1] * (nrow // 2)})
    handles = {}
    for r, mode in enumerate(modes):
        fp_qat = results[(results.allocator == "fp32") & (results["mode"] == mode) & (mode != "ptq")]
        for c, budget in enumerate(budgets):
            ax, gap_ax = axes[2 * r, c], axes[2 * r + 1, c]
            df = cells[(cells["mode"] == mode) & (cells.budget == budget)]
            if df.empty:  # e.g. a QAT-only run: its PTQ row has the uniform 8-bit reference only
                ax.text(0.5, 0.5, f"{mode.upper()}, {_budget_label(budget, kind)}:\nnot run", ha="center",
                        va="center", transform=ax.transAxes, fontsize=9, color="0.4")
                ax.axis("off")
                gap_ax.axis("off")
                continue
            ax.plot(fp.bpp, fp.psnr_rgb, "k--", lw=1.2, label="FP32")
            gap_ax.axhline(0, color="k", ls="--", lw=1.2)
            if len(fp_qat):
                cur = fp_qat.sort_values("quality")
                ax.plot(cur.bpp, cur.psnr_rgb, ":", color="0.4", lw=1.2, label="FP32 + same QAT")
                gap, _ = gap_to_anchor(fp.bpp, fp.psnr_rgb, cur.bpp)
                gap_ax.plot(cur.bpp, cur.psnr_rgb.to_numpy() - gap, ":", color="0.4", lw=1.2)
            for label, cur in _merged_curves(df, "bpp", "psnr_rgb"):
                color, marker = style[label.split(" = ")[0]]
                ax.plot(cur.bpp, cur.psnr_rgb, marker + "-", color=color, ms=4, lw=1, label=label)
                anchor, extra = gap_to_anchor(fp.bpp, fp.psnr_rgb, cur.bpp)
                gap = cur.psnr_rgb.to_numpy() - anchor
                gap_ax.plot(cur.bpp, gap, "-", color=color, lw=1)
                gap_ax.plot(cur.bpp[~extra], gap[~extra], marker, color=color, ms=4)
                gap_ax.plot(cur.bpp[extra], gap[extra], marker, mfc="none", color=color, ms=5)
            for h, lab in zip(*ax.get_legend_handles_labels()):
                handles.setdefault(lab, h)
            ax.set_title(f"{mode.upper()}, {_budget_label(budget, kind)}", fontsize=10)
            ax.legend(fontsize=7, loc="lower right")
            ax.set_ylabel("PSNR-RGB [dB]")
            gap_ax.set_ylabel("PSNR - FP32 at same bpp [dB]", fontsize=8)
            gap_ax.set_xlabel("rate [bpp]")
            for a in (ax, gap_ax):
                a.grid(alpha=0.3)
    over = f" (means over {images} images)" if images else ""
    fig.suptitle(f"{model}: rate-distortion per budget{over}; under each: PSNR gap to FP32 at equal rate "
                 "(hollow markers: outside FP32's rate range, extrapolated)", fontsize=10, wrap=True)
    fig.tight_layout()
    atomic_savefig(fig, path)
    plt.close(fig)


def plot_bd_vs_size(bd: pd.DataFrame, path: Path, model: str = "") -> None:
    """BD-rate against FP32 over model size, one panel per mode, one line per allocator through its budgets, on
    a symmetric-log axis; curves without a BD-rate are marked on the top edge and named with their reason."""
    import matplotlib
    import matplotlib.patches  # noqa: F401 (FancyArrowPatch)
    import matplotlib.transforms as mtransforms

    from .analysis import bd_reason

    plt = _plt()
    modes = sorted(bd["mode"].unique(), key=lambda m: (m != "ptq", m))
    fig, axes = plt.subplots(1, len(modes), figsize=(5.6 * len(modes) + 0.6, 5.2), squeeze=False, sharey=True)
    style = _style(bd.allocator)
    vals = bd.bd_rate_vs_fp32_pct.to_numpy(float)
    vals = vals[np.isfinite(vals)] if np.isfinite(vals).any() else np.array([0.0])
    lo, hi = min(vals.min(), -1.0), max(vals.max(), 1.0)
    lo, hi = (lo * 1.6 if lo < -1 else -1.5), (hi * 1.6 if hi > 1 else 1.5)
    for ax, mode in zip(axes[0], modes):
        sub = bd[bd["mode"] == mode]
        ax.axhline(0, color="k", lw=1, ls="--")
        top = mtransforms.blended_transform_factory(ax.transData, ax.transAxes)
        for budget, grp in sub.groupby("budget"):  # at the budget's cap (the largest plan of the budget)
            ax.text(grp.size_mbit.max(), 1.01, f"{budget:g}-bit budget", transform=top, ha="center",
                    va="bottom", fontsize=7, color="0.3")
        missing = []
        for allocator, cur in sub.groupby("allocator", sort=True):
            color, marker = style[allocator]
            cur = cur.sort_values("size_mbit")
            ok = cur[cur.bd_rate_vs_fp32_pct.notna()]
            ax.plot(ok.size_mbit, ok.bd_rate_vs_fp32_pct, marker + "-", color=color, lw=1, ms=6, alpha=0.85,
                    label=allocator)
            for r in cur[cur.bd_rate_vs_fp32_pct.isna()].itertuples():
                ax.plot(r.size_mbit, 1.0, marker, color=color, mfc="none", ms=8, transform=top, clip_on=False)
                missing.append(f"{allocator} at {r.budget:g} bits: {bd_reason(getattr(r, 'note', '')) or 'none'}")
        if missing:
            ax.text(0.0, -0.13, "no BD-rate (hollow marker on the top edge): " + "; ".join(missing),
                    transform=ax.transAxes, va="top", fontsize=7.5, wrap=True)
        ax.set_yscale("symlog", linthresh=1.0, linscale=1.0)
        ticks = [t for t in (-50, -20, -10, -5, -2, -1, -0.5, 0, 0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500)
                 if lo <= t <= hi]
        ax.set_yticks(ticks, [f"{t:g}" for t in ticks])
        ax.set_ylim(lo, hi)
        ax.set_xlabel("weights size [Mbit] (mean over qualities)")
        ax.set_title(mode.upper(), fontsize=10, pad=14)
        ax.grid(alpha=0.3, which="both")
    axes[0, 0].set_ylabel("BD-rate vs FP32 [%] (lower is better; symlog, linear within +-1 %)")
    handles, labels = axes[0, -1].get_legend_handles_labels()
    for ax in axes[0]:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    fig.legend(handles, labels, loc="center right", fontsize=8, title="allocator")
    fig.text(1 - 0.55 / fig.get_figwidth(), 0.78, "lower\nis\nbetter", ha="center", va="bottom", fontsize=9)
    fig.add_artist(matplotlib.patches.FancyArrowPatch((1 - 0.55 / fig.get_figwidth(), 0.77),
                                                      (1 - 0.55 / fig.get_figwidth(), 0.68),
                                                      transform=fig.transFigure, arrowstyle="-|>",
                                                      mutation_scale=14, color="k"))
    fig.suptitle(f"{model}: BD-rate against FP32 (dashed line) over weights size, one point per budget",
                 fontsize=10, wrap=True)
    fig.tight_layout(rect=(0, 0, 1 - 1.1 / fig.get_figwidth(), 1))
    atomic_savefig(fig, path)
    plt.close(fig)


def _text_color(rgba) -> str:
    """Black on light cells, white on dark ones (relative luminance of the background)."""
    r, g, b = rgba[:3]
    return "black" if 0.2126 * r + 0.7152 * g + 0.0722 * b > 0.45 else "white"


#: inches: a bits heat map wider than this stacks its panels in one column
MAX_HEATMAP_WIDTH = 40.0


def plot_bit_heatmaps(plans: dict, layers: pd.DataFrame, path: Path, model: str = "", mode: str = "ptq",
                      budget_kind: str = "avg_bits") -> None:
    """Bits per layer (columns) of every allocator (rows); one panel per quality (rows) and budget (columns).

    ``plans``: ``{(quality, allocator, budget, mode): BitPlan}`` (only ``mode``'s are drawn); ``layers``: columns
    ``quality, layer, num_params, order`` (data-flow order); a layer it lacks goes last, without a count.
    """
    import matplotlib
    from matplotlib.colors import BoundaryNorm, ListedColormap

    plt = _plt()
    chosen = {k: p for k, p in plans.items() if k[3] == mode}
    qualities = sorted({k[0] for k in chosen})
    budgets = sorted({k[2] for k in chosen}, reverse=True)
    allocators = list(dict.fromkeys(k[1] for k in chosen))
    values = sorted({b for p in chosen.values() for b in p.bits.values()})
    index = {v: i for i, v in enumerate(values)}  # one evenly spaced colour per bit-width that occurs
    cmap = ListedColormap(matplotlib.colormaps["viridis"](np.linspace(0.0, 1.0, len(values))))
    norm = BoundaryNorm(np.arange(len(values) + 1) - 0.5, len(values))
    columns = {}
    for q in qualities:
        names = list(next(p for k, p in chosen.items() if k[0] == q).bits)
        sub = layers[layers.quality == q].set_index("layer") if len(layers) else pd.DataFrame()
        if len(sub):
            pos = {n: i for i, n in enumerate(names)}
            names = sorted(names, key=lambda n: (sub.order.get(n, 1e9), pos[n]))
        params = sub.num_params.to_dict() if len(sub) else {}
        columns[q] = (names, params, [f"{n} ({params[n] / 1e3:.3g}k)" if n in params else n for n in names])
    every_row = len({tuple(c[2]) for c in columns.values()}) > 1  # parameter counts differ between qualities
    width = max(4.0, 0.42 * max(len(c[0]) for c in columns.values()) + 1.6)
    # a panel per (quality, budget): qualities down, budgets across, unless that is too wide to read (a model with
    # many layers, Cheng2020's 48): then every panel in one column, each with its layer names
    stacked = width * len(budgets) > MAX_HEATMAP_WIDTH and len(budgets) > 1
    nrow, ncol = (len(qualities) * len(budgets), 1) if stacked else (len(qualities), len(budgets))
    fig, axes = plt.subplots(nrow, ncol, squeeze=False, layout="constrained",
                             figsize=(width * ncol + 1, (0.3 * len(allocators) + (2.2 if stacked else 0.7)) * nrow
                                      + 1.4))
    for r, q in enumerate(qualities):
        names, params, labels = columns[q]
        for c, budget in enumerate(budgets):
            ax = axes[r * len(budgets) + c, 0] if stacked else axes[r, c]
            rows = [a for a in allocators if (q, a, budget, mode) in chosen]
            bits = np.array([[chosen[(q, a, budget, mode)].bits.get(n, np.nan) for n in names] for a in rows], float)
            grid = np.vectorize(lambda b: index.get(b, np.nan))(bits)
            ax.imshow(grid, aspect="auto", cmap=cmap, norm=norm, interpolation="nearest")
            total = sum(params.get(n, 0) for n in names)
            ylab = [f"{a} ({np.dot(b, [params.get(n, 0) for n in names]) / total:.2f})" if total else a
                    for a, b in zip(rows, bits)]
            ax.set_yticks(range(len(rows)), ylab, fontsize=7)
            show = stacked or every_row or r == len(qualities) - 1
            ax.set_xticks(range(len(names)), labels if show else [], rotation=90, fontsize=7)
            for j in range(1, len(names)):  # a white rule between branches (g_a | h_a | h_s | g_s)
                if names[j].split(".")[0] != names[j - 1].split(".")[0]:
                    ax.axvline(j - 0.5, color="white", lw=2)
            for i in range(bits.shape[0]):
                for j in range(bits.shape[1]):
                    if np.isfinite(bits[i, j]):
                        ax.text(j, i, f"{bits[i, j]:.0f}", ha="center", va="center", fontsize=7,
                                color=_text_color(cmap(norm(grid[i, j]))))
            ax.set_title(f"q{q}, budget {_budget_label(budget, budget_kind)}", fontsize=9)
    bar = fig.colorbar(matplotlib.cm.ScalarMappable(norm=norm, cmap=cmap), ax=axes, ticks=range(len(values)),
                       fraction=0.02, pad=0.01, aspect=40)
    bar.set_ticklabels([str(v) for v in values])
    bar.set_label("weight bits of the layer")
    how = ("layers in data-flow order, (k parameters); row labels: allocator (parameter-weighted avg bits)"
           if len(layers) else "layers in the plans' order (no layer graph given)")
    fig.suptitle(f"{model}: bits per layer of every {mode.upper()} plan; {how}", fontsize=10, wrap=True)
    atomic_savefig(fig, path, bbox_inches="tight")
    plt.close(fig)
