"""Command-line plumbing shared by the backend studies (``studies/bench_*.py``, ``studies/ptq_qat_uniform.py``).

Which model a study runs on (``--model``, ``--quality``, ``--checkpoint`` or a training run's ``--run-state``),
where Kodak is (``--data`` or ``$BITALLOC_DATA``), torch threads and the output folder. A missing checkpoint or
data root ends the study with exit status 2 and a sentence saying what to pass.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

__all__ = ["add_model_args", "command_line", "kodak_folder", "load_model_arg", "machine_line"]


def add_model_args(parser: argparse.ArgumentParser, out: str | os.PathLike) -> None:
    """Add ``--model --quality --checkpoint --run-state --data --threads --out`` (``out``: the default)."""
    parser.add_argument("--model", default="bmshj2018-hyperprior")
    parser.add_argument("--quality", type=int, default=4)
    parser.add_argument("--checkpoint", default=None, help="a checkpoint file (default: the shipped one)")
    parser.add_argument("--run-state", default=None, help="a training run's state.pt (read-only; not a release)")
    parser.add_argument("--data", default=None, help="data root with kodak/ (default: $BITALLOC_DATA)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(out))


def load_model_arg(args: argparse.Namespace):
    """(model in eval mode with meta, a description of where it came from); exits 2 without a checkpoint.

    A ``--run-state`` loads through :func:`bitalloc.safe_load.load_torch_file`; errors name the file.
    """
    from bitalloc.models import build_model, checkpoint_name, lambda_of, load_checkpoint, shipped_checkpoint_dir

    if args.run_state:
        from bitalloc.safe_load import load_torch_file

        state = load_torch_file(args.run_state, "a bitalloc train() run state", required=("model",))
        model = build_model(args.model, args.quality)
        try:
            model.load_state_dict(state["model"])
        except RuntimeError as exc:
            raise ValueError(f"{args.run_state} does not hold {args.model} q{args.quality} weights: "
                             f"{str(exc).splitlines()[0]}") from None
        model.meta = {"architecture": args.model, "quality": args.quality, "lambda": lambda_of(args.quality),
                      "N": model.N, "M": model.M, "size": "compact"}
        return model.eval(), f"training run state {args.run_state} (step {state.get('step')}; not shipped)"
    path = Path(args.checkpoint) if args.checkpoint else shipped_checkpoint_dir() / checkpoint_name(
        args.model, args.quality)
    if not path.is_file():
        print(f"No checkpoint at {path}: the shipped compact checkpoint for {args.model} q{args.quality} is not "
              "there yet. Pass --checkpoint FILE (or --run-state for an unfinished run).", file=sys.stderr)
        raise SystemExit(2)
    return load_checkpoint(path), f"checkpoint {path.name}"


def kodak_folder(args: argparse.Namespace) -> Path:
    """``<data root>/kodak`` from ``--data`` or ``$BITALLOC_DATA``; exits 2 when there is none."""
    from bitalloc.data import data_root

    root = data_root(args.data)
    if root is None or not (root / "kodak").is_dir():
        print("Kodak not found: set BITALLOC_DATA (or --data) to a folder with kodak/", file=sys.stderr)
        raise SystemExit(2)
    return root / "kodak"


def machine_line(threads: int) -> str:
    """The results' "- machine:" line: cores, torch threads and the 1-minute load average when it is written (other
    jobs on the cores inflate the times); ``$BITALLOC_MACHINE_NOTE`` names a job sharing the machine."""
    note = os.environ.get("BITALLOC_MACHINE_NOTE")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"- machine: {os.cpu_count()}-core CPU, torch threads {threads}, 1-minute load average {load:.1f}"
            + (f" (sharing it: {note})" if note else ""))


def command_line(script: str, argv: list[str] | None) -> str:
    """The results' "- command:" line: ``python <script>`` with ``argv`` (default: this process's arguments)."""
    return f"- command: `python {script} {' '.join(argv if argv is not None else sys.argv[1:])}`"
