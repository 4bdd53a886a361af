"""The harness on an executor (issue 15 item 1), its collected warnings, and interaction-aware cells (issue 12).

A tiny study (1 quality, ilp and greedy at one budget, 1 evaluation image, 2 calibration crops, minmax
calibration, candidate bits 4 and 8) run serially, on a local process pool and on a Dask LocalCluster must give
the same numbers and the same cache files.
"""

import collections
import json
import shutil
import time
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
import pytest
import torch

from bitalloc import study_steps
from bitalloc.plan import BitPlan
from bitalloc.costs import CostTable
from bitalloc.harness import StudySpec, run_study
from bitalloc.models import build_model, lambda_of
from bitalloc.objective import resolve_loss

TINY = dict(qualities=(1,), allocators=("ilp", "greedy"), budgets=(6.0,), candidate_bits=(4, 8), calib_images=2,
            calib_crop=64, eval_limit=1, calibration="minmax")


def load_tiny(name, quality):
    torch.manual_seed(quality)
    model = build_model(name, quality).eval()
    model.meta = {"lambda": lambda_of(quality)}
    model.update(force=True)
    return model


def noisy_rd_loss(model, batch):
    """The default RD loss, saying that it ran: shows that a user loss reaches the workers, and that their
    warnings come back."""
    warnings.warn("noisy_rd_loss ran", UserWarning)
    return resolve_loss(model)(model, batch)


@pytest.fixture(scope="module")
def inputs():
    g = torch.Generator().manual_seed(0)
    return {"calib_images": torch.rand(2, 3, 64, 64, generator=g),
            "eval_images": {f"img{k}": torch.rand(3, 64, 64, generator=g) for k in range(2)}}


def _run(out, inputs, spec=None, **kw):
    return run_study(spec or StudySpec(**TINY), out, model_loader=load_tiny, progress=False, **inputs, **kw)


@pytest.fixture(scope="module")
def serial(tmp_path_factory, inputs):
    out = tmp_path_factory.mktemp("serial")
    with pytest.warns(UserWarning, match="noisy_rd_loss ran"):
        return out, _run(out, inputs, loss=noisy_rd_loss)


def _numbers(frame: pd.DataFrame) -> pd.DataFrame:
    """Everything but timings (solve_time_s, encoding_time, ...) and the cached flag."""
    return frame.drop(columns=[c for c in frame if "time" in c or c == "cached"])


def _files(out) -> dict:
    return {sub: sorted(p.name for p in (out / sub).iterdir()) for sub in ("cells", "outcomes", "sensitivity")}


def _same_as_serial(res, out, serial, inputs):
    s_out, s_res = serial
    assert not res.results.cached.any()
    pd.testing.assert_frame_equal(_numbers(res.results), _numbers(s_res.results), check_like=True)
    pd.testing.assert_frame_equal(_numbers(res.images), _numbers(s_res.images))
    assert res.plans == s_res.plans
    assert _files(out) == _files(s_out)  # the same cache keys, nothing computed twice under other names
    labels = {(w["cell"], w["message"]) for w in res.warnings}
    assert labels == {(w["cell"], w["message"]) for w in s_res.warnings}
    assert ("bmshj2018-hyperprior q1 cost table", "noisy_rd_loss ran") in labels  # from a worker
    assert ("bmshj2018-hyperprior q1 ilp avg_bits=6 ptq", "noisy_rd_loss ran") in labels
    again = _run(out, inputs, loss=noisy_rd_loss)  # the serial run resumes from the workers' cache
    assert again.results.cached.all()
    pd.testing.assert_frame_equal(_numbers(again.results), _numbers(s_res.results), check_like=True)


@pytest.mark.slow  # about 50 s on the loaded 2-core sandbox, most of it starting 2 spawned workers; Dask's below
def test_a_local_pool_of_two_workers_gives_the_serial_results(tmp_path, serial, inputs):
    with pytest.warns(UserWarning, match="noisy_rd_loss ran"):
        res = _run(tmp_path, inputs, loss=noisy_rd_loss, workers=2)
    _same_as_serial(res, tmp_path, serial, inputs)


