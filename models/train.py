"""Train an LIC model from the registry with the RD loss, on CPU or GPU, with resume.

Recipe (CompressAI's ``examples/train.py`` in spirit): Adam on the network, a second Adam on the entropy
bottleneck's quantiles with the auxiliary loss, random crops with flips, gradient clipping. Two learning-rate
schedules:

- ``"plateau"`` (the long runs): a short warm-up, then the rate is halved whenever the RD loss on the held-out
  validation split of the training folder (``bitalloc.data.split_of``: never Kodak, never a training photo)
  has not improved for ``patience`` validations; the run stops as converged once the rate falls below
  ``min_lr``. The weights with the best validation loss are kept beside the last ones.
- ``"cosine"``: warm-up + cosine decay over ``steps`` (short fine-tunes of a known length).

A run can start from another checkpoint (``init_from``) to reach a new lambda in a fraction of the steps.

The run state (model, best model, both optimizers, step, RNG states, history) is written atomically every
``save_every`` steps to ``<workdir>/state.pt`` and loads with ``weights_only=True``; rerunning the same
command resumes there. ``<workdir>/history.csv`` holds the learning curve. With ``snapshot=`` the best weights
so far are also written as a float16 checkpoint every ``snapshot_every_s`` seconds (a file to commit, so a
replaced machine loses nothing). At the end, :func:`finalize` writes the float16 checkpoint and measures Kodak
on that very file.
"""

from __future__ import annotations

import copy
import math
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from bitalloc.atomic import atomic_torch_save
from bitalloc.training import train_step

from .checkpoint import load_checkpoint, plain_meta, read_checkpoint, save_checkpoint
from .run_state import (RUN_STATE_FORMAT, RUN_STATE_VERSION, has_context_model, init_weights, load_run_state,
                        run_meta, training_images, validate, validation_crops, write_history)
from .losses import RateDistortionLoss, split_parameters
from .registry import build_model, check_channels, check_model, check_quality, lambda_of

__all__ = ["SCHEDULES", "finalize", "load_run_state", "lr_at", "train", "validate"]

SCHEDULES = ("cosine", "plateau")
def lr_at(step: int, total: int, base_lr: float, warmup: int = 200, floor: float = 0.02) -> float:
    if step < warmup:
        return base_lr * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return base_lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def _rng_state(data) -> dict:
    return {"data_rng": data.rng.bit_generator.state, "torch_rng": torch.get_rng_state()}


def _run_channels(name, st, channels, state_path):
    """The channels a run trains: those asked for, else those its run state recorded (None: the registry's)."""
    recorded = None if st is None else st.get("config", {}).get("channels")
    if channels is not None:
        channels = check_channels(name, channels)
        if recorded is not None and tuple(recorded) != channels:
            raise ValueError(f"{state_path} was started with channels {tuple(recorded)}, not {channels}: resume "
                             f"it with its own channels (or none) or give another workdir")
        return channels
    return None if recorded is None else check_channels(name, recorded)


def _check_positive(**values):
    for name, v in values.items():
        if v is not None and not v > 0:
            raise ValueError(f"train(): {name} must be positive, got {v!r}")


