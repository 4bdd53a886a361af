"""Kodak table of the shipped checkpoints, with each family's BD-rate against CompressAI's published
bmshj2018-hyperprior (the pretrained paper-size model) and an RD figure with JPEG and BPG for context.

    BITALLOC_DATA=../shared/data python studies/zoo_table.py

Every number is measured here by entropy-coding the 24 Kodak images with the files that ship
(bpp from the bytes; mean encode / decode wall time per image). Writes studies/results/zoo_kodak.{csv,md,png}
and one CompressAI-format JSON per family.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from bitalloc.atomic import atomic_savefig, atomic_write_text
from bitalloc.bdrate import bd_psnr, bd_rate
from bitalloc.data import data_root
from bitalloc.evaluation import evaluate, to_compressai_json
from bitalloc.models import available_checkpoints, load_checkpoint, shipped_checkpoint_dir
from bitalloc.reference import reference_curve

RESULTS = Path(__file__).parent / "results"


def main(argv=None) -> pd.DataFrame:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=None)
    p.add_argument("--anchor", default="bmshj2018-hyperprior", help="published CompressAI curve to compare with")
    p.add_argument("--out", default=str(RESULTS))
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="torch threads (default: every core; 1 beside other jobs: the context model's serial "
                        "decoding slows down badly when threads are oversubscribed)")
    p.add_argument("--checkpoints", default=None,
                   help="folder of checkpoints to measure (default: the shipped ones), e.g. a new ladder to compare")
    args = p.parse_args(argv)
    torch.set_num_threads(max(1, args.threads))
    load = os.getloadavg()[0]  # the times below are wall times: say what else ran
    root = data_root(args.data)
    if root is None:
        p.error("needs the Kodak images: set BITALLOC_DATA or --data")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows, per_family = [], {}
    folder = shipped_checkpoint_dir() if args.checkpoints is None else Path(args.checkpoints)
    for info in tqdm(available_checkpoints(folder), desc="checkpoints"):
        model = load_checkpoint(folder / info["file"])
        df = evaluate(model, root / "kodak")
        rows.append({"model": info["architecture"], "quality": info["quality"], "N": info["N"], "M": info.get("M"),
                     "lambda": info["lambda"], "training_steps": info["training_steps"],
                     # what the fine-tune started from: the family's q4 base run, or a shipped neighbour
                     "init_from": ("q4 base run" if info.get("init_from") == "state.pt"
                                   else info.get("init_from") or "scratch"),
                     "file_kb": round((folder / info["file"]).stat().st_size / 1024),
                     "bpp": df.bpp.mean(), "psnr_rgb": df.psnr_rgb.mean(), "ms_ssim_rgb": df.ms_ssim_rgb.mean(),
                     # wall time per image (context models decode serially), 1 process on the machine below
                     "encode_s": df.encoding_time.mean(), "decode_s": df.decoding_time.mean()})
        per_family.setdefault(info["architecture"], []).append((info["quality"], df))
    if not rows:
        raise SystemExit("no shipped checkpoints found")
    table = pd.DataFrame(rows).sort_values(["model", "quality"])
    anchors = {f"CompressAI {args.anchor} (published, paper size)": reference_curve(args.anchor),
               "JPEG (shipped reference points)": reference_curve("jpeg")}
    bd = []
    for family, curves in per_family.items():
        curves.sort(key=lambda t: t[0])
        to_compressai_json([df for _, df in curves], f"bitalloc-{family}-compact",
                           path=out / f"bitalloc-{family}-compact_kodak.json")
        fam = table[table.model == family]
        for label, anchor in anchors.items():
            bd.append(_bd_entry(family, label, anchor, fam))
    # the ordering: Mean-Scale better than Scale, Cheng2020-anchor better than Mean-Scale (BD-rate < 0)
    for family, reference in [("mbt2018-mean", "bmshj2018-hyperprior"), ("cheng2020-anchor", "mbt2018-mean")]:
        if family in per_family and reference in per_family:
            bd.append(_bd_entry(family, f"{reference} compact (this table)", table[table.model == reference],
                                table[table.model == family]))
    bd = pd.DataFrame(bd)
    atomic_write_text(out / "zoo_kodak.csv", table.to_csv(index=False))
    machine = f"{platform.machine()} CPU, {os.cpu_count()} cores, torch {torch.__version__}"
    machine += (f", {args.threads} torch thread(s), 1-minute load average {load:.1f} at the start (other jobs on "
                "the cores inflate the times)")
    command = " ".join(["BITALLOC_DATA=../shared/data python studies/zoo_table.py",
                        *(sys.argv[1:] if argv is None else argv)])
    md = [f"# {'Checkpoints in ' + args.checkpoints if args.checkpoints else 'Shipped checkpoints'} on Kodak "
          "(24 images, real bitstreams)", "", f"Command: `{command}`; machine: " + machine, "",
          table.to_markdown(index=False, floatfmt=".4g"), "",
          "BD-rate (PCHIP, PSNR-RGB) of each family against the published curves and the family before it; "
          "positive = more bits:", "",
          bd.to_markdown(index=False, floatfmt=".2f"), ""]
    atomic_write_text(out / "zoo_kodak.md", "\n".join(md))
    _plot(table, out / "zoo_kodak.png")
    print("\n".join(md))
    return table


def _bd_entry(family: str, label: str, anchor: pd.DataFrame, fam: pd.DataFrame) -> dict:
    """BD-rate and BD-PSNR of ``fam`` against ``anchor``; a note instead where the curves do not overlap."""
    entry = {"model": family, "anchor": label, "num_points": len(fam)}
    try:
        entry["bd_rate_pct"] = bd_rate(anchor.bpp, anchor.psnr_rgb, fam.bpp, fam.psnr_rgb)
        entry["bd_psnr_db"] = bd_psnr(anchor.bpp, anchor.psnr_rgb, fam.bpp, fam.psnr_rgb)
    except ValueError as exc:
        entry["note"] = str(exc)
    return entry


def _plot(table: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for name, style in [("bmshj2018-hyperprior", "k--"), ("mbt2018-mean", "k:"), ("bpg", "c-."),
                        ("jpeg", "y-.")]:
        ref = reference_curve(name)
        ax.plot(ref.bpp, ref.psnr_rgb, style, label=f"{name} (published)")
    for family, fam in table.groupby("model"):
        ax.plot(fam.bpp, fam.psnr_rgb, "o-", label=f"{family} compact (bitalloc)")
    right = max(1.2, 1.05 * float(table.bpp.max()))  # every point of the zoo in view, however high its rate
    ax.set(xlabel="bpp (Kodak)", ylabel="PSNR-RGB [dB]", xlim=(0, right), title="Kodak rate-distortion")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    atomic_savefig(fig, path)
    plt.close(fig)


if __name__ == "__main__":
    main()
