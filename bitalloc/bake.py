"""Baking a plan: a plain torch model with the fake-quantized weights written in.

``bake(qmodel)`` returns a copy of a fake-quantized model (:func:`bitalloc.quant.apply_plan`) in which every
quantized layer's weight (GDN: its stored ``gamma``) *is* the dequantized tensor ``s * q`` and no
parametrization is left: the model class is the original one (a CompressAI model, a torchvision network), so
its state dict loads into that class without bitalloc, and any runtime that runs the float model runs the plan.
The forward pass is exactly the fake-quantized one (the same tensor values reach the same operators); a masked
layer (CompressAI's ``MaskedConv2d``) gets its weight masked, as its own forward masks it again (0/1 mask: no
change).

Activation quantizers cannot be written into weights: :func:`bake` refuses a model that has them unless
``drop_activations=True`` (then the baked model runs float activations; :mod:`bitalloc.onnx_export` keeps them
as QuantizeLinear/DequantizeLinear pairs).

``export_baked(qmodel, path)`` writes the baked state dict as one safetensors file (float32) whose metadata holds
the plan and the model's ``meta``: ``safetensors.torch.load_file(path)`` reads it into the original class.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from bitalloc.atomic import atomic_write
from bitalloc.bias_correction import keep_bias_shift
from bitalloc.graph import quantizable_layers
from bitalloc.quant import plan_of, quantized_tensor_name, remove_plan, weight_quantizer

__all__ = ["bake", "baked_weights", "export_baked", "quantized_layers"]


def quantized_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The layers of ``model`` that carry a weight quantizer, by name (graph order)."""
    return {n: m for n, m in quantizable_layers(model, gdn=True).items() if weight_quantizer(m) is not None}


def _act_quantized(model: nn.Module) -> list[str]:
    return [n for n, m in quantizable_layers(model, gdn=True).items() if hasattr(m, "input_quantizer")]


@torch.no_grad()
def baked_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """``{"<layer>.<weight|gamma>": s * q}``: the dequantized tensor each quantized layer's forward uses."""
    out = {}
    for name, m in quantized_layers(model).items():
        t = quantized_tensor_name(m)
        out[f"{name}.{t}"] = getattr(m, t).detach().clone()  # the parametrization's output: s * q (masked)
    return out


def bake(qmodel: nn.Module, *, drop_activations: bool = False) -> nn.Module:
    """A copy of ``qmodel`` with the quantized weights written in and every parametrization removed (eval mode).

    Raises ValueError when ``qmodel`` carries no plan, or has activation quantizers and not ``drop_activations``.
    """
    if not len(plan_of(qmodel)):
        raise ValueError(f"bake needs a fake-quantized model (apply_plan first); this {type(qmodel).__name__} "
                         "has no plan")
    acts = _act_quantized(qmodel)
    if acts and not drop_activations:
        raise ValueError(f"layer '{acts[0]}' (and {len(acts) - 1} more) quantizes its input activations, which a "
                         "baked float model cannot hold; export ONNX (export_onnx keeps them as Q/DQ pairs) or "
                         "pass drop_activations=True to bake the weights only")
    out = copy.deepcopy(qmodel)
    for m in quantized_layers(out).values():
        _write_in(m)
        keep_bias_shift(m)  # a corrected bias (bitalloc.correct_bias) is part of what the plan computes
    remove_plan(out)  # the activation quantizers (dropped), nothing parametrized is left
    return out.eval()


def _write_in(m: nn.Module) -> None:
    """Replace ``m``'s parametrized tensor by a plain parameter holding its value, on ``m`` alone.

    ``torch.nn.utils.parametrize.remove_parametrizations`` deletes the tensor's property from the injected
    ``Parametrized<Class>``, which a deep copy shares with the model it was copied from: removing it on the copy
    would break ``qmodel``. Here only the copy's ``__class__`` changes (back to the original class).
    """
    t = quantized_tensor_name(m)
    with torch.no_grad():
        value = getattr(m, t).detach().clone()
    requires_grad = getattr(m.parametrizations, t).original.requires_grad
    original_class = type(m).__bases__[0]
    del m._modules["parametrizations"]
    m.__class__ = original_class
    setattr(m, t, nn.Parameter(value, requires_grad=requires_grad))


def export_baked(qmodel: nn.Module, path: str | os.PathLike, *, drop_activations: bool = False) -> dict[str, Any]:
    """Write ``bake(qmodel)``'s state dict (float32, CPU) to a safetensors file; returns a size report.

    Metadata (strings): ``format`` ("bitalloc.baked"), ``model_class``, ``plan`` (:meth:`BitPlan.to_json`), ``meta``
    (the model's ``meta`` as JSON, when it has one).
    """
    baked = bake(qmodel, drop_activations=drop_activations)
    state = {k: v.detach().cpu().contiguous() for k, v in baked.state_dict().items()}
    meta = {"format": "bitalloc.baked", "model_class": type(baked).__name__,
            "plan": plan_of(qmodel).to_json(),
            "meta": json.dumps(getattr(qmodel, "meta", None) or {}, sort_keys=True, default=str)}
    path = Path(path)
    atomic_write(path, lambda fh: fh.write(_safetensors_bytes(state, meta)))
    return {"path": str(path), "file_bytes": path.stat().st_size, "tensors": len(state)}


def _safetensors_bytes(state: dict[str, torch.Tensor], meta: dict[str, str]) -> bytes:
    from safetensors.torch import save

    return save(state, metadata=meta)
