"""Content-aware activation quantizers and weights stored once at the highest precision.

Rounding goes through :class:`bitalloc.quant.RoundClamp`, so the gradient estimators ("ste", "dgm", "leaky_clip")
are exactly those of the static backend; :func:`round_with` is the small public door to it.

Content-aware activation quantizer (DynaQuant, Bao et al., arXiv 2511.07903, "learnable per-channel scale and
zero-point that follow the statistics of the features"; our reading): for a layer input ``x`` (N, C, H, W) with
per-image, per-channel mean mu and standard deviation sigma over the spatial dimensions,

    o = mu + t * sigma,      s = exp(a) * sigma / Q + eps,      x_hat = o + s * clamp(round((x - o) / s), -Q, Q)

with learnable per-channel ``a`` and ``t`` (0), Q = 2^(b-1)-1. ``a`` starts at log 12: the grid covers +-12 sigma,
because LIC features are heavy-tailed (the sparse latents y_hat, GDN outputs): on the q4 checkpoint, 8-bit
activations on a +-4 sigma grid cost 1.55 dB on Kodak, +-8 sigma 0.12 dB, +-16 sigma 0.09 dB, and a min-max
range from 128x128 training crops 1.2 dB (full images reach further into the tails than crops).
Scale and offset are therefore learnable affine functions of the input's statistics, recomputed for every
image -- the decoder recomputes them from what it has, so nothing is transmitted. It also quantizes the
latents fed to g_s (y_hat) and h_s (z_hat) and |y| fed to h_a, since those are the inputs of quantized layers.

Dynamic weights (:class:`NestedWeight`): one per-output-channel scale s8 for the highest candidate B (8 bits),
min-max calibrated, then learned (log-parametrised);
the stored weights are the B-bit integers q_B = clamp(round(w / s8), -Q_B, Q_B). A lower precision b is
*derived* from them by a rounding right shift, ``q_b = clamp(round(q_B / 2^(B-b)), -Q_b, Q_b)`` with scale
``s8 * 2^(B-b)``, so a single integer tensor serves every candidate (no per-precision copy of the weights).
A layer that masks its weight (CompressAI's ``MaskedConv2d``: :func:`bitalloc.quant.weight_mask`) is masked
inside, as :class:`bitalloc.fake_quant.WeightQuantizer` does: calibration, the forward pass at every precision
and the stored integers all see ``w * mask``, so masked positions are exactly zero however ``w`` is trained.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from bitalloc.quant import (RoundClamp, calibrate_range, check_bits, quant_axis, quantized_tensor_name,
                            weight_mask)

__all__ = ["ContentAwareActQuantizer", "NestedWeight", "round_with"]


def round_with(u: torch.Tensor, qmax: int, estimator: str = "dgm", beta: float = 2.0,
               alpha: float = 0.01) -> torch.Tensor:
    """``clamp(round(u), -qmax, qmax)`` with the backward of ``estimator`` (see :mod:`bitalloc.quant`)."""
    return RoundClamp.apply(u, int(qmax), estimator, float(alpha), float(beta))


class ContentAwareActQuantizer(nn.Module):
    """Per-image, per-channel content-aware fake quantizer of a layer input (module docstring)."""

    def __init__(self, channels: int, bits: int = 8, *, estimator: str = "dgm", beta: float = 2.0,
                 init_range: float = 12.0):
        super().__init__()
        self.bits = check_bits(bits)
        self.estimator, self.beta = estimator, float(beta)
        self.log_range = nn.Parameter(torch.full((channels,), math.log(init_range)))
        self.offset = nn.Parameter(torch.zeros(channels))

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mu = x.mean(dim=(2, 3), keepdim=True)
        sigma = x.std(dim=(2, 3), keepdim=True, unbiased=False) if x.shape[2] * x.shape[3] > 1 \
            else x.abs().mean(dim=(2, 3), keepdim=True)
        sigma = sigma.detach().clamp_min(1e-4)  # statistics steer the grid; gradients go to a and t
        o = mu.detach() + self.offset.view(1, -1, 1, 1) * sigma
        s = self.log_range.exp().view(1, -1, 1, 1) * sigma / self.qmax + 1e-8
        return o + s * round_with((x - o) / s, self.qmax, self.estimator, self.beta)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, estimator={self.estimator}"


class NestedWeight(nn.Module):
    """Float weight + learnable per-channel B-bit scale; ``forward(bits)`` gives the fake-quantized weight at
    any candidate ``bits <= B``, derived from the B-bit integers (module docstring)."""

    def __init__(self, module: nn.Module, max_bits: int = 8, *, estimator: str = "dgm", beta: float = 2.0,
                 calibration: str = "minmax"):
        super().__init__()
        self.max_bits = check_bits(max_bits)
        self.axis = quant_axis(module)
        self.estimator, self.beta = estimator, float(beta)
        w = getattr(module, quantized_tensor_name(module)).detach()
        mask = weight_mask(module)  # a MaskedConv2d's causal mask: kept here (not saved: the layer holds it)
        self.register_buffer("mask", None if mask is None else mask.detach().to(w.dtype).clone(), persistent=False)
        # learnable in the log domain: an optimiser step changes the scale by a relative amount (a plain
        # per-channel scale of ~1e-3 would flip sign under Adam's first steps at lr 1e-3)
        s0 = calibrate_range(self.masked(w), self.max_bits, self.axis, calibration) / self.qmax_of(max_bits)
        self.log_scale = nn.Parameter(s0.log())
        self.register_buffer("frozen", None, persistent=False)  # int8 codes cached at inference

    def masked(self, w: torch.Tensor) -> torch.Tensor:
        """``w * mask`` (``w`` for a layer without a mask)."""
        return w if self.mask is None else w * self.mask

    def scale(self) -> torch.Tensor:
        """The per-channel scale s8 of the stored integers."""
        return self.log_scale.exp()

    @staticmethod
    def qmax_of(bits: int) -> int:
        return 2 ** (bits - 1) - 1

    def _shape(self, w: torch.Tensor) -> list[int]:
        shape = [1] * w.dim()
        shape[self.axis] = -1
        return shape

    def forward(self, w: torch.Tensor, bits: int) -> torch.Tensor:
        if bits > self.max_bits:
            raise ValueError(f"{bits} bits is above the stored precision of {self.max_bits} bits")
        s = self.scale().reshape(self._shape(w))
        if self.frozen is not None and not torch.is_grad_enabled():
            q = self.frozen.to(w.dtype)
        else:
            q = round_with(self.masked(w) / s, self.qmax_of(self.max_bits), self.estimator, self.beta)
        shift = 2 ** (self.max_bits - bits)
        if shift > 1:
            q = round_with(q / shift, self.qmax_of(bits), self.estimator, self.beta)
        return q * (s * shift)

    @torch.no_grad()
    def integers(self, w: torch.Tensor, bits: int | None = None) -> torch.Tensor:
        """Integer codes at ``bits`` (default: the stored B-bit ones) as int32."""
        s = self.scale().reshape(self._shape(w))
        q = torch.clamp(torch.round(self.masked(w) / s), -self.qmax_of(self.max_bits), self.qmax_of(self.max_bits))
        if bits is not None and bits < self.max_bits:
            q = torch.clamp(torch.round(q / 2 ** (self.max_bits - bits)), -self.qmax_of(bits), self.qmax_of(bits))
        return q.to(torch.int32)

    def freeze(self, w: torch.Tensor) -> None:
        """Cache the B-bit integers (inference reads them instead of re-rounding the float weights)."""
        self.frozen = self.integers(w).to(torch.int16 if self.max_bits > 8 else torch.int8)

    def unfreeze(self) -> None:
        self.frozen = None
