"""Fake quantizers, gradient estimators, and applying a bit plan to a model.

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

A plan is applied with ``torch.nn.utils.parametrize``: the layer's ``weight`` (GDN: ``gamma``) becomes
``quantizer(original)``, which works for every layer type (ConvTranspose2d included) without re-implementing
their forward passes.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Collection, Mapping

import torch
import torch.nn as nn
from torch.nn.utils import parametrize

from bitalloc.graph import channel_axis, is_gdn, quantizable_layers
from bitalloc.plan import BitPlan

__all__ = [
    "CALIBRATIONS", "ESTIMATORS", "ActQuantizer", "WeightQuantizer", "apply_plan", "check_bits", "dgm_grad",
    "fake_quantize", "layer_size_bits", "plan_of", "quantized_tensor_name", "remove_plan",
]

ESTIMATORS = ("ste", "leaky_clip", "dgm")
CALIBRATIONS = ("minmax", "percentile", "mse")
MIN_BITS, MAX_BITS = 2, 16


def check_bits(bits: Any, layer: str | None = None) -> int:
    """Validate a weight bit-width: an int in 2..16 (1 is named separately: it is a valid plan width elsewhere
    but this symmetric grid cannot represent it)."""
    where = f"layer '{layer}'" if layer else "quantizer"
    if isinstance(bits, bool) or not hasattr(bits, "__index__"):
        raise ValueError(f"bits of {where} must be an int, got {bits!r}")
    b = int(bits)
    if b == 1:
        raise ValueError(f"bits of {where} is 1; the symmetric per-channel quantizer needs 2..16 bits "
                         "(1 bit would leave only the level 0)")
    if not 1 <= b <= MAX_BITS:
        raise ValueError(f"bits of {where} is {b}; bit-widths must be in 1..16 ({MIN_BITS}..{MAX_BITS} for "
                         "weight quantizers)")
    return b


def _check_choice(value: str, choices: tuple[str, ...], what: str) -> str:
    if value not in choices:
        raise ValueError(f"unknown {what} {value!r}; valid choices: {', '.join(choices)}")
    return value


# gradient estimators ------------------------------------------------------------------------------------------
def dgm_grad(u: torch.Tensor, beta: float) -> torch.Tensor:
    """g'(u) of DynaQuant's soft rounding (see module docstring)."""
    t = torch.tanh(beta * (u - torch.floor(u) - 0.5))
    return (beta / (2.0 * math.tanh(beta / 2.0))) * (1.0 - t * t)


class _Round(torch.autograd.Function):
    """q = clamp(round(u), -Q, Q) with a selectable backward."""

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
    q = _Round.apply(w / s, 2 ** (bits - 1) - 1, estimator, alpha, beta)
    return q * s


def _channels_first(w: torch.Tensor, axis: int) -> torch.Tensor:
    return w.detach().transpose(0, axis).reshape(w.shape[axis], -1)


def calibrate_range(w: torch.Tensor, bits: int, axis: int = 0, method: str = "minmax",
                    percentile: float = 99.9) -> torch.Tensor:
    """Clipping range r (C,) per output channel (see module docstring); never zero."""
    _check_choice(method, CALIBRATIONS, "calibration")
    a = _channels_first(w, axis).abs().float()
    amax = a.amax(dim=1)
    if method == "minmax":
        r = amax
    elif method == "percentile":
        r = torch.quantile(a, percentile / 100.0, dim=1) if a.shape[1] > 1 else amax
    else:
        qmax = 2 ** (bits - 1) - 1
        ts = torch.linspace(0.3, 1.0, 36, dtype=a.dtype)
        errs = []
        for t in ts:  # 36 vectorised passes over the tensor, once per calibration
            s = (amax * t / qmax).clamp_min(1e-12)[:, None]
            errs.append(((torch.clamp(torch.round(a / s), 0, qmax) * s - a) ** 2).sum(dim=1))
        r = amax * ts[torch.stack(errs).argmin(dim=0)]
    tiny = torch.finfo(torch.float32).tiny
    return torch.where(r > 0, r, torch.where(amax > 0, amax, torch.full_like(amax, 1.0))).clamp_min(tiny)


class WeightQuantizer(nn.Module):
    """Per-channel symmetric fake quantizer of one weight tensor (a parametrization of ``weight``)."""

    def __init__(self, weight: torch.Tensor, bits: int, axis: int = 0, *, estimator: str = "ste",
                 calibration: str = "minmax", learn_scale: bool = False, alpha: float = 0.01, beta: float = 2.0,
                 layer: str | None = None):
        super().__init__()
        self.bits = check_bits(bits, layer)
        self.axis = int(axis)
        self.estimator = _check_choice(estimator, ESTIMATORS, "gradient estimator")
        self.calibration = calibration
        self.alpha, self.beta = float(alpha), float(beta)
        r = calibrate_range(weight, self.bits, self.axis, calibration)
        self.scale = nn.Parameter((r / self.qmax).to(torch.float32), requires_grad=learn_scale)
        self.grad_scale = 1.0 / math.sqrt(max(1, weight.numel() // weight.shape[self.axis]) * self.qmax)

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
        return fake_quantize(w, s, self.bits, self.axis, estimator=self.estimator, alpha=self.alpha,
                             beta=self.beta)

    @torch.no_grad()
    def integers(self, w: torch.Tensor) -> torch.Tensor:
        """The integer codes q in [-Q, Q] (int32), as the forward pass uses them."""
        shape = [1] * w.dim()
        shape[self.axis] = -1
        s = self.effective_scale()
        return torch.clamp(torch.round(w / s.reshape(shape)), -self.qmax, self.qmax).to(torch.int32)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, axis={self.axis}, estimator={self.estimator}, calibration={self.calibration}"


class ActQuantizer(nn.Module):
    """Per-tensor asymmetric fake quantizer of a layer's input, range from the first batch it sees (min-max),
    straight-through gradient; optional (``apply_plan(..., act_bits=8)``)."""

    def __init__(self, bits: int = 8):
        super().__init__()
        self.bits = check_bits(bits)
        self.register_buffer("lo", torch.tensor(0.0))
        self.register_buffer("hi", torch.tensor(0.0))
        self.register_buffer("calibrated", torch.tensor(False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not bool(self.calibrated):
            with torch.no_grad():
                self.lo.copy_(x.min().clamp_max(0))
                self.hi.copy_(x.max().clamp_min(0))
                self.calibrated.fill_(True)
        levels = 2 ** self.bits - 1
        s = ((self.hi - self.lo) / levels).clamp_min(1e-12)
        z = torch.round(-self.lo / s)
        u = x / s + z
        q = u + (torch.clamp(torch.round(u), 0, levels) - u).detach()
        return (q - z) * s


def _quantize_input(module: nn.Module, args: tuple) -> tuple:
    return (module.input_quantizer(args[0]),) + tuple(args[1:])


# plans --------------------------------------------------------------------------------------------------------
def quantized_tensor_name(module: nn.Module) -> str:
    """``"gamma"`` for GDN, else ``"weight"``."""
    return "gamma" if is_gdn(module) else "weight"


def layer_size_bits(module: nn.Module, bits: int) -> int:
    """Storage of a layer at ``bits``: n_weights * bits + n_channels * 32 (one float32 scale per channel).

    The one size convention shared by cost tables, allocators and :mod:`bitalloc.export`; biases, zero-points
    and entropy tables are not part of a plan.
    """
    w = _original(module)
    return int(w.numel()) * int(bits) + int(w.shape[_axis(module)]) * 32


def _axis(module: nn.Module) -> int:
    return 0 if is_gdn(module) else channel_axis(module)


def _original(module: nn.Module) -> torch.Tensor:
    name = quantized_tensor_name(module)
    if parametrize.is_parametrized(module, name):
        return getattr(module.parametrizations, name).original
    return getattr(module, name)


def _quantizer(module: nn.Module) -> WeightQuantizer | None:
    name = quantized_tensor_name(module)
    if parametrize.is_parametrized(module, name):
        for p in getattr(module.parametrizations, name):
            if isinstance(p, WeightQuantizer):
                return p
    return None


def remove_plan(model: nn.Module) -> nn.Module:
    """Turn every fake-quantized layer back into a float layer holding its *original* weights (in place)."""
    for m in quantizable_layers(model, gdn=True).values():
        name = quantized_tensor_name(m)
        if parametrize.is_parametrized(m, name):
            parametrize.remove_parametrizations(m, name, leave_parametrized=False)
        if hasattr(m, "input_quantizer"):
            del m.input_quantizer
            for k, h in list(m._forward_pre_hooks.items()):
                if h is _quantize_input:
                    del m._forward_pre_hooks[k]
    return model


def apply_plan(model: nn.Module, plan: BitPlan | Mapping[str, int], *, keep_float: bool | Collection[str] = (),
               estimator: str = "ste", calibration: str = "minmax", learn_scale: bool = False,
               alpha: float = 0.01, beta: float = 2.0, act_bits: int | None = None,
               inplace: bool = False) -> nn.Module:
    """Fake-quantize ``model`` by ``plan`` ({layer: bits}); returns a copy unless ``inplace``.

    Every Conv2d/ConvTranspose2d/Linear must be in the plan unless ``keep_float`` is True or names it; GDN layers
    are quantized (their gamma) only when the plan names them. A plan naming a layer the model lacks, a missing
    layer, or bits outside 2..16 raise ValueError naming the layer. An already quantized model is re-planned
    from its original weights.
    """
    bits = dict(plan.bits if isinstance(plan, BitPlan) else plan)
    _check_choice(estimator, ESTIMATORS, "gradient estimator")
    _check_choice(calibration, CALIBRATIONS, "calibration")
    out = model if inplace else copy.deepcopy(model)
    remove_plan(out)
    required = quantizable_layers(out)
    candidates = quantizable_layers(out, gdn=True)
    for name in bits:
        if name not in candidates:
            raise ValueError(f"plan names layer '{name}', which is not a quantizable layer of "
                             f"{type(model).__name__}; quantizable layers: {', '.join(candidates)}")
        check_bits(bits[name], name)
    if keep_float is not True:
        floats = set(keep_float or ())
        unknown = floats - set(candidates)
        if unknown:
            raise ValueError(f"keep_float names layer '{sorted(unknown)[0]}', which is not a quantizable layer")
        for name in required:
            if name not in bits and name not in floats:
                raise ValueError(f"quantizable layer '{name}' has no bits in the plan; add it to the plan or "
                                 "pass keep_float=True (or a list naming it) to keep it in float")
    for name, b in bits.items():
        m = candidates[name]
        tname = quantized_tensor_name(m)
        q = WeightQuantizer(getattr(m, tname), b, _axis(m), estimator=estimator, calibration=calibration,
                            learn_scale=learn_scale, alpha=alpha, beta=beta, layer=name)
        parametrize.register_parametrization(m, tname, q)
        if act_bits is not None and not is_gdn(m):
            m.input_quantizer = ActQuantizer(act_bits)
            m.register_forward_pre_hook(_quantize_input)
    return out


def plan_of(model: nn.Module, **meta: Any) -> BitPlan:
    """The bit plan a fake-quantized model carries (layers kept in float are absent)."""
    bits = {}
    for name, m in quantizable_layers(model, gdn=True).items():
        q = _quantizer(m)
        if q is not None:
            bits[name] = q.bits
    return BitPlan(bits, meta)


def set_estimator(model: nn.Module, estimator: str, *, alpha: float | None = None,
                  beta: float | None = None, learn_scale: bool | None = None) -> nn.Module:
    """Change every quantizer's gradient estimator (and LSQ switch) in place."""
    _check_choice(estimator, ESTIMATORS, "gradient estimator")
    for m in quantizable_layers(model, gdn=True).values():
        q = _quantizer(m)
        if q is None:
            continue
        q.estimator = estimator
        if alpha is not None:
            q.alpha = float(alpha)
        if beta is not None:
            q.beta = float(beta)
        if learn_scale is not None:
            q.scale.requires_grad_(learn_scale)
    return model
