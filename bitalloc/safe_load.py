"""Reading torch files without running code from them.

A full ``torch.load`` (weights_only off) unpickles arbitrary objects, so a file whose pickle names
``os.system`` runs it. Every file bitalloc reads holds tensors and plain data only (RNG states as tensors or
plain dicts, configs and logs as dicts, lists and numbers) and loads with ``weights_only=True`` through
:func:`load_torch_file`, whose errors name the file and what it should have been.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import torch

__all__ = ["load_torch_file"]


def load_torch_file(path: str | os.PathLike, expected: str, *, required: Iterable[str] = (),
                    map_location="cpu") -> dict:
    """The dict stored in ``path``, loaded with ``weights_only=True``.

    ``expected`` says what the file should be (e.g. ``"a bitalloc QAT run state"``); ``required`` lists the
    keys it must have. Raises ``FileNotFoundError`` when there is no such file and ``ValueError`` naming the
    file and ``expected`` when it does not load as tensors and plain data (a pickled object, a truncated or
    foreign file), is not a dict, or lacks a required key.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (expected {expected})")
    try:
        blob = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for damaged, foreign or object-pickling files
        raise ValueError(f"{path} is not {expected}: it does not load as tensors and plain data "
                         f"(weights_only=True): {_reason(exc)}") from None
    if not isinstance(blob, dict):
        raise ValueError(f"{path} is not {expected}: it holds a {type(blob).__name__}, not a dict")
    missing = [k for k in required if k not in blob]
    if missing:
        raise ValueError(f"{path} is not {expected}: missing {', '.join(repr(k) for k in missing)}")
    return blob


def _reason(exc: Exception) -> str:
    """The line of torch's message that says what was wrong (not its advice to load the file unsafely)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    advice = ("Weights only load failed", "Please file an issue", "Check the documentation")
    useful = [ln for ln in lines if not ln.startswith(advice)]
    return (useful or lines or [type(exc).__name__])[0]
