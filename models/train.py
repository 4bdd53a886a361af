"""Train an LIC model from the registry with the RD loss, on CPU or GPU, with resume.

Recipe (CompressAI's ``examples/train.py`` in spirit): Adam on the network, a second Adam on the entropy
bottleneck's quantiles with the auxiliary loss, random crops with flips, gradient clipping, and a
warm-up + cosine learning-rate schedule (short CPU budgets converge faster with it than with a plateau
schedule). A run can start from another checkpoint (``init_from``) to reach a new lambda in a fraction
of the steps: the compact zoo trains one quality from scratch and fine-tunes the others from it.

The run state (model, both optimizers, step, RNG) is written atomically every ``save_every`` steps to
``<workdir>/state.pt``; rerunning the same command resumes there. At the end, :func:`finalize` writes
the float16 checkpoint and measures Kodak on that very file.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .checkpoint import atomic_torch_save, load_checkpoint, plain_meta, read_checkpoint, save_checkpoint
from .losses import RateDistortionLoss, split_parameters
from .registry import build_model, check_model, check_quality, lambda_of

__all__ = ["finalize", "lr_at", "train"]


def lr_at(step: int, total: int, base_lr: float, warmup: int = 200, floor: float = 0.02) -> float:
    if step < warmup:
        return base_lr * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return base_lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def _init_weights(model, init_from):
    if init_from is None:
        return None
    path = Path(init_from)
    if not path.is_file():
        raise FileNotFoundError(f"init_from file not found: {path}")
    try:  # a shipped checkpoint, told by its format (not its name): safe loading
        model.load_state_dict(load_checkpoint(path).state_dict())
    except ValueError as not_checkpoint:  # a run state written by train() (holds RNG states: not weights_only)
        try:
            blob = torch.load(path, map_location="cpu", weights_only=False)
        except Exception:  # torch raises many types for a file that is not its own
            blob = None
        if not isinstance(blob, dict) or "model" not in blob:
            raise ValueError(f"{path} is neither a bitalloc checkpoint nor a train() run state "
                             f"(as a checkpoint: {not_checkpoint})") from None
        model.load_state_dict(blob["model"])
    return str(path)


def train(name: str, quality: int, train_dir, workdir, *, steps: int = 5000, size: str = "compact",
          batch_size: int = 8, crop: int = 128, lr: float = 5e-4, aux_lr: float = 1e-3, clip: float = 1.0,
          init_from=None, seed: int = 0, save_every: int = 200, device: str = "cpu", progress: bool = True):
    """Train (or resume) one model; returns the path of the run state. See the module docstring."""
    from bitalloc.data import ImageFolder

    check_model(name)
    check_quality(name, quality, size)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    state_path = workdir / "state.pt"
    torch.manual_seed(seed)
    model = build_model(name, quality, size).to(device)
    main_params, aux_params = split_parameters(model)
    opt = torch.optim.Adam(main_params, lr=lr)
    aux_opt = torch.optim.Adam(aux_params, lr=aux_lr)
    data = ImageFolder(train_dir, crop=crop, seed=seed)
    criterion = RateDistortionLoss(lambda_of(quality))
    step, history, init_src = 0, [], None
    if state_path.exists():
        st = torch.load(state_path, map_location=device, weights_only=False)
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["opt"])
        aux_opt.load_state_dict(st["aux_opt"])
        step, history, init_src = st["step"], st["history"], st.get("init_from")
        data.rng.bit_generator.state = st["data_rng"]
        torch.set_rng_state(st["torch_rng"])
    else:
        init_src = _init_weights(model, init_from)

    def save():
        atomic_torch_save({
            "model": model.state_dict(), "opt": opt.state_dict(), "aux_opt": aux_opt.state_dict(),
            "step": step, "history": history, "data_rng": data.rng.bit_generator.state,
            "torch_rng": torch.get_rng_state(), "init_from": init_src,
            "config": dict(name=name, quality=quality, size=size, steps=steps, batch_size=batch_size, crop=crop,
                           lr=lr, train_dir=str(train_dir), num_train_images=len(data), seed=seed),
        }, state_path)

    model.train()
    bar = tqdm(total=steps, initial=step, disable=not progress, desc=f"{name} q{quality}", mininterval=5)
    ema = None
    while step < steps:
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, lr)
        x = data.batch(batch_size).to(device)
        out = model(x)
        terms = criterion(out, x)
        opt.zero_grad(set_to_none=True)
        terms["loss"].backward()
        torch.nn.utils.clip_grad_norm_(main_params, clip)
        opt.step()
        aux_loss = model.aux_loss()
        aux_opt.zero_grad(set_to_none=True)
        aux_loss.backward()
        aux_opt.step()
        step += 1
        cur = np.array([terms["loss"].item(), terms["bpp"].item(), terms["psnr"].item(), aux_loss.item()])
        ema = cur if ema is None else 0.98 * ema + 0.02 * cur
        if step % 50 == 0:
            history.append({"step": step, "loss": float(ema[0]), "bpp": float(ema[1]), "psnr": float(ema[2]),
                            "aux": float(ema[3]),
                            "lr": opt.param_groups[0]["lr"], "time": time.time()})
        bar.set_postfix(bpp=f"{ema[1]:.3f}", psnr=f"{ema[2]:.2f}", aux=f"{ema[3]:.1f}", refresh=False)
        bar.update(1)
        if step % save_every == 0 or step == steps:
            save()
    bar.close()
    if not state_path.exists():
        save()
    return state_path


def finalize(state_path, out_path, *, eval_dir=None, aux_steps: int = 2000, progress: bool = True) -> dict:
    """Turn a run state into a shipped float16 checkpoint and measure Kodak on the file that ships.

    The auxiliary loss is polished first (it only moves the entropy bottleneck's quantiles, which bound
    the CDF tables), then ``update(force=True)`` builds the entropy coder's tables from the float16 weights.
    """
    from bitalloc.evaluation import evaluate

    st = torch.load(state_path, map_location="cpu", weights_only=False)
    cfg = st["config"]
    model = build_model(cfg["name"], cfg["quality"], cfg["size"])
    model.load_state_dict(st["model"])
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
    spec = check_model(cfg["name"])
    channels = spec.channels(cfg["quality"], cfg["size"])
    meta = {
        "architecture": cfg["name"], "quality": cfg["quality"], "size": cfg["size"],
        **dict(zip(("N", "M"), channels)), "lambda": lambda_of(cfg["quality"]),
        "training_steps": st["step"], "batch_size": cfg["batch_size"], "crop": cfg["crop"],
        "training_data": f"{Path(cfg['train_dir']).name}/ ({cfg['num_train_images']} images: BSDS500 + CID22)",
        "init_from": Path(st["init_from"]).name if st.get("init_from") else None,
        "final_train_bpp": st["history"][-1]["bpp"] if st["history"] else None,
        "final_train_psnr": st["history"][-1]["psnr"] if st["history"] else None,
    }
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
