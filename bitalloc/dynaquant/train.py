"""Training the dynamic model end to end, and steering its average bit-width to a target.

Objective (DynaQuant, Bao et al., arXiv 2511.07903), per batch::

    L = R + lambda * 255^2 * MSE  +  gamma * L0 * E[avg_bits] / B

with E[avg_bits] the parameter-weighted expected average bit-width under the selectors' softmax (all quantized
layers, the fixed 8-bit ones included; :meth:`DynaQuantModel.expected_bits`), B the highest candidate and L0
the RD loss of the first batch (a constant), so ``gamma`` is dimensionless: gamma = 1 prices going from B bits
to 0 at the whole initial RD loss.

Reaching a target average (``target_avg_bits``) happens in two steps:

1. *Dual ascent during training* (a Lagrangian on the constraint E[avg_bits] <= target): after every step,
   ``gamma <- clip(gamma + eta * (avg_hard - target), 0, gamma_max)``, avg_hard the batch's average of the
   bits actually chosen (Gumbel hard samples). gamma starts at ``gamma`` (0 by default) and rises only
   while the chosen bits exceed the target.
2. *Calibration of a decision-time bias* (:func:`calibrate_bit_bias`): on a batch of fresh random crops of the
   training photos (never the evaluation images), in eval mode (argmax), find by bracketing + bisection the
   smallest bias kappa such that subtracting ``kappa * b`` from the logit of candidate b brings the batch's mean average
   bits to <= target. kappa may be negative when training undershoots (the budget is then used up to the
   target). This guarantees the training-distribution average lands at or below the target whatever
   the dual ascent reached.

With ``target_avg_bits=None`` gamma stays fixed (what the tests use to compare penalty weights).

Optimisers: Adam on the network weights (``lr``), Adam on the selectors and the quantizers' scales/offsets
(``quant_lr``), both with a cosine decay to a tenth, CompressAI's auxiliary loss for the entropy
bottleneck's quantiles; gradients clipped at 1.
The Gumbel temperature anneals linearly from ``tau[0]`` to ``tau[1]``. The run state is written atomically to
``<workdir>/state.pt`` every ``save_every`` steps and at the end, as tensors and plain data (it loads with
``weights_only=True``); the same call resumes there.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from bitalloc.training import train_step

from .model import DynaQuantModel

__all__ = ["calibrate_bit_bias", "draw_batch", "train_dynaquant"]

STATE_KEYS = ("model", "opt", "aux_opt", "step", "log", "gamma", "rd0", "gen", "torch_rng")


def draw_batch(images, batch_size: int, gen: torch.Generator) -> torch.Tensor:
    """A training batch from an ImageFolder (``.batch``) or a (N,3,H,W) tensor (random rows)."""
    if isinstance(images, torch.Tensor):
        idx = torch.randint(0, images.shape[0], (batch_size,), generator=gen)
        return images[idx]
    return images.batch(batch_size)


def _param_groups(dq: DynaQuantModel):
    quant, main, aux = [], [], []
    for name, p in dq.named_parameters():
        if not p.requires_grad:
            continue
        if name.endswith(".quantiles"):
            aux.append(p)
        elif name.startswith("selectors.") or ".weight_q." in name or ".act." in name:
            quant.append(p)
        else:
            main.append(p)
    return main, quant, aux


@torch.no_grad()
def _avg_bits_eval(dq: DynaQuantModel, x: torch.Tensor, chunk: int = 8) -> float:
    vals = []
    for i in range(0, x.shape[0], chunk):
        dq(x[i:i + chunk])
        vals.append(dq.avg_bits_of(dq.chosen_bits()))
    return float(torch.cat(vals).mean())


@torch.no_grad()
def calibrate_bit_bias(dq: DynaQuantModel, x: torch.Tensor, target_avg_bits: float, *, iters: int = 14,
                       limit: float = 64.0) -> tuple[float, float]:
    """Set the selectors' decision bias so the mean average bits on ``x`` is <= ``target_avg_bits``
    (module docstring, step 2); returns (bias, achieved average bits)."""
    dq.check_target(target_avg_bits)
    was_training = dq.training
    dq.eval()
    try:
        def f(b: float) -> float:
            dq.set_bit_bias(b)
            return _avg_bits_eval(dq, x)

        if f(0.0) <= target_avg_bits:
            hi, lo, step = 0.0, -0.05, 0.05
            while f(lo) <= target_avg_bits and lo > -limit:
                hi, step = lo, step * 2
                lo = hi - step
            if f(lo) <= target_avg_bits:
                hi = lo
        else:
            lo, hi, step = 0.0, 0.05, 0.05
            while f(hi) > target_avg_bits and hi < limit:
                lo, step = hi, step * 2
                hi = lo + step
            if f(hi) > target_avg_bits:  # the highest bias reached only the lowest candidates' neighbourhood
                hi = 1e6
        for _ in range(iters):
            if hi - lo < 1e-4:
                break
            mid = 0.5 * (lo + hi)
            if f(mid) <= target_avg_bits:
                hi = mid
            else:
                lo = mid
        achieved = f(hi)
        return hi, achieved
    finally:
        dq.train(was_training)


def train_dynaquant(dq: DynaQuantModel, train_images, *, lmbda: float, steps: int,
                    target_avg_bits: float | None = None, gamma: float = 0.0, gamma_lr: float = 0.01,
                    gamma_max: float = 10.0, lr: float = 5e-5, quant_lr: float = 1e-3, batch_size: int = 8,
                    tau: tuple[float, float] = (1.0, 0.5), clip: float = 1.0, seed: int = 0, workdir=None,
                    save_every: int = 50, progress: bool = True) -> pd.DataFrame:
    """Train ``dq`` in place (module docstring); returns the log (one row per step)."""
    from bitalloc.models import RateDistortionLoss

    criterion = RateDistortionLoss(lmbda)
    main, quant, aux = _param_groups(dq)
    opt = torch.optim.Adam([{"params": main, "lr": lr}, {"params": quant, "lr": quant_lr}])
    aux_opt = torch.optim.Adam(aux, lr=1e-3)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    state_path = Path(workdir) / "state.pt" if workdir is not None else None
    step, log, rd0 = 0, [], None
    if state_path is not None and state_path.exists():
        from bitalloc.safe_load import load_torch_file

        st = load_torch_file(state_path, "a DynaQuant training run state (written by train_dynaquant)",
                             required=STATE_KEYS)
        try:
            dq.load_state_dict(st["model"])
            opt.load_state_dict(st["opt"])
            aux_opt.load_state_dict(st["aux_opt"])
            step, log, gamma, rd0 = int(st["step"]), list(st["log"]), float(st["gamma"]), st["rd0"]
            gen.set_state(st["gen"])
            torch.set_rng_state(st["torch_rng"])
            if st.get("data_rng") is not None and hasattr(train_images, "rng"):
                train_images.rng.bit_generator.state = st["data_rng"]
        except (RuntimeError, KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{state_path} does not fit this DynaQuant training run (model, optimiser or RNG "
                             f"state): {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None

    def save():
        if state_path is None:
            return
        from bitalloc.atomic import atomic_torch_save

        state_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_torch_save({"model": dq.state_dict(), "opt": opt.state_dict(), "aux_opt": aux_opt.state_dict(),
                           "step": step, "log": log, "gamma": gamma, "rd0": rd0, "gen": gen.get_state(),
                           "torch_rng": torch.get_rng_state(),
                           "data_rng": train_images.rng.bit_generator.state if hasattr(train_images, "rng")
                           else None}, state_path)

    top = max(dq.candidate_bits)

    def penalised_loss(model: DynaQuantModel, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The RD loss plus gamma * L0 * E[avg_bits] / B (module docstring); L0 is the first batch's RD loss."""
        nonlocal rd0
        out = model(x)
        rd = criterion(out, x)
        if rd0 is None:
            rd0 = float(rd["loss"].detach())
        return {"loss": rd["loss"] + gamma * rd0 * (out["expected_bits"].mean() / top), "rd_loss": rd["loss"],
                "bpp": rd["bpp"], "psnr": rd["psnr"], "expected_bits": out["expected_bits"].mean()}

    dq.train()
    bar = tqdm(total=steps, initial=step, disable=not progress, desc="dynaquant", mininterval=5)
    t0 = time.perf_counter()
    skipped = 0
    while step < steps:
        dq.tau = tau[0] + (tau[1] - tau[0]) * step / max(1, steps - 1)
        decay = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / max(1, steps)))
        for group, base_lr in zip(opt.param_groups, (lr, quant_lr)):
            group["lr"] = base_lr * decay
        row = train_step(dq, draw_batch(train_images, batch_size, gen), penalised_loss, opt, aux_opt, clip,
                         skip_nonfinite=True)
        if row is None:
            skipped += 1  # a rare non-finite batch must not poison the weights: skip it, and say so in the log
            if skipped > max(5, steps // 10):
                raise FloatingPointError(f"dynaquant training: {skipped} non-finite losses by step {step}")
            step += 1
            bar.update(1)
            continue
        avg_hard = float(dq.avg_bits_of(dq.chosen_bits()).mean())
        if target_avg_bits is not None:
            gamma = float(np.clip(gamma + gamma_lr * (avg_hard - target_avg_bits), 0.0, gamma_max))
        step += 1
        log.append({"step": step, "loss": row["loss"], "rd_loss": row["rd_loss"], "bpp": row["bpp"],
                    "psnr": row["psnr"], "expected_bits": row["expected_bits"], "avg_bits": avg_hard,
                    "gamma": gamma, "tau": dq.tau, "time_s": time.perf_counter() - t0})
        bar.set_postfix(bits=f"{avg_hard:.2f}", gamma=f"{gamma:.3f}", psnr=f"{row['psnr']:.2f}", refresh=False)
        bar.update(1)
        if step % save_every == 0 or step == steps:
            save()
    bar.close()
    dq.eval()
    return pd.DataFrame(log)
