"""Per-layer sensitivity: (model, calibration images) -> :class:`~bitalloc.costs.CostTable`.

FMPQ's measure (Hossain et al., arXiv 2506.01221): quantize layer n *alone* to b bits and take the fractional
change of the rate-distortion loss on a fixed calibration batch,

    zeta_n(b) = (L_{n,b} - L_fp) / L_fp,    L = R + lambda * 255^2 * MSE,

with R the rate (bpp) from the likelihoods, computed in eval mode (y and z rounded: deterministic). The table's
cost is max(zeta, 0) (measurement noise can be slightly negative; the raw values are in the frame returned with
``return_frame=True``); its size follows :func:`bitalloc.quant.layer_size_bits`.

Reusing work ("cached"): one float pass stores the input of every layer of the Scale / Mean-Scale Hyperprior's
four ``nn.Sequential`` transforms and every intermediate of the pipeline

    x -g_a-> y -h_a-> z -EB-> z_hat, p(z) -h_s-> scales(, means) -GC-> y_hat, p(y) -g_s-> x_hat

Quantizing a layer of g_a re-runs the suffix of g_a and everything after it; of h_a: the suffix of h_a, the
entropy bottleneck, h_s and p(y); of h_s: the suffix of h_s and p(y); of g_s: the suffix of g_s only. g_s is
re-run after an h_a/h_s change only when y_hat changed (with means; never for the Scale Hyperprior, whose
y_hat = round(y)). Other architectures fall back to full re-runs ("naive"), which ``method="naive"`` forces.

Also measured per layer: the Hessian trace of the RD loss w.r.t. the layer's weights by Hutchinson's estimator
(tr H = E[v^T H v], v Rademacher; a few samples, absolute value, as HAWQ does), on the *training* objective
(additive-noise proxy, fixed noise) because rounding has no second derivative; and the weights' variance.
"""

from __future__ import annotations

import math
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from bitalloc.costs import CostTable
from bitalloc.graph import branch_of, quantizable_layers
from bitalloc.quant import (_axis, calibrate_range, check_bits, fake_quantize, layer_size_bits, plan_of,
                            quantized_tensor_name)

__all__ = ["PlanCheck", "calibration_batch", "check_plan", "hessian_traces", "measure_sensitivity", "model_lambda",
           "rd_loss"]

DEFAULT_BITS = (2, 3, 4, 5, 6, 8)


def model_lambda(model: nn.Module, lmbda: float | None = None) -> float:
    """``lmbda`` if given, else ``model.meta["lambda"]`` (from the checkpoint), else an error."""
    if lmbda is not None:
        return float(lmbda)
    meta = getattr(model, "meta", None) or {}
    if "lambda" in meta:
        return float(meta["lambda"])
    raise ValueError("the model has no meta['lambda'] (not loaded from a checkpoint); pass lmbda=...")


def calibration_batch(images: Any = None, *, crop: int = 256, limit: int | None = 4) -> torch.Tensor:
    """Centre crops ``crop x crop`` (a multiple of 64) of the first ``limit`` images, as one (N,3,c,c) batch.

    ``images``: a (N,3,H,W) tensor (used as is), or anything :func:`bitalloc.data.resolve_images` takes.
    """
    if isinstance(images, torch.Tensor):
        return images if images.dim() == 4 else images.unsqueeze(0)
    if crop % 64:
        raise ValueError(f"crop must be a multiple of 64 (the models downsample by 64), got {crop}")
    from bitalloc.data import resolve_images

    out = []
    for x in resolve_images(images, limit=limit).values():
        _, h, w = x.shape
        if h < crop or w < crop:
            x = F.pad(x[None], (0, max(0, crop - w), 0, max(0, crop - h)), mode="replicate")[0]
            _, h, w = x.shape
        i, j = (h - crop) // 2, (w - crop) // 2
        out.append(x[:, i:i + crop, j:j + crop])
    return torch.stack(out)


def rd_loss(likelihoods: dict[str, torch.Tensor], x_hat: torch.Tensor, x: torch.Tensor,
            lmbda: float) -> dict[str, float]:
    """RD terms as Python floats: loss = bpp + lambda * 255^2 * mse (as :class:`RateDistortionLoss`)."""
    n, _, h, w = x.shape
    bpp = sum(lk.log().sum() for lk in likelihoods.values()) / (-math.log(2) * n * h * w)
    mse = torch.mean((x_hat - x) ** 2)
    return {"loss": float(bpp + lmbda * 255**2 * mse), "bpp": float(bpp), "mse": float(mse)}


