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

from bitalloc.atomic import atomic_torch_save
from bitalloc.objective import Loss, model_device, resolve_loss, to_device
from bitalloc.plan import BitPlan
from bitalloc.quant import apply_plan, plan_of
from bitalloc.safe_load import load_torch_file
from bitalloc.training import train_step  # re-exported: bitalloc.qat.train_step

__all__ = ["Batches", "finetune", "fresh_source", "train_step"]

STATE_FILE = "qat_state.pt"
STATE_KEYS = ("plan", "step", "model", "optimizer", "aux_optimizer", "schedule", "data_rng", "torch_rng", "log")
LOG_COLUMNS = ("step", "loss", "bpp", "mse", "psnr", "aux_loss", "lr", "time_s")


class Batches:
    """Training batches: random crops (and flips) of an image folder, random rows of a (N,3,H,W) tensor, or the
    batches of any other iterable (a DataLoader, a list of ``(input, target)`` tuples), restarted when it ends.
    An iterable's state is the number of batches drawn; resuming replays them (the same batches when the
    iterable is deterministic)."""

    def __init__(self, data: Any, batch_size: int = 8, crop: int = 128, seed: int = 0):
        from bitalloc.data import ImageFolder

        self.batch_size = batch_size
        self.tensor = self.folder = self.iterable = None
        if isinstance(data, torch.Tensor):
            self.tensor = data
            self.gen = torch.Generator().manual_seed(seed)
        elif isinstance(data, (str, os.PathLike, ImageFolder)):
            self.folder = data if isinstance(data, ImageFolder) else ImageFolder(data, crop=crop, seed=seed)
        elif hasattr(data, "__iter__"):
            self.iterable, self.drawn, self._it = data, 0, None
        else:
            raise TypeError(f"training data must be an image folder, a tensor or an iterable of batches, got "
                            f"{type(data).__name__}")

    def _next_of_iterable(self) -> Any:
        for _ in range(2):
            if self._it is None:
                self._it = iter(self.iterable)
            try:
                batch = next(self._it)
            except StopIteration:
                self._it = None
                continue
            self.drawn += 1
            return batch
        raise ValueError(f"the training data ({type(self.iterable).__name__}) yielded no batch after "
                         f"{self.drawn} and does not restart (a generator?); pass a DataLoader or a list")

    def next(self) -> Any:
        if self.iterable is not None:
            return self._next_of_iterable()
        if self.folder is not None:
            return self.folder.batch(self.batch_size)
        idx = torch.randint(0, self.tensor.shape[0], (self.batch_size,), generator=self.gen)
        return self.tensor[idx]

    def state(self) -> Any:
        if self.iterable is not None:
            return {"batches_drawn": self.drawn}
        return self.folder.rng.bit_generator.state if self.folder is not None else self.gen.get_state()

    def load_state(self, state: Any) -> None:
        if self.iterable is not None:
            self.drawn, self._it = 0, None
            for _ in range(int(state["batches_drawn"])):
                self._next_of_iterable()
        elif self.folder is not None:
            self.folder.rng.bit_generator.state = state
        else:
            self.gen.set_state(state)


def fresh_source(train: Any, seed: int) -> Any:
    """The training source as a run of its own sees it: an :class:`~bitalloc.data.ImageFolder` gets a new random
    stream from ``seed`` (the decoded photos shared), so a QAT outcome depends on its plan and settings only, not
    on how many QAT runs drew crops from the same folder before it in this process. Any other source is
    returned as it is (a tensor's rows are drawn by a generator of the run's own seed)."""
    from bitalloc.data import ImageFolder

    if isinstance(train, ImageFolder):
        train = copy.copy(train)
        train.rng = np.random.default_rng(seed)
    return train


