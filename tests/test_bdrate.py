"""Tests of bitalloc.bdrate: exact hand-worked cases, symmetry, an independent dense-sampling check, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bitalloc.bdrate import bd_psnr, bd_rate

METHODS = ["pchip", "cubic", "akima"]

# A smooth, realistic anchor curve (bpp, PSNR dB), deliberately given out of order.
ANCHOR_RATE = [0.48, 0.13, 0.67, 0.21, 0.32, 0.94]
ANCHOR_PSNR = [32.8, 27.6, 34.5, 29.2, 31.0, 36.7]

# The published example curves of the FAU-LMS `bjontegaard` package (x265 presets, kbit/s vs PSNR dB).
FAU_RATE_ANCHOR = [9487.76, 4593.60, 2486.44, 1358.24]
FAU_PSNR_ANCHOR = [40.037, 38.615, 36.845, 34.851]
FAU_RATE_TEST = [9787.80, 4469.00, 2451.52, 1356.24]
FAU_PSNR_TEST = [40.121, 38.651, 36.970, 34.987]


# ----------------------------------------------------------------------------------------------------------------
# Independent reference: hand-written interpolants, integrated by dense Simpson sampling (no scipy .integrate).
# ----------------------------------------------------------------------------------------------------------------


def _pchip_slopes(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Fritsch-Carlson / Fritsch-Butland monotone slopes with the non-centred 3-point end condition."""
    h = np.diff(x)
    delta = np.diff(y) / h
    n = x.size
    d = np.zeros(n)
    for k in range(1, n - 1):
        if delta[k - 1] * delta[k] > 0:
            w1, w2 = 2 * h[k] + h[k - 1], h[k] + 2 * h[k - 1]
            d[k] = (w1 + w2) / (w1 / delta[k - 1] + w2 / delta[k])

    def end(h0, h1, m0, m1):
        s = ((2 * h0 + h1) * m0 - h0 * m1) / (h0 + h1)
        if np.sign(s) != np.sign(m0):
            return 0.0
        if np.sign(m0) != np.sign(m1) and abs(s) > abs(3 * m0):
            return 3 * m0
        return s

    d[0] = end(h[0], h[1], delta[0], delta[1])
    d[-1] = end(h[-1], h[-2], delta[-1], delta[-2])
    return d


def _hermite_eval(x, y, d, t):
    k = np.clip(np.searchsorted(x, t, side="right") - 1, 0, x.size - 2)
    h = x[k + 1] - x[k]
    s = (t - x[k]) / h
    h00, h10 = 2 * s**3 - 3 * s**2 + 1, s**3 - 2 * s**2 + s
    h01, h11 = -2 * s**3 + 3 * s**2, s**3 - s**2
    return h00 * y[k] + h10 * h * d[k] + h01 * y[k + 1] + h11 * h * d[k + 1]


def _dense_mean_diff(xa, ya, xt, yt, method, n=20001):
    """Mean of y_test - y_anchor over the overlap, by composite Simpson on n samples."""
    oa, ot = np.argsort(xa), np.argsort(xt)
    xa, ya, xt, yt = (np.asarray(v, float) for v in (np.asarray(xa)[oa], np.asarray(ya)[oa],
                                                      np.asarray(xt)[ot], np.asarray(yt)[ot]))
    lo, hi = max(xa[0], xt[0]), min(xa[-1], xt[-1])
    t = np.linspace(lo, hi, n)

    def curve(x, y):
        if method == "pchip":
            return _hermite_eval(x, y, _pchip_slopes(x, y), t)
        return np.polyval(np.polyfit(x, y, 3), t)  # "cubic"

    f = curve(xt, yt) - curve(xa, ya)
    w = np.ones(n)
    w[1:-1:2], w[2:-1:2] = 4, 2
    return float(np.sum(w * f) * (t[1] - t[0]) / 3 / (hi - lo))


def _reference_bd_rate(ra, da, rt, dt, method):
    return math.expm1(_dense_mean_diff(np.asarray(da), np.log(ra), np.asarray(dt), np.log(rt), method)) * 100


def _reference_bd_psnr(ra, da, rt, dt, method):
    return _dense_mean_diff(np.log(ra), np.asarray(da), np.log(rt), np.asarray(dt), method)


# ----------------------------------------------------------------------------------------------------------------
# Exact properties
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_curve_against_itself_is_zero(method):
    assert bd_rate(ANCHOR_RATE, ANCHOR_PSNR, ANCHOR_RATE, ANCHOR_PSNR, method=method) == pytest.approx(0, abs=1e-12)
    assert bd_psnr(ANCHOR_RATE, ANCHOR_PSNR, ANCHOR_RATE, ANCHOR_PSNR, method=method) == pytest.approx(0, abs=1e-12)


