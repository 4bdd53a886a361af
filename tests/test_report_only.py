"""studies/compare_allocators.py --report-only: a study's report rebuilt from its CSVs, plans re-allocated and
checked against what the study recorded (issue 15, item 3)."""

from __future__ import annotations

import pathlib
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch.nn as nn

from bitalloc.allocation import build_allocator
from bitalloc.costs import Budget, CostTable
from conftest import load_study

TABLE = CostTable.from_arrays(["0", "1"], [4, 8], np.array([[0.5, 0.01], [0.05, 0.0]]), num_params=[1000, 200])


@pytest.fixture
def study(tmp_path, monkeypatch):
    mod = load_study("compare_allocators")
    monkeypatch.setattr(mod, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(mod, "load_model", lambda name, q, pretrained: nn.Sequential(nn.Conv2d(3, 4, 3),
                                                                                     nn.Conv2d(4, 3, 3)))
    monkeypatch.setattr("bitalloc.study_steps.calibration_crops", lambda *a, **k: None)
    cache = tmp_path / "cache"
    rows = []
    for q, (bpp, psnr) in enumerate(zip([0.1, 0.2, 0.4, 0.8], [27.0, 29.0, 31.0, 33.0]), start=1):
        TABLE.to_json((cache / "m" / "report_tables").mkdir(parents=True, exist_ok=True)
                      or cache / "m" / "report_tables" / f"m_q{q}.json")
        rows.append(dict(model="m", quality=q, allocator="fp32", budget=np.nan, budget_kind="avg_bits",
                         mode="ptq", bpp=bpp, psnr_rgb=psnr, avg_bits=32.0))
        for allocator, budget in (("ilp", 5.0), ("uniform", 8.0)):
            alloc = build_allocator(allocator).allocate(TABLE, Budget.from_avg_bits(TABLE, budget))
            rows.append(dict(model="m", quality=q, allocator=allocator, budget=budget, budget_kind="avg_bits",
                             mode="ptq", bpp=bpp * 1.01, psnr_rgb=psnr - 0.1, avg_bits=alloc.plan.avg_bits(TABLE),
                             size_bits=alloc.plan.size_bits(TABLE), objective=alloc.objective,
                             compression_ratio=TABLE.fp32_size_bits / alloc.plan.size_bits(TABLE),
                             solve_time_s=1e-3))
    folder = tmp_path / "results" / "compare_m"
    folder.mkdir(parents=True)
    results = pd.DataFrame(rows)
    images = results[["model", "quality", "allocator", "budget", "mode", "bpp", "psnr_rgb"]].assign(image="img0")
    images.to_csv(folder / "images.csv", index=False)
    (folder / "report.md").write_text("# old\n\nCommand: `python studies/compare_allocators.py --model m`\n")
    args = SimpleNamespace(qat_steps=100, data=None, cache=str(cache))
    return mod, folder, results, args


def test_report_only_rebuilds_plans_and_figures_from_the_csvs(study):
    mod, folder, results, args = study
    results.to_csv(folder / "results.csv", index=False)
    md = mod.rebuild_report("m", args, "python studies/compare_allocators.py --report-only").read_text()
    assert "Command: `python studies/compare_allocators.py --model m`" in md  # the run's own command is kept
    assert "report rebuilt by `python studies/compare_allocators.py --report-only`" in md
    plans = pd.read_csv(folder / "plans.csv", dtype={"layer": str})
    assert len(plans) == 4 * 2 * 2 and set(plans.layer) == {"0", "1"}
    assert plans.num_params.notna().all()  # from the layer graph of the loaded model
    assert (folder / "bits_heatmap.png").stat().st_size > 0 and (folder / "rd_curves.png").stat().st_size > 0


def test_report_only_refuses_a_plan_other_than_the_recorded_one(study):
    mod, folder, results, args = study
    bad = results.copy()
    bad.loc[(bad.quality == 3) & (bad.allocator == "ilp"), "objective"] += 0.1
    bad.to_csv(folder / "results.csv", index=False)
    with pytest.raises(SystemExit, match=r"m q3 ilp ptq at 5 bits records .* objective"):
        mod.rebuild_report("m", args, "report-only")


def test_the_study_passes_its_table_fit_and_keeps_noise_results_apart(study, monkeypatch, tmp_path):
    mod, folder, results, args = study
    specs = []
    monkeypatch.setattr(mod, "run_study", lambda spec, out, data=None: specs.append(spec) or spec)
    monkeypatch.setattr(mod, "merge_results", lambda *r: r)
    monkeypatch.setattr(mod, "layer_frame", lambda models: None)

    def write_report(merged, out, **kw):
        out.mkdir(parents=True)
        (out / "report.md").write_text("report")
        return out / "report.md"

    monkeypatch.setattr(mod, "write_report", write_report)
    mod.main(["--model", "m", "--modes", "ptq", "--qualities", "1", "--table-fit", "noise"])
    mod.main(["--model", "m", "--modes", "ptq", "--qualities", "1", "--out", str(tmp_path / "o_{model}")])
    assert [s.table_fit for s in specs] == ["noise", "clip"]
    assert (folder.parent / "compare_m_noise").is_dir() and (tmp_path / "o_m").is_dir()  # --out '{model}' kept
    with pytest.raises(SystemExit):
        mod.main(["--table-fit", "isotonic"])


def test_report_only_gives_iqp_the_pairwise_terms_as_the_study_did(study):
    """iqp cells re-allocate on the table with its pairwise terms (report_tables/m_q<q>_pairs.json), not on the
    single-layer table (there its plan and objective would differ and the rebuild would stop)."""
    mod, folder, results, args = study
    paired = CostTable.from_arrays(["0", "1"], [4, 8], TABLE.cost, num_params=[1000, 200],
                                   pairwise={("0", "1"): np.array([[0.0, 1.0], [0.0, 0.0]])})  # 0@4 with 1@8: +1
    rows = []
    for q in range(1, 5):
        paired.to_json(pathlib.Path(args.cache) / "m" / "report_tables" / f"m_q{q}_pairs.json")
        alloc = build_allocator("iqp").allocate(paired, Budget.from_avg_bits(paired, 5.0))
        plain = build_allocator("ilp").allocate(TABLE, Budget.from_avg_bits(TABLE, 5.0))
        assert alloc.plan.bits != plain.plan.bits  # the pairs change the plan
        row = results[(results.quality == q) & (results.allocator == "ilp")].iloc[0].to_dict()
        rows.append({**row, "allocator": "iqp", "objective": alloc.objective, "size_bits": alloc.plan.size_bits(paired),
                     "avg_bits": alloc.plan.avg_bits(paired)})
    pd.concat([results, pd.DataFrame(rows)], ignore_index=True).to_csv(folder / "results.csv", index=False)
    mod.rebuild_report("m", args, "report-only")
    plans = pd.read_csv(folder / "plans.csv", dtype={"layer": str})
    iqp = plans[plans.allocator == "iqp"]
    assert len(iqp) == 4 * 2 and set(zip(iqp.layer, iqp.bits)) == {("0", 4), ("1", 4)}


class _Stop(Exception):
    pass


def _specs_of(argv, monkeypatch, stop_when=lambda spec: True) -> list:
    """The StudySpecs compare_allocators.main builds for ``argv`` (its runs stopped once ``stop_when`` holds)."""
    mod = load_study("compare_allocators")
    specs = []

    def run_study(spec, cache, data=None):
        specs.append(spec)
        if stop_when(spec):
            raise _Stop
        return None

    monkeypatch.setattr(mod, "run_study", run_study)
    with pytest.raises(_Stop):
        mod.main(argv)
    return specs


def test_seed_reaches_every_study_spec(tmp_path, monkeypatch):
    """--seed picks the QAT batches of the static plans and of DynaQuant (and so their cache keys)."""
    specs = _specs_of(["--model", "m", "--modes", "qat", "--allocators", "ilp", "--seed", "3", "--threads", "1",
                       "--cache", str(tmp_path)], monkeypatch, lambda spec: spec.allocators == ("dynaquant",))
    assert [s.seed for s in specs] == [3, 3]


def test_report_only_keeps_the_recorded_settings_and_the_csv_digits(study):
    mod, folder, results, args = study
    results = results.assign(bpp=results.bpp + 0.04951443142361116)  # 17 digits: a lossy parse moves the last
    results.to_csv(folder / "results.csv", index=False)
    line = "m qualities [1, 2, 3, 4], modes ['ptq']; weights sha256 q1 d1a5e0936d04; cache version 2."
    (folder / "report.md").write_text("# old\n\nCommand: `python studies/compare_allocators.py --model m`\n\n"
                                      f"Settings: {line}\n")
    for _ in range(2):  # a second rebuild does not stack its note
        md = mod.rebuild_report("m", args, "python studies/compare_allocators.py --report-only").read_text()
    settings = [x for x in md.splitlines() if x.startswith("Settings: ")]
    assert settings == ["Settings: m qualities [1, 2, 3, 4], modes ['ptq']; weights sha256 q1 d1a5e0936d04; cache "
                        "version 2 (report rebuilt by `python studies/compare_allocators.py --report-only`)."]
    written = pd.read_csv(folder / "results.csv", float_precision="round_trip")
    assert written.bpp.tolist() == results.bpp.tolist()  # exactly: the rewritten CSV keeps every digit


def test_bias_flags_reach_the_spec_and_name_the_results_folder(tmp_path, monkeypatch):
    """--bias-correction / --bias-choice reach the PTQ study spec, and the folder says so (_biascorr_biaschoice)."""
    import argparse

    specs = _specs_of(["--model", "m", "--modes", "ptq", "--allocators", "ilp", "--threads", "1", "--table-fit",
                       "noise", "--bias-correction", "--bias-choice", "--cache", str(tmp_path)], monkeypatch)
    assert specs[0].bias_correction is True and specs[0].bias_choice is True
    mod = load_study("compare_allocators")
    args = argparse.Namespace(out=None, table_fit="noise", bias_correction=True, bias_choice=True)
    assert mod.results_folder("m", args).name == "compare_m_noise_biascorr_biaschoice"
    assert mod.results_folder("m", argparse.Namespace(out=None)).name == "compare_m"
