"""Cached sensitivity pipelines, registered by model class: re-run only what a quantized layer changes.

One float pass stores the input of every top-level child of the model's ``nn.Sequential`` transforms and every
intermediate of its data flow. For the Scale / Mean-Scale Hyperprior::

    x -g_a-> y -h_a-> z -EB-> z_hat, p(z) -h_s-> scales(, means) -GC-> y_hat, p(y) -g_s-> x_hat

quantizing a layer of g_a re-runs the suffix of g_a and everything after it; of h_a: the suffix of h_a, the
entropy bottleneck, h_s and p(y); of h_s: the suffix of h_s and p(y); of g_s: the suffix of g_s only. g_s is
re-run after an h_a/h_s change only when y_hat changed (with means; never for the Scale Hyperprior, whose
y_hat = round(y)). For the joint autoregressive models (``mbt2018``, and ``cheng2020-anchor``/``-attn``,
whose transforms are sequences of residual blocks: a layer inside block i re-runs the sequence from block i)::

    x -g_a-> y -round-> y_hat -g_s-> x_hat
             y -h_a-> z -EB-> z_hat, p(z) -h_s-> params  \\
             y_hat -context_prediction-> ctx  ------------ cat -entropy_parameters-> scales, means -GC-> p(y)

y_hat = round(y) does not depend on the hyperprior there, so an h_a, h_s, context or entropy-parameters layer
re-runs only its part of the p(y) branch, and g_s only for a g_a layer.

The registry is keyed by class and looked up along the model's MRO (``isinstance``: a subclass uses its
nearest registered ancestor's pipeline). A pipeline only serves the default rate-distortion loss; it is used
after checking that its float pass reproduces the model's own forward (a subclass that changes ``forward``
falls back to full forward passes, "naive"). Layers a pipeline does not know (outside its transforms) are
measured naively.
"""

from __future__ import annotations

from typing import Callable, TypeVar

import torch
import torch.nn as nn
from compressai.models import JointAutoregressiveHierarchicalPriors, MeanScaleHyperprior, ScaleHyperprior

__all__ = ["CachedPipeline", "NotCacheable", "pipeline_for", "register_pipeline"]

_PIPELINES: dict[type, type["CachedPipeline"]] = {}
P = TypeVar("P", bound=type)


class NotCacheable(Exception):
    """The model's structure does not fit the pipeline (the message says which part)."""


def register_pipeline(*model_classes: type) -> Callable[[P], P]:
    """Class decorator: use this :class:`CachedPipeline` for ``model_classes`` and their subclasses."""
    def decorate(cls: P) -> P:
        for model_cls in model_classes:
            _PIPELINES[model_cls] = cls
        return cls
    return decorate


def pipeline_for(model: nn.Module) -> type["CachedPipeline"] | None:
    """The pipeline registered for the nearest class in ``type(model).__mro__``, or None."""
    for cls in type(model).__mro__:
        if cls in _PIPELINES:
            return _PIPELINES[cls]
    return None


class CachedPipeline:
    """Base: ``__init__`` runs the float pass on ``x`` and caches; :meth:`run_from` re-runs downstream of a layer
    (returning the model's output dict), or returns None for a layer it cannot shortcut."""

    SEQS: tuple[str, ...] = ()

    def __init__(self, model: nn.Module, x: torch.Tensor):
        for seq in self.SEQS:
            if not isinstance(getattr(model, seq, None), nn.Sequential):
                raise NotCacheable(f"{type(model).__name__}.{seq} is not an nn.Sequential")
        self.m, self.x = model, x
        self.inputs: dict[str, torch.Tensor] = {}
        self.float_pass()

    def float_pass(self) -> None:
        raise NotImplementedError

    def outputs(self) -> dict:
        """The float pass's output dict (``x_hat``, ``likelihoods``), to compare with ``model(x)``."""
        return self.out(self.y_lik, self.z_lik, self.x_hat)

    def run_from(self, layer: str) -> dict | None:
        where = self.split(layer)
        if where is None:
            return None
        seq, idx = where
        return self.rerun(seq, idx, self.inputs[f"{seq}.{idx}"])

    def rerun(self, seq: str, idx: int, inp: torch.Tensor) -> dict:
        """The output dict with child ``idx`` of sequence ``seq`` and everything downstream re-run on ``inp``."""
        raise NotImplementedError

    @staticmethod
    def out(y_lik: torch.Tensor, z_lik: torch.Tensor, x_hat: torch.Tensor) -> dict:
        return {"x_hat": x_hat, "likelihoods": {"y": y_lik, "z": z_lik}}

    def split(self, layer: str) -> tuple[str, int] | None:
        """``("g_a", 3)`` for ``"g_a.3"`` or ``"g_a.3.conv1"``; None outside the pipeline's sequences."""
        parts = layer.split(".")
        if len(parts) >= 2 and parts[0] in self.SEQS and parts[1].isdigit():
            return parts[0], int(parts[1])
        return None

    def seq(self, name: str, start: int, inp: torch.Tensor, cache: bool = False) -> torch.Tensor:
        mods = getattr(self.m, name)
        for i in range(start, len(mods)):
            if cache:
                self.inputs[f"{name}.{i}"] = inp
            inp = mods[i](inp)
        return inp


