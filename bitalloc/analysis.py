"""Analysis of a study's results: BD-rates of each curve against its anchors, rankings, merged results.

Pure pandas on the tables :func:`bitalloc.harness.run_study` returns (``results``: one row per
(quality, allocator, budget, mode) with ``bpp`` and ``psnr_rgb`` from real bitstreams), so studies and notebooks
reuse it on results read back from CSV (sizes as ``size_bits`` from the harness or ``size_mbit`` from a written
``results.csv``). Anchors: ``fp32`` (the float model), ``uniform`` at 8 bits in PTQ mode, and for QAT rows the
float model fine-tuned with the same QAT steps (``fp32`` in mode ``qat``).

Ranking rule (:func:`rank`), per (mode, budget): rows without a BD-rate against FP32 get no rank and come last;
the others are sorted by that BD-rate and cut into tie groups (a group holds the rows within ``tie_pct``
percentage points, default 0.1, of its best row); inside a group the smaller plan ranks first. So a row is never
ranked below one it is no smaller than and no better in BD-rate than (e.g. uniform 8-bit never above a smaller
plan with an equal or better BD-rate), and BD-rate differences under ``tie_pct`` do not outweigh size. The band
is a practical threshold, not a test: on the committed studies the paired bootstrap standard deviation of the
difference between two close allocators' BD-rates over the 24 Kodak images is 0.02-0.23 percentage points
(``studies/bd_rate_noise.py``, ``studies/results/bd_rate_noise.md``).

>>> import pandas as pd
>>> fp = pd.DataFrame({"quality": [1, 2], "bpp": [0.2, 0.4], "psnr_rgb": [30.0, 33.0]})
>>> cur = fp.assign(bpp=[0.22, 0.44], psnr_rgb=[29.5, 32.5])
>>> {k: round(v, 3) for k, v in paired_deltas(fp, cur).items()}
{'delta_psnr_db': -0.5, 'delta_bpp_pct': 10.0}
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

__all__ = ["FP_ALLOCATOR", "NO_QAT_CURVE", "TIE_PCT", "StudyResult", "bd_against", "bd_reason", "bd_table", "curve",
           "merge_results", "paired_deltas", "qat_drift", "rank", "size_mbit"]

FP_ALLOCATOR = "fp32"
#: :func:`qat_drift`'s reason when a study has no float curve in both modes (a PTQ-only study).
NO_QAT_CURVE = "the study has no FP32 curve in both modes"
#: BD-rate differences (percentage points) below which :func:`rank` lets the smaller plan go first.
TIE_PCT = 0.1


@dataclass
class StudyResult:
    results: pd.DataFrame          # one row per (quality, allocator, budget, mode), reference cells included
    images: pd.DataFrame           # one row per (cell, image)
    bd: pd.DataFrame               # BD-rate of each (allocator, budget, mode) curve vs FP32 and vs uniform 8-bit
    ranking: pd.DataFrame          # allocators ranked per (budget, mode)
    plans: dict = field(default_factory=dict)  # (quality, allocator, budget, mode) -> BitPlan
    settings: dict = field(default_factory=dict)  # what spec.json records: the spec and its input fingerprints
    warnings: list | None = None  # [{"cell": ..., "message": ...}] collected while the study ran (None: not collected)
    recovered: pd.DataFrame | None = None  # the QAT-aware tables' measured cells, with a quality column ("+qat")


def curve(results: pd.DataFrame, allocator: str, budget, mode: str) -> pd.DataFrame:
    """The rows of one (allocator, budget, mode) curve, by quality (``budget=None``: the rows without one)."""
    sel = (results.allocator == allocator) & (results["mode"] == mode)
    sel &= results.budget.isna() if budget is None else (results.budget == budget)
    return results[sel].sort_values("quality")


def paired_deltas(anchor: pd.DataFrame, cur: pd.DataFrame) -> dict[str, float]:
    """Mean PSNR change (dB) and mean bpp change (%) of ``cur`` against ``anchor`` at equal quality."""
    paired = cur.merge(anchor[["quality", "bpp", "psnr_rgb"]], on="quality", suffixes=("", "_anchor"))
    return {"delta_psnr_db": float((paired.psnr_rgb - paired.psnr_rgb_anchor).mean()),
            "delta_bpp_pct": float(100 * (paired.bpp / paired.bpp_anchor - 1).mean())}


def bd_against(anchor: pd.DataFrame, cur: pd.DataFrame, name: str, *, psnr: bool = False
               ) -> tuple[dict[str, float], str | None]:
    """``{f"bd_rate_vs_{name}_pct": ...}`` (and ``bd_psnr_vs_{name}_db`` with ``psnr``) of ``cur`` against
    ``anchor`` (PCHIP over PSNR-RGB), with NaN and the reason (second item) when no BD-rate exists."""
    from .bdrate import bd_psnr, bd_rate

    keys = [f"bd_rate_vs_{name}_pct"] + ([f"bd_psnr_vs_{name}_db"] if psnr else [])
    try:
        out = {keys[0]: bd_rate(anchor.bpp, anchor.psnr_rgb, cur.bpp, cur.psnr_rgb)}
        if psnr:
            out[keys[1]] = bd_psnr(anchor.bpp, anchor.psnr_rgb, cur.bpp, cur.psnr_rgb)
        return out, None
    except ValueError as exc:
        return dict.fromkeys(keys, float("nan")), str(exc)


def bd_reason(note) -> str:
    """A short reason for a missing BD-rate from :func:`bd_against`'s message ('' for none)."""
    if not isinstance(note, str) or not note:
        return ""
    side = "anchor " if note.startswith("anchor") else ""
    for key, why in (("not monotone", "curve not monotone"), ("need at least", "curve has fewer than 4 points"),
                     ("distinct", "curve repeats a rate"), ("finite", "curve has a non-finite value")):
        if key in note:
            return side + why
    if "do not overlap" in note:
        return "no rate overlap with the anchor"
    return note.split(":")[0][:60]


