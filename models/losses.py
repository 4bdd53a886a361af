"""The rate-distortion loss L = R + lambda * 255^2 * MSE, as CompressAI trains its MSE models."""

from __future__ import annotations

import math

import torch
import torch.nn as nn

__all__ = ["RateDistortionLoss", "split_parameters"]


class RateDistortionLoss(nn.Module):
    """``forward(out, x)`` -> dict with ``loss``, ``bpp`` (estimated from likelihoods), ``mse``, ``psnr``."""

    def __init__(self, lmbda: float):
        super().__init__()
        if not lmbda > 0:
            raise ValueError(f"lambda must be positive, got {lmbda}")
        self.lmbda = float(lmbda)

    def forward(self, out: dict, x: torch.Tensor) -> dict[str, torch.Tensor]:
        n, _, h, w = x.shape
        num_pixels = n * h * w
        bpp = sum(lk.log().sum() for lk in out["likelihoods"].values()) / (-math.log(2) * num_pixels)
        mse = torch.mean((out["x_hat"] - x) ** 2)
        loss = bpp + self.lmbda * 255**2 * mse
        psnr = -10 * torch.log10(mse.detach().clamp_min(1e-10))
        return {"loss": loss, "bpp": bpp, "mse": mse, "psnr": psnr}


def split_parameters(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(main, aux): the entropy bottleneck's ``quantiles`` are trained by the auxiliary loss only."""
    main, aux = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (aux if name.endswith(".quantiles") else main).append(p)
    return main, aux
