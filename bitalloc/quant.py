"""Applying a bit plan to a model: fake-quantized layers by ``torch.nn.utils.parametrize``.

A plan ({layer: bits}) is applied with ``torch.nn.utils.parametrize``: the layer's ``weight`` (GDN: ``gamma``)
becomes ``WeightQuantizer(original)``, which works for every layer type (ConvTranspose2d included) without
re-implementing their forward passes. The quantizers themselves (grid, calibration, gradient estimators, LSQ)
are in :mod:`bitalloc.fake_quant` and re-exported here. A layer the plan gives an activation bit-width gets an
:class:`~bitalloc.act_quant.ActQuantizer` on its input (``input_quantizer``, run by a forward pre-hook), which
must be calibrated (:func:`bitalloc.act_quant.calibrate_activations`) before the model is evaluated.

A layer that masks its weight in its own forward by writing ``self.weight.data`` (CompressAI's
``MaskedConv2d``, the causal context model of ``mbt2018`` and ``cheng2020-*``) would lose its mask once the
weight is parametrized (the write lands on a temporary), and the forward pass would see future latents while
``compress()`` masks. :func:`weight_mask` finds such a mask and the quantizer applies it, so the quantized
weight is masked in every forward pass, before and after fine-tuning.
"""

from __future__ import annotations

import copy
from typing import Any, Collection, Mapping

import torch
import torch.nn as nn
from torch.nn.utils import parametrize

from bitalloc.act_quant import ActQuantizer
from bitalloc.bias_correction import undo_bias_shift
from bitalloc.fake_quant import (CALIBRATIONS, ESTIMATORS, MAX_BITS, MIN_BITS, RoundClamp, WeightQuantizer,
                                 calibrate_range, check_bits, check_choice, dgm_grad, fake_quantize)
from bitalloc.graph import channel_axis, is_gdn, quantizable_layers
from bitalloc.plan import BitPlan

__all__ = [
    "CALIBRATIONS", "ESTIMATORS", "MAX_BITS", "MIN_BITS", "ActQuantizer", "RoundClamp", "WeightQuantizer",
    "apply_plan", "calibrate_range", "check_bits", "dgm_grad", "fake_quantize", "layer_size_bits", "plan_of",
    "quant_axis", "quantize_weight", "quantized_tensor_name", "remove_plan", "weight_mask", "weight_quantizer",
]


def _quantize_input(module: nn.Module, args: tuple) -> tuple:
    return (module.input_quantizer(args[0]),) + tuple(args[1:])


def quantized_tensor_name(module: nn.Module) -> str:
    """``"gamma"`` for GDN, else ``"weight"``."""
    return "gamma" if is_gdn(module) else "weight"


def layer_size_bits(module: nn.Module, bits: int) -> int:
    """Storage of a layer at ``bits``: n_weights * bits + n_channels * 32 (one float32 scale per channel).

    The one size convention shared by cost tables, allocators and :mod:`bitalloc.export`; biases, zero-points
    and entropy tables are not part of a plan. Weights a mask forces to zero (:func:`weight_mask`, a context
    model's causal mask) are not stored, so n_weights counts the unmasked ones.
    """
    w = _original(module)
    mask = weight_mask(module)
    n = int(w.numel()) if mask is None else int(torch.count_nonzero(mask))
    return n * int(bits) + int(w.shape[quant_axis(module)]) * 32


def quant_axis(module: nn.Module) -> int:
    """The axis of a layer's quantized tensor that holds one scale per channel: 0 for GDN's gamma, else the
    output-channel axis (:func:`bitalloc.graph.channel_axis`: 1 for ConvTranspose, 0 otherwise)."""
    return 0 if is_gdn(module) else channel_axis(module)


def _original(module: nn.Module) -> torch.Tensor:
    name = quantized_tensor_name(module)
    if parametrize.is_parametrized(module, name):
        return getattr(module.parametrizations, name).original
    return getattr(module, name)


def weight_quantizer(module: nn.Module) -> WeightQuantizer | None:
    """The :class:`WeightQuantizer` parametrizing a layer's quantized tensor, or None for a float layer."""
    name = quantized_tensor_name(module)
    if parametrize.is_parametrized(module, name):
        for p in getattr(module.parametrizations, name):
            if isinstance(p, WeightQuantizer):
                return p
    return None


def _own_parametrized_class(module: nn.Module) -> None:
    """Give a parametrized layer a class of its own. ``copy.deepcopy`` of a parametrized module shares the class
    torch injected (it holds the ``weight`` property), and removing a parametrization deletes that property from
    the class: without this, removing the plan from a copy would break the original's ``weight``."""
    cls = type(module)
    body = {k: v for k, v in vars(cls).items() if k not in ("__dict__", "__weakref__")}
    module.__class__ = type(cls.__name__, cls.__bases__, body)


def remove_plan(model: nn.Module) -> nn.Module:
    """Turn every fake-quantized layer back into a float layer holding its *original* weights (in place), the
    float bias of a bias-corrected layer (:func:`bitalloc.correct_bias`) included.

    Safe on a deep copy of a quantized model: the model it was copied from keeps its plan."""
    for m in quantizable_layers(model, gdn=True).values():
        undo_bias_shift(m)
        name = quantized_tensor_name(m)
        if parametrize.is_parametrized(m, name):
            _own_parametrized_class(m)
            parametrize.remove_parametrizations(m, name, leave_parametrized=False)
        if hasattr(m, "input_quantizer"):
            del m.input_quantizer
            for k, h in list(m._forward_pre_hooks.items()):
                if h is _quantize_input:
                    del m._forward_pre_hooks[k]
    return model


