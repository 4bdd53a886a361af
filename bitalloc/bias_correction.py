"""Bias correction: each quantized layer's bias absorbs the mean output error of its own weight quantization.

Quantizing a weight tensor moves the mean of the layer's output: per output channel c, on the calibration data,
``shift_c = mean(conv(x, W) - conv(x, W_q))_c``, the mean taken over samples and positions of the layer's *float*
input ``x`` (Nagel et al., "Data-Free Quantization Through Weight Equalization and Bias Correction", 2019: the
empirical variant). Adding ``shift`` to the bias removes that mean error. In a hyperprior the shift matters most
where the output feeds the entropy model: a biased hyper-synthesis predicts scales that no longer fit the latent,
and the rate of ``y`` grows although the image barely changes. Measured on the compact Scale Hyperprior q6 with
the ILP's 4-bit plan (6 Kodak images): 1.90 bpp without correction, 0.72 with (FP32: 0.62), PSNR 27.95 / 27.91 dB.

Each layer's shift depends on that layer's weights and bits only (its input is the float model's), so a cost
table measured with correction stays a table of single-layer costs, and a whole plan's correction is the sum of
its layers' own: :func:`bitalloc.measure_sensitivity`, :func:`bitalloc.measure_interactions`,
:func:`bitalloc.check_plan` and :func:`bitalloc.verify_and_repair` take ``bias_correction=True`` and measure the
model that :func:`correct_bias` builds. Layers without a bias and GDN layers are left as they are.

:class:`BiasCorrector` computes the shifts of many (layer, bits) at once in one float pass over the batches and
caches them; :func:`correct_bias` corrects a fake-quantized model in place. The shift is kept on the layer as a
non-persistent buffer ``bias_correction``, so :func:`bitalloc.remove_plan` (and re-planning with
:func:`bitalloc.apply_plan`) restores the float bias; a baked (:func:`bitalloc.bake.bake`) or exported model keeps
the corrected bias.
"""

from __future__ import annotations

import copy
from typing import Any, Callable, Collection, Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from bitalloc.graph import quantizable_layers
from bitalloc.objective import Loss, evaluate_loss, model_device, resolve_loss

__all__ = ["BIAS_BUFFER", "BiasCorrector", "correct_bias", "correctable", "keep_bias_shift", "set_bias_shifts",
           "undo_bias_shift"]

#: the layer buffer holding the shift a corrected layer's bias carries
BIAS_BUFFER = "bias_correction"


def correctable(module: nn.Module) -> bool:
    """True for a Conv2d / ConvTranspose2d / Linear layer that has a bias (GDN and bias-free layers: False)."""
    return isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)) and module.bias is not None


