"""Activation quantizers with calibrated, frozen ranges.

A layer's input is fake-quantized per tensor, asymmetric and unsigned, on a ``bits``-bit grid::

    q = clamp(round(x / scale) + zero_point, 0, 2^bits - 1),   x_hat = (q - zero_point) * scale

which is ONNX's QuantizeLinear / DequantizeLinear pair (round half to even, then the zero-point, then
saturation; for bits < 8 in a uint8 container the clamp is to ``[0, 2^bits - 1]``, not ``[0, 255]``).
``zero_point`` is an integer in that range, so zero is exact.

**Life cycle.** :func:`bitalloc.quant.apply_plan` attaches an :class:`ActQuantizer` (uncalibrated) to each layer
the plan gives an activation bit-width. :func:`calibrate_activations` runs the model over a calibration set with
an observer per quantizer (:mod:`bitalloc.observers`: ``minmax``, ``moving_average``, ``percentile``, ``mse``;
observers see the *float* inputs of each layer, the weights already quantized), then freezes each range.
A frozen quantizer never changes its range in a forward pass, so evaluation order cannot change a result.
An uncalibrated quantizer in a forward pass raises (naming the layer) instead of calibrating on whatever
passes first; :func:`bitalloc.evaluation.evaluate` checks every quantizer before the first image.
QAT may learn the range (``learn_range=True``, LSQ / LSQ+: the scale's gradient is scaled by
1 / sqrt(n * (2^bits - 1)), n the activations per sample; the zero-point learns through the clipped values and
stays an integer in the forward pass); the forward pass always uses the current integer zero-point and scale.

**Public API for export** (per tensor): ``bits``, ``qmin`` (0), ``qmax`` (2^bits - 1), ``frozen`` (bool),
``scale`` and ``zero_point`` (0-d float32 parameters), :meth:`ActQuantizer.qparams` (``{"scale": float,
"zero_point": int, "bits", "qmin", "qmax"}``, an error if not frozen) and :meth:`ActQuantizer.integers`;
:func:`activation_quantizers` ({layer: quantizer}) and :func:`activation_qparams` for a whole model.
"""

from __future__ import annotations

import math
import os
from typing import Any, Iterable

import torch
import torch.nn as nn

from bitalloc.bits import check_bits
from bitalloc.observers import Observer, make_observer

__all__ = ["ActQuantizer", "activation_qparams", "activation_quantizers", "calibrate_activations",
           "check_calibrated", "learn_activation_ranges"]

_TINY = torch.finfo(torch.float32).tiny


def _ste_round(u: torch.Tensor) -> torch.Tensor:
    """round(u) in the forward pass (exactly), identity gradient."""
    return torch.round(u).detach() + (u - u.detach())


