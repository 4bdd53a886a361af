"""DynaQuant: content-aware quantizers, nested weights, selectors, training, real bitstreams (tiny models)."""

from __future__ import annotations

import math

import pytest
import torch

from bitalloc.dynaquant import (ContentAwareActQuantizer, DynaQuantModel, NestedWeight, calibrate_bit_bias,
                                evaluate_dynamic, load_dynaquant, round_with, save_dynaquant, train_dynaquant)
from bitalloc.quant import dgm_grad

LMBDA = 0.0018


def _randomize_selectors(dq: DynaQuantModel, seed: int = 0) -> DynaQuantModel:
    """Give the selectors' last layer random weights so their choices depend on the input."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for s in dq.selectors.values():
            last = s.mlp[-1]
            last.weight.copy_(torch.randn(last.weight.shape, generator=g) * 2.0)
            last.bias.zero_()
    return dq


@pytest.fixture
def dq(hyperprior) -> DynaQuantModel:
    return _randomize_selectors(DynaQuantModel(hyperprior, (4, 6, 8)))


@pytest.fixture(scope="module")
def varied() -> torch.Tensor:
    """Eight 64x64 images of different smoothness and contrast (so selectors see different inputs)."""
    g = torch.Generator().manual_seed(3)
    out = []
    for i in range(8):
        base = torch.rand(1, 3, 2 + 2 * i, 2 + 2 * i, generator=g)
        img = torch.nn.functional.interpolate(base, size=(64, 64), mode="bilinear", align_corners=False)
        out.append((img * (0.3 + 0.1 * i)).clamp(0, 1))
    return torch.cat(out)


# gradient estimators -----------------------------------------------------------------------------------------
def _slope(estimator: str, u: torch.Tensor, qmax: int = 7, beta: float = 2.0) -> torch.Tensor:
    u = u.clone().requires_grad_(True)
    round_with(u, qmax, estimator, beta).sum().backward()
    return u.grad


def test_dgm_slope_is_the_soft_rounding_derivative_and_ste_is_one():
    u = torch.linspace(-9.0, 9.0, 1801)
    inside = (u >= -7) & (u <= 7)
    dgm, ste = _slope("dgm", u), _slope("ste", u)
    assert torch.equal(ste, inside.float())
    assert torch.allclose(dgm[inside], dgm_grad(u[inside], 2.0))
    assert torch.all(dgm[~inside] == 0)
    # largest halfway between levels, smallest at a level, mean 1 over one step (distance-aware)
    assert dgm[(u - 0.5).abs() < 1e-6].item() == pytest.approx(2.0 / (2 * math.tanh(1.0)), rel=1e-5)
    assert dgm[(u - 0.5).abs() < 1e-6].item() > dgm[(u - 0.0).abs() < 1e-6].item()
    step = (u >= 0) & (u < 1)
    assert dgm[step].mean().item() == pytest.approx(1.0, abs=0.01)
    assert not torch.allclose(dgm[inside], ste[inside])


@pytest.mark.parametrize("estimator", ["ste", "dgm"])
def test_content_aware_quantizer_follows_input_statistics(estimator):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 8, 8, generator=g) * 3 + 1
    q = ContentAwareActQuantizer(4, 8, estimator=estimator)
    # scale and offset are functions of the per-image statistics: quantizing c*x + d gives c*q(x) + d
    assert torch.allclose(q(2.5 * x + 0.7), 2.5 * q(x) + 0.7, atol=1e-4)
    err = (q(x) - x).abs().max().item()
    assert err <= 12 * x.std().item() / 127  # within a step of the +-12 sigma grid (no clipping here)


def test_content_aware_quantizer_gradients_differ_by_estimator():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 2, 6, 6, generator=g)
    grads = {}
    for est in ("ste", "dgm"):
        xi = x.clone().requires_grad_(True)
        q = ContentAwareActQuantizer(2, 4, estimator=est)
        q(xi).pow(2).sum().backward()
        grads[est] = xi.grad
    assert not torch.allclose(grads["ste"], grads["dgm"])


# nested weights ----------------------------------------------------------------------------------------------
def test_lower_precisions_are_derived_from_the_stored_8bit_integers(hyperprior):
    conv = hyperprior.g_a[2]
    nw = NestedWeight(conv, 8)
    w = conv.weight.detach()
    q8 = nw.integers(w)
    assert q8.abs().max() <= 127
    for b in (4, 6):
        shift = 2 ** (8 - b)
        expected = torch.clamp(torch.round(q8.float() / shift), -(2 ** (b - 1) - 1), 2 ** (b - 1) - 1)
        assert torch.equal(nw.integers(w, b).float(), expected)
        s = nw.scale().detach().reshape(-1, 1, 1, 1)
        with torch.no_grad():
            assert torch.allclose(nw(w, b), expected * s * shift)
            nw.freeze(w)
            assert torch.allclose(nw(w, b), expected * s * shift)  # the frozen int8 codes give the same
            nw.unfreeze()


# masked context layers (issue 11, item 2) -------------------------------------------------------------------
def _mbt2018_tiny() -> torch.nn.Module:
    from compressai.models import JointAutoregressiveHierarchicalPriors

    torch.manual_seed(0)
    return JointAutoregressiveHierarchicalPriors(N=16, M=24).eval()


def test_the_context_model_weight_is_masked_in_every_forward_at_every_precision():
    from bitalloc.dynaquant import DynamicLayer

    ctx = _mbt2018_tiny().context_prediction  # a MaskedConv2d that never ran: masked positions still hold weights
    hidden = 1 - ctx.mask
    assert (ctx.weight.detach() * hidden).abs().max() > 0
    layer = DynamicLayer(ctx, "context_prediction", (4, 6, 8), dynamic=True, act_bits=8, estimator="dgm", beta=2.0)
    seen = []
    layer.weight_q.register_forward_hook(lambda m, args, out: seen.append(out.detach()))
    opt = torch.optim.SGD(layer.parameters(), lr=0.5)
    g = torch.Generator().manual_seed(0)
    y = torch.randn(2, 24, 8, 8, generator=g)
    for step in range(3):  # training: every candidate runs, and the float weight moves at masked positions too
        layer.choice = torch.nn.functional.one_hot(torch.tensor([step % 3, 2]), 3).float()
        layer.train()
        opt.zero_grad()
        layer(y).pow(2).mean().backward()
        opt.step()
    assert (ctx.weight.detach() * hidden).abs().max() > 0  # the float weight is not masked: the quantizer masks
    with torch.no_grad():
        layer.eval()
        for k in range(3):
            layer.choice = torch.nn.functional.one_hot(torch.tensor([k, k]), 3).float()
            out = layer(y)
            assert torch.equal(out, torch.nn.functional.conv2d(layer.act(y), layer.weight_q(ctx.weight, (4, 6, 8)[k]),
                                                               ctx.bias, padding=2))
        layer.choice = None  # the fixed 8 bits
        layer(y)
        layer.weight_q.freeze(ctx.weight)  # inference from the stored integers
        layer(y)
        assert layer.weight_q.integers(ctx.weight)[hidden.bool()].abs().max() == 0
    assert len(seen) == 3 * 3 + 3 * 2 + 2  # training, inference and the direct calls, fixed, frozen
    for w in seen:
        assert w[hidden.bool()].abs().max() == 0  # exactly zero in every forward
        assert (w[ctx.mask.bool()] != 0).any()


def test_dynaquant_refuses_a_context_model_it_would_skip():
    with pytest.raises(TypeError, match=r"JointAutoregressiveHierarchicalPriors has a causal context model "
                                        r"\(masked layer 'context_prediction'\)"):
        DynaQuantModel(_mbt2018_tiny())


# selectors ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cap", [4, 6])
def test_hard_choices_respect_the_max_bits_cap(dq, varied, cap):
    with torch.no_grad():
        for s in dq.selectors.values():  # prefer 8 bits strongly: only the cap can stop it
            s.mlp[-1].bias.copy_(torch.tensor([0.0, 0.0, 50.0]).repeat(s.num_layers))
    dq.set_max_bits(cap)
    for mode in ("train", "eval"):
        dq.train(mode == "train")
        with torch.no_grad():
            dq(varied[:4])
        dyn = [n for g in dq.dynamic_layers.values() for n in g]
        used = torch.stack([dq.layer(n).bits_used for n in dyn])
        assert used.max().item() <= cap, mode
    frame = evaluate_dynamic(dq, {"a": varied[0]}, progress=False)
    assert frame.max_bits.max() <= cap


def test_a_cap_below_every_candidate_fails_with_a_sentence(dq, varied):
    dq.set_max_bits(3)
    with pytest.raises(ValueError, match="below every candidate"):
        dq(varied[:1])


def test_choices_are_deterministic_at_inference(dq, varied, tmp_path):
    dq.eval()
    with torch.no_grad():
        dq(varied)
        first = {n: b.clone() for n, b in dq.chosen_bits().items()}
        dq(varied)
        second = dq.chosen_bits()
    assert all(torch.equal(first[n], second[n]) for n in first)
    assert len({tuple(first[n].tolist()) for n in first}) > 1  # the choices do depend on the image
    save_dynaquant(dq, tmp_path / "dq.pt")
    again = load_dynaquant(tmp_path / "dq.pt")
    with torch.no_grad():
        again(varied)
    assert all(torch.equal(first[n], again.chosen_bits()[n]) for n in first)


def test_higher_penalty_lowers_the_average_bits(hyperprior, varied):
    def trained_avg(gamma: float) -> float:
        torch.manual_seed(0)
        model = DynaQuantModel(hyperprior, (4, 6, 8))
        train_dynaquant(model, varied, lmbda=LMBDA, steps=25, gamma=gamma, batch_size=4, quant_lr=1e-2,
                        progress=False, seed=0)
        model.eval()
        with torch.no_grad():
            model(varied)
        return float(model.avg_bits_of(model.chosen_bits()).mean())

    free, penalised = trained_avg(0.0), trained_avg(5.0)
    assert penalised < free - 0.5
    assert penalised == pytest.approx(DynaQuantModel(hyperprior).min_avg_bits(), abs=0.3)


def test_bias_calibration_lands_at_or_below_the_target(dq, varied):
    target = 6.0
    bias, achieved = calibrate_bit_bias(dq, varied, target)
    assert achieved <= target + 1e-9
    dq.eval()
    with torch.no_grad():
        dq(varied)
    assert float(dq.avg_bits_of(dq.chosen_bits()).mean()) == pytest.approx(achieved)
    with pytest.raises(ValueError, match="smallest achievable average"):
        calibrate_bit_bias(dq, varied, 4.0)


# real bitstreams ---------------------------------------------------------------------------------------------
def test_round_trip_gives_finite_bpp_from_real_bytes(dq, varied):
    frame = evaluate_dynamic(dq, {"a": varied[0], "b": varied[5]}, progress=False)
    assert (frame.num_bytes > 0).all()
    assert frame.bpp.tolist() == pytest.approx((frame.num_bytes * 8 / (64 * 64)).tolist())
    assert frame.bpp.map(math.isfinite).all() and frame.psnr_rgb.map(math.isfinite).all()
    assert ((frame.avg_bits >= 5.3) & (frame.avg_bits <= 8)).all()
    assert (frame.bit_ops > 0).all()
    bits_cols = [c for c in frame.columns if c.startswith("bits:")]
    assert len(bits_cols) == len(dq.layer_names)


def test_training_resumes_from_its_workdir_exactly(hyperprior, varied, tmp_path, monkeypatch):
    import bitalloc.dynaquant.train as train_mod

    def run(workdir, fail_at=None):
        torch.manual_seed(0)
        model = DynaQuantModel(hyperprior, (4, 6, 8))
        calls = {"n": 0}
        real = train_mod.draw_batch

        def flaky(*a, **k):
            calls["n"] += 1
            if fail_at is not None and calls["n"] == fail_at:
                raise KeyboardInterrupt
            return real(*a, **k)

        monkeypatch.setattr(train_mod, "draw_batch", flaky)
        log = train_dynaquant(model, varied, lmbda=LMBDA, steps=6, target_avg_bits=6.0, batch_size=2,
                              workdir=workdir, save_every=2, progress=False)
        return model, log

    straight, log_a = run(tmp_path / "a")
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "b", fail_at=5)  # dies in step 5; the state of step 4 is on disk
    resumed, log_b = run(tmp_path / "b")
    assert log_b.step.tolist() == list(range(1, 7))
    assert log_b.gamma.tolist() == pytest.approx(log_a.gamma.tolist())
    for (name, p), (_, q) in zip(straight.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(p, q), name
