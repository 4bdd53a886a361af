"""One training step: the one home of forward, loss, backward, clipping, optimiser step and the aux step.

QAT (:func:`bitalloc.qat.finetune`), model training (:func:`bitalloc.models.train.train`) and DynaQuant
(:func:`bitalloc.dynaquant.train.train_dynaquant`) all step through :func:`train_step`; they differ only in
the loss they pass (any ``loss(model, batch)`` of :mod:`bitalloc.objective`: a scalar tensor or a dict with
``"loss"`` and named parts) and in their optimisers and schedules.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from bitalloc.objective import Loss, loss_parts

__all__ = ["train_step"]


def train_step(model: nn.Module, batch: Any, loss: Loss, optimizer: torch.optim.Optimizer,
               aux_optimizer: torch.optim.Optimizer | None = None, clip_norm: float | None = 1.0, *,
               skip_nonfinite: bool = False) -> dict[str, float] | None:
    """One step of CompressAI-style training; returns the loss's parts as floats (plus ``aux_loss``).

    ``loss(model, batch)`` is minimised by ``optimizer`` after the gradient norm of the optimiser's parameters
    is clipped at ``clip_norm`` (None or 0: no clipping); then, with ``aux_optimizer``, ``model.aux_loss()``
    (CompressAI's entropy-bottleneck quantiles) takes its own step. With ``skip_nonfinite`` a non-finite loss
    skips the step (no backward, no update, gradients cleared) and returns None, so one bad batch cannot poison
    the weights; the caller counts the skips.
    """
    model.train()
    optimizer.zero_grad(set_to_none=True)
    out = loss_parts(loss(model, batch), loss)
    if skip_nonfinite and not torch.isfinite(out["loss"]):
        return None
    out["loss"].backward()
    if clip_norm:
        torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], clip_norm)
    optimizer.step()
    row = {k: float(v.detach()) if isinstance(v, torch.Tensor) else float(v) for k, v in out.items()}
    if aux_optimizer is not None:
        aux_optimizer.zero_grad(set_to_none=True)
        aux = model.aux_loss()
        aux.backward()
        aux_optimizer.step()
        row["aux_loss"] = float(aux.detach())
    return row
