"""Train the compact checkpoints that bitalloc ships, for one model family, with resume.

Recipe: the middle quality (4) trains from scratch (9000 steps); then every shipped quality (1, 3, 4, 6)
fine-tunes from it for 3500 steps at its own lambda (CompressAI's). Each run keeps its state under ``--workdir`` and resumes when rerun; finished
checkpoints are written to ``--out`` (float16) with Kodak measured on the written file.

The ends of the ladder (qualities 0 and 8) extend it from the nearest shipped checkpoint instead of the base
run (lr 2e-4); quality 8 gets twice the steps, as its rate was still rising after 3500:

    python studies/train_zoo.py --model bmshj2018-hyperprior --qualities 0 --init-quality 1
    python studies/train_zoo.py --model bmshj2018-hyperprior --qualities 8 --init-quality 6 --finetune-steps 7000

    BITALLOC_DATA=../shared/data python studies/train_zoo.py --model bmshj2018-hyperprior

Machine used for the shipped files: see each checkpoint's metadata and the README's table.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch

from bitalloc.data import data_root
from bitalloc.models import checkpoint_name, shipped_checkpoint_dir
from bitalloc.models.train import finalize, train


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--data", default=None, help="data root (default: $BITALLOC_DATA)")
    p.add_argument("--base-quality", type=int, default=4)
    p.add_argument("--qualities", type=int, nargs="+", default=[1, 3, 6])
    p.add_argument("--base-steps", type=int, default=9000)
    p.add_argument("--finetune-steps", type=int, default=3500)
    p.add_argument("--init-quality", type=int, default=None,
                   help="fine-tune --qualities from this shipped checkpoint instead of the base run")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--workdir", default="runs/zoo")
    p.add_argument("--out", default=None, help="checkpoint folder (default: the package's shipped folder)")
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    root = data_root(args.data)
    if root is None:
        p.error("training needs a data root with train/ and kodak/ (set BITALLOC_DATA or --data)")
    out = Path(args.out) if args.out else shipped_checkpoint_dir()
    work = Path(args.workdir) / args.model
    if args.init_quality is not None:
        base_state = out / checkpoint_name(args.model, args.init_quality)
        if not base_state.is_file():
            p.error(f"--init-quality {args.init_quality}: no checkpoint {base_state}")
        qualities = sorted(set(args.qualities))
    else:
        base_state = work / f"q{args.base_quality}" / "state.pt"
        train(args.model, args.base_quality, root / "train", work / f"q{args.base_quality}",
              device=args.device, steps=args.base_steps, lr=5e-4)
        qualities = sorted({args.base_quality, *args.qualities})
    for q in qualities:
        # every shipped quality, the base's own included, is the same fine-tune from the base run, so the
        # qualities have equal training and their RD points are comparable (a monotone curve for BD-rates)
        name = f"q{q}-ft" if q == args.base_quality and args.init_quality is None else f"q{q}"
        state = train(args.model, q, root / "train", work / name, device=args.device,
                      steps=args.finetune_steps, init_from=base_state, lr=2e-4)
        target = out / checkpoint_name(args.model, q)
        if target.exists() and os.path.getmtime(target) >= os.path.getmtime(state):
            print(f"{target.name}: up to date")
            continue
        meta = finalize(state, target, eval_dir=root / "kodak")
        print(f"{target.name}: Kodak {meta['kodak']}", flush=True)

if __name__ == "__main__":
    main()
