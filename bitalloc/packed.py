"""The packed container: one safetensors file, integer weights at their bit-widths, the plan as metadata.

Tensors of ``write_packed(model, path)`` (every one CPU, little-endian; safetensors' own layout)::

    codes/<layer>   uint8   the codes q + Q (q in [-Q, Q], Q = 2^(b-1) - 1) in exactly b bits each, LSB first
                            (:func:`pack_bits`), the tensor's C order, padded to a whole byte
    scales/<layer>  float32 one scale per output channel
    masks/<key>     uint8   a 0/1 weight mask (a context model's causal mask) as 1 bit per element; a masked
                            layer's codes hold its unmasked positions only (what layer_size_bits counts)
    cdf/<key>       uint16  an entropy model's quantized CDF table, each row's valid entries only, as the
                            differences of consecutive entries (each row starts at 0; the padding is 0)
    rest/<key>      as is   everything else in the state dict: biases, GDN, layers kept in float, the entropy
                            models' small tensors, activation-quantizer ranges

Metadata (safetensors' string map): ``format`` ("bitalloc.packed"), ``version`` ("2"), ``plan``
(:meth:`BitPlan.to_json`), ``model`` (JSON: ``model_class`` and the model's ``meta`` keys architecture, N, M,
quality, lambda, size), ``layers`` (JSON: per layer name, tensor, bits, shape, axis, channels, mask), ``tables``
(JSON, the CDF tables' shapes). The plan carries the activation bit-widths; the frozen activation ranges
(scale, zero-point) travel in ``rest/``.

The plan's weights (codes + scales) take sum_l ceil(n_l b_l / 8) + 4 C_l bytes: the plan's size
(:func:`bitalloc.quant.layer_size_bits`) up to < 1 byte per layer; the file adds safetensors' JSON header and the
side tables, reported apart by :func:`write_packed`.

``read_packed(path)`` rebuilds a zoo model from the metadata (:func:`bitalloc.models.build_model`; no
``model_factory`` needed), applies the plan and sets every layer's weight to s * q and its scale to s, so the
quantizer reproduces q: the forward pass and ``compress()`` are bit-identical to the exported model's.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn

from bitalloc.atomic import atomic_write
from bitalloc.bake import quantized_layers
from bitalloc.plan import BitPlan
from bitalloc.quant import apply_plan, layer_size_bits, plan_of, quantized_tensor_name, weight_quantizer

__all__ = ["PACKED_FORMAT", "PACKED_VERSION", "is_safetensors", "layer_state", "pack_bits", "read_packed",
           "unpack_bits", "write_packed"]

PACKED_FORMAT, PACKED_VERSION = "bitalloc.packed", 2
_META_KEYS = ("architecture", "N", "M", "quality", "lambda", "size")


def pack_bits(values: np.ndarray, bits: int) -> bytes:
    """Unsigned ints < 2^bits, ``bits`` bits each, LSB first, padded to a whole byte."""
    v = np.asarray(values, dtype=np.uint32).ravel()
    if v.size and int(v.max()) >> bits:
        raise ValueError(f"value {int(v.max())} does not fit in {bits} bits")
    planes = np.empty((v.size, bits), dtype=np.uint8)  # one byte per bit, not a uint32 (n, bits) temporary
    for i in range(bits):
        planes[:, i] = (v >> i) & 1
    return np.packbits(planes.ravel(), bitorder="little").tobytes()


def unpack_bits(buf: bytes, bits: int, count: int) -> np.ndarray:
    planes = np.unpackbits(np.frombuffer(buf, dtype=np.uint8), count=count * bits, bitorder="little")
    planes = planes.reshape(count, bits).astype(np.uint32)
    return (planes << np.arange(bits, dtype=np.uint32)).sum(axis=1, dtype=np.uint32)


def is_safetensors(path: str | os.PathLike) -> bool:
    """Whether ``path`` starts like a safetensors file (an 8-byte header length, then a JSON object)."""
    with open(path, "rb") as fh:
        head = fh.read(9)
    n = int.from_bytes(head[:8], "little") if len(head) == 9 else 0
    return head[8:9] == b"{" and 0 < n <= os.path.getsize(path) - 8


def _bytes_tensor(buf: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(buf), dtype=torch.uint8) if buf else torch.zeros(0, dtype=torch.uint8)


def _compact_cdf(cdf: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor | None:
    """The rows' valid entries as uint16 differences, or None when that would not reproduce ``cdf`` exactly."""
    rows = [cdf[i, :int(n)].to(torch.int64) for i, n in enumerate(lengths.tolist())]
    diffs = [r.diff() for r in rows]
    if any(len(r) == 0 or int(r[0]) != 0 for r in rows) or any(len(d) and (d.min() < 0 or d.max() > 65535)
                                                               for d in diffs):
        return None
    flat = torch.cat(diffs) if diffs else torch.zeros(0, dtype=torch.int64)
    out = flat.to(torch.int32).numpy().astype(np.uint16)
    if not torch.equal(_expand_cdf(torch.from_numpy(out), lengths, tuple(cdf.shape)), cdf.to(torch.int32)):
        return None
    return torch.from_numpy(out)


