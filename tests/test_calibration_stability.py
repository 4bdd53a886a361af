"""BitPlan.agreement (parameter-weighted) and studies/calibration_stability.py: the table that sets the
BD-rates of the plans chosen from two calibration sets side by side (the anchor rows left out)."""

from types import SimpleNamespace

import pandas as pd
import pytest

from bitalloc import BitPlan
from conftest import load_study



@pytest.fixture(scope="module")
def study():
    return load_study("calibration_stability")


def test_agreement_weights_layers_by_their_parameters():
    a = BitPlan({"big": 8, "small": 4})
    b = BitPlan({"big": 8, "small": 6})
    assert a.agreement(b, {"big": 900, "small": 100})[0] == pytest.approx(0.9)
    assert b.agreement(BitPlan({"big": 6, "small": 6}), {"big": 900, "small": 100})[0] == pytest.approx(0.1)
    assert a.agreement(b, {"big": 900, "small": 100})[1] == pytest.approx(0.2)  # 100/1000 of the weights, 2 bits
    with pytest.raises(ValueError, match="layer 'small'"):
        a.agreement(BitPlan({"big": 8}), {"big": 900, "small": 100})


def _result(bd_ilp: float, plan: BitPlan):
    bd = pd.DataFrame([{"allocator": "uniform", "budget": 8.0, "bd_rate_vs_fp32_pct": 0.5, "avg_bits": 8.0},
                       {"allocator": "ilp", "budget": 6.0, "bd_rate_vs_fp32_pct": bd_ilp, "avg_bits": 6.0}])
    return SimpleNamespace(bd=bd, plans={(1, "ilp", 6.0, "ptq"): plan, (1, "uniform", 8.0, "ptq"): plan})


def test_the_table_pairs_the_two_sets_per_allocator_and_fit_without_the_anchor(study):
    params = {1: {"big": 900, "small": 100}}
    results = {("clip", "A"): _result(1.2, BitPlan({"big": 8, "small": 4})),
               ("clip", "B"): _result(1.6, BitPlan({"big": 8, "small": 6}))}
    table = study.stability_table(results, ["ilp"], 6.0, params)
    row = table.iloc[0]
    assert list(table.allocator) == ["ilp"]
    assert row.abs_diff_points == pytest.approx(0.4)
    assert row.same_bits_share == pytest.approx(0.9)
    assert (row.bd_rate_vs_fp32_A_pct, row.bd_rate_vs_fp32_B_pct) == (1.2, 1.6)


def test_an_empty_calibration_set_is_refused_by_name(study, capsys):
    with pytest.raises(SystemExit):
        study.main(["--calib-images", "0"])
    assert "--calib-images must be at least 1, got 0" in capsys.readouterr().err
