"""bake / export_baked (issue 14, item 3): a plain model with the quantized weights written in."""

import json

import pytest
import torch
from safetensors.torch import load_file, safe_open
from torch.nn.utils import parametrize

from bitalloc.bake import bake, export_baked
from bitalloc.graph import quantizable_layers
from bitalloc.models import build_model
from bitalloc.plan import BitPlan
from bitalloc.quant import apply_plan, plan_of


def _plan(model):
    names = list(quantizable_layers(model, gdn=True))
    return {n: (2, 3, 4, 6, 8)[i % 5] for i, n in enumerate(names)}


def test_baked_forward_equals_fake_quantized_forward(hyperprior, images):
    q = apply_plan(hyperprior, _plan(hyperprior), calibration="mse", keep_float=True).eval()
    baked = bake(q)
    assert type(baked) is type(hyperprior)  # the original class, not a Parametrized* one
    assert not any(parametrize.is_parametrized(m) for m in baked.modules())
    assert not len(plan_of(baked))
    with torch.no_grad():
        a, b = q(images), baked(images)
    assert torch.equal(a["x_hat"], b["x_hat"])
    assert all(torch.equal(a["likelihoods"][k], b["likelihoods"][k]) for k in ("y", "z"))
    with torch.no_grad():  # the quantized model still works (bake must not touch the shared Parametrized class)
        assert torch.equal(q(images)["x_hat"], a["x_hat"])


def test_bake_keeps_the_context_mask(tmp_path):
    torch.manual_seed(0)
    model = build_model("cheng2020-anchor", 1).eval()
    q = apply_plan(model, {n: 4 for n in quantizable_layers(model)})
    baked = bake(q)
    ctx = baked.context_prediction
    assert torch.equal(ctx.weight * ctx.mask, ctx.weight)  # masked positions are exactly zero
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(q(x)["x_hat"], baked(x)["x_hat"])


def test_export_baked_loads_without_bitalloc(hyperprior, images, tmp_path):
    q = apply_plan(hyperprior, _plan(hyperprior), keep_float=True).eval()
    report = export_baked(q, tmp_path / "baked.safetensors")
    fresh = build_model("bmshj2018-hyperprior", 1)  # plain CompressAI class, plain state dict
    fresh.load_state_dict(load_file(report["path"]))
    with torch.no_grad():
        assert torch.equal(fresh.eval()(images)["x_hat"], q(images)["x_hat"])
    with safe_open(report["path"], "pt") as f:
        meta = f.metadata()
    assert BitPlan.from_json(meta["plan"]) == plan_of(q)
    assert json.loads(meta["meta"])["architecture"] == "bmshj2018-hyperprior"


def test_bake_refuses_activation_quantizers_unless_dropped(hyperprior):
    q = apply_plan(hyperprior, _plan(hyperprior), keep_float=True, act_bits=8)
    with pytest.raises(ValueError, match="g_a.0.*activations"):
        bake(q)
    baked = bake(q, drop_activations=True)
    assert not any(hasattr(m, "input_quantizer") for m in baked.modules())


def test_bake_needs_a_plan(hyperprior):
    with pytest.raises(ValueError, match="apply_plan"):
        bake(hyperprior)