def size_mbit(rows: pd.DataFrame) -> pd.Series:
    """Model size in Mbit of ``rows``: their ``size_mbit``, else ``size_bits / 1e6`` (the harness's unit)."""
    if "size_mbit" in rows:
        return rows.size_mbit.astype(float)
    return rows.size_bits.astype(float) / 1e6


def bd_table(results: pd.DataFrame) -> pd.DataFrame:
    """BD-rate (PCHIP over PSNR-RGB) of each (allocator, budget, mode) curve against FP32 and uniform 8-bit."""
    anchors = {"fp32": curve(results, FP_ALLOCATOR, None, "ptq"), "uniform8": curve(results, "uniform", 8.0, "ptq"),
               # QAT rows also against the float model fine-tuned for the same steps (their gain includes it)
               "fp32_qat": curve(results, FP_ALLOCATOR, None, "qat")}
    out = []
    cells = results[results.allocator != FP_ALLOCATOR]
    for (allocator, budget, mode), cur in cells.groupby(["allocator", "budget", "mode"], sort=False):
        cur = cur.sort_values("quality")
        max_bits = cur.max_avg_bits if "max_avg_bits" in cur else pd.Series(dtype=float)
        entry = {"allocator": allocator, "budget": budget, "mode": mode, "num_points": len(cur),
                 "avg_bits": cur.avg_bits.mean(),
                 "max_avg_bits": float(max_bits.fillna(cur.avg_bits).max()) if len(max_bits) else cur.avg_bits.max(),
                 "compression_ratio": cur.compression_ratio.mean(),
                 "size_mbit": float(size_mbit(cur).mean()), "solve_time_s": float(cur.solve_time_s.mean())}
        if "plan_excess" in cur:
            entry["plan_excess_max"] = float(cur.plan_excess.max())
        if "budget_used_pct" in cur:
            entry["budget_used_pct_min"] = float(cur.budget_used_pct.min())
        entry.update(paired_deltas(anchors["fp32"], cur))
        for name, anchor in anchors.items():
            if name == "fp32_qat" and (mode != "qat" or anchor.empty):
                entry[f"bd_rate_vs_{name}_pct"] = float("nan")
                continue
            values, note = bd_against(anchor, cur, name)
            entry.update(values)
            if note is not None:
                entry.setdefault("note", note)
        out.append(entry)
    return pd.DataFrame(out)


