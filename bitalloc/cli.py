"""``bitalloc`` command line: a thin layer over the library (``main(argv)`` builds its parser on call).

One command per stage, composable through files (the README tour as shell commands)::

    bitalloc sensitivity --model bmshj2018-hyperprior --quality 4 --out table.csv   # bitalloc.cli_stages
    bitalloc allocate --table table.csv --budget 4 --allocator ilp --out plan.json  # bitalloc.cli_stages
    bitalloc apply --model ... --quality 4 --plan plan.json --out q4.pt           # bitalloc.cli_quantize
    bitalloc export --model ... --quality 4 --plan plan.json --out q4.bin         # bitalloc.cli_quantize
    bitalloc evaluate --model ... --qualities 1,3,4,6 --files q4.pt --json rd.json  # bitalloc.cli_evaluate

plus ``train`` and ``checkpoints`` (here) and ``compare`` (:mod:`bitalloc.cli_compare`: the allocator study,
locally, on ``--workers N`` processes or on a Dask ``--scheduler``).

Every argument is checked before any work starts: a bad value is an argparse error naming its flag (exit 2),
never a traceback after a minute of work. Ctrl-C prints "interrupted; rerun to resume" and exits 130
(``train`` resumes from its workdir, ``compare`` from its ``--out``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import cli_checks as checks
from .cli_compare import add_compare
from .cli_evaluate import add_evaluate
from .cli_quantize import add_apply, add_export
from .cli_stages import add_allocate, add_sensitivity

#: Exit status after Ctrl-C (128 + SIGINT), as shells report it.
EXIT_INTERRUPTED = 130


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
                  device=args.device, channels=args.channels)
    out = _train_out(args)
    meta = finalize(state, out, eval_dir=root / "kodak" if (root / "kodak").is_dir() else None)
    print(json.dumps({"checkpoint": str(out), **meta}, indent=2, default=str))
    return 0


# ---- checkpoints ---------------------------------------------------------------------------------------------

def _cmd_checkpoints(args) -> int:
    import pandas as pd

    from .models import available_checkpoints

    print(pd.DataFrame(available_checkpoints()).to_string(index=False))
    return 0


# ---- parser and entry point ----------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    fmt = checks.HelpFormatter
    parser = argparse.ArgumentParser(prog="bitalloc", description="Bit allocation for learned image compression",
                                     formatter_class=fmt)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train (or resume) one LIC model and write its checkpoint", formatter_class=fmt)
    p.add_argument("--model", required=True, help="model family (bitalloc.models.available_models())")
    p.add_argument("--quality", type=int, required=True,
                   help="CompressAI's 1-8 (its lambdas); the compact size also has bitalloc's low-rate 0")
    p.add_argument("--size", default="compact", choices=["compact", "paper"], help="channel sizes")
    p.add_argument("--channels", type=int, nargs="+", default=None, metavar="N [M]",
                   help="other channel sizes than --size's (a narrower --init-from grows into them; resumes keep them)")
    p.add_argument("--steps", type=checks.positive_int, default=9000, help="training steps")
    p.add_argument("--batch-size", type=checks.positive_int, default=8, help="crops per step")
    p.add_argument("--crop", type=checks.positive_int, default=128, help="training crop side in pixels")
    p.add_argument("--lr", type=checks.positive_float, default=5e-4, help="learning rate")
    p.add_argument("--init-from", default=None,
                   help="start from this run state or checkpoint (default: from scratch, or resume the workdir's run)")
    p.add_argument("--workdir", default="runs/train", help="run states (resumable), and the checkpoint "
                                                           "when --out is not given")
    p.add_argument("--out", default=None, help="checkpoint file (default: <workdir>/<model>-<size>-q<quality>.pt)")
    checks.add_threads(p)
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1)")
    checks.add_data(p)
    p.set_defaults(func=_cmd_train, check=checks.check_train, resumable=True, parser=p)

    add_sensitivity(sub, fmt)
    add_allocate(sub, fmt)
    add_apply(sub, fmt)
    add_export(sub, fmt)
    add_evaluate(sub, fmt)
    add_compare(sub, fmt)

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
        except checks.InvalidArgument as exc:
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
