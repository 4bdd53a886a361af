"""Quantization-aware fine-tuning of a bit plan with the rate-distortion loss.

FMPQ (arXiv 2506.01221) fine-tunes the weights *and* the quantization parameters with the RD loss itself,
L = R + lambda * 255^2 * MSE at the model's own lambda, not a reconstruction loss; the entropy bottleneck's
quantiles follow CompressAI's auxiliary loss. Defaults here: FMPQ's leaky clip as gradient estimator, learnable
LSQ scales initialised by MSE calibration, Adam with a cosine learning-rate schedule, gradient-norm clipping
at 1 (as CompressAI's example trainer).

The state (model, optimisers, schedule, data RNG, log) is saved atomically to ``workdir/qat_state.pt`` every
``save_every`` steps and at the end, as tensors and plain data (RNG states as a tensor or numpy's state dict)
so it loads with ``weights_only=True``; calling :func:`finetune` again with the same workdir and plan resumes.
"""

from __future__ import annotations

import copy
import os
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
from tqdm.auto import tqdm

from bitalloc.plan import BitPlan
from bitalloc.quant import apply_plan, plan_of
from bitalloc.safe_load import load_torch_file
from bitalloc.sensitivity import model_lambda

__all__ = ["Batches", "finetune", "train_step"]

STATE_FILE = "qat_state.pt"
STATE_KEYS = ("plan", "step", "model", "optimizer", "aux_optimizer", "schedule", "data_rng", "torch_rng", "log")
LOG_COLUMNS = ("step", "loss", "bpp", "mse", "psnr", "aux_loss", "lr", "time_s")


class Batches:
    """Random training batches from an image folder (random crops, flips) or from a (N,3,H,W) tensor."""

    def __init__(self, data: Any, batch_size: int = 8, crop: int = 128, seed: int = 0):
        self.batch_size = batch_size
        if isinstance(data, torch.Tensor):
            self.tensor, self.folder = data, None
            self.gen = torch.Generator().manual_seed(seed)
        else:
            from bitalloc.data import ImageFolder

            folder = data if isinstance(data, ImageFolder) else ImageFolder(data, crop=crop, seed=seed)
            self.tensor, self.folder = None, folder

    def next(self) -> torch.Tensor:
        if self.folder is not None:
            return self.folder.batch(self.batch_size)
        idx = torch.randint(0, self.tensor.shape[0], (self.batch_size,), generator=self.gen)
        return self.tensor[idx]

    def state(self) -> Any:
        return self.folder.rng.bit_generator.state if self.folder is not None else self.gen.get_state()

    def load_state(self, state: Any) -> None:
        if self.folder is not None:
            self.folder.rng.bit_generator.state = state
        else:
            self.gen.set_state(state)


def train_step(model: nn.Module, x: torch.Tensor, criterion: nn.Module, optimizer: torch.optim.Optimizer,
               aux_optimizer: torch.optim.Optimizer | None = None, clip_norm: float | None = 1.0,
               ) -> dict[str, float]:
    """One step of CompressAI-style training: RD loss on the main parameters, aux loss on the quantiles."""
    model.train()
    optimizer.zero_grad(set_to_none=True)
    out = criterion(model(x), x)
    out["loss"].backward()
    if clip_norm:
        torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], clip_norm)
    optimizer.step()
    row = {k: float(v.detach()) for k, v in out.items()}
    if aux_optimizer is not None:
        aux_optimizer.zero_grad(set_to_none=True)
        aux = model.aux_loss()
        aux.backward()
        aux_optimizer.step()
        row["aux_loss"] = float(aux.detach())
    return row


def _save(state: dict, path: Path) -> None:
    from bitalloc.models.checkpoint import atomic_torch_save

    atomic_torch_save(state, path)


