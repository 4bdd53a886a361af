"""Reports of a study: CSV files, ``report.md`` and three figures, all written atomically (mode 0644).

``report.md`` opens with the headline table (per mode and budget, allocators in ranking order: see
:mod:`bitalloc.analysis`), then the figures, the settings, the warnings the study collected, the full BD-rate
table, the per-quality rows and a data dictionary of every column (:mod:`bitalloc.report_columns`). A missing
value is shown as its reason ("n/a (curve not monotone)") or left empty where it does not apply; columns that
are empty in every row (the QAT columns of a PTQ-only run) are left out of the markdown (kept in the CSVs).

Files: ``results.csv`` (per cell), ``images.csv`` (per cell and image), ``bd_rate.csv`` (per curve),
``ranking.csv``, ``plans.csv`` (tidy: one row per quality, allocator, budget, mode and layer), ``warnings.csv``,
``rd_curves.png``, ``bd_rate_vs_size.png``, ``bits_heatmap.png`` (``bits_heatmap_qat.png`` when QAT plans differ).
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from .allocation import split_qat
from .analysis import NO_QAT_CURVE, bd_reason, qat_drift
from .atomic import atomic_write_text
from .figures import plot_bd_vs_size, plot_bit_heatmaps, plot_rd_curves
from .report_columns import describe, to_report_units

__all__ = ["headline_table", "layer_frame", "plans_frame", "qat_aware_section", "settings_line", "write_report"]

_BD = ("bd_rate_vs_fp32_pct", "bd_rate_vs_uniform8_pct", "bd_rate_vs_fp32_qat_pct")


def layer_frame(models: dict) -> pd.DataFrame:
    """``quality, layer, num_params, order`` of ``{quality: model}`` (order: data-flow, from
    :func:`bitalloc.graph.layer_graph`); what :func:`plans_frame` and the heat maps label layers with."""
    from .graph import layer_graph

    rows = []
    for quality, model in models.items():
        g = layer_graph(model)
        rows += [{"quality": quality, "layer": n, "num_params": d["num_params"], "order": d["order"]}
                 for n, d in g.nodes(data=True)]
    return pd.DataFrame(rows, columns=["quality", "layer", "num_params", "order"])


def plans_frame(plans: dict, layers: pd.DataFrame | None = None) -> pd.DataFrame:
    """Tidy plans: ``quality, allocator, budget, mode, layer, order, bits, num_params, size_bits`` per layer
    (layers in data-flow order when ``layers`` has them; ``num_params``/``size_bits`` empty without it)."""
    cols = ["quality", "allocator", "budget", "mode", "layer", "order", "bits", "num_params", "size_bits"]
    rows = [{"quality": q, "allocator": a, "budget": b, "mode": m, "layer": n, "bits": bits, "_pos": i}
            for (q, a, b, m), plan in plans.items() for i, (n, bits) in enumerate(plan.bits.items())]
    df = pd.DataFrame(rows, columns=["quality", "allocator", "budget", "mode", "layer", "bits", "_pos"])
    if layers is not None and len(layers):
        df = df.merge(layers[["quality", "layer", "num_params", "order"]], on=["quality", "layer"], how="left")
        df["size_bits"] = df.bits * df.num_params
        df = df.sort_values(["quality", "mode", "budget", "allocator", "order", "_pos"],
                            ascending=[True, True, False, True, True, True])
    return df.drop(columns="_pos").reindex(columns=cols).reset_index(drop=True)


def _num(value, fmt: str = ".3g", missing: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return missing
    return format(value, fmt) if isinstance(value, (int, float)) else str(value)


def _pct(value, note) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return f"n/a ({bd_reason(note)})" if bd_reason(note) else "n/a"
    return f"{value:+.0f}" if abs(value) >= 100 else f"{value:+.2f}"


def _markdown(df: pd.DataFrame, notes: pd.Series | None = None, fmt: str = ".4g") -> str:
    """A markdown table of ``df`` without bare NaN: BD-rates show their reason, other gaps stay empty."""
    df = df.dropna(axis=1, how="all")
    out = ["| " + " | ".join(df.columns) + " |", "|" + "|".join(" --- " for _ in df.columns) + "|"]
    for i, (_, row) in enumerate(df.iterrows()):
        note = notes.iloc[i] if notes is not None else None
        ptq = str(row.get("mode", "")).lower() == "ptq"
        cells = ["" if c == "bd_rate_vs_fp32_qat_pct" and ptq else _pct(v, note) if c in _BD else _num(v, fmt)
                 for c, v in row.items()]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def headline_table(ranking: pd.DataFrame, bd: pd.DataFrame) -> str:
    """Markdown: per mode and budget (budgets high to low), the allocators in ranking order with BD-rates, size,
    bits, PSNR change and solve time; BD-rates in %, missing ones with their reason."""
    keys = ["mode", "budget", "allocator"]
    extra = [c for c in ("delta_psnr_db", "bd_rate_vs_fp32_qat_pct") if c in bd]
    df = ranking.merge(bd[keys + extra], on=keys, how="left")
    cols = ["mode", "budget", "rank", "allocator", "bd_rate_vs_fp32_pct", "bd_rate_vs_uniform8_pct",
            "bd_rate_vs_fp32_qat_pct", "size_mbit", "avg_bits", "delta_psnr_db", "solve_time_s"]
    df = df.reindex(columns=cols + ["note", "tied_with_above"])
    df["mode"] = df["mode"].str.upper()
    df["rank"] = [f"{_num(r)} (tie)" if t is True else _num(r) for r, t in zip(df["rank"], df.tied_with_above)]
    return _markdown(df[cols], df["note"], fmt=".3g")


def settings_line(settings: dict) -> str:
    """One line of what a study ran on: images, calibration, candidates, QAT and the weights' fingerprints
    (``settings["recorded"]``: a line an earlier report recorded, kept as it was)."""
    suffix = (f" ({settings['source']})" if settings.get("source") else "") + "."
    if settings.get("recorded"):
        return f"Settings: {settings['recorded']}{suffix}"
    inputs = settings.get("inputs", {})
    names = inputs.get("eval_image_names", [])
    shown = ", ".join(names[:3]) + (f", ... {names[-1]}" if len(names) > 3 else "")
    digest = inputs.get("eval_images")
    line = (f"Settings: {settings.get('model')} qualities {settings.get('qualities')}, modes {settings.get('modes')}; "
            f"{len(names)} evaluation images ({shown}" + (f"; sha256 {str(digest)[:12]}" if digest else "") + "); "
            f"{settings.get('calib_images')} calibration crops of {settings.get('calib_crop')} px "
            f"({settings.get('calibration')}); candidate bits {settings.get('candidate_bits')}; "
            f"budgets {settings.get('budgets')} ({settings.get('budget_kind')})")
    if "qat" in settings.get("modes", ()):
        line += f"; QAT {settings.get('qat_steps')} steps at lr {settings.get('qat_lr')}, seed {settings.get('seed')}"
    if any(split_qat(str(a))[1] for a in settings.get("allocators", ())):
        crop = settings.get("recovery_crop") or settings.get("calib_crop")
        line += (f"; QAT-aware tables ('+qat'): {settings.get('recovery_steps') or settings.get('qat_steps')} QAT "
                 f"steps per cell on {crop} px crops")
    if any("+verify" in str(a) for a in settings.get("allocators", ())) \
            and settings.get("verify_correction", "auto") != "auto":
        line += (f"; '+verify' correction {settings['verify_correction']}, at most "
                 f"{settings.get('verify_max_evals')} measurements per repair")
    if settings.get("bias_correction"):
        line += "; biases corrected for each quantized layer's mean output error on the calibration crops"
        if settings.get("bias_choice"):
            line += " (in the models evaluated: only the transforms whose correction lowers the coded RD loss there)"
    weights = settings.get("weights") or {}
    if weights:
        line += "; weights sha256 " + ", ".join(f"q{q} {d[:12]}" for q, d in weights.items())
    if settings.get("cost_model_version") is not None:
        line += f"; cache version {settings.get('cost_model_version')}"
    return line + suffix


def _warnings(result, out: Path) -> pd.DataFrame | None:
    """The warnings the study collected (``result.warnings`` or a ``warnings.csv`` beside the report)."""
    found = getattr(result, "warnings", None)
    if found is None and (out / "warnings.csv").is_file():
        return pd.read_csv(out / "warnings.csv")
    if found is None:
        return None
    frame = pd.DataFrame(list(found))
    return frame.reindex(columns=list(dict.fromkeys(["cell", "message", *frame.columns])))


def _heatmaps(result, layers, out: Path, model: str, kind: str) -> list[tuple[str, str]]:
    """The heat-map files and their modes: PTQ plans, and QAT plans only where they differ from them."""
    written = []
    by_mode: dict = {}
    for (q, a, b, m), plan in result.plans.items():
        by_mode.setdefault(m, {})[(q, a, b)] = plan
    first = None
    for mode in sorted(by_mode, key=lambda m: (m != "ptq", m)):
        if first is not None and by_mode[mode] == first:
            continue
        name = "bits_heatmap.png" if first is None else f"bits_heatmap_{mode}.png"
        plot_bit_heatmaps(result.plans, layers, out / name, model=model, mode=mode, budget_kind=kind)
        written.append((name, mode))
        first = by_mode[mode] if first is None else first
    return written


def qat_aware_section(recovered: pd.DataFrame, bits: tuple[int, ...] = (2, 3, 4)) -> list[str]:
    """The report's lines on the QAT-aware tables: per layer and bit-width, the single-layer cost right after PTQ
    and after the QAT (means over the qualities that measured the cell)."""
    order = list(dict.fromkeys(recovered.layer))
    mean = recovered.groupby(["layer", "bits"])[["ptq_cost", "zeta"]].mean()
    head = "| layer | " + " | ".join(f"{b} bits: PTQ -> after QAT" for b in bits) + " |"
    lines = ["## QAT-aware costs", "",
             "The tables the `+qat` allocators allocate on (`qat_aware_costs.csv`, every measured cell): the RD loss "
             "increase of each layer alone at b bits (fraction of the float loss, calibration crops), right after "
             "PTQ (the cost table) and after the QAT of the QAT-aware table, against the float model after the same "
             "QAT; means over the qualities that measured the cell (a layer stops being measured once QAT repairs "
             "it into the noise).", "", head, "| --- |" + " ---: |" * len(bits)]
    for layer in order:
        cells = []
        for b in bits:
            if (layer, b) in mean.index:
                ptq, after = mean.loc[(layer, b)]
                cells.append(f"{ptq:.3g} -> {after:.3g}")
            else:
                cells.append("")
        lines.append(f"| {layer} | " + " | ".join(cells) + " |")
    return lines + [""]


def write_report(result, out, command: str = "", machine: str = "", layers: pd.DataFrame | None = None) -> Path:
    """Write the CSVs, figures and ``report.md`` (see the module docstring) under ``out``; ``layers``
    (:func:`layer_frame`) gives the heat maps and ``plans.csv`` data-flow order and parameter counts."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results, bd = to_report_units(result.results), result.bd
    model = ", ".join(map(str, results["model"].unique())) if "model" in results else ""
    kind = str(results.budget_kind.dropna().iloc[0]) if "budget_kind" in results and len(results) else "avg_bits"
    layers = layers if layers is not None else pd.DataFrame(columns=["quality", "layer", "num_params", "order"])
    plans = plans_frame(result.plans, layers)
    found = _warnings(result, out)
    for name, df in (("results", results), ("images", to_report_units(result.images)), ("bd_rate", bd),
                     ("ranking", result.ranking), ("plans", plans)):
        atomic_write_text(out / f"{name}.csv", df.to_csv(index=False))
    if found is not None:
        atomic_write_text(out / "warnings.csv", found.to_csv(index=False))
    figures = [("rd_curves.png", "PSNR over bpp per mode (rows) and budget (columns), FP32 dashed; under each "
                                 "panel the PSNR gap to FP32 at equal rate")]
    plot_rd_curves(results, out / "rd_curves.png", model=model,
                   images=result.images.image.nunique() if "image" in result.images else None)
    if not bd.empty:
        plot_bd_vs_size(bd, out / "bd_rate_vs_size.png", model=model)
        figures.append(("bd_rate_vs_size.png", "BD-rate against FP32 over weights size, one panel per mode and "
                                               "one point per budget, symlog axis (linear within +-1 %); lower is "
                                               "better"))
    if result.plans:
        names = _heatmaps(result, layers, out, model, kind)
        modes = sorted({k[3] for k in result.plans})
        same = f" ({', '.join(m.upper() for m in modes)} use the same plans)" if len(names) < len(modes) else ""
        figures += [(n, f"bits per layer of every {'' if same else m.upper() + ' '}plan{same}, one panel per "
                            "quality and budget, layers in data-flow order with parameter counts")
                    for n, m in names]
    md = [f"# Allocator comparison: {model}", "", headline_table(result.ranking, bd), "",
          f"Per mode and budget ({'average weight bits' if kind == 'avg_bits' else 'compression ratio'}), the "
          "allocators ranked by BD-rate against FP32 (%, PCHIP over PSNR-RGB, real bitstreams; lower is better). "
          "BD-rates within 0.1 percentage points of each other count as tied and the smaller plan ranks first "
          "(`(tie)`); curves without a BD-rate are not ranked and say why. Size in Mbit and avg bits: means over "
          "the qualities; solve time in seconds. Every column is described in the data dictionary at the end.", ""]
    md += ["## Figures", ""] + [f"![{text}]({name})\n\n*{name}*: {text}.\n" for name, text in figures]
    recovered = getattr(result, "recovered", None)
    if recovered is not None and len(recovered):
        atomic_write_text(out / "qat_aware_costs.csv", recovered.to_csv(index=False))
        md += qat_aware_section(recovered)
    md += ["## Settings", ""]
    if command:
        md += [f"Command: `{command}`", ""]
    if machine:
        md += [f"Machine: {machine}", ""]
    settings = getattr(result, "settings", None) or {}
    md += [settings_line(p) + "\n" for p in settings.get("parts", [settings]) if p]
    md += ["## Warnings", ""]
    if found is None:
        md += ["This run did not collect its warnings.", ""]
    elif found.empty:
        md += ["None.", ""]
    else:
        md += [f"{len(found)} warnings (also in `warnings.csv`):", ""] + [
            f"- `{r.cell}`: " + (f"{r.category}: " if isinstance(getattr(r, "category", None), str) else "")
            + str(r.message) for r in found.itertuples()] + [""]
    bd_cols = [c for c in bd.columns if c != "note"]
    per_quality = results.drop(columns=["model", "budget_kind", "cached"], errors="ignore")
    md += ["## BD-rate per curve", "",
           "Anchors: the FP32 model and uniform 8-bit PTQ of the same checkpoints; QAT rows also against the FP32 "
           "model fine-tuned with the same QAT steps (their gain over FP32 includes that extra RD training).", "",
           _markdown(bd[bd_cols], bd.get("note"), fmt=".3g"), ""]
    drift, why = qat_drift(results)
    if why != NO_QAT_CURVE:
        value = f"{_pct(drift, why)} %" if why is None else _pct(drift, why)
        md += [f"Convergence of the checkpoints: the FP32 model fine-tuned with the same QAT steps is {value} "
               "BD-rate against the FP32 checkpoints (0 for converged checkpoints; a negative value is the part of "
               "every QAT row's gain over FP32 that is only more training).", ""]
    noted = bd[bd.get("note", pd.Series(dtype=str)).fillna("").astype(bool)] if "note" in bd else bd.iloc[:0]
    md += [f"- {r.allocator} {r.mode.upper()} {r.budget:g}: {r.note}" for r in noted.itertuples()] + [""]
    md += ["## Per quality", "", "Empty cells do not apply (the FP32 rows have no plan, PTQ rows no QAT loss).", "",
           _markdown(per_quality), ""]
    md += ["## Data dictionary", "", "Every column of the tables above and of the CSV files (`plans.csv`: one row "
           "per quality, allocator, budget, mode and layer; whole models' sizes in Mbit, one layer's in bits).", ""]
    md += describe([*results.columns, *result.ranking.columns, *bd.columns, *plans.columns,
                    *to_report_units(result.images).columns, *(found.columns if found is not None else [])])
    atomic_write_text(out / "report.md", "\n".join(md) + "\n")
    return out / "report.md"
