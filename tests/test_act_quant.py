"""Activation quantizers: calibrated over a set, frozen, never changed by evaluation; observers; LSQ ranges."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from bitalloc.act_quant import (ActQuantizer, activation_qparams, activation_quantizers, calibrate_activations,
                                check_calibrated, learn_activation_ranges)
from bitalloc.graph import quantizable_layers
from bitalloc.observers import OBSERVERS, make_observer
from bitalloc.plan import BitPlan
from bitalloc.quant import apply_plan, plan_of


@pytest.fixture(scope="module")
def kodak_crops() -> dict[str, torch.Tensor]:
    """Three 128x128 crops of Kodak (the data root's, else scikit-image's photos)."""
    from bitalloc.data import resolve_images

    return {n: x[:, :128, :128].contiguous() for n, x in resolve_images(None, limit=3).items()}


def _plan(model, w=8, a=6) -> BitPlan:
    return BitPlan.uniform(quantizable_layers(model), w, act_bits=a)


def test_evaluation_order_cannot_change_a_number(kodak_crops):
    """The issue's bug: the range froze on the first image, so kodim03 read 28.73 or 29.54 dB by order."""
    from bitalloc import evaluate, load_model

    model = load_model("bmshj2018-hyperprior", 4)
    calib = torch.stack([x for x in kodak_crops.values()]).flip(-1)  # calibration set: mirrored crops
    q = calibrate_activations(apply_plan(model, _plan(model)), calib)
    state = {k: v.clone() for k, v in q.state_dict().items()}
    names = list(kodak_crops)
    runs = [evaluate(q, {n: kodak_crops[n] for n in order}, progress=False).set_index("image")
            for order in (names, names[::-1], names[1:] + names[:1])]
    cols = ["num_bytes", "psnr_rgb"]
    for other in runs[1:]:
        assert runs[0].loc[names, cols].equals(other.loc[names, cols])
    assert all(torch.equal(v, q.state_dict()[k]) for k, v in state.items())  # evaluation changed no range
    # the frozen ranges came from the whole calibration set: any image alone gives other ranges
    alone = calibrate_activations(apply_plan(model, _plan(model)), calib[:1])
    assert activation_qparams(alone) != activation_qparams(q)


def test_an_uncalibrated_quantizer_refuses_to_run(hyperprior, images):
    from bitalloc import evaluate

    q = apply_plan(hyperprior, _plan(hyperprior))
    with pytest.raises(RuntimeError, match="activation quantizer of layer 'g_a.0' is not calibrated"):
        q(images)
    with pytest.raises(RuntimeError, match="layers 'g_a.0', 'g_a.2'.* are not calibrated"):
        evaluate(q, {"a": images[0]}, progress=False)
    with pytest.raises(RuntimeError, match="'g_a.0'"):
        activation_qparams(q)
    with pytest.raises(ValueError, match="has no activation quantizers"):
        calibrate_activations(apply_plan(hyperprior, _plan(hyperprior).weights_only()), images)
    calibrate_activations(q, images)
    check_calibrated(q)
    assert all(a.frozen for a in activation_quantizers(q).values())


def test_calibration_data_forms_agree(hyperprior, images):
    """A (N,C,H,W) tensor, a list of batches and (input, target) tuples give the same ranges."""
    plan = _plan(hyperprior)
    ref = activation_qparams(calibrate_activations(apply_plan(hyperprior, plan), images, batch_size=1))
    for data in ([images[:1], images[1:]], [(images[:1], 0), (images[1:], 1)], {"a": images[0], "b": images[1]}):
        got = activation_qparams(calibrate_activations(apply_plan(hyperprior, plan), data))
        assert got == ref


def test_quantizer_grid_is_onnx_qdq():
    a = ActQuantizer(4, layer="x")
    a.set_range(-1.0, 3.0)
    p = a.qparams()
    assert p == {"scale": pytest.approx(4 / 15), "zero_point": 4, "bits": 4, "qmin": 0, "qmax": 15}
    x = torch.linspace(-2, 5, 301)
    s, z = torch.tensor(p["scale"], dtype=torch.float32), p["zero_point"]
    qdq = (torch.clamp(torch.round(x / s) + z, 0, 15) - z) * s  # ONNX QuantizeLinear then DequantizeLinear
    assert torch.equal(a(x), qdq) and torch.unique(a(x)).numel() == 16
    assert torch.equal(a.integers(x), torch.clamp(torch.round(x / s) + z, 0, 15).to(torch.int32))
    assert (a(torch.zeros(3)) == 0).all()  # zero is exact
    b = ActQuantizer(8)
    b.set_range(0.5, 2.0)  # widened to contain 0
    assert b.qparams()["zero_point"] == 0 and b.qparams()["scale"] == pytest.approx(2 / 255)


