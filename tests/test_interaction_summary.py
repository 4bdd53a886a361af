"""studies/interaction_summary.py: issue 12's checks read off a study's bd_rate.csv / results.csv."""

import numpy as np
import pandas as pd
import pytest

from conftest import load_study


@pytest.fixture(scope="module")
def summary():
    return load_study("interaction_summary")


def test_best_rows_compare_the_best_aware_allocator_with_the_whole_table(summary):
    bd = pd.DataFrame({
        "allocator": ["convex", "ilp", "iqp", "iqp+verify", "convex", "iqp"],
        "mode": ["ptq"] * 4 + ["qat"] * 2, "budget": [4.0] * 6,
        "bd_rate_vs_fp32_pct": [120.0, 136.0, 125.0, 124.5, -9.0, -3.0],
        "bd_rate_vs_fp32_qat_pct": [np.nan] * 4 + [5.0, 4.0],  # QAT rows rank against FP32 + the same QAT
        "plan_excess_max": [0.3, 0.3, 0.06, 0.05, 0.2, 0.04], "budget_used_pct_min": [99.0, 99.5, 99.8, 98.0, 99, 97]})
    rows = summary.best_rows(bd).set_index("mode")
    assert rows.loc["ptq", "best_allocator"] == "convex" and rows.loc["ptq", "best_aware"] == "iqp+verify"
    assert rows.loc["ptq", "gap_points"] == pytest.approx(4.5)
    assert rows.loc["ptq", "aware_plan_excess_max"] == 0.05 and rows.loc["ptq", "aware_budget_used_min_pct"] == 98.0
    assert rows.loc["qat", "best_allocator"] == "iqp" and rows.loc["qat", "gap_points"] == 0.0


def test_prediction_ratios_skip_plans_predicted_inside_the_noise(summary):
    results = pd.DataFrame({"mode": ["ptq"] * 4 + ["qat"], "budget": [4.0, 4.0, 8.0, 4.0, 4.0],
                            "allocator": ["ilp", "ilp", "ilp", "iqp", "ilp"],
                            "plan_predicted_cost": [0.2, 0.1, 1e-4, 0.3, 0.2],
                            "plan_measured_cost": [0.5, 0.3, 5e-4, 0.33, 0.9]})
    table = summary.prediction_ratios(results).set_index(["budget", "allocator"])
    assert list(table.index) == [(4.0, "ilp"), (4.0, "iqp")]  # the 8-bit plan (1e-4) and the QAT row are left out
    assert table.loc[(4.0, "ilp")].tolist() == pytest.approx([2.5, 3.0])
    assert table.loc[(4.0, "iqp")].tolist() == pytest.approx([1.1, 1.1])


def test_qat_rows_name_the_best_qat_aware_allocator(summary):
    bd = pd.DataFrame({"allocator": ["convex", "iqp", "ilp+qat", "convex", "iqp"], "mode": ["qat"] * 3 + ["ptq"] * 2,
                       "budget": [4.0] * 5, "bd_rate_vs_fp32_pct": [9.0, 13.0, 8.0, 120.0, 110.0],
                       "bd_rate_vs_fp32_qat_pct": [10.5, 16.0, 10.1, np.nan, np.nan],
                       "plan_excess_max": [0.2, 0.05, 0.02, 0.3, 0.06]})
    rows = summary.best_rows(bd).set_index("mode")
    assert rows.loc["qat", "best_allocator"] == "ilp+qat" and rows.loc["qat", "best_aware"] == "iqp"
    assert rows.loc["qat", "qat_aware_gap_points"] == 0.0 and rows.loc["qat", "qat_aware_plan_excess_max"] == 0.02
    assert np.isnan(rows.loc["ptq", "qat_aware_gap_points"])  # no +qat allocator in PTQ rows


def test_a_verified_qat_aware_allocator_is_both_interaction_and_qat_aware(summary):
    assert summary.interaction_aware("ilp+verify+qat") and summary.interaction_aware("iqp")
    assert not summary.interaction_aware("ilp+qat") and not summary.interaction_aware("convex")
    bd = pd.DataFrame({"allocator": ["convex", "iqp", "ilp+qat", "ilp+verify+qat"], "mode": ["qat"] * 4,
                       "budget": [4.0] * 4, "bd_rate_vs_fp32_pct": [9.0, 13.0, 8.0, 7.0],
                       "bd_rate_vs_fp32_qat_pct": [10.5, 16.0, 10.1, 9.6], "plan_excess_max": [0.2, 0.05, 0.02, 0.01]})
    row = summary.best_rows(bd).iloc[0]
    assert row.best_aware == row.best_allocator == row.best_qat_aware == "ilp+verify+qat" and row.gap_points == 0.0