def apply_plan(model: nn.Module, plan: BitPlan | Mapping[str, int], *, keep_float: bool | Collection[str] = (),
               estimator: str = "ste", calibration: str = "minmax", learn_scale: bool = False,
               alpha: float = 0.01, beta: float = 2.0, act_bits: int | Mapping[str, int] | None = None,
               inplace: bool = False) -> nn.Module:
    """Fake-quantize ``model`` by ``plan`` ({layer: bits}); returns a copy unless ``inplace``.

    Every Conv2d/ConvTranspose2d/Linear must be in the plan unless ``keep_float`` is True or names it; GDN layers
    are quantized (their gamma) only when the plan names them. A plan naming a layer the model lacks, a missing
    layer, or bits outside 2..16 raise ValueError naming the layer. An already quantized model is re-planned
    from its original weights.

    Activation bits: a :class:`BitPlan`'s ``act_bits`` ({layer: bits}), or ``act_bits`` here (one int for every
    non-GDN layer of the plan, or {layer: bits}); not both. Each such layer gets an uncalibrated
    :class:`ActQuantizer`: run :func:`bitalloc.act_quant.calibrate_activations` before evaluating.
    """
    bits = dict(plan.bits if isinstance(plan, BitPlan) else plan)
    acts = dict(plan.act_bits) if isinstance(plan, BitPlan) else {}
    if act_bits is not None and acts:
        raise ValueError("apply_plan: the plan has activation bits and act_bits= was passed too; pass one")
    check_choice(estimator, ESTIMATORS, "gradient estimator")
    check_choice(calibration, CALIBRATIONS, "calibration")
    out = model if inplace else copy.deepcopy(model)
    remove_plan(out)
    required = quantizable_layers(out)
    candidates = quantizable_layers(out, gdn=True)
    for name in bits:
        if name not in candidates:
            raise ValueError(f"plan names layer '{name}', which is not a quantizable layer of "
                             f"{type(model).__name__}; quantizable layers: {', '.join(candidates)}")
        check_bits(bits[name], name)
    if act_bits is not None:
        acts = (dict(act_bits) if isinstance(act_bits, Mapping)
                else {n: act_bits for n in bits if not is_gdn(candidates[n])})
    for name, b in acts.items():
        if name not in bits:
            raise ValueError(f"activation bits for layer '{name}', which has no weight bits in the plan")
        if is_gdn(candidates[name]):
            raise ValueError(f"activation bits for layer '{name}', a GDN layer: only Conv/ConvTranspose/Linear "
                             "inputs are quantized")
        check_bits(b, name)
    if keep_float is not True:
        floats = set(keep_float or ())
        unknown = floats - set(candidates)
        if unknown:
            raise ValueError(f"keep_float names layer '{sorted(unknown)[0]}', which is not a quantizable layer")
        for name in required:
            if name not in bits and name not in floats:
                raise ValueError(f"quantizable layer '{name}' has no bits in the plan; add it to the plan or "
                                 "pass keep_float=True (or a list naming it) to keep it in float")
    for name, b in bits.items():
        m = candidates[name]
        tname = quantized_tensor_name(m)
        q = WeightQuantizer(getattr(m, tname), b, quant_axis(m), estimator=estimator, calibration=calibration,
                            learn_scale=learn_scale, alpha=alpha, beta=beta, layer=name, mask=weight_mask(m))
        parametrize.register_parametrization(m, tname, q)
        if name in acts:
            m.input_quantizer = ActQuantizer(acts[name], layer=name)
            m.register_forward_pre_hook(_quantize_input)
    return out


def plan_of(model: nn.Module, **meta: Any) -> BitPlan:
    """The bit plan a fake-quantized model carries, activation bits included (float layers are absent)."""
    bits, acts = {}, {}
    for name, m in quantizable_layers(model, gdn=True).items():
        q = weight_quantizer(m)
        if q is not None:
            bits[name] = q.bits
            if isinstance(getattr(m, "input_quantizer", None), ActQuantizer):
                acts[name] = m.input_quantizer.bits
    return BitPlan(bits, meta, acts)


def weight_mask(module: nn.Module) -> torch.Tensor | None:
    """The mask a layer multiplies its weight by in its forward pass, or None.

    A tensor attribute ``mask`` of the weight's shape, as CompressAI's ``MaskedConv2d`` registers (its causal
    mask: zero at the current and every later position of the raster scan).
    """
    mask = getattr(module, "mask", None)
    w = _original(module)
    return mask if isinstance(mask, torch.Tensor) and mask.shape == w.shape else None


def quantize_weight(module: nn.Module, bits: int, calibration: str = "minmax") -> torch.Tensor:
    """The float layer's quantized tensor fake-quantized to ``bits`` (minmax/percentile/mse calibration, masked
    like :func:`apply_plan` does), detached: what a plan at ``bits`` computes for this layer alone."""
    w = _original(module).detach()
    q = WeightQuantizer(w, bits, quant_axis(module), calibration=calibration, mask=weight_mask(module))
    with torch.no_grad():
        return q(w)
