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

**Which layers to correct** is not one rule. Corrections of layers that feed each other do not simply add up (the
hyper-analysis's shift moves ``z``, which the hyper-synthesis's shift was measured without), and the entropy
coder does not code at the predicted scales but at the next entry of its scale table up
(:mod:`bitalloc.models.losses`, ``rate="coded"``), which partly absorbs a hyper-synthesis that predicts too low.
On the compact Scale Hyperprior q3 with the ILP's 6-bit plan (``studies/rate_breakdown.py``, 24 Kodak images, real
bitstreams) correcting every layer costs 1.0 % rate (0.370 -> 0.374 bpp), correcting g_a, g_s and the
hyper-analysis only saves 0.5 % (0.368); at 4 bits correcting everything cuts the plan's rate by 38 % (0.690 ->
0.429). :func:`choose_bias_correction` measures every combination of the plan's transforms (g_a,
h_a, h_s, g_s, ...: the :func:`bitalloc.graph.branch_of` groups) on the calibration crops with the *coded* RD loss
and keeps the best; the likelihood loss would keep them all (it charges the too-low scales the coder absorbs).
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass
from typing import Any, Callable, Collection, Mapping

import pandas as pd

import torch
import torch.nn as nn
import torch.nn.functional as F

from bitalloc.graph import branch_of, quantizable_layers
from bitalloc.objective import Loss, evaluate_loss, is_compressai_model, model_device, model_lambda, resolve_loss

__all__ = ["BIAS_BUFFER", "BiasChoice", "BiasCorrector", "choose_bias_correction", "correct_bias", "correctable",
           "keep_bias_shift", "set_bias_shifts", "undo_bias_shift"]

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
    """Make ``shifts`` ({layer: shift}) the bias shifts of ``model``: each named layer carries its shift (replacing
    any it had), every other layer gets its float bias back."""
    layers = quantizable_layers(model)
    for m in layers.values():
        undo_bias_shift(m)
    for name, shift in shifts.items():
        m = layers[name]
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
    set_bias_shifts(qmodel, shifts)  # a layer left out loses any shift an earlier call gave it
    return shifts


@dataclass
class BiasChoice:
    """What :func:`choose_bias_correction` chose: the corrected ``groups`` and ``layers`` with their ``shifts``,
    and ``measured``: one row per combination of groups (``groups`` joined by "+", "none" for none), its mean
    ``loss`` (and the loss's other parts) on the calibration crops and the standard error ``loss_se`` over them,
    the chosen row flagged in ``chosen``."""

    groups: tuple[str, ...]
    layers: tuple[str, ...]
    shifts: dict[str, torch.Tensor]
    measured: pd.DataFrame

    @staticmethod
    def label_of(groups) -> str:
        """How a combination of groups is named: joined by "+", "none" for none."""
        return "+".join(groups) or "none"

    @property
    def label(self) -> str:
        """The chosen combination's name (:meth:`label_of`)."""
        return self.label_of(self.groups)


def choose_bias_correction(qmodel: nn.Module, images: Any, *, crop: int = 256, limit: int | None = 4,
                           loss: Loss | None = None, lmbda: float | None = None,
                           groups: Mapping[str, Collection[str]] | None = None, max_groups: int = 6) -> BiasChoice:
    """Correct the biases of a fake-quantized model in place, by the groups of layers that measure best together
    (module docstring); returns a :class:`BiasChoice`.

    Every combination of ``groups`` (default: the plan's corrected layers by transform, g_a / h_a / h_s / g_s
    ...) is measured on the calibration crops (``images``, ``crop``, ``limit`` as :func:`correct_bias` takes
    them), the one with the lowest mean loss is kept (a tie goes to fewer groups). ``loss``: what is measured;
    default, a CompressAI model's RD loss at its lambda (``lmbda`` overrides it) with the *coded* rate
    (:func:`bitalloc.models.losses.coded_rate`), what the bitstream costs; any other model needs ``loss=``.
    ``max_groups``: at most this many groups (2^groups combinations are measured). A group naming a layer the plan
    does not correct is a ValueError naming it.
    """
    from bitalloc.models.losses import rd_loss_fn
    from bitalloc.repair_search import standard_error
    from bitalloc.sensitivity.calibration import calibration_batches
    from bitalloc.sensitivity.probe import per_sample_batches

    if loss is None and is_compressai_model(qmodel):
        loss = rd_loss_fn(model_lambda(qmodel, lmbda), rate="coded")
    objective = resolve_loss(qmodel, loss, lmbda)
    shifts = correct_bias(qmodel, images, crop=crop, limit=limit, loss=objective)  # every layer's shift, set
    if groups is None:
        groups = {}
        for name in shifts:
            groups.setdefault(branch_of(name), []).append(name)
    groups = {str(g): tuple(layers) for g, layers in groups.items()}
    for g, layers in groups.items():
        unknown = sorted(set(layers) - set(shifts))
        if unknown:
            raise ValueError(f"choose_bias_correction: layer '{unknown[0]}' of group '{g}' is not a corrected layer "
                             f"of this plan (quantized, with a bias)")
    if not 1 <= len(groups) <= max_groups:
        raise ValueError(f"choose_bias_correction: {len(groups)} groups ({', '.join(groups) or 'none'}); it measures "
                         f"2^groups combinations, so give between 1 and max_groups={max_groups}")
    batches = per_sample_batches(calibration_batches(images, crop=crop, limit=limit, device=model_device(qmodel)))
    names = list(groups)
    combos = sorted((c for k in range(len(names) + 1) for c in itertools.combinations(names, k)), key=len)

    def shifts_of(combo) -> dict[str, torch.Tensor]:
        return {n: shifts[n] for g in combo for n in groups[g]}

    rows = []
    for combo in combos:
        set_bias_shifts(qmodel, shifts_of(combo))
        per = pd.DataFrame([evaluate_loss(qmodel, objective, [b]) for b in batches])
        rows.append({"groups": BiasChoice.label_of(combo), "n_groups": len(combo), **per.mean().to_dict(),
                     "loss_se": standard_error(per["loss"].to_numpy()) if len(per) > 1 else float("nan")})
    measured = pd.DataFrame(rows)
    best = int(measured["loss"].idxmin())  # the first minimum: fewest groups on a tie
    measured["chosen"] = measured.index == best
    chosen = shifts_of(combos[best])
    set_bias_shifts(qmodel, chosen)
    return BiasChoice(groups=tuple(combos[best]), layers=tuple(chosen), shifts=chosen, measured=measured)