def test_a_dask_local_cluster_gives_the_serial_results(tmp_path, serial, inputs):
    distributed = pytest.importorskip("distributed")
    cluster = distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None)
    with cluster, distributed.Client(cluster) as client, pytest.warns(UserWarning, match="noisy_rd_loss ran"):
        res = _run(tmp_path, inputs, loss=noisy_rd_loss, executor=client.get_executor())
    _same_as_serial(res, tmp_path, serial, inputs)


def test_workers_racing_for_one_outcome_compute_it_once(tmp_path, inputs, monkeypatch):
    """At 8 bits every allocator returns the all-8 plan: three cells, one outcome, computed once even when
    their allocations finish together on two workers."""
    real, calls = study_steps.quantize_plan, collections.Counter()

    def slow(model, plan, *args, **kwargs):
        calls[tuple(sorted(getattr(plan, "bits", plan).items()))] += 1
        time.sleep(0.3)
        return real(model, plan, *args, **kwargs)

    monkeypatch.setattr(study_steps, "quantize_plan", slow)
    spec = StudySpec(**{**TINY, "allocators": ("ilp", "greedy", "uniform"), "budgets": (8.0,), "candidate_bits": (8,)})
    with ThreadPoolExecutor(2) as pool:
        res = _run(tmp_path, inputs, spec, executor=pool)
    cells = res.results[res.results.allocator != "fp32"]
    assert len(cells) == 3 and cells.bpp.nunique() == 1
    assert sorted(calls.values()) == [1, 1] and () in calls  # the float reference, and the all-8 plan once
    assert len(list((tmp_path / "outcomes").glob("*.json"))) == 1


def test_warnings_are_collected_per_cell_and_shown_after_the_progress_bar(tmp_path, inputs, monkeypatch):
    from bitalloc import harness
    from bitalloc.sensitivity import PlanCheck

    monkeypatch.setattr(study_steps, "check_joint_plan",
                        lambda *a, **k: PlanCheck(predicted=0.01, measured=0.5, loss_fp=1.0, loss_plan=1.5))
    shown_while_running = []

    class Bar(harness.tqdm):
        def update(self, n=1):
            shown_while_running.append(len(record))
            return super().update(n)

    monkeypatch.setattr(harness, "tqdm", Bar)
    with pytest.warns(UserWarning, match="layers interact") as record:
        res = run_study(StudySpec(**TINY), tmp_path, model_loader=load_tiny, progress=True, **inputs)
    assert shown_while_running == [0] * len(res.results)  # nothing printed through the bar
    interact = [w for w in res.warnings if "layers interact" in w["message"]]
    assert sorted(w["cell"] for w in interact) == ["bmshj2018-hyperprior q1 greedy avg_bits=6 ptq",
                                                   "bmshj2018-hyperprior q1 ilp avg_bits=6 ptq",
                                                   "bmshj2018-hyperprior q1 uniform avg_bits=8 ptq"]
    assert all(w["message"].startswith(f"bmshj2018-hyperprior q1 allocator '{w['allocator']}'") for w in interact)
    assert all(w["filename"].endswith("cells.py") for w in interact)
    csv = pd.read_csv(tmp_path / "warnings.csv")
    assert sorted(csv[csv.message.str.contains("layers interact")].cell) == sorted(w["cell"] for w in interact)


