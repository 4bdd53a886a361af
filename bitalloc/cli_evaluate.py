"""``bitalloc evaluate``: real bitstreams of a model at several qualities and/or of model files, one rate point each,
written as CompressAI's multi-point JSON (``--json``), the last step of the tour (see :mod:`bitalloc.cli`).

    bitalloc evaluate --model bmshj2018-hyperprior --qualities 1,3,4,6 --json float.json
    bitalloc evaluate --files q4.pt q4.bin --limit 4 --json quantized.json

``--threads`` defaults to 1: on the shared 2-core sandbox (other jobs on both cores), Scale Hyperprior q4 on 3 Kodak
images took 0.61 s encoding + 0.83 s decoding per image with one torch thread against 7.5 s + 4.9 s with two
(``bitalloc evaluate --model bmshj2018-hyperprior --qualities 4 --limit 3 --threads 1`` / ``2``).
"""

from __future__ import annotations

from pathlib import Path

from . import cli_checks as checks
from .cli_checks import InvalidArgument

def add_evaluate(sub, fmt) -> None:
    p = sub.add_parser("evaluate", formatter_class=fmt,
                       help="entropy-code images at several qualities and/or with model files: bpp from bytes, "
                            "PSNR, MS-SSIM, CompressAI multi-point JSON")
    p.add_argument("--model", default=None, help="model family, needed with --qualities "
                                                 "(bitalloc.models.available_models())")
    p.add_argument("--qualities", "--quality", type=checks.int_list, nargs="+", action=checks.Extend, default=None,
                   help="qualities of --model, one rate point each: 1,3,4,6 or 1 3 4 6 or repeated (default: none, "
                        "--files only)")
    p.add_argument("--pretrained", default="bitalloc", help="weights of --qualities: bitalloc | compressai | path "
                                                            "to a checkpoint (one quality)")
    p.add_argument("--files", nargs="+", action="extend", default=None,
                   help="model files, one rate point each: checkpoints (.pt, e.g. from `bitalloc apply`) or packed "
                        "exports (`bitalloc export --format packed`) (default: none)")
    p.add_argument("--images", default=None, help="image folder (default: <data>/kodak, else scikit-image's photos)")
    p.add_argument("--limit", type=checks.positive_int, default=None,
                   help="evaluate the first N images only (default: all)")
    p.add_argument("--json", default=None,
                   help="write CompressAI eval_model JSON (every point) to this file, or to <name>.json in this "
                        "folder (default: no JSON)")
    p.add_argument("--name", default=None, help="the curve's name in the JSON (default: --model, else the first "
                                                "file's name)")
    checks.add_threads(p, default=1, why=" (one: 4-9x faster than two on a loaded 2-core machine)")
    checks.add_data(p)
    p.set_defaults(func=run_evaluate, check=check_evaluate, resumable=False, parser=p)


def _is_checkpoint(path) -> bool:
    """A torch file (a zip archive: a checkpoint); anything else is taken for a packed export."""
    import zipfile

    return zipfile.is_zipfile(path)


def check_evaluate(args) -> None:
    qualities, files = args.qualities or [], args.files or []
    if not qualities and not files:
        raise InvalidArgument("--qualities/--files", "nothing to evaluate: give qualities of --model, model files, "
                                                     "or both")
    if qualities:
        if args.model is None:
            raise InvalidArgument("--model", "--qualities needs the model family")
        if len(set(qualities)) != len(qualities):
            raise InvalidArgument("--qualities", f"repeated values in {','.join(map(str, qualities))}")
        if args.pretrained not in ("bitalloc", "compressai") and len(qualities) > 1:
            raise InvalidArgument("--pretrained", f"one file holds one quality, but --qualities names "
                                                  f"{len(qualities)}; pass more files with --files")
        checks.check_model_source(args.model, qualities, args.pretrained, "--qualities")
    for path in files:
        checks.check_file_in(path, "--files")
        try:
            load_file(path)  # a few MB: read now, so a wrong file is named before the first point is coded
        except (ValueError, OSError) as exc:
            raise InvalidArgument("--files", str(exc)) from None
    if args.images is not None:
        checks.check_images(args.images, "--images")
    else:
        checks.check_root(args.data, "kodak")
    if args.json is not None and not Path(args.json).is_dir():
        checks.check_file_out(args.json, "--json")


def load_file(path):
    """The model a file holds: a checkpoint (``bitalloc apply``) or a packed export (:func:`bitalloc.load_packed`)."""
    from .export import load_packed
    from .models import load_checkpoint

    return load_checkpoint(path) if _is_checkpoint(path) else load_packed(path)


def points(args):
    """``(label, quality, model loader)`` per rate point: the qualities first, then the files."""
    from .models import load_model

    for q in args.qualities or ():
        yield f"{args.model} q{q}", q, lambda q=q: load_model(args.model, q, pretrained=args.pretrained)
    for path in args.files or ():
        yield str(path), None, lambda path=path: load_file(path)


def curve_name(args) -> str:
    return args.name or args.model or Path(args.files[0]).stem


def run_evaluate(args) -> int:
    import pandas as pd
    import torch

    from .evaluation import evaluate, summarize, to_compressai_json

    torch.set_num_threads(args.threads)
    frames, rows = [], []
    for label, quality, load in points(args):
        model = load()
        df = evaluate(model, args.images, root=args.data, limit=args.limit)
        if quality is None:
            quality = getattr(model, "meta", {}).get("quality")
        frames.append(df)
        rows.append({"point": label, "quality": quality, "images": len(df), **summarize(df)})
    print(pd.DataFrame(rows).to_string(index=False))
    if args.json:
        name = curve_name(args)
        path = Path(args.json) / f"{name}.json" if Path(args.json).is_dir() else Path(args.json)
        to_compressai_json(frames, name, path=path)
        print(f"json: {path}")
    return 0
