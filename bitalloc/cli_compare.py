"""``bitalloc compare``: the allocator study on the shipped checkpoints (:func:`bitalloc.harness.run_study`) and its
report, in this process, on a local pool (``--workers N``) or on a Dask cluster (``--scheduler ADDRESS``).

    bitalloc compare --quick --out runs/compare
    bitalloc compare --quick --workers 2 --out runs/compare
    bitalloc compare --scheduler tcp://head-node:8786 --out runs/compare   # dask-scheduler / dask-jobqueue
"""

from __future__ import annotations

from . import cli_checks as checks
from .cli_checks import InvalidArgument

#: Seconds to wait for a Dask scheduler to answer before ``--scheduler`` is refused.
SCHEDULER_TIMEOUT_S = 10
#: The allocators ``bitalloc compare`` ranks unless ``--allocators`` says otherwise: the additive ones and the
#: interaction-aware ones (pairwise ``iqp``, measured verify-and-repair) side by side.
DEFAULT_ALLOCATORS = ("fmpq", "ilp", "convex", "greedy", "uniform", "iqp", "ilp+verify", "iqp+verify")


def add_compare(sub, fmt) -> None:
    from .harness import StudySpec
    from .repair import CORRECTIONS

    p = sub.add_parser("compare", help="rank allocators on the shipped checkpoints (real bitstreams, BD-rate)",
                       formatter_class=fmt)
    p.add_argument("--model", default="bmshj2018-hyperprior", help="model family with shipped checkpoints")
    p.add_argument("--qualities", type=checks.int_list, nargs="+", action=checks.Extend, default=None,
                   help="qualities: 1,3,4,6 or 1 3 4 6 (default: 1 3 4 6)")
    p.add_argument("--allocators", nargs="+", default=list(DEFAULT_ALLOCATORS),
                   help="registered allocator names (bitalloc.available_allocators()), each also with a "
                        "'+verify' suffix (measured verify-and-repair) or, with qat, a '+qat' suffix (allocates on "
                        "QAT-aware costs, QAT rows only), or dynaquant with qat")
    p.add_argument("--budgets", type=checks.positive_float, nargs="+", default=None,
                   help="average weight bits (or ratios) (default: 8 6 4; 8 4 with --quick)")
    p.add_argument("--budget-kind", default="avg_bits", choices=["avg_bits", "ratio"], help="what --budgets are")
    p.add_argument("--modes", nargs="+", default=["ptq"], choices=["ptq", "qat"], help="post-training and/or QAT")
    p.add_argument("--qat-steps", type=checks.positive_int, default=None,
                   help=f"QAT steps (default: {StudySpec.qat_steps}; 20 with --quick)")
    p.add_argument("--recovery-steps", type=checks.positive_int, default=None,
                   help="QAT steps per cell of the QAT-aware tables of '+qat' allocators (default: --qat-steps)")
    p.add_argument("--recovery-crop", type=checks.positive_int, default=None,
                   help="training crop size of those QAT runs (default: the QAT crops)")
    p.add_argument("--verify-tolerance", type=checks.non_negative_float, default=StudySpec.verify_tolerance,
                   help="'+verify': the excess of a plan's measured joint loss over its prediction (fraction of the "
                        "float loss) that triggers a repair")
    p.add_argument("--verify-max-evals", type=checks.positive_int, default=StudySpec.verify_max_evals,
                   help="'+verify': plans measured at most per cell")
    p.add_argument("--verify-noise-z", type=checks.non_negative_float, default=StudySpec.verify_noise_z,
                   help="'+verify': a plan replaces the best one only when it measures lower by more than this many "
                        "standard errors of the per-crop difference (0: plain means)")
    p.add_argument("--verify-holdout", type=checks.non_negative_int, default=StudySpec.verify_holdout,
                   help="'+verify': centre crops of this many further training photos (after the calibration set) "
                        "confirm each PTQ repair: the allocator's own plan is kept unless the repair also measures "
                        "lower there (0: none)")
    p.add_argument("--verify-correction", default=StudySpec.verify_correction, choices=CORRECTIONS,
                   help="'+verify': what a repair learns from a measurement; 'context' measures every single-layer "
                        "move of the plan and re-solves on those costs (needs --verify-max-evals of a round of "
                        "moves plus two, e.g. 72 for 14 layers and 6 bit-widths; PTQ repairs only)")
    p.add_argument("--bias-correction", nargs="?", const="all", choices=("all", "chosen"), default=None,
                   help="every quantized layer's bias absorbs the mean output error of its weight quantization on "
                        "the calibration crops, in the cost tables, the checks and the models evaluated (PTQ only); "
                        "'chosen': the models evaluated keep only the transforms' corrections that lower the coded "
                        "RD loss on the calibration crops (bitalloc.choose_bias_correction)")
    p.add_argument("--limit", type=checks.positive_int, default=None,
                   help="evaluate on the first N images only (default: all; 4 with --quick)")
    p.add_argument("--table-fit", default="noise", choices=["clip", "noise"],
                   help="cost tables: clip (max(zeta, 0)) or noise (standard errors, monotone fit, ties within noise "
                        "broken toward the bigger plan)")
    p.add_argument("--quick", action="store_true",
                   help="2 budgets, 4 images, small calibration: a few minutes on 2 cores")
    p.add_argument("--out", default="runs/compare", help="results folder (an interrupted run resumes from it)")
    p.add_argument("--workers", type=checks.positive_int, default=1,
                   help="local worker processes for the sensitivity and cell phases, one torch thread each "
                        "(1: in this process)")
    p.add_argument("--scheduler", default=None,
                   help="run the cells on the Dask cluster of this scheduler address (tcp://host:8786), through "
                        "dask.distributed.Client(address).get_executor() (default: this machine)")
    checks.add_threads(p)
    checks.add_data(p)
    p.set_defaults(func=run_compare, check=check_compare, resumable=True, parser=p)


