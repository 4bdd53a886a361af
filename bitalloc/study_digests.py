"""Fingerprints of a study's inputs for the cache keys of :mod:`bitalloc.study_cache` (which re-exports them):
the float model's weights, named images, a training source, a user loss.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Mapping

import torch

__all__ = ["images_digest", "loss_digest", "source_digest", "weights_digest"]


def _sha(parts) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p if isinstance(p, bytes) else str(p).encode())
        h.update(b"\0")
    return h.hexdigest()


def _tensor_bytes(t: torch.Tensor) -> bytes:
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def _tensor_parts(name: str, t: torch.Tensor):
    yield name
    yield f"{t.dtype}{tuple(t.shape)}"
    yield _tensor_bytes(t)


def weights_digest(model: torch.nn.Module) -> str:
    """sha256 of a model's state dict (names, dtypes, shapes, values) and its ``meta`` (lambda, architecture)."""
    parts = [p for k, v in model.state_dict().items() for p in _tensor_parts(k, v)]
    meta = json.dumps(getattr(model, "meta", None) or {}, sort_keys=True, default=str)
    return _sha([*parts, meta])


def images_digest(images: Mapping[str, torch.Tensor]) -> str:
    """sha256 of named images (names in order, shapes and pixels)."""
    return _sha([p for name, x in images.items() for p in _tensor_parts(name, x)])


def source_digest(source: Any) -> str:
    """Fingerprint of a training source: a tensor by content, a folder (or ImageFolder) by its photos' names and
    byte sizes, a dict of images by content."""
    from .data import ImageFolder, image_paths

    if isinstance(source, torch.Tensor):
        return _sha(_tensor_parts("tensor", source))
    if isinstance(source, Mapping):
        return images_digest(source)
    if isinstance(source, ImageFolder):
        # "stream=per-run": every QAT run draws from its own stream of the seed (bitalloc.qat.fresh_source)
        paths, extra = source.paths, f"crop={source.crop} flips={source.flips} stream=per-run"
    elif isinstance(source, (str, os.PathLike)):
        paths, extra = image_paths(source), "folder"
    else:
        raise TypeError(f"cannot key the study cache by a training source of type {type(source).__name__}; "
                        "pass a tensor, a dict of images, an image folder or an ImageFolder")
    return _sha([extra, *(f"{p.name}:{p.stat().st_size}" for p in paths)])


def loss_digest(loss: Any) -> str | None:
    """What names a user loss in the cache keys: its ``cache_key`` attribute when it has one, else its module,
    qualified name and (for a Python function) its code and constants, so an edited body is another loss;
    None for the default loss. A loss whose numbers change without any of these changing needs a
    ``cache_key``."""
    if loss is None:
        return None
    if getattr(loss, "cache_key", None) is not None:
        return _sha(["cache_key", loss.cache_key])
    fn = getattr(loss, "func", loss)  # functools.partial: the function and its bound arguments
    code = getattr(fn, "__code__", None)
    parts = [getattr(fn, "__module__", ""), getattr(fn, "__qualname__", type(fn).__qualname__)]
    if code is not None:
        parts += [code.co_code, repr(code.co_consts)]
    if fn is not loss:
        parts += [repr(getattr(loss, "args", ())), repr(sorted(getattr(loss, "keywords", {}).items()))]
    return _sha(parts)
