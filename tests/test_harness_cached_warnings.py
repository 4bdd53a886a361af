"""A study rerun from its cache reports the warnings its first run collected (issue 15's known defect): each
cell stores the warnings raised while computing it, each cost table beside it, and a cached rerun re-emits them.

Tiny study: one quality, ilp and greedy at 6 bits (plus the fp32 and uniform-8 references), 2 calibration
crops, 1 evaluation image. Its warnings come from every kind of work: the cost table (the loss), the static
cells' joint checks ('layers interact'), their outcomes and the float reference (evaluation).
"""

import json
import warnings

import pandas as pd
import pytest
import torch

from test_harness_parallel import TINY, load_tiny

from bitalloc import study_steps
from bitalloc.harness import StudySpec, run_study
from bitalloc.objective import resolve_loss
from bitalloc.sensitivity import PlanCheck


def warning_loss(model, batch):
    warnings.warn("warning_loss ran", UserWarning)
    return resolve_loss(model)(model, batch)


@pytest.fixture
def noisy_steps(monkeypatch):
    """Every joint check says the layers interact; every evaluation warns."""
    real_evaluate = study_steps.evaluate_images

    def evaluate(model, images):
        warnings.warn("evaluated here", RuntimeWarning)
        return real_evaluate(model, images)

    monkeypatch.setattr(study_steps, "evaluate_images", evaluate)
    monkeypatch.setattr(study_steps, "check_joint_plan",
                        lambda *a, **k: PlanCheck(predicted=0.01, measured=0.5, loss_fp=1.0, loss_plan=1.5))


def _run(out):
    """The study's result, and the warnings it showed once it was over."""
    g = torch.Generator().manual_seed(0)
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        res = run_study(StudySpec(**TINY), out, model_loader=load_tiny, progress=False, loss=warning_loss,
                        calib_images=torch.rand(2, 3, 64, 64, generator=g),
                        eval_images={"img0": torch.rand(3, 64, 64, generator=g)})
    return res, sorted((w.category.__name__, str(w.message), w.filename, w.lineno) for w in shown)


def test_a_cached_rerun_reports_the_warnings_of_the_first_run(tmp_path, noisy_steps):
    first, first_shown = _run(tmp_path)
    assert not first.results.cached.any()
    cells = {w["cell"] for w in first.warnings}
    assert "bmshj2018-hyperprior q1 cost table" in cells  # a table's, a static cell's and a reference's
    assert {"bmshj2018-hyperprior q1 ilp avg_bits=6 ptq", "bmshj2018-hyperprior q1 fp32 ptq"} <= cells
    assert any("layers interact" in w["message"] for w in first.warnings)
    csv = (tmp_path / "warnings.csv").read_text()
    again, again_shown = _run(tmp_path)
    assert again.results.cached.all()  # nothing computed again: the warnings come from the cache
    assert again.warnings == first.warnings
    assert again_shown == first_shown and ("RuntimeWarning", "evaluated here") in {s[:2] for s in again_shown}
    assert (tmp_path / "warnings.csv").read_text() == csv
    stored = json.loads(next((tmp_path / "cells").glob("*_ilp_*.json")).read_text())["warnings"]
    assert {w["message"] for w in stored} == {"evaluated here", next(w["message"] for w in first.warnings if w[
        "cell"] == "bmshj2018-hyperprior q1 ilp avg_bits=6 ptq" and "layers interact" in w["message"])}


def test_cells_cached_before_warnings_were_stored_still_load(tmp_path, noisy_steps):
    first = _run(tmp_path)[0]
    for path in (tmp_path / "cells").glob("*.json"):  # as an older version wrote them
        cell = json.loads(path.read_text())
        del cell["warnings"]
        path.write_text(json.dumps(cell))
    again = _run(tmp_path)[0]
    assert again.results.cached.all()
    pd.testing.assert_frame_equal(again.results.drop(columns="cached"), first.results.drop(columns="cached"))
    notes = [w for w in again.warnings if "before cells stored their warnings" in w["message"]]
    assert len(notes) == 1 and notes[0]["message"].startswith(f"{len(first.results)} cells of ")
    cells = {w["cell"] for w in again.warnings}
    assert "bmshj2018-hyperprior q1 cost table" in cells  # the table's own warnings are still there
    assert "bmshj2018-hyperprior q1 ilp avg_bits=6 ptq" not in cells


def test_a_cell_set_aside_and_recomputed_stores_its_own_warnings_not_the_set_aside_one(tmp_path, noisy_steps):
    first = _run(tmp_path)[0]
    next((tmp_path / "cells").glob("*_ilp_*.json")).write_text("{not json")
    second = _run(tmp_path)[0]
    assert [w for w in second.warnings if "CorruptCacheWarning" in w["category"]]  # this run's, about its cache
    assert not second.results.set_index("allocator").cached["ilp"]
    third = _run(tmp_path)[0]
    assert third.results.cached.all() and third.warnings == first.warnings
