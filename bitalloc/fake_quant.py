"""Fake quantizers and gradient estimators: the primitives :mod:`bitalloc.quant` applies to a model by plan.

Weights are quantized per output channel, symmetric and signed, on the *restricted* grid::

    q = clamp(round(w / s), -Q, Q),   Q = 2^(b-1) - 1,   w_hat = s * q

so a b-bit channel has at most 2^b - 1 levels, zero is exact, and the grid is symmetric (the one code
2^(b-1) of the full two's-complement range is left unused: it would make the grid asymmetric, and for a weight
distribution that is symmetric about zero it buys nothing). b is 2..16; 1 bit would leave only {0} on this grid
and is rejected (a sign binarizer is a different quantizer). The scale s is one float32 per output channel:
axis 0 for Conv2d/Linear weights and GDN's gamma, axis 1 for ConvTranspose2d (its weight is in x out x kh x kw).

Calibration picks the clipping range r per channel (s = r / Q): ``"minmax"`` (r = max|w|), ``"percentile"``
(r = the 99.9th percentile of |w|), ``"mse"`` (r = t * max|w|, t on a grid in [0.3, 1] minimising the channel's
squared quantization error).

Gradient estimators (the backward pass of the rounding, with u = w / s), selectable by name:

* ``"ste"``: the straight-through estimator with clipping, dq/du = 1 on [-Q, Q], 0 beyond (the baseline).
* ``"leaky_clip"``: FMPQ's leaky clip (Hossain et al., arXiv 2506.01221): dq/du = 1 inside, ``alpha`` (0.01)
  beyond the clipping range, so clipped weights keep a gradient. The forward pass still clips hard, so the
  quantized weights stay on the b-bit grid (a leaky forward would create values beyond 2^b levels).
* ``"dgm"``: DynaQuant's distance-aware gradient modulator (Bao et al., arXiv 2511.07903): the backward
  follows the soft rounding g(u) = 1/2 tanh(beta (u - floor(u) - 1/2)) / tanh(beta/2) + 1/2 + floor(u), i.e.
  dq/du = g'(u) = beta / (2 tanh(beta/2)) * (1 - tanh^2(beta (u - floor(u) - 1/2))) inside the clipping range
  (largest, beta / (2 tanh(beta/2)), halfway between levels; smallest at a level; mean 1 over a step) and 0
  beyond. beta = 2 by default (our reading: moderate sharpness; beta -> 0 is the STE).

The scale is learnable when ``learn_scale`` (LSQ, Esser et al., arXiv 1902.08153): autograd through
w_hat = s * q(w / s) gives LSQ's dw_hat/ds = q - u inside, +-Q (leaky: +-Q - alpha u) outside, and the
scale's gradient is multiplied by LSQ's g = 1 / sqrt(n_c * Q) (n_c weights per channel).

A layer whose forward multiplies its weight by a mask (CompressAI's ``MaskedConv2d``, the causal context model)
gets the mask inside :class:`WeightQuantizer`: the forward pass quantizes ``w * mask``, so masked positions stay
exactly zero however the original weight is trained.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from bitalloc.bits import QUANT_MAX_BITS as MAX_BITS, QUANT_MIN_BITS as MIN_BITS, check_bits  # the one rule

__all__ = [
    "CALIBRATIONS", "ESTIMATORS", "MAX_BITS", "MIN_BITS", "RoundClamp", "WeightQuantizer", "calibrate_range",
    "check_bits", "check_choice", "dgm_grad", "fake_quantize",
]

ESTIMATORS = ("ste", "leaky_clip", "dgm")
CALIBRATIONS = ("minmax", "percentile", "mse")


def check_choice(value: str, choices: tuple[str, ...], what: str) -> str:
    """``value`` if it is one of ``choices``, else a ValueError naming ``what`` and the valid choices."""
    if value not in choices:
        raise ValueError(f"unknown {what} {value!r}; valid choices: {', '.join(choices)}")
    return value


# gradient estimators ------------------------------------------------------------------------------------------
def dgm_grad(u: torch.Tensor, beta: float) -> torch.Tensor:
    """g'(u) of DynaQuant's soft rounding (see module docstring)."""
    t = torch.tanh(beta * (u - torch.floor(u) - 0.5))
    return (beta / (2.0 * math.tanh(beta / 2.0))) * (1.0 - t * t)


class RoundClamp(torch.autograd.Function):
    """q = clamp(round(u), -Q, Q) with the backward of a named gradient estimator (module docstring).

    ``RoundClamp.apply(u, qmax, estimator, alpha, beta)``: ``estimator`` is one of :data:`ESTIMATORS`, ``alpha``
    the leaky clip's slope beyond the range, ``beta`` the DGM's sharpness. The one rounding of every bitalloc
    quantizer (static plans and :mod:`bitalloc.dynaquant`), so their estimators are the same.
    """

    @staticmethod
    def forward(ctx, u, qmax: int, estimator: str, alpha: float, beta: float):
        ctx.save_for_backward(u)
        ctx.qmax, ctx.estimator, ctx.alpha, ctx.beta = qmax, estimator, alpha, beta
        return torch.clamp(torch.round(u), -qmax, qmax)

    @staticmethod
    def backward(ctx, grad):
        (u,) = ctx.saved_tensors
        inside = (u >= -ctx.qmax) & (u <= ctx.qmax)
        if ctx.estimator == "dgm":
            slope = torch.where(inside, dgm_grad(u, ctx.beta), torch.zeros_like(u))
        elif ctx.estimator == "leaky_clip":
            slope = torch.where(inside, torch.ones_like(u), torch.full_like(u, ctx.alpha))
        else:
            slope = inside.to(u.dtype)
        return grad * slope, None, None, None, None


def _grad_scale(x: torch.Tensor, g: float) -> torch.Tensor:
    """Identity forward, gradient times ``g`` (LSQ's scale-gradient scaling)."""
    xg = x * g
    return x.detach() + (xg - xg.detach())  # exactly x in the forward pass (export relies on it)


def fake_quantize(w: torch.Tensor, scale: torch.Tensor, bits: int, axis: int = 0, *, estimator: str = "ste",
                  alpha: float = 0.01, beta: float = 2.0) -> torch.Tensor:
    """s * clamp(round(w / s), -Q, Q) with ``scale`` (C,) broadcast along ``axis``."""
    shape = [1] * w.dim()
    shape[axis] = -1
    s = scale.reshape(shape)
    q = RoundClamp.apply(w / s, 2 ** (bits - 1) - 1, estimator, alpha, beta)
    return q * s


def _channels_first(w: torch.Tensor, axis: int) -> torch.Tensor:
    return w.detach().transpose(0, axis).reshape(w.shape[axis], -1)


def calibrate_range(w: torch.Tensor, bits: int, axis: int = 0, method: str = "minmax",
                    percentile: float = 99.9) -> torch.Tensor:
    """Clipping range r (C,) per output channel (see module docstring); never zero."""
    check_choice(method, CALIBRATIONS, "calibration")
    a = _channels_first(w, axis).abs().float()
    amax = a.amax(dim=1)
    if method == "minmax":
        r = amax
    elif method == "percentile":
        r = torch.quantile(a, percentile / 100.0, dim=1) if a.shape[1] > 1 else amax
    else:
        qmax = 2 ** (bits - 1) - 1
        ts = torch.linspace(0.3, 1.0, 36, dtype=a.dtype, device=a.device)
        errs = []
        for t in ts:  # 36 vectorised passes over the tensor, once per calibration
            s = (amax * t / qmax).clamp_min(1e-12)[:, None]
            errs.append(((torch.clamp(torch.round(a / s), 0, qmax) * s - a) ** 2).sum(dim=1))
        r = amax * ts[torch.stack(errs).argmin(dim=0)]
    tiny = torch.finfo(torch.float32).tiny
    return torch.where(r > 0, r, torch.where(amax > 0, amax, torch.full_like(amax, 1.0))).clamp_min(tiny)


class WeightQuantizer(nn.Module):
    """Per-channel symmetric fake quantizer of one weight tensor (a parametrization of ``weight``).

    ``mask`` (optional, the weight's shape): the forward pass quantizes ``w * mask`` (module docstring); it is
    calibrated on the masked weight and kept as a non-persistent buffer (the layer's state dict holds it).
    """

    def __init__(self, weight: torch.Tensor, bits: int, axis: int = 0, *, estimator: str = "ste",
                 calibration: str = "minmax", learn_scale: bool = False, alpha: float = 0.01, beta: float = 2.0,
                 layer: str | None = None, mask: torch.Tensor | None = None):
        super().__init__()
        self.bits = check_bits(bits, layer)
        self.axis = int(axis)
        self.estimator = check_choice(estimator, ESTIMATORS, "gradient estimator")
        self.calibration = calibration
        self.alpha, self.beta = float(alpha), float(beta)
        if mask is not None and mask.shape != weight.shape:
            raise ValueError(f"the mask of layer '{layer}' has shape {tuple(mask.shape)}, its weight "
                             f"{tuple(weight.shape)}")
        self.register_buffer("mask", None if mask is None else mask.detach().to(weight.dtype).clone(),
                             persistent=False)
        r = calibrate_range(self.masked(weight), self.bits, self.axis, calibration)
        self.scale = nn.Parameter((r / self.qmax).to(torch.float32), requires_grad=learn_scale)
        self.grad_scale = 1.0 / math.sqrt(max(1, weight.numel() // weight.shape[self.axis]) * self.qmax)

    def masked(self, w: torch.Tensor) -> torch.Tensor:
        """``w * mask`` (``w`` when there is no mask)."""
        return w if self.mask is None else w * self.mask

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1

    def effective_scale(self) -> torch.Tensor:
        """The scale the forward pass uses: |s| (clamped away from 0) when learnable, else s."""
        return self.scale.abs().clamp_min(1e-12) if self.scale.requires_grad else self.scale

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        s = self.effective_scale()
        if s.requires_grad:
            s = _grad_scale(s, self.grad_scale)
        return fake_quantize(self.masked(w), s, self.bits, self.axis, estimator=self.estimator,
                             alpha=self.alpha, beta=self.beta)

    @torch.no_grad()
    def integers(self, w: torch.Tensor) -> torch.Tensor:
        """The integer codes q in [-Q, Q] (int32), as the forward pass uses them."""
        shape = [1] * w.dim()
        shape[self.axis] = -1
        s = self.effective_scale()
        return torch.clamp(torch.round(self.masked(w) / s.reshape(shape)), -self.qmax, self.qmax).to(torch.int32)

    def extra_repr(self) -> str:
        masked = ", masked" if self.mask is not None else ""
        return (f"bits={self.bits}, axis={self.axis}, estimator={self.estimator}, "
                f"calibration={self.calibration}{masked}")
