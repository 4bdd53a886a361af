import math

import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st

from bitalloc.plan import BitPlan
from bitalloc.quant import (ESTIMATORS, ActQuantizer, WeightQuantizer, apply_plan, calibrate_range, check_bits,
                            dgm_grad, fake_quantize, layer_size_bits, plan_of, remove_plan)
from bitalloc.act_quant import calibrate_activations
from bitalloc.graph import quantizable_layers


def _levels_per_channel(w_hat: torch.Tensor, axis: int) -> list[int]:
    return [int(torch.unique(w_hat.select(axis, c)).numel()) for c in range(w_hat.shape[axis])]


@settings(max_examples=30, deadline=None)
@given(bits=st.integers(2, 10), seed=st.integers(0, 10_000), transpose=st.booleans(),
       calibration=st.sampled_from(["minmax", "percentile", "mse"]))
def test_b_bit_quantizer_has_at_most_2_to_the_b_levels_per_channel(bits, seed, transpose, calibration):
    g = torch.Generator().manual_seed(seed)
    layer = nn.ConvTranspose2d(5, 4, 3) if transpose else nn.Conv2d(5, 4, 3)
    w = torch.randn(layer.weight.shape, generator=g) * torch.rand(1, generator=g) * 3
    axis = 1 if transpose else 0
    q = WeightQuantizer(w, bits, axis, calibration=calibration)
    assert q.scale.shape == (4,)
    assert max(_levels_per_channel(q(w), axis)) <= 2 ** bits
    codes = q.integers(w)
    assert codes.abs().max() <= 2 ** (bits - 1) - 1


@pytest.mark.parametrize("cls,axis", [(nn.Conv2d, 0), (nn.Linear, 0), (nn.ConvTranspose2d, 1)],
                         ids=["conv", "linear", "deconv"])
def test_minmax_scale_is_per_output_channel(cls, axis):
    torch.manual_seed(0)
    layer = cls(6, 3, 3) if cls is not nn.Linear else cls(6, 3)
    w = layer.weight.detach() * torch.arange(1, 4).float().reshape([-1 if d == axis else 1 for d in range(
        layer.weight.dim())])
    q = WeightQuantizer(w, 4, axis)
    w_hat = q(w)
    for c in range(3):
        assert torch.allclose(w_hat.select(axis, c).abs().max(), w.select(axis, c).abs().max())
    assert max(_levels_per_channel(w_hat, axis)) <= 15


def test_mse_calibration_beats_minmax_and_percentile_clips():
    torch.manual_seed(0)
    w = torch.randn(8, 500) ** 3  # heavy tails
    r_mm = calibrate_range(w, 3, 0, "minmax")
    err = {}
    for method in ("minmax", "mse"):
        r = calibrate_range(w, 3, 0, method)
        err[method] = float(((fake_quantize(w, r / 3, 3) - w) ** 2).sum())
    assert err["mse"] <= err["minmax"]
    assert (calibrate_range(w, 3, 0, "percentile") <= r_mm).all()


def _grad(estimator, u, qmax=7, **kw):
    u = torch.tensor(u, requires_grad=True)
    fake_quantize(u, torch.ones(1), int(math.log2(qmax + 1)) + 1, 0, estimator=estimator, **kw).sum().backward()
    return u.grad


def test_ste_gradient_is_one_inside_zero_outside():
    assert _grad("ste", [0.3, -6.9, 7.0, 7.6, -9.0]).tolist() == [1.0, 1.0, 1.0, 0.0, 0.0]


def test_leaky_clip_gradient_hand_computed():
    g = _grad("leaky_clip", [0.3, 7.6, -9.0, 100.0], alpha=0.05)
    assert torch.allclose(g, torch.tensor([1.0, 0.05, 0.05, 0.05]))


def test_dgm_gradient_hand_computed():
    beta = 2.0
    # g'(u) = beta / (2 tanh(beta/2)) * (1 - tanh^2(beta (u - floor(u) - 1/2)))
    peak = beta / (2 * math.tanh(1.0))                      # halfway between levels: 1.3130
    at_level = peak * (1 - math.tanh(1.0) ** 2)             # on a level: 0.5514
    quarter = peak * (1 - math.tanh(0.5) ** 2)              # a quarter step away: 1.0326
    g = _grad("dgm", [0.5, 3.0, -1.25, 2.75, 9.0], beta=beta)
    expected = torch.tensor([peak, at_level, quarter, quarter, 0.0])
    assert torch.allclose(g, expected, atol=1e-6)
    assert abs(peak - 1.3130352855) < 1e-9 and abs(at_level - 0.5514411295) < 1e-9
    assert abs(quarter - 1.0326336236) < 1e-9


