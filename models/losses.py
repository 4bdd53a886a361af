"""The rate-distortion loss, as CompressAI trains its models: the one home of the formula in bitalloc.

    MSE models:      L = R + lambda * 255^2 * MSE(x_hat, x)
    MS-SSIM models:  L = R + lambda * (1 - MS-SSIM(x_hat, x))      (data range 1)

with R the estimated rate in bits per pixel, -sum log2(likelihoods) / (N H W), as in CompressAI's
``compressai.losses.RateDistortionLoss`` (its MS-SSIM models use their own, larger lambdas).

**Which rate.** ``rate="likelihood"`` (the default, what training differentiates) takes the Gaussian
likelihoods of ``y`` at the scales the hyper-synthesis predicts. The entropy coder does not code with those
scales: it snaps each one up to the next of its fixed scale table (64 log-spaced levels, 0.11 to 256, CompressAI's
``GaussianConditional.build_indexes``). ``rate="coded"`` computes the likelihoods at the snapped scales
(:func:`coded_rate`), which is the size of the real bitstream up to the coder's overhead. Measured by
``studies/rate_breakdown.py --real --no-parts`` (both compact hyperpriors, qualities 1-6, 24 Kodak images; FP32
and the ILP's 6-bit plans, plain and bias-corrected): within 0.2 % of the bitstreams, where the plain likelihoods
are off by up to 2.6 %, in either direction. The difference matters where a quantized hyper-synthesis predicts
its scales a little too low: the likelihoods charge for it, the coder's snapping up partly absorbs it (Scale q3,
that plan: likelihoods 0.374 bpp, coded 0.370, bitstream 0.370). Where the scales are far too low (the
uncorrected 4-bit plans) the coded rate overshoots the bitstreams by up to 24 %: values far outside the coder's
tables are escape-coded for fewer bits than the bounded Gaussian charges. For measurements only: the snapped
scales carry no gradient.

:class:`RateDistortionLoss` is also bitalloc's default objective ``loss(model, batch)``: sensitivity, plan
checks and QAT call it with the model when no ``loss=`` is given (see :func:`rd_loss_fn`).
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Iterator

import torch
import torch.nn as nn

__all__ = ["METRICS", "RATES", "RateDistortionLoss", "coded_rate", "coded_scales", "image_of", "rd_loss_fn",
           "split_parameters"]

METRICS = ("mse", "ms-ssim")
RATES = ("likelihood", "coded")
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


def coded_scales(conditional: nn.Module, scales: torch.Tensor) -> torch.Tensor:
    """The scales the entropy coder codes ``y`` with: each of ``scales`` (lower-bounded as the module bounds
    them) snapped up to the next entry of ``conditional``'s scale table (CompressAI's default table when the
    model's has not been built by ``update()``), the last entry for anything above it; as
    ``GaussianConditional.build_indexes`` picks them."""
    from compressai.models.google import get_scale_table

    table = conditional.scale_table
    table = (table if table.numel() else get_scale_table()).to(device=scales.device, dtype=scales.dtype)
    bounded = conditional.lower_bound_scale(scales)
    return table[torch.searchsorted(table[:-1].contiguous(), bounded.detach().contiguous(), right=False)]


def _snap_scales_hook(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    if "scales" in kwargs:
        kwargs = {**kwargs, "scales": coded_scales(module, kwargs["scales"])}
    elif len(args) >= 2:
        args = (args[0], coded_scales(module, args[1]), *args[2:])
    return args, kwargs


@contextlib.contextmanager
def coded_rate(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block, every ``GaussianConditional`` of ``model`` computes its likelihoods at the scales the
    entropy coder uses (:func:`coded_scales`), so ``model(x)["likelihoods"]`` give the bitstream's rate (module
    docstring). A model without one is a ValueError: it has no scale table to code with."""
    from compressai.entropy_models import GaussianConditional

    conditionals = [m for m in model.modules() if isinstance(m, GaussianConditional)]
    if not conditionals:
        raise ValueError(f"rate='coded': {type(model).__name__} has no GaussianConditional, so no scale table to "
                         "snap to; use rate='likelihood'")
    handles = [m.register_forward_pre_hook(_snap_scales_hook, with_kwargs=True) for m in conditionals]
    try:
        yield model
    finally:
        for h in handles:
            h.remove()


