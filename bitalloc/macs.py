"""Multiply-accumulate counts per layer, for the bit-operations resource (BOPs = MACs x weight x activation bits).

:func:`count_macs` runs one forward pass of a zero input of the given size with forward hooks on every
convolution, transposed convolution and linear layer, and counts per sample:

* convolution: output elements x (in_channels / groups) x kernel elements (one MAC per kernel tap per output);
* transposed convolution: *input* elements x (out_channels / groups) x kernel elements (every input element
  is scattered through one kernel per output channel of its group; output positions a stride skips or the
  padding crops still cost their MACs, as on hardware that computes the scatter);
* linear: output elements x in_features.

Biases are not counted (additions, not MACs). A layer that runs twice counts twice; a layer the forward pass
does not reach is absent. Activation quantizers that are not yet calibrated are passed through for the count
(the count does not depend on ranges).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn

from bitalloc.act_quant import activation_quantizers
from bitalloc.objective import model_device
from bitalloc.observers import MinMaxObserver

__all__ = ["count_macs", "layer_macs"]

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_TRANSPOSED = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def layer_macs(module: nn.Module, x: torch.Tensor, out: torch.Tensor) -> int:
    """MACs per sample of one call of ``module`` (conv, transposed conv or linear) with input ``x`` and output
    ``out`` (batch first); a TypeError names any other layer type."""
    n = max(1, int(x.shape[0]))
    if isinstance(module, _TRANSPOSED):
        k = math.prod(module.kernel_size)
        return int(x.numel() // n * (module.out_channels // module.groups) * k)
    if isinstance(module, _CONV):
        k = math.prod(module.kernel_size)
        return int(out.numel() // n * (module.in_channels // module.groups) * k)
    if isinstance(module, nn.Linear):
        return int(out.numel() // n * module.in_features)
    raise TypeError(f"layer_macs counts Conv, ConvTranspose and Linear layers, not {type(module).__name__}")


@torch.no_grad()
def count_macs(model: nn.Module, input_size: Sequence[int]) -> dict[str, int]:
    """{layer name: MACs for one input of ``input_size``} ((C, H, W), or (N, C, H, W): counted per sample).

    Every Conv/ConvTranspose/Linear layer the forward pass reaches, in the order they first run; the model runs
    in eval mode on zeros on its own device and is left in the mode it was in.
    """
    size = tuple(int(s) for s in input_size)
    if len(size) < 2 or min(size) < 1:
        raise ValueError(f"count_macs: input_size must be (C, H, W) or (N, C, H, W) of positive sizes, got "
                         f"{tuple(input_size)!r}")
    shape = size if len(size) >= 4 else (1, *size)
    macs: dict[str, int] = {}
    handles = []
    for name, m in model.named_modules():
        if isinstance(m, _CONV + _TRANSPOSED + (nn.Linear,)):
            def hook(mod, args, out, name=name):
                macs[name] = macs.get(name, 0) + layer_macs(mod, args[0], out)
            handles.append(m.register_forward_hook(hook))
    passing = [q for q in activation_quantizers(model).values() if not q.frozen and q.observer is None]
    for q in passing:
        q.observe(MinMaxObserver())
    was_training = model.training
    try:
        model.eval()(torch.zeros(shape, device=model_device(model)))
    finally:
        for h in handles:
            h.remove()
        for q in passing:
            q.observer = None
        model.train(was_training)
    return macs