def test_dgm_gradient_averages_to_one_and_tends_to_ste():
    u = torch.linspace(0, 1, 100_001)[:-1]
    assert abs(float(dgm_grad(u, 4.0).mean()) - 1.0) < 1e-3
    assert torch.allclose(dgm_grad(u, 1e-3), torch.ones_like(u), atol=1e-5)


def test_lsq_scale_gradient():
    w = torch.tensor([[0.26, -0.74, 2.0]])
    q = WeightQuantizer(w, 3, 0, learn_scale=True)            # Q = 3, s = 2/3
    q.scale.data.fill_(0.5)                                   # u = 0.52, -1.48, 4 (clipped)
    q(w).sum().backward()
    g = 1 / math.sqrt(3 * 3)
    expected = ((1 - 0.52) + (-1 + 1.48) + 3) * g             # q - u inside, Q outside
    assert torch.allclose(q.scale.grad, torch.tensor([expected]), atol=1e-6)


def test_estimators_selectable_by_name_and_unknown_rejected():
    w = torch.randn(2, 3)
    for name in ESTIMATORS:
        WeightQuantizer(w, 4, estimator=name)
    with pytest.raises(ValueError, match="ste, leaky_clip, dgm"):
        WeightQuantizer(w, 4, estimator="sgd")
    with pytest.raises(ValueError, match="calibration"):
        WeightQuantizer(w, 4, calibration="kl")


@pytest.mark.parametrize("bits", [0, 17, 32, -3])
def test_bits_outside_1_to_16_rejected(bits):
    with pytest.raises(ValueError, match="1..16"):
        check_bits(bits)


def test_one_bit_rejected_with_reason(hyperprior):
    names = list(quantizable_layers(hyperprior))
    plan = {n: 8 for n in names} | {"h_a.2": 1}
    with pytest.raises(ValueError, match="'h_a.2'.*2..16"):
        apply_plan(hyperprior, plan)


def test_plan_out_of_range_names_the_layer(hyperprior):
    plan = {n: 8 for n in quantizable_layers(hyperprior)} | {"g_s.4": 17}
    with pytest.raises(ValueError, match="'g_s.4'.*1..16"):
        apply_plan(hyperprior, plan)


def test_plan_round_trip(hyperprior):
    names = list(quantizable_layers(hyperprior))
    plan = BitPlan({n: 2 + i for i, n in enumerate(names)})
    q = apply_plan(hyperprior, plan)
    assert plan_of(q) == plan
    assert BitPlan.from_json(plan_of(q).to_json()) == plan
    assert plan_of(apply_plan(q, BitPlan.uniform(names, 6))) == BitPlan.uniform(names, 6)  # re-planning


def test_apply_does_not_mutate_unless_inplace(hyperprior):
    names = list(quantizable_layers(hyperprior))
    before = {k: v.clone() for k, v in hyperprior.state_dict().items()}
    apply_plan(hyperprior, BitPlan.uniform(names, 4))
    assert len(plan_of(hyperprior)) == 0
    assert all(torch.equal(before[k], v) for k, v in hyperprior.state_dict().items())
    apply_plan(hyperprior, BitPlan.uniform(names, 4), inplace=True)
    assert len(plan_of(hyperprior)) == len(names)
    remove_plan(hyperprior)
    assert all(torch.equal(before[k], v) for k, v in hyperprior.state_dict().items())


