"""One conv layer of :class:`~bitalloc.dynaquant.DynaQuantModel`: a content-aware quantizer on its input and its
weight at the bit-width the selectors chose for each image (:class:`DynamicLayer`).

A layer that masks its weight (CompressAI's ``MaskedConv2d``, the causal context model of ``mbt2018`` and
``cheng2020-*``) is masked inside its :class:`~bitalloc.dynaquant.quantizers.NestedWeight` (the mask
:func:`bitalloc.quant.weight_mask` finds), so every forward pass computes with zeros at the masked positions, as
the static backend's :class:`~bitalloc.fake_quant.WeightQuantizer` does.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from bitalloc.macs import layer_macs

from .quantizers import ContentAwareActQuantizer, NestedWeight

__all__ = ["DynamicLayer", "FIXED_BITS"]

FIXED_BITS = 8


class DynamicLayer(nn.Module):
    """One conv layer of the dynamic model: content-aware input quantizer, weight at the selected bits.

    ``choice`` is set by the model before the layer runs: (N, K) one-hot rows (per image), or None for the
    fixed 8 bits. Each forward records ``macs`` (per image) and ``bits_used`` ((N,) weight bits).
    """

    def __init__(self, layer: nn.Module, name: str, candidate_bits: tuple[int, ...], *, dynamic: bool,
                 act_bits: int | None, estimator: str, beta: float, calibration: str = "minmax"):
        super().__init__()
        if not isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d)):
            raise TypeError(f"layer '{name}' is a {type(layer).__name__}; DynaQuant handles Conv2d and "
                            "ConvTranspose2d")
        self.layer, self.name, self.dynamic = layer, name, dynamic
        self.candidate_bits = tuple(candidate_bits)
        self.weight_q = NestedWeight(layer, max(max(candidate_bits), FIXED_BITS), estimator=estimator, beta=beta,
                                     calibration=calibration)
        self.act_bits = act_bits
        self.act = (ContentAwareActQuantizer(layer.in_channels, act_bits, estimator=estimator, beta=beta)
                    if act_bits is not None else None)
        self.choice: torch.Tensor | None = None
        self.macs = 0.0
        self.bits_used: torch.Tensor | None = None

    def _conv(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        m = self.layer
        if isinstance(m, nn.ConvTranspose2d):
            return F.conv_transpose2d(x, w, m.bias, m.stride, m.padding, m.output_padding, m.groups, m.dilation)
        return m._conv_forward(x, w, m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.act is not None:
            x = self.act(x)
        w = self.layer.weight
        n = x.shape[0]
        if not self.dynamic or self.choice is None:
            out = self._conv(x, self.weight_q(w, FIXED_BITS))
            self.bits_used = torch.full((n,), float(FIXED_BITS))
        else:
            c = self.choice
            bits = torch.tensor(self.candidate_bits, dtype=x.dtype)
            self.bits_used = (c.detach() * bits).sum(-1)
            # training: every candidate runs, so the relaxation's gradient reaches every logit; inference:
            # only the candidates some image chose
            ks = range(len(bits)) if self.training else [int(k) for k in torch.nonzero(c.sum(0)).flatten()]
            out = 0
            for k in ks:
                out = out + c[:, k].view(n, 1, 1, 1) * self._conv(x, self.weight_q(w, self.candidate_bits[k]))
        self.macs = float(layer_macs(self.layer, x, out))  # per image, as bitalloc.count_macs counts
        return out
