"""Tests of bitalloc.reference: shipped CompressAI Kodak curves load, are sane, and give sensible BD-rates."""

from __future__ import annotations

import json
from importlib.resources import files

import numpy as np
import pytest

from bitalloc.bdrate import bd_psnr, bd_rate
from bitalloc.reference import COLUMNS, REFERENCE_FILES, available_references, reference_curve

EXPECTED = {"bmshj2018-hyperprior": 8, "mbt2018-mean": 8, "cheng2020-anchor": 6, "jpeg": 19, "bpg": 8}


def test_available_references():
    assert available_references() == sorted(EXPECTED)


@pytest.mark.parametrize("name, n_points", sorted(EXPECTED.items()), ids=sorted(EXPECTED))
def test_curve_shape_and_values(name, n_points):
    df = reference_curve(name)
    assert list(df.columns) == COLUMNS
    assert len(df) == n_points
    assert df["quality"].tolist() == list(range(1, n_points + 1))
    assert np.all(np.diff(df["bpp"]) > 0) and np.all(df["bpp"] > 0)
    assert np.all(np.diff(df["psnr_rgb"]) > 0)
    assert df["psnr_rgb"].between(20, 50).all()
    assert df["ms_ssim_rgb"].between(0.7, 1.0).all()
    assert df.attrs["name"] == name and df.attrs["dataset"] == "kodak"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_values_equal_the_json_file(name):
    raw = json.loads(
        files("bitalloc").joinpath("data", "reference", "kodak", REFERENCE_FILES["kodak"][name]).read_text()
    )["results"]
    df = reference_curve(name)
    assert df["bpp"].tolist() == raw["bpp"]
    assert df["psnr_rgb"].tolist() == raw["psnr-rgb"]
    assert df["ms_ssim_rgb"].tolist() == raw["ms-ssim-rgb"]


def test_source_md_is_shipped():
    text = files("bitalloc").joinpath("data", "reference", "kodak", "SOURCE.md").read_text()
    assert "InterDigitalInc/CompressAI" in text and "BSD 3-Clause Clear" in text


def _bd(anchor, test, fn=bd_rate, method="pchip"):
    a, t = reference_curve(anchor), reference_curve(test)
    return fn(a["bpp"], a["psnr_rgb"], t["bpp"], t["psnr_rgb"], method=method)


@pytest.mark.parametrize("method", ["pchip", "cubic"])
def test_mbt2018_mean_beats_bmshj2018_hyperprior(method):
    # anchor: bmshj2018-hyperprior; the mean-scale hyperprior is known to save a few percent
    r = _bd("bmshj2018-hyperprior", "mbt2018-mean", method=method)
    assert -12 < r < -2
    assert _bd("bmshj2018-hyperprior", "mbt2018-mean", fn=bd_psnr, method=method) > 0


def test_ranking_on_real_data():
    # anchor: bmshj2018-hyperprior. cheng2020-anchor < mbt2018-mean < hyperprior < JPEG in rate at equal PSNR.
    cheng = _bd("bmshj2018-hyperprior", "cheng2020-anchor")
    mbt = _bd("bmshj2018-hyperprior", "mbt2018-mean")
    jpeg = _bd("bmshj2018-hyperprior", "jpeg")
    assert cheng < mbt < 0 < jpeg
    assert jpeg > 50


@pytest.mark.parametrize(
    "kwargs, match",
    [
        pytest.param({"name": "mbt2018"}, r"unknown reference curve 'mbt2018'.*bmshj2018-hyperprior, bpg, "
                     r"cheng2020-anchor, jpeg, mbt2018-mean", id="unknown-name"),
        pytest.param({"name": "jpeg", "dataset": "clic"}, r"unknown reference dataset 'clic'.*kodak",
                     id="unknown-dataset"),
    ],
)
def test_unknown_names_list_the_choices(kwargs, match):
    with pytest.raises(ValueError, match=match):
        reference_curve(**kwargs)
