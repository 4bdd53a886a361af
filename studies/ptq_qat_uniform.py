"""Uniform weight quantization on Kodak: 8-bit after calibration alone, 4-bit before and after QAT.

    BITALLOC_DATA=../shared/data python studies/ptq_qat_uniform.py --model bmshj2018-hyperprior --quality 4

Rows: fp32; uniform 8-bit weights calibrated only (min-max and MSE calibration); uniform 4-bit calibrated only;
uniform 4-bit after :func:`bitalloc.qat.finetune` (RD loss at the model's lambda, leaky clip, LSQ scales,
``--qat-steps`` steps on random crops of training photos, never Kodak). Every row is a real bitstream on Kodak
(:func:`bitalloc.evaluation.evaluate`: bpp from bytes, RGB PSNR) and the packed size of its plan
(:func:`bitalloc.export.export_packed`). Targets: 8-bit loses < 0.2 dB at a bpp within 2 %.
Writes studies/results/ptq_qat_uniform_<model>_q<q>.{csv,md}.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from bitalloc.atomic import atomic_write_text
from bitalloc.study_args import add_model_args, command_line, kodak_folder, load_model_arg, machine_line

RESULTS = Path(__file__).resolve().parent / "results"


def train_crops(root: Path, n_images: int, per_image: int, crop: int, seed: int = 0) -> torch.Tensor:
    """Random crops of the first ``n_images`` training photos (decoding all 681 would take too long here)."""
    from bitalloc.data import image_paths, load_image

    rng = np.random.default_rng(seed)
    out = []
    for path in image_paths(root)[:n_images]:
        x = load_image(path)
        _, h, w = x.shape
        if h < crop or w < crop:
            continue
        for _ in range(per_image):
            i, j = int(rng.integers(0, h - crop + 1)), int(rng.integers(0, w - crop + 1))
            out.append(x[:, i:i + crop, j:j + crop])
    return torch.stack(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_args(p, RESULTS)
    p.add_argument("--images", type=int, default=None, help="first N Kodak images (default: all 24)")
    p.add_argument("--qat-steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--crop", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--train-images", type=int, default=96)
    p.add_argument("--workdir", default=None, help="QAT state folder (resumable); default: a temp folder")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from bitalloc.data import data_root, resolve_images
    from bitalloc.evaluation import evaluate
    from bitalloc.export import export_packed
    from bitalloc.graph import quantizable_layers
    from bitalloc.plan import BitPlan
    from bitalloc.qat import finetune
    from bitalloc.quant import apply_plan

    model, source = load_model_arg(args)
    imgs = resolve_images(kodak_folder(args), limit=args.images)
    names = list(quantizable_layers(model))
    tmp = Path(tempfile.mkdtemp(prefix="ptq_qat_"))
    rows = []

    def measure(label: str, m: torch.nn.Module, bits: int | None, mode: str, calibration: str = "",
                seconds: float = 0.0) -> None:
        m.eval()
        m.update(force=True)
        df = evaluate(m, imgs, progress=False)
        size = export_packed(m, tmp / f"{label}.bapk") if bits else {"file_bytes": sum(
            int(layer.weight.numel()) * 4 for layer in quantizable_layers(m).values())}  # fp32 weights
        rows.append({"model": args.model, "quality": args.quality, "row": label, "bits": bits or 32, "mode": mode,
                     "calibration": calibration, "bpp": df.bpp.mean(), "psnr_rgb": df.psnr_rgb.mean(),
                     "ms_ssim_rgb": df.ms_ssim_rgb.mean(), "images": len(df),
                     "weights_kib": size["file_bytes"] / 1024, "time_s": seconds})
        print(rows[-1], flush=True)

    measure("fp32", model, None, "float")
    for cal in ("minmax", "mse"):
        measure(f"w8_ptq_{cal}", apply_plan(model, BitPlan.uniform(names, 8), calibration=cal), 8, "ptq", cal)
    plan4 = BitPlan.uniform(names, 4)
    measure("w4_ptq_mse", apply_plan(model, plan4, calibration="mse"), 4, "ptq", "mse")
    root = data_root(args.data)
    crops = train_crops(root / "train", args.train_images, 4, args.crop)
    t0 = time.perf_counter()
    qat, log = finetune(model, plan4, crops, steps=args.qat_steps, batch_size=args.batch_size, lr=args.lr,
                        workdir=args.workdir or tmp / "qat", progress=True)
    measure("w4_qat", qat, 4, "qat", "mse+lsq", time.perf_counter() - t0)

    table = pd.DataFrame(rows)
    fp = table.iloc[0]
    table["d_psnr_db"] = table.psnr_rgb - fp.psnr_rgb
    table["d_bpp_pct"] = 100 * (table.bpp / fp.bpp - 1)
    out = Path(args.out)
    stem = f"ptq_qat_uniform_{args.model}_q{args.quality}"
    atomic_write_text(out / f"{stem}.csv", table.to_csv(index=False))
    w4p, w4q = table.set_index("row").loc["w4_ptq_mse"], table.set_index("row").loc["w4_qat"]
    gap = fp.psnr_rgb - w4p.psnr_rgb
    recovered = 100 * (w4q.psnr_rgb - w4p.psnr_rgb) / gap if gap > 0 else float("nan")
    cols = ["row", "bits", "mode", "calibration", "bpp", "d_bpp_pct", "psnr_rgb", "d_psnr_db", "ms_ssim_rgb",
            "weights_kib"]
    lines = [
        f"# Uniform weight quantization, PTQ vs QAT ({args.model} q{args.quality}, Kodak)",
        "",
        f"- model: {source}; {len(imgs)} Kodak images, real bitstreams",
        f"- QAT: {args.qat_steps} steps, batch {args.batch_size} x {args.crop}^2 crops of the first "
        f"{args.train_images} training photos, Adam lr {args.lr} cosine, leaky clip, LSQ scales, "
        f"lambda {model.meta['lambda']}; {rows[-1]['time_s']:.0f} s",
        machine_line(args.threads),
        command_line("studies/ptq_qat_uniform.py", argv),
        "",
        table[cols].to_markdown(index=False, floatfmt=".4g"),
        "",
        f"4-bit: PTQ loses {gap:.3f} dB; QAT recovers {w4q.psnr_rgb - w4p.psnr_rgb:+.3f} dB "
        f"({recovered:.0f} % of the loss) at {w4q.d_bpp_pct:+.2f} % bpp vs fp32.",
        "",
    ]
    atomic_write_text(out / f"{stem}.md", "\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
