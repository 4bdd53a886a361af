"""Image data: the data-root setting, image folders, crops for training, whole images for evaluation.

The data root is ``BITALLOC_DATA`` (or a ``--data`` flag); below it ``kodak/`` holds the evaluation images
and ``train/`` the training photos. With no data root, demos fall back to the photos scikit-image ships,
so a fresh install runs offline.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = [
    "IMAGE_SUFFIXES",
    "SPLITS",
    "ImageFolder",
    "split_of",
    "data_root",
    "decode_image",
    "image_paths",
    "load_image",
    "sample_images",
    "resolve_images",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".tif", ".tiff", ".webp")

#: Deterministic splits of a training folder, by a hash of each file name (stable when photos are added):
#: 5 % validation (learning-rate decisions, early stopping), 5 % calibration, the rest training.
SPLITS = ("train", "val", "calib")


def split_of(path: str | os.PathLike) -> str:
    """The split a training photo belongs to: ``"val"``, ``"calib"`` or ``"train"`` (by its file name)."""
    import zlib

    h = zlib.crc32(Path(path).name.encode("utf-8")) % 100
    return "val" if h < 5 else "calib" if h < 10 else "train"


def data_root(path: str | os.PathLike | None = None) -> Path | None:
    """The data root: ``path`` if given, else ``$BITALLOC_DATA``, else None."""
    value = path if path is not None else os.environ.get("BITALLOC_DATA")
    if value in (None, ""):
        return None
    root = Path(value).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"Data root {root} does not exist (set BITALLOC_DATA or pass --data)")
    return root


def image_paths(folder: str | os.PathLike) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"Image folder {folder} does not exist")
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise FileNotFoundError(f"Image folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return paths


#: Pillow modes holding 8-bit samples; :func:`decode_image` converts them to RGB (alpha is dropped).
_EIGHT_BIT_MODES = ("1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr")
#: Pillow's 16-bit grayscale modes (a 16-bit grayscale PNG opens as ``I;16``).
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


def decode_image(path: str | os.PathLike) -> tuple[torch.Tensor, int]:
    """Decode an image file into ``(pixels, full_scale)``: a (3, H, W) integer tensor and its white level.

    8-bit modes give ``uint8`` pixels and 255; 16-bit grayscale (``I;16``, and ``I`` from a PNG or from a
    TIFF of 8 or 16 bits per sample) gives ``int32`` pixels and ``2**bits - 1``. Grayscale becomes three equal
    channels. Other modes (floating point, 32-bit integers, LAB, ...) raise a ValueError naming the file and
    the mode, rather than being clipped into a wrong image. The one decoder of :func:`load_image` and
    :class:`ImageFolder`.
    """
    from PIL import Image

    try:
        with Image.open(path) as im:
            mode = im.mode
            if mode in _EIGHT_BIT_MODES:
                return torch.from_numpy(np.array(im.convert("RGB"), dtype=np.uint8)).permute(2, 0, 1), 255
            if mode in _SIXTEEN_BIT_MODES:
                bits = 16
            elif mode == "I" and im.format == "PNG":  # PNG samples are at most 16 bits
                bits = 16
            elif mode == "I" and tuple(getattr(im, "tag_v2", {}).get(258, ())) in ((8,), (16,)):
                bits = im.tag_v2[258][0]  # TIFF BitsPerSample
            else:
                raise ValueError(f"Cannot read image {path}: Pillow mode {mode!r} is not supported "
                                 f"(use 8-bit RGB/grayscale or 16-bit grayscale)")
            gray = np.asarray(im).astype(np.int32)
    except OSError as exc:
        raise ValueError(f"Cannot read image {path}: {exc}") from exc
    full = 2 ** bits - 1
    if gray.ndim != 2 or gray.min(initial=0) < 0 or gray.max(initial=0) > full:
        raise ValueError(f"Cannot read image {path}: mode {mode!r} samples {gray.shape} outside the "
                         f"{bits}-bit range 0..{full}")
    return torch.from_numpy(gray).expand(3, *gray.shape).contiguous(), full


def load_image(path: str | os.PathLike) -> torch.Tensor:
    """An RGB image as a float tensor (3, H, W) in [0, 1] (scaled from the file's bit depth)."""
    pixels, full = decode_image(path)
    return pixels.float().div_(full)


def sample_images() -> dict[str, torch.Tensor]:
    """scikit-image's bundled colour photos (offline default for demos and quick runs)."""
    from skimage import data as skdata

    out = {}
    for name in ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field"):
        arr = np.ascontiguousarray(getattr(skdata, name)()[..., :3])
        out[name] = torch.from_numpy(arr).permute(2, 0, 1).float().div_(255.0)
    return out


def resolve_images(images=None, *, subset: str = "kodak", root=None, limit: int | None = None,
                   ) -> dict[str, torch.Tensor]:
    """Turn ``images`` into ``{name: (3,H,W) tensor}``; a file's name is its stem (``kodim01``).

    ``images`` may be a folder, a list of paths (or tensors), a dict of tensors, or None: then
    ``<data root>/<subset>``, or scikit-image's photos when no data root is set. ``limit`` keeps the first
    ``limit`` images (a positive integer). Two files with one stem (``x.png`` and ``x.jpg``) are an error
    naming both: results are keyed by image name, and such a pair is almost always one picture in two formats.
    """
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive number of images or None, got {limit!r}")
    if isinstance(images, dict):
        items = list(images.items())
    elif images is None and data_root(root) is None:
        items = list(sample_images().items())
    else:
        if images is None:
            images = data_root(root) / subset
        sources = image_paths(images) if isinstance(images, (str, os.PathLike)) else list(images)
        items, owner = [], {}
        for item in sources:
            is_tensor = isinstance(item, torch.Tensor)
            name, what = (f"image{len(items):03d}", "a tensor") if is_tensor else (Path(item).stem, str(item))
            if name in owner:
                raise ValueError(f"Images {owner[name]} and {what} share the name {name!r}; results are keyed "
                                 f"by image name, so rename or remove one")
            owner[name] = what
            items.append((name, item))
        items = [(n, x if isinstance(x, torch.Tensor) else load_image(x)) for n, x in items[:limit]]
    out = dict(items[:limit])
    if not out:
        raise ValueError("No images given")
    return out


class ImageFolder(Dataset):
    """Images of a folder, decoded once into memory as integers (uint8; int32 for 16-bit files).

    ``crop`` gives random ``crop x crop`` patches with random horizontal/vertical flips (training);
    ``crop=None`` gives whole images (evaluation). Images smaller than the crop are padded by reflection.
    """

    def __init__(self, folder, crop: int | None = None, flips: bool = True, seed: int = 0,
                 split: str | None = None):
        self.paths = image_paths(folder)
        if split is not None:
            if split not in SPLITS:
                raise ValueError(f"Invalid split {split!r}; valid splits: {', '.join(SPLITS)}")
            self.paths = [p for p in self.paths if split_of(p) == split]
            if not self.paths:
                raise FileNotFoundError(f"Image folder {folder} holds no images of split {split!r}")
        self.crop = crop
        self.flips = flips
        self.rng = np.random.default_rng(seed)
        # integer pixels (uint8, or int32 for 16-bit files) and each image's white level
        self.images, self.full_scale = [], []
        for p in self.paths:
            pixels, full = decode_image(p)
            self.images.append(pixels)
            self.full_scale.append(full)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> torch.Tensor:
        img = self.images[index]
        if self.crop is not None:
            c = self.crop
            _, h, w = img.shape
            if h < c or w < c:
                img = torch.nn.functional.pad(img[None].float(), (0, max(0, c - w), 0, max(0, c - h)),
                                              mode="reflect")[0].to(img.dtype)
                _, h, w = img.shape
            i = int(self.rng.integers(0, h - c + 1))
            j = int(self.rng.integers(0, w - c + 1))
            img = img[:, i:i + c, j:j + c]
            if self.flips and self.rng.random() < 0.5:
                img = img.flip(2)
            if self.flips and self.rng.random() < 0.5:
                img = img.flip(1)
        return img.float().div(self.full_scale[index])

    def batch(self, batch_size: int) -> torch.Tensor:
        idx = self.rng.integers(0, len(self), size=batch_size)
        return torch.stack([self[int(i)] for i in idx])
