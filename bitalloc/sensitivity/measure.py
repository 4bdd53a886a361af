"""Per-layer sensitivity: (model, calibration data, loss) -> :class:`~bitalloc.costs.CostTable`.

FMPQ's measure (Hossain et al., arXiv 2506.01221): quantize layer n *alone* to b bits and take the fractional
change of the loss on fixed calibration batches,

    zeta_n(b) = (L_{n,b} - L_fp) / L_fp,    by default L = R + lambda * 255^2 * MSE (the RD loss),

computed in eval mode (for a CompressAI model y and z are rounded: deterministic). The table's cost is
max(zeta, 0) (measurement noise can be slightly negative; the raw values are in the frame returned with
``return_frame=True``); its size follows :func:`bitalloc.quant.layer_size_bits`. With the default RD loss on a
model with a registered pipeline (:mod:`bitalloc.sensitivity.pipelines`) only the computation downstream of
the quantized layer is redone ("cached"); otherwise every evaluation is a full forward pass ("naive"). Also
per layer: the Hessian trace (:mod:`bitalloc.sensitivity.hessian`) and the weights' variance.
"""

from __future__ import annotations

import logging
import time
import warnings
from contextlib import contextmanager
from typing import Any, Iterator, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
from tqdm.auto import tqdm

from bitalloc.costs import CostTable
from bitalloc.graph import branch_of, quantizable_layers
from bitalloc.models.losses import RateDistortionLoss, image_of
from bitalloc.objective import Loss, evaluate_loss, loss_parts, model_device, relative_increase, resolve_loss
from bitalloc.quant import check_bits, layer_size_bits, plan_of, quantize_weight, quantized_tensor_name
from bitalloc.sensitivity.calibration import calibration_batches
from bitalloc.sensitivity.hessian import hessian_traces
from bitalloc.sensitivity.pipelines import CachedPipeline, NotCacheable, pipeline_for

__all__ = ["DEFAULT_BITS", "measure_sensitivity", "rd_loss"]

DEFAULT_BITS = (2, 3, 4, 5, 6, 8)
logger = logging.getLogger(__name__)


def rd_loss(likelihoods: dict[str, torch.Tensor], x_hat: torch.Tensor, x: torch.Tensor,
            lmbda: float) -> dict[str, float]:
    """RD terms of a model's outputs as Python floats (``loss``, ``bpp``, ``mse``), by :class:`RateDistortionLoss`."""
    terms = RateDistortionLoss(lmbda)({"likelihoods": likelihoods, "x_hat": x_hat}, x)
    return {k: float(terms[k]) for k in ("loss", "bpp", "mse")}


@contextmanager
def _quantized_alone(module: nn.Module, bits: int, calibration: str) -> Iterator[None]:
    """Temporarily replace the layer's weight by its fake-quantized value (cheapest: no re-wrapping)."""
    t = getattr(module, quantized_tensor_name(module))
    w0 = t.data
    t.data = quantize_weight(module, bits, calibration)
    try:
        yield
    finally:
        t.data = w0


def _cached_pipelines(model: nn.Module, objective: Loss, batches: list, method: str,
                      ) -> tuple[list[CachedPipeline] | None, str]:
    """(one pipeline per batch, its name), or (None, why the naive path runs)."""
    if method == "naive":
        return None, "naive (method='naive')"
    if not isinstance(objective, RateDistortionLoss):
        return None, "naive (a custom loss: pipelines serve the rate-distortion loss only)"
    cls = pipeline_for(model)
    if cls is None:
        return None, f"naive (no cached pipeline registered for {type(model).__name__})"
    try:
        pipes = [cls(model, image_of(b)) for b in batches]
    except NotCacheable as exc:
        return None, f"naive ({cls.__name__} does not fit: {exc})"
    for pipe, batch in zip(pipes, batches):
        ref, mine = model(image_of(batch)), pipe.outputs()
        same = torch.allclose(ref["x_hat"], mine["x_hat"], rtol=1e-5, atol=1e-6) and \
            ref["likelihoods"].keys() == mine["likelihoods"].keys() and \
            all(torch.allclose(ref["likelihoods"][k], mine["likelihoods"][k], rtol=1e-5, atol=1e-7)
                for k in ref["likelihoods"])
        if not same:
            return None, f"naive ({cls.__name__} does not reproduce {type(model).__name__}'s forward)"
    return pipes, cls.__name__


def _cached_loss(pipes: list[CachedPipeline], objective: Loss, layer: str) -> dict[str, float] | None:
    totals: dict[str, float] = {}
    for pipe in pipes:
        out = pipe.run_from(layer)
        if out is None:
            return None
        for k, v in loss_parts(objective(out, pipe.x), objective).items():
            totals[k] = totals.get(k, 0.0) + float(v)
    return {k: v / len(pipes) for k, v in totals.items()}