@pytest.mark.parametrize("name", list(OBSERVERS))
def test_observers_pick_ranges_that_contain_zero_and_fit_the_data(name):
    torch.manual_seed(0)
    obs = make_observer(name)
    batches = [torch.randn(4, 1000) + 1.0 for _ in range(3)] + [torch.tensor([40.0])]  # one outlier
    for x in batches:
        obs.update(x)
    lo, hi = obs.range(8)
    assert lo <= 0 <= hi
    if name == "minmax":
        assert (lo, hi) == (float(torch.cat([b.flatten() for b in batches]).min()), 40.0)
    else:  # every other observer clips the lone outlier
        assert hi < 40.0
    with pytest.raises(ValueError, match="non-finite"):
        obs.update(torch.tensor([float("nan")]))
    with pytest.raises(ValueError, match="saw no data"):
        make_observer(name).range(8)
    with pytest.raises(ValueError, match="unknown activation observer 'max'"):
        make_observer("max")


def test_mse_observer_beats_minmax_on_a_heavy_tail():
    torch.manual_seed(0)
    x = torch.distributions.StudentT(2.0).sample((20000,))
    err = {}
    for name in ("minmax", "mse"):
        obs = make_observer(name)
        obs.update(x)
        a = ActQuantizer(4)
        a.set_range(*obs.range(4))
        err[name] = float(((a(x) - x) ** 2).mean())
    assert err["mse"] < err["minmax"]


def test_lsq_learns_the_range_and_keeps_an_integer_zero_point():
    torch.manual_seed(0)
    a = ActQuantizer(4)
    a.set_range(-0.1, 0.1)  # far too narrow for N(0, 1)
    learn = learn_activation_ranges(nn.Sequential(_Holder(a)))
    assert all(p.requires_grad for p in learn)
    opt = torch.optim.Adam(learn, lr=0.02)
    x = torch.randn(64, 256)
    before = float(((a(x) - x) ** 2).mean().detach())
    for _ in range(200):
        opt.zero_grad()
        ((a(x) - x) ** 2).mean().backward()
        opt.step()
    after = float(((a(x) - x) ** 2).mean().detach())
    assert after < 0.5 * before and a.qparams()["scale"] > 0.1 / 15
    assert float(a.effective()[1].detach()) == a.qparams()["zero_point"]  # integer zero-point in the forward pass
    assert torch.unique(a(x).detach()).numel() <= 16


class _Holder(nn.Module):
    def __init__(self, q: ActQuantizer):
        super().__init__()
        self.input_quantizer = q


def test_plan_with_activation_bits_is_applied_per_layer(hyperprior, images):
    names = list(quantizable_layers(hyperprior))
    plan = BitPlan({n: 8 for n in names}, act_bits={names[0]: 8, names[3]: 4})
    q = apply_plan(hyperprior, plan)
    assert {n: a.bits for n, a in activation_quantizers(q).items()} == {names[0]: 8, names[3]: 4}
    assert plan_of(q) == plan and plan_of(apply_plan(hyperprior, plan.weights_only())).act_bits == {}
    with pytest.raises(ValueError, match="act_bits= was passed too"):
        apply_plan(hyperprior, plan, act_bits=8)
    with pytest.raises(ValueError, match="activation bits for layer 'h_a.0', which has no weight bits"):
        apply_plan(hyperprior, {names[0]: 8}, keep_float=True, act_bits={"h_a.0": 8})
    gdn = BitPlan({**{n: 8 for n in names}, "g_a.1": 8}, act_bits={"g_a.1": 8})
    with pytest.raises(ValueError, match="'g_a.1', a GDN layer"):
        apply_plan(hyperprior, gdn)
    legacy = apply_plan(hyperprior, BitPlan.uniform(names, 8), act_bits=6)
    assert plan_of(legacy) == BitPlan.uniform(names, 8, act_bits=6)


def test_calibration_sets_all_ranges_or_none():
    class _Skips(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)

        def forward(self, x):
            return self.a(x)  # b never runs

    q = apply_plan(_Skips(), BitPlan({"a": 8, "b": 8}, act_bits={"a": 8, "b": 8}))
    with pytest.raises(ValueError, match="activation quantizer of layer 'b': minmax observer saw no data"):
        calibrate_activations(q, torch.randn(6, 4))
    assert not any(a.frozen or a.observer is not None for a in activation_quantizers(q).values())
    with pytest.raises(ValueError, match="yielded no batch"):
        calibrate_activations(q, [])
    with pytest.raises(ValueError, match="unknown activation observer 'hist'"):
        calibrate_activations(q, torch.randn(6, 4), "hist")
    with pytest.raises(ValueError, match="does not take these options"):
        calibrate_activations(q, torch.randn(6, 4), "minmax", percentile=99.0)
