"""Checkpoints: compact files with metadata, loaded with ``torch.load(..., weights_only=True)``.

A shipped checkpoint is a plain dict (so ``weights_only`` loading works)::

    {"format": "bitalloc.checkpoint", "version": 1,
     "meta": {"architecture", "N", "M", "quality", "lambda", "size", "training_steps", "training_data",
              "kodak": {"bpp", "psnr_rgb", "ms_ssim_rgb"}, ...},
     "state_dict": {...}}            # float tensors stored as float16, entropy-coder tables as int32

The Kodak numbers in ``meta`` are measured from the float16 file itself (see :func:`export_checkpoint`).
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

import torch
import torch.nn as nn

from bitalloc.atomic import atomic_torch_save
from bitalloc.safe_load import load_torch_file

from .registry import build_model, check_model, check_quality

__all__ = [
    "CHECKPOINT_FORMAT",
    "available_checkpoints",
    "checkpoint_name",
    "load_checkpoint",
    "load_model",
    "read_checkpoint",
    "save_checkpoint",
    "shipped_checkpoint_dir",
]

CHECKPOINT_FORMAT = "bitalloc.checkpoint"
CHECKPOINT_VERSION = 1


def shipped_checkpoint_dir() -> Path:
    return Path(str(resources.files("bitalloc.models") / "checkpoints"))


def checkpoint_name(name: str, quality: int, size: str = "compact") -> str:
    return f"{name}-{size}-q{quality}.pt"


def plain_meta(value, where: str = "meta"):
    """``value`` with numpy scalars/arrays turned into Python types, so ``weights_only`` loading accepts it.

    Raises ``TypeError`` naming the key for anything that is not plain data (a tensor, an object).
    """
    if isinstance(value, dict):
        return {str(k): plain_meta(v, f"{where}[{k!r}]") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_meta(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:  # numpy / torch scalar (np.float64 is a float)
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if hasattr(value, "tolist") and not isinstance(value, torch.Tensor):
        return value.tolist()
    raise TypeError(f"checkpoint {where} must be plain data (str, int, float, bool, None, list, dict), "
                    f"got {type(value).__name__}")


def save_checkpoint(model: nn.Module, path: str | os.PathLike, meta: dict, half: bool = True) -> None:
    """Write ``model`` with ``meta``; float *parameters* become float16 when ``half``.

    Buffers keep their precision: they are small, and some do not survive float16 (the entropy models'
    likelihood lower bound of 1e-9 would round to 0, and a zero likelihood makes the estimated rate infinite).
    ``meta`` is normalised with :func:`plain_meta` so the file loads with ``weights_only=True``.
    """
    params = {name for name, _ in model.named_parameters()}
    state = {
        k: (v.detach().cpu().half() if half and k in params and v.is_floating_point() else v.detach().cpu())
        for k, v in model.state_dict().items()
    }
    atomic_torch_save(
        {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "meta": plain_meta(dict(meta)),
         "state_dict": state},
        path,
    )


def read_checkpoint(path: str | os.PathLike) -> dict:
    """Read (``weights_only=True``) and validate a checkpoint file; errors name the file."""
    return _validated(Path(path), load_torch_file(path, "a bitalloc checkpoint"))


def _validated(path: Path, ckpt: dict) -> dict:
    """``ckpt`` (the dict loaded from ``path``) if it has the checkpoint format, else a ValueError naming it."""
    if ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a bitalloc checkpoint (missing format {CHECKPOINT_FORMAT!r})")
    if ckpt.get("version") != CHECKPOINT_VERSION:
        raise ValueError(f"{path}: unsupported checkpoint version {ckpt.get('version')!r}")
    for key in ("meta", "state_dict"):
        if not isinstance(ckpt.get(key), dict):
            raise ValueError(f"{path}: checkpoint has no {key!r} dict")
    odd = [k for k, v in ckpt["state_dict"].items() if not isinstance(v, torch.Tensor)]
    if odd:
        raise ValueError(f"{path}: checkpoint state_dict entry {odd[0]!r} is not a tensor")
    return ckpt


def load_checkpoint(path: str | os.PathLike) -> nn.Module:
    """Build the architecture named in the file's metadata and load its weights (float32, eval mode)."""
    return _build(Path(path), read_checkpoint(path))


def _build(path: Path, ckpt: dict) -> nn.Module:
    meta = ckpt["meta"]
    try:
        spec = check_model(meta.get("architecture", "not recorded"))
    except ValueError as exc:
        raise ValueError(f"Checkpoint {path}: {exc}") from None
    channels = tuple(int(meta[k]) for k in ("N", "M") if k in meta)
    model = spec.cls(*channels)
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in ckpt["state_dict"].items()}
    try:
        model.load_state_dict(state)
    except (RuntimeError, KeyError) as exc:
        raise ValueError(f"Checkpoint {path} does not match {spec.name} {channels}: {exc}") from exc
    model.meta = dict(meta)
    return model.eval()