class RateDistortionLoss(nn.Module):
    """The RD loss at ``lmbda`` with ``metric`` "mse" (default) or "ms-ssim" (module docstring).

    Two call forms: ``criterion(out, x)`` with the model's output dict (``likelihoods``, ``x_hat``), as
    CompressAI's trainers call it, and ``criterion(model, batch)``, bitalloc's ``loss(model, batch)``
    interface (the model is run on the batch's images). Returns a dict of tensors: ``loss``, ``bpp``,
    ``mse``, ``psnr`` (and ``ms_ssim`` for the MS-SSIM metric). ``lmbda=None``: the model's own
    ``meta["lambda"]`` (one loss for a ladder of qualities; ``criterion(model, batch)`` form). ``rate``:
    "likelihood" or "coded" (module docstring; "coded" runs the model itself, so it needs the ``criterion(model,
    batch)`` form).
    """

    def __init__(self, lmbda: float | None, metric: str = "mse", rate: str = "likelihood"):
        super().__init__()
        if lmbda is not None and not lmbda > 0:
            raise ValueError(f"lambda must be positive, got {lmbda}")
        if metric not in METRICS:
            raise ValueError(f"unknown distortion metric {metric!r}; valid choices: {', '.join(METRICS)}")
        if rate not in RATES:
            raise ValueError(f"unknown rate {rate!r}; valid choices: {', '.join(RATES)}")
        self.lmbda, self.metric, self.rate = None if lmbda is None else float(lmbda), metric, rate

    @property
    def cache_key(self) -> str:
        """What names this loss in a study's cache keys (every setting that changes its numbers)."""
        return f"RateDistortionLoss(lmbda={self.lmbda!r}, metric={self.metric}, rate={self.rate})"

    def forward(self, out: dict | nn.Module, x: Any) -> dict[str, torch.Tensor]:
        x = image_of(x)
        lmbda = self.lmbda
        if lmbda is None:
            meta = getattr(out, "meta", None) or {}
            if not isinstance(out, nn.Module) or "lambda" not in meta:
                raise ValueError("RateDistortionLoss(lmbda=None) takes the model's own meta['lambda']: call it as "
                                 "criterion(model, batch) with a model loaded from a checkpoint, or give lmbda")
            lmbda = float(meta["lambda"])
        if isinstance(out, nn.Module):
            if self.rate == "coded":
                with coded_rate(out):
                    out = out(x)
            else:
                out = out(x)
        elif self.rate == "coded":
            raise ValueError("rate='coded' snaps the scales inside the model: call the loss as criterion(model, "
                             "batch), not on a model's output")
        n, _, h, w = x.shape
        num_pixels = n * h * w
        bpp = sum(lk.log().sum() for lk in out["likelihoods"].values()) / (-math.log(2) * num_pixels)
        x_hat = out["x_hat"]
        mse = torch.mean((x_hat - x) ** 2)
        psnr = -10 * torch.log10(mse.detach().clamp_min(1e-10))
        if self.metric == "mse":
            return {"loss": bpp + lmbda * 255**2 * mse, "bpp": bpp, "mse": mse, "psnr": psnr}
        if min(h, w) < _MS_SSIM_MIN_SIDE:
            raise ValueError(f"MS-SSIM needs images of at least {_MS_SSIM_MIN_SIDE}x{_MS_SSIM_MIN_SIDE} pixels "
                             f"(5 scales, 11-pixel window), got {h}x{w}; use larger crops or metric='mse'")
        from pytorch_msssim import ms_ssim

        msssim = ms_ssim(x_hat, x, data_range=1.0)
        return {"loss": bpp + lmbda * (1 - msssim), "bpp": bpp, "ms_ssim": msssim, "mse": mse, "psnr": psnr}

    def extra_repr(self) -> str:
        rate = f", rate={self.rate}" if self.rate != "likelihood" else ""
        return f"lmbda={self.lmbda}, metric={self.metric}{rate}"


def rd_loss_fn(lmbda: float | None, metric: str = "mse", rate: str = "likelihood") -> RateDistortionLoss:
    """The LIC rate-distortion objective as a ``loss(model, batch)`` for ``loss=`` arguments.

    >>> loss = rd_loss_fn(0.0130)                       # CompressAI's MSE lambda of quality 4
    >>> loss.metric, rd_loss_fn(31.73, metric="ms-ssim").metric, rd_loss_fn(0.0130, rate="coded").rate
    ('mse', 'ms-ssim', 'coded')
    """
    return RateDistortionLoss(lmbda, metric, rate)


def split_parameters(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(main, aux): the entropy bottleneck's ``quantiles`` are trained by the auxiliary loss only."""
    main, aux = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (aux if name.endswith(".quantiles") else main).append(p)
    return main, aux
