"""``bitalloc`` command line: a thin layer over the library (``main(argv)`` builds its parser on call).

Every argument is checked before any work starts: a bad value is an argparse error naming its flag (exit 2),
never a traceback after a minute of work. Ctrl-C prints "interrupted; rerun to resume" and exits 130
(``train`` resumes from its workdir, ``compare`` from its ``--out``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

#: Exit status after Ctrl-C (128 + SIGINT), as shells report it.
EXIT_INTERRUPTED = 130


def _positive(kind: type):
    """An argparse ``type`` accepting positive (finite) numbers of ``kind`` only."""
    noun = "integer" if kind is int else "number"

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a positive {noun}, got {text!r}") from None
        if not (math.isfinite(value) and value > 0):
            raise argparse.ArgumentTypeError(f"must be a positive {noun}, got {text!r}")
        return value

    parse.__name__ = f"positive {noun}"
    return parse


positive_int = _positive(int)
positive_float = _positive(float)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows every default; where it is None, the help text says in words what happens instead."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


class _Invalid(Exception):
    """An argument that parsed but cannot work (unknown model, missing file, ...): ``flag`` names it."""

    def __init__(self, flag: str, message: str):
        super().__init__(f"argument {flag}: {message}")


def _add_data(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default=None, help="data root holding kodak/ and train/ (default: $BITALLOC_DATA)")


def _add_threads(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=positive_int, default=2, help="CPU threads for torch")


# ---- checks shared by the commands (each raises _Invalid naming the flag) -----------------------------------

def _check_model_quality(model: str, qualities, size: str, quality_flag: str = "--quality") -> None:
    from .models.registry import check_model, check_quality

    try:
        check_model(model)
    except ValueError as exc:
        raise _Invalid("--model", str(exc)) from None
    for quality in qualities:
        try:
            check_quality(model, quality, size)
        except ValueError as exc:
            raise _Invalid(quality_flag, str(exc)) from None


def _check_shipped(model: str, qualities, flag: str) -> None:
    """Every quality has a checkpoint in the package (``pretrained="bitalloc"``)."""
    from .models import available_checkpoints, checkpoint_name, shipped_checkpoint_dir

    missing = [q for q in qualities if not (shipped_checkpoint_dir() / checkpoint_name(model, q)).is_file()]
    if missing:
        shipped = sorted({(c["architecture"], c["quality"]) for c in available_checkpoints()})
        mine = [q for name, q in shipped if name == model]
        raise _Invalid(
            "--model" if not mine else flag,
            f"no shipped checkpoint for {model} quality {', '.join(map(str, missing))}; shipped: "
            + (f"qualities {', '.join(map(str, mine))} of {model}" if mine else
               ", ".join(sorted({name for name, _ in shipped})) or "none")
            + ". Train one with `bitalloc train`")


def _check_root(data, *subsets: str, required: bool = False) -> Path | None:
    """The data root (``--data`` or $BITALLOC_DATA), with images in each of ``subsets`` when it is set."""
    from .data import data_root, image_paths

    try:
        root = data_root(data)
        if root is None and required:
            raise FileNotFoundError("no data root; set BITALLOC_DATA or pass --data")
        for subset in subsets if root is not None else ():
            image_paths(root / subset)
    except FileNotFoundError as exc:
        raise _Invalid("--data", str(exc)) from None
    return root


def _check_images(folder, flag: str) -> None:
    from .data import image_paths

    try:
        image_paths(folder)
    except FileNotFoundError as exc:
        raise _Invalid(flag, str(exc)) from None


def _check_folder(path, flag: str) -> None:
    """``path`` is (or can become) a folder: not an existing file, nor under one."""
    path = Path(path)
    for p in (path, *path.parents):
        if p.exists() and not p.is_dir():
            raise _Invalid(flag, f"{p} is a file; {flag} names a folder")


def _check_file_out(path, flag: str) -> None:
    """``path`` can be written as a file: not an existing folder, no file where a parent folder should be."""
    path = Path(path)
    if path.is_dir():
        raise _Invalid(flag, f"{path} is a folder; {flag} names a file")
    _check_folder(path.parent, flag)


# ---- train ---------------------------------------------------------------------------------------------------

def _check_train(args) -> None:
    import torch

    _check_model_quality(args.model, [args.quality], args.size)
    if args.init_from is not None and not Path(args.init_from).is_file():
        raise _Invalid("--init-from", f"no such file: {args.init_from}")
    _check_folder(args.workdir, "--workdir")
    if args.out is not None:
        _check_file_out(args.out, "--out")
    try:
        device = torch.device(args.device)
    except (RuntimeError, ValueError) as exc:
        raise _Invalid("--device", str(exc)) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise _Invalid("--device", f"{args.device} requested but torch sees no CUDA device")
    _check_root(args.data, "train", required=True)


def _train_out(args) -> Path:
    """Where the checkpoint goes: ``--out``, else ``<workdir>/<model>-<size>-q<quality>.pt``."""
    from .models import checkpoint_name

    return Path(args.out) if args.out else Path(args.workdir) / checkpoint_name(args.model, args.quality, args.size)


def _cmd_train(args) -> int:
    import torch

    from .data import data_root
    from .models.train import finalize, train

    torch.set_num_threads(args.threads)
    root = data_root(args.data)
    workdir = Path(args.workdir) / args.model / f"q{args.quality}"
    state = train(args.model, args.quality, root / "train", workdir, steps=args.steps, size=args.size,
                  batch_size=args.batch_size, crop=args.crop, lr=args.lr, init_from=args.init_from,
                  device=args.device)
    out = _train_out(args)
    meta = finalize(state, out, eval_dir=root / "kodak" if (root / "kodak").is_dir() else None)
    print(json.dumps({"checkpoint": str(out), **meta}, indent=2, default=str))
    return 0


# ---- evaluate ------------------------------------------------------------------------------------------------

def _check_evaluate(args) -> None:
    _check_model_quality(args.model, [args.quality], "paper" if args.pretrained == "compressai" else "compact")
    if args.pretrained == "bitalloc":
        _check_shipped(args.model, [args.quality], "--quality")
    elif args.pretrained != "compressai" and not Path(args.pretrained).is_file():
        raise _Invalid("--pretrained", f"not 'bitalloc', 'compressai' or an existing file: {args.pretrained}")
    if args.images is not None:
        _check_images(args.images, "--images")
    else:
        _check_root(args.data, "kodak")
    if args.json is not None and not Path(args.json).is_dir():
        _check_file_out(args.json, "--json")


def _json_path(args) -> Path:
    """``--json``: that file, or ``<folder>/<model>-q<quality>.json`` when it names an existing folder."""
    path = Path(args.json)
    return path / f"{args.model}-q{args.quality}.json" if path.is_dir() else path


def _cmd_evaluate(args) -> int:
    import torch

    from .evaluation import evaluate, summarize, to_compressai_json
    from .models import load_model

    torch.set_num_threads(args.threads)
    model = load_model(args.model, args.quality, pretrained=args.pretrained)
    df = evaluate(model, args.images, root=args.data, limit=args.limit)
    print(df.to_string(index=False))
    print(json.dumps(summarize(df), indent=2))
    if args.json:
        path = _json_path(args)
        to_compressai_json([df], args.model, path=path)
        print(f"json: {path}")
    return 0


# ---- checkpoints ---------------------------------------------------------------------------------------------

def _cmd_checkpoints(args) -> int:
    import pandas as pd

    from .models import available_checkpoints

    print(pd.DataFrame(available_checkpoints()).to_string(index=False))
    return 0


# ---- compare -------------------------------------------------------------------------------------------------

def _check_compare(args) -> None:
    from .allocation import available_allocators
    from .harness import DYNAMIC_ALLOCATOR, StudySpec

    quick = args.quick
    qualities = tuple(args.qualities or (1, 3, 4, 6))
    _check_model_quality(args.model, qualities, "compact", "--qualities")
    _check_shipped(args.model, qualities, "--qualities")
    valid = [*available_allocators(), DYNAMIC_ALLOCATOR]
    for name in args.allocators:
        if name not in valid:
            raise _Invalid("--allocators", f"unknown allocator {name!r}; valid allocators: {', '.join(valid)}")
    for flag, values in (("--qualities", qualities), ("--allocators", args.allocators),
                         ("--budgets", args.budgets or ()), ("--modes", args.modes)):
        if len(set(values)) != len(values):
            raise _Invalid(flag, f"repeated values in {' '.join(map(str, values))}")
    bits = StudySpec.candidate_bits
    for budget in args.budgets or ():
        if args.budget_kind == "avg_bits" and budget < min(bits):
            raise _Invalid("--budgets", f"{budget:g} average bits is below the smallest candidate bit-width "
                                        f"{min(bits)} (candidates {', '.join(map(str, bits))}): no plan fits")
        if args.budget_kind == "ratio" and budget > 32 / min(bits):
            raise _Invalid("--budgets", f"compression ratio {budget:g} is above {32 / min(bits):g}, the ratio of "
                                        f"every weight at {min(bits)} bits: no plan fits")
    _check_folder(args.out, "--out")
    _check_root(args.data, "kodak", "train")
    try:
        args.spec = StudySpec(
            model=args.model,
            qualities=qualities,
            allocators=tuple(args.allocators),
            budgets=tuple(args.budgets or ((8.0, 4.0) if quick else (8.0, 6.0, 4.0))),
            budget_kind=args.budget_kind,
            modes=tuple(args.modes),
            qat_steps=args.qat_steps if args.qat_steps is not None else (20 if quick else StudySpec.qat_steps),
            calib_images=2 if quick else 8,
            calib_crop=128 if quick else 256,
            eval_limit=args.limit if args.limit is not None else (4 if quick else None),
        )
    except ValueError as exc:
        raise _Invalid("--allocators/--modes", str(exc)) from None


def _cmd_compare(args) -> int:
    import os
    import platform

    import torch

    from .harness import run_study
    from .report import write_report

    torch.set_num_threads(args.threads)
    result = run_study(args.spec, args.out, data=args.data)
    machine = f"{platform.machine()} CPU, {os.cpu_count()} cores, torch {torch.__version__}"
    report = write_report(result, args.out, command="bitalloc compare " + " ".join(args.argv), machine=machine)
    print(result.ranking.to_string(index=False))
    print(f"report: {report}")
    return 0


# ---- parser and entry point ----------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    from .harness import StudySpec

    fmt = _HelpFormatter
    parser = argparse.ArgumentParser(prog="bitalloc", description="Bit allocation for learned image compression",
                                     formatter_class=fmt)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train (or resume) one LIC model and write its checkpoint", formatter_class=fmt)
    p.add_argument("--model", required=True, help="model family (bitalloc.models.available_models())")
    p.add_argument("--quality", type=int, required=True,
                   help="CompressAI's 1-8 (its lambdas); the compact size also has bitalloc's low-rate 0")
    p.add_argument("--size", default="compact", choices=["compact", "paper"], help="channel sizes")
    p.add_argument("--steps", type=positive_int, default=9000, help="training steps")
    p.add_argument("--batch-size", type=positive_int, default=8, help="crops per step")
    p.add_argument("--crop", type=positive_int, default=128, help="training crop side in pixels")
    p.add_argument("--lr", type=positive_float, default=5e-4, help="learning rate")
    p.add_argument("--init-from", default=None,
                   help="start from this run state or checkpoint (default: from scratch, or resume the workdir's run)")
    p.add_argument("--workdir", default="runs/train", help="run states (resumable), and the checkpoint "
                                                           "when --out is not given")
    p.add_argument("--out", default=None, help="checkpoint file (default: <workdir>/<model>-<size>-q<quality>.pt)")
    _add_threads(p)
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1)")
    _add_data(p)
    p.set_defaults(func=_cmd_train, check=_check_train, resumable=True, parser=p)

    p = sub.add_parser("evaluate", help="entropy-code images with a model: bpp from bytes, PSNR, MS-SSIM",
                       formatter_class=fmt)
    p.add_argument("--model", required=True, help="model family (bitalloc.models.available_models())")
    p.add_argument("--quality", type=int, required=True, help="quality of the checkpoint")
    p.add_argument("--pretrained", default="bitalloc", help="bitalloc | compressai | path to a checkpoint")
    p.add_argument("--images", default=None, help="image folder (default: <data>/kodak, else scikit-image's photos)")
    p.add_argument("--limit", type=positive_int, default=None, help="evaluate the first N images only (default: all)")
    p.add_argument("--json", default=None,
                   help="write CompressAI eval_model JSON to this file, or to <model>-q<quality>.json in this folder "
                        "(default: no JSON)")
    _add_threads(p)
    _add_data(p)
    p.set_defaults(func=_cmd_evaluate, check=_check_evaluate, resumable=False, parser=p)

    p = sub.add_parser("compare", help="rank allocators on the shipped checkpoints (real bitstreams, BD-rate)",
                       formatter_class=fmt)
    p.add_argument("--model", default="bmshj2018-hyperprior", help="model family with shipped checkpoints")
    p.add_argument("--qualities", type=int, nargs="+", default=None, help="qualities (default: 1 3 4 6)")
    p.add_argument("--allocators", nargs="+", default=["fmpq", "ilp", "convex", "greedy", "uniform"],
                   help="registered allocator names (bitalloc.available_allocators()), or dynaquant with qat")
    p.add_argument("--budgets", type=positive_float, nargs="+", default=None,
                   help="average weight bits (or ratios) (default: 8 6 4; 8 4 with --quick)")
    p.add_argument("--budget-kind", default="avg_bits", choices=["avg_bits", "ratio"], help="what --budgets are")
    p.add_argument("--modes", nargs="+", default=["ptq"], choices=["ptq", "qat"], help="post-training and/or QAT")
    p.add_argument("--qat-steps", type=positive_int, default=None,
                   help=f"QAT steps (default: {StudySpec.qat_steps}; 20 with --quick)")
    p.add_argument("--limit", type=positive_int, default=None,
                   help="evaluate on the first N images only (default: all; 4 with --quick)")
    p.add_argument("--quick", action="store_true",
                   help="2 budgets, 4 images, small calibration: a few minutes on 2 cores")
    p.add_argument("--out", default="runs/compare", help="results folder (an interrupted run resumes from it)")
    _add_threads(p)
    _add_data(p)
    p.set_defaults(func=_cmd_compare, check=_check_compare, resumable=True, parser=p)

    p = sub.add_parser("checkpoints", help="list the checkpoints that ship, with their Kodak numbers",
                       formatter_class=fmt)
    p.set_defaults(func=_cmd_checkpoints, check=None, resumable=False, parser=p)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; 0 on success, 2 on a bad argument or a failure it explains, 130 on Ctrl-C."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)  # exits 2 naming the flag for a malformed value
    args.argv = argv[1:]
    if args.check is not None:
        try:
            args.check(args)
        except _Invalid as exc:
            args.parser.error(str(exc))  # exits 2, with the command's usage line
    try:
        return args.func(args)
    except KeyboardInterrupt:
        rerun = "; rerun to resume" if args.resumable else ""
        print(f"\nbitalloc {args.command}: interrupted{rerun}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (ValueError, FileNotFoundError) as exc:
        print(f"bitalloc {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