def test_iqp_and_verify_cells(tmp_path, inputs):
    spec = StudySpec(**{**TINY, "allocators": ("ilp", "iqp", "ilp+verify", "iqp+verify"), "verify_max_evals": 3})
    res = _run(tmp_path, inputs, spec).results.set_index("allocator")
    pairs = next((tmp_path / "sensitivity").glob("*_pairs_*.json"))
    table = CostTable.from_json(pairs)
    assert table.pairwise and res.loc["iqp", "pairwise_pairs"] == len(table.pairwise)
    assert res.loc[["iqp", "iqp+verify"], "pairwise_pairs"].eq(len(table.pairwise)).all()
    assert res.loc[["ilp", "ilp+verify"], "pairwise_pairs"].isna().all()  # the additive table
    verified = res.loc[["ilp+verify", "iqp+verify"]]
    assert verified.verify_evaluations.between(1, 3).all()
    assert res.loc[["ilp", "iqp"], "verify_evaluations"].isna().all()
    assert (verified.size_bits <= verified.budget_bits).all()
    assert (verified.plan_measured_cost <= verified.verify_start_measured + 1e-12).all()  # never worse than its start
    for name in ("ilp+verify", "iqp+verify"):
        cell = json.loads(next((tmp_path / "cells").glob(f"*_{name}_*.json")).read_text())
        assert len(cell["verify_history"]) == cell["row"]["verify_evaluations"]
        assert cell["key"]["verify"] == {"max_evals": 3, "tolerance": 0.002}
    # other interaction settings: the pairwise table and the iqp cells only; other verify settings: +verify only
    again = _run(tmp_path, inputs, StudySpec(**{**spec.__dict__, "interaction_noise_floor": 0.01}))
    fresh = set(again.results[~again.results.cached].allocator)
    assert fresh == {"iqp", "iqp+verify"} and len(list((tmp_path / "sensitivity").glob("*_pairs_*.json"))) == 2
    again = _run(tmp_path, inputs, StudySpec(**{**spec.__dict__, "verify_max_evals": 2}))
    assert set(again.results[~again.results.cached].allocator) == {"ilp+verify", "iqp+verify"}
    # the noise-aware repair: its own key (the plain repair's key does not name it), never worse than its start
    aware = _run(tmp_path, inputs, StudySpec(**{**spec.__dict__, "verify_noise_z": 2.0}))
    fresh = aware.results[~aware.results.cached].set_index("allocator")
    assert set(fresh.index) == {"ilp+verify", "iqp+verify"}
    assert (fresh.plan_measured_cost <= fresh.verify_start_measured + 1e-12).all()
    keys = [json.loads(f.read_text())["key"]["verify"] for f in (tmp_path / "cells").glob("*_ilp+verify_*.json")]
    assert {"max_evals": 3, "tolerance": 0.002, "noise_z": 2.0} in keys


def test_in_context_repair_cells_have_their_own_key(tmp_path, inputs):
    spec = StudySpec(**{**TINY, "allocators": ("ilp", "ilp+verify"), "verify_max_evals": 3})
    _run(tmp_path, inputs, spec)
    # 14 layers x 1 other bit-width: a round of probes and the re-solved plan fit in 16 measurements
    context = StudySpec(**{**spec.__dict__, "verify_correction": "context", "verify_max_evals": 16})
    res = _run(tmp_path, inputs, context).results
    fresh = res[~res.cached].set_index("allocator")
    assert set(fresh.index) == {"ilp+verify"}  # the ilp cell is not a repair: still cached
    row = fresh.loc["ilp+verify"]
    assert row.size_bits <= row.budget_bits and row.plan_measured_cost <= row.verify_start_measured + 1e-12
    repaired = row.plan_measured_cost < row.verify_start_measured
    assert pd.notna(row.get("verify_learned_predicted", np.nan)) == repaired  # the repair's own prediction
    keys = [json.loads(f.read_text())["key"]["verify"] for f in (tmp_path / "cells").glob("*_ilp+verify_*.json")]
    assert {"max_evals": 16, "tolerance": 0.002, "correction": "context"} in keys
    assert {"max_evals": 3, "tolerance": 0.002} in keys  # the default correction is not in the key
    with pytest.raises(ValueError, match="verify_correction must be one of auto, unary, pairwise, context"):
        StudySpec(verify_correction="group")
    with pytest.raises(ValueError, match=r"verify_correction='context' .* PTQ repairs only; allocator 'ilp\+verify"):
        StudySpec(allocators=("ilp+verify+qat",), modes=("qat",), verify_correction="context")


