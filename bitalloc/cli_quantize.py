"""``bitalloc apply`` (model, plan -> quantized checkpoint) and ``bitalloc export`` (model, plan -> deployable file):
the tour's third step, reading the plan ``bitalloc allocate`` wrote (see :mod:`bitalloc.cli`).

    bitalloc apply --model bmshj2018-hyperprior --quality 4 --plan plan.json --out q4.pt
    bitalloc export --model bmshj2018-hyperprior --quality 4 --plan plan.json --out q4.bin --format packed

``apply`` writes a bitalloc checkpoint (loaded with ``weights_only=True``) whose float32 weights *are* the
quantized ones (:func:`bitalloc.bake.bake`), with the plan in its metadata: ``bitalloc evaluate --files q4.pt``
and ``bitalloc.load_model(name, quality, pretrained="q4.pt")`` read it like any checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

from . import cli_checks as checks
from .cli_checks import InvalidArgument

#: ``--format`` -> the public ``bitalloc`` function that writes it; a format is offered when its function exists.
EXPORTERS = {"packed": "export_packed", "safetensors": "export_baked", "onnx": "export_onnx"}


def export_formats() -> list[str]:
    import bitalloc

    return [fmt for fmt, function in EXPORTERS.items() if function in bitalloc.__all__]


def _add_common(p) -> None:
    from .fake_quant import CALIBRATIONS
    from .harness import StudySpec

    checks.add_model(p)
    p.add_argument("--plan", required=True, help="bit plan from `bitalloc allocate` (.json)")
    p.add_argument("--calibration", default=StudySpec.calibration, choices=CALIBRATIONS,
                   help="how each layer's quantization range is set (use the one the table was measured with)")
    p.add_argument("--bias-correction", nargs="?", const="all", choices=("all", "chosen"), default=None,
                   help="each quantized layer's bias absorbs the mean output error of its weight quantization on "
                        "the calibration photos (use it when the table was measured with it); 'chosen': only the "
                        "transforms whose correction lowers the coded RD loss on those photos together "
                        "(bitalloc.choose_bias_correction)")
    p.add_argument("--calib-images", type=checks.positive_int, default=8,
                   help="--bias-correction, or a plan with activation bits: the first N training photos calibrate")
    p.add_argument("--crop", type=checks.positive_int, default=256,
                   help="centre-crop side of those photos (a multiple of 64)")
    checks.add_data(p)
    checks.add_threads(p)


def add_apply(sub, fmt) -> None:
    p = sub.add_parser("apply", formatter_class=fmt,
                       help="quantize a model by a bit plan: a checkpoint holding the quantized weights")
    _add_common(p)
    p.add_argument("--out", required=True, help="checkpoint to write (.pt)")
    p.set_defaults(func=run_apply, check=check_apply, resumable=False, parser=p)


def add_export(sub, fmt) -> None:
    p = sub.add_parser("export", formatter_class=fmt,
                       help="quantize a model by a bit plan and write it for deployment (packed integer weights)")
    _add_common(p)
    p.add_argument("--format", default="packed", choices=export_formats(),
                   help="packed: integer weights at their bit-widths (bitalloc.load_packed); safetensors: the "
                        "quantized weights as float32, loadable into the model class without bitalloc; onnx: the "
                        "four transforms with integer weights + DequantizeLinear (the entropy coder stays in "
                        "CompressAI)")
    p.add_argument("--height", type=checks.positive_int, default=64,
                   help="onnx: the static image height the transforms are exported for (a multiple of 64)")
    p.add_argument("--width", type=checks.positive_int, default=64, help="onnx: the static image width")
    p.add_argument("--out", required=True, help="file to write")
    p.set_defaults(func=run_export, check=check_export, resumable=False, parser=p)


def _check_common(args) -> None:
    from .errors import PlanError
    from .plan import BitPlan

    checks.check_model_source(args.model, [args.quality], args.pretrained)
    path = checks.check_file_in(args.plan, "--plan", (".json",))
    try:
        args.bit_plan = BitPlan.from_json(path)
    except (PlanError, ValueError, UnicodeDecodeError) as exc:
        raise InvalidArgument("--plan", f"{path}: {exc}") from None
    checks.check_file_out(args.out, "--out")
    if args.bias_correction or getattr(args.bit_plan, "act_bits", None):
        checks.check_root(args.data, "train")
    if args.crop % 64:
        raise InvalidArgument("--crop", f"{args.crop} is not a multiple of 64 (the models downsample by 64)")


def check_apply(args) -> None:
    _check_common(args)
    checks.check_suffix(args.out, "--out", (".pt",))
    acts = getattr(args.bit_plan, "act_bits", None)
    if acts:
        raise InvalidArgument("--plan", f"{args.plan} quantizes the input activations of {len(acts)} layers (e.g. "
                                        f"'{next(iter(acts))}'), which a checkpoint of float weights cannot hold; "
                                        "use `bitalloc export --format packed|onnx`")


def check_export(args) -> None:
    _check_common(args)
    for flag, value in (("--height", args.height), ("--width", args.width)):
        if value % 64:
            raise InvalidArgument(flag, f"{value} is not a multiple of 64 (the models downsample by 64)")


def quantized_model(args):
    """The float model of ``--model/--quality/--pretrained`` fake-quantized by ``--plan``, and what its bias
    correction did (None without one; else the calibration and, for ``chosen``, the transforms kept). A plan
    that does not fit the model (a layer it lacks, a layer the plan misses) is a ValueError naming ``--plan``."""
    import torch

    from .models import load_model
    from .quant import apply_plan

    torch.set_num_threads(args.threads)
    model = load_model(args.model, args.quality, pretrained=args.pretrained)
    if not getattr(model, "meta", None):  # CompressAI's weights: say what they are, for the files written
        model.meta = {"architecture": args.model, "quality": args.quality, "size": "paper",
                      "N": int(model.N), "M": int(model.M)}
    try:
        qmodel = apply_plan(model, args.bit_plan, calibration=args.calibration)
    except ValueError as exc:
        raise ValueError(f"argument --plan: {args.plan} does not fit {args.model} quality {args.quality}: {exc}"
                         ) from None
    if not args.bias_correction:
        return model, qmodel, None
    bias = {"calib_images": args.calib_images, "crop": args.crop}
    if args.bias_correction == "chosen":
        from .bias_correction import choose_bias_correction

        bias["chosen"] = list(choose_bias_correction(qmodel, calibration_photos(args)).groups)
    else:
        from .bias_correction import correct_bias

        correct_bias(qmodel, calibration_photos(args))
    return model, qmodel, bias


def bias_note(bias: dict | None) -> str:
    """What the printed summary says of the bias correction ("" without one)."""
    if bias is None:
        return ""
    if "chosen" in bias:
        return f", biases of {'+'.join(bias['chosen']) or 'no transform'} corrected (chosen)"
    return ", biases corrected"


def calibration_photos(args):
    """Centre crops (``--crop``) of the first ``--calib-images`` training photos under ``--data``."""
    from .study_steps import calibration_crops

    return calibration_crops(None, args.calib_images, args.crop, args.data)


def checkpoint_meta(model, args, bias: dict | None) -> dict:
    """The float model's metadata without its Kodak numbers (they are not the quantized model's), plus the plan
    and the bias correction (``bias``, from :func:`quantized_model`)."""
    meta = {k: v for k, v in model.meta.items() if k != "kodak"}
    return {**meta, "plan": args.bit_plan.to_dict(), "calibration": args.calibration,
            "quantized_from": str(args.pretrained), **({"bias_correction": bias} if bias else {})}


def run_apply(args) -> int:
    from .bake import bake
    from .models.checkpoint import save_checkpoint

    model, qmodel, bias = quantized_model(args)
    save_checkpoint(bake(qmodel), args.out, checkpoint_meta(model, args, bias), half=False)
    avg = args.bit_plan.meta.get("avg_bits")
    print(f"{args.model} q{args.quality} quantized by {args.plan} ({len(args.bit_plan)} layers"
          + (f", {avg:.3f} avg bits" if isinstance(avg, (int, float)) else "") + f", {args.calibration} calibration"
          + bias_note(bias) + ")"
          f" -> {args.out} ({Path(args.out).stat().st_size / 1e6:.2f} MB float32; bitalloc evaluate --files "
          f"{args.out})")
    return 0


def run_export(args) -> int:
    import bitalloc

    _, qmodel, bias = quantized_model(args)
    if getattr(args.bit_plan, "act_bits", None):  # activation ranges are frozen from calibration crops first
        from .act_quant import calibrate_activations

        calibrate_activations(qmodel, calibration_photos(args))
    size = {"height": args.height, "width": args.width} if args.format == "onnx" else {}
    report = getattr(bitalloc, EXPORTERS[args.format])(qmodel, args.out, **size)
    if bias:
        report = {**report, "bias_correction": bias}
    print(json.dumps(report, indent=2, default=str))
    return 0
