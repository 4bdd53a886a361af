"""``bitalloc sensitivity`` (model, calibration crops -> cost table) and ``bitalloc allocate`` (cost table, budget,
allocator -> bit plan): the first two steps of the tour, composable through their files (see :mod:`bitalloc.cli`).

    bitalloc sensitivity --model bmshj2018-hyperprior --quality 4 --out table.csv
    bitalloc allocate --table table.csv --budget 4 --allocator ilp --out plan.json
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

from . import cli_checks as checks
from .cli_checks import InvalidArgument

TABLE_SUFFIXES = (".csv", ".json")
BUDGET_KINDS = ("avg_bits", "ratio", "bits")


# ---- sensitivity ---------------------------------------------------------------------------------------------

def add_sensitivity(sub, fmt) -> None:
    from .fake_quant import CALIBRATIONS
    from .harness import StudySpec
    from .sensitivity.measure import FITS

    p = sub.add_parser("sensitivity", formatter_class=fmt,
                       help="measure every layer's RD-loss increase at every bit-width: a cost table (CSV/JSON)")
    checks.add_model(p)
    p.add_argument("--out", required=True, help="cost table to write: .csv or .json (the suffix picks the format)")
    p.add_argument("--bits", type=checks.int_list, nargs="+", action=checks.Extend,
                   default=",".join(map(str, StudySpec.candidate_bits)), help="candidate bit-widths")
    p.add_argument("--calibration", default=StudySpec.calibration, choices=CALIBRATIONS,
                   help="how each layer's quantization range is set")
    p.add_argument("--calib-images", type=checks.positive_int, default=StudySpec.calib_images,
                   help="calibration photos (the first N training images)")
    p.add_argument("--crop", type=checks.positive_int, default=StudySpec.calib_crop,
                   help="centre-crop side in pixels (a multiple of 64)")
    p.add_argument("--images", default=None,
                   help="calibration image folder (default: <data>/train, else scikit-image's photos)")
    p.add_argument("--fit", default="clip", choices=FITS, help="clip: max(zeta, 0); isotonic: monotone in bits")
    p.add_argument("--bias-correction", action="store_true",
                   help="measure each layer with its bias corrected for the mean output error of its quantized "
                        "weight (then apply / export the plan with --bias-correction too)")
    p.add_argument("--hessian-samples", type=checks.non_negative_int, default=4,
                   help="Hutchinson samples per layer for the Hessian traces ('convex' uses them; 0 skips)")
    checks.add_threads(p)
    checks.add_data(p)
    p.set_defaults(func=run_sensitivity, check=check_sensitivity, resumable=False, parser=p)


def check_sensitivity(args) -> None:
    from .bits import check_bits

    checks.check_model_source(args.model, [args.quality], args.pretrained)
    checks.check_suffix(args.out, "--out", TABLE_SUFFIXES)
    checks.check_file_out(args.out, "--out")
    for b in args.bits:
        try:
            check_bits(b, subject=f"candidate bit-width {b}")
        except ValueError as exc:
            raise InvalidArgument("--bits", str(exc)) from None
    if len(set(args.bits)) != len(args.bits):
        raise InvalidArgument("--bits", f"repeated values in {','.join(map(str, args.bits))}")
    if args.crop % 64:
        raise InvalidArgument("--crop", f"{args.crop} is not a multiple of 64 (the models downsample by 64)")
    if args.images is not None:
        checks.check_images(args.images, "--images")
    else:
        checks.check_root(args.data, "train")


def run_sensitivity(args) -> int:
    import torch

    from .models import load_model
    from .sensitivity import measure_sensitivity
    from .study_steps import calibration_crops

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    model = load_model(args.model, args.quality, pretrained=args.pretrained)
    calib = calibration_crops(args.images, args.calib_images, args.crop, args.data)
    table = measure_sensitivity(model, calib, bits=args.bits, calibration=args.calibration, fit=args.fit,
                                hessian_samples=args.hessian_samples, progress=sys.stderr.isatty(),
                                bias_correction=args.bias_correction)
    if Path(args.out).suffix.lower() == ".csv":
        table.to_csv(args.out)
    else:
        table.to_json(args.out)
    print(f"cost table of {args.model} q{args.quality}: {table.num_layers} layers x bits "
          f"{','.join(map(str, table.bits))}, {len(calib)} crops of {calib.shape[-1]} px, {args.calibration} "
          f"calibration{', biases corrected' if args.bias_correction else ''}, {time.perf_counter() - t0:.1f} s -> "
          f"{args.out}")
    return 0


# ---- allocate ------------------------------------------------------------------------------------------------

def add_allocate(sub, fmt) -> None:
    from .allocation import available_allocators

    p = sub.add_parser("allocate", formatter_class=fmt,
                       help="choose every layer's bit-width under a size budget: a bit plan (JSON) and a summary")
    p.add_argument("--table", required=True, help="cost table from `bitalloc sensitivity` (.csv or .json)")
    p.add_argument("--budget", type=checks.positive_float, required=True,
                   help="the size budget, in --budget-kind units")
    p.add_argument("--budget-kind", default="avg_bits", choices=BUDGET_KINDS,
                   help="avg_bits: the size of every layer at that many bits; ratio: FP32 size / ratio; "
                        "bits: the size itself in bits")
    p.add_argument("--allocator", default="ilp", choices=available_allocators(), help="registered allocator")
    p.add_argument("--option", action="append", default=None, metavar="KEY=VALUE",
                   help="allocator option, the value as JSON (e.g. time_limit_s=10); repeatable (default: none)")
    p.add_argument("--out", required=True, help="bit plan to write (.json)")
    p.set_defaults(func=run_allocate, check=check_allocate, resumable=False, parser=p)


def _options(pairs) -> dict:
    options = {}
    for pair in pairs or ():
        key, sep, text = pair.partition("=")
        if not sep or not key.isidentifier():
            raise InvalidArgument("--option", f"expected KEY=VALUE, got {pair!r}")
        try:
            options[key] = json.loads(text)
        except json.JSONDecodeError:
            options[key] = text  # a bare word: a string option such as solver=highs
    return options


def budget_for(table, value: float, kind: str):
    """The :class:`~bitalloc.budget.Budget` ``value`` means under ``kind`` (avg_bits, ratio or bits)."""
    from .costs import Budget

    if kind == "avg_bits":
        return Budget.from_avg_bits(table, value)
    if kind == "ratio":
        return Budget.from_compression_ratio(table, value)
    budget = Budget(value)
    budget.check(table)
    return budget


def check_allocate(args) -> None:
    from .allocation import build_allocator
    from .costs import CostTable
    from .errors import BudgetError, CostTableError

    path = checks.check_file_in(args.table, "--table", TABLE_SUFFIXES)
    checks.check_suffix(args.out, "--out", (".json",))
    checks.check_file_out(args.out, "--out")
    try:
        args.cost_table = CostTable.from_csv(path) if path.suffix.lower() == ".csv" else CostTable.from_json(path)
    except (CostTableError, ValueError) as exc:
        raise InvalidArgument("--table", str(exc)) from None
    try:
        args.size_budget = budget_for(args.cost_table, args.budget, args.budget_kind)
    except BudgetError as exc:
        raise InvalidArgument("--budget", f"{args.budget:g} ({args.budget_kind}): {exc}") from None
    try:
        args.allocator_obj = build_allocator(args.allocator, **_options(args.option))
    except (TypeError, ValueError) as exc:
        raise InvalidArgument("--option", f"allocator '{args.allocator}': {exc}") from None


def summary_line(alloc, table, budget, out) -> str:
    """One line: allocator, status, average bits, size against the budget, predicted loss, solve time."""
    size, cap = alloc.size_bits, budget.max_size_bits
    return (f"{alloc.plan.meta.get('allocator', '?')}: {alloc.status}, {alloc.plan.avg_bits(table):.3f} avg bits, "
            f"{size / 8e3:,.1f} kB of {cap / 8e3:,.1f} kB budget ({size / table.fp32_size_bits:.1%} of FP32), "
            f"predicted RD-loss increase {alloc.objective:.4g} ({alloc.objective:.2%}), "
            f"solved in {alloc.solve_time_s * 1e3:.1f} ms -> {out}")


def run_allocate(args) -> int:
    table, budget = args.cost_table, args.size_budget
    alloc = args.allocator_obj.allocate(table, budget)
    where = f"budget {args.budget:g} {args.budget_kind} ({budget.max_size_bits:.10g} bits)"
    if not alloc.ok or alloc.plan is None:
        print(f"bitalloc allocate: allocator '{args.allocator}' found no plan within {where}: {alloc.status}"
              + (f": {alloc.message}" if alloc.message else ""), file=sys.stderr)
        return 2
    meta = {**alloc.plan.meta, "status": str(alloc.status), "budget": args.budget, "budget_kind": args.budget_kind,
            "max_size_bits": budget.max_size_bits, "size_bits": alloc.size_bits,
            "avg_bits": alloc.plan.avg_bits(table), "objective": alloc.objective, "gap": alloc.gap,
            "solve_time_s": alloc.solve_time_s, "table": str(args.table), "message": alloc.message}
    plan = dataclasses.replace(alloc.plan, meta=meta)
    plan.to_json(args.out)
    print(summary_line(alloc, table, budget, args.out))
    return 0