@pytest.mark.parametrize("method", METHODS)
def test_rates_times_0_9_is_minus_10_percent(method):
    test_rate = [0.9 * r for r in ANCHOR_RATE]
    assert bd_rate(ANCHOR_RATE, ANCHOR_PSNR, test_rate, ANCHOR_PSNR, method=method) == pytest.approx(-10, abs=1e-9)
    # and the other way round: the anchor needs 1/0.9 times the bits
    assert bd_rate(test_rate, ANCHOR_PSNR, ANCHOR_RATE, ANCHOR_PSNR, method=method) == pytest.approx(
        100 / 9, abs=1e-9
    )


@pytest.mark.parametrize("method", METHODS)
def test_psnr_plus_half_db_is_half_db(method):
    test_psnr = [p + 0.5 for p in ANCHOR_PSNR]
    assert bd_psnr(ANCHOR_RATE, ANCHOR_PSNR, ANCHOR_RATE, test_psnr, method=method) == pytest.approx(0.5, abs=1e-9)
    assert bd_psnr(ANCHOR_RATE, test_psnr, ANCHOR_RATE, ANCHOR_PSNR, method=method) == pytest.approx(-0.5, abs=1e-9)


@pytest.mark.parametrize("method", METHODS)
def test_swapping_curves_inverts_the_rate_ratio(method):
    r1 = bd_rate(FAU_RATE_ANCHOR, FAU_PSNR_ANCHOR, FAU_RATE_TEST, FAU_PSNR_TEST, method=method)
    r2 = bd_rate(FAU_RATE_TEST, FAU_PSNR_TEST, FAU_RATE_ANCHOR, FAU_PSNR_ANCHOR, method=method)
    assert r1 < 0 < r2
    assert (1 + r1 / 100) * (1 + r2 / 100) == pytest.approx(1, abs=1e-12)
    p1 = bd_psnr(FAU_RATE_ANCHOR, FAU_PSNR_ANCHOR, FAU_RATE_TEST, FAU_PSNR_TEST, method=method)
    p2 = bd_psnr(FAU_RATE_TEST, FAU_PSNR_TEST, FAU_RATE_ANCHOR, FAU_PSNR_ANCHOR, method=method)
    assert p1 > 0 and p1 == pytest.approx(-p2, abs=1e-12)


def test_accepts_lists_and_arrays_in_any_order():
    order = [3, 0, 5, 1, 4, 2]
    shuffled_r = np.asarray(ANCHOR_RATE)[order]
    shuffled_p = np.asarray(ANCHOR_PSNR)[order]
    test_rate = [0.8 * r for r in ANCHOR_RATE]
    a = bd_rate(ANCHOR_RATE, ANCHOR_PSNR, test_rate, ANCHOR_PSNR)
    b = bd_rate(shuffled_r, shuffled_p, np.asarray(test_rate), np.asarray(ANCHOR_PSNR))
    assert a == pytest.approx(b, abs=1e-12) == pytest.approx(-20, abs=1e-9)
    assert isinstance(b, float)


# ----------------------------------------------------------------------------------------------------------------
# Published example, checked against an independent computation
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["pchip", "cubic"])
def test_published_example_matches_independent_dense_integration(method):
    args = (FAU_RATE_ANCHOR, FAU_PSNR_ANCHOR, FAU_RATE_TEST, FAU_PSNR_TEST)
    assert bd_rate(*args, method=method) == pytest.approx(_reference_bd_rate(*args, method), abs=1e-8)
    assert bd_psnr(*args, method=method) == pytest.approx(_reference_bd_psnr(*args, method), abs=1e-9)


@pytest.mark.parametrize(
    "method, expected_rate, expected_psnr",
    [
        pytest.param("pchip", -4.4175, 0.1197, id="pchip"),
        pytest.param("cubic", -4.4205, 0.1204, id="cubic-VCEG-M33"),
        pytest.param("akima", -4.4252, 0.1194, id="akima"),
    ],
)
def test_published_example_values(method, expected_rate, expected_psnr):
    # Values to 4 decimals, computed independently (dense sampling above for pchip/cubic); the cubic value agrees
    # with an independent numpy.polyfit/polyint evaluation of VCEG-M33 (-4.42046...).
    args = (FAU_RATE_ANCHOR, FAU_PSNR_ANCHOR, FAU_RATE_TEST, FAU_PSNR_TEST)
    assert bd_rate(*args, method=method) == pytest.approx(expected_rate, abs=5e-5)
    assert bd_psnr(*args, method=method) == pytest.approx(expected_psnr, abs=5e-5)


