"""Comparison harness (issue #5): quick study on a tiny model, budget checks, resume from the cache."""

import json
import re

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


def test_interrupted_run_resumes_from_its_cache(tmp_path, images, monkeypatch):
    from bitalloc import study_steps

    spec = StudySpec(qualities=(1, 2), allocators=("greedy", "uniform"), budgets=(6.0,), calib_images=2,
                     calib_crop=64)
    real, evaluated = study_steps.evaluate_images, []

    def flaky(model, imgs):
        if len(evaluated) == 3:
            raise KeyboardInterrupt  # the user stops the study in the 4th cell's evaluation
        evaluated.append(1)
        return real(model, imgs)

    monkeypatch.setattr(study_steps, "evaluate_images", flaky)
    with pytest.raises(KeyboardInterrupt):
        _run(spec, tmp_path, images)
    done = sorted(p.name for p in (tmp_path / "cells").glob("*.json"))
    assert len(done) == 3
    before = {p: (tmp_path / "cells" / p).read_text() for p in done}
    monkeypatch.setattr(study_steps, "evaluate_images", real)
    calls = []
    res = _run(spec, tmp_path, images, loader=tiny_loader(calls))
    assert calls == [1, 2]  # each float model is loaded once (its weights are part of every cell's key)
    # 2 fp32 + 2 uniform-8 anchors + 2 allocators x 2 qualities = 8 cells, 3 of them done before
    assert len(res.results) == 8 and res.results.cached.sum() == 3  # only the missing cells ran
    assert all((tmp_path / "cells" / p).read_text() == t for p, t in before.items())
    assert len(list((tmp_path / "cells").glob("*.json"))) == 8


def test_an_interrupted_cell_keeps_its_allocation_and_is_not_allocated_again(tmp_path, images, monkeypatch):
    from bitalloc import cells, study_run, study_steps

    spec = StudySpec(qualities=(1,), allocators=("greedy", "ilp"), budgets=(6.0,), calib_images=2, calib_crop=64)
    clean = _run(spec, tmp_path / "clean", images).results
    real = study_steps.evaluate_images

    evaluated = []

    def stopped(model, imgs):  # the float model's evaluation, then every allocation, then the plans' evaluations
        if evaluated:
            raise KeyboardInterrupt  # stopped in the first plan's evaluation: every allocation is done by then
        evaluated.append(1)
        return real(model, imgs)

    monkeypatch.setattr(study_steps, "evaluate_images", stopped)
    with pytest.raises(KeyboardInterrupt):
        _run(spec, tmp_path / "run", images)
    kept = sorted(p.name for p in (tmp_path / "run" / "allocations").glob("*.json"))
    assert len(kept) == 3 and len(list((tmp_path / "run" / "cells").glob("*.json"))) == 1  # fp32 only
    monkeypatch.setattr(study_steps, "evaluate_images", real)

    def never(*args, **kwargs):
        raise AssertionError("a kept allocation was computed again")

    monkeypatch.setattr(study_run, "allocate_task", never)
    monkeypatch.setattr(cells, "allocate_task", never)
    res = _run(spec, tmp_path / "run", images).results
    cols = ["allocator", "budget", "avg_bits", "objective", "bpp", "psnr_rgb", "plan_measured_cost"]
    assert res[cols].equals(clean[cols])
    (tmp_path / "run" / "allocations" / kept[0]).write_text("{}")  # unreadable: set aside, allocated again
    monkeypatch.undo()
    for p in (tmp_path / "run" / "cells").glob("*.json"):
        p.unlink()
    with pytest.warns(UserWarning, match="is not the allocation of its cell"):
        again = _run(spec, tmp_path / "run", images).results
    assert again[cols].equals(clean[cols])


# ------------------------------------------------------------------------------------- the cache's key
# A small PTQ + QAT study: cells fp32/ptq, fp32/qat, uniform 8/ptq, greedy 6/ptq, greedy 6/qat.
BASE = dict(qualities=(1,), allocators=("greedy",), budgets=(6.0,), modes=("ptq", "qat"), qat_steps=1,
            calib_images=2, calib_crop=64)
