"""bitalloc.analysis: the study's BD-rate table, ranking and merge, apart from the run loop (issue 11, item 5)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bitalloc import analysis, harness

RESULTS = Path(__file__).resolve().parents[1] / "studies" / "results"
FOLDERS = sorted(RESULTS.glob("compare_*"))


def test_the_harness_reexports_the_analysis():
    for name in ("StudyResult", "bd_table", "rank", "merge_results"):
        assert getattr(harness, name) is getattr(analysis, name) and name in harness.__all__


@pytest.mark.parametrize("folder", FOLDERS, ids=lambda p: p.name)
def test_bd_table_and_rank_reproduce_the_committed_study(folder):
    """From the committed results.csv alone (no torch), the committed bd_rate.csv and ranking.csv come back."""
    bd = analysis.bd_table(pd.read_csv(folder / "results.csv"))
    want = pd.read_csv(folder / "bd_rate.csv")
    assert list(bd.columns) == list(want.columns)
    for col in want:
        if pd.api.types.is_numeric_dtype(want[col]):
            assert np.allclose(bd[col].astype(float), want[col], rtol=1e-9, equal_nan=True), col
        else:
            assert bd[col].fillna("").tolist() == want[col].fillna("").tolist(), col
    ranked = analysis.rank(bd)
    assert ranked[["mode", "budget", "rank", "allocator"]].astype(str).values.tolist() == pd.read_csv(
        folder / "ranking.csv")[["mode", "budget", "rank", "allocator"]].astype(str).values.tolist()


def _results(psnr_shift: float = -0.3) -> pd.DataFrame:
    q = [1, 2, 3, 4]
    bpp, psnr = np.array([0.1, 0.2, 0.4, 0.8]), np.array([27.0, 29.0, 31.0, 33.0])
    rows = [dict(model="m", quality=qq, allocator="fp32", budget=np.nan, mode="ptq", bpp=b, psnr_rgb=p,
                 avg_bits=32.0, size_bits=np.nan, compression_ratio=1.0, solve_time_s=np.nan)
            for qq, b, p in zip(q, bpp, psnr)]
    for alloc, budget, shift in (("uniform", 8.0, 0.0), ("ilp", 4.0, psnr_shift), ("greedy", 4.0, 2 * psnr_shift)):
        rows += [dict(model="m", quality=qq, allocator=alloc, budget=budget, mode="ptq", bpp=b, psnr_rgb=p + shift,
                      avg_bits=budget, size_bits=1e6 * budget, compression_ratio=32 / budget, solve_time_s=1e-3)
                 for qq, b, p in zip(q, bpp, psnr)]
    return pd.DataFrame(rows)


def test_bd_table_ranks_the_better_curve_first_and_reports_missing_anchors():
    bd = analysis.bd_table(_results())
    by = bd.set_index("allocator")
    assert by.loc["uniform", "bd_rate_vs_fp32_pct"] == pytest.approx(0, abs=1e-9)
    assert 0 < by.loc["ilp", "bd_rate_vs_fp32_pct"] < by.loc["greedy", "bd_rate_vs_fp32_pct"]
    assert by.loc["ilp", "delta_psnr_db"] == pytest.approx(-0.3)
    assert np.isnan(by.loc["ilp", "bd_rate_vs_fp32_qat_pct"])  # PTQ rows have no QAT anchor
    ranked = analysis.rank(bd)
    assert ranked[ranked.budget == 4.0].allocator.tolist() == ["ilp", "greedy"]
    two_points = analysis.bd_table(_results()[lambda d: d.quality <= 2])
    assert two_points.bd_rate_vs_fp32_pct.isna().all() and two_points.note.str.len().gt(0).all()


def test_bd_against_returns_nan_and_the_reason():
    res = _results()
    fp, ilp = analysis.curve(res, "fp32", None, "ptq"), analysis.curve(res, "ilp", 4.0, "ptq")
    values, note = analysis.bd_against(fp, ilp, "fp32", psnr=True)
    assert note is None and values["bd_psnr_vs_fp32_db"] == pytest.approx(-0.3, abs=1e-6)
    values, note = analysis.bd_against(fp.head(2), ilp.head(2), "fp32", psnr=True)
    assert np.isnan(list(values.values())).all() and set(values) == {"bd_rate_vs_fp32_pct", "bd_psnr_vs_fp32_db"}
    assert note


def test_merge_needs_a_part():
    with pytest.raises(ValueError, match="at least one StudyResult"):
        analysis.merge_results()
