"""studies/rate_breakdown.py: the y / z rate and PSNR of a model on images, and its argument checks."""

import math

import pytest
import torch

from conftest import load_study


@pytest.fixture(scope="module")
def study():
    return load_study("rate_breakdown")


def test_rates_split_the_likelihood_rate_into_y_and_z(study, hyperprior, images):
    got = study.rates(hyperprior.eval(), [images[:1], images[1:]])
    assert got["bpp"] == pytest.approx(got["y_bpp"] + got["z_bpp"])
    assert got["y_bpp"] > 0 and got["z_bpp"] > 0 and math.isfinite(got["psnr"])
    with torch.no_grad():
        out = hyperprior(images[:1])
    y = float(-torch.log2(out["likelihoods"]["y"]).sum()) / 64 ** 2
    assert study.rates(hyperprior, [images[:1]])["y_bpp"] == pytest.approx(y)


def test_an_empty_image_set_is_refused_by_name(study, capsys):
    with pytest.raises(SystemExit):
        study.main(["--limit", "0"])
    assert "--limit must be at least 1, got 0" in capsys.readouterr().err