def check_compare(args) -> None:
    from .harness import StudySpec, study_allocators

    quick = args.quick
    qualities = tuple(args.qualities or (1, 3, 4, 6))
    checks.check_model_quality(args.model, qualities, "compact", "--qualities")
    checks.check_shipped(args.model, qualities, "--qualities")
    valid = study_allocators()
    for name in args.allocators:
        if name not in valid:
            raise InvalidArgument("--allocators", f"unknown allocator {name!r}; valid allocators: {', '.join(valid)}")
    for flag, values in (("--qualities", qualities), ("--allocators", args.allocators),
                         ("--budgets", args.budgets or ()), ("--modes", args.modes)):
        if len(set(values)) != len(values):
            raise InvalidArgument(flag, f"repeated values in {' '.join(map(str, values))}")
    bits = StudySpec.candidate_bits
    for budget in args.budgets or ():
        if args.budget_kind == "avg_bits" and budget < min(bits):
            raise InvalidArgument("--budgets", f"{budget:g} average bits is below the smallest candidate bit-width "
                                               f"{min(bits)} (candidates {', '.join(map(str, bits))}): no plan fits")
        if args.budget_kind == "ratio" and budget > 32 / min(bits):
            raise InvalidArgument("--budgets", f"compression ratio {budget:g} is above {32 / min(bits):g}, the ratio "
                                               f"of every weight at {min(bits)} bits: no plan fits")
    checks.check_folder(args.out, "--out")
    checks.check_root(args.data, "kodak", "train")
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
            table_fit=args.table_fit,
            recovery_steps=args.recovery_steps,
            recovery_crop=args.recovery_crop,
            verify_tolerance=args.verify_tolerance,
            verify_max_evals=args.verify_max_evals,
            verify_noise_z=args.verify_noise_z,
            verify_holdout=args.verify_holdout,
            verify_correction=args.verify_correction,
            bias_correction=args.bias_correction is not None,
            bias_choice=args.bias_correction == "chosen",
        )
    except ValueError as exc:
        raise InvalidArgument("--allocators/--modes", str(exc)) from None
    args.client = connect(args.scheduler) if args.scheduler else None


def connect(address: str):
    """A ``dask.distributed.Client`` of the scheduler at ``address``; refused naming ``--scheduler`` when Dask is
    missing or nothing answers there within :data:`SCHEDULER_TIMEOUT_S`."""
    try:
        from dask.distributed import Client
    except ImportError:
        raise InvalidArgument("--scheduler", "needs dask[distributed] (pip install 'dask[distributed]')") from None
    try:
        return Client(address, timeout=SCHEDULER_TIMEOUT_S)
    except (OSError, TimeoutError, ValueError) as exc:
        raise InvalidArgument("--scheduler", f"no Dask scheduler answered at {address} within "
                                             f"{SCHEDULER_TIMEOUT_S} s: {exc}") from None


def run_compare(args) -> int:
    import os
    import platform

    import torch

    from .harness import run_study
    from .models import load_model
    from .report import layer_frame, write_report

    torch.set_num_threads(args.threads)
    executor = args.client.get_executor() if args.client is not None else None
    try:
        result = run_study(args.spec, args.out, data=args.data, workers=args.workers, executor=executor)
    finally:
        if args.client is not None:
            args.client.close()
    where = f"Dask scheduler {args.scheduler}" if args.client is not None else f"{args.workers} worker(s)"
    machine = f"{platform.machine()} CPU, {os.cpu_count()} cores, torch {torch.__version__}, {where}"
    spec = args.spec  # the heat maps' data-flow order and parameter counts come from the float models
    layers = layer_frame({q: load_model(spec.model, q, pretrained=spec.pretrained) for q in spec.qualities})
    report = write_report(result, args.out, command="bitalloc compare " + " ".join(args.argv), machine=machine,
                          layers=layers)
    print(result.ranking.to_string(index=False))
    print(f"report: {report}")
    return 0
