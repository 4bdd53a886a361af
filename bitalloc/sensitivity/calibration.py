"""The fixed calibration data a sensitivity table or a plan check is measured on, as a list of batches."""

from __future__ import annotations

import itertools
import os
from typing import Any

import torch
import torch.nn.functional as F

from bitalloc.objective import to_device

__all__ = ["calibration_batch", "calibration_batches"]


def calibration_batch(images: Any = None, *, crop: int = 256, limit: int | None = 4) -> torch.Tensor:
    """Centre crops ``crop x crop`` (a multiple of 64) of the first ``limit`` images, as one (N,3,c,c) batch.

    ``images``: a (N,3,H,W) tensor (used as is), or anything :func:`bitalloc.data.resolve_images` takes.
    """
    if isinstance(images, torch.Tensor):
        return images if images.dim() == 4 else images.unsqueeze(0)
    if crop % 64:
        raise ValueError(f"crop must be a multiple of 64 (the models downsample by 64), got {crop}")
    from bitalloc.data import resolve_images

    out = []
    for x in resolve_images(images, limit=limit).values():
        _, h, w = x.shape
        if h < crop or w < crop:
            x = F.pad(x[None], (0, max(0, crop - w), 0, max(0, crop - h)), mode="replicate")[0]
            _, h, w = x.shape
        i, j = (h - crop) // 2, (w - crop) // 2
        out.append(x[:, i:i + crop, j:j + crop])
    return torch.stack(out)


def _is_image(item: Any) -> bool:
    return isinstance(item, (str, os.PathLike)) or (isinstance(item, torch.Tensor) and item.dim() == 3)


def calibration_batches(data: Any = None, *, crop: int = 256, limit: int | None = 4,
                        device: torch.device | str | None = None) -> list:
    """``data`` as a list of batches (on ``device`` when given), the same on every call.

    * a tensor: one batch, as is ((3,H,W) becomes (1,3,H,W));
    * None, an image folder, a dict of (3,H,W) tensors, a list of paths or of (3,H,W) tensors: one batch of
      centre crops of the first ``limit`` images (:func:`calibration_batch`);
    * any other iterable of batches (a ``DataLoader``, a list of ``(input, target)`` tuples, a generator):
      its first ``limit`` batches (all of them when ``limit`` is None). A shuffling loader gives other batches
      on every call; measure on a fixed one.
    """
    if isinstance(data, torch.Tensor):
        batches = [calibration_batch(data)]
    elif data is None or isinstance(data, (str, os.PathLike, dict)):
        batches = [calibration_batch(data, crop=crop, limit=limit)]
    else:
        try:
            items = list(itertools.islice(iter(data), limit)) if limit is not None else list(data)
        except TypeError:
            raise TypeError(f"calibration data must be a tensor, an image folder or an iterable of batches, got "
                            f"{type(data).__name__}") from None
        if not items:
            raise ValueError(f"the calibration data ({type(data).__name__}) yielded no batches")
        batches = [calibration_batch(items, crop=crop, limit=limit)] if all(map(_is_image, items)) else items
    return [to_device(b, torch.device(device)) for b in batches] if device is not None else batches
