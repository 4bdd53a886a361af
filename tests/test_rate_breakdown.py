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
    assert got["coded_bpp"] >= got["bpp"] - 1e-9  # untrained: its scales sit at the bound, snapping only rounds up
    assert got["y_bpp"] > 0 and got["z_bpp"] > 0 and math.isfinite(got["psnr"])
    with torch.no_grad():
        out = hyperprior(images[:1])
    y = float(-torch.log2(out["likelihoods"]["y"]).sum()) / 64 ** 2
    assert study.rates(hyperprior, [images[:1]])["y_bpp"] == pytest.approx(y)


def test_an_empty_image_set_is_refused_by_name(study, capsys):
    with pytest.raises(SystemExit):
        study.main(["--limit", "0"])
    assert "--limit must be at least 1, got 0" in capsys.readouterr().err


def test_the_bd_lines_compare_the_whole_plan_with_fp32_on_likelihoods_and_bitstreams(study):
    import pandas as pd

    rows = []
    for q, (bpp, psnr) in enumerate([(0.2, 27.0), (0.35, 28.5), (0.45, 29.2), (0.6, 29.8)], start=1):
        rows.append({"quality": q, "quantized": "none (FP32)", "bias_correction": "none", "bpp": bpp, "psnr": psnr,
                     "coded_bpp": bpp, "real_bpp": bpp, "real_psnr": psnr})
        # plain: 20 % more bits at equal PSNR; corrected: FP32's on likelihoods, 10 % more coded and real
        for correction, factor, coded in (("none", 1.2, 1.2), ("all", 1.0, 1.1)):
            rows.append({"quality": q, "quantized": "whole plan", "bias_correction": correction, "bpp": bpp * factor,
                         "psnr": psnr, "coded_bpp": bpp * coded, "real_bpp": bpp * coded, "real_psnr": psnr})
    lines = study.bd_lines(pd.DataFrame(rows))
    assert "- plain PTQ: likelihoods +20.00 %, coded +20.00 %, bitstreams +20.00 %" in lines
    assert "- bias corrected: likelihoods +0.00 %, coded +10.00 %, bitstreams +10.00 %" in lines
    assert not any("chosen" in line for line in lines)  # no such rows: no line
    assert study.bd_lines(pd.DataFrame(rows[:6])) == []  # two qualities: no BD-rate


def test_the_plan_figure_draws_every_correction_measured(study, tmp_path):
    import pandas as pd

    rows = []
    for q in (1, 3):
        rows.append({"quality": q, "quantized": "none (FP32)", "bias_correction": "none", "bpp": 0.2 * q,
                     "coded_bpp": 0.2 * q, "real_bpp": 0.2 * q})
        for k, correction in enumerate(("none", "all", "chosen")):
            rows.append({"quality": q, "quantized": "whole plan", "bias_correction": correction,
                         "bpp": 0.2 * q * (1.1 - 0.02 * k), "coded_bpp": 0.2 * q * 1.05, "real_bpp": 0.2 * q * 1.05,
                         "chosen": "g_a+h_a" if correction == "chosen" else None})
    path = tmp_path / "plan.png"
    study._plot_plan(pd.DataFrame(rows), path, "m", 6.0)
    assert path.stat().st_size > 10_000