def train(name: str, quality: int, train_dir, workdir, *, steps: int = 5000, size: str = "compact",
          batch_size: int = 8, crop: int = 128, lr: float = 5e-4, aux_lr: float = 1e-3, clip: float = 1.0,
          init_from=None, seed: int = 0, save_every: int = 200, device: str = "cpu", progress: bool = True,
          schedule: str = "cosine", warmup: int = 200, val_every: int = 500, val_crop: int = 256,
          patience: int = 4, lr_factor: float = 0.5, min_lr: float = 5e-6, channels_last: bool = False,
          snapshot=None, snapshot_every_s: float = 3600.0, monitor_dir=None, monitor_every: int = 5000,
          channels=None):
    """Train (or resume) one model; returns the path of the run state. See the module docstring.

    ``steps`` is the length of a cosine run and the most steps of a plateau run. ``snapshot`` (a file path)
    receives the best weights so far as a float16 checkpoint every ``snapshot_every_s`` seconds and at the end.
    ``monitor_dir`` (e.g. Kodak) is forwarded every ``monitor_every`` steps for the learning curve only
    (estimated bpp and PSNR); it never steers training. ``channels`` (N, M) trains another size than the
    registry's (:func:`~bitalloc.models.registry.build_model`); the run state records it, so a resume needs no
    flag, and a resume that names other channels is refused.
    """
    check_model(name)
    check_quality(name, quality, size)
    if schedule not in SCHEDULES:
        raise ValueError(f"Invalid schedule {schedule!r}; valid schedules: {', '.join(SCHEDULES)}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"train(): steps must be a positive integer, got {steps!r}")
    _check_positive(batch_size=batch_size, crop=crop, lr=lr, aux_lr=aux_lr, save_every=save_every,
                    val_every=val_every, patience=patience, monitor_every=monitor_every)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    state_path = workdir / "state.pt"
    torch.manual_seed(seed)
    st = load_run_state(state_path, map_location=device) if state_path.exists() else None
    channels = _run_channels(name, st, channels, state_path)
    model = build_model(name, quality, size, channels).to(device)
    if channels_last and has_context_model(model):
        import warnings

        warnings.warn(f"channels_last is off for {name}: torch {torch.__version__} crashed (segmentation fault) "
                      f"training a context model in channels_last on CPU", stacklevel=2)
        channels_last = False
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    main_params, aux_params = split_parameters(model)
    opt = torch.optim.Adam(main_params, lr=lr)
    aux_opt = torch.optim.Adam(aux_params, lr=aux_lr)
    data = training_images(train_dir, crop, seed)
    criterion = RateDistortionLoss(lambda_of(quality))
    config = dict(name=name, quality=quality, size=size, steps=steps, batch_size=batch_size, crop=crop, lr=lr,
                  schedule=schedule, train_dir=str(train_dir), num_train_images=len(data), seed=seed,
                  channels=None if channels is None else list(channels))
    step, history, init_src, steps_before = 0, [], None, 0
    plateau = {"lr": lr, "best": math.inf, "best_step": 0, "bad": 0, "converged": False}
    best_state = None
    if st is not None:
        try:
            model.load_state_dict(st["model"])
        except RuntimeError as exc:
            sizes = channels or check_model(name).channels(quality, size)
            raise ValueError(f"{state_path} does not fit {name} quality {quality} at channels {sizes}: resume with "
                             f"the channels the run was started with ({str(exc)[:300]})") from None
        opt.load_state_dict(st["opt"])
        aux_opt.load_state_dict(st["aux_opt"])
        step, history, init_src = st["step"], list(st["history"]), st.get("init_from")
        steps_before = int(st.get("steps_before", 0))
        plateau.update(st.get("plateau", {}))
        best_state = st.get("best_model")
        if "data_rng" in st:
            data.rng.bit_generator.state = st["data_rng"]
            torch.set_rng_state(st["torch_rng"])
    else:
        init_src, steps_before = init_weights(model, init_from)
    val = validation_crops(train_dir, val_crop) if schedule == "plateau" else None
    monitor = None
    if monitor_dir is not None:
        from bitalloc.data import resolve_images

        monitor = [x[..., : x.shape[-2] // 64 * 64, : x.shape[-1] // 64 * 64]
                   for x in resolve_images(monitor_dir).values()]
    last_snapshot = time.time()
    if val is not None and step == 0:  # where the run starts from: the first point of its learning curve
        history.append({"step": 0, **validate(model, val, criterion, device), "lr": 0.0, "time": time.time()})

    def save():
        atomic_torch_save({
            "format": RUN_STATE_FORMAT, "version": RUN_STATE_VERSION,
            "model": model.state_dict(), "best_model": best_state, "opt": opt.state_dict(),
            "aux_opt": aux_opt.state_dict(), "step": step, "steps_before": steps_before,
            "history": plain_meta(history), "plateau": plain_meta(plateau), **_rng_state(data),
            "init_from": init_src, "config": plain_meta(config),
        }, state_path)

    def write_snapshot():
        if snapshot is None:
            return
        snap = build_model(name, quality, size, channels)
        snap.load_state_dict(best_state if best_state is not None else model.state_dict())
        meta = run_meta(name, quality, size, config, steps_before + (plateau["best_step"] if best_state else step),
                     init_src, history)
        meta.update(snapshot=True, run_step=step, best_val_loss=plateau["best"])
        save_checkpoint(snap, snapshot, meta)

    model.train()
    bar = tqdm(total=steps, initial=step, disable=not progress, desc=f"{name} q{quality}", mininterval=10)
    ema = None
    try:
        while step < steps and not plateau["converged"]:
            rate = (lr_at(step, steps, lr, warmup) if schedule == "cosine"
                    else plateau["lr"] * min(1.0, (step + 1) / warmup))
            for g in opt.param_groups:
                g["lr"] = rate
            x = data.batch(batch_size).to(device)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            row = train_step(model, x, criterion, opt, aux_opt, clip)
            step += 1
            cur = np.array([row["loss"], row["bpp"], row["psnr"], row["aux_loss"]])
            ema = cur if ema is None else 0.98 * ema + 0.02 * cur
            if step % 50 == 0:
                history.append({"step": step, "loss": float(ema[0]), "bpp": float(ema[1]),
                                "psnr": float(ema[2]), "aux": float(ema[3]), "lr": rate, "time": time.time()})
            if val is not None and step % val_every == 0:
                v = validate(model, val, criterion, device)
                if v["val_loss"] < plateau["best"] * (1 - 1e-3):
                    plateau.update(best=v["val_loss"], best_step=step, bad=0)
                    best_state = copy.deepcopy({k: t.detach().cpu() for k, t in model.state_dict().items()})
                else:
                    plateau["bad"] += 1
                    if plateau["bad"] >= patience:
                        plateau.update(lr=plateau["lr"] * lr_factor, bad=0)
                        plateau["converged"] = plateau["lr"] < min_lr
                history.append({"step": step, **v, "lr": rate, "time": time.time()})
            if monitor is not None and step % monitor_every == 0:
                m = validate(model, monitor, criterion, device)
                history.append({"step": step, **{k.replace("val_", "monitor_"): x for k, x in m.items()},
                                "time": time.time()})
            bar.set_postfix(bpp=f"{ema[1]:.3f}", psnr=f"{ema[2]:.2f}", lr=f"{rate:.1e}", refresh=False)
            bar.update(1)
            if step % save_every == 0 or step == steps or plateau["converged"]:
                save()
                write_history(history, workdir / "history.csv")
                if time.time() - last_snapshot >= snapshot_every_s:
                    write_snapshot()
                    last_snapshot = time.time()
    except KeyboardInterrupt:  # Ctrl-C / SIGTERM: the state to resume from, its curve and the best weights to commit
        save()
        write_history(history, workdir / "history.csv")
        write_snapshot()
        raise
    bar.close()
    save()
    write_history(history, workdir / "history.csv")
    write_snapshot()
    return state_path


def finalize(state_path, out_path, *, eval_dir=None, aux_steps: int = 2000, progress: bool = True,
             weights: str = "best") -> dict:
    """Turn a run state into a shipped float16 checkpoint and measure Kodak on the file that ships.

    ``weights="best"`` ships the weights with the best validation loss (plateau runs; the last ones otherwise).
    The auxiliary loss is polished first (it only moves the entropy bottleneck's quantiles, which bound
    the CDF tables), then ``update(force=True)`` builds the entropy coder's tables from the float16 weights.
    """
    from bitalloc.evaluation import evaluate

    if weights not in ("best", "last"):
        raise ValueError(f"weights must be 'best' or 'last', got {weights!r}")
    st = load_run_state(state_path)
    cfg = st["config"]
    model = build_model(cfg["name"], cfg["quality"], cfg["size"], cfg.get("channels"))
    use_best = weights == "best" and st.get("best_model") is not None
    model.load_state_dict(st["best_model"] if use_best else st["model"])
    _, aux_params = split_parameters(model)
    aux_opt = torch.optim.Adam(aux_params, lr=1e-2)
    for _ in range(aux_steps):
        aux_opt.zero_grad()
        model.aux_loss().backward()
        aux_opt.step()
    # Round-trip the parameters through float16 (what ships) so the CDF tables are built from those values;
    # buffers ship in full precision (see save_checkpoint).
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.half().float())
    model.update(force=True)
    run_steps = st.get("plateau", {}).get("best_step", st["step"]) if use_best else st["step"]
    meta = run_meta(cfg["name"], cfg["quality"], cfg["size"], cfg, int(st.get("steps_before", 0)) + run_steps,
                 st.get("init_from"), st["history"])
    save_checkpoint(model, out_path, meta)
    if eval_dir is not None:
        shipped = load_checkpoint(out_path)
        df = evaluate(shipped, eval_dir, progress=progress)
        meta["kodak"] = {"bpp": float(df.bpp.mean()), "psnr_rgb": float(df.psnr_rgb.mean()),
                         "ms_ssim_rgb": float(df.ms_ssim_rgb.mean()), "num_images": int(len(df))}
        ckpt = read_checkpoint(out_path)
        ckpt["meta"] = plain_meta(meta)
        atomic_torch_save(ckpt, out_path)
    return meta
