"""Train the compact checkpoints that bitalloc ships, for one model family, with resume.

Recipe: the middle quality (4) trains from scratch (9000 steps); then every shipped quality (1, 3, 4, 6)
fine-tunes from it for 3500 steps at its own lambda (CompressAI's). Each run keeps its state under ``--workdir``
and resumes when rerun; finished checkpoints are written to ``--out`` (float16) with Kodak measured on the written file.

The ends of the ladder (qualities 0 and 8) extend it from the nearest shipped checkpoint instead of the base
run (lr 2e-4); quality 8 gets twice the steps, as its rate was still rising after 3500:

    python studies/train_zoo.py --model bmshj2018-hyperprior --qualities 0 --init-quality 1
    python studies/train_zoo.py --model bmshj2018-hyperprior --qualities 8 --init-quality 6 --finetune-steps 7000

    BITALLOC_DATA=../shared/data python studies/train_zoo.py --model bmshj2018-hyperprior

Long runs (the converging recipe): a plateau-scheduled base run that continues from a shipped checkpoint, decays
its learning rate on the held-out validation split of train/ and writes its best weights as a float16 snapshot
every hour (``--snapshot-dir``, committed so a replaced machine loses nothing); ``--base-only`` stops after it:

    BITALLOC_DATA=../shared/data nice python studies/train_zoo.py --model bmshj2018-hyperprior --base-only \
        --schedule plateau --base-init models/checkpoints/bmshj2018-hyperprior-compact-q4.pt --base-lr 2e-4 \
        --crop 256 --batch-size 4 --base-steps 400000 --workdir /work/runs/zoo --snapshot-dir models/snapshots

A ladder from a committed base snapshot (written to a scratch folder first, to compare with the shipped one):

    BITALLOC_DATA=../shared/data python studies/train_zoo.py --model bmshj2018-hyperprior --qualities 1 3 6 \
        --finetune-from models/snapshots/bmshj2018-hyperprior-compact-q4-base.pt --workdir /work/runs/ladder \
        --out /work/runs/ladder/checkpoints

Machine used for the shipped files: see each checkpoint's metadata and the README's table.
"""

from __future__ import annotations

import argparse
import os
import signal
from pathlib import Path

import torch

from bitalloc.data import data_root
from bitalloc.models import checkpoint_name, shipped_checkpoint_dir
from bitalloc.models.train import finalize, train


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


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
    p.add_argument("--finetune-from", default=None,
                   help="fine-tune --qualities (the base quality included) from this checkpoint file, e.g. a "
                        "committed base snapshot, instead of running the base")
    p.add_argument("--finetune-lr", type=float, default=2e-4)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--workdir", default="runs/zoo")
    p.add_argument("--out", default=None, help="checkpoint folder (default: the package's shipped folder)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--schedule", choices=("cosine", "plateau"), default="cosine",
                   help="learning-rate schedule of the base run (fine-tunes stay cosine)")
    p.add_argument("--base-init", default=None, help="start the base run from this checkpoint")
    p.add_argument("--base-lr", type=float, default=5e-4)
    p.add_argument("--base-only", action="store_true", help="train the base run only (no fine-tunes)")
    p.add_argument("--crop", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--val-every", type=int, default=1000)
    p.add_argument("--patience", type=int, default=4)
    p.add_argument("--snapshot-dir", default=None,
                   help="write the base run's best weights here (float16) every --snapshot-hours")
    p.add_argument("--snapshot-hours", type=float, default=1.0)
    p.add_argument("--channels", type=int, nargs="+", default=None, metavar="N [M]",
                   help="train every run of this command at these channel sizes instead of the registry's (a "
                        "narrower --base-init / --finetune-from checkpoint grows into them); resumes keep them")
    p.add_argument("--monitor-every", type=int, default=5000,
                   help="steps between the base run's Kodak monitor points (learning curve only)")
    args = p.parse_args(argv)
    # a background run (nohup, setsid) ignores SIGINT and dies on SIGTERM: both now save the run state first
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    torch.set_num_threads(args.threads)
    root = data_root(args.data)
    if root is None:
        p.error("training needs a data root with train/ and kodak/ (set BITALLOC_DATA or --data)")
    out = Path(args.out) if args.out else shipped_checkpoint_dir()
    work = Path(args.workdir) / args.model
    if args.init_quality is not None and args.finetune_from is not None:
        p.error("--init-quality and --finetune-from both name the fine-tunes' start: give one")
    if args.finetune_from is not None:
        base_state = Path(args.finetune_from)
        if not base_state.is_file():
            p.error(f"--finetune-from: no checkpoint {base_state}")
        qualities = sorted({args.base_quality, *args.qualities})
    elif args.init_quality is not None:
        base_state = out / checkpoint_name(args.model, args.init_quality)
        if not base_state.is_file():
            p.error(f"--init-quality {args.init_quality}: no checkpoint {base_state}")
        qualities = sorted(set(args.qualities))
    else:
        base_state = work / f"q{args.base_quality}" / "state.pt"
        # another size than the registry's gets its own snapshot name, never the registry-size base's
        tag = "" if args.channels is None else "-" + "".join(f"{k}{c}" for k, c in zip("nm", args.channels))
        snap = None if args.snapshot_dir is None else (
            Path(args.snapshot_dir) / checkpoint_name(args.model, args.base_quality).replace(".pt", f"{tag}-base.pt"))
        train(args.model, args.base_quality, root / "train", work / f"q{args.base_quality}",
              device=args.device, steps=args.base_steps, lr=args.base_lr, schedule=args.schedule,
              init_from=args.base_init, crop=args.crop, batch_size=args.batch_size, val_every=args.val_every,
              patience=args.patience, channels_last=args.device == "cpu", snapshot=snap,
              snapshot_every_s=args.snapshot_hours * 3600, monitor_dir=root / "kodak",
              monitor_every=args.monitor_every, channels=args.channels)
        if args.base_only:
            return
        qualities = sorted({args.base_quality, *args.qualities})
    for q in qualities:
        # every shipped quality, the base's own included, is the same fine-tune from the base run, so the
        # qualities have equal training and their RD points are comparable (a monotone curve for BD-rates)
        name = f"q{q}-ft" if q == args.base_quality and args.init_quality is None else f"q{q}"
        state = train(args.model, q, root / "train", work / name, device=args.device,
                      steps=args.finetune_steps, init_from=base_state, lr=args.finetune_lr,
                      crop=args.crop, batch_size=args.batch_size, channels_last=args.device == "cpu",
                      channels=args.channels)
        target = out / checkpoint_name(args.model, q)
        if target.exists() and os.path.getmtime(target) >= os.path.getmtime(state):
            print(f"{target.name}: up to date")
            continue
        meta = finalize(state, target, eval_dir=root / "kodak")
        print(f"{target.name}: Kodak {meta['kodak']}", flush=True)

if __name__ == "__main__":
    main()
