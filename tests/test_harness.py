"""Comparison harness (issue #5): quick study on a tiny model, budget checks, resume from the cache."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from bitalloc import Allocation, AllocStatus, BitPlan
from bitalloc.errors import BudgetError
from bitalloc.harness import PlanOverBudgetError, StudySpec, bd_table, merge_results, rank, run_study
from bitalloc.models import build_model, lambda_of
from bitalloc.report import write_report


def tiny_loader(calls=None):
    def load(name, quality):
        if calls is not None:
            calls.append(quality)
        torch.manual_seed(quality)
        model = build_model(name, quality).eval()
        model.meta = {"lambda": lambda_of(quality)}
        model.update(force=True)
        return model

    return load


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(0)
    return {"calib": torch.rand(2, 3, 64, 64, generator=g),
            "eval": {f"img{k}": torch.rand(3, 64, 64, generator=g) for k in range(2)}}


def _run(spec, out, images, **kw):
    return run_study(spec, out, model_loader=kw.pop("loader", tiny_loader()), calib_images=images["calib"],
                     eval_images=images["eval"], progress=False, **kw)


def test_quick_study_on_a_tiny_model(tmp_path, images):
    spec = StudySpec(qualities=(1, 2), allocators=("ilp", "greedy", "uniform"), budgets=(8.0, 4.0),
                     calib_images=2, calib_crop=64)
    res = _run(spec, tmp_path, images)
    cells = res.results[res.results.allocator != "fp32"]
    # 2 qualities x 3 allocators x 2 budgets, plus fp32 references
    assert len(cells) == 12 and (res.results.allocator == "fp32").sum() == 2
    assert (cells.size_bits <= cells.budget_bits).all()
    assert set(res.images.image) == {"img0", "img1"} and len(res.images) == 2 * len(res.results)
    assert res.results.bpp.gt(0).all()
    ilp4 = cells[(cells.allocator == "ilp") & (cells.budget == 4.0)]
    uni4 = cells[(cells.allocator == "uniform") & (cells.budget == 4.0)]
    assert (ilp4.objective.values <= uni4.objective.values + 1e-12).all()
    report = write_report(res, tmp_path / "report")
    assert report.exists() and (tmp_path / "report" / "results.csv").exists()
    assert (tmp_path / "report" / "rd_curves.png").stat().st_size > 0
    assert isinstance(res.plans[(1, "ilp", 4.0, "ptq")], BitPlan)


class OverBudget:
    """Returns the all-highest plan whatever the budget: the harness must refuse it."""

    def allocate(self, table, budget):
        plan = BitPlan(dict(zip(table.layer_names, [table.bits[-1]] * table.num_layers)))
        return Allocation(plan, AllocStatus.FEASIBLE, 0.0, plan.size_bits(table), 0.0, 0, "cheating")


@pytest.fixture
def over_budget_allocator(monkeypatch):
    """Registers the cheating allocator for one test only (the registry is global)."""
    from bitalloc import allocation

    monkeypatch.setitem(allocation._REGISTRY, "test-over-budget", OverBudget)
    return "test-over-budget"


def test_a_plan_over_budget_fails_loudly(tmp_path, images, over_budget_allocator):
    spec = StudySpec(qualities=(1,), allocators=("test-over-budget",), budgets=(4.0,), calib_images=2,
                     calib_crop=64)
    with pytest.raises(PlanOverBudgetError, match=r"q1 allocator 'test-over-budget' at avg_bits=4: plan size"):
        _run(spec, tmp_path, images)


def test_interrupted_run_resumes_from_its_cache(tmp_path, images):
    spec = StudySpec(qualities=(1, 2), allocators=("greedy", "uniform"), budgets=(6.0,), calib_images=2,
                     calib_crop=64)
    calls = []
    load = tiny_loader(calls)

    def flaky(name, quality):
        if len(calls) == 3:
            raise KeyboardInterrupt  # the user stops the study in the middle of a cell
        return load(name, quality)

    with pytest.raises(KeyboardInterrupt):
        _run(spec, tmp_path, images, loader=flaky)
    done = sorted(p.name for p in (tmp_path / "cells").glob("*.json"))
    assert len(done) == 3
    before = {p: (tmp_path / "cells" / p).read_text() for p in done}
    calls.clear()
    res = _run(spec, tmp_path, images, loader=load)
    # 2 fp32 + 2 uniform-8 anchors + 2 allocators x 2 qualities = 8 cells, 3 of them done before
    assert len(calls) == 8 - 3  # only the missing cells ran
    assert all((tmp_path / "cells" / p).read_text() == t for p, t in before.items())
    assert len(res.results) == 8


def _curve(allocator, budget, bpp, psnr):
    return [{"quality": q + 1, "allocator": allocator, "budget": budget, "mode": "ptq", "bpp": b, "psnr_rgb": p,
             "avg_bits": 32.0 if budget is None else budget, "compression_ratio": 1.0, "size_bits": 1e6,
             "solve_time_s": 0.001} for q, (b, p) in enumerate(zip(bpp, psnr))]


def test_bd_table_against_both_anchors():
    bpp = np.array([0.1, 0.2, 0.4, 0.8])
    psnr = np.array([27.0, 29.0, 31.0, 33.0])
    rows = (_curve("fp32", None, bpp, psnr) + _curve("uniform", 8.0, bpp, psnr)
            + _curve("ilp", 4.0, bpp * 1.1, psnr))
    bd = bd_table(pd.DataFrame(rows)).set_index("allocator")
    assert bd.loc["uniform", "bd_rate_vs_fp32_pct"] == pytest.approx(0.0, abs=1e-9)
    assert bd.loc["ilp", "bd_rate_vs_fp32_pct"] == pytest.approx(10.0)
    assert bd.loc["ilp", "bd_rate_vs_uniform8_pct"] == pytest.approx(10.0)
    assert np.isnan(bd.loc["ilp", "bd_rate_vs_fp32_qat_pct"])  # no QAT anchor in a PTQ study
    qat = [dict(r, mode="qat") for r in _curve("fp32", None, bpp * 1.1, psnr) + _curve("ilp", 4.0, bpp * 1.21, psnr)]
    bd_qat = bd_table(pd.DataFrame(rows + qat)).set_index(["allocator", "mode"])
    assert bd_qat.loc[("ilp", "qat"), "bd_rate_vs_fp32_qat_pct"] == pytest.approx(10.0)
    assert bd_qat.loc[("ilp", "qat"), "bd_rate_vs_fp32_pct"] == pytest.approx(21.0)
    ranked = rank(bd.reset_index())
    assert list(ranked.allocator) == ["uniform", "ilp"]


def test_cells_are_json_with_their_plan(tmp_path, images):
    spec = StudySpec(qualities=(1,), allocators=("ilp",), budgets=(5.0,), calib_images=2, calib_crop=64)
    _run(spec, tmp_path, images)
    cell = json.loads(next((tmp_path / "cells").glob("*_ilp_*.json")).read_text())
    assert BitPlan.from_dict(cell["plan"]).avg_bits() > 0
    assert {"bpp", "psnr_rgb", "solve_time_s", "size_bits", "plan_excess", "plan_measured_cost"} <= set(cell["row"])
    row = cell["row"]
    assert row["plan_excess"] == pytest.approx(row["plan_measured_cost"] - row["plan_predicted_cost"])


def test_cells_cached_before_the_plan_check_get_it_without_rerunning(tmp_path, images):
    spec = StudySpec(qualities=(1,), allocators=("ilp",), budgets=(5.0,), calib_images=2, calib_crop=64)
    first = _run(spec, tmp_path, images)
    path = next((tmp_path / "cells").glob("*_ilp_*.json"))
    cell = json.loads(path.read_text())
    excess = cell["row"].pop("plan_excess")
    path.write_text(json.dumps(cell))
    again = _run(spec, tmp_path, images)
    assert json.loads(path.read_text())["row"]["plan_excess"] == pytest.approx(excess)
    assert again.results.bpp.tolist() == first.results.bpp.tolist()
    assert again.bd.set_index("allocator").loc["ilp", "plan_excess_max"] == pytest.approx(excess)


def test_dynaquant_is_a_cell_of_the_same_study(tmp_path, images):
    spec = StudySpec(qualities=(1, 2), allocators=("ilp", "dynaquant"), budgets=(6.0,), modes=("qat",),
                     qat_steps=2, calib_images=2, calib_crop=64)
    train = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    res = _run(spec, tmp_path, images, train_images=train)
    dyn = res.results[res.results.allocator == "dynaquant"]
    assert len(dyn) == 2 and (dyn.status == "dynamic").all() and (dyn.bpp > 0).all()
    assert (dyn.avg_bits <= dyn.max_avg_bits + 1e-9).all() and (dyn.avg_bits >= 4).all()
    assert ((res.bd.allocator == "dynaquant") & (res.bd["mode"] == "qat")).sum() == 1
    assert not any(k[1] == "dynaquant" for k in res.plans)  # no static plan
    # the float model fine-tuned with the same QAT steps is a reference of its own, and the QAT rows' anchor
    fp = res.results[res.results.allocator == "fp32"].set_index(["mode", "quality"])
    assert len(fp) == 4 and (fp.loc["qat"].psnr_rgb != fp.loc["ptq"].psnr_rgb).any()
    assert "bd_rate_vs_fp32_qat_pct" in res.bd  # NaN here: 2 qualities are too few points for a BD-rate
    with pytest.raises(ValueError, match="add 'qat' to modes"):
        StudySpec(allocators=("dynaquant",), modes=("ptq",))
    low = StudySpec(qualities=(1,), allocators=("dynaquant",), budgets=(2.0,), modes=("qat",), qat_steps=1,
                    calib_images=2, calib_crop=64)
    with pytest.raises(BudgetError, match=r"q1 allocator 'dynaquant' at avg_bits=2: .*smallest achievable"):
        _run(low, tmp_path / "low", images, train_images=train)


def test_merge_results_recomputes_bd_rates(tmp_path, images):
    kw = dict(qualities=(1, 2), allocators=("greedy",), calib_images=2, calib_crop=64)
    a = _run(StudySpec(budgets=(8.0,), **kw), tmp_path, images)
    b = _run(StudySpec(budgets=(6.0,), **kw), tmp_path, images)
    merged = merge_results(a, b)
    assert set(merged.results.budget.dropna()) == {8.0, 6.0}
    assert (merged.results.allocator == "fp32").sum() == 2  # shared references kept once
    assert set(merged.bd.budget) == {8.0, 6.0}
    assert len(merged.plans) == 6  # greedy x 2 budgets x 2 qualities + the uniform 8-bit anchor per quality