CELLS = {("fp32", "ptq"), ("fp32", "qat"), ("uniform", "ptq"), ("greedy", "ptq"), ("greedy", "qat")}
STATIC = {("uniform", "ptq"), ("greedy", "ptq"), ("greedy", "qat")}
QAT = {("fp32", "qat"), ("greedy", "qat")}


@pytest.fixture(scope="module")
def train_crops():
    return torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def base_study(tmp_path_factory, images, train_crops):
    out = tmp_path_factory.mktemp("base")
    res = _run(StudySpec(**BASE), out, images, train_images=train_crops)
    assert not res.results.cached.any()
    return out, res


def _copy_of(base_study, tmp_path):
    import shutil

    shutil.copytree(base_study[0], tmp_path / "out")
    return tmp_path / "out"


def _fresh(res) -> set:
    return {(r.allocator, r.mode) for r in res.results.itertuples() if not r.cached}


def _nudged(x: torch.Tensor) -> torch.Tensor:
    y = x.clone()
    y.view(-1)[0] = 1.0 - y.view(-1)[0]  # one value changed, names and shapes as before
    return y


CHANGES = {  # what changes -> the cells that must be recomputed
    "eval_limit": (dict(spec={"eval_limit": 1}), CELLS),
    "eval_pixels": (dict(eval=lambda ev: {k: _nudged(v) if k == "img1" else v for k, v in ev.items()}), CELLS),
    "weights": (dict(loader_seed=7), CELLS),
    "qat_steps": (dict(spec={"qat_steps": 2}), QAT),
    "qat_lr": (dict(spec={"qat_lr": 1e-3}), QAT),
    "train_images": (dict(train=_nudged), QAT),
    "calibration_method": (dict(spec={"calibration": "minmax"}), STATIC),
    "candidate_bits": (dict(spec={"candidate_bits": (2, 4, 6, 8)}), STATIC),
    "calibration_crops": (dict(calib=_nudged), STATIC),
    "table_fit": (dict(spec={"table_fit": "noise"}), STATIC),
}


SLOW_CHANGES = {"eval_pixels", "qat_lr", "train_images", "candidate_bits", "calibration_crops"}  # same key paths


@pytest.mark.parametrize("change", [pytest.param(c, marks=pytest.mark.slow) if c in SLOW_CHANGES else c
                                    for c in CHANGES])
def test_a_rerun_with_one_setting_changed_recomputes_the_cells_it_affects(change, base_study, tmp_path, images,
                                                                        train_crops):
    how, affected = CHANGES[change]
    out = _copy_of(base_study, tmp_path)
    spec = StudySpec(**{**BASE, **how.get("spec", {})})
    imgs = {"calib": how.get("calib", lambda x: x)(images["calib"]),
            "eval": how.get("eval", lambda e: e)(images["eval"])}

    def loader(name, quality):
        model = tiny_loader()(name, quality)
        if "loader_seed" in how:  # the same architecture with other weights (another checkpoint file)
            torch.manual_seed(how["loader_seed"])
            model.g_s[0].weight.data.add_(0.01 * torch.randn_like(model.g_s[0].weight))
        return model

    res = _run(spec, out, images=imgs, loader=loader, train_images=how.get("train", lambda x: x)(train_crops))
    assert _fresh(res) == affected
    kept = res.results[res.results.cached].set_index(["allocator", "mode"])
    first = base_study[1].results.set_index(["allocator", "mode"])
    assert kept.bpp.equals(first.loc[kept.index].bpp)  # what was reused is what the first run computed
    settings = json.loads((out / "spec.json").read_text())
    assert settings == res.settings and set(settings["weights"]) == {"1"}
    for field, value in how.get("spec", {}).items():
        assert settings[field] == (list(value) if isinstance(value, tuple) else value)
    if change == "eval_limit":  # the reproducer: never 2-image numbers under a 1-image setting
        assert set(res.images.image) == {"img0"} and len(res.images) == len(res.results)
        assert settings["inputs"]["eval_image_names"] == ["img0"]
        report = write_report(res, out / "report").read_text()
        assert "1 evaluation images (img0;" in report
    again = _run(StudySpec(**BASE), out, images, train_images=train_crops)  # the first settings' cells remain
    assert again.results.cached.all() and again.results.bpp.tolist() == base_study[1].results.bpp.tolist()


