"""measure_sensitivity(..., act_bits=...): (weight, activation) candidates measured by the same machinery."""

import numpy as np
import pytest

from bitalloc import Budget, build_allocator
from bitalloc.act_quant import calibrate_activations
from bitalloc.objective import evaluate_loss, relative_increase, resolve_loss
from bitalloc.plan import BitPlan
from bitalloc.quant import apply_plan
from bitalloc.sensitivity import check_plan, measure_sensitivity


@pytest.fixture(scope="module")
def measured(_hyperprior_master, images):
    model = _hyperprior_master.eval()
    kw = dict(bits=(4, 8), hessian_samples=0, progress=False)
    table, frame = measure_sensitivity(model, images, act_bits=(None, 4), return_frame=True, **kw)
    return model, table, frame, measure_sensitivity(model, images, **kw)


def test_candidates_and_the_float_input_columns(measured):
    model, table, frame, weights = measured
    assert table.bits == (4, 4, 8, 8) and table.act_bits == (4, None, 4, None)
    np.testing.assert_array_equal(table.cost[:, [1, 3]], weights.cost)  # a float input: the weight-only cells
    np.testing.assert_array_equal(table.size_bits[:, [0, 2]], weights.size_bits)
    assert (table.cost[:, 0] >= table.cost[:, 1]).mean() > 0.5  # 4-bit inputs cost something, mostly
    assert list(frame.columns[:7]) == ["layer", "branch", "kind", "bits", "act_bits", "candidate", "zeta"]


def test_a_cell_equals_the_layer_quantized_and_calibrated_by_hand(measured, images):
    model, table, frame, _ = measured
    objective = resolve_loss(model, None, None)
    fp = evaluate_loss(model, objective, [images])["loss"]
    for layer in ("g_a.2", "h_s.0", "g_s.6"):
        q = apply_plan(model, BitPlan({layer: 8}, act_bits={layer: 4}), keep_float=True)
        calibrate_activations(q, images)  # minmax, as measured
        loss = evaluate_loss(q, objective, [images])["loss"]
        row = frame[(frame.layer == layer) & (frame.bits == 8) & (frame.act_bits == 4)]
        assert float(row.zeta.iloc[0]) == pytest.approx(relative_increase(loss, fp, model), rel=1e-4, abs=1e-7)


def test_cached_and_naive_agree_and_the_plan_checks(measured, images):
    model, table, _, _ = measured
    naive = measure_sensitivity(model, images, bits=(4, 8), act_bits=(None, 4), hessian_samples=0, progress=False,
                                method="naive")
    np.testing.assert_allclose(naive.cost, table.cost, rtol=1e-4, atol=1e-7)
    r = build_allocator("ilp").allocate(table, Budget.from_avg_bits(table, 6))
    assert r.ok and r.plan.act_bits == {n: 4 for n, j in zip(table.layer_names, r.plan.choices(table))
                                        if table.act_bits[j] == 4}
    check = check_plan(model, r.plan, table, images)
    assert check.predicted == pytest.approx(r.objective) and np.isfinite(check.measured)


def test_refusals_name_the_setting(_hyperprior_master, images):
    with pytest.raises(ValueError, match="fit='isotonic'"):
        measure_sensitivity(_hyperprior_master, images, bits=(4, 8), act_bits=(8,), fit="isotonic", progress=False)
    with pytest.raises(ValueError, match="gdn=True"):
        measure_sensitivity(_hyperprior_master, images, bits=(4, 8), act_bits=(8,), gdn=True, progress=False)
    with pytest.raises(ValueError, match="'histogram'"):
        measure_sensitivity(_hyperprior_master, images, bits=(4, 8), act_bits=(8,), observer="histogram",
                            progress=False)