def _penalize_non_finite(cost: np.ndarray, names: Sequence[str], bits: Sequence[int]) -> np.ndarray:
    """Replace non-finite costs (the loss overflowed: a likelihood underflowed to 0, a reconstruction blew up)
    by a prohibitive finite cost, 10x the largest finite one (at least 1, i.e. +100 % loss), with a warning
    naming each (layer, bits). The raw frame keeps the non-finite loss."""
    bad = ~np.isfinite(cost)
    if not bad.any():
        return cost
    finite = cost[~bad]
    penalty = max(1.0, 10.0 * float(finite.max()) if finite.size else 1.0)
    where = ", ".join(f"{names[i]}@{bits[j]}b" for i, j in zip(*np.nonzero(bad)))
    warnings.warn(f"the loss is not finite with {where} quantized; cost set to {penalty:.4g} "
                  "(10x the largest finite cost) so allocators avoid it", RuntimeWarning, stacklevel=3)
    cost = cost.copy()
    cost[bad] = penalty
    return cost


def _num_samples(batch: Any) -> int:
    t = batch[0] if isinstance(batch, (tuple, list)) and batch else batch
    return int(t.shape[0]) if isinstance(t, torch.Tensor) and t.dim() else 1


def measure_sensitivity(model: nn.Module, images: Any = None, bits: Sequence[int] = DEFAULT_BITS, *,
                        loss: Loss | None = None, lmbda: float | None = None, calibration: str = "minmax",
                        method: str = "cached", hessian_samples: int = 4, gdn: bool = False, crop: int = 256,
                        limit: int | None = 4, progress: bool = True, return_frame: bool = False,
                        ) -> CostTable | tuple[CostTable, pd.DataFrame]:
    """Sensitivity cost table of every quantizable layer at every candidate bit-width (module docstring).

    ``images``: the calibration data, as :func:`~bitalloc.sensitivity.calibration_batches` takes it: a tensor,
    an image folder (centre crops ``crop`` of the first ``limit`` images) or any iterable of batches (its first
    ``limit``), moved to the model's device. ``loss``: ``loss(model, batch)`` -> scalar tensor or dict with
    ``"loss"`` (:mod:`bitalloc.objective`); default: the RD loss at ``lmbda`` or the model's lambda, for a
    CompressAI model. ``method``: "cached" (default; naive where no pipeline applies) or "naive"; a log line
    (logger ``bitalloc.sensitivity.measure``, INFO) says which ran. ``hessian_samples=0`` skips the Hessian
    traces. With ``return_frame`` also returns one row per (layer, bits) with the raw zeta and every part of
    the loss (and its ``*_fp`` float value); ``frame.attrs`` holds ``time_s``, ``method`` and ``pipeline``.
    """
    if method not in ("cached", "naive"):
        raise ValueError(f"unknown method {method!r}; valid choices: cached, naive")
    if len(plan_of(model)):
        raise ValueError("measure_sensitivity needs a float model, but this one is already fake-quantized")
    bits = tuple(sorted(check_bits(b) for b in bits))
    objective = resolve_loss(model, loss, lmbda)
    batches = calibration_batches(images, crop=crop, limit=limit, device=model_device(model))
    layers = quantizable_layers(model, gdn=gdn)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no quantizable layer (Conv2d, ConvTranspose2d, Linear)")
    names = list(layers)
    was_training = model.training
    model.eval()
    t0 = time.perf_counter()
    rows = []
    try:
        with torch.no_grad():
            fp = evaluate_loss(model, objective, batches)
            pipes, used = _cached_pipelines(model, objective, batches, method)
            logger.info("measure_sensitivity(%s): %s path", type(model).__name__,
                        f"cached ({used})" if pipes else used)
            method_used = "cached" if pipes else "naive"
            bar = tqdm(total=len(names) * len(bits), disable=not progress, desc=f"sensitivity ({method_used})",
                       leave=False)
            for name in names:
                for b in bits:
                    with _quantized_alone(layers[name], b, calibration):
                        r = _cached_loss(pipes, objective, name) if pipes else None
                        if r is None:
                            r = evaluate_loss(model, objective, batches)
                    zeta = relative_increase(r["loss"], fp["loss"], model)
                    rows.append({"layer": name, "branch": branch_of(name), "kind": type(layers[name]).__name__,
                                 "bits": b, "zeta": zeta, "cost": max(zeta, 0.0), **r,
                                 **{f"{k}_fp": v for k, v in fp.items()},
                                 "size_bits": layer_size_bits(layers[name], b)})
                    bar.update()
            bar.close()
        elapsed = time.perf_counter() - t0
        hess = (hessian_traces(model, batches, objective, layers, samples=hessian_samples)
                if hessian_samples > 0 else None)
    finally:
        model.train(was_training)
    frame = pd.DataFrame(rows)
    frame.attrs.update(time_s=elapsed, method=method_used, pipeline=used if pipes else None,
                       lmbda=getattr(objective, "lmbda", None), num_images=sum(map(_num_samples, batches)))
    cost = frame.pivot(index="layer", columns="bits", values="cost").loc[names, list(bits)].to_numpy()
    cost = _penalize_non_finite(cost, names, bits)
    size = frame.pivot(index="layer", columns="bits", values="size_bits").loc[names, list(bits)].to_numpy()
    tensors = [getattr(m, quantized_tensor_name(m)).detach() for m in layers.values()]
    table = CostTable.from_arrays(
        names, bits, cost, size, num_params=[int(t.numel()) for t in tensors],
        kinds=[type(m).__name__ for m in layers.values()], branches=[branch_of(n) for n in names],
        hessian_trace=hess, weight_variance=[float(t.var()) for t in tensors])
    return (table, frame) if return_frame else table
