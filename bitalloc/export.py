"""Packed export: a file as small as the bit plan says, that loads back to the exact fake-quantized model.

``export_packed(model, path)`` writes the packed container of :mod:`bitalloc.packed`: one safetensors file with
the integer weights at their bit-widths, the plan and the model's identity as metadata, the entropy models'
tables in compact form and the context mask as bits (format ``bitalloc.packed`` version 2).
``load_packed(path)`` reads it back (a zoo model needs no ``model_factory``).

``load_packed`` still reads the files of version 1 (``b"BAPK"`` | uint32 header length | JSON header | per layer
the packed codes and float32 scales, plus the ``path + ".rest.pt"`` sidecar with the rest of the state dict in
float32, the entropy tables as int32); this version no longer writes them.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn

from bitalloc.packed import is_safetensors, layer_state, pack_bits, read_packed, unpack_bits, write_packed
from bitalloc.quant import apply_plan
from bitalloc.safe_load import load_torch_file

__all__ = ["export_packed", "load_packed", "pack_bits", "unpack_bits"]

MAGIC = b"BAPK"
LEGACY_FORMAT, LEGACY_VERSION = "bitalloc.packed", 1


def export_packed(model: nn.Module, path: str | os.PathLike) -> dict[str, Any]:
    """Write a fake-quantized model (see :func:`bitalloc.quant.apply_plan`) as the packed container of
    :mod:`bitalloc.packed`; returns its size report (:func:`bitalloc.packed.write_packed`)."""
    return write_packed(model, path)


def _read(path: Path) -> tuple[dict, bytes]:
    data = path.read_bytes()
    if data[:4] != MAGIC:
        raise ValueError(f"{path} is not a bitalloc packed model (bad magic bytes: neither a safetensors "
                         "container nor a version 1 BAPK file)")
    (n,) = struct.unpack("<I", data[4:8])
    header = json.loads(data[8:8 + n])
    if header.get("format") != LEGACY_FORMAT or header.get("version") != LEGACY_VERSION:
        raise ValueError(f"{path}: unsupported packed format {header.get('format')!r} "
                         f"version {header.get('version')!r}")
    return header, data[8 + n:]


def _build(path: Path, header: dict) -> nn.Module:
    from bitalloc.models.registry import check_model

    meta = header["meta"]
    if "architecture" not in meta:
        raise ValueError(f"{path} (packed format 1) names no architecture; pass model_factory=...")
    return check_model(meta["architecture"]).cls(*(int(meta[k]) for k in ("N", "M") if k in meta))


def load_packed(path: str | os.PathLike, model_factory: Callable[[], nn.Module] | None = None) -> nn.Module:
    """The fake-quantized model stored by :func:`export_packed` (eval mode, ``meta`` restored); reads the
    safetensors container (version 2) and the older ``BAPK`` files with their ``.rest.pt`` sidecar (version 1)."""
    path = Path(path)
    if is_safetensors(path):
        return read_packed(path, model_factory)
    header, payload = _read(path)
    model = model_factory() if model_factory is not None else _build(path, header)
    plan = {e["name"]: e["bits"] for e in header["layers"]}
    apply_plan(model, plan, keep_float=True, act_bits=header.get("act_bits"), inplace=True)
    state = load_torch_file(path.with_name(header["rest"]), f"the unquantized rest of packed model {path}")
    for e in header["layers"]:
        start, s0 = e["offset"], e["offset"] + e["nbytes"]
        scales = torch.from_numpy(np.frombuffer(payload[s0:s0 + 4 * e["channels"]], dtype="<f4").copy())
        state.update(layer_state(e, payload[start:s0], scales))
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ValueError(f"{path.with_name(header['rest'])} does not hold the rest of packed model {path}: "
                         f"{str(exc).splitlines()[-1].strip()[:300]}") from None
    model.meta = dict(header["meta"])
    return model.eval()
