"""Pairwise interaction costs (bitalloc.interactions): the joint-loss definition, cached == naive, pair choice."""

import numpy as np
import pytest
import torch

from bitalloc import CostTable
from bitalloc.graph import quantizable_layers
from bitalloc.interactions import Interactions, bits_in_play, measure_interactions, structure_pairs, with_pairwise
from bitalloc.objective import evaluate_loss
from bitalloc.quant import apply_plan
from bitalloc.sensitivity import calibration_batch, measure_sensitivity
from conftest import pair_mse, toy_mlp

HAS_PAIRWISE = "pairwise" in CostTable.__dataclass_fields__


@pytest.fixture(scope="module")
def shipped_mean_scale():
    from bitalloc.models import load_model

    return load_model("mbt2018-mean", 4).eval()


@pytest.fixture(scope="module")
def crops():
    return calibration_batch(None, crop=64, limit=2)  # two 64x64 centre crops of scikit-image's photos


@pytest.fixture(scope="module")
def mean_scale_table(shipped_mean_scale, crops):
    return measure_sensitivity(shipped_mean_scale, crops, bits=(2, 4, 8), calibration="mse", hessian_samples=0,
                               progress=False, return_frame=True)


def test_one_pair_is_the_joint_loss_minus_the_single_costs(shipped_mean_scale, crops, mean_scale_table):
    table, frame = mean_scale_table
    pairs = [("h_s.2", "h_s.0"), ("h_s.0", "h_s.4"), ("g_s.4", "g_s.6")]
    inter = measure_interactions(shipped_mean_scale, crops, table, pairs, frame=frame, calibration="mse",
                                 progress=False)
    assert isinstance(inter, Interactions) and inter.bits == table.bits
    assert list(inter.pairwise) == [("h_s.0", "h_s.2"), ("h_s.0", "h_s.4"), ("g_s.4", "g_s.6")]  # table order
    for m in inter.pairwise.values():
        assert m.shape == (3, 3) and np.isfinite(m).all()
    # by hand: h_s.0 and h_s.2 at 2 bits together, on the same crops, loss and calibration
    model = shipped_mean_scale
    both = apply_plan(model, {"h_s.0": 2, "h_s.2": 2}, keep_float=True, calibration="mse").eval()
    from bitalloc.objective import resolve_loss

    loss = resolve_loss(model)
    fp, q = evaluate_loss(model, loss, [crops])["loss"], evaluate_loss(both, loss, [crops])["loss"]
    joint = (q - fp) / fp
    expected = max(joint, 0.0) - table.cost[table.index("h_s.0"), 0] - table.cost[table.index("h_s.2"), 0]
    row = inter.frame.query("layer_i == 'h_s.0' and layer_j == 'h_s.2' and bits_i == 2 and bits_j == 2").iloc[0]
    assert row.zeta == pytest.approx(joint, rel=1e-5) and row.interaction == pytest.approx(expected, rel=1e-5)
    assert inter.matrix("h_s.0", "h_s.2")[0, 0] == pytest.approx(max(expected, 0.0), rel=1e-5, abs=1e-7)
    assert inter.matrix("h_s.2", "h_s.0")[0, 0] == inter.matrix("h_s.0", "h_s.2")[0, 0]
    assert (inter.frame.interaction < 0).any()  # measured, and clipped in the pairwise terms by default:
    assert (inter.frame.pairwise == inter.frame.interaction.clip(lower=0)).all()
    # counters: the frame was given, so only pairs ran; each measured cell is one forward pass
    assert inter.single_passes == 0 and inter.forward_passes == len(inter.frame)
    assert inter.table_forward_passes == 14 * 3 and inter.table_time_s == frame.attrs["time_s"]
    with pytest.raises(KeyError, match="pair"):
        inter.matrix("h_s.0", "g_a.0")


def test_cached_pairs_equal_full_forward_passes_across_branches(hyperprior_shipped, crops):
    """On the Scale Hyperprior an h_s change leaves y_hat and so g_s untouched: a (h_s, g_s) pair cannot re-run
    from either layer alone and goes through a full forward pass; every other pair re-runs a suffix."""
    model = hyperprior_shipped
    table, frame = measure_sensitivity(model, crops, bits=(2, 8), hessian_samples=0, progress=False,
                                       return_frame=True)
    pairs = [("h_s.0", "g_s.2"), ("h_a.2", "g_s.0"), ("g_a.2", "h_s.4"), ("h_s.0", "h_s.4"), ("g_a.0", "g_s.6")]
    kw = dict(frame=frame, noise_floor=0.0, progress=False)
    cached = measure_interactions(model, crops, table, pairs, **kw)
    naive = measure_interactions(model, crops, table, pairs, method="naive", **kw)
    assert cached.frame.attrs["naive_batches"] > 0 and cached.frame.attrs["cached_batches"] > 0
    assert len(cached.frame) == len(naive.frame) > 0
    np.testing.assert_allclose(cached.frame["loss"], naive.frame["loss"], rtol=1e-6)


@pytest.fixture(scope="module")
def hyperprior_shipped():
    from bitalloc.models import load_model

    return load_model("bmshj2018-hyperprior", 4).eval()