def test_verify_holdout_photos_confirm_ptq_repairs(tmp_path, inputs):
    g = torch.Generator().manual_seed(1)
    photos = {f"p{k}": torch.rand(3, 64, 64, generator=g) for k in range(4)}  # 2 calibration, 2 held out
    spec = StudySpec(**{**TINY, "allocators": ("ilp", "ilp+verify"), "verify_max_evals": 3, "verify_holdout": 2})
    res = _run(tmp_path, {**inputs, "calib_images": photos}, spec).results.set_index("allocator")
    row = res.loc["ilp+verify"]
    assert row.plan_measured_cost <= row.verify_start_measured + 1e-12 and row.size_bits <= row.budget_bits
    cell = json.loads(next((tmp_path / "cells").glob("*_ilp+verify_*.json")).read_text())
    assert cell["key"]["verify"]["holdout"]["photos"] == 2 and cell["key"]["verify"]["holdout"]["images"]
    ilp = json.loads(next((tmp_path / "cells").glob("*_ilp_avg*.json")).read_text())
    assert "verify" not in ilp["key"]
    # a plan other than the ilp's (its start) comes back only when the held-out crops confirmed it
    repaired = BitPlan.from_dict(cell["plan"]).bits != BitPlan.from_dict(ilp["plan"]).bits
    assert (cell["row"].get("verify_holdout_kept") == "best") == repaired
    # the same calibration photos without the holdout: the +verify cell is recomputed, the ilp cell is not
    plain = _run(tmp_path, {**inputs, "calib_images": photos}, StudySpec(**{**spec.__dict__, "verify_holdout": 0}))
    assert set(plain.results[~plain.results.cached].allocator) == {"ilp+verify"}
    with pytest.raises(ValueError, match="verify_holdout=2 needs calibration photos by name"):
        _run(tmp_path / "t", inputs, spec)  # a tensor of crops: no further photos
    with pytest.raises(ValueError, match="verify_holdout=3: only 2 photo"):
        _run(tmp_path / "u", {**inputs, "calib_images": photos}, StudySpec(**{**spec.__dict__, "verify_holdout": 3}))
    with pytest.raises(ValueError, match="verify_holdout must be an integer >= 0"):
        StudySpec(verify_holdout=-1)
    with pytest.raises(ValueError, match=r"verify_holdout confirms PTQ repairs only; allocator 'ilp\+verify\+qat'"):
        StudySpec(allocators=("ilp+verify+qat",), modes=("qat",), verify_holdout=2)


def test_unknown_allocator_names_are_refused_by_name():
    with pytest.raises(ValueError, match=r"unknown allocator 'ilp\+verfy'; valid allocators: .*ilp\+verify"):
        StudySpec(allocators=("ilp", "ilp+verfy"))
    assert StudySpec(allocators=("fmpq+verify", "iqp")).allocators == ("fmpq+verify", "iqp")


def test_a_user_loss_reaches_qat_and_keys_its_cells(tmp_path, inputs):
    spec = StudySpec(**{**TINY, "allocators": ("uniform",), "budgets": (8.0,), "modes": ("qat",), "qat_steps": 1})
    train = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    plain = _run(tmp_path, inputs, spec, train_images=train)
    with pytest.warns(UserWarning, match="noisy_rd_loss ran"):
        res = _run(tmp_path, inputs, spec, train_images=train, loss=noisy_rd_loss)
    assert not res.results[res.results["mode"] == "qat"].cached.any()  # not the default loss's QAT cells
    fp = res.results.set_index(["allocator", "mode"]).cached
    assert fp[("fp32", "ptq")] and not fp[("uniform", "ptq")]  # the float model's evaluation does not use it
    assert any(w["cell"] == "bmshj2018-hyperprior q1 uniform avg_bits=8 qat" for w in res.warnings)
    assert any(w["cell"] == "bmshj2018-hyperprior q1 fp32 qat" for w in res.warnings)
    assert len(plain.results) == len(res.results)


