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
    cells = pd.DataFrame([{"allocator": "ilp", "budget": 6.0, "quality": 1, "plan_measured_cost": 0.01}])
    return SimpleNamespace(bd=bd, plans={(1, "ilp", 6.0, "ptq"): plan, (1, "uniform", 8.0, "ptq"): plan},
                           results=cells, images=pd.DataFrame())


def _repaired(bd: dict, plans: dict, kept: dict, costs: dict, images: list):
    """A study result with ilp and ilp+verify at the 6-bit budget over qualities 1 and 3."""
    bd_frame = pd.DataFrame([{"allocator": a, "budget": 6.0, "mode": "ptq", "bd_rate_vs_fp32_pct": v, "avg_bits": 6.0}
                             for a, v in bd.items()])
    cells = pd.DataFrame([{"allocator": a, "budget": 6.0, "quality": q, "plan_measured_cost": costs[(a, q)],
                           "verify_holdout_kept": kept.get((a, q))} for a in bd for q in (1, 3)])
    image_rows = pd.DataFrame([{"allocator": a, "budget": 6.0, "mode": "ptq", "quality": q, "image": i, "bpp": b,
                                "psnr_rgb": p} for a, q, i, b, p in images])
    return SimpleNamespace(bd=bd_frame, results=cells, images=image_rows,
                           plans={(q, a, 6.0, "ptq"): plans[(a, q)] for a in bd for q in (1, 3)})


def test_repair_effects_compare_each_repaired_quality_with_its_allocator(study):
    from bitalloc.models import lambda_of

    base, other = BitPlan({"x": 4, "y": 8}), BitPlan({"x": 6, "y": 6})
    plans = {("ilp", 1): base, ("ilp+verify", 1): other, ("ilp", 3): base, ("ilp+verify", 3): base}
    costs = {("ilp", 1): 0.02, ("ilp+verify", 1): 0.015, ("ilp", 3): 0.03, ("ilp+verify", 3): 0.03}
    images = [("ilp", 1, "a", 0.2, 30.0), ("ilp", 1, "b", 0.4, 30.0), ("ilp+verify", 1, "a", 0.2, 31.0),
              ("ilp+verify", 1, "b", 0.4, 31.0), ("ilp", 3, "a", 0.5, 29.0), ("ilp+verify", 3, "a", 0.5, 29.0)]
    res = _repaired({"ilp": 4.0, "ilp+verify": 3.5}, plans, {("ilp+verify", 1): "best"}, costs, images)
    effects = study.repair_effects({("noise", "A"): res}, ["ilp", "ilp+verify"], 6.0)
    assert len(effects) == 1  # q3's repair kept the allocator's plan: no row
    row = effects.iloc[0]
    assert (row.repair, row.quality, row.set) == ("ilp+verify", 1, "A")
    assert row.calib_loss_change == pytest.approx(-0.005) and row.bd_rate_change_points == pytest.approx(-0.5)
    loss = {p: lambda_of(1) * 255 ** 2 * 10 ** (-p / 10) + 0.3 for p in (30.0, 31.0)}
    assert row.kodak_rd_loss_change_pct == pytest.approx(100 * (loss[31.0] / loss[30.0] - 1))
    assert study._kept(res, "ilp+verify", 6.0) == "1/1" and study._kept(res, "ilp", 6.0) == ""


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


def test_the_repair_settings_reach_both_sets_studies(study, monkeypatch):
    specs = []

    class Stop(Exception):
        pass

    def fake_run_study(spec, cache, data=None):
        specs.append(spec)
        if len(specs) == 2:
            raise Stop
        return None

    monkeypatch.setattr(study, "run_study", fake_run_study)
    with pytest.raises(Stop):
        study.main(["--fits", "noise", "--allocators", "ilp", "ilp+verify", "--verify-correction", "context",
                    "--verify-max-evals", "250", "--verify-snap-ties", "--bias-correction"])
    assert [(s.verify_correction, s.verify_max_evals, s.calib_offset) for s in specs] == [
        ("context", 250, 0), ("context", 250, specs[0].calib_images)]
    assert all(s.verify_snap_ties and s.bias_correction for s in specs)


def test_an_unknown_correction_is_refused_by_name(study, capsys):
    with pytest.raises(SystemExit):
        study.main(["--verify-correction", "telepathy"])
    assert "telepathy" in capsys.readouterr().err