@contextmanager
def _quantized_alone(module: nn.Module, bits: int, calibration: str) -> Iterator[None]:
    """Temporarily replace the layer's weight by its fake-quantized value (cheapest: no re-wrapping)."""
    t = getattr(module, quantized_tensor_name(module))
    w0 = t.data
    axis = _axis(module)
    r = calibrate_range(w0, bits, axis, calibration)
    t.data = fake_quantize(w0, r / (2 ** (bits - 1) - 1), bits, axis)
    try:
        yield
    finally:
        t.data = w0


class _Hyperprior:
    """Cached pipeline of CompressAI's ScaleHyperprior / MeanScaleHyperprior (eval mode)."""

    SEQS = ("g_a", "h_a", "h_s", "g_s")

    def __init__(self, model: nn.Module, x: torch.Tensor):
        from compressai.models import MeanScaleHyperprior

        self.m, self.x = model, x
        self.mean = isinstance(model, MeanScaleHyperprior)
        self.inputs: dict[str, torch.Tensor] = {}
        self.y = self._seq("g_a", 0, x, cache=True)
        self._from_y(self.y, cache=True)

    def _seq(self, seq: str, start: int, inp: torch.Tensor, cache: bool = False) -> torch.Tensor:
        mods = getattr(self.m, seq)
        for i in range(start, len(mods)):
            if cache:
                self.inputs[f"{seq}.{i}"] = inp
            inp = mods[i](inp)
        return inp

    def _h_a(self, y: torch.Tensor, start: int, inp: torch.Tensor | None, cache: bool) -> dict:
        if inp is None:
            inp = y if self.mean else torch.abs(y)
        z = self._seq("h_a", start, inp, cache)
        z_hat, z_lik = self.m.entropy_bottleneck(z)
        return {"z_hat": z_hat, "z_lik": z_lik}

    def _h_s(self, y: torch.Tensor, start: int, inp: torch.Tensor, cache: bool) -> dict:
        params = self._seq("h_s", start, inp, cache)
        if self.mean:
            scales_hat, means_hat = params.chunk(2, 1)
            y_hat, y_lik = self.m.gaussian_conditional(y, scales_hat, means=means_hat)
        else:
            y_hat, y_lik = self.m.gaussian_conditional(y, params)
        return {"y_hat": y_hat, "y_lik": y_lik}

    def _from_y(self, y: torch.Tensor, cache: bool = False) -> None:
        a = self._h_a(y, 0, None, cache)
        s = self._h_s(y, 0, a["z_hat"], cache)
        x_hat = self._seq("g_s", 0, s["y_hat"], cache)
        if cache:
            self.z_lik, self.y_hat, self.y_lik, self.x_hat = a["z_lik"], s["y_hat"], s["y_lik"], x_hat
        else:
            self.out = (s["y_lik"], a["z_lik"], x_hat)

    def _g_s_if_changed(self, y_hat: torch.Tensor) -> torch.Tensor:
        return self.x_hat if torch.equal(y_hat, self.y_hat) else self._seq("g_s", 0, y_hat)

    def run_from(self, layer: str) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """(likelihoods, x_hat) with only the computation downstream of ``layer`` redone."""
        seq, idx = layer.split(".")[0], int(layer.split(".")[1])
        if seq == "g_a":
            y = self._seq("g_a", idx, self.inputs[layer])
            self._from_y(y)
            y_lik, z_lik, x_hat = self.out
        elif seq == "h_a":
            a = self._h_a(self.y, idx, self.inputs[layer], False)
            s = self._h_s(self.y, 0, a["z_hat"], False)
            y_lik, z_lik, x_hat = s["y_lik"], a["z_lik"], self._g_s_if_changed(s["y_hat"])
        elif seq == "h_s":
            s = self._h_s(self.y, idx, self.inputs[layer], False)
            y_lik, z_lik, x_hat = s["y_lik"], self.z_lik, self._g_s_if_changed(s["y_hat"])
        else:
            y_lik, z_lik, x_hat = self.y_lik, self.z_lik, self._seq("g_s", idx, self.inputs[layer])
        return {"y": y_lik, "z": z_lik}, x_hat