def test_a_qat_outcome_does_not_depend_on_the_qat_runs_before_it(tmp_path, inputs):
    """Training crops from an image folder: each QAT run draws its own stream of the seed, so an outcome
    recomputed alone (on a resume, or on another worker) is the one the full run computed after others."""
    import numpy as np
    from PIL import Image

    from bitalloc.data import ImageFolder

    rng = np.random.default_rng(0)
    (tmp_path / "train").mkdir()
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (80, 80, 3), dtype=np.uint8)).save(tmp_path / "train" / f"t{i}.png")
    spec = StudySpec(**{**TINY, "allocators": ("uniform",), "budgets": (8.0, 4.0), "modes": ("qat",), "qat_steps": 2,
                        "qat_lr": 1e-3})

    def run():
        return _run(tmp_path / "out", inputs, spec, train_images=ImageFolder(tmp_path / "train", crop=64, seed=0))

    first = run().results.set_index(["allocator", "budget", "mode"])
    for cell in (tmp_path / "out" / "cells").glob("*_avg_bits4_qat_*.json"):
        cell.unlink()
    for outcome in (tmp_path / "out" / "outcomes").glob("*_qat_*.json"):
        if json.loads(outcome.read_text())["key"]["plan"][0][1] == 4:
            outcome.unlink()
            shutil.rmtree(tmp_path / "out" / "qat" / outcome.stem)  # its QAT run state too: trained again
    again = run().results.set_index(["allocator", "budget", "mode"])
    assert not again.loc[("uniform", 4.0, "qat"), "cached"]
    assert again.loc[("uniform", 4.0, "qat"), "psnr_rgb"] == first.loc[("uniform", 4.0, "qat"), "psnr_rgb"]
    assert again.loc[("uniform", 4.0, "qat"), "qat_final_loss"] == first.loc[("uniform", 4.0, "qat"), "qat_final_loss"]


def test_shipped_arguments_travel_once_and_an_image_folder_as_its_recipe(tmp_path):
    import pickle

    import numpy as np
    from PIL import Image

    from bitalloc.cells import folder_recipe
    from bitalloc.data import ImageFolder
    from bitalloc.executor import Shipped

    for i in range(2):
        Image.fromarray(np.full((96, 96, 3), 40 * i, dtype=np.uint8)).save(tmp_path / f"p{i}.png")
    folder = ImageFolder(tmp_path, crop=64, seed=0)
    shipped = Shipped(folder, folder_recipe(folder))
    assert shipped.get() is folder  # here: the object itself
    blob = pickle.dumps(shipped)
    assert len(blob) < 2000 < len(pickle.dumps(folder))  # the paths, not the decoded photos
    there = pickle.loads(blob).get()
    assert there is not folder and there.paths == folder.paths and there.crop == 64
    assert all(torch.equal(a, b) for a, b in zip(there.images, folder.images))
    assert pickle.loads(blob).get() is there  # decoded once per worker process
    tensor = Shipped(torch.arange(6.0))
    assert torch.equal(pickle.loads(pickle.dumps(tensor)).get(), torch.arange(6.0))