def test_replanning_a_quantized_model_leaves_it_intact(hyperprior, images):
    """apply_plan(q, plan2) copies q and removes its quantizers on the copy; the copy used to share the class
    torch injects for the parametrized weight, so removing deleted q's ``weight`` (AttributeError in q.g_a)."""
    names = list(quantizable_layers(hyperprior))
    hyperprior.eval()
    q = apply_plan(hyperprior, BitPlan.uniform(names, 4), act_bits=8)
    calibrate_activations(q, images)
    with torch.no_grad():
        y = q.g_a(images)
        q2 = apply_plan(q, BitPlan.uniform(names, 6))
        assert torch.equal(q.g_a(images), y)
        assert plan_of(q) == BitPlan.uniform(names, 4, act_bits=8)
        # the copy is planned from the original float weights, as a plan applied to the float model
        direct = apply_plan(hyperprior, BitPlan.uniform(names, 6))
        assert plan_of(q2) == plan_of(direct)
        assert torch.equal(q2.g_a(images), direct.g_a(images))
        remove_plan(q2)
        assert torch.equal(q.g_a(images), y)
        float_state, back = hyperprior.state_dict(), q2.state_dict()
        assert back.keys() == float_state.keys()
        assert all(torch.equal(back[k], v) for k, v in float_state.items())


def test_unknown_layer_error_names_it(hyperprior):
    with pytest.raises(ValueError, match="'g_a.9'"):
        apply_plan(hyperprior, {"g_a.9": 8}, keep_float=True)


def test_missing_layer_error_names_it_unless_kept_float(hyperprior):
    names = list(quantizable_layers(hyperprior))
    partial = {n: 8 for n in names if n != "h_s.2"}
    with pytest.raises(ValueError, match="'h_s.2' has no bits"):
        apply_plan(hyperprior, partial)
    assert "h_s.2" not in plan_of(apply_plan(hyperprior, partial, keep_float=["h_s.2"]))
    assert plan_of(apply_plan(hyperprior, {"g_a.0": 4}, keep_float=True)) == BitPlan({"g_a.0": 4})


def test_gdn_quantized_when_planned(hyperprior, images):
    q = apply_plan(hyperprior, {"g_a.1": 4}, keep_float=True)
    assert plan_of(q) == BitPlan({"g_a.1": 4})
    q.eval()(images)


def test_layer_size_bits_convention():
    assert layer_size_bits(nn.Conv2d(3, 4, 5), 8) == 3 * 4 * 25 * 8 + 4 * 32
    assert layer_size_bits(nn.ConvTranspose2d(4, 3, 5), 6) == 3 * 4 * 25 * 6 + 3 * 32


def test_activation_quantizer_levels():
    a = ActQuantizer(4)
    x = torch.randn(1000)
    a.set_range(float(x.min()), float(x.max()))
    assert torch.unique(a(x)).numel() <= 16


def test_quantized_model_runs_and_is_close_at_8_bits(hyperprior, images):
    from bitalloc.act_quant import calibrate_activations

    names = list(quantizable_layers(hyperprior))
    q = calibrate_activations(apply_plan(hyperprior, BitPlan.uniform(names, 8), act_bits=8), images)
    with torch.no_grad():
        a, b = hyperprior(images)["x_hat"], q.eval()(images)["x_hat"]
    assert (a - b).abs().max() < 0.05


def test_a_masked_layer_is_quantized_masked_and_calibrated_on_the_mask():
    from compressai.layers import MaskedConv2d

    from bitalloc.quant import quant_axis, quantize_weight, weight_mask, weight_quantizer

    torch.manual_seed(0)
    conv = MaskedConv2d(4, 8, 5, padding=2)  # never run: its weight is still non-zero where masked
    with torch.no_grad():
        conv.weight[:, :, 4, 4] = 100.0  # a huge weight at a masked position must not set the range
    assert weight_mask(conv) is conv.mask and weight_mask(nn.Conv2d(4, 8, 5)) is None
    q = apply_plan(nn.Sequential(conv), {"0": 4})[0]
    wq = weight_quantizer(q)
    assert wq is not None and torch.equal(wq.mask, conv.mask)
    w_hat = q.weight
    assert torch.equal(w_hat, w_hat * conv.mask) and w_hat.abs().max() < 10
    assert torch.equal(wq.integers(q.parametrizations.weight.original) * (1 - conv.mask).int(),
                       torch.zeros_like(conv.weight, dtype=torch.int32))
    assert torch.equal(quantize_weight(conv, 4), w_hat.detach())
    assert quant_axis(conv) == 0 and weight_quantizer(conv) is None
    assert "mask" not in {k.rsplit(".", 1)[-1] for k in q.parametrizations.state_dict()}  # state dict unchanged
    with pytest.raises(ValueError, match="the mask of layer 'ctx' has shape"):
        WeightQuantizer(conv.weight, 4, mask=torch.ones(3), layer="ctx")
