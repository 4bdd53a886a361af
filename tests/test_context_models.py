"""Context models under quantization (issue 11, item 2) and their cached sensitivity pipeline (item 3).

CompressAI's ``MaskedConv2d`` masks its weight by writing ``self.weight.data`` in ``forward``; on a parametrized
(fake-quantized) weight that write lands on a temporary. bitalloc's weight quantizer applies the mask itself.
The fixtures are fresh random models that never ran forward, so their context weights still hold values at
the masked positions, as a trained checkpoint's would after QAT moved them.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from compressai.layers import MaskedConv2d
from compressai.models import Cheng2020Anchor, JointAutoregressiveHierarchicalPriors

import bitalloc
from bitalloc import Budget, build_allocator
from bitalloc.quant import plan_of

LMBDA = 0.0130


def _mbt2018() -> torch.nn.Module:
    torch.manual_seed(0)
    model = JointAutoregressiveHierarchicalPriors(N=16, M=24).eval()
    model.meta = {"lambda": LMBDA}
    return model


@pytest.fixture
def mbt():
    return _mbt2018()


@pytest.fixture(scope="module")
def x():
    g = torch.Generator().manual_seed(1)
    return torch.nn.functional.interpolate(torch.rand(2, 3, 8, 8, generator=g), size=(64, 64), mode="bilinear")


@pytest.fixture
def leaks():
    """The largest |weight| at a masked position that any MaskedConv2d used in a forward pass while active."""
    seen: list[float] = []

    def hook(module, args, out):
        if isinstance(module, MaskedConv2d):
            seen.append(float((module.weight * (1 - module.mask)).abs().max()))

    handle = torch.nn.modules.module.register_module_forward_hook(hook)
    yield seen
    handle.remove()


def _plan(model, bits=6):
    return bitalloc.BitPlan.uniform(list(bitalloc.quantizable_layers(model)), bits)


def test_masked_positions_are_zero_in_every_forward_after_apply_plan_and_finetune(mbt, x, leaks):
    assert float((mbt.context_prediction.weight * (1 - mbt.context_prediction.mask)).abs().max()) > 0  # unmasked
    q = bitalloc.apply_plan(mbt, _plan(mbt))
    with torch.no_grad():
        q(x)
    tuned, _ = bitalloc.finetune(mbt, _plan(mbt), x, steps=2, batch_size=2, lr=1e-2, progress=False)
    with torch.no_grad():
        tuned(x)
    assert len(leaks) >= 4 and max(leaks) == 0.0  # apply_plan, 2 training steps, the tuned model
    w = tuned.context_prediction.weight
    assert torch.equal(w, w * tuned.context_prediction.mask)


def test_the_quantized_context_model_is_causal(mbt, x):
    q = bitalloc.apply_plan(mbt, _plan(mbt, 4))
    y_hat = torch.round(q.g_a(x)).detach()
    later = y_hat.clone()
    later[:, :, 2, 1] += 5.0  # a latent at row 2, column 1 of the raster scan
    with torch.no_grad():
        before, after = q.context_prediction(y_hat), q.context_prediction(later)
    changed = (before - after).abs().amax(dim=(0, 1)) > 0
    assert not changed[:2].any() and not changed[2, :2].any()  # nothing at or before (2, 1) sees it
    assert changed[2, 2] and changed[3, 1]  # the next positions do


@pytest.mark.parametrize("steps", [0, 2], ids=["apply_plan", "finetune"])
def test_compress_decompress_agree_with_the_forward_pass(mbt, x, steps):
    """The decoder's latents y_dec are the fixed point of the forward pass's own entropy parameters:
    y_dec = round(y - mu) + mu with mu = entropy_parameters(h_s(z_hat), context_prediction(y_dec)), which holds
    only if the forward pass's context model sees what the decoder saw. (CompressAI's forward rounds y without
    the means, so its y_hat is not the coded one by design; the means are what must agree.)"""
    if steps:
        q, _ = bitalloc.finetune(mbt, _plan(mbt), x, steps=steps, batch_size=2, lr=1e-2, progress=False)
    else:
        q = bitalloc.apply_plan(mbt, _plan(mbt)).eval()
        q.update(force=True)
    decoded = {}
    handle = q.g_s.register_forward_pre_hook(lambda m, args: decoded.setdefault("y", args[0].clone()))
    with torch.no_grad():
        enc = q.compress(x)
        x_dec = q.decompress(enc["strings"], enc["shape"])["x_hat"]
        handle.remove()
        y_dec = decoded["y"]
        y = q.g_a(x)
        z_hat, _ = q.entropy_bottleneck(q.h_a(y))
        ctx = q.context_prediction(y_dec)
        _, means = q.entropy_parameters(torch.cat((q.h_s(z_hat), ctx), dim=1)).chunk(2, 1)
        expected = torch.round(y - means) + means
        assert (y_dec - expected).abs().max() < 1e-4
        assert torch.allclose(x_dec, q.g_s(expected).clamp(0, 1), atol=1e-5)


def test_mbt2018_goes_through_the_whole_pipeline(mbt, x, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="bitalloc.sensitivity"):
        table = bitalloc.measure_sensitivity(mbt, x, bits=(4, 8), hessian_samples=1, progress=False)
    assert "cached (JointAutoregressivePipeline)" in caplog.text
    assert "context_prediction" in table.layer_names and table.hessian_trace[table.index("context_prediction")] > 0
    alloc = build_allocator("ilp").allocate(table, Budget.from_avg_bits(table, 6.0))
    assert alloc.plan is not None
    q = bitalloc.apply_plan(mbt, alloc.plan)
    assert plan_of(q) == alloc.plan
    tuned, log = bitalloc.finetune(mbt, alloc.plan, x, steps=2, batch_size=2, progress=False)
    assert len(log) == 2 and {"loss", "bpp", "mse", "psnr", "aux_loss"} <= set(log.columns)
    check = bitalloc.check_plan(mbt, alloc.plan, table, x)
    assert check.predicted == pytest.approx(alloc.plan.cost(table)) and check.bpp_fp > 0
    bitalloc.export_packed(tuned, tmp_path / "mbt.bin")
    back = bitalloc.load_packed(tmp_path / "mbt.bin", model_factory=lambda: _mbt2018())
    assert plan_of(back) == alloc.plan
    with torch.no_grad():
        a, b = back(x), tuned(x)
    assert torch.equal(a["x_hat"], b["x_hat"]) and torch.equal(a["likelihoods"]["y"], b["likelihoods"]["y"])


@pytest.mark.parametrize("make", [_mbt2018, lambda: Cheng2020Anchor(N=16)], ids=["mbt2018", "cheng2020-anchor"])
def test_cached_equals_naive_on_context_models(make, x):
    model = make()
    kw = dict(bits=(2, 4), progress=False, return_frame=True, hessian_samples=0, lmbda=LMBDA)
    _, cached = bitalloc.measure_sensitivity(model, x, method="cached", **kw)
    _, naive = bitalloc.measure_sensitivity(model, x, method="naive", **kw)
    assert cached.attrs["pipeline"] == "JointAutoregressivePipeline" and naive.attrs["method"] == "naive"
    np.testing.assert_allclose(cached["loss"], naive["loss"], rtol=1e-6)