def test_default_pairs_are_graph_neighbours_and_hyperprior_couplings(shipped_mean_scale, crops):
    names = list(quantizable_layers(shipped_mean_scale))
    pairs = set(structure_pairs(shipped_mean_scale, names, crops[:1]))
    assert {("g_a.0", "g_a.2"), ("g_a.6", "h_a.0"), ("g_s.4", "g_s.6"), ("h_s.0", "h_s.2")} <= pairs  # graph
    assert {("h_s.0", "h_s.4"), ("h_a.0", "h_s.4")} <= pairs  # side-information couplings
    assert ("g_a.0", "g_s.6") not in pairs and ("g_a.0", "h_s.0") not in pairs


def test_bits_in_play_stop_where_the_single_cost_reaches_the_noise_floor():
    zeta = np.array([[0.5, 0.01, 0.0005], [-0.004, -0.002, 0.0], [0.0001, 0.0, 0.0]])
    se = np.array([[0.1, 0.004, 0.0001], [0.001, 0.0001, 0.0001], [0.0001, 0.0001, 0.0001]])
    assert bits_in_play(zeta, None, (2, 4, 8), noise_floor=1e-3) == [(2, 4), (2, 4), ()]
    # 0.01 is within 3 standard errors of 0.004; -0.002 is 20 away: lowering the loss is not noise
    assert bits_in_play(zeta, se, (2, 4, 8), noise_floor=1e-3, noise_z=3) == [(2,), (2, 4), ()]


def test_any_model_small_tables_get_every_pair_and_errors_name_the_pair():
    model = toy_mlp()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 8, generator=g)
    with torch.no_grad():
        y = model(x) + 0.05 * torch.randn(64, 4, generator=g)
    data = [(x[:32], y[:32]), (x[32:], y[32:])]
    table = measure_sensitivity(model, data, bits=(2, 3, 8), loss=pair_mse, hessian_samples=0, progress=False)
    inter = measure_interactions(model, data, table, loss=pair_mse, progress=False)  # singles re-measured here
    assert sorted(inter.pairwise) == [("0", "2"), ("0", "4"), ("2", "4")]  # 3 layers <= 8: all pairs
    assert inter.single_passes == 3 * 3 and inter.forward_passes > inter.single_passes
    assert inter.frame.attrs["method"] == "naive" and all(np.isfinite(m).all() for m in inter.pairwise.values())
    # the 2-bit pair by hand, through apply_plan
    q = apply_plan(model, {"0": 2, "2": 2}, keep_float=True).eval()
    fp, joint = evaluate_loss(model, pair_mse, data)["loss"], evaluate_loss(q, pair_mse, data)["loss"]
    expected = max((joint - fp) / fp, 0) - table.cost[0, 0] - table.cost[1, 0]
    assert inter.matrix("0", "2")[0, 0] == pytest.approx(max(expected, 0), rel=1e-5)
    kept = measure_interactions(model, data, table, [("0", "2")], loss=pair_mse, progress=False, negative="keep")
    assert kept.matrix("0", "2")[0, 0] == pytest.approx(expected, rel=1e-5)
    assert (kept.frame.pairwise == kept.frame.interaction).all()
    with pytest.raises(KeyError, match=r"layer 'nope' of pair \('0', 'nope'\)"):
        measure_interactions(model, data, table, [("0", "nope")], loss=pair_mse, progress=False)
    with pytest.raises(ValueError, match=r"pairs a layer with itself"):
        measure_interactions(model, data, table, [("2", "2")], loss=pair_mse, progress=False)
    with pytest.raises(ValueError, match="not a pair"):
        measure_interactions(model, data, table, ["02"], loss=pair_mse, progress=False)
    other = measure_sensitivity(model, [(x, y + 1)], bits=(2, 3, 8), loss=pair_mse, hessian_samples=0, progress=False)
    with pytest.warns(RuntimeWarning, match="data, loss and calibration of the table"):
        measure_interactions(model, data, other, [("0", "2")], loss=pair_mse, progress=False, noise_floor=1e-6)


@pytest.mark.skipif(not HAS_PAIRWISE, reason="CostTable.from_arrays has no pairwise= yet (issue 12, item 1)")
def test_attached_interactions_make_the_table_predict_the_pair():
    model = toy_mlp()
    x = torch.randn(32, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        data = [(x, model(x) + 0.05)]
    table = measure_sensitivity(model, data, bits=(2, 8), loss=pair_mse, hessian_samples=0, progress=False)
    inter = measure_interactions(model, data, table, loss=pair_mse, progress=False, noise_floor=0.0, negative="keep")
    joint = inter.attach(table)
    from bitalloc.plan import BitPlan

    plan = BitPlan({"0": 2, "2": 2, "4": 8})
    row = inter.frame.query("layer_i == '0' and layer_j == '2' and bits_i == 2 and bits_j == 2").iloc[0]
    # the pair's prediction is its measured joint cost (4 at 8 bits adds its own single cost)
    assert plan.cost(joint) == pytest.approx(max(row.zeta, 0) + table.cost[2, 1] + inter.matrix("0", "4")[0, 1]
                                             + inter.matrix("2", "4")[0, 1], rel=1e-9)
    twice = with_pairwise(joint, inter.pairwise, add=True)
    assert plan.cost(twice) - plan.cost(joint) == pytest.approx(plan.cost(joint) - plan.cost(table), rel=1e-9)