def qat_drift(results: pd.DataFrame) -> tuple[float, str | None]:
    """BD-rate (%) of the float model fine-tuned with the study's QAT steps against the float checkpoints: how far
    from converged the checkpoints are (0 for converged ones; a negative value is the share of every QAT row's gain
    that is only more training). NaN and the reason when the study has no QAT float curve or no BD-rate exists.

    >>> import pandas as pd
    >>> rows = pd.DataFrame({"allocator": "fp32", "budget": None, "quality": [1, 2, 3, 4] * 2,
    ...                      "mode": ["ptq"] * 4 + ["qat"] * 4, "bpp": [0.2, 0.3, 0.4, 0.5] * 2,
    ...                      "psnr_rgb": [27.0, 28.0, 29.0, 30.0, 27.5, 28.5, 29.5, 30.5]})
    >>> round(qat_drift(rows)[0], 1)
    -14.0
    """
    fp, tuned = curve(results, FP_ALLOCATOR, None, "ptq"), curve(results, FP_ALLOCATOR, None, "qat")
    if fp.empty or tuned.empty:
        return float("nan"), NO_QAT_CURVE
    values, note = bd_against(fp, tuned, "fp32")
    return values["bd_rate_vs_fp32_pct"], note


def rank(bd: pd.DataFrame, tie_pct: float = TIE_PCT) -> pd.DataFrame:
    """Allocators ranked per (mode, budget) by the rule in the module docstring; unranked rows (no BD-rate) keep
    an empty ``rank`` and their ``note``."""
    key = "bd_rate_vs_fp32_pct"
    cols = ["mode", "budget", "rank", "tied_with_above", "allocator", key, "bd_rate_vs_uniform8_pct", "size_mbit",
            "avg_bits", "solve_time_s", "note"]
    if bd.empty:
        return pd.DataFrame(columns=cols)
    parts = []
    for _, group in bd.groupby(["mode", "budget"], sort=False):
        real = group[group[key].notna()].sort_values([key, "size_mbit", "allocator"])
        tie, best = [], None
        for value in real[key]:
            if best is None or value - best >= tie_pct:
                best = value
            tie.append(best)
        real = real.assign(_tie=tie).sort_values(["_tie", "size_mbit", key, "allocator"])
        real["tied_with_above"] = real._tie.eq(real._tie.shift())
        real = real.drop(columns="_tie")
        real["rank"] = range(1, len(real) + 1)
        missing = group[group[key].isna()].sort_values(["size_mbit", "allocator"]).assign(rank=None,
                                                                                           tied_with_above=False)
        parts += [real, missing]
    ranked = pd.concat(parts, ignore_index=True)
    ranked["rank"] = ranked["rank"].astype("Int64")
    ranked = ranked.sort_values(["mode", "budget"], ascending=[True, False], kind="stable")
    return ranked.reindex(columns=cols).reset_index(drop=True)


def merge_results(*parts: StudyResult) -> StudyResult:
    """One result from several studies of the same model (e.g. a PTQ run and a QAT run); BD-rates recomputed."""
    if not parts:
        raise ValueError("merge_results needs at least one StudyResult")
    cell = ["model", "quality", "allocator", "budget", "mode"]
    results = pd.concat([p.results for p in parts]).drop_duplicates(subset=cell).reset_index(drop=True)
    images = pd.concat([p.images for p in parts]).drop_duplicates(subset=[*cell, "image"]).reset_index(drop=True)
    bd = bd_table(results)
    plans = {k: v for p in parts for k, v in p.plans.items()}
    collected = [p.warnings for p in parts if getattr(p, "warnings", None) is not None]
    found = [w for ws in collected for w in ws] if collected else None
    frames = [p.recovered for p in parts if getattr(p, "recovered", None) is not None]
    recovered = (pd.concat(frames).drop_duplicates(subset=["quality", "layer", "bits"]).reset_index(drop=True)
                 if frames else None)
    return StudyResult(results, images, bd, rank(bd), plans, {"parts": [p.settings for p in parts]}, found,
                       recovered)
