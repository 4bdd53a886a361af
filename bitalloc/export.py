"""Packed export: a file as small as the bit plan says, that loads back to the exact fake-quantized model.

``export_packed(model, path)`` writes two files:

``path`` (the plan's weights)::

    b"BAPK" | uint32 little-endian header length | JSON header | per layer: codes, then scales

  * codes: the integer weights q in [-Q, Q] (Q = 2^(b-1) - 1) stored as q + Q in exactly b bits each,
    LSB first (``numpy.packbits(..., bitorder="little")``), in the tensor's C order, padded to a whole byte;
  * scales: one float32 per output channel, little-endian.

  So the payload is sum_l ceil(n_l b_l / 8) bytes + 4 C_l bytes: the plan's size
  (:func:`bitalloc.quant.layer_size_bits`) up to < 1 byte per layer, plus a small JSON header (architecture,
  N, M, quality, lambda, and per layer: name, bits, shape, axis, offsets).

``path + ".rest.pt"`` (not part of the plan): everything else in the state dict, in float32 -- biases, GDN,
entropy models with their CDF tables, layers kept in float, activation-quantizer ranges.

``load_packed(path)`` rebuilds the architecture (from the header, or ``model_factory()``), applies the plan,
and sets every layer's weight to s * q and its scale to s, so the quantizer reproduces q and the outputs are
bit-identical to the exported fake-quantized model's.
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

from bitalloc.atomic import atomic_torch_save, atomic_write
from bitalloc.graph import quantizable_layers
from bitalloc.quant import apply_plan, layer_size_bits, plan_of, quantized_tensor_name, weight_quantizer
from bitalloc.safe_load import load_torch_file

__all__ = ["export_packed", "load_packed", "pack_bits", "unpack_bits"]

MAGIC = b"BAPK"
PACKED_FORMAT, PACKED_VERSION = "bitalloc.packed", 1
_META_KEYS = ("architecture", "N", "M", "quality", "lambda", "size")


def pack_bits(values: np.ndarray, bits: int) -> bytes:
    """Unsigned ints < 2^bits, ``bits`` bits each, LSB first, padded to a whole byte."""
    v = np.asarray(values, dtype=np.uint32).ravel()
    if v.size and int(v.max()) >> bits:
        raise ValueError(f"value {int(v.max())} does not fit in {bits} bits")
    planes = ((v[:, None] >> np.arange(bits, dtype=np.uint32)) & 1).astype(np.uint8)
    return np.packbits(planes.ravel(), bitorder="little").tobytes()


def unpack_bits(buf: bytes, bits: int, count: int) -> np.ndarray:
    planes = np.unpackbits(np.frombuffer(buf, dtype=np.uint8), count=count * bits, bitorder="little")
    planes = planes.reshape(count, bits).astype(np.uint32)
    return (planes << np.arange(bits, dtype=np.uint32)).sum(axis=1, dtype=np.uint32)


def _rest_path(path: Path) -> Path:
    return path.with_name(path.name + ".rest.pt")


def export_packed(model: nn.Module, path: str | os.PathLike) -> dict[str, Any]:
    """Write a fake-quantized model (see :func:`bitalloc.quant.apply_plan`); returns a size report."""
    path = Path(path)
    plan = plan_of(model)
    if not len(plan):
        raise ValueError("export_packed needs a fake-quantized model (apply_plan first); this one has no plan")
    layers = quantizable_layers(model, gdn=True)
    skip: set[str] = set()
    entries, blobs, offset, plan_size = [], [], 0, 0
    for name in plan:
        m = layers[name]
        q = weight_quantizer(m)
        t = quantized_tensor_name(m)
        w = getattr(m.parametrizations, t).original.detach()
        codes = q.integers(w).numpy()
        scales = q.effective_scale().detach().to(torch.float32).numpy().astype("<f4")
        packed = pack_bits(codes.ravel().astype(np.int64) + q.qmax, q.bits)
        entries.append({"name": name, "tensor": t, "bits": q.bits, "shape": list(w.shape), "axis": q.axis,
                        "offset": offset, "nbytes": len(packed), "channels": int(scales.size)})
        blobs += [packed, scales.tobytes()]
        offset += len(packed) + scales.nbytes
        plan_size += layer_size_bits(m, q.bits)
        skip |= {f"{name}.parametrizations.{t}.original", f"{name}.parametrizations.{t}.0.scale"}
    act_bits = sorted({m.input_quantizer.bits for m in layers.values() if hasattr(m, "input_quantizer")})
    meta = {k: v for k, v in (getattr(model, "meta", None) or {}).items() if k in _META_KEYS}
    header = {"format": PACKED_FORMAT, "version": PACKED_VERSION, "model_class": type(model).__name__,
              "meta": meta, "act_bits": act_bits[0] if act_bits else None, "plan_size_bits": plan_size,
              "rest": _rest_path(path).name, "layers": entries}
    head = json.dumps(header, separators=(",", ":")).encode()

    def write(fh) -> None:
        fh.write(MAGIC + struct.pack("<I", len(head)) + head)
        for b in blobs:
            fh.write(b)

    rest = {k: v.detach().cpu().clone() for k, v in model.state_dict().items() if k not in skip}
    atomic_torch_save(rest, _rest_path(path))
    atomic_write(path, write)
    file_bytes = path.stat().st_size
    return {"path": str(path), "file_bytes": file_bytes, "header_bytes": len(MAGIC) + 4 + len(head),
            "payload_bytes": offset, "plan_size_bits": plan_size, "plan_size_bytes": plan_size / 8,
            "rest_path": str(_rest_path(path)), "rest_bytes": _rest_path(path).stat().st_size}


def _read(path: Path) -> tuple[dict, bytes]:
    data = path.read_bytes()
    if data[:4] != MAGIC:
        raise ValueError(f"{path} is not a bitalloc packed model (bad magic bytes)")
    (n,) = struct.unpack("<I", data[4:8])
    header = json.loads(data[8:8 + n])
    if header.get("format") != PACKED_FORMAT or header.get("version") != PACKED_VERSION:
        raise ValueError(f"{path}: unsupported packed format {header.get('format')!r} "
                         f"version {header.get('version')!r}")
    return header, data[8 + n:]


def _build(header: dict) -> nn.Module:
    from bitalloc.models.registry import check_model

    meta = header["meta"]
    if "architecture" not in meta:
        raise ValueError("the packed file names no architecture; pass model_factory=...")
    return check_model(meta["architecture"]).cls(*(int(meta[k]) for k in ("N", "M") if k in meta))


def load_packed(path: str | os.PathLike, model_factory: Callable[[], nn.Module] | None = None) -> nn.Module:
    """The fake-quantized model stored by :func:`export_packed` (eval mode, ``meta`` restored)."""
    path = Path(path)
    header, payload = _read(path)
    model = model_factory() if model_factory is not None else _build(header)
    plan = {e["name"]: e["bits"] for e in header["layers"]}
    apply_plan(model, plan, keep_float=True, act_bits=header.get("act_bits"), inplace=True)
    state = load_torch_file(path.with_name(header["rest"]), f"the unquantized rest of packed model {path}")
    for e in header["layers"]:
        n, b, axis = int(np.prod(e["shape"])), e["bits"], e["axis"]
        start = e["offset"]
        codes = unpack_bits(payload[start:start + e["nbytes"]], b, n).astype(np.int64) - (2 ** (b - 1) - 1)
        s0 = start + e["nbytes"]
        scales = torch.from_numpy(np.frombuffer(payload[s0:s0 + 4 * e["channels"]], dtype="<f4").copy())
        q = torch.from_numpy(codes.astype(np.float32)).reshape(e["shape"])
        shape = [1] * q.dim()
        shape[axis] = -1
        prefix = f"{e['name']}.parametrizations.{e['tensor']}"
        state[f"{prefix}.original"] = q * scales.reshape(shape)
        state[f"{prefix}.0.scale"] = scales
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ValueError(f"{path.with_name(header['rest'])} does not hold the rest of packed model {path}: "
                         f"{str(exc).splitlines()[-1].strip()[:300]}") from None
    model.meta = dict(header["meta"])
    return model.eval()
