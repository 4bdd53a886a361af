"""The harness with noise-aware cost tables (issue 12, item 5): ``StudySpec(table_fit="noise")`` measures each
table with its standard errors, fits it monotone in bits, and breaks ties within noise toward the bigger plan, so
a generous budget is not left unused; the fit is in every key it changes, and the default keys are those of
before."""

import json

import pytest
import torch

import test_harness_act
from bitalloc.costs import CostTable
from bitalloc.harness import StudySpec, run_study
from test_harness_parallel import load_tiny

# The tiny untrained Mean-Scale model: most layers change the loss by exactly nothing at any bit-width (their
# cost is 0 everywhere), the others by amounts within noise at 6 and 8 bits: at the 8-bit budget every plan ties.
TINY = dict(model="mbt2018-mean", qualities=(1,), budgets=(8.0,), calib_images=4, calib_crop=64, eval_limit=1,
            calibration="minmax")


@pytest.fixture(scope="module")
def inputs():
    g = torch.Generator().manual_seed(0)
    return {"calib_images": torch.rand(4, 3, 64, 64, generator=g),
            "eval_images": {"img0": torch.rand(3, 64, 64, generator=g)}}


def _run(out, inputs, **spec):
    return run_study(StudySpec(**{**TINY, **spec}), out, model_loader=load_tiny, progress=False, **inputs)


def test_table_fit_is_checked_by_name():
    with pytest.raises(ValueError, match=r"StudySpec.table_fit must be one of clip, noise, got 'isotonic'"):
        StudySpec(table_fit="isotonic")
    assert StudySpec().table_fit == "clip"


def test_noise_tables_use_the_generous_budget_that_clipped_tables_leave_unused(tmp_path, inputs):
    clip = _run(tmp_path, inputs, allocators=("ilp", "greedy")).results.set_index("allocator")
    study = _run(tmp_path, inputs, allocators=("ilp", "greedy", "iqp"), table_fit="noise")
    noise = study.results.set_index("allocator")
    # one quality: the BD table's smallest share over the qualities is the row's
    assert study.bd.set_index("allocator").budget_used_pct_min["ilp"] == noise.loc["ilp", "budget_used_pct"]
    # today's clipped table: every plan ties at cost 0, and the solvers return small plans
    assert clip.loc["ilp", "budget_used_pct"] < 90
    assert (noise.loc[["ilp", "greedy", "iqp"], "budget_used_pct"] >= 98).all()
    assert (noise.loc[["ilp", "greedy", "iqp"], "budget_used_pct"] <= 100).all()  # never over budget
    for res in (clip, noise):
        assert res.budget_used_pct.dropna().tolist() == pytest.approx(
            (100 * res.size_bits / res.budget_bits).dropna().tolist())
    assert noise.loc["fp32", "budget_used_pct"] != noise.loc["fp32", "budget_used_pct"]  # NaN: no budget
    # the objective reported is the table's own, without the tie-break's share of the noise floor
    tables = {p.name: CostTable.from_json(p) for p in (tmp_path / "sensitivity").glob("*.json")}
    plain = [t for n, t in tables.items() if "_pairs_" not in n and t.cost_se is None]
    fitted = [t for n, t in tables.items() if "_pairs_" not in n and t.cost_se is not None]
    pairs = [t for n, t in tables.items() if "_pairs_" in n]
    assert len(plain) == 1 and len(fitted) == 1 and len(pairs) == 1  # one table per fit, in its own file
    assert fitted[0].noise_floor > 0 and (fitted[0].cost_se >= 0).all()
    # the pairwise terms were measured against the noise-aware table, and keep its uncertainty
    assert pairs[0].cost_se is not None and pairs[0].noise_floor == fitted[0].noise_floor
    assert (pairs[0].cost == fitted[0].cost).all()
    plan = _run(tmp_path, inputs, allocators=("ilp",), table_fit="noise").plans[(1, "ilp", 8.0, "ptq")]
    assert noise.loc["ilp", "objective"] == pytest.approx(fitted[0].objective(plan.choices(fitted[0])), abs=0)
    keys = [json.loads(p.read_text())["key"] for p in (tmp_path / "cells").glob("*_ilp_avg_bits8_ptq_*.json")]
    assert sorted(k.get("tie_break_share", 0) for k in keys) == [0, 0.5]  # one cell per fit
    assert sorted(k.get("table_fit", {}).get("fit", "clip") for k in keys) == ["clip", "isotonic"]


def test_the_fit_is_in_the_keys_it_changes_and_the_default_keys_are_unchanged(tmp_path):
    test_harness_act._key_names.root = tmp_path
    base = dict(modes=("ptq", "qat"))
    before = test_harness_act.KEYS_BEFORE
    assert test_harness_act._key_names(StudySpec(**base, table_fit="clip")) == before
    noise = test_harness_act._key_names(StudySpec(**base, table_fit="noise"))
    # the tables, the pairwise terms and the static cells; not the float reference, DynaQuant or the outcomes
    # (an outcome depends on its plan alone)
    assert {k for k in before if noise[k] != before[k]} == {"sens", "pairs", "ilp_ptq", "iqp_qat"}
