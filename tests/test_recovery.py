"""QAT-aware costs (bitalloc.recovery): the definition by hand, the fit, what is kept, resume, errors."""

import numpy as np
import pytest
import torch

import bitalloc.qat as qat
from bitalloc.interactions import bits_in_play
from bitalloc.objective import evaluate_loss
from bitalloc.quant import apply_plan
from bitalloc.recovery import measure_recovered_costs, split_qat
from bitalloc.sensitivity import measure_sensitivity
from bitalloc.sensitivity.probe import per_sample_batches
from conftest import pair_mse, toy_mlp


@pytest.fixture(scope="module")
def problem():
    model = toy_mlp()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 8, generator=g)
    with torch.no_grad():
        y = model(x) + 0.05 * torch.randn(64, 4, generator=g)
    data = [(x[:32], y[:32]), (x[32:], y[32:])]
    table = measure_sensitivity(model, data, bits=(2, 3, 8), loss=pair_mse, hessian_samples=0, progress=False,
                                uncertainty=True, fit="isotonic")
    return model, data, table


OPTIONS = dict(steps=4, lr=1e-3, loss=pair_mse, calibration="minmax", progress=False)


def test_a_cell_is_the_loss_after_qat_against_the_float_model_after_the_same_qat(problem):
    model, data, table = problem
    rec = measure_recovered_costs(model, data, table, data, **OPTIONS)
    # the cells whose PTQ cost leaves the table's noise are measured (each layer's 2 bits at least), no other
    play = bits_in_play(table.cost, table.cost_se, table.bits)
    expected = [(n, b) for n, bs in zip(table.layer_names, play) for b in bs]
    assert list(zip(rec.frame.layer, rec.frame.bits)) == expected and len(expected) >= 3
    assert rec.qat_runs == 1 + len(expected) and rec.qat_steps == rec.qat_runs * 4 and rec.steps == 4
    # one cell by hand: QAT of the layer alone, each sample an observation, against the float model's QAT
    per = per_sample_batches(data)
    anchor, _ = qat.finetune(model, {}, data, steps=4, lr=1e-3, loss=pair_mse, progress=False)
    q = apply_plan(model, {"2": 2}, calibration="minmax", keep_float=True)
    q, _ = qat.finetune(q, None, data, steps=4, lr=1e-3, loss=pair_mse, progress=False)
    lq = np.mean([evaluate_loss(q.eval(), pair_mse, [b])["loss"] for b in per])
    la = np.mean([evaluate_loss(anchor.eval(), pair_mse, [b])["loss"] for b in per])
    row = rec.frame[(rec.frame.layer == "2") & (rec.frame.bits == 2)].iloc[0]
    assert row.zeta == pytest.approx((lq - la) / la, rel=1e-5)
    assert row.ptq_cost == table.cost[table.index("2"), 0]
    # QAT repairs: every recovered 2-bit cost is below its PTQ cost
    assert (rec.table.cost[:, 0] < table.cost[:, 0]).all()
    # the fitted table: same layers, bits and sizes, no pairs, costs >= 0 and non-increasing over bits
    assert rec.table.layer_names == table.layer_names and rec.table.bits == table.bits
    assert np.array_equal(rec.table.size_bits, table.size_bits) and rec.table.pairwise == {}
    assert (rec.table.cost >= 0).all() and (np.diff(rec.table.cost, axis=1) <= 1e-12).all()
    assert rec.table.cost_se is not None and rec.table.noise_floor is not None


def test_cells_out_of_play_keep_the_tables_cost(problem):
    model, data, table = problem
    zeta = np.zeros((3, 3))
    zeta[1, 0] = 0.5  # only layer "2" at 2 bits leaves the noise
    rec = measure_recovered_costs(model, data, table, data, zeta=zeta, **OPTIONS)
    assert list(zip(rec.frame.layer, rec.frame.bits)) == [("2", 2)] and rec.qat_runs == 2
    assert rec.frame.attrs["bits_in_play"] == {"0": [], "2": [2], "4": []}
    for n in ("0", "4"):  # a row without a measured cell is the table's own fit again
        i = table.index(n)
        assert np.allclose(rec.table.cost[i], table.cost[i])


def test_an_interrupted_measurement_resumes_and_refuses_other_settings(problem, tmp_path, monkeypatch):
    model, data, table = problem
    first = measure_recovered_costs(model, data, table, data, workdir=tmp_path, **OPTIONS)
    runs = []
    real = qat.finetune

    def counting(*args, **kwargs):
        runs.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(qat, "finetune", counting)
    again = measure_recovered_costs(model, data, table, data, workdir=tmp_path, **OPTIONS)
    assert len(runs) == 0 and again.qat_runs == 0  # every cell was kept, and the anchor beside them
    assert np.allclose(again.table.cost, first.table.cost)
    with pytest.raises(ValueError, match="other settings"):
        measure_recovered_costs(model, data, table, data, workdir=tmp_path, **{**OPTIONS, "steps": 5})


def test_bad_input_is_named(problem):
    model, data, table = problem
    with pytest.raises(ValueError, match="steps must be an integer >= 1"):
        measure_recovered_costs(model, data, table, data, **{**OPTIONS, "steps": 0})
    with pytest.raises(ValueError, match=r"zeta has shape \(2, 3\)"):
        measure_recovered_costs(model, data, table, data, zeta=np.zeros((2, 3)), **OPTIONS)
    q = apply_plan(model, {"0": 8}, keep_float=True)
    with pytest.raises(ValueError, match="already fake-quantized"):
        measure_recovered_costs(q, data, table, data, **OPTIONS)
    other = table.subset(["0", "2"]).replace()
    renamed = type(other).from_arrays(["0", "nope"], other.bits, other.cost, other.size_bits)
    with pytest.raises(KeyError, match="layer 'nope'"):
        measure_recovered_costs(model, data, renamed, data, **OPTIONS)


