"""Activation range observers: what a calibration pass records of a layer's input, and the range it picks.

An observer sees every calibration batch of one tensor (:meth:`Observer.update`) and then gives the clipping
range ``(lo, hi)`` of a per-tensor asymmetric quantizer (:meth:`Observer.range`); the range always contains 0,
so zero is exactly representable (zero padding, ReLU outputs). Selectable by name (:data:`OBSERVERS`):

* ``"minmax"``: the smallest and largest value seen over the whole calibration set.
* ``"moving_average"``: the exponential moving average of each batch's min and max (``momentum`` 0.01 as
  PyTorch's ``MovingAverageMinMaxObserver``; the first batch sets the start), less sensitive to one outlier
  batch than min-max.
* ``"percentile"``: the ``(100 - percentile)``-th and ``percentile``-th percentiles (default 99.99) of the values
  seen, clipping the rare extremes.
* ``"mse"``: ``(t * min, t * max)`` for t on a grid in [0.3, 1] minimising the squared quantization error of the
  values seen at the quantizer's bit-width.

Percentile and MSE need the values, not only running extremes: each batch contributes at most
``samples_per_batch`` values (an evenly strided subset of the flattened batch, so no random state), and the pool
is halved (every second value) whenever it exceeds ``max_samples``; min and max stay exact. Every observer is a
pure function of the batches it saw and their order; evaluation never calls one (:mod:`bitalloc.act_quant`).
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["OBSERVERS", "MSEObserver", "MinMaxObserver", "MovingAverageObserver", "Observer",
           "PercentileObserver", "make_observer"]


class Observer:
    """Base observer: exact running min and max of every value seen."""

    name = "minmax"

    def __init__(self) -> None:
        self.lo: float | None = None
        self.hi: float | None = None
        self.batches = 0

    def update(self, x: torch.Tensor) -> None:
        """Record one batch (any shape; NaN or infinite values are an error: they would poison the range)."""
        x = x.detach()
        if not bool(torch.isfinite(x).all()):
            raise ValueError(f"{self.name} observer saw a non-finite activation value (NaN or inf) in batch "
                             f"{self.batches + 1}; calibrate on finite inputs")
        lo, hi = float(x.min()), float(x.max())
        self.lo = lo if self.lo is None else min(self.lo, lo)
        self.hi = hi if self.hi is None else max(self.hi, hi)
        self.batches += 1
        self._update(x, lo, hi)

    def _update(self, x: torch.Tensor, lo: float, hi: float) -> None:
        """Observer-specific bookkeeping of a batch (its own min ``lo`` and max ``hi``)."""

    def _pick(self, bits: int) -> tuple[float, float]:
        return self.lo, self.hi

    def range(self, bits: int) -> tuple[float, float]:
        """The clipping range ``(lo, hi)`` with ``lo <= 0 <= hi`` for a ``bits``-bit quantizer."""
        if self.batches == 0:
            raise ValueError(f"{self.name} observer saw no data; calibrate on at least one batch")
        lo, hi = self._pick(bits)
        return min(float(lo), 0.0), max(float(hi), 0.0)


class MinMaxObserver(Observer):
    """Min and max over the whole calibration set."""


class MovingAverageObserver(Observer):
    """Exponential moving average of the per-batch min and max."""

    name = "moving_average"

    def __init__(self, momentum: float = 0.01) -> None:
        super().__init__()
        if not 0.0 < momentum <= 1.0:
            raise ValueError(f"moving_average observer: momentum must be in (0, 1], got {momentum!r}")
        self.momentum = float(momentum)
        self.avg_lo = self.avg_hi = 0.0

    def _update(self, x: torch.Tensor, lo: float, hi: float) -> None:
        if self.batches == 1:
            self.avg_lo, self.avg_hi = lo, hi
        else:
            m = self.momentum
            self.avg_lo, self.avg_hi = self.avg_lo + m * (lo - self.avg_lo), self.avg_hi + m * (hi - self.avg_hi)

    def _pick(self, bits: int) -> tuple[float, float]:
        return self.avg_lo, self.avg_hi


class _SampleObserver(Observer):
    """Keeps a deterministic subsample of the values seen (module docstring)."""

    def __init__(self, samples_per_batch: int = 65536, max_samples: int = 1 << 20) -> None:
        super().__init__()
        if samples_per_batch < 1 or max_samples < samples_per_batch:
            raise ValueError(f"{self.name} observer: need 1 <= samples_per_batch <= max_samples, got "
                             f"{samples_per_batch} and {max_samples}")
        self.samples_per_batch, self.max_samples = int(samples_per_batch), int(max_samples)
        self.pool: list[torch.Tensor] = []
        self.pooled = 0

    def _update(self, x: torch.Tensor, lo: float, hi: float) -> None:
        flat = x.reshape(-1).float().cpu()
        stride = max(1, -(-flat.numel() // self.samples_per_batch))
        part = flat[::stride].clone()
        self.pool.append(part)
        self.pooled += part.numel()
        while self.pooled > self.max_samples:
            self.pool = [p[::2] for p in self.pool]
            self.pooled = sum(p.numel() for p in self.pool)

    def values(self) -> torch.Tensor:
        return torch.cat(self.pool)


class PercentileObserver(_SampleObserver):
    """The ``(100 - percentile)``-th and ``percentile``-th percentiles of the values seen."""

    name = "percentile"

    def __init__(self, percentile: float = 99.99, **kw: Any) -> None:
        super().__init__(**kw)
        if not 50.0 < percentile <= 100.0:
            raise ValueError(f"percentile observer: percentile must be in (50, 100], got {percentile!r}")
        self.percentile = float(percentile)

    def _pick(self, bits: int) -> tuple[float, float]:
        v = self.values()
        if v.numel() > 16_000_000:  # torch.quantile's input limit; the pool never gets there by default
            v = v[:: -(-v.numel() // 16_000_000)]
        q = torch.tensor([1.0 - self.percentile / 100.0, self.percentile / 100.0])
        lo, hi = torch.quantile(v, q).tolist()
        return lo, hi


class MSEObserver(_SampleObserver):
    """``(t * min, t * max)`` with t in [0.3, 1] minimising the squared quantization error of the values seen."""

    name = "mse"

    def _pick(self, bits: int) -> tuple[float, float]:
        v = self.values()
        lo0, hi0 = min(self.lo, 0.0), max(self.hi, 0.0)
        levels = 2 ** bits - 1
        best, best_err = (lo0, hi0), float("inf")
        for t in torch.linspace(1.0, 0.3, 36).tolist():  # from 1 down: ties keep the wider range
            lo, hi = lo0 * t, hi0 * t
            s = max((hi - lo) / levels, 1e-12)
            z = round(-lo / s)
            err = float((((torch.clamp(torch.round(v / s) + z, 0, levels) - z) * s - v) ** 2).sum())
            if err < best_err:
                best, best_err = (lo, hi), err
        return best


OBSERVERS: dict[str, type[Observer]] = {"minmax": MinMaxObserver, "moving_average": MovingAverageObserver,
                                        "percentile": PercentileObserver, "mse": MSEObserver}


def make_observer(name: str, **options: Any) -> Observer:
    """A fresh observer by name (:data:`OBSERVERS`) with its options (e.g. ``percentile=99.9``)."""
    if name not in OBSERVERS:
        raise ValueError(f"unknown activation observer {name!r}; valid choices: {', '.join(OBSERVERS)}")
    try:
        return OBSERVERS[name](**options)
    except TypeError as exc:
        raise ValueError(f"activation observer {name!r} does not take these options {sorted(options)}: "
                         f"{exc}") from None
