"""Real-bitstream evaluation of the dynamic model, and the harness cell ``dynaquant``.

Per image (batch of one, eval mode): the encoder's selectors choose the bits of g_a and h_s, every layer runs
its weights at the chosen precision (derived from the stored 8-bit integers, see
:class:`~bitalloc.dynaquant.quantizers.NestedWeight`), y and z are entropy-coded to bytes; the decoder
re-derives the bits of h_s (checked equal to the encoder's) and g_s from z_hat and y_hat, and decodes.
bpp is counted from the bytes.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from .model import DynaQuantModel
from .train import calibrate_bit_bias, draw_batch, train_dynaquant

__all__ = ["evaluate_dynamic", "load_dynaquant", "run_dynaquant_cell", "save_dynaquant"]


DYNAQUANT_FORMAT = "bitalloc-dynaquant"
DYNAQUANT_VERSION = 1


def save_dynaquant(dq: DynaQuantModel, path, **extra) -> None:
    """Write ``dq`` as tensors and plain data (architecture, config, meta, ``extra``): it loads with
    ``weights_only=True``."""
    from bitalloc.atomic import atomic_torch_save
    from bitalloc.models.checkpoint import plain_meta

    base = dq.base
    arch = {"class": type(base).__name__, "N": int(base.N), "M": int(base.M)}
    atomic_torch_save({"format": DYNAQUANT_FORMAT, "version": DYNAQUANT_VERSION, "arch": arch,
                       "config": plain_meta(dq.config, "config"), "meta": plain_meta(dq.meta),
                       "state": dq.state_dict(), **plain_meta(extra, "extra")}, path)


def load_dynaquant(path) -> DynaQuantModel:
    """Re-instantiate a saved dynamic model (architecture from the file, then its state).

    The file loads with ``weights_only=True``; one that is not a saved dynamic model (another format, a
    pickled object, a truncated file, a state that does not fit its architecture) raises ``ValueError``
    naming it.
    """
    import compressai.models as cm

    from bitalloc.safe_load import load_torch_file

    what = f"a bitalloc dynamic model (format {DYNAQUANT_FORMAT!r}, written by save_dynaquant)"
    blob = load_torch_file(path, what, required=("format", "arch", "config", "state"))
    if blob["format"] != DYNAQUANT_FORMAT or blob.get("version") != DYNAQUANT_VERSION:
        raise ValueError(f"{path} is not {what}: format {blob['format']!r} version {blob.get('version')!r}")
    arch = blob["arch"]
    try:
        base = getattr(cm, arch["class"])(int(arch["N"]), int(arch["M"]))
        dq = DynaQuantModel(base, **blob["config"])
        dq.load_state_dict(blob["state"])
    except (AttributeError, KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise ValueError(f"{path}: its state does not fit the architecture it names ({arch}): "
                         f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    dq.meta = dict(blob.get("meta") or {})
    return dq.eval()


@torch.no_grad()
def evaluate_dynamic(dq: DynaQuantModel, images: dict, *, progress: bool = True) -> pd.DataFrame:
    """One row per image: bpp (bytes), PSNR/MS-SSIM (RGB), avg_bits, max_bits, bit_ops, ``bits:<layer>``.

    ``avg_bits``: parameter-weighted mean weight bits of that image's configuration; ``max_bits``: the highest
    bit-width a *dynamic* layer used; ``bit_ops``: sum over layers of MACs x weight bits x activation bits
    (activation bits = the quantizer's, 32 when activations stay float), every layer counted once.
    """
    from pytorch_msssim import ms_ssim

    from bitalloc.evaluation import compress_image, psnr

    dq.eval()
    dq.update(force=True)
    dq.freeze()
    dyn = [n for g in dq.dynamic_layers.values() for n in g]
    rows = []
    try:
        for name, x in tqdm(images.items(), disable=not progress, desc="evaluate dynaquant", leave=False):
            x4 = x.unsqueeze(0)
            r = compress_image(dq, x4)
            if any(dq.last_bits[n] != b for n, b in dq.encoder_hyp_bits.items()):
                raise RuntimeError(f"image {name}: the decoder chose h_s bits {dq.last_bits} but the encoder "
                                   f"{dq.encoder_hyp_bits}; the bitstream would not decode")
            h, w = x.shape[-2:]
            bits = {n: dq.last_bits[n] for n in dq.layer_names}
            total = sum(dq.num_params.values())
            bit_ops = sum(dq.last_macs[n] * b * (dq.layer(n).act_bits or 32) for n, b in bits.items())
            rows.append({
                "image": name, "height": h, "width": w, "num_bytes": r["num_bytes"],
                "bpp": r["num_bytes"] * 8.0 / (h * w), "psnr_rgb": psnr(x4, r["x_hat"]),
                "ms_ssim_rgb": ms_ssim(x4, r["x_hat"], data_range=1.0).item() if min(h, w) > 160 else math.nan,
                "avg_bits": sum(dq.num_params[n] * b for n, b in bits.items()) / total,
                "max_bits": max(bits[n] for n in dyn), "bit_ops": float(bit_ops),
                "encoding_time": r["encoding_time"], "decoding_time": r["decoding_time"],
                **{f"bits:{n}": b for n, b in bits.items()},
            })
    finally:
        dq.unfreeze()
    return pd.DataFrame(rows)


def _calibration_crops(train_images, n: int, crop: int, seed: int) -> torch.Tensor:
    if isinstance(train_images, torch.Tensor):
        return draw_batch(train_images, n, torch.Generator().manual_seed(seed + 10_000))
    from bitalloc.data import ImageFolder

    if isinstance(train_images, ImageFolder):
        old = train_images.crop
        train_images.crop = crop
        try:
            return train_images.batch(n)
        finally:
            train_images.crop = old
    return train_images.batch(n)


def run_dynaquant_cell(float_model, *, target_avg_bits: float, candidate_bits=(4, 6, 8), lmbda: float,
                       steps: int, train_images, eval_images, estimator: str = "dgm", seed: int = 0,
                       workdir=None, progress: bool = True, max_bits: int | None = None, batch_size: int = 8,
                       calib_batch: int = 16, calib_crop: int = 256, act_bits: int | None = 8,
                       **train_kw) -> tuple[pd.DataFrame, dict]:
    """Train DynaQuant from ``float_model`` to ``target_avg_bits`` and evaluate it with real bitstreams.

    The penalty weight gamma follows dual ascent during training, then a decision-time bias is calibrated on
    ``calib_batch`` fresh random ``calib_crop`` x ``calib_crop`` crops of the training photos (never the
    evaluation images; larger than the training crops because the selectors see pooled features whose
    statistics depend on the image size) so the training-distribution average is <= ``target_avg_bits``
    (see :mod:`bitalloc.dynaquant.train`). Returns (per-image rows, summary); with ``workdir`` the training
    resumes from ``state.pt`` and a finished cell is reloaded from ``dynaquant.pt`` / ``images.csv``.
    ``act_bits=None`` keeps activations in float (weights-only DynaQuant, an ablation).
    """
    torch.manual_seed(seed)
    dq = DynaQuantModel(float_model, candidate_bits, estimator=estimator, max_bits=max_bits, act_bits=act_bits)
    dq.check_target(target_avg_bits)
    wd = Path(workdir) if workdir is not None else None
    if wd is not None and (wd / "summary.json").exists() and (wd / "images.csv").exists():
        return pd.read_csv(wd / "images.csv"), json.loads((wd / "summary.json").read_text())
    t0 = time.perf_counter()
    log = train_dynaquant(dq, train_images, lmbda=lmbda, steps=steps, target_avg_bits=target_avg_bits,
                          batch_size=batch_size, seed=seed, workdir=wd, progress=progress, **train_kw)
    train_time = time.perf_counter() - t0
    held_out = _calibration_crops(train_images, calib_batch, calib_crop, seed)
    bias, train_avg = calibrate_bit_bias(dq, held_out, target_avg_bits)
    frame = evaluate_dynamic(dq, eval_images, progress=progress)
    summary = {
        "avg_bits": float(frame.avg_bits.mean()), "max_avg_bits": float(frame.avg_bits.max()),
        "max_bits": int(frame.max_bits.max()), "bit_ops": float(frame.bit_ops.mean()),
        "train_avg_bits": train_avg, "target_avg_bits": float(target_avg_bits), "bit_bias": bias,
        "gamma": float(log.gamma.iloc[-1]) if len(log) else float("nan"), "train_time_s": train_time,
        "steps": int(steps), "estimator": estimator, "act_bits": act_bits, "candidate_bits": list(dq.candidate_bits),
        "bpp": float(frame.bpp.mean()), "psnr_rgb": float(frame.psnr_rgb.mean()),
        "ms_ssim_rgb": float(frame.ms_ssim_rgb.mean()),
        "final_train_psnr": float(log.psnr.tail(20).mean()) if len(log) else float("nan"),
    }
    if wd is not None:
        from bitalloc.atomic import atomic_write_text

        save_dynaquant(dq, wd / "dynaquant.pt", summary=summary)
        atomic_write_text(wd / "train_log.csv", log.to_csv(index=False))
        atomic_write_text(wd / "images.csv", frame.to_csv(index=False))
        atomic_write_text(wd / "summary.json", json.dumps(summary, indent=1))
    return frame, summary
