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


def load_image(path: str | os.PathLike) -> torch.Tensor:
    """An RGB image as a float tensor (3, H, W) in [0, 1]."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
    except OSError as exc:
        raise ValueError(f"Cannot read image {path}: {exc}") from exc
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)


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
    """Turn ``images`` into ``{name: (3,H,W) tensor}``.

    ``images`` may be a folder, a list of paths, a dict of tensors, or None: then ``<data root>/<subset>``,
    or scikit-image's photos when no data root is set.
    """
    if isinstance(images, dict):
        out = dict(images)
    elif images is None:
        base = data_root(root)
        out = sample_images() if base is None else {p.stem: load_image(p)
                                                    for p in image_paths(base / subset)[:limit]}
    elif isinstance(images, (str, os.PathLike)):
        out = {p.stem: load_image(p) for p in image_paths(images)[:limit]}
    else:
        out = {}
        for item in images:
            if isinstance(item, torch.Tensor):
                out[f"image{len(out):03d}"] = item
            else:
                out[Path(item).stem] = load_image(item)
    if limit is not None:
        out = dict(list(out.items())[:limit])
    if not out:
        raise ValueError("No images given")
    return out


class ImageFolder(Dataset):
    """Images of a folder, decoded once into memory as uint8.

    ``crop`` gives random ``crop x crop`` patches with random horizontal/vertical flips (training);
    ``crop=None`` gives whole images (evaluation). Images smaller than the crop are padded by reflection.
    """

    def __init__(self, folder, crop: int | None = None, flips: bool = True, seed: int = 0,
                 split: str | None = None):
        from PIL import Image

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
        self.images = []
        for p in self.paths:
            try:
                with Image.open(p) as im:
                    self.images.append(torch.from_numpy(np.asarray(im.convert("RGB"), np.uint8).copy()))
            except OSError as exc:
                raise ValueError(f"Cannot read training image {p}: {exc}") from exc

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> torch.Tensor:
        img = self.images[index].permute(2, 0, 1)
        if self.crop is not None:
            c = self.crop
            _, h, w = img.shape
            if h < c or w < c:
                img = torch.nn.functional.pad(img[None].float(), (0, max(0, c - w), 0, max(0, c - h)),
                                              mode="reflect")[0].to(torch.uint8)
                _, h, w = img.shape
            i = int(self.rng.integers(0, h - c + 1))
            j = int(self.rng.integers(0, w - c + 1))
            img = img[:, i:i + c, j:j + c]
            if self.flips and self.rng.random() < 0.5:
                img = img.flip(2)
            if self.flips and self.rng.random() < 0.5:
                img = img.flip(1)
        return img.float().div(255.0)

    def batch(self, batch_size: int) -> torch.Tensor:
        idx = self.rng.integers(0, len(self), size=batch_size)
        return torch.stack([self[int(i)] for i in idx])