def _cacheable(model: nn.Module, names: Sequence[str]) -> bool:
    from compressai.models import MeanScaleHyperprior, ScaleHyperprior

    if type(model) not in (ScaleHyperprior, MeanScaleHyperprior):  # subclasses change forward()
        return False
    return all(len(n.split(".")) == 2 and n.split(".")[0] in _Hyperprior.SEQS for n in names)


def hessian_traces(model: nn.Module, x: torch.Tensor, lmbda: float, layers: dict[str, nn.Module], *,
                   samples: int = 4, seed: int = 0) -> np.ndarray:
    """|Hutchinson estimate| of tr(H_nn) per layer: mean over ``samples`` of v_n^T (H v)_n, v Rademacher over
    all layers at once (cross terms vanish in expectation), on the additive-noise training loss."""
    from bitalloc.models import RateDistortionLoss

    params = [getattr(m, quantized_tensor_name(m)) for m in layers.values()]
    was_training = model.training
    gen = torch.Generator().manual_seed(seed)
    try:
        model.train()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            loss = RateDistortionLoss(lmbda)(model(x), x)["loss"]
        grads = torch.autograd.grad(loss, params, create_graph=True)
        acc = np.zeros(len(params))
        for _ in range(samples):
            vs = [torch.randint(0, 2, p.shape, generator=gen).to(p.dtype) * 2 - 1 for p in params]
            hv = torch.autograd.grad(grads, params, grad_outputs=vs, retain_graph=True)
            acc += np.array([float((v * h).sum()) for v, h in zip(vs, hv)])
    finally:
        model.train(was_training)
    return np.abs(acc / samples)


def _penalize_non_finite(cost: np.ndarray, names: Sequence[str], bits: Sequence[int]) -> np.ndarray:
    """Replace non-finite costs (the RD loss overflowed: a likelihood underflowed to 0, a reconstruction blew up)
    by a prohibitive finite cost, 10x the largest finite one (at least 1, i.e. +100 % RD loss), with a warning
    naming each (layer, bits). The raw frame keeps the non-finite loss."""
    bad = ~np.isfinite(cost)
    if not bad.any():
        return cost
    finite = cost[~bad]
    penalty = max(1.0, 10.0 * float(finite.max()) if finite.size else 1.0)
    where = ", ".join(f"{names[i]}@{bits[j]}b" for i, j in zip(*np.nonzero(bad)))
    warnings.warn(f"the RD loss is not finite with {where} quantized; cost set to {penalty:.4g} "
                  "(10x the largest finite cost) so allocators avoid it", RuntimeWarning, stacklevel=3)
    cost = cost.copy()
    cost[bad] = penalty
    return cost