@pytest.mark.parametrize("method", ["pchip", "cubic"])
def test_partial_overlap_matches_independent_dense_integration(method):
    # Test curve covers only part of the anchor's range and has a different shape, more points than the anchor.
    rt = [0.10, 0.16, 0.25, 0.37, 0.55, 0.80, 1.20]
    dt = [27.9, 29.5, 31.2, 32.9, 34.6, 36.0, 37.4]
    assert bd_rate(ANCHOR_RATE, ANCHOR_PSNR, rt, dt, method=method) == pytest.approx(
        _reference_bd_rate(np.asarray(ANCHOR_RATE), ANCHOR_PSNR, np.asarray(rt), dt, method), abs=1e-8
    )
    assert bd_psnr(ANCHOR_RATE, ANCHOR_PSNR, rt, dt, method=method) == pytest.approx(
        _reference_bd_psnr(np.asarray(ANCHOR_RATE), ANCHOR_PSNR, np.asarray(rt), dt, method), abs=1e-9
    )


# ----------------------------------------------------------------------------------------------------------------
# Errors name the culprit
# ----------------------------------------------------------------------------------------------------------------

GOOD_R = [1.0, 2.0, 4.0, 8.0]
GOOD_D = [30.0, 33.0, 36.0, 39.0]


@pytest.mark.parametrize(
    "fn, args, match",
    [
        pytest.param(bd_rate, ([1, 2, 4], [30, 33, 36], GOOD_R, GOOD_D), r"anchor curve has 3 points.*at least 4",
                     id="anchor-3-points"),
        pytest.param(bd_psnr, (GOOD_R, GOOD_D, [1, 2, 4], [30, 33, 36]), r"test curve has 3 points.*at least 4",
                     id="test-3-points"),
        pytest.param(bd_rate, (GOOD_R, [30, 36, 33, 39], GOOD_R, GOOD_D),
                     r"anchor curve is not monotone.*point 2 \(rate=4\.0, distortion=33\.0\)",
                     id="non-monotone-anchor"),
        pytest.param(bd_rate, (GOOD_R, GOOD_D, [8, 4, 2, 1], [39, 36, 36.5, 30]),
                     r"test curve is not monotone.*point 2 \(rate=2\.0, distortion=36\.5\)",
                     id="non-monotone-test-unsorted"),
        pytest.param(bd_rate, (GOOD_R, GOOD_D, [1, 2, 2, 8], GOOD_D),
                     r"test curve: rates must be distinct.*points 1 and 2",
                     id="duplicate-rate"),
        pytest.param(bd_rate, (GOOD_R, GOOD_D, [1, 0, 4, 8], GOOD_D),
                     r"test curve: rate must be finite and positive.*point 1",
                     id="zero-rate"),
        pytest.param(bd_psnr, ([1, 2, np.nan, 8], GOOD_D, GOOD_R, GOOD_D),
                     r"anchor curve: rate must be finite and positive.*point 2", id="nan-rate"),
        pytest.param(bd_rate, (GOOD_R, GOOD_D, GOOD_R, [30, 33, np.inf, 39]),
                     r"test curve: distortion must be finite.*point 2", id="inf-distortion"),
        pytest.param(bd_rate, (GOOD_R, GOOD_D, GOOD_R, [40, 41, 42, 43]),
                     r"distortion ranges.*do not overlap.*anchor distortion in \[30\.0, 39\.0\].*"
                     r"test distortion in \[40\.0, 43\.0\]", id="no-distortion-overlap"),
        pytest.param(bd_psnr, (GOOD_R, GOOD_D, [10, 20, 40, 80], GOOD_D),
                     r"rate ranges.*do not overlap.*anchor rate in \[1\.0, 8\.0\].*test rate in \[10\.0, 80\.0\]",
                     id="no-rate-overlap"),
        pytest.param(bd_rate, (GOOD_R, GOOD_D, GOOD_R, [30, 33], ), r"test curve: 4 rate values but 2 distortion",
                     id="length-mismatch"),
    ],
)
def test_errors_name_the_culprit(fn, args, match):
    with pytest.raises(ValueError, match=match):
        fn(*args)


def test_unknown_method_lists_choices():
    with pytest.raises(ValueError, match=r"unknown method 'spline'.*'pchip', 'cubic', 'akima'"):
        bd_rate(GOOD_R, GOOD_D, GOOD_R, GOOD_D, method="spline")


def test_touching_ranges_do_not_count_as_overlap():
    with pytest.raises(ValueError, match="do not overlap"):
        bd_rate(GOOD_R, GOOD_D, GOOD_R, [39, 40, 41, 42])