def finetune(model: nn.Module, plan: BitPlan | Mapping[str, int] | None, data: Any, *, steps: int = 500,
             batch_size: int = 8, crop: int = 128, lr: float = 1e-4, aux_lr: float = 1e-3,
             lmbda: float | None = None, estimator: str = "leaky_clip", calibration: str = "mse",
             learn_scale: bool = True, alpha: float = 0.01, beta: float = 2.0, workdir: str | os.PathLike | None = None,
             save_every: int = 50, clip_norm: float | None = 1.0, seed: int = 0, progress: bool = True,
             ) -> tuple[nn.Module, pd.DataFrame]:
    """QAT of ``plan`` on ``model`` (a copy); returns (fine-tuned fake-quantized model in eval mode, log).

    ``plan=None`` fine-tunes an already fake-quantized ``model`` as it is (in place); an empty plan (``{}``)
    fine-tunes a float copy with the same loop, the fair anchor for comparing QAT runs (their gain includes
    the extra RD training). ``data``: an image folder (random ``crop`` crops) or a (N,3,H,W) tensor. The log
    has one row per step: step, loss, bpp, mse, psnr, aux_loss, lr, time_s.
    """
    from bitalloc.models import RateDistortionLoss, split_parameters

    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    lm = model_lambda(model, lmbda)
    if plan is None:
        if not len(plan_of(model)):
            raise ValueError("plan is None but the model is not fake-quantized; pass a plan")
        qmodel = model
    elif not len(plan):
        if len(plan_of(model)):
            raise ValueError("an empty plan fine-tunes a float model, but this model is fake-quantized")
        qmodel = copy.deepcopy(model)
    else:
        qmodel = apply_plan(model, plan, estimator=estimator, calibration=calibration, learn_scale=learn_scale,
                            alpha=alpha, beta=beta)
    the_plan = plan_of(qmodel)
    main, aux = split_parameters(qmodel)
    optimizer = torch.optim.Adam(main, lr=lr)
    aux_optimizer = torch.optim.Adam(aux, lr=aux_lr) if aux else None
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    batches = Batches(data, batch_size, crop, seed)
    criterion = RateDistortionLoss(lm)
    log: list[dict] = []
    start = 0
    path = Path(workdir) / STATE_FILE if workdir is not None else None
    if path is not None and path.is_file():
        state = load_torch_file(path, "a bitalloc QAT run state (written by finetune)", required=STATE_KEYS)
        try:
            plan_in_file = BitPlan.from_dict(state["plan"])
        except (TypeError, ValueError, KeyError) as exc:
            raise ValueError(f"{path} is not a bitalloc QAT run state: its plan does not read ({exc})") from None
        if plan_in_file != the_plan:
            raise ValueError(f"{path} holds a fine-tuning run of a different plan; use another workdir")
        try:
            qmodel.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            if aux_optimizer is not None:
                aux_optimizer.load_state_dict(state["aux_optimizer"])
            schedule.load_state_dict(state["schedule"])
            batches.load_state(state["data_rng"])
            torch.set_rng_state(state["torch_rng"])
            start, log = int(state["step"]), list(state["log"])
        except (RuntimeError, KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path} does not fit this fine-tuning run (model, optimiser or RNG state): "
                             f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None

    def save(step: int) -> None:
        if path is None:
            return
        _save({"plan": the_plan.to_dict(), "step": step, "model": qmodel.state_dict(),
               "optimizer": optimizer.state_dict(),
               "aux_optimizer": aux_optimizer.state_dict() if aux_optimizer is not None else None,
               "schedule": schedule.state_dict(), "data_rng": batches.state(), "torch_rng": torch.get_rng_state(),
               "log": log, "lmbda": lm}, path)

    if start == 0:
        torch.manual_seed(seed)
    bar = tqdm(total=steps, initial=start, disable=not progress, desc="qat", leave=False)
    for step in range(start, steps):
        t0 = time.perf_counter()
        cur_lr = optimizer.param_groups[0]["lr"]
        row = train_step(qmodel, batches.next(), criterion, optimizer, aux_optimizer, clip_norm)
        schedule.step()
        log.append({"step": step + 1, **row, "lr": cur_lr, "time_s": time.perf_counter() - t0})
        bar.update()
        bar.set_postfix(loss=f"{row['loss']:.4f}", bpp=f"{row['bpp']:.3f}", psnr=f"{row['psnr']:.2f}")
        if (step + 1) % save_every == 0 and step + 1 < steps:
            save(step + 1)
    bar.close()
    if start < steps:
        save(steps)
    qmodel.eval()
    if hasattr(qmodel, "update"):
        qmodel.update(force=True)
    frame = pd.DataFrame(log)
    return qmodel, frame.reindex(columns=[c for c in LOG_COLUMNS if c in frame or frame.empty])
