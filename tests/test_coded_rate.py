"""The coded rate: likelihoods at the entropy coder's scales (models/losses.py, ``rate="coded"``)."""

from __future__ import annotations

import copy
import logging

import pytest
import torch

from bitalloc.models.losses import RateDistortionLoss, coded_rate, coded_scales, rd_loss_fn
from tests.conftest import toy_mlp


def _smooth(side: int, seed: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(1, 3, side // 16, side // 16, generator=g)
    return torch.nn.functional.interpolate(x, size=(side, side), mode="bilinear", align_corners=False)


def test_coded_scales_are_the_table_entries_the_coder_picks(hyperprior):
    from compressai.entropy_models import GaussianConditional
    from compressai.models.google import get_scale_table

    scales = torch.cat([torch.tensor([0.0, 0.05, 0.11, 0.1100001, 1.0, 255.9, 256.0, 1e4]),
                        torch.rand(200, generator=torch.Generator().manual_seed(0)) * 30])
    fresh = GaussianConditional(None)  # no table built: the default one
    built = GaussianConditional(None)
    built.update_scale_table(get_scale_table())
    expected_fresh = built.scale_table[built.build_indexes(scales).long()]
    assert torch.equal(coded_scales(fresh, scales), expected_fresh)
    hyperprior.update(force=True)
    gc = hyperprior.gaussian_conditional
    snapped = coded_scales(gc, scales)
    assert torch.equal(snapped, gc.scale_table[gc.build_indexes(scales).long()])
    assert bool((snapped >= gc.lower_bound_scale(scales).clamp_max(gc.scale_table[-1])).all())


def test_coded_rate_is_the_bitstreams_size_where_the_likelihoods_are_not():
    from bitalloc.models import load_model

    model = load_model("bmshj2018-hyperprior", 3).eval()  # shipped weights: a trained coder
    model.update(force=True)
    x = _smooth(256)
    with torch.no_grad():
        plain = model(x)["likelihoods"]
        with coded_rate(model):
            coded = model(x)["likelihoods"]
        real = sum(len(s[0]) for s in model.compress(x)["strings"]) * 8
    bits = {k: sum(float(-torch.log2(v).sum()) for v in lk.values()) for k, lk in (("plain", plain),
                                                                                     ("coded", coded))}
    assert bits["coded"] != bits["plain"]
    assert abs(bits["coded"] - real) < abs(bits["plain"] - real)
    assert abs(bits["coded"] - real) < 0.002 * real + 64  # the arithmetic coder's flush bytes per stream


def test_coded_rate_leaves_the_model_as_it_was(hyperprior, images):
    with torch.no_grad():
        before = hyperprior(images)["likelihoods"]["y"]
        with coded_rate(hyperprior) as same:
            assert same is hyperprior and hyperprior(images)["likelihoods"]["y"].shape == before.shape
        after = hyperprior(images)["likelihoods"]["y"]
    assert torch.equal(before, after)
    assert not hyperprior.gaussian_conditional._forward_pre_hooks
    copied = copy.deepcopy(hyperprior)  # nothing left behind that a copy would carry
    assert not copied.gaussian_conditional._forward_pre_hooks


def test_the_coded_loss_runs_the_model_at_its_own_lambda(mean_scale, images):
    lmbda = mean_scale.meta["lambda"]
    own = rd_loss_fn(None)
    with torch.no_grad():
        assert float(own(mean_scale, images)["loss"]) == pytest.approx(
            float(rd_loss_fn(lmbda)(mean_scale, images)["loss"]), rel=1e-6)
        coded = rd_loss_fn(None, rate="coded")(mean_scale, images)
        with coded_rate(mean_scale):
            out = mean_scale(images)
        by_hand = RateDistortionLoss(lmbda)(out, images)
    assert float(coded["bpp"]) == pytest.approx(float(by_hand["bpp"]), rel=1e-6)
    keys = {rd_loss_fn(x, rate=r).cache_key for x in (None, 0.01, 0.02) for r in ("likelihood", "coded")}
    assert len(keys) == 6


def test_coded_rate_errors_name_the_setting(hyperprior, images):
    with pytest.raises(ValueError, match="unknown rate 'bitstream'; valid choices: likelihood, coded"):
        rd_loss_fn(0.01, rate="bitstream")
    with torch.no_grad():
        out = hyperprior(images)
    with pytest.raises(ValueError, match=r"rate='coded' snaps the scales inside the model: call the loss as "
                                         r"criterion\(model, batch\)"):
        rd_loss_fn(0.01, rate="coded")(out, images)
    with pytest.raises(ValueError, match=r"lmbda=None\) takes the model's own meta\['lambda'\]"):
        rd_loss_fn(None)(out, images)
    bare = copy.deepcopy(hyperprior)
    bare.meta = {}
    with pytest.raises(ValueError, match=r"meta\['lambda'\]"):
        rd_loss_fn(None)(bare, images)
    with pytest.raises(ValueError, match="rate='coded': Sequential has no GaussianConditional"):
        with coded_rate(toy_mlp()):
            pass


def test_sensitivity_with_the_coded_rate_runs_full_passes(images, caplog):
    from bitalloc import measure_sensitivity
    from bitalloc.models import load_model

    model = load_model("bmshj2018-hyperprior", 1).eval()  # trained: its scales are not all at the bound
    kw = dict(bits=(2,), progress=False, return_frame=True, hessian_samples=0)
    with caplog.at_level(logging.INFO, logger="bitalloc.sensitivity.measure"):
        _, coded = measure_sensitivity(model, images, loss=rd_loss_fn(None, rate="coded"), **kw)
    _, plain = measure_sensitivity(model, images, **kw)
    assert coded.attrs["method"] == "naive" and plain.attrs["method"] == "cached"
    assert "naive (rate='coded': the loss runs the model with its coder's scales)" in caplog.text
    with torch.no_grad():
        direct = float(rd_loss_fn(None, rate="coded")(model, images)["bpp"])
    assert coded["bpp_fp"].iloc[0] == pytest.approx(direct, rel=1e-6)
    assert coded["bpp_fp"].iloc[0] != pytest.approx(plain["bpp_fp"].iloc[0], rel=1e-6)