@register_pipeline(ScaleHyperprior)
class ScaleHyperpriorPipeline(CachedPipeline):
    """CompressAI's ScaleHyperprior (bmshj2018-hyperprior), eval mode."""

    SEQS = ("g_a", "h_a", "h_s", "g_s")
    mean = False

    def float_pass(self) -> None:
        self.y = self.seq("g_a", 0, self.x, cache=True)
        self.z_lik, self.y_hat, self.y_lik, self.x_hat = self._from_y(self.y, cache=True)

    def _p_y(self, y: torch.Tensor, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.mean:
            scales_hat, means_hat = params.chunk(2, 1)
            return self.m.gaussian_conditional(y, scales_hat, means=means_hat)
        return self.m.gaussian_conditional(y, params)

    def _from_y(self, y: torch.Tensor, cache: bool = False) -> tuple[torch.Tensor, ...]:
        inp = y if self.mean else torch.abs(y)
        z_hat, z_lik = self.m.entropy_bottleneck(self.seq("h_a", 0, inp, cache))
        y_hat, y_lik = self._p_y(y, self.seq("h_s", 0, z_hat, cache))
        return z_lik, y_hat, y_lik, self.seq("g_s", 0, y_hat, cache)

    def _g_s_if_changed(self, y_hat: torch.Tensor) -> torch.Tensor:
        return self.x_hat if torch.equal(y_hat, self.y_hat) else self.seq("g_s", 0, y_hat)

    def rerun(self, seq: str, idx: int, inp: torch.Tensor) -> dict:
        if seq == "g_a":
            z_lik, _, y_lik, x_hat = self._from_y(self.seq("g_a", idx, inp))
        elif seq == "h_a":
            z_hat, z_lik = self.m.entropy_bottleneck(self.seq("h_a", idx, inp))
            y_hat, y_lik = self._p_y(self.y, self.seq("h_s", 0, z_hat))
            x_hat = self._g_s_if_changed(y_hat)
        elif seq == "h_s":
            y_hat, y_lik = self._p_y(self.y, self.seq("h_s", idx, inp))
            z_lik, x_hat = self.z_lik, self._g_s_if_changed(y_hat)
        else:
            y_lik, z_lik, x_hat = self.y_lik, self.z_lik, self.seq("g_s", idx, inp)
        return self.out(y_lik, z_lik, x_hat)


@register_pipeline(MeanScaleHyperprior)
class MeanScaleHyperpriorPipeline(ScaleHyperpriorPipeline):
    """CompressAI's MeanScaleHyperprior (mbt2018-mean): h_a reads y, h_s predicts scales and means."""

    mean = True


@register_pipeline(JointAutoregressiveHierarchicalPriors)
class JointAutoregressivePipeline(CachedPipeline):
    """CompressAI's JointAutoregressiveHierarchicalPriors (mbt2018) and its subclasses Cheng2020Anchor and
    Cheng2020Attention (same forward), eval mode."""

    SEQS = ("g_a", "h_a", "h_s", "entropy_parameters", "g_s")
    CONTEXT = "context_prediction"

    def float_pass(self) -> None:
        self.y = self.seq("g_a", 0, self.x, cache=True)
        self.z_lik, self.y_hat, self.params, self.ctx, self.y_lik, self.x_hat = self._from_y(self.y, cache=True)

    def _y_lik(self, y: torch.Tensor, params: torch.Tensor | None, ctx: torch.Tensor | None, start: int = 0,
               inp: torch.Tensor | None = None, cache: bool = False) -> torch.Tensor:
        if inp is None:
            inp = torch.cat((params, ctx), dim=1)
        scales_hat, means_hat = self.seq("entropy_parameters", start, inp, cache).chunk(2, 1)
        return self.m.gaussian_conditional(y, scales_hat, means=means_hat)[1]

    def _from_y(self, y: torch.Tensor, cache: bool = False) -> tuple[torch.Tensor, ...]:
        z_hat, z_lik = self.m.entropy_bottleneck(self.seq("h_a", 0, y, cache))
        params = self.seq("h_s", 0, z_hat, cache)
        y_hat = self.m.gaussian_conditional.quantize(y, "dequantize")
        ctx = getattr(self.m, self.CONTEXT)(y_hat)
        y_lik = self._y_lik(y, params, ctx, cache=cache)
        return z_lik, y_hat, params, ctx, y_lik, self.seq("g_s", 0, y_hat, cache)

    def run_from(self, layer: str) -> dict | None:
        if layer == self.CONTEXT:
            ctx = getattr(self.m, self.CONTEXT)(self.y_hat)
            return self.out(self._y_lik(self.y, self.params, ctx), self.z_lik, self.x_hat)
        return super().run_from(layer)

    def rerun(self, seq: str, idx: int, inp: torch.Tensor) -> dict:
        if seq == "g_a":
            z_lik, _, _, _, y_lik, x_hat = self._from_y(self.seq("g_a", idx, inp))
            return self.out(y_lik, z_lik, x_hat)
        if seq == "h_a":
            z_hat, z_lik = self.m.entropy_bottleneck(self.seq("h_a", idx, inp))
            return self.out(self._y_lik(self.y, self.seq("h_s", 0, z_hat), self.ctx), z_lik, self.x_hat)
        if seq == "h_s":
            return self.out(self._y_lik(self.y, self.seq("h_s", idx, inp), self.ctx), self.z_lik, self.x_hat)
        if seq == "entropy_parameters":
            return self.out(self._y_lik(self.y, None, None, idx, inp), self.z_lik, self.x_hat)
        return self.out(self.y_lik, self.z_lik, self.seq("g_s", idx, inp))