def _expand_cdf(flat: torch.Tensor, lengths: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    out = torch.zeros(shape, dtype=torch.int32)
    at = 0
    for i, n in enumerate(lengths.tolist()):
        n = int(n)
        out[i, 1:n] = torch.cumsum(flat[at:at + n - 1].to(torch.int32), 0)
        at += n - 1
    return out


def _is_mask(key: str, value: torch.Tensor, model: nn.Module) -> bool:
    owner, _, leaf = key.rpartition(".")
    if leaf != "mask" or not value.is_floating_point():
        return False
    w = getattr(model.get_submodule(owner), "weight", None) if owner else None
    return isinstance(w, torch.Tensor) and w.shape == value.shape and bool(((value == 0) | (value == 1)).all())


def layer_state(entry: dict, packed: bytes, scales: torch.Tensor,
                mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """The state-dict entries of one quantized layer from its packed codes: ``original`` = s * q and the
    quantizer's ``scale`` = s, so the quantizer reproduces q. ``entry``: name, tensor, bits, shape, axis;
    with ``mask`` the codes are those of the unmasked positions only (C order), the others 0."""
    b = entry["bits"]
    keep = None if mask is None else mask.detach().cpu().numpy().ravel() != 0
    n = int(np.prod(entry["shape"])) if keep is None else int(keep.sum())
    codes = unpack_bits(packed, b, n).astype(np.int64) - (2 ** (b - 1) - 1)
    if keep is not None:
        full = np.zeros(keep.size, dtype=np.int64)
        full[keep] = codes
        codes = full
    q = torch.from_numpy(codes.astype(np.float32)).reshape(entry["shape"])
    shape = [1] * q.dim()
    shape[entry["axis"]] = -1
    prefix = f"{entry['name']}.parametrizations.{entry['tensor']}"
    return {f"{prefix}.original": q * scales.reshape(shape), f"{prefix}.0.scale": scales}


def write_packed(model: nn.Module, path: str | os.PathLike) -> dict[str, Any]:
    """Write a fake-quantized model (:func:`bitalloc.quant.apply_plan`, on any device) as one safetensors file
    (module docstring); returns a size report: ``file_bytes``, ``payload_bytes`` (codes + scales),
    ``plan_size_bits``, ``header_bytes``, ``side_bytes`` ({"cdf", "masks", "rest"}: bytes of each)."""
    from safetensors.torch import save

    plan = plan_of(model)
    if not len(plan):
        raise ValueError("export_packed needs a fake-quantized model (apply_plan first); this one has no plan")
    tensors: dict[str, torch.Tensor] = {}
    entries, skip, payload, plan_size = [], set(), 0, 0
    tables, side = {}, {"cdf": 0, "masks": 0, "rest": 0}
    for name, m in quantized_layers(model).items():
        q, t = weight_quantizer(m), quantized_tensor_name(m)
        w = getattr(m.parametrizations, t).original.detach()
        codes = q.integers(w).cpu().numpy().astype(np.int64)
        scales = q.effective_scale().detach().cpu().to(torch.float32).contiguous()
        entry = {"name": name, "tensor": t, "bits": q.bits, "shape": list(w.shape), "axis": q.axis,
                 "channels": int(scales.numel())}
        if q.mask is not None:  # masked weights are zero by construction: not stored (layer_size_bits)
            entry["mask"] = f"{name}.mask"
            mask = q.mask.detach().cpu().to(torch.int64)
            tensors[f"masks/{name}.mask"] = _bytes_tensor(pack_bits(mask.numpy().ravel() != 0, 1))
            side["masks"] += tensors[f"masks/{name}.mask"].numel()
            codes = codes.ravel()[mask.numpy().ravel() != 0]
        tensors[f"codes/{name}"] = _bytes_tensor(pack_bits(codes.ravel() + q.qmax, q.bits))
        tensors[f"scales/{name}"] = scales
        entries.append(entry)
        payload += tensors[f"codes/{name}"].numel() + 4 * scales.numel()
        plan_size += layer_size_bits(m, q.bits)
        skip |= {f"{name}.parametrizations.{t}.original", f"{name}.parametrizations.{t}.0.scale"}
    state = {k: v.detach().cpu() for k, v in model.state_dict().items() if k not in skip}
    for key, value in state.items():
        lengths = state.get(key.removesuffix("_quantized_cdf") + "_cdf_length")
        compact = (_compact_cdf(value, lengths) if key.endswith("._quantized_cdf") and value.dim() == 2
                   and lengths is not None and len(lengths) == len(value) else None)
        if compact is not None:
            tensors[f"cdf/{key}"], tables[key] = compact, list(value.shape)
            side["cdf"] += 2 * compact.numel()
        elif f"masks/{key}" in tensors:
            continue  # a quantized layer's mask, stored above
        elif _is_mask(key, value, model):
            tensors[f"masks/{key}"] = _bytes_tensor(pack_bits(value.to(torch.int64).numpy().ravel(), 1))
            side["masks"] += tensors[f"masks/{key}"].numel()
        else:
            tensors[f"rest/{key}"] = value.contiguous()
            side["rest"] += value.numel() * value.element_size()
    meta = {k: v for k, v in (getattr(model, "meta", None) or {}).items() if k in _META_KEYS}
    metadata = {"format": PACKED_FORMAT, "version": str(PACKED_VERSION), "plan": plan.to_json(),
                "model": json.dumps({"model_class": type(model).__name__, **meta}, sort_keys=True),
                "layers": json.dumps(entries, separators=(",", ":")),
                "tables": json.dumps(tables, separators=(",", ":"))}
    data = save(tensors, metadata=metadata)
    path = Path(path)
    atomic_write(path, lambda fh: fh.write(data))
    header = 8 + int.from_bytes(data[:8], "little")
    return {"path": str(path), "format": f"{PACKED_FORMAT} {PACKED_VERSION} (safetensors)",
            "file_bytes": path.stat().st_size, "header_bytes": header, "payload_bytes": payload,
            "plan_size_bits": plan_size, "plan_size_bytes": plan_size / 8, "side_bytes": side}


def _build(path: Path, model_meta: dict, factory: Callable[[], nn.Module] | None) -> nn.Module:
    if factory is not None:
        return factory()
    from bitalloc.models.registry import build_model, check_model

    if "architecture" not in model_meta:
        raise ValueError(f"{path} names no zoo architecture (its model is a {model_meta.get('model_class')}); "
                         "pass model_factory= to build it")
    spec = check_model(model_meta["architecture"])
    channels = tuple(int(model_meta[k]) for k in ("N", "M") if k in model_meta)
    quality, size = model_meta.get("quality"), model_meta.get("size", "compact")
    if quality is not None and quality in spec.qualities_for(size) and spec.channels(quality, size) == channels:
        return build_model(spec.name, quality, size)
    return spec.cls(*channels)


def read_packed(path: str | os.PathLike, model_factory: Callable[[], nn.Module] | None = None) -> nn.Module:
    """The fake-quantized model stored by :func:`write_packed` (eval mode, ``meta`` restored)."""
    from safetensors import safe_open

    path = Path(path)
    with safe_open(str(path), framework="pt") as f:
        md = f.metadata() or {}
        if md.get("format") != PACKED_FORMAT or md.get("version") != str(PACKED_VERSION):
            raise ValueError(f"{path} is a safetensors file but not a bitalloc packed model of version "
                             f"{PACKED_VERSION} (format {md.get('format')!r}, version {md.get('version')!r})")
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    model_meta, tables = json.loads(md["model"]), json.loads(md["tables"])
    model = _build(path, model_meta, model_factory)
    apply_plan(model, BitPlan.from_json(md["plan"]), keep_float=True, inplace=True)  # activation bits included
    state = {k.removeprefix("rest/"): v for k, v in tensors.items() if k.startswith("rest/")}
    for key, shape in tables.items():
        lengths = state[key.removesuffix("_quantized_cdf") + "_cdf_length"]
        state[key] = _expand_cdf(tensors[f"cdf/{key}"], lengths, tuple(shape))
    reference, entries = model.state_dict(), json.loads(md["layers"])
    shapes = {e["mask"]: e["shape"] for e in entries if "mask" in e}
    masks = {}
    for k in (k for k in tensors if k.startswith("masks/")):
        key = k.removeprefix("masks/")
        shape = shapes[key] if key in shapes else list(reference[key].shape)
        bits = unpack_bits(tensors[k].numpy().tobytes(), 1, int(np.prod(shape)))
        masks[key] = torch.from_numpy(bits.astype(np.float32)).reshape(shape)
        if key in reference:
            state[key] = masks[key].to(reference[key].dtype)
    for e in entries:
        state.update(layer_state(e, tensors[f"codes/{e['name']}"].numpy().tobytes(), tensors[f"scales/{e['name']}"],
                                 masks.get(e.get("mask"))))
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ValueError(f"{path} does not fit the model it names ({model_meta.get('model_class')}): "
                         f"{str(exc).splitlines()[-1].strip()[:300]}") from None
    for e in (e for e in entries if "mask" in e):  # the quantizer's own copy of its layer's mask
        weight_quantizer(model.get_submodule(e["name"])).mask.copy_(masks[e["mask"]])
    if {k: v for k, v in model_meta.items() if k != "model_class"}:
        model.meta = {k: v for k, v in model_meta.items() if k != "model_class"}
    return model.eval()
