"""Hessian traces of the loss w.r.t. each layer's weights, by Hutchinson's estimator.

tr H = E[v^T H v] with v Rademacher; a few samples, absolute value, as HAWQ does. v is drawn over all layers at
once (cross terms vanish in expectation). For the built-in rate-distortion loss the model runs in train mode:
the *training* objective, with CompressAI's additive-noise proxy (fixed noise), because rounding has no second
derivative. A custom loss is differentiated in eval mode, so batch-norm statistics are neither used from the
batch nor updated. A masked layer (:func:`bitalloc.quant.weight_mask`) counts only its unmasked weights.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn as nn

from bitalloc.models.losses import RateDistortionLoss
from bitalloc.objective import Loss, loss_parts
from bitalloc.quant import quantized_tensor_name, weight_mask

__all__ = ["hessian_traces"]


def hessian_traces(model: nn.Module, batches: Any, loss: Loss, layers: dict[str, nn.Module], *,
                   samples: int = 4, seed: int = 0, train: bool | None = None) -> np.ndarray:
    """|Hutchinson estimate| of tr(H_nn) per layer of ``layers``: the mean over ``samples`` Rademacher vectors
    and over ``batches`` (a tensor is one batch) of v_n^T (H v)_n (module docstring).

    ``train``: the mode the loss is differentiated in; default train mode for :class:`RateDistortionLoss`,
    eval mode otherwise. A layer the loss does not reach twice (unused, or linear in it) gets 0.
    """
    if isinstance(batches, torch.Tensor):
        batches = [batches]
    if train is None:
        train = isinstance(loss, RateDistortionLoss)
    params = [getattr(m, quantized_tensor_name(m)) for m in layers.values()]
    masks = [weight_mask(m) for m in layers.values()]
    was_training = model.training
    gen = torch.Generator().manual_seed(seed)
    acc = np.zeros(len(params))
    try:
        model.train(train)
        for batch in batches:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                value = loss_parts(loss(model, batch), loss)["loss"]
            grads = torch.autograd.grad(value, params, create_graph=True, allow_unused=True)
            used = [i for i, g in enumerate(grads) if g is not None and g.requires_grad]
            for _ in range(samples):
                vs = [torch.randint(0, 2, p.shape, generator=gen).to(p.dtype) * 2 - 1 for p in params]
                vs = [(v if mask is None else v * mask.to(v.dtype).cpu()).to(p.device)
                      for v, mask, p in zip(vs, masks, params)]
                hv = torch.autograd.grad([grads[i] for i in used], [params[i] for i in used],
                                         grad_outputs=[vs[i] for i in used], retain_graph=True, allow_unused=True)
                for i, h in zip(used, hv):
                    if h is not None:
                        acc[i] += float((vs[i] * h).sum())
    finally:
        model.train(was_training)
    return np.abs(acc / (samples * len(batches)))
