"""The loss of a model with some layers quantized, on fixed batches: one home for every sensitivity measurement.

:class:`LossProbe` holds the float model, the objective, the calibration batches and (for the default RD loss
of a model with a registered pipeline, :mod:`bitalloc.sensitivity.pipelines`) one cached pipeline per batch.
:meth:`LossProbe.losses` swaps the fake-quantized weights of the layers of an assignment ``{layer: bits}`` into
the float model, re-runs only what they change, and returns the loss parts of every batch. With several layers,
the pipeline is re-run from one of them and forward hooks confirm that every other one ran in that re-run (a
Scale Hyperprior's g_s does not re-run after an h_s change, since y_hat = round(y) does not move): otherwise
that batch is evaluated by a full forward pass, which is always right. :func:`measure_sensitivity` (one layer at
a time) and :func:`bitalloc.measure_interactions` (pairs) both measure through it.

Per-batch losses give each measurement's standard error: with the per-batch differences
``d_k = L_k(quantized) - L_k(float)`` (paired, so the images' own spread cancels), ``zeta = mean_k d_k / L_fp``
and ``se = std(d_k) / sqrt(n) / L_fp`` (:func:`summarize`; NaN with one batch). :func:`per_sample_batches`
splits batches into single samples when each crop should count as one observation.
"""

from __future__ import annotations

import logging
import math
from contextlib import contextmanager
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn

from bitalloc.act_quant import ActQuantizer
from bitalloc.bias_correction import BiasCorrector
from bitalloc.models.losses import RateDistortionLoss, image_of
from bitalloc.objective import Loss, evaluate_loss, loss_parts, relative_increase
from bitalloc.observers import Observer, make_observer
from bitalloc.quant import quantize_weight, quantized_tensor_name
from bitalloc.sensitivity.pipelines import CachedPipeline, NotCacheable, pipeline_for

__all__ = ["LossProbe", "mean_parts", "per_sample_batches", "sample_increases", "summarize"]

logger = logging.getLogger("bitalloc.sensitivity.measure")


