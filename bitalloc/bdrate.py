"""Bjontegaard-delta metrics: BD-rate and BD-PSNR between two rate-distortion curves.

Math
----
Each curve is a set of points ``(R_i, D_i)``: ``R`` a rate (bits per pixel, kbit/s, bytes ... any positive unit,
the same for both curves) and ``D`` a *quality* score where higher is better (PSNR in dB, MS-SSIM in dB, ...;
pass ``-MSE`` or convert to dB for lower-is-better measures). Points are sorted by rate, and both rate and quality
must then be strictly increasing.

BD-rate interpolates the log-rate as a function of quality, ``r(D) = ln R(D)``, for the anchor (``r_A``) and the
test curve (``r_T``) and averages the difference over the overlapping quality interval
``[D_lo, D_hi] = [max(min D_A, min D_T), min(max D_A, max D_T)]``::

    dr = 1 / (D_hi - D_lo) * integral_{D_lo}^{D_hi} (r_T(D) - r_A(D)) dD
    BD-rate = (exp(dr) - 1) * 100   [%]

BD-PSNR does the same with axes swapped: quality as a function of log-rate, averaged over the overlapping log-rate
interval, giving a mean quality difference ``test - anchor`` (dB for PSNR).

Interpolation (``method``):

* ``"pchip"`` (default) -- piecewise cubic Hermite interpolation (monotone, shape preserving, Fritsch-Carlson
  slopes as in :class:`scipy.interpolate.PchipInterpolator`), integrated exactly piece by piece. This is current
  practice: the JCT-VC / JVET common-test-conditions spreadsheet (F. Bossen, "Common test conditions", JCTVC-L1100 /
  JVET CTC; piecewise cubic introduced in VCEG-AL22), and the ``'pchip'`` method of the ``bjontegaard`` package.
* ``"cubic"`` -- the classic G. Bjontegaard, "Calculation of average PSNR differences between RD-curves",
  VCEG-M33, Austin, April 2001: a least-squares third-order polynomial through the points (exact for 4 points),
  integrated analytically. It can overshoot badly between points; prefer ``"pchip"``.
* ``"akima"`` -- Akima interpolation (:class:`scipy.interpolate.Akima1DInterpolator`), integrated exactly.

The base of the logarithm does not matter: it cancels in ``exp(dr)``.

Sign convention
---------------
Results are *test relative to anchor*: BD-rate < 0 means the test curve needs fewer bits than the anchor for the
same quality (a saving); BD-PSNR > 0 means the test curve has higher quality at the same rate. A BD number is
meaningless without its anchor: always state which curve is the anchor when reporting one. Swapping anchor and test
negates the mean log-rate difference exactly, so ``(1 + r1/100) * (1 + r2/100) == 1`` for the two BD-rates.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy.interpolate import Akima1DInterpolator, PchipInterpolator

__all__ = ["bd_rate", "bd_psnr", "METHODS"]

#: Interpolation methods accepted by :func:`bd_rate` and :func:`bd_psnr`.
METHODS = ("pchip", "cubic", "akima")

MIN_POINTS = 4

ArrayLike = Sequence[float] | np.ndarray


def _prepare(rate: ArrayLike, dist: ArrayLike, label: str) -> tuple[np.ndarray, np.ndarray]:
    """Validate one curve and return ``(rate, dist)`` as float arrays sorted by rate."""
    r = np.asarray(rate, dtype=float)
    d = np.asarray(dist, dtype=float)
    if r.ndim != 1 or d.ndim != 1:
        raise ValueError(f"{label} curve: rate and distortion must be 1-D, got shapes {r.shape} and {d.shape}")
    if r.shape != d.shape:
        raise ValueError(f"{label} curve: {r.size} rate values but {d.size} distortion values")
    if r.size < MIN_POINTS:
        raise ValueError(f"{label} curve has {r.size} points; BD metrics need at least {MIN_POINTS}")
    for i in range(r.size):
        if not np.isfinite(r[i]) or r[i] <= 0:
            raise ValueError(f"{label} curve: rate must be finite and positive, but point {i} has rate={r[i]!r}")
        if not np.isfinite(d[i]):
            raise ValueError(f"{label} curve: distortion must be finite, but point {i} has distortion={d[i]!r}")
    order = np.argsort(r, kind="stable")
    r, d = r[order], d[order]
    for k in range(1, r.size):
        i, j = int(order[k - 1]), int(order[k])
        if r[k] <= r[k - 1]:
            raise ValueError(
                f"{label} curve: rates must be distinct, but points {i} and {j} both have rate={r[k]!r}"
            )
        if d[k] <= d[k - 1]:
            raise ValueError(
                f"{label} curve is not monotone: after sorting by rate, distortion must be strictly increasing, "
                f"but point {j} (rate={r[k]!r}, distortion={d[k]!r}) does not exceed point {i} "
                f"(rate={r[k - 1]!r}, distortion={d[k - 1]!r})"
            )
    return r, d


def _integral(x: np.ndarray, y: np.ndarray, lo: float, hi: float, method: str) -> float:
    """Integral over ``[lo, hi]`` of the interpolant of ``y(x)`` (``x`` strictly increasing)."""
    if method == "pchip":
        return float(PchipInterpolator(x, y).integrate(lo, hi))
    if method == "akima":
        return float(Akima1DInterpolator(x, y).integrate(lo, hi))
    # "cubic": VCEG-M33 least-squares cubic. Centre and scale x for conditioning; exact change of variables.
    c, s = float(np.mean(x)), float(np.ptp(x))
    p = np.polyint(np.polyfit((x - c) / s, y, 3))
    return float((np.polyval(p, (hi - c) / s) - np.polyval(p, (lo - c) / s)) * s)


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(map(repr, METHODS))}")


def _check_overlap(a: np.ndarray, t: np.ndarray, axis: str) -> None:
    """Raise unless the sorted value ranges ``a`` and ``t`` overlap in an interval of positive length."""
    if not max(a[0], t[0]) < min(a[-1], t[-1]):
        raise ValueError(
            f"the {axis} ranges of the curves do not overlap: anchor {axis} in [{a[0]!r}, {a[-1]!r}], "
            f"test {axis} in [{t[0]!r}, {t[-1]!r}]"
        )


def _mean_difference(xa, ya, xt, yt, method: str) -> float:
    """Mean of ``y_test(x) - y_anchor(x)`` over the overlap of the two (sorted) ``x`` ranges."""
    lo, hi = max(xa[0], xt[0]), min(xa[-1], xt[-1])
    return (_integral(xt, yt, lo, hi, method) - _integral(xa, ya, lo, hi, method)) / (hi - lo)


def bd_rate(
    rate_anchor: ArrayLike,
    dist_anchor: ArrayLike,
    rate_test: ArrayLike,
    dist_test: ArrayLike,
    *,
    method: str = "pchip",
) -> float:
    """Bjontegaard-delta rate of the test curve relative to the anchor, in percent.

    ``(exp(mean over the common quality range of ln R_test(D) - ln R_anchor(D)) - 1) * 100``; negative means the test
    curve saves bits. ``dist_*`` is a higher-is-better quality (e.g. PSNR in dB). Points may come in any order (they
    are sorted by rate) as lists or arrays; each curve needs at least 4 points, finite positive rates, and rate and
    quality both strictly increasing. ``method`` is ``"pchip"`` (default, JVET CTC), ``"cubic"`` (VCEG-M33) or
    ``"akima"``. See the module docstring for the math and references. Always report which curve is the anchor.

    Raises ValueError naming the curve and point at fault, or stating both quality ranges when they do not overlap.
    """
    _check_method(method)
    ra, da = _prepare(rate_anchor, dist_anchor, "anchor")
    rt, dt = _prepare(rate_test, dist_test, "test")
    _check_overlap(da, dt, "distortion")
    dr = _mean_difference(da, np.log(ra), dt, np.log(rt), method)
    return float(np.expm1(dr) * 100.0)


def bd_psnr(rate_anchor: ArrayLike, dist_anchor: ArrayLike, rate_test: ArrayLike, dist_test: ArrayLike, *,
            method: str = "pchip") -> float:
    """Bjontegaard-delta quality (BD-PSNR, in the unit of ``dist_*``, dB for PSNR) of the test curve vs the anchor.

    Mean over the common log-rate range of ``D_test(ln R) - D_anchor(ln R)``; positive means the test curve has
    higher quality at the same rate. Same inputs, validation and ``method`` as :func:`bd_rate`; when the rate ranges
    do not overlap the error states both rate ranges.
    """
    _check_method(method)
    ra, da = _prepare(rate_anchor, dist_anchor, "anchor")
    rt, dt = _prepare(rate_test, dist_test, "test")
    _check_overlap(ra, rt, "rate")
    return float(_mean_difference(np.log(ra), da, np.log(rt), dt, method))