def _weight_only(module: nn.Module, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """The layer's output on ``x`` with weight ``w`` and no bias (linear in ``w``)."""
    if isinstance(module, nn.Linear):
        return F.linear(x, w)
    if getattr(module, "padding_mode", "zeros") != "zeros":
        raise ValueError(f"bias correction supports zero padding only; layer {type(module).__name__} uses "
                         f"padding_mode={module.padding_mode!r}")
    if isinstance(module, nn.ConvTranspose2d):
        return F.conv_transpose2d(x, w, None, module.stride, module.padding, module.output_padding, module.groups,
                                  module.dilation)
    return F.conv2d(x, w, None, module.stride, module.padding, module.dilation, module.groups)


def _channel_sum(out: torch.Tensor, module: nn.Module) -> tuple[torch.Tensor, int]:
    """(per-output-channel sum in float64, number of values per channel) of a layer's output."""
    dim = out.dim() - 1 if isinstance(module, nn.Linear) else 1
    dims = [d for d in range(out.dim()) if d != dim]
    return out.double().sum(dim=dims), out.numel() // out.shape[dim]


class BiasCorrector:
    """The bias shifts of a float ``model``'s layers on fixed ``batches`` (module docstring).

    ``quantized(layer, bits)`` returns the layer's fake-quantized weight (what the plan computes); the shift of
    (layer, bits) is ``mean(x * (W - W_q))`` per output channel over the float model's inputs to the layer.
    ``objective`` runs the forward passes (:func:`bitalloc.objective.evaluate_loss`), as every measurement does.
    ``passes`` counts the float passes run.
    """

    def __init__(self, model: nn.Module, batches: list, quantized: Callable[[str, int], torch.Tensor], *,
                 objective: Loss | None = None):
        self.model, self.batches, self.quantized = model, list(batches), quantized
        self.objective = objective if objective is not None else resolve_loss(model, None, None)
        self.layers = quantizable_layers(model, gdn=True)  # GDN layers may be asked for; they get no shift
        self._shifts: dict[tuple[str, int], torch.Tensor] = {}
        self.passes = 0

    def shifts(self, wanted: Mapping[str, Any]) -> dict[tuple[str, int], torch.Tensor]:
        """{(layer, bits): shift} for ``wanted`` ({layer: bits or several bits}); correctable layers only, the
        missing ones computed together in one float pass."""
        asked = {(n, int(b)) for n, bs in wanted.items() for b in (bs if isinstance(bs, (list, tuple, set)) else [bs])}
        unknown = sorted(n for n, _ in asked if n not in self.layers)
        if unknown:
            raise ValueError(f"bias correction: layer '{unknown[0]}' is not a quantizable layer of "
                             f"{type(self.model).__name__}")
        asked = {k for k in asked if correctable(self.layers[k[0]])}
        missing = sorted(asked - set(self._shifts))
        if missing:
            self._measure(missing)
        return {k: self._shifts[k] for k in sorted(asked)}

    def plan_shifts(self, bits: Mapping[str, int]) -> dict[str, torch.Tensor]:
        """{layer: shift} of a plan ({layer: bits}): what :func:`set_bias_shifts` gives its quantized model."""
        return {name: shift for (name, _), shift in self.shifts(bits).items()}

    def _measure(self, keys: list[tuple[str, int]]) -> None:
        from bitalloc.quant import weight_mask  # (quant imports this module)

        by_layer: dict[str, list[tuple[int, torch.Tensor]]] = {}
        for name, b in keys:
            m = self.layers[name]
            mask = weight_mask(m)
            w = m.weight.detach() if mask is None else m.weight.detach() * mask  # what a masked layer computes with
            by_layer.setdefault(name, []).append((b, w - self.quantized(name, b).to(w)))
        sums: dict[tuple[str, int], torch.Tensor] = {}
        counts: dict[tuple[str, int], int] = {}

        def hook(module, args, name):
            for b, dw in by_layer[name]:
                s, n = _channel_sum(_weight_only(module, args[0], dw), module)
                sums[(name, b)] = sums.get((name, b), 0) + s
                counts[(name, b)] = counts.get((name, b), 0) + n

        handles = [self.layers[n].register_forward_pre_hook(lambda mod, args, n=n: hook(mod, args, n))
                   for n in by_layer]
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                for batch in self.batches:
                    evaluate_loss(self.model, self.objective, [batch])
        finally:
            self.model.train(was_training)
            for h in handles:
                h.remove()
        self.passes += 1
        for key in keys:
            if key not in counts:
                raise ValueError(f"bias correction: layer '{key[0]}' did not run in the forward pass, so its "
                                 "output error cannot be measured")
            bias = self.layers[key[0]].bias
            self._shifts[key] = (sums[key] / counts[key]).to(dtype=bias.dtype, device=bias.device)


def undo_bias_shift(module: nn.Module) -> None:
    """Take a corrected layer's shift back out of its bias (no-op for an uncorrected layer)."""
    shift = getattr(module, BIAS_BUFFER, None)
    if isinstance(shift, torch.Tensor):
        with torch.no_grad():
            module.bias.sub_(shift)
        delattr(module, BIAS_BUFFER)


def keep_bias_shift(module: nn.Module) -> None:
    """Make a corrected layer's bias its own: the shift stays in the bias and is no longer taken back out by
    :func:`bitalloc.remove_plan` (what a baked or exported model needs)."""
    if isinstance(getattr(module, BIAS_BUFFER, None), torch.Tensor):
        delattr(module, BIAS_BUFFER)


def set_bias_shifts(model: nn.Module, shifts: Mapping[str, torch.Tensor]) -> None:
    """Give each named layer of ``model`` the bias shift ``shifts[layer]`` (replacing any shift it had)."""
    layers = quantizable_layers(model)
    for name, shift in shifts.items():
        m = layers[name]
        undo_bias_shift(m)
        with torch.no_grad():
            m.bias.add_(shift)
        m.register_buffer(BIAS_BUFFER, shift.detach().clone(), persistent=False)


def correct_bias(qmodel: nn.Module, images: Any, *, crop: int = 256, limit: int | None = 4,
                 loss: Loss | None = None, lmbda: float | None = None,
                 layers: Collection[str] | None = None) -> dict[str, torch.Tensor]:
    """Correct the biases of a fake-quantized model in place (module docstring); returns {layer: shift}.

    ``images``: the calibration data, as :func:`bitalloc.sensitivity.calibration_batches` takes it (``crop``,
    ``limit``). The float inputs come from ``qmodel``'s own original weights; running it again re-computes the
    shifts from the float biases (it does not add up). ``loss`` / ``lmbda``: what runs the forward passes.
    ``layers``: correct only these quantized layers (None: every quantized layer with a bias); the others keep,
    or get back, their float bias. A name that is not a quantized layer of the plan is a ValueError naming it.
    """
    from bitalloc.quant import plan_of, remove_plan
    from bitalloc.sensitivity.calibration import calibration_batches

    plan = plan_of(qmodel)
    if not len(plan):
        raise ValueError("correct_bias needs a fake-quantized model (apply_plan first); this one has no plan")
    reference = remove_plan(copy.deepcopy(qmodel))  # the float model, float biases included
    layers_of = quantizable_layers(qmodel)
    batches = calibration_batches(images, crop=crop, limit=limit, device=model_device(qmodel))
    corrector = BiasCorrector(reference, batches, lambda name, b: layers_of[name].weight.detach(),
                              objective=resolve_loss(reference, loss, lmbda))
    if layers is not None:
        unknown = sorted(set(layers) - set(plan.bits))
        if unknown:
            raise ValueError(f"correct_bias: layer '{unknown[0]}' is not a quantized layer of this plan")
    chosen = set(plan.bits) if layers is None else set(layers)
    shifts = corrector.plan_shifts({n: b for n, b in plan.bits.items() if n in layers_of and n in chosen})
    for m in layers_of.values():  # a layer left out loses any shift an earlier call gave it
        undo_bias_shift(m)
    set_bias_shifts(qmodel, shifts)
    return shifts
