"""Argument checks of the ``bitalloc`` command line: every value is checked before any work starts, and a bad
one is an error naming its flag (see :mod:`bitalloc.cli`)."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

def positive(kind: type):
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


positive_int = positive(int)
positive_float = positive(float)


def non_negative_int(text: str) -> int:
    """An argparse ``type`` accepting 0, 1, 2, ..."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {text!r}")
    return value


def non_negative_float(text: str) -> float:
    """An argparse ``type`` accepting finite numbers >= 0."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text!r}")
    return value


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows every default; where it is None, the help text says in words what happens instead."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


class InvalidArgument(Exception):
    """An argument that parsed but cannot work (unknown model, missing file, ...): ``flag`` names it."""

    def __init__(self, flag: str, message: str):
        super().__init__(f"argument {flag}: {message}")


def add_data(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default=None, help="data root holding kodak/ and train/ (default: $BITALLOC_DATA)")


def add_threads(p: argparse.ArgumentParser, default: int = 2, why: str = "") -> None:
    p.add_argument("--threads", type=positive_int, default=default, help="CPU threads for torch" + why)


def int_list(text: str) -> list[int]:
    """An argparse ``type``: integers separated by commas (``"1,3,4,6"``)."""
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        values = []
    if not values:
        raise argparse.ArgumentTypeError(f"must be integers separated by commas, got {text!r}")
    return values


class Extend(argparse.Action):
    """Collects list values across repeats and spaces: ``--qualities 1,3 4 --qualities 6`` is [1, 3, 4, 6]."""

    def __call__(self, parser, namespace, values, option_string=None):
        seen = getattr(namespace, self.dest, None)
        fresh = [] if seen is None or seen is self.default else list(seen)
        setattr(namespace, self.dest, fresh + [v for value in values for v in value])


def add_model(p: argparse.ArgumentParser, quality: bool = True) -> None:
    """``--model``, ``--quality`` and ``--pretrained``: the float model a command starts from."""
    p.add_argument("--model", required=True, help="model family (bitalloc.models.available_models())")
    if quality:
        p.add_argument("--quality", type=int, required=True,
                       help="CompressAI's 1-8 (its lambdas); the compact size also has bitalloc's low-rate 0")
    p.add_argument("--pretrained", default="bitalloc", help="bitalloc | compressai | path to a checkpoint")


# ---- checks shared by the commands (each raises InvalidArgument naming the flag) -----------------------------------

def check_model_quality(model: str, qualities, size: str, quality_flag: str = "--quality") -> None:
    from .models.registry import check_model, check_quality

    try:
        check_model(model)
    except ValueError as exc:
        raise InvalidArgument("--model", str(exc)) from None
    for quality in qualities:
        try:
            check_quality(model, quality, size)
        except ValueError as exc:
            raise InvalidArgument(quality_flag, str(exc)) from None


def check_shipped(model: str, qualities, flag: str) -> None:
    """Every quality has a checkpoint in the package (``pretrained="bitalloc"``)."""
    from .models import available_checkpoints, checkpoint_name, shipped_checkpoint_dir

    missing = [q for q in qualities if not (shipped_checkpoint_dir() / checkpoint_name(model, q)).is_file()]
    if missing:
        shipped = sorted({(c["architecture"], c["quality"]) for c in available_checkpoints()})
        mine = [q for name, q in shipped if name == model]
        raise InvalidArgument(
            "--model" if not mine else flag,
            f"no shipped checkpoint for {model} quality {', '.join(map(str, missing))}; shipped: "
            + (f"qualities {', '.join(map(str, mine))} of {model}" if mine else
               ", ".join(sorted({name for name, _ in shipped})) or "none")
            + ". Train one with `bitalloc train`")


def check_root(data, *subsets: str, required: bool = False) -> Path | None:
    """The data root (``--data`` or $BITALLOC_DATA), with images in each of ``subsets`` when it is set."""
    from .data import data_root, image_paths

    try:
        root = data_root(data)
        if root is None and required:
            raise FileNotFoundError("no data root; set BITALLOC_DATA or pass --data")
        for subset in subsets if root is not None else ():
            image_paths(root / subset)
    except FileNotFoundError as exc:
        raise InvalidArgument("--data", str(exc)) from None
    return root


def check_images(folder, flag: str) -> None:
    from .data import image_paths

    try:
        image_paths(folder)
    except FileNotFoundError as exc:
        raise InvalidArgument(flag, str(exc)) from None


def check_folder(path, flag: str) -> None:
    """``path`` is (or can become) a folder: not an existing file, nor under one."""
    path = Path(path)
    for p in (path, *path.parents):
        if p.exists() and not p.is_dir():
            raise InvalidArgument(flag, f"{p} is a file; {flag} names a folder")


def check_file_out(path, flag: str) -> None:
    """``path`` can be written as a file: not an existing folder, no file where a parent folder should be."""
    path = Path(path)
    if path.is_dir():
        raise InvalidArgument(flag, f"{path} is a folder; {flag} names a file")
    check_folder(path.parent, flag)


# ---- train ---------------------------------------------------------------------------------------------------

def check_train(args) -> None:
    import torch

    check_model_quality(args.model, [args.quality], args.size)
    if args.channels is not None:
        from .models.registry import check_channels

        try:
            check_channels(args.model, args.channels)
        except ValueError as exc:
            raise InvalidArgument("--channels", str(exc)) from None
    if args.init_from is not None and not Path(args.init_from).is_file():
        raise InvalidArgument("--init-from", f"no such file: {args.init_from}")
    check_folder(args.workdir, "--workdir")
    if args.out is not None:
        check_file_out(args.out, "--out")
    try:
        device = torch.device(args.device)
    except (RuntimeError, ValueError) as exc:
        raise InvalidArgument("--device", str(exc)) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InvalidArgument("--device", f"{args.device} requested but torch sees no CUDA device")
    check_root(args.data, "train", required=True)


def check_model_source(model: str, qualities, pretrained: str, quality_flag: str = "--quality") -> None:
    """``model`` at every quality can be loaded from ``pretrained`` (shipped, CompressAI's, or a file)."""
    check_model_quality(model, qualities, "paper" if pretrained == "compressai" else "compact", quality_flag)
    if pretrained == "bitalloc":
        check_shipped(model, qualities, quality_flag)
    elif pretrained != "compressai" and not Path(pretrained).is_file():
        raise InvalidArgument("--pretrained", f"not 'bitalloc', 'compressai' or an existing file: {pretrained}")


def check_file_in(path, flag: str, suffixes: tuple[str, ...] = ()) -> Path:
    """``path`` is an existing file (with one of ``suffixes``, when given)."""
    path = Path(path)
    if not path.is_file():
        raise InvalidArgument(flag, f"no such file: {path}" if not path.exists() else f"{path} is not a file")
    check_suffix(path, flag, suffixes)
    return path


def check_suffix(path, flag: str, suffixes: tuple[str, ...]) -> str:
    """The file type ``path`` names by its suffix, one of ``suffixes`` (any when empty)."""
    suffix = Path(path).suffix.lower()
    if suffixes and suffix not in suffixes:
        raise InvalidArgument(flag, f"{path} must end in {' or '.join(suffixes)} (the format is taken from it)")
    return suffix
