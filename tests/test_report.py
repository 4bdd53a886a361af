"""bitalloc.report / bitalloc.figures: report.md at a glance, tidy plans.csv, the three figures (issue 15, item 3)."""

from __future__ import annotations

import re
import stat

import numpy as np
import pandas as pd
import pytest

from bitalloc import analysis, report
from bitalloc.figures import gap_to_anchor
from bitalloc.plan import BitPlan
from bitalloc.report_columns import COLUMNS

LAYERS = ["g_s.0", "h_a.0", "g_a.0"]  # registration order; data flow is g_a.0 -> h_a.0 -> g_s.0
FLOW = pd.DataFrame({"quality": [1] * 3 + [2] * 3, "layer": LAYERS * 2, "num_params": [300, 20, 100] * 2,
                     "order": [2, 1, 0] * 2})


def _study(warnings=None) -> analysis.StudyResult:
    bpp, psnr = np.array([0.1, 0.2, 0.4, 0.8]), np.array([27.0, 29.0, 31.0, 33.0])
    rows = []
    for alloc, budget, shift, size in (("fp32", np.nan, 0.0, np.nan), ("uniform", 8.0, -0.01, 3200.0),
                                       ("ilp", 4.0, -0.3, 1500.0), ("uniform", 4.0, None, 1680.0)):
        curve = psnr + shift if shift is not None else np.array([25.0, 24.0, 26.0, 27.0])  # not monotone
        rows += [dict(model="m", quality=q, allocator=alloc, budget=budget, budget_kind="avg_bits", mode="ptq",
                      bpp=b, psnr_rgb=p, avg_bits=32.0 if alloc == "fp32" else budget, size_bits=size,
                      budget_bits=np.nan if alloc == "fp32" else 3200.0 * budget / 8,
                      compression_ratio=1.0, solve_time_s=np.nan if alloc == "fp32" else 1e-3,
                      qat_final_loss=np.nan, cached=False) for q, b, p in zip([1, 2, 3, 4], bpp, curve)]
    results = pd.DataFrame(rows)
    images = results[["model", "quality", "allocator", "budget", "mode"]].assign(
        image="img0", bpp=results.bpp, psnr_rgb=results.psnr_rgb, encoding_time=0.1, decoding_time=0.2)
    plans = {(q, a, b, "ptq"): BitPlan(dict(zip(LAYERS, bits)))
             for q in (1, 2) for a, b, bits in (("uniform", 8.0, [8, 8, 8]), ("ilp", 4.0, [4, 2, 6]),
                                                ("uniform", 4.0, [4, 4, 4]))}
    bd = analysis.bd_table(results)
    settings = {"model": "m", "qualities": [1, 2, 3, 4], "modes": ["ptq"], "inputs": {"eval_image_names": ["img0"]}}
    return analysis.StudyResult(results, images, bd, analysis.rank(bd), plans, settings, warnings)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    report.write_report(_study([{"cell": "m q1 allocator 'ilp' at avg_bits=4", "message": "layers interact",
                                 "category": "UserWarning", "lineno": 3}]),
                        out, command="bitalloc compare", machine="test", layers=FLOW)
    return out


def test_report_opens_with_the_headline_table_then_the_figures(written):
    md = (written / "report.md").read_text()
    first_table = md.index("\n| ")
    assert md.splitlines()[0].startswith("# ") and md.splitlines()[2].startswith("| mode | budget | rank |")
    assert first_table < md.index("## Figures") < md.index("## Data dictionary")
    header = md[first_table:].splitlines()[1]
    assert header.startswith("| mode | budget | rank | allocator | bd_rate_vs_fp32_pct")
    for name in ("rd_curves.png", "bd_rate_vs_size.png", "bits_heatmap.png"):
        assert f"]({name})" in md  # embedded with a relative link
    headline = md[first_table:md.index("\n\n", first_table + 1)].strip().splitlines()[2:]
    order = [(cells[1], cells[2], cells[3]) for cells in (line.split(" | ") for line in headline)]
    assert order == [("8", "1", "uniform"), ("4", "1", "ilp"), ("4", "", "uniform")]