def test_split_qat():
    from bitalloc.allocation import allocator_parts

    assert split_qat("ilp+qat") == ("ilp", True) and split_qat("ilp") == ("ilp", False)
    assert allocator_parts("ilp+verify+qat") == ("ilp", True, True) and allocator_parts("ilp") == ("ilp", False, False)
    assert allocator_parts("iqp+verify") == ("iqp", True, False) and allocator_parts("ilp+qat") == ("ilp", False, True)


def test_a_layer_repaired_into_the_noise_is_not_measured_at_more_bits(problem):
    model, data, table = problem
    zeta = np.zeros((3, 3))
    zeta[1, :2] = 50.0  # layer "2": 2 and 3 bits in play; any recovered cost is noise under a floor of 10
    rec = measure_recovered_costs(model, data, table, data, zeta=zeta, noise_floor=10.0, **OPTIONS)
    assert rec.qat_runs == 2 and list(zip(rec.frame.layer, rec.frame.bits)) == [("2", 2)]
    assert rec.frame.attrs["inferred"] == {"2": [3]}
    i = table.index("2")
    assert rec.table.cost[i, 0] == rec.table.cost[i, 1] == max(rec.frame.zeta.iloc[0], 0.0)


def test_a_whole_plan_is_checked_after_the_same_qat(problem):
    from bitalloc.plan import BitPlan
    from bitalloc.recovery import Recovery

    model, data, table = problem
    rec = measure_recovered_costs(model, data, table, data, **OPTIONS)
    run = Recovery(model, data, data, **{k: v for k, v in OPTIONS.items() if k != "progress"})
    plan = BitPlan({"0": 2, "2": 2, "4": 8})
    check = run.check(plan, rec.table)
    assert check.predicted == pytest.approx(plan.cost(rec.table))
    _, z, _ = run.measure(plan.bits)
    assert check.measured == pytest.approx(z, rel=1e-6) and run.runs == 3  # anchor, check, measure
    assert check.loss_fp == pytest.approx(np.mean([p["loss"] for p in run.anchor]))


def test_train_crop_crops_an_image_folder_and_is_refused_when_bad(problem, tmp_path):
    from PIL import Image

    from bitalloc.data import ImageFolder
    from bitalloc.recovery import Recovery

    rng = np.random.default_rng(0)
    for k in range(2):
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(tmp_path / f"im{k}.png")
    folder = ImageFolder(tmp_path, crop=32)
    model, data, _ = problem

    class _Probe(Recovery):  # no QAT here: only what the runs would draw from
        def __init__(self, train_crop):
            self.train, self.seed, self.train_crop = folder, 0, train_crop

    assert _Probe(16)._source().batch(2).shape[-1] == 16 and _Probe(None)._source().batch(2).shape[-1] == 32
    assert folder.crop == 32  # the caller's folder is not changed
    with pytest.raises(ValueError, match="train_crop must be None or an integer >= 1"):
        Recovery(model, data, data, train_crop=0, **{k: v for k, v in OPTIONS.items() if k != "progress"})


def test_plans_verified_after_qat_are_measured_by_the_same_qat(problem):
    from bitalloc import Budget, verify_and_repair
    from bitalloc.recovery import Recovery

    model, data, table = problem
    rec = measure_recovered_costs(model, data, table, data, **OPTIONS)
    run = Recovery(model, data, data, **{k: v for k, v in OPTIONS.items() if k != "progress"})
    budget = Budget.from_avg_bits(rec.table, 3.0)
    rep = verify_and_repair(model, data, rec.table, budget, "ilp", measure=run.increase, max_evals=3,
                            tolerance=0.0)
    assert budget.exceeded(rec.table, rep.plan.choices(rec.table)) is None and rep.measured <= rep.start_measured
    assert run.runs == 1 + rep.evaluations  # the anchor, then one QAT run per plan measured
    assert rep.measured == pytest.approx(run.check(rep.plan, rec.table).measured, rel=1e-6)  # the same QAT again


def test_the_anchor_is_kept_and_reused_for_the_same_settings_only(problem, tmp_path, monkeypatch):
    from bitalloc.recovery import Recovery

    model, data, _ = problem
    opts = {k: v for k, v in OPTIONS.items() if k != "progress"}
    first = Recovery(model, data, data, anchor_file=tmp_path / "anchor.json", **opts)
    assert first.runs == 1 and (tmp_path / "anchor.json").is_file()
    calls = []
    real = qat.finetune
    monkeypatch.setattr(qat, "finetune", lambda *a, **k: calls.append(1) or real(*a, **k))
    again = Recovery(model, data, data, anchor_file=tmp_path / "anchor.json", **opts)
    assert calls == [] and again.runs == 0 and again.anchor == first.anchor  # read back, not trained
    assert again.increase({"2": 2}) == pytest.approx(first.increase({"2": 2}), rel=1e-9)
    with pytest.raises(ValueError, match="anchor of other settings"):
        Recovery(model, data, data, anchor_file=tmp_path / "anchor.json", **{**opts, "steps": 5})
