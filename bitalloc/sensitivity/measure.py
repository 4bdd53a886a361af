"""Per-layer sensitivity: (model, calibration data, loss) -> :class:`~bitalloc.costs.CostTable`.

FMPQ's measure (Hossain et al., arXiv 2506.01221): quantize layer n *alone* to b bits and take the fractional
change of the loss on fixed calibration batches,

    zeta_n(b) = (L_{n,b} - L_fp) / L_fp,    by default L = R + lambda * 255^2 * MSE (the RD loss),

computed in eval mode (for a CompressAI model y and z are rounded: deterministic). The table's cost is
max(zeta, 0) (``fit="clip"``: measurement noise can be slightly negative; the raw values are in the frame
returned with ``return_frame=True``), or the noise-aware fit of :mod:`bitalloc.noise` (``fit="isotonic"``:
non-increasing in bits, noisy cells pooled). With ``uncertainty=True`` every crop is one observation and
each cell gets its standard error (``zeta_se`` and ``cost_se`` in the frame, ``noise_floor`` in its attrs; the
table's ``cost_se`` and ``noise_floor`` too). The
size follows :func:`bitalloc.quant.layer_size_bits`. With the default RD loss on a model with a registered
pipeline (:mod:`bitalloc.sensitivity.pipelines`) only the computation downstream of the quantized layer is redone
("cached"); otherwise every evaluation is a full forward pass ("naive"); both through
:class:`~bitalloc.sensitivity.probe.LossProbe`. Also per layer: the Hessian trace
(:mod:`bitalloc.sensitivity.hessian`) and the weights' variance.
"""

from __future__ import annotations

import logging
import time
import warnings
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
from tqdm.auto import tqdm

from bitalloc.costs import CostTable
from bitalloc.graph import branch_of, quantizable_layers
from bitalloc.models.losses import RateDistortionLoss
from bitalloc.noise import fit_costs, noise_floor
from bitalloc.objective import Loss, model_device, resolve_loss
from bitalloc.observers import make_observer
from bitalloc.quant import check_bits, layer_size_bits, plan_of, quantized_tensor_name
from bitalloc.sensitivity.calibration import calibration_batches
from bitalloc.sensitivity.hessian import hessian_traces
from bitalloc.sensitivity.probe import LossProbe, mean_parts, per_sample_batches, summarize

__all__ = ["DEFAULT_BITS", "FITS", "measure_sensitivity", "rd_loss"]

DEFAULT_BITS = (2, 3, 4, 5, 6, 8)
FITS = ("clip", "isotonic")
logger = logging.getLogger(__name__)


def rd_loss(likelihoods: dict[str, torch.Tensor], x_hat: torch.Tensor, x: torch.Tensor,
            lmbda: float) -> dict[str, float]:
    """RD terms of a model's outputs as Python floats (``loss``, ``bpp``, ``mse``), by :class:`RateDistortionLoss`."""
    terms = RateDistortionLoss(lmbda)({"likelihoods": likelihoods, "x_hat": x_hat}, x)
    return {k: float(terms[k]) for k in ("loss", "bpp", "mse")}


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


def _pivot(frame: pd.DataFrame, names: list[str], bits: tuple[int, ...], col: str) -> np.ndarray:
    """(layers x candidates) of ``col``; candidates by ``bits``, or by ``candidate`` for (weight, activation) ones."""
    key = "candidate" if "candidate" in frame else "bits"
    order = list(range(len(bits))) if key == "candidate" else list(bits)
    return frame.pivot(index="layer", columns=key, values=col).loc[names, order].to_numpy()


def _candidates(bits: tuple[int, ...], act_bits: Sequence[int | None] | None, fit: str, gdn: bool):
    """(weight bits, activation bits or None) per candidate: the weight bits alone without ``act_bits``, else every
    pair ordered as :mod:`bitalloc.acttable` requires."""
    if act_bits is None:
        return bits, None
    acts = sorted({None if a is None else check_bits(a) for a in act_bits}, key=lambda a: 33 if a is None else a)
    if not acts:
        raise ValueError("act_bits is empty: give activation bit-widths (None for a float input) or leave it out")
    if fit != "clip":
        raise ValueError(f"fit={fit!r} fits costs monotone in bits, which (weight, activation) candidates are not; "
                         "use fit='clip' with act_bits")
    if gdn:
        raise ValueError("act_bits with gdn=True: a GDN layer's input is not quantized (only Conv/ConvTranspose/"
                         "Linear inputs are)")
    pairs = [(w, a) for w in bits for a in acts]
    return tuple(w for w, _ in pairs), tuple(a for _, a in pairs)


