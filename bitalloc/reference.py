"""Published reference rate-distortion curves shipped with bitalloc.

The Kodak curves are CompressAI's published results (``results/image/kodak/`` of InterDigitalInc/CompressAI, BSD
3-Clause Clear License), copied unchanged into ``bitalloc/data/reference/kodak/``; see ``SOURCE.md`` there.

>>> from bitalloc.reference import reference_curve
>>> from bitalloc.bdrate import bd_rate
>>> a, t = reference_curve("bmshj2018-hyperprior"), reference_curve("mbt2018-mean")
>>> bd_rate(a.bpp, a.psnr_rgb, t.bpp, t.psnr_rgb) < 0   # anchor: bmshj2018-hyperprior
True
"""

from __future__ import annotations

import json
from importlib.resources import files

import pandas as pd

__all__ = ["reference_curve", "available_references", "REFERENCE_FILES"]

#: dataset -> curve name -> JSON file under ``bitalloc/data/reference/<dataset>/``.
REFERENCE_FILES: dict[str, dict[str, str]] = {
    "kodak": {
        "bmshj2018-hyperprior": "compressai-bmshj2018-hyperprior_mse_cpu.json",
        "mbt2018-mean": "compressai-mbt2018-mean_mse_cpu.json",
        "cheng2020-anchor": "compressai-cheng2020-anchor_mse_cpu.json",
        "jpeg": "jpeg.json",
        "bpg": "bpg_444_x265_ycbcr.json",
    },
}

COLUMNS = ["quality", "bpp", "psnr_rgb", "ms_ssim_rgb"]


def available_references(dataset: str = "kodak") -> list[str]:
    """Names accepted by :func:`reference_curve` for ``dataset`` (sorted)."""
    return sorted(_dataset_files(dataset))


def _dataset_files(dataset: str) -> dict[str, str]:
    try:
        return REFERENCE_FILES[dataset]
    except KeyError:
        raise ValueError(
            f"unknown reference dataset {dataset!r}; available: {', '.join(sorted(REFERENCE_FILES))}"
        ) from None


def reference_curve(name: str, dataset: str = "kodak") -> pd.DataFrame:
    """One published RD curve as a DataFrame with columns ``quality, bpp, psnr_rgb, ms_ssim_rgb``.

    ``quality`` numbers the points from 1 in the order of the source file (lowest rate first for all shipped
    curves). ``df.attrs`` holds ``name``, ``dataset``, ``source_file`` and the file's ``label``/``description``.
    Raises ValueError naming the valid choices for an unknown ``name`` or ``dataset``.
    """
    table = _dataset_files(dataset)
    if name not in table:
        raise ValueError(
            f"unknown reference curve {name!r} for dataset {dataset!r}; available: {', '.join(sorted(table))}"
        )
    resource = files("bitalloc").joinpath("data", "reference", dataset, table[name])
    raw = json.loads(resource.read_text(encoding="utf-8"))
    res = raw["results"]
    bpp, psnr, msssim = res["bpp"], res["psnr-rgb"], res["ms-ssim-rgb"]
    if not len(bpp) == len(psnr) == len(msssim):
        raise ValueError(f"reference file {table[name]} has mismatched result lengths")
    df = pd.DataFrame(
        {
            "quality": range(1, len(bpp) + 1),
            "bpp": [float(v) for v in bpp],
            "psnr_rgb": [float(v) for v in psnr],
            "ms_ssim_rgb": [float(v) for v in msssim],
        },
        columns=COLUMNS,
    )
    df.attrs.update(
        name=name,
        dataset=dataset,
        source_file=table[name],
        label=raw.get("name", name),
        description=raw.get("description", ""),
    )
    return df
