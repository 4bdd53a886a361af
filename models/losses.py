"""The rate-distortion loss, as CompressAI trains its models: the one home of the formula in bitalloc.

    MSE models:      L = R + lambda * 255^2 * MSE(x_hat, x)
    MS-SSIM models:  L = R + lambda * (1 - MS-SSIM(x_hat, x))      (data range 1)

with R the estimated rate in bits per pixel, -sum log2(likelihoods) / (N H W), as in CompressAI's
``compressai.losses.RateDistortionLoss`` (its MS-SSIM models use their own, larger lambdas).

:class:`RateDistortionLoss` is also bitalloc's default objective ``loss(model, batch)``: sensitivity, plan
checks and QAT call it with the model when no ``loss=`` is given (see :func:`rd_loss_fn`).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn

__all__ = ["METRICS", "RateDistortionLoss", "image_of", "rd_loss_fn", "split_parameters"]

METRICS = ("mse", "ms-ssim")
#: pytorch_msssim's 5 scales with an 11-pixel window need images larger than (11 - 1) * 2^4 pixels.
_MS_SSIM_MIN_SIDE = 161


def image_of(batch: Any) -> torch.Tensor:
    """The image tensor of a batch: the batch itself, or the first element of an (input, target, ...) tuple."""
    if isinstance(batch, (tuple, list)) and batch:
        batch = batch[0]
    if not isinstance(batch, torch.Tensor) or batch.dim() != 4:
        what = f"a tensor of shape {tuple(batch.shape)}" if isinstance(batch, torch.Tensor) else type(batch).__name__
        raise ValueError(f"the rate-distortion loss needs (N,3,H,W) image batches, got {what}; for another task "
                         "pass loss=callable(model, batch)")
    return batch


class RateDistortionLoss(nn.Module):
    """The RD loss at ``lmbda`` with ``metric`` "mse" (default) or "ms-ssim" (module docstring).

    Two call forms: ``criterion(out, x)`` with the model's output dict (``likelihoods``, ``x_hat``), as
    CompressAI's trainers call it, and ``criterion(model, batch)``, bitalloc's ``loss(model, batch)``
    interface (the model is run on the batch's images). Returns a dict of tensors: ``loss``, ``bpp``,
    ``mse``, ``psnr`` (and ``ms_ssim`` for the MS-SSIM metric).
    """

    def __init__(self, lmbda: float, metric: str = "mse"):
        super().__init__()
        if not lmbda > 0:
            raise ValueError(f"lambda must be positive, got {lmbda}")
        if metric not in METRICS:
            raise ValueError(f"unknown distortion metric {metric!r}; valid choices: {', '.join(METRICS)}")
        self.lmbda, self.metric = float(lmbda), metric

    def forward(self, out: dict | nn.Module, x: Any) -> dict[str, torch.Tensor]:
        x = image_of(x)
        if isinstance(out, nn.Module):
            out = out(x)
        n, _, h, w = x.shape
        num_pixels = n * h * w
        bpp = sum(lk.log().sum() for lk in out["likelihoods"].values()) / (-math.log(2) * num_pixels)
        x_hat = out["x_hat"]
        mse = torch.mean((x_hat - x) ** 2)
        psnr = -10 * torch.log10(mse.detach().clamp_min(1e-10))
        if self.metric == "mse":
            return {"loss": bpp + self.lmbda * 255**2 * mse, "bpp": bpp, "mse": mse, "psnr": psnr}
        if min(h, w) < _MS_SSIM_MIN_SIDE:
            raise ValueError(f"MS-SSIM needs images of at least {_MS_SSIM_MIN_SIDE}x{_MS_SSIM_MIN_SIDE} pixels "
                             f"(5 scales, 11-pixel window), got {h}x{w}; use larger crops or metric='mse'")
        from pytorch_msssim import ms_ssim

        msssim = ms_ssim(x_hat, x, data_range=1.0)
        return {"loss": bpp + self.lmbda * (1 - msssim), "bpp": bpp, "ms_ssim": msssim, "mse": mse, "psnr": psnr}

    def extra_repr(self) -> str:
        return f"lmbda={self.lmbda}, metric={self.metric}"


def rd_loss_fn(lmbda: float, metric: str = "mse") -> RateDistortionLoss:
    """The LIC rate-distortion objective as a ``loss(model, batch)`` for ``loss=`` arguments.

    >>> loss = rd_loss_fn(0.0130)                       # CompressAI's MSE lambda of quality 4
    >>> loss.metric, rd_loss_fn(31.73, metric="ms-ssim").metric
    ('mse', 'ms-ssim')
    """
    return RateDistortionLoss(lmbda, metric)


def split_parameters(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(main, aux): the entropy bottleneck's ``quantiles`` are trained by the auxiliary loss only."""
    main, aux = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (aux if name.endswith(".quantiles") else main).append(p)
    return main, aux