def _greedy_ptq_cell(out):
    return next((out / "cells").glob("bmshj2018-hyperprior_q1_greedy_avg_bits6_ptq_*.json"))


def _edit(path, fn):
    cell = json.loads(path.read_text())
    fn(cell)
    path.write_text(json.dumps(cell))


def _plan_over_budget(cell):
    cell["plan"]["bits"] = dict.fromkeys(cell["plan"]["bits"], 8)  # what an 8-bit plan would need ...
    cell["row"]["size_bits"] *= 1.5  # ... with a matching (hand-edited) size


CORRUPTIONS = {
    "bad_json": (lambda p: p.write_text(p.read_text()[:50]), "is not valid JSON"),
    "missing_field": (lambda p: _edit(p, lambda c: c.pop("images")), "has no per-image rows"),
    "missing_row_field": (lambda p: _edit(p, lambda c: c["row"].pop("size_bits")), "row without size_bits"),
    "key_mismatch": (lambda p: _edit(p, lambda c: c["key"].update(eval_limit=1)), "has a key other than"),
    "edited_number": (lambda p: _edit(p, lambda c: c["row"].update(bpp=c["row"]["bpp"] / 2)),
                      "bpp is not the mean of its per-image rows"),
    "plan_over_budget": (lambda p: _edit(p, _plan_over_budget), "plan size .* exceeds the budget"),
}


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_a_corrupt_cached_cell_is_named_set_aside_and_recomputed(corruption, base_study, tmp_path, images,
                                                                train_crops):
    from bitalloc.study_cache import CorruptCacheWarning

    out = _copy_of(base_study, tmp_path)
    path = _greedy_ptq_cell(out)
    damage, reason = CORRUPTIONS[corruption]
    damage(path)
    with pytest.warns(CorruptCacheWarning, match=rf"{re.escape(str(path))} .*{reason}"):
        res = _run(StudySpec(**BASE), out, images, train_images=train_crops)
    assert _fresh(res) == {("greedy", "ptq")}
    assert path.with_name(path.name + ".corrupt").exists()  # kept for a look, out of the cache's way
    assert json.loads(path.read_text())["row"] == json.loads(_greedy_ptq_cell(base_study[0]).read_text())["row"] | {
        "solve_time_s": pytest.approx(json.loads(path.read_text())["row"]["solve_time_s"])}
    assert res.results.bpp.tolist() == base_study[1].results.bpp.tolist()


def test_a_corrupt_cost_table_or_outcome_is_set_aside(base_study, tmp_path, images, train_crops):
    from bitalloc.study_cache import CorruptCacheWarning

    out = _copy_of(base_study, tmp_path)
    table = next((out / "sensitivity").glob("*.json"))
    table.write_text("{\"layers\": [")
    _greedy_ptq_cell(out).unlink()  # so its outcome is read again
    plan = [list(item) for item in sorted(base_study[1].plans[(1, "greedy", 6.0, "ptq")].bits.items())]
    outcome = next(p for p in (out / "outcomes").glob("*_ptq_*.json")
                   if json.loads(p.read_text())["key"]["plan"] == plan)
    outcome.write_text("not json")
    with pytest.warns(CorruptCacheWarning) as record:
        res = _run(StudySpec(**BASE), out, images, train_images=train_crops)
    named = " ".join(str(w.message) for w in record)
    assert str(table) in named and str(outcome) in named
    assert _fresh(res) == {("greedy", "ptq")}  # the re-measured table is the same: the other plans stand
    assert res.results.bpp.tolist() == base_study[1].results.bpp.tolist()


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