def test_report_shows_reasons_not_nan_and_drops_empty_columns(written):
    md = (written / "report.md").read_text()
    assert not re.search(r"\bnan\b", md, re.IGNORECASE)
    assert "n/a (curve not monotone)" in md
    tables = md.split("## Data dictionary")[0]
    assert "bd_rate_vs_fp32_qat_pct" not in tables and "qat_final_loss" not in tables  # PTQ-only: QAT columns go


def test_report_has_one_unit_per_quantity_and_documents_every_column(written):
    results = pd.read_csv(written / "results.csv")
    assert {"size_mbit", "budget_mbit", "solve_time_s"} <= set(results) and "size_bits" not in results
    assert results.size_mbit.dropna().max() == pytest.approx(3200.0 / 1e6)
    assert not any(c.endswith("_ms") for f in ("results", "bd_rate", "ranking") for c in
                   pd.read_csv(written / f"{f}.csv"))
    assert {"encoding_time_s", "decoding_time_s"} <= set(pd.read_csv(written / "images.csv"))
    md = (written / "report.md").read_text()
    dictionary = md.split("## Data dictionary")[1]
    for name in ("results", "bd_rate", "ranking", "plans", "images", "warnings"):
        for col in pd.read_csv(written / f"{name}.csv"):
            assert f"| `{col}` |" in dictionary, (name, col)
    assert "(undocumented column)" not in dictionary and set(COLUMNS) >= set(pd.read_csv(written / "plans.csv"))


def test_plans_csv_is_tidy_in_data_flow_order(written):
    plans = pd.read_csv(written / "plans.csv")
    assert len(plans) == 2 * 3 * 3  # qualities x plans x layers
    assert list(plans.columns) == ["quality", "allocator", "budget", "mode", "layer", "order", "bits", "num_params",
                                   "size_bits"]
    ilp = plans[(plans.quality == 1) & (plans.allocator == "ilp")]
    assert ilp.layer.tolist() == ["g_a.0", "h_a.0", "g_s.0"] and ilp.bits.tolist() == [6, 2, 4]
    assert (plans.size_bits == plans.bits * plans.num_params).all()
    assert not plans.duplicated(["quality", "allocator", "budget", "mode", "layer"]).any()


def test_ranking_csv_leaves_the_nan_row_unranked(written):
    ranking = pd.read_csv(written / "ranking.csv")
    four = ranking[ranking.budget == 4.0]
    assert four.allocator.tolist() == ["ilp", "uniform"] and four["rank"].isna().tolist() == [False, True]


def test_figures_and_csvs_are_written_readable(written):
    for name in ("rd_curves.png", "bd_rate_vs_size.png", "bits_heatmap.png", "results.csv", "plans.csv",
                 "report.md", "warnings.csv"):
        path = written / name
        assert path.stat().st_size > 0, name
        assert stat.S_IMODE(path.stat().st_mode) & 0o044 == 0o044, name  # group and others may read
    assert (written / "bits_heatmap.png").read_bytes()[:4] == b"\x89PNG"


def test_warnings_are_collected_into_the_report(written, tmp_path):
    md = (written / "report.md").read_text()
    assert "- `m q1 allocator 'ilp' at avg_bits=4`: UserWarning: layers interact" in md
    assert pd.read_csv(written / "warnings.csv").message.tolist() == ["layers interact"]
    res = _study(None)  # a result without collected warnings: a warnings.csv beside the report is used
    res.plans.clear()
    pd.DataFrame([{"cell": "c", "message": "from the csv"}]).to_csv(tmp_path / "warnings.csv", index=False)
    assert "- `c`: from the csv" in report.write_report(res, tmp_path).read_text()
    assert not (tmp_path / "bits_heatmap.png").exists()