def finetune(model: nn.Module, plan: BitPlan | Mapping[str, int] | None, data: Any, *, steps: int = 500,
             batch_size: int = 8, crop: int = 128, lr: float = 1e-4, aux_lr: float = 1e-3,
             lmbda: float | None = None, loss: Loss | None = None, estimator: str = "leaky_clip",
             calibration: str = "mse", learn_scale: bool = True, alpha: float = 0.01, beta: float = 2.0,
             act_observer: str = "minmax", act_calibration: Any = None, act_calibration_batches: int = 4,
             learn_act_range: bool | None = None, workdir: str | os.PathLike | None = None,
             save_every: int = 50, clip_norm: float | None = 1.0, seed: int = 0, progress: bool = True,
             ) -> tuple[nn.Module, pd.DataFrame]:
    """QAT of ``plan`` on ``model`` (a copy); returns (fine-tuned fake-quantized model in eval mode, log).

    ``plan=None`` fine-tunes an already fake-quantized ``model`` as it is (in place); an empty plan (``{}``)
    fine-tunes a float copy with the same loop, the fair anchor for comparing QAT runs (their gain includes
    the extra RD training). ``data``: an image folder (random ``crop`` crops), a (N,3,H,W) tensor (random
    rows) or any iterable of batches (a DataLoader, also of ``(input, target)`` tuples; cycled); batches move
    to the model's device. ``loss``: ``loss(model, batch)`` -> scalar tensor or dict with ``"loss"`` and named
    parts (:mod:`bitalloc.objective`); default: the RD loss at ``lmbda`` or the model's lambda (CompressAI
    models). The log has one row per step: step, the loss's parts (RD: loss, bpp, mse, psnr), aux_loss, lr,
    time_s.

    Activation bits (a plan's ``act_bits``): before the first step every activation range is calibrated with
    ``act_observer`` (:func:`bitalloc.act_quant.calibrate_activations`) on ``act_calibration`` (any form it
    takes), by default on ``act_calibration_batches`` batches drawn from ``data`` by a separate stream (seed + 1,
    so the training batches are those of a run without activation bits); ranges already frozen in a
    fake-quantized ``model`` (``plan=None``) are kept. ``learn_act_range`` (default: ``learn_scale``) then
    trains them LSQ-style with the weights; otherwise they stay frozen.
    """
    from bitalloc.act_quant import activation_quantizers, calibrate_activations, learn_activation_ranges
    from bitalloc.models import split_parameters

    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    objective = resolve_loss(model, loss, lmbda)
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
    acts = activation_quantizers(qmodel)
    if any(not q.frozen for q in acts.values()):
        if act_calibration is None:
            stream = Batches(data, batch_size, crop, seed + 1)
            act_calibration = [stream.next() for _ in range(act_calibration_batches)]
        calibrate_activations(qmodel, act_calibration, act_observer, batch_size=batch_size)
    if acts:
        learn_activation_ranges(qmodel, learn_scale if learn_act_range is None else learn_act_range)
    main, aux = split_parameters(qmodel)
    optimizer = torch.optim.Adam(main, lr=lr)
    aux_optimizer = torch.optim.Adam(aux, lr=aux_lr) if aux else None
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    batches = Batches(data, batch_size, crop, seed)
    device = model_device(qmodel)
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
        atomic_torch_save({"plan": the_plan.to_dict(), "step": step, "model": qmodel.state_dict(),
               "optimizer": optimizer.state_dict(),
               "aux_optimizer": aux_optimizer.state_dict() if aux_optimizer is not None else None,
               "schedule": schedule.state_dict(), "data_rng": batches.state(), "torch_rng": torch.get_rng_state(),
               "log": log, "lmbda": getattr(objective, "lmbda", None)}, path)

    if start == 0:
        torch.manual_seed(seed)
    bar = tqdm(total=steps, initial=start, disable=not progress, desc="qat", leave=False)
    for step in range(start, steps):
        t0 = time.perf_counter()
        cur_lr = optimizer.param_groups[0]["lr"]
        row = train_step(qmodel, to_device(batches.next(), device), objective, optimizer, aux_optimizer, clip_norm)
        schedule.step()
        log.append({"step": step + 1, **row, "lr": cur_lr, "time_s": time.perf_counter() - t0})
        bar.update()
        bar.set_postfix({k: f"{row[k]:.4g}" for k in ("loss", "bpp", "psnr") if k in row})
        if (step + 1) % save_every == 0 and step + 1 < steps:
            save(step + 1)
    bar.close()
    if start < steps:
        save(steps)
    qmodel.eval()
    if hasattr(qmodel, "update"):
        qmodel.update(force=True)
    frame = pd.DataFrame(log)
    columns = [c for c in LOG_COLUMNS if c in frame or frame.empty]
    return qmodel, frame.reindex(columns=columns + [c for c in frame if c not in columns])