def available_checkpoints(folder: str | os.PathLike | None = None) -> list[dict]:
    """The checkpoints that ship with the package (or those in ``folder``): one dict of metadata per file."""
    out = []
    folder = shipped_checkpoint_dir() if folder is None else Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no checkpoint folder {folder}")
    for path in sorted(folder.glob("*.pt")):
        meta = read_checkpoint(path)["meta"]
        out.append({"file": path.name, **{k: v for k, v in meta.items() if not isinstance(v, dict)},
                    **{f"kodak_{k}": v for k, v in meta.get("kodak", {}).items()}})
    return out


def load_model(name: str, quality: int, pretrained: str | os.PathLike | bool = "bitalloc",
               size: str = "compact") -> nn.Module:
    """Load an LIC model.

    ``pretrained="bitalloc"``: the checkpoint this project trained and ships (compact size);
    ``"compressai"``: CompressAI's published weights (paper size; needs internet on first use);
    a path: that checkpoint file; ``False``: an untrained model. A checkpoint (shipped or a path) must hold
    the requested architecture, quality and size: a ValueError names the file and what differs.
    """
    # CompressAI's weights exist for its own qualities only (no bitalloc quality 0)
    check_quality(name, quality, "paper" if pretrained == "compressai" else size)
    if pretrained is False or pretrained is None:
        return build_model(name, quality, size)
    if pretrained == "bitalloc":
        path = shipped_checkpoint_dir() / checkpoint_name(name, quality, size)
        if not path.is_file():
            ships = [c["file"] for c in available_checkpoints()]
            raise ValueError(
                f"No shipped bitalloc checkpoint for {name} quality {quality} ({size}); shipped: "
                f"{', '.join(ships) or 'none'}. Train one with `bitalloc train` or pass a file path."
            )
        model = load_checkpoint(path)
    elif pretrained == "compressai":
        return _load_compressai(name, quality)
    else:
        path = Path(pretrained)
        model = _load_file(name, path)
    _check_request(model, path, name, quality, size)
    return model


def _check_request(model: nn.Module, path: Path, name: str, quality: int, size: str) -> None:
    """Raise a ValueError naming ``path`` when the loaded model is not the ``name``/``quality``/``size`` asked for.

    A bitalloc checkpoint's metadata must record the requested architecture and quality (and size, when it
    records one); every file's channel sizes must be those of ``name`` at ``quality`` and ``size``. A plain
    CompressAI state dict has no metadata: its architecture is checked by loading and its size by channels.
    """
    wrong = []
    meta = getattr(model, "meta", None)
    if meta is not None:
        asked = {"architecture": name, "quality": quality, "size": size}
        for key, want in asked.items():
            if key == "size" and key not in meta:
                continue  # older files: the channel check below covers the size
            found = meta.get(key, "not recorded")
            if found != want:
                wrong.append(f"{key} {want!r} requested, {found!r} in the file")
    spec = check_model(name)
    want = spec.channels(quality, size)
    found = tuple(int(getattr(model, k)) for k in ("N", "M"))[:len(want)]
    if found != want and not wrong:
        fits = [s for s in ("compact", "paper")
                if quality in spec.qualities_for(s) and spec.channels(quality, s) == found]
        wrong.append(f"channels {want} requested ({size} size), {found} in the file"
                     + (f" (the {fits[0]} size: pass size={fits[0]!r})" if fits else ""))
    if wrong:
        raise ValueError(f"Checkpoint {path} is not {name} quality {quality} ({size}): {'; '.join(wrong)}. "
                         f"Load the file that was meant, or use load_checkpoint(path) to take it as it is")


def _load_file(name: str, path) -> nn.Module:
    """A bitalloc checkpoint, or a plain CompressAI state dict (e.g. a downloaded ``*.pth.tar``)."""
    path = Path(path)
    blob = load_torch_file(path, "a bitalloc checkpoint or a CompressAI state dict")
    if blob.get("format") == CHECKPOINT_FORMAT:
        return _build(path, _validated(path, blob))
    state = blob.get("state_dict", blob)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} is neither a bitalloc checkpoint nor a CompressAI state dict")
    state = {k.removeprefix("module."): v.float() if v.is_floating_point() else v for k, v in state.items()}
    try:
        model = check_model(name).cls.from_state_dict(state)
    except (RuntimeError, KeyError) as exc:
        raise ValueError(f"{path} does not hold {name} weights: {exc}") from exc
    return model.eval()


def _load_compressai(name: str, quality: int) -> nn.Module:
    from compressai.zoo import image_models

    try:
        model = image_models[name](quality=quality, metric="mse", pretrained=True, progress=False)
    except Exception as exc:  # urllib/HTTP errors when offline
        raise RuntimeError(
            f"Could not download CompressAI's pretrained {name} quality {quality} ({exc}). This needs internet "
            f"access; offline, download the weights elsewhere and convert them to a file for "
            f"load_model(..., pretrained='path/to/file.pt'), or use pretrained='bitalloc'."
        ) from exc
    return model.eval()
