"""Real-bitstream evaluation: every image is entropy-coded and decoded, bpp is counted from the bytes.

Follows CompressAI's ``utils/eval_model``: images are zero-padded (centred) to a multiple of 64, the
reconstruction is cropped back and clamped to [0, 1]; PSNR and MS-SSIM are computed on RGB in [0, 1].
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .atomic import atomic_write_text
from .data import resolve_images

__all__ = ["compress_image", "evaluate", "pad_to_multiple", "psnr", "summarize", "to_compressai_json"]


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = F.mse_loss(a, b).item()
    return float("inf") if mse == 0 else -10 * math.log10(mse)


def pad_to_multiple(x: torch.Tensor, p: int = 64) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    """``x`` (..., H, W) zero-padded (centred) to a multiple of ``p`` per side, and the padding (l, r, t, b)."""
    h, w = x.shape[-2:]
    nh, nw = (h + p - 1) // p * p, (w + p - 1) // p * p
    left, top = (nw - w) // 2, (nh - h) // 2
    pad = (left, nw - w - left, top, nh - h - top)
    return F.pad(x, pad, mode="constant", value=0), pad


def _crop(x: torch.Tensor, pad: tuple[int, int, int, int]) -> torch.Tensor:
    return F.pad(x, tuple(-p for p in pad))


@torch.no_grad()
def compress_image(model, x: torch.Tensor) -> dict:
    """Encode and decode one (3,H,W) image; returns bytes, x_hat and timings."""
    x4 = x.unsqueeze(0) if x.dim() == 3 else x
    xp, pad = pad_to_multiple(x4)
    t0 = time.perf_counter()
    enc = model.compress(xp)
    t1 = time.perf_counter()
    dec = model.decompress(enc["strings"], enc["shape"])
    t2 = time.perf_counter()
    num_bytes = sum(len(s) for group in enc["strings"] for s in group)
    x_hat = _crop(dec["x_hat"], pad).clamp(0, 1)
    return {"num_bytes": num_bytes, "x_hat": x_hat, "encoding_time": t1 - t0, "decoding_time": t2 - t1}


@torch.no_grad()
def evaluate(model, images=None, *, root=None, progress: bool = True, limit: int | None = None) -> pd.DataFrame:
    """Entropy-code every image with ``model``; one row per image.

    ``images``: a folder, a list of paths, a dict ``{name: (3,H,W) tensor}``, or None (``<data root>/kodak``,
    else scikit-image's photos). Columns: image, height, width, num_bytes, bpp, psnr_rgb, ms_ssim_rgb,
    encoding_time, decoding_time.

    Evaluation never sets an activation range: a model with an uncalibrated activation quantizer is refused
    before the first image (:func:`bitalloc.calibrate_activations` first), so no result depends on image order.
    """
    from pytorch_msssim import ms_ssim

    from .act_quant import check_calibrated

    check_calibrated(model)
    imgs = resolve_images(images, root=root, limit=limit)
    model = model.eval()
    model.update(force=False)
    device = next(model.parameters()).device
    rows = []
    for name, x in tqdm(imgs.items(), disable=not progress, desc="evaluate", leave=False):
        x = x.to(device).unsqueeze(0)
        r = compress_image(model, x)
        h, w = x.shape[-2:]
        rows.append({
            "image": name, "height": h, "width": w, "num_bytes": r["num_bytes"],
            "bpp": r["num_bytes"] * 8.0 / (h * w),
            "psnr_rgb": psnr(x, r["x_hat"]),
            # MS-SSIM needs > 160 px per side for its 5 scales; smaller images get NaN.
            "ms_ssim_rgb": ms_ssim(x, r["x_hat"], data_range=1.0).item() if min(h, w) > 160 else float("nan"),
            "encoding_time": r["encoding_time"], "decoding_time": r["decoding_time"],
        })
    return pd.DataFrame(rows)


def summarize(df: pd.DataFrame) -> dict:
    cols = ["bpp", "psnr_rgb", "ms_ssim_rgb", "encoding_time", "decoding_time"]
    return {c: float(df[c].mean()) for c in cols}


def to_compressai_json(results: list[pd.DataFrame], name: str, description: str = "Inference (ans)",
                       path: str | os.PathLike | None = None) -> dict:
    """CompressAI ``eval_model`` JSON: one entry per rate point (one DataFrame per quality)."""
    keys = {"psnr-rgb": "psnr_rgb", "ms-ssim-rgb": "ms_ssim_rgb", "bpp": "bpp",
            "encoding_time": "encoding_time", "decoding_time": "decoding_time"}
    out = {"name": name, "description": description,
           "results": {k: [float(df[c].mean()) for df in results] for k, c in keys.items()}}
    if path is not None:
        if Path(path).is_dir():
            raise IsADirectoryError(f"to_compressai_json: {path} is a folder; pass a file path such as "
                                    f"{Path(path) / (name + '.json')}")
        atomic_write_text(path, json.dumps(out, indent=2))
    return out