def mean_parts(per_batch: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """The mean of every loss part over batches, summed in batch order (as :func:`evaluate_loss` does)."""
    totals: dict[str, float] = {}
    for parts in per_batch:
        for k, v in parts.items():
            totals[k] = totals.get(k, 0.0) + float(v)
    return {k: v / len(per_batch) for k, v in totals.items()}


def summarize(per_batch: Sequence[Mapping[str, float]], fp: Sequence[Mapping[str, float]],
              model: nn.Module) -> tuple[dict[str, float], float, float]:
    """(mean parts, zeta, standard error of zeta) of a quantized measurement against the float one, both per
    batch (module docstring); the standard error is NaN with fewer than two batches."""
    mean, fp_mean = mean_parts(per_batch), mean_parts(fp)
    zeta = relative_increase(mean["loss"], fp_mean["loss"], model)
    d = sample_increases(per_batch, fp, model)
    se = float(d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else float("nan")
    return mean, zeta, se


def sample_increases(per_batch: Sequence[Mapping[str, float]], fp: Sequence[Mapping[str, float]],
                     model: nn.Module) -> np.ndarray:
    """Each batch's loss increase over the float model's on the same batch, a fraction of the float model's mean
    loss: their mean is the measurement's zeta, their spread its noise. A non-positive float loss is refused."""
    fp_loss = mean_parts(fp)["loss"]
    relative_increase(mean_parts(per_batch)["loss"], fp_loss, model)  # names the model whose float loss is bad
    return np.array([float(q["loss"]) - float(f["loss"]) for q, f in zip(per_batch, fp)]) / fp_loss


def _split(item: Any, n: int) -> list | None:
    """``item`` cut into its ``n`` samples along dim 0 (tensors, and tuples/lists/dicts of them), or None."""
    if isinstance(item, torch.Tensor):
        return [item[i:i + 1] for i in range(n)] if item.dim() and item.shape[0] == n else None
    if isinstance(item, (tuple, list)) and not hasattr(item, "_fields"):
        parts = [_split(x, n) for x in item]
        return None if any(p is None for p in parts) else [type(item)(p[i] for p in parts) for i in range(n)]
    if isinstance(item, Mapping):
        parts = {k: _split(v, n) for k, v in item.items()}
        return None if any(p is None for p in parts.values()) else [{k: p[i] for k, p in parts.items()}
                                                                    for i in range(n)]
    return None


def _first_tensor(batch: Any) -> torch.Tensor | None:
    if isinstance(batch, torch.Tensor):
        return batch
    items = batch.values() if isinstance(batch, Mapping) else batch if isinstance(batch, (tuple, list)) else ()
    return next((t for t in items if isinstance(t, torch.Tensor)), None)


def per_sample_batches(batches: Sequence[Any]) -> list:
    """Every batch cut into single samples (a tensor, or tuples/lists/dicts of tensors sharing dim 0); a batch
    that cannot be cut stays whole. For the RD loss of equal-size crops the mean over the pieces equals the
    batch's loss (bpp and MSE are means over pixels), so only the unit of the standard error changes."""
    out: list = []
    for batch in batches:
        lead = _first_tensor(batch)
        n = int(lead.shape[0]) if lead is not None and lead.dim() else 0
        pieces = _split(batch, n) if n > 1 else None
        out.extend(pieces if pieces is not None else [batch])
    return out


class LossProbe:
    """Per-batch loss parts of ``model`` with layers quantized (module docstring); the model is put in eval mode
    by the caller. ``method``: "cached" (pipelines where they apply) or "naive" (full forward passes).
    ``keep_weights``: remember each (layer, bits) quantized tensor for reuse (pairs reuse them many times).
    ``bias_correction``: every quantized layer's bias also absorbs its mean output error
    (:mod:`bitalloc.bias_correction`; ``corrector`` holds the shifts, :meth:`prepare_bias` computes many in one pass).

    Counters: ``evaluations`` (calls of :meth:`losses`: one loss over all batches, partial when cached),
    ``cached`` and ``naive`` (batches evaluated each way).
    """

    def __init__(self, model: nn.Module, objective: Loss, batches: list, layers: Mapping[str, nn.Module], *,
                 calibration: str = "minmax", method: str = "cached", keep_weights: bool = False,
                 bias_correction: bool = False):
        if method not in ("cached", "naive"):
            raise ValueError(f"unknown method {method!r}; valid choices: cached, naive")
        self.model, self.objective, self.batches = model, objective, list(batches)
        self.layers, self.calibration, self.keep_weights = dict(layers), calibration, keep_weights
        self._weights: dict[tuple[str, int], torch.Tensor] = {}
        self._observers: dict[str, Observer] | None = None
        self._acts: dict[tuple[str, int], ActQuantizer] = {}
        self._failed_starts: dict[frozenset, set[str]] = {}
        self.evaluations = self.cached = self.naive = 0
        with torch.no_grad():
            self.fp = [evaluate_loss(model, objective, [b]) for b in self.batches]
            self.pipes, self.path = self._pipelines(method)
        self.method = "cached" if self.pipes else "naive"
        self.corrector = BiasCorrector(model, self.batches, self.weight, objective=objective) if bias_correction \
            else None

    def prepare_bias(self, bits) -> None:
        """With bias correction: the shifts of every layer at every one of ``bits``, in one float pass."""
        if self.corrector is not None:
            self.corrector.shifts({n: list(bits) for n in self.layers})

    def _pipelines(self, method: str) -> tuple[list[CachedPipeline] | None, str]:
        """(one pipeline per batch, its name), or (None, why the naive path runs)."""
        model = self.model
        if method == "naive":
            return None, "naive (method='naive')"
        if not isinstance(self.objective, RateDistortionLoss):
            return None, "naive (a custom loss: pipelines serve the rate-distortion loss only)"
        if self.objective.rate != "likelihood":
            return None, f"naive (rate={self.objective.rate!r}: the loss runs the model with its coder's scales)"
        cls = pipeline_for(model)
        if cls is None:
            return None, f"naive (no cached pipeline registered for {type(model).__name__})"
        try:
            pipes = [cls(model, image_of(b)) for b in self.batches]
        except NotCacheable as exc:
            return None, f"naive ({cls.__name__} does not fit: {exc})"
        for pipe, batch in zip(pipes, self.batches):
            ref, mine = model(image_of(batch)), pipe.outputs()
            same = torch.allclose(ref["x_hat"], mine["x_hat"], rtol=1e-5, atol=1e-6) and \
                ref["likelihoods"].keys() == mine["likelihoods"].keys() and \
                all(torch.allclose(ref["likelihoods"][k], mine["likelihoods"][k], rtol=1e-5, atol=1e-7)
                    for k in ref["likelihoods"])
            if not same:
                return None, f"naive ({cls.__name__} does not reproduce {type(model).__name__}'s forward)"
        return pipes, cls.__name__

    def weight(self, layer: str, bits: int) -> torch.Tensor:
        """The fake-quantized tensor of ``layer`` at ``bits`` (:func:`bitalloc.quant.quantize_weight`)."""
        key = (layer, int(bits))
        if key in self._weights:
            return self._weights[key]
        w = quantize_weight(self.layers[layer], int(bits), self.calibration)
        if self.keep_weights:
            self._weights[key] = w
        return w

    def act_quantizer(self, layer: str, bits: int, observer: str = "minmax", **options: Any) -> ActQuantizer:
        """A frozen :class:`ActQuantizer` of ``layer``'s input at ``bits``, its range picked by ``observer`` from
        the float model's inputs to that layer on the probe's batches (observed once for every layer, in one
        pass; a layer quantized alone sees the same inputs as in the float model)."""
        key = (layer, int(bits))
        spec = (observer, tuple(sorted(options.items())))
        if self._observers is not None and spec != self._observer_spec:
            raise ValueError(f"act_quantizer: this probe observed activations with {self._observer_spec[0]!r} "
                             f"{dict(self._observer_spec[1])}; asked for {observer!r} {options} (one probe, one "
                             "observer)")
        if key not in self._acts:
            if self._observers is None:
                self._observer_spec = spec
                self._observers = {n: make_observer(observer, **options) for n in self.layers}
                hooks = [m.register_forward_pre_hook(lambda mod, args, n=n: self._observers[n].update(args[0]))
                         for n, m in self.layers.items()]
                try:
                    with torch.no_grad():
                        for batch in self.batches:
                            evaluate_loss(self.model, self.objective, [batch])
                finally:
                    for h in hooks:
                        h.remove()
            q = ActQuantizer(int(bits), layer=layer)
            q.observe(self._observers[layer])
            q.freeze()
            self._acts[key] = q
        return self._acts[key]

    @contextmanager
    def quantized(self, assignment: Mapping[str, int], acts: Mapping[str, ActQuantizer] | None = None
                  ) -> Iterator[None]:
        """Temporarily replace each layer's weight by its fake-quantized value (no re-wrapping), its bias by the
        corrected one with bias correction, and quantize the inputs of the layers in ``acts`` ({layer: frozen
        quantizer}) by forward pre-hooks."""
        saved, hooks = [], []
        try:
            for name, b in assignment.items():
                t = getattr(self.layers[name], quantized_tensor_name(self.layers[name]))
                saved.append((t, t.data))
                t.data = self.weight(name, b)
            if self.corrector is not None:
                for name, shift in self.corrector.plan_shifts(assignment).items():
                    bias = self.layers[name].bias
                    saved.append((bias, bias.data))
                    bias.data = bias.data + shift
            for name, q in (acts or {}).items():
                hooks.append(self.layers[name].register_forward_pre_hook(
                    lambda mod, args, q=q: (q(args[0]),) + tuple(args[1:])))
            yield
        finally:
            for h in hooks:
                h.remove()
            for t, w0 in reversed(saved):
                t.data = w0

    def _run_cached(self, pipe: CachedPipeline, names: list[str]) -> dict | None:
        """The output dict re-run from one of ``names`` in which all the others ran, or None."""
        if len(names) == 1:
            return pipe.run_from(names[0])
        key = frozenset(names)
        failed = self._failed_starts.setdefault(key, set())
        for start in names:
            if start in failed:
                continue
            ran: set[str] = set()
            hooks = [self.layers[n].register_forward_hook(lambda m, a, o, n=n, ran=ran: ran.add(n))
                     for n in names if n != start]
            try:
                out = pipe.run_from(start)
            finally:
                for h in hooks:
                    h.remove()
            if out is not None and ran >= set(names) - {start}:
                return out
            failed.add(start)
        return None

    def losses(self, assignment: Mapping[str, int], acts: Mapping[str, ActQuantizer] | None = None
               ) -> list[dict[str, float]]:
        """Loss parts per batch (floats) with the layers of ``assignment`` at their bits, all others float; the
        inputs of the layers in ``acts`` (a subset of ``assignment``) quantized by their :meth:`act_quantizer`."""
        names = list(assignment)
        unknown = [n for n in [*names, *(acts or {})] if n not in self.layers]
        if unknown:
            raise KeyError(f"layer '{unknown[0]}' is not a quantizable layer of {type(self.model).__name__}")
        self.evaluations += 1
        out: list[dict[str, float]] = []
        with torch.no_grad(), self.quantized(assignment, acts):
            for i, batch in enumerate(self.batches):
                res = self._run_cached(self.pipes[i], names) if self.pipes and names else None
                if res is not None:
                    self.cached += 1
                    parts = loss_parts(self.objective(res, self.pipes[i].x), self.objective)
                    out.append({k: float(v) for k, v in parts.items()})
                else:
                    self.naive += 1
                    out.append(evaluate_loss(self.model, self.objective, [batch]))
        return out