def _table_costs(frame: pd.DataFrame, names: list[str], bits: tuple[int, ...], fit: str,
                 snap_z: float) -> tuple[np.ndarray, np.ndarray | None]:
    """(cost, cost_se) of the table from the raw cells: clipped or noise-aware (:func:`bitalloc.noise.fit_costs`);
    non-finite cells become a prohibitive cost either way."""
    def pivot(col: str) -> np.ndarray:
        return _pivot(frame, names, bits, col)

    zeta = pivot("zeta")
    se = pivot("zeta_se") if "zeta_se" in frame else None
    if fit == "clip":
        return _penalize_non_finite(np.maximum(zeta, 0.0), names, bits), se
    bad = ~np.isfinite(zeta)
    cost, cost_se = fit_costs(np.where(bad, 0.0, zeta), None if se is None else np.where(bad, np.nan, se),
                              snap_z=snap_z)
    if bad.any():  # a prohibitive cost; the cells with fewer bits of that layer too (monotone)
        cost = _penalize_non_finite(np.where(np.logical_or.accumulate(bad[:, ::-1], axis=1)[:, ::-1], np.inf, cost),
                                    names, bits)
    return cost, cost_se


def measure_sensitivity(model: nn.Module, images: Any = None, bits: Sequence[int] = DEFAULT_BITS, *,
                        loss: Loss | None = None, lmbda: float | None = None, calibration: str = "minmax",
                        method: str = "cached", hessian_samples: int = 4, gdn: bool = False, crop: int = 256,
                        limit: int | None = 4, progress: bool = True, return_frame: bool = False,
                        uncertainty: bool = False, fit: str = "clip", snap_z: float = 0.0,
                        act_bits: Sequence[int | None] | None = None, observer: str = "minmax",
                        bias_correction: bool = False) -> CostTable | tuple[CostTable, pd.DataFrame]:
    """Sensitivity cost table of every quantizable layer at every candidate bit-width (module docstring).

    ``images``: the calibration data, as :func:`~bitalloc.sensitivity.calibration_batches` takes it: a tensor,
    an image folder (centre crops ``crop`` of the first ``limit`` images) or any iterable of batches (its first
    ``limit``), moved to the model's device. ``loss``: ``loss(model, batch)`` -> scalar tensor or dict with
    ``"loss"`` (:mod:`bitalloc.objective`); default: the RD loss at ``lmbda`` or the model's lambda, for a
    CompressAI model. ``method``: "cached" (default; naive where no pipeline applies) or "naive"; a log line
    (logger ``bitalloc.sensitivity.measure``, INFO) says which ran. ``hessian_samples=0`` skips the Hessian
    traces. With ``return_frame`` also returns one row per (layer, bits) with the raw zeta, the table's cost and
    every part of the loss (and its ``*_fp`` float value); ``frame.attrs`` holds ``time_s``, ``method``,
    ``pipeline`` and ``evaluations``.

    ``uncertainty``: evaluate every sample (crop) as its own batch (at least two are needed) and add ``zeta_se``
    and ``cost_se`` (the standard error of the raw and of the table's cost) to the frame and ``noise_floor``
    (:func:`bitalloc.noise.noise_floor`; 0 when every standard error is 0) to its attrs, and both to the table;
    a cell without a standard error (its loss was not finite: the cost is a set penalty; or every crop gave
    the same loss) gets 0. The losses are the same up to rounding. ``fit``: "clip"
    (max(zeta, 0), today's table) or "isotonic" (:func:`bitalloc.noise.fit_costs`: monotone in bits, weighted
    by the standard errors with ``uncertainty``, cells within ``snap_z`` of them set to 0 when ``snap_z > 0``).

    ``act_bits``: (weight, activation) candidates (:mod:`bitalloc.acttable`), every weight bit-width with every
    input bit-width of ``act_bits`` (None: a float input), e.g. ``act_bits=(8, None)``; the layer's input is
    quantized per tensor (:class:`bitalloc.ActQuantizer`) with its range picked by ``observer`` from the float
    model's inputs on the same batches, as :func:`bitalloc.calibrate_activations` would. The frame then has
    ``act_bits`` and ``candidate`` columns; ``fit`` must be "clip".
    """
    if method not in ("cached", "naive"):
        raise ValueError(f"unknown method {method!r}; valid choices: cached, naive")
    if fit not in FITS:
        raise ValueError(f"unknown fit {fit!r}; valid choices: {', '.join(FITS)}")
    if len(plan_of(model)):
        raise ValueError("measure_sensitivity needs a float model, but this one is already fake-quantized")
    bits = tuple(sorted(check_bits(b) for b in bits))
    bits, acts = _candidates(bits, act_bits, fit, gdn)
    make_observer(observer)  # an unknown observer fails before any work
    objective = resolve_loss(model, loss, lmbda)
    batches = calibration_batches(images, crop=crop, limit=limit, device=model_device(model))
    if uncertainty:
        batches = per_sample_batches(batches)
        if len(batches) < 2:
            raise ValueError(f"uncertainty=True needs at least two calibration samples (crops) for a standard error, "
                             f"got {len(batches)}; give more images (limit={limit}) or a batch of several crops")
    layers = quantizable_layers(model, gdn=gdn)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no quantizable layer (Conv2d, ConvTranspose2d, Linear)")
    names = list(layers)
    was_training = model.training
    model.eval()
    t0 = time.perf_counter()
    rows = []
    try:
        probe = LossProbe(model, objective, batches, layers, calibration=calibration, method=method,
                          bias_correction=bias_correction)
        probe.prepare_bias(bits)
        logger.info("measure_sensitivity(%s): %s path", type(model).__name__,
                    f"cached ({probe.path})" if probe.pipes else probe.path)
        fp = mean_parts(probe.fp)
        bar = tqdm(total=len(names) * len(bits), disable=not progress, desc=f"sensitivity ({probe.method})",
                   leave=False)
        for name in names:
            for j, b in enumerate(bits):
                a = acts[j] if acts else None
                quant = {name: probe.act_quantizer(name, a, observer)} if a is not None else None
                r, zeta, se = summarize(probe.losses({name: b}, quant), probe.fp, model)
                cand = {} if acts is None else {"act_bits": a, "candidate": j}
                rows.append({"layer": name, "branch": branch_of(name), "kind": type(layers[name]).__name__,
                             "bits": b, **cand, "zeta": zeta, **({"zeta_se": se} if uncertainty else {}), **r,
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
    cost, cost_se = _table_costs(frame, names, bits, fit, snap_z)
    floor = None
    if uncertainty:  # no standard error (a set penalty, or the same loss on every crop): 0 (docstring)
        cost_se = np.where(np.isfinite(cost_se), cost_se, 0.0)
        floor = noise_floor(cost_se)
        floor = 0.0 if np.isnan(floor) else floor
    at = frame.columns.get_loc("zeta_se" if uncertainty else "zeta") + 1
    frame.insert(at, "cost", cost.ravel())  # rows are layer-major, bits ascending: the table's order
    if uncertainty:
        frame.insert(at + 1, "cost_se", cost_se.ravel())
    frame.attrs.update(time_s=elapsed, method=probe.method, pipeline=probe.path if probe.pipes else None,
                       lmbda=getattr(objective, "lmbda", None), num_images=sum(map(_num_samples, batches)),
                       evaluations=probe.evaluations, fit=fit, bias_correction=bool(bias_correction),
                       **({"noise_floor": floor, "snap_z": snap_z} if uncertainty else {}))
    size = _pivot(frame, names, bits, "size_bits")
    tensors = [getattr(m, quantized_tensor_name(m)).detach() for m in layers.values()]
    table = CostTable.from_arrays(
        names, bits, cost, size, num_params=[int(t.numel()) for t in tensors],
        kinds=[type(m).__name__ for m in layers.values()], branches=[branch_of(n) for n in names],
        hessian_trace=hess, weight_variance=[float(t.var()) for t in tensors], act_bits=acts, cost_se=cost_se,
        noise_floor=floor)
    return (table, frame) if return_frame else table
