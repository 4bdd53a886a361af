"""The data dictionary of a study report: every column of its CSV files and tables, with its unit.

One unit per quantity: model and budget sizes in Mbit (``*_mbit``), a layer's size in bits (``size_bits`` of
``plans.csv``), times in seconds (``*_s``), rates in bits per pixel, PSNR in dB, weight bit-widths in bits per
weight, relative changes in percent (``*_pct``). :func:`to_report_units` renames the harness's raw columns.
"""

from __future__ import annotations

import pandas as pd

__all__ = ["COLUMNS", "describe", "to_report_units"]

#: column -> (unit, meaning)
COLUMNS: dict[str, tuple[str, str]] = {
    "model": ("", "model family (CompressAI name)"),
    "quality": ("", "quality level of the pretrained checkpoint (higher: more bits per pixel)"),
    "allocator": ("", "bit allocator; `fp32` is the float model, `uniform` the same bits in every layer"),
    "budget": ("avg weight bits", "the budget: largest parameter-weighted mean weight bit-width allowed "
                                  "(or a compression ratio when `budget_kind` is `ratio`)"),
    "budget_kind": ("", "`avg_bits` or `ratio`"),
    "mode": ("", "`ptq`: calibration only; `qat`: then fine-tuned with the same QAT steps for every plan"),
    "act_bits": ("bits", "input-activation bit-width of every quantized layer (empty: float activations)"),
    "act_note": ("", "where act_bits comes from when not the study's (DynaQuant: its own quantizers)"),
    "status": ("", "solver status (`optimal`, `feasible`), `reference` for FP32, `dynamic` for DynaQuant"),
    "rank": ("", "place within (mode, budget) by the ranking rule above; empty: no BD-rate to rank by"),
    "tied_with_above": ("", "its BD-rate is within 0.1 percentage points of its tie group's best: the size "
                            "decided its place against the row above"),
    "num_points": ("", "qualities on the curve"),
    "avg_bits": ("bits/weight", "parameter-weighted mean weight bit-width (mean over qualities in summaries)"),
    "max_avg_bits": ("bits/weight", "largest avg_bits over the qualities (DynaQuant: over the images)"),
    "bpp": ("bits/pixel", "mean rate of the real bitstreams over the evaluation images"),
    "psnr_rgb": ("dB", "mean PSNR over RGB of the decoded evaluation images"),
    "ms_ssim_rgb": ("0-1", "mean MS-SSIM over RGB"),
    "qat_final_loss": ("RD loss", "last QAT step's rate-distortion loss (lambda*255^2*MSE + bpp)"),
    "objective": ("frac. RD loss", "the cost table's predicted relative RD-loss increase of the plan"),
    "solve_time_s": ("s", "allocator wall time (mean over qualities in summaries)"),
    "iterations": ("", "allocator iterations (solver dependent)"),
    "size_mbit": ("Mbit", "quantized weights' size, bits x parameters summed (mean over qualities in summaries)"),
    "budget_mbit": ("Mbit", "the largest size the budget allows"),
    "budget_used_pct": ("%", "plan size / the largest size the budget allows x 100 (100: the whole budget used)"),
    "budget_used_pct_min": ("%", "smallest budget_used_pct over the qualities"),
    "compression_ratio": ("x", "FP32 weights' size / quantized size"),
    "plan_predicted_cost": ("frac. RD loss", "the cost table's additive prediction for the whole plan"),
    "plan_measured_cost": ("frac. RD loss", "measured when all the plan's layers are quantized together"),
    "plan_excess": ("frac. RD loss", "measured minus predicted: what the layers' interaction adds"),
    "plan_excess_max": ("frac. RD loss", "largest plan_excess over the qualities"),
    "verify_evaluations": ("", "'+verify': plans measured (the first is the inner allocator's)"),
    "verify_converged": ("", "'+verify': the learned prediction held within the tolerance for the last plan"),
    "verify_start_predicted": ("frac. RD loss", "'+verify': the inner allocator's plan, as the table predicts it"),
    "verify_start_measured": ("frac. RD loss", "'+verify': the inner allocator's plan, measured (never below the "
                              "returned plan's plan_measured_cost)"),
    "verify_learned_predicted": ("frac. RD loss", "'+verify': the repaired plan's joint loss as the learned "
                                 "corrections (or in-context costs) predicted it before it was measured"),
    "pairwise_pairs": ("", "layer pairs with measured interaction terms in the table the allocator saw"),
    "bit_ops": ("bit-ops", "DynaQuant: mean bit-operations per image"),
    "train_time_s": ("s", "DynaQuant training wall time"),
    "final_train_psnr": ("dB", "DynaQuant: PSNR on the last training batch"),
    "delta_psnr_db": ("dB", "mean PSNR change against FP32 at equal quality"),
    "delta_bpp_pct": ("%", "mean bpp change against FP32 at equal quality"),
    "bd_rate_vs_fp32_pct": ("%", "BD-rate (PCHIP, PSNR-RGB) against the FP32 model; lower is better"),
    "bd_rate_vs_uniform8_pct": ("%", "BD-rate against uniform 8-bit PTQ of the same checkpoints"),
    "bd_rate_vs_fp32_qat_pct": ("%", "QAT rows: BD-rate against FP32 fine-tuned with the same QAT steps"),
    "note": ("", "why a BD-rate is missing (the curve or anchor that stopped it)"),
    "cached": ("", "the row came from the study's cache"),
    "image": ("", "evaluation image"),
    "height": ("px", "image height"), "width": ("px", "image width"),
    "num_bytes": ("bytes", "bitstream length"),
    "encoding_time_s": ("s", "entropy encoding wall time"), "decoding_time_s": ("s", "decoding wall time"),
    "layer": ("", "quantized layer (module path)"),
    "order": ("", "the layer's place in data-flow (execution) order, from bitalloc.graph.layer_graph"),
    "bits": ("bits/weight", "the layer's weight bit-width in the plan"),
    "num_params": ("parameters", "weights of the quantized tensor"),
    "size_bits": ("bits", "the layer's quantized size, bits x num_params"),
    "cell": ("", "the study cell a warning came from"), "message": ("", "the warning's text"),
    "category": ("", "the warning's class (e.g. UserWarning)"),
    "filename": ("", "source file that issued the warning"), "lineno": ("", "its line in that file"),
}

_RENAME = {"size_bits": "size_mbit", "budget_bits": "budget_mbit", "encoding_time": "encoding_time_s",
           "decoding_time": "decoding_time_s"}


def to_report_units(df: pd.DataFrame) -> pd.DataFrame:
    """The harness's raw columns in the report's units: sizes in Mbit, times in seconds (suffixes say so)."""
    out = df.copy()
    for col in ("size_bits", "budget_bits"):
        if col in out:
            out[col] = out[col].astype(float) / 1e6
    return out.rename(columns={k: v for k, v in _RENAME.items() if k in out})


def describe(columns) -> list[str]:
    """Markdown rows ``| column | unit | meaning |`` of ``columns`` (each once, in the order given)."""
    rows = ["| column | unit | meaning |", "| --- | --- | --- |"]
    for col in dict.fromkeys(columns):
        unit, meaning = COLUMNS.get(col, ("", "(undocumented column)"))
        rows.append(f"| `{col}` | {unit} | {meaning} |")
    return rows