class ActQuantizer(nn.Module):
    """Per-tensor asymmetric fake quantizer of one layer's input (module docstring)."""

    def __init__(self, bits: int = 8, *, layer: str | None = None, learn_range: bool = False):
        super().__init__()
        self.bits = check_bits(bits, layer)
        self.layer = layer
        self.scale = nn.Parameter(torch.tensor(1.0), requires_grad=learn_range)
        self.zero_point = nn.Parameter(torch.tensor(0.0), requires_grad=learn_range)
        self.register_buffer("frozen_flag", torch.tensor(False))
        self.observer: Observer | None = None

    qmin = 0

    @property
    def qmax(self) -> int:
        return 2 ** self.bits - 1

    @property
    def frozen(self) -> bool:
        """Whether the range is calibrated and fixed (the forward pass then never changes it)."""
        return bool(self.frozen_flag)

    def _where(self) -> str:
        return f"activation quantizer of layer '{self.layer}'" if self.layer else "activation quantizer"

    def observe(self, observer: Observer) -> None:
        """Start a calibration pass: forward passes record their inputs in ``observer`` and return them as is."""
        self.observer = observer

    def observed_range(self) -> tuple[float, float]:
        """The range ``(lo, hi)`` the current observer picks for this quantizer's bit-width."""
        if self.observer is None:
            raise RuntimeError(f"{self._where()} has no observer; calibrate_activations starts one")
        try:
            return self.observer.range(self.bits)
        except ValueError as exc:
            raise ValueError(f"{self._where()}: {exc} (did the calibration data pass through this layer?)") \
                from None

    def freeze(self) -> tuple[float, float]:
        """End the calibration pass: set the range from the observer and freeze it; returns ``(lo, hi)``."""
        lo, hi = self.observed_range()
        self.observer = None
        self.set_range(lo, hi)
        return lo, hi

    @torch.no_grad()
    def set_range(self, lo: float, hi: float) -> None:
        """Freeze the range ``[lo, hi]`` (widened to contain 0): scale = (hi - lo) / qmax, integer zero-point."""
        lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise ValueError(f"{self._where()}: range [{lo}, {hi}] is not finite")
        s = max((hi - lo) / self.qmax, float(_TINY))
        self.scale.fill_(s)
        self.zero_point.fill_(min(max(round(-lo / s), 0), self.qmax))
        self.frozen_flag.fill_(True)

    def effective(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, zero_point) as the forward pass uses them: |scale| clamped away from 0, the zero-point
        rounded and clamped to [qmin, qmax] (gradients pass straight through when the range is learned)."""
        s = self.scale.abs().clamp_min(_TINY) if self.scale.requires_grad else self.scale
        z = torch.clamp(_ste_round(self.zero_point), self.qmin, self.qmax)
        return s, z

    def qparams(self) -> dict[str, Any]:
        """``{"scale": float, "zero_point": int, "bits", "qmin", "qmax"}`` of the frozen range (for export)."""
        self._check_frozen()
        s, z = (t.detach() for t in self.effective())
        return {"scale": float(s), "zero_point": int(z), "bits": self.bits, "qmin": self.qmin, "qmax": self.qmax}

    def _check_frozen(self) -> None:
        if not self.frozen:
            raise RuntimeError(f"{self._where()} is not calibrated; run bitalloc.calibrate_activations(model, "
                               "data) first (a forward pass never sets an activation range)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.observer is not None:
            self.observer.update(x)
            return x
        self._check_frozen()
        s, z = self.effective()
        if s.requires_grad:
            g = 1.0 / math.sqrt(max(1, x[0].numel()) * self.qmax)
            sg = s * g
            s = s.detach() + (sg - sg.detach())  # LSQ's gradient scaling; exactly s in the forward pass
        q = torch.clamp(_ste_round(x / s) + z, self.qmin, self.qmax)
        return (q - z) * s

    @torch.no_grad()
    def integers(self, x: torch.Tensor) -> torch.Tensor:
        """The codes q in [qmin, qmax] (int32) the forward pass uses for input ``x``."""
        self._check_frozen()
        s, z = self.effective()
        return torch.clamp(torch.round(x / s) + z, self.qmin, self.qmax).to(torch.int32)

    def extra_repr(self) -> str:
        state = "frozen" if self.frozen else ("observing" if self.observer is not None else "uncalibrated")
        learn = ", learned range" if self.scale.requires_grad else ""
        return f"bits={self.bits}, {state}{learn}"


def activation_quantizers(model: nn.Module) -> dict[str, ActQuantizer]:
    """{layer name: its input :class:`ActQuantizer`} in module order."""
    return {name: m.input_quantizer for name, m in model.named_modules()
            if isinstance(getattr(m, "input_quantizer", None), ActQuantizer)}


def activation_qparams(model: nn.Module) -> dict[str, dict[str, Any]]:
    """{layer: :meth:`ActQuantizer.qparams`} of every activation quantizer (all must be frozen)."""
    check_calibrated(model)
    return {name: q.qparams() for name, q in activation_quantizers(model).items()}


def check_calibrated(model: nn.Module) -> None:
    """Raise RuntimeError naming every activation quantizer of ``model`` that is not calibrated."""
    missing = [n for n, q in activation_quantizers(model).items() if not q.frozen]
    if missing:
        shown = ", ".join(f"'{n}'" for n in missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8
                                                            else "")
        raise RuntimeError(f"activation quantizers of layers {shown} are not calibrated; run "
                           "bitalloc.calibrate_activations(model, data) first (evaluation never sets a range)")


def learn_activation_ranges(model: nn.Module, learn: bool = True) -> list[nn.Parameter]:
    """Make every (calibrated) activation range learnable or fixed; returns the range parameters."""
    check_calibrated(model)
    params = []
    for q in activation_quantizers(model).values():
        for p in (q.scale, q.zero_point):
            p.requires_grad_(learn)
            params.append(p)
    return params


def _batches(data: Any, batch_size: int, pad: int | None, limit: int | None) -> Iterable[Any]:
    """Calibration inputs: images (folder, path list or dict; padded as evaluation pads them), a tensor (rows in
    batches), or any iterable of batches (a tensor, or a tuple/list/dict whose first value is the input)."""
    from bitalloc.evaluation import pad_to_multiple

    if isinstance(data, (str, os.PathLike, dict)) or (isinstance(data, list) and data
                                                        and isinstance(data[0], (str, os.PathLike))):
        from bitalloc.data import resolve_images

        for x in resolve_images(data, limit=limit).values():
            x = x.unsqueeze(0)
            yield pad_to_multiple(x, pad)[0] if pad else x
        return
    if isinstance(data, torch.Tensor):
        rows = data.unsqueeze(0) if data.dim() == 3 else data
        rows = rows[:limit] if limit is not None else rows
        yield from rows.split(batch_size)
        return
    for i, batch in enumerate(data):
        if limit is not None and i >= limit:
            return
        if isinstance(batch, dict):
            batch = next(iter(batch.values()))
        elif isinstance(batch, (tuple, list)):
            batch = batch[0]
        yield batch.unsqueeze(0) if isinstance(batch, torch.Tensor) and batch.dim() == 3 else batch


@torch.no_grad()
def calibrate_activations(model: nn.Module, data: Any, observer: str = "minmax", *, batch_size: int = 8,
                          pad: int | None = 64, limit: int | None = None, **observer_options: Any) -> nn.Module:
    """Calibrate and freeze every activation quantizer of ``model`` (in place; returns it in eval mode).

    Runs the model in eval mode over ``data`` with a fresh ``observer`` (:data:`bitalloc.observers.OBSERVERS`,
    options such as ``percentile=99.9`` or ``momentum=0.1`` passed on) per quantizer, then freezes every range.
    ``data``: an image folder, a list of image paths or a dict ``{name: (3,H,W)}`` (one image per pass, padded
    to a multiple of ``pad`` as :func:`bitalloc.evaluate` pads it), a tensor ((N,C,H,W) rows in batches of
    ``batch_size``, or one (C,H,W) image), or an iterable of batches. ``limit`` caps images or batches.
    Already frozen quantizers are recalibrated. A model without activation quantizers is an error.
    """
    from bitalloc.objective import model_device, to_device

    quantizers = activation_quantizers(model)
    if not quantizers:
        raise ValueError(f"{type(model).__name__} has no activation quantizers to calibrate; give the plan "
                         "activation bits (BitPlan(..., act_bits=...) or apply_plan(..., act_bits=8))")
    for q in quantizers.values():
        q.observe(make_observer(observer, **observer_options))
    model.eval()
    device = model_device(model)
    seen = 0
    try:
        for batch in _batches(data, batch_size, pad, limit):
            model(to_device(batch, device))
            seen += 1
        if seen == 0:
            raise ValueError("calibrate_activations: the calibration data yielded no batch")
        ranges = {name: q.observed_range() for name, q in quantizers.items()}  # all or none are set
    finally:
        for q in quantizers.values():
            q.observer = None
    for name, q in quantizers.items():
        q.set_range(*ranges[name])
    return model
