"""``bitalloc`` command line: a thin layer over the library (``main(argv)`` builds its parser on call)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _add_data(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default=None, help="data root holding kodak/ and train/ (default: $BITALLOC_DATA)")


def _cmd_train(args) -> int:
    import torch

    from .data import data_root
    from .models import checkpoint_name, shipped_checkpoint_dir
    from .models.train import finalize, train

    torch.set_num_threads(args.threads)
    root = data_root(args.data)
    if root is None:
        print("bitalloc train: no data root; set BITALLOC_DATA or pass --data", file=sys.stderr)
        return 2
    workdir = Path(args.workdir) / args.model / f"q{args.quality}"
    state = train(args.model, args.quality, root / "train", workdir, steps=args.steps, size=args.size,
                  batch_size=args.batch_size, crop=args.crop, lr=args.lr, init_from=args.init_from,
                  device=args.device)
    out = Path(args.out) if args.out else shipped_checkpoint_dir() / checkpoint_name(args.model, args.quality,
                                                                                     args.size)
    meta = finalize(state, out, eval_dir=root / "kodak" if (root / "kodak").is_dir() else None)
    print(json.dumps({"checkpoint": str(out), **meta}, indent=2, default=str))
    return 0


def _cmd_evaluate(args) -> int:
    from .evaluation import evaluate, summarize, to_compressai_json
    from .models import load_model

    model = load_model(args.model, args.quality, pretrained=args.pretrained)
    df = evaluate(model, args.images, root=args.data, limit=args.limit)
    print(df.to_string(index=False))
    print(json.dumps(summarize(df), indent=2))
    if args.json:
        to_compressai_json([df], args.model, path=args.json)
    return 0


def _cmd_checkpoints(args) -> int:
    import pandas as pd

    from .models import available_checkpoints

    print(pd.DataFrame(available_checkpoints()).to_string(index=False))
    return 0


def _cmd_compare(args) -> int:
    import os
    import platform

    import torch

    from .harness import StudySpec, run_study
    from .report import write_report

    torch.set_num_threads(args.threads)
    quick = args.quick
    spec = StudySpec(
        model=args.model,
        qualities=tuple(args.qualities or (1, 3, 4, 6)),
        allocators=tuple(args.allocators),
        budgets=tuple(args.budgets or ((8.0, 4.0) if quick else (8.0, 6.0, 4.0))),
        budget_kind=args.budget_kind,
        modes=tuple(args.modes),
        qat_steps=args.qat_steps if args.qat_steps is not None else (20 if quick else StudySpec.qat_steps),
        calib_images=2 if quick else 8,
        calib_crop=128 if quick else 256,
        eval_limit=args.limit if args.limit is not None else (4 if quick else None),
    )
    result = run_study(spec, args.out, data=args.data)
    machine = f"{platform.machine()} CPU, {os.cpu_count()} cores, torch {torch.__version__}"
    report = write_report(result, args.out, command="bitalloc compare " + " ".join(args.argv), machine=machine)
    print(result.ranking.to_string(index=False))
    print(f"report: {report}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bitalloc", description="Bit allocation for learned image compression")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train (or resume) one LIC model and write its checkpoint")
    p.add_argument("--model", required=True)
    p.add_argument("--quality", type=int, required=True,
                   help="CompressAI's 1-8 (its lambdas); the compact size also has bitalloc's low-rate 0")
    p.add_argument("--size", default="compact", choices=["compact", "paper"])
    p.add_argument("--steps", type=int, default=9000)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--crop", type=int, default=128)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--init-from", default=None, help="start from this run state or checkpoint")
    p.add_argument("--workdir", default="runs/train")
    p.add_argument("--out", default=None, help="checkpoint file (default: the package's shipped folder)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    _add_data(p)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("evaluate", help="entropy-code images with a model: bpp from bytes, PSNR, MS-SSIM")
    p.add_argument("--model", required=True)
    p.add_argument("--quality", type=int, required=True)
    p.add_argument("--pretrained", default="bitalloc", help="bitalloc | compressai | path to a checkpoint")
    p.add_argument("--images", default=None, help="image folder (default: <data>/kodak, else scikit-image photos)")
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--json", default=None, help="write CompressAI eval_model JSON here")
    _add_data(p)
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("compare", help="rank allocators on the shipped checkpoints (real bitstreams, BD-rate)")
    p.add_argument("--model", default="bmshj2018-hyperprior")
    p.add_argument("--qualities", type=int, nargs="+", default=None)
    p.add_argument("--allocators", nargs="+", default=["fmpq", "ilp", "convex", "greedy", "uniform"])
    p.add_argument("--budgets", type=float, nargs="+", default=None, help="average weight bits (or ratios)")
    p.add_argument("--budget-kind", default="avg_bits", choices=["avg_bits", "ratio"])
    p.add_argument("--modes", nargs="+", default=["ptq"], choices=["ptq", "qat"])
    p.add_argument("--qat-steps", type=int, default=None)
    p.add_argument("--limit", type=int, default=None, help="evaluate on the first N images only")
    p.add_argument("--quick", action="store_true", help="2 budgets, 4 images, small calibration: a few minutes on 2 cores")
    p.add_argument("--out", default="runs/compare")
    p.add_argument("--threads", type=int, default=2)
    _add_data(p)
    p.set_defaults(func=_cmd_compare)

    p = sub.add_parser("checkpoints", help="list the checkpoints that ship, with their Kodak numbers")
    p.set_defaults(func=_cmd_checkpoints)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv[1:]
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"bitalloc {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