def test_qat_aware_cells_allocate_on_the_recovered_table_in_qat_mode_only(tmp_path, inputs):
    from bitalloc.interactions import frame_matrix
    from bitalloc.recovery import measure_recovered_costs
    from bitalloc.report import write_report

    train = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    spec = StudySpec(**{**TINY, "allocators": ("ilp", "ilp+qat"), "modes": ("ptq", "qat"), "qat_steps": 2,
                        "recovery_steps": 1, "candidate_bits": (2, 8)})
    study = _run(tmp_path, inputs, spec, train_images=train)
    res = study.results
    cells = res[res.allocator == "ilp+qat"]
    assert list(cells["mode"]) == ["qat"]  # no PTQ cell: its plan is made for QAT
    rec_path = next((tmp_path / "sensitivity").glob("*_recovered_*[0-9a-f].json"))
    recovered = CostTable.from_json(rec_path)
    frame = pd.read_csv(rec_path.with_name(rec_path.stem + "_frame.csv"))
    assert len(frame) >= 1 and {"ptq_cost", "zeta", "zeta_se", "cost"} <= set(frame.columns)
    assert study.recovered.drop(columns="quality").equals(frame) and (study.recovered.quality == 1).all()
    report = write_report(study, tmp_path / "report", command="test")
    assert "## QAT-aware costs" in report.read_text()
    assert pd.read_csv(tmp_path / "report" / "qat_aware_costs.csv").shape == study.recovered.shape
    # the table is the library's own measurement with the study's settings (QAT steps, seed, crops)
    model = load_tiny("bmshj2018-hyperprior", 1)
    base = CostTable.from_json(next(p for p in (tmp_path / "sensitivity").glob("*.json")
                                    if "_pairs_" not in p.name and "_recovered_" not in p.name))
    raw = pd.read_csv(next((tmp_path / "sensitivity").glob("*_frame_*.csv")))  # its raw cells pick the bits
    zeta = frame_matrix(raw, "zeta", base.layer_names, base.bits)
    again = measure_recovered_costs(model, train, base, inputs["calib_images"], steps=1, lr=spec.qat_lr,
                                    calibration="minmax", eval_crop=64, zeta=zeta, progress=False)
    assert recovered.cost == pytest.approx(again.table.cost)
    row = cells.iloc[0]
    plan = json.loads(next((tmp_path / "cells").glob("*_ilp+qat_*.json")).read_text())["plan"]["bits"]
    assert row.plan_predicted_cost == pytest.approx(sum(
        recovered.cost[recovered.index(n), recovered.bits.index(b)] for n, b in plan.items()))
    assert row.size_bits <= row.budget_bits
    # another recovery setting recomputes the QAT-aware table and its cells only
    again = _run(tmp_path, inputs, StudySpec(**{**spec.__dict__, "recovery_steps": 2}), train_images=train)
    assert set(again.results[~again.results.cached].allocator) == {"ilp+qat"}
    # +verify+qat: the same start plan, measured after the same QAT, repaired by that measurement
    vstudy = _run(tmp_path, inputs, StudySpec(**{**spec.__dict__, "allocators": ("ilp+qat", "ilp+verify+qat"),
                                                 "verify_max_evals": 2}), train_images=train)
    verified = vstudy.results
    assert "(undocumented column)" not in write_report(vstudy, tmp_path / "report_v", command="test").read_text()
    # one anchor per QAT-aware table (recovery steps 1 and 2 above), kept beside its cells for its checks and verify
    assert {p.parent for p in (tmp_path / "recovery").glob("*/anchor.json")} == {p.parent for p in (
        tmp_path / "recovery").glob("*/recovered_cells.json")} and len(list((tmp_path / "recovery").iterdir())) == 2
    assert list(verified[verified.allocator == "ilp+verify+qat"]["mode"]) == ["qat"]
    mine, base_row = (verified[verified.allocator == a].iloc[0] for a in ("ilp+verify+qat", "ilp+qat"))
    assert 1 <= mine.verify_evaluations <= 2 and mine.size_bits <= mine.budget_bits
    assert mine.verify_start_measured == pytest.approx(base_row.plan_measured_cost, rel=1e-6)
    assert mine.plan_measured_cost <= mine.verify_start_measured + 1e-9
    with pytest.raises(ValueError, match=r"'ilp\+qat' allocates on QAT-aware costs .* add 'qat' to modes"):
        StudySpec(allocators=("ilp+qat",), modes=("ptq",))
    with pytest.raises(ValueError, match="recovery_steps must be None or an integer >= 1"):
        StudySpec(recovery_steps=0)
