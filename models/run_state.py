"""Run states, validation and metadata of :mod:`bitalloc.models.train` (what a run reads and writes).

A run state is a plain dict (tensors, numbers, strings, lists, dicts) loaded with ``weights_only=True``;
validation uses fixed centre crops of the held-out ``val`` split of the training folder
(:func:`bitalloc.data.split_of`), never Kodak.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from bitalloc.atomic import atomic_write_text

from .checkpoint import load_checkpoint
from .registry import check_model, lambda_of

__all__ = ["RUN_STATE_FORMAT", "RUN_STATE_VERSION", "STATE_KEYS", "has_context_model", "init_weights",
           "load_run_state", "run_meta", "training_images", "validate", "validation_crops", "write_history"]

RUN_STATE_FORMAT = "bitalloc.train-state"
RUN_STATE_VERSION = 2
STATE_KEYS = ("model", "opt", "aux_opt", "step", "history", "config")


def load_run_state(path, map_location="cpu") -> dict:
    """Read a run state written by :func:`train` (``weights_only=True``); errors name the file."""
    from bitalloc.safe_load import load_torch_file

    st = load_torch_file(path, "a bitalloc train() run state", required=STATE_KEYS, map_location=map_location)
    if st.get("format") not in (None, RUN_STATE_FORMAT):
        raise ValueError(f"{path} is not a bitalloc train() run state (format {st.get('format')!r}, "
                         f"expected {RUN_STATE_FORMAT!r})")
    return st


def init_weights(model, init_from) -> tuple[str | None, int]:
    """Load ``init_from`` (a shipped checkpoint or a run state) into ``model``; (source, its training steps)."""
    if init_from is None:
        return None, 0
    path = Path(init_from)
    if not path.is_file():
        raise FileNotFoundError(f"init_from file not found: {path}")
    try:  # a checkpoint, told by its format (not its name)
        ckpt = load_checkpoint(path)
    except ValueError as not_checkpoint:
        try:
            st = load_run_state(path)
        except ValueError as not_state:
            raise ValueError(f"init_from {path} is neither a bitalloc checkpoint nor a train() run state "
                             f"(as a checkpoint: {not_checkpoint}; as a run state: {not_state})") from None
        model.load_state_dict(st["model"])
        return str(path), int(st["step"]) + int(st.get("steps_before", 0))
    if any(getattr(ckpt, d, None) is not None and getattr(model, d, None) not in (None, getattr(ckpt, d))
           for d in ("N", "M")):
        from .widen import widened_state_dict  # a narrower model grows into this one (N, M), computing the same

        model.load_state_dict(widened_state_dict(ckpt, model))
    else:
        model.load_state_dict(ckpt.state_dict())
    return str(path), int(ckpt.meta.get("training_steps") or 0)


def has_context_model(model) -> bool:
    from compressai.layers import MaskedConv2d

    return any(isinstance(m, MaskedConv2d) for m in model.modules())


def training_images(train_dir, crop: int, seed: int):
    """The ``train`` split of ``train_dir`` (validation and calibration photos held out); all photos, with a
    warning, when the folder is too small to have a training split."""
    import warnings

    from bitalloc.data import ImageFolder

    try:
        return ImageFolder(train_dir, crop=crop, seed=seed, split="train")
    except FileNotFoundError:
        warnings.warn(f"{train_dir} has no photo in the 'train' split (see bitalloc.data.split_of): training on "
                      f"all of its photos, validation photos included", stacklevel=3)
        return ImageFolder(train_dir, crop=crop, seed=seed)


def validation_crops(train_dir, crop: int, limit: int | None = None) -> torch.Tensor:
    """Fixed centre crops of the validation photos: the same tensor on every call."""
    from bitalloc.data import ImageFolder

    folder = ImageFolder(train_dir, crop=None, split="val")
    crops = []
    for i in range(len(folder) if limit is None else min(limit, len(folder))):
        img = folder[i]
        _, h, w = img.shape
        c = min(crop, h, w) // 64 * 64
        top, left = (h - c) // 2, (w - c) // 2
        crops.append(img[:, top:top + c, left:left + c])
    return crops


@torch.no_grad()
def validate(model, crops, criterion, device="cpu") -> dict[str, float]:
    """Mean RD loss, bpp and PSNR over ``crops`` (eval mode: rounded latents, as the codec sees them)."""
    was_training = model.training
    model.eval()
    sums = np.zeros(3)
    for x in crops:
        x = x[None].to(device)
        t = criterion(model(x), x)
        sums += [t["loss"].item(), t["bpp"].item(), t["psnr"].item()]
    model.train(was_training)
    return dict(zip(("val_loss", "val_bpp", "val_psnr"), (sums / max(1, len(crops))).tolist()))


def write_history(history: list[dict], path: Path) -> None:
    import pandas as pd

    atomic_write_text(path, pd.DataFrame(history).to_csv(index=False))


def run_meta(name, quality, size, cfg, training_steps, init_src, history) -> dict:
    channels = cfg.get("channels") or check_model(name).channels(quality, size)
    train_rows = [h for h in history if "bpp" in h]
    return {
        "architecture": name, "quality": quality, "size": size,
        **dict(zip(("N", "M"), channels)), "lambda": lambda_of(quality),
        "training_steps": int(training_steps), "batch_size": cfg["batch_size"], "crop": cfg["crop"],
        "schedule": cfg.get("schedule", "cosine"),
        "training_data": f"{Path(cfg['train_dir']).name}/ ({cfg['num_train_images']} images: BSDS500 + CID22)",
        "init_from": Path(init_src).name if init_src else None,
        "final_train_bpp": train_rows[-1]["bpp"] if train_rows else None,
        "final_train_psnr": train_rows[-1]["psnr"] if train_rows else None,
    }