def test_gap_to_anchor_is_exact_on_the_anchor_and_flags_extrapolation():
    bpp, psnr = np.array([0.1, 0.2, 0.4]), np.array([27.0, 29.0, 31.0])
    at, extra = gap_to_anchor(bpp, psnr, [0.1, 0.2, 0.4, 0.8, 0.05])
    assert at[:3] == pytest.approx(psnr) and extra.tolist() == [False, False, False, True, True]
    assert at[3] == pytest.approx(33.0) and at[4] == pytest.approx(25.0)  # the end segments' lines in log bpp
    same, extra = gap_to_anchor([0.2, 0.2], [29.0, 30.0], [0.2, 0.3])  # one distinct rate: no gap to draw
    assert np.isnan(same).all() and extra.all()


def test_report_states_how_far_from_converged_the_checkpoints_are(written, tmp_path):
    assert "Convergence of the checkpoints" not in (written / "report.md").read_text()  # PTQ only: no QAT float curve
    study = _study([])
    fp = study.results[study.results.allocator == "fp32"]
    tuned = fp.assign(mode="qat", bpp=fp.bpp * 0.9)  # same PSNR, 10 % fewer bits after the extra training
    results = pd.concat([study.results, tuned], ignore_index=True)
    drift, why = analysis.qat_drift(results)
    assert why is None and drift == pytest.approx(-10.0)
    bd = analysis.bd_table(results)
    report.write_report(analysis.StudyResult(results, study.images, bd, analysis.rank(bd), study.plans,
                                             study.settings, []), tmp_path, layers=FLOW)
    assert "fine-tuned with the same QAT steps is -10.00 % BD-rate" in (tmp_path / "report.md").read_text()
    assert np.isnan(analysis.qat_drift(study.results)[0])


def test_rd_panel_of_a_mode_budget_not_run_says_so(tmp_path, monkeypatch):
    """A QAT-only run keeps PTQ references (FP32, uniform 8) but no PTQ plan at its budget: that panel says it was
    not run instead of drawing an empty axis."""
    import matplotlib.pyplot as plt

    from bitalloc import figures

    rows = []
    for q, (bpp, psnr) in enumerate([(0.2, 27.0), (0.4, 29.0), (0.6, 30.0), (0.8, 31.0)], start=1):
        rows.append(dict(quality=q, allocator="fp32", mode="ptq", budget=np.nan, budget_kind="avg_bits",
                         bpp=bpp, psnr_rgb=psnr))
        rows.append(dict(quality=q, allocator="uniform", mode="ptq", budget=8.0, budget_kind="avg_bits",
                         bpp=bpp, psnr_rgb=psnr - 0.02))
        rows.append(dict(quality=q, allocator="ilp", mode="qat", budget=4.0, budget_kind="avg_bits",
                         bpp=bpp * 1.1, psnr_rgb=psnr - 0.3))
    figs = []
    monkeypatch.setattr(figures, "atomic_savefig", lambda fig, path: figs.append(fig))
    monkeypatch.setattr(plt, "close", lambda fig: None)
    figures.plot_rd_curves(pd.DataFrame(rows), tmp_path / "rd.png")
    axes = figs[0].axes  # rows: PTQ RD, PTQ gap, QAT RD, QAT gap; columns: budgets 8, 4
    ptq4 = axes[1]
    assert not ptq4.axison and "not run" in ptq4.texts[0].get_text()
    assert axes[0].axison and axes[0].lines and axes[7].axison and axes[7].lines  # PTQ 8 and QAT 4 drawn


def test_a_heatmap_of_many_layers_stacks_its_panels_in_one_column(tmp_path):
    from PIL import Image

    from bitalloc.figures import plot_bit_heatmaps
    from bitalloc.plan import BitPlan

    def draw(n_layers, path):
        names = [f"g_a.{i}" for i in range(n_layers)]
        plans = {(4, a, b, "ptq"): BitPlan({n: int(b) for n in names}) for a in ("ilp", "iqp") for b in (8.0, 6.0, 4.0)}
        plot_bit_heatmaps(plans, pd.DataFrame(), path, model="m")
        return Image.open(path).size

    wide_w, wide_h = draw(48, tmp_path / "many.png")  # Cheng2020-anchor's 48 layers: three panels down
    few_w, few_h = draw(14, tmp_path / "few.png")  # the hyperpriors' 14: three panels across
    assert wide_h > few_h * 2 and few_w > few_h