def measure_sensitivity(model: nn.Module, images: Any = None, bits: Sequence[int] = DEFAULT_BITS, *,
                        lmbda: float | None = None, calibration: str = "minmax", method: str = "cached",
                        hessian_samples: int = 4, gdn: bool = False, crop: int = 256, limit: int | None = 4,
                        progress: bool = True, return_frame: bool = False,
                        ) -> CostTable | tuple[CostTable, pd.DataFrame]:
    """Sensitivity cost table of every quantizable layer at every candidate bit-width (module docstring).

    ``images``: a (N,3,H,W) batch or what :func:`calibration_batch` takes (centre crops ``crop``, first
    ``limit`` images). ``method``: "cached" (default; naive for unknown architectures) or "naive".
    ``hessian_samples=0`` skips the Hessian traces. With ``return_frame`` also returns one row per
    (layer, bits) with the raw zeta, loss, bpp, mse; ``frame.attrs`` holds ``time_s`` and the method used.
    """
    if method not in ("cached", "naive"):
        raise ValueError(f"unknown method {method!r}; valid choices: cached, naive")
    if len(plan_of(model)):
        raise ValueError("measure_sensitivity needs a float model, but this one is already fake-quantized")
    bits = tuple(sorted(check_bits(b) for b in bits))
    lm = model_lambda(model, lmbda)
    x = calibration_batch(images, crop=crop, limit=limit)
    layers = quantizable_layers(model, gdn=gdn)
    names = list(layers)
    used = "cached" if method == "cached" and _cacheable(model, names) else "naive"
    was_training = model.training
    model.eval()
    t0 = time.perf_counter()
    rows = []
    try:
        with torch.no_grad():
            out = model(x)
            fp = rd_loss(out["likelihoods"], out["x_hat"], x, lm)
            pipe = _Hyperprior(model, x) if used == "cached" else None
            bar = tqdm(total=len(names) * len(bits), disable=not progress, desc=f"sensitivity ({used})",
                       leave=False)
            for name in names:
                for b in bits:
                    with _quantized_alone(layers[name], b, calibration):
                        if pipe is not None:
                            lik, x_hat = pipe.run_from(name)
                        else:
                            o = model(x)
                            lik, x_hat = o["likelihoods"], o["x_hat"]
                        r = rd_loss(lik, x_hat, x, lm)
                    zeta = (r["loss"] - fp["loss"]) / fp["loss"]
                    rows.append({"layer": name, "branch": branch_of(name), "kind": type(layers[name]).__name__,
                                 "bits": b, "zeta": zeta, "cost": max(zeta, 0.0), **r,
                                 "loss_fp": fp["loss"], "bpp_fp": fp["bpp"], "mse_fp": fp["mse"],
                                 "size_bits": layer_size_bits(layers[name], b)})
                    bar.update()
            bar.close()
        elapsed = time.perf_counter() - t0
        hess = hessian_traces(model, x, lm, layers, samples=hessian_samples) if hessian_samples > 0 else None
    finally:
        model.train(was_training)
    frame = pd.DataFrame(rows)
    frame.attrs.update(time_s=elapsed, method=used, lmbda=lm, num_images=int(x.shape[0]))
    cost = frame.pivot(index="layer", columns="bits", values="cost").loc[names, list(bits)].to_numpy()
    cost = _penalize_non_finite(cost, names, bits)
    size = frame.pivot(index="layer", columns="bits", values="size_bits").loc[names, list(bits)].to_numpy()
    tensors = [getattr(m, quantized_tensor_name(m)).detach() for m in layers.values()]
    table = CostTable.from_arrays(
        names, bits, cost, size, num_params=[int(t.numel()) for t in tensors],
        kinds=[type(m).__name__ for m in layers.values()], branches=[branch_of(n) for n in names],
        hessian_trace=hess, weight_variance=[float(t.var()) for t in tensors])
    return (table, frame) if return_frame else table


@dataclass(frozen=True)
class PlanCheck:
    """What a cost table predicts for a plan against what the plan does when all its layers are quantized.

    ``predicted``: the sum of the table's per-layer costs (fractional RD-loss increases, the additive model
    every allocator optimizes); ``measured``: the fractional RD-loss increase of the whole plan at once, on the
    same images. ``excess = measured - predicted`` is the interaction the table cannot see.
    """

    predicted: float
    measured: float
    loss_fp: float
    loss_plan: float
    bpp_fp: float
    bpp_plan: float

    @property
    def excess(self) -> float:
        return self.measured - self.predicted

    def ok(self, tolerance: float = 0.05) -> bool:
        """True when the plan costs at most ``tolerance`` (fractional RD loss) more than the table predicts."""
        return self.excess <= tolerance


def check_plan(model: nn.Module, plan, table: CostTable, images: Any = None, *, calibration: str = "minmax",
               lmbda: float | None = None, crop: int = 256, limit: int | None = 4) -> PlanCheck:
    """Quantize every layer of ``plan`` together and compare the RD loss with the table's additive prediction.

    Use the images, crop and calibration the table was measured with. Per-layer sensitivities assume costs add
    up; when layers interact (e.g. all of a hyper-synthesis transform at 2 bits) a plan can cost far more than
    predicted, which :meth:`PlanCheck.ok` reports before any bitstream is written.
    """
    from bitalloc.plan import BitPlan
    from bitalloc.quant import apply_plan

    plan = plan if isinstance(plan, BitPlan) else BitPlan(dict(plan))
    if len(plan_of(model)):
        raise ValueError("check_plan needs the float model, but this one is already fake-quantized")
    predicted = plan.cost(table)  # raises PlanError naming a layer the plan and the table disagree on
    lm = model_lambda(model, lmbda)
    x = calibration_batch(images, crop=crop, limit=limit)
    qmodel = apply_plan(model, plan, calibration=calibration).eval()
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(x)
            fp = rd_loss(out["likelihoods"], out["x_hat"], x, lm)
            out = qmodel(x)
            q = rd_loss(out["likelihoods"], out["x_hat"], x, lm)
    finally:
        model.train(was_training)
    return PlanCheck(predicted=predicted, measured=(q["loss"] - fp["loss"]) / fp["loss"], loss_fp=fp["loss"],
                     loss_plan=q["loss"], bpp_fp=fp["bpp"], bpp_plan=q["bpp"])