@pytest.mark.slow  # about a minute on 2 shared cores: the shipped model's sensitivity, 3 runs
def test_bitalloc_compare_reruns_into_its_out_with_another_limit(tmp_path):
    """The issue's reproducer through the CLI: --limit 1 after a 3-image run must not reuse 3-image numbers."""
    from PIL import Image

    from bitalloc.cli import main

    rng = np.random.default_rng(0)
    for sub, side, count in (("kodak", 64, 3), ("train", 160, 2)):
        (tmp_path / "data" / sub).mkdir(parents=True)
        for i in range(count):
            pixels = rng.integers(0, 255, (side, side, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "data" / sub / f"{sub}{i}.png")
    out = tmp_path / "out"
    argv = ["compare", "--quick", "--qualities", "1", "--allocators", "greedy", "--budgets", "6", "--threads", "1",
            "--data", str(tmp_path / "data"), "--out", str(out)]

    def run(*extra):
        assert main(argv + list(extra)) == 0
        return pd.read_csv(out / "results.csv"), pd.read_csv(out / "images.csv"), (out / "report.md").read_text()

    results, images, _ = run()
    assert not results.cached.any() and set(images.image) == {"kodak0", "kodak1", "kodak2"}
    results, images, report = run("--limit", "1")
    assert not results.cached.any() and set(images.image) == {"kodak0"}  # recomputed, nothing mixed in
    assert json.loads((out / "spec.json").read_text())["eval_limit"] == 1 and "1 evaluation images" in report
    results, images, _ = run()  # the first settings' cells are still there
    assert results.cached.all() and len(images) == 3 * len(results)


def test_an_unreachable_dynaquant_budget_is_caught_by_type_not_by_text(tmp_path, images, monkeypatch):
    import bitalloc.dynaquant as dynaquant
    from bitalloc.errors import BudgetTooSmallError

    def unreachable(*args, **kwargs):
        raise BudgetTooSmallError("target 2 bits < 4.31 bits")

    def other(*args, **kwargs):
        raise ValueError("a loss below the smallest achievable value")  # the old text, but not a budget error

    spec = StudySpec(qualities=(1,), allocators=("dynaquant",), budgets=(2.0,), modes=("qat",), qat_steps=1,
                     calib_images=2, calib_crop=64)
    train = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    monkeypatch.setattr(dynaquant, "run_dynaquant_cell", unreachable)
    with pytest.raises(BudgetTooSmallError, match=r"q1 allocator 'dynaquant' at avg_bits=2: target 2 bits < 4.31"):
        _run(spec, tmp_path, images, train_images=train)
    monkeypatch.setattr(dynaquant, "run_dynaquant_cell", other)
    with pytest.raises(ValueError) as info:
        _run(spec, tmp_path, images, train_images=train)
    assert not isinstance(info.value, BudgetError) and str(info.value).startswith("a loss below")


def test_study_steps_shadow_no_module_and_no_public_name():
    import importlib
    import pkgutil

    import bitalloc
    import bitalloc.models
    import bitalloc.solvers
    from bitalloc import study_steps

    modules, public = {"solvers", "models"}, set(bitalloc.__all__) | set(dir(bitalloc))
    infos = [i for pkg in (bitalloc, bitalloc.solvers, bitalloc.models)
             for i in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + ".")]
    assert {"bitalloc.models.train", "bitalloc.solvers.ilp", "bitalloc.sensitivity.calibration"} <= {
        i.name for i in infos}
    for info in infos:
        if info.name.endswith("__main__"):
            continue
        modules.add(info.name.rsplit(".", 1)[-1])
        if info.name != study_steps.__name__:
            public |= set(getattr(importlib.import_module(info.name), "__all__", ()))
    for name in study_steps.__all__:
        assert callable(getattr(study_steps, name)), name
        assert name not in modules, f"study_steps.{name} shadows the module bitalloc...{name}"
        assert name not in public, f"study_steps.{name} shadows a public name of bitalloc"

