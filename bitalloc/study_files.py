"""Reading the harness's cached files back: JSON that does not parse or does not fit its key is set aside
(renamed ``*.corrupt``, named in a :class:`CorruptCacheWarning`) and recomputed (see :mod:`bitalloc.study_cache`)."""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path
from typing import Any, Mapping

__all__ = ["IMAGE_FIELDS", "CorruptCacheWarning", "load_json", "mean_disagrees", "plain_key", "result_problem",
           "set_aside"]

IMAGE_FIELDS = ("image", "bpp", "psnr_rgb")


class CorruptCacheWarning(UserWarning):
    """A cached file did not read back; it was set aside (``*.corrupt``) and its result is recomputed."""


def plain_key(key: Mapping) -> dict:
    """The key as it reads back from JSON (tuples become lists)."""
    return json.loads(json.dumps(key, sort_keys=True))


def set_aside(path: Path, reason: str) -> Path:
    """Rename a cached file that does not read back to ``*.corrupt`` (numbered if taken) and warn, naming it."""
    target = path.with_name(path.name + ".corrupt")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.corrupt{n}")
    os.replace(path, target)
    warnings.warn(f"cached {path} {reason}; set aside as {target.name} and recomputed", CorruptCacheWarning,
                  stacklevel=3)
    return target


def load_json(path: Path) -> Any:
    """What the cached JSON file at ``path`` holds; None when there is none, or when it is not JSON (then it is set
    aside, named in a warning)."""
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        set_aside(path, f"is not valid JSON ({exc})")
        return None


def mean_disagrees(row: Mapping, images: list, field: str) -> bool:
    vals = [float(r[field]) for r in images if r.get(field) is not None]
    if not vals or any(math.isnan(v) for v in vals):
        return False
    return not math.isclose(float(row[field]), sum(vals) / len(vals), rel_tol=1e-9, abs_tol=1e-12)


def result_problem(found: Any, key: Mapping, eval_names: list[str], row_fields=()) -> str | None:
    """Why a cached cell or outcome cannot be reused (None when it can)."""
    if not isinstance(found, dict):
        return "is not a JSON object"
    if found.get("key") != plain_key(key):
        return "has a key other than the settings its name stands for (hand-edited or copied)"
    images = found.get("images")
    if not isinstance(images, list) or not all(isinstance(r, dict) for r in images):
        return "has no per-image rows"
    missing = sorted({f for r in images for f in IMAGE_FIELDS if f not in r})
    if missing:
        return f"has per-image rows without {', '.join(missing)}"
    if [r["image"] for r in images] != list(eval_names):
        return "holds other images than this run evaluates"
    if not row_fields:
        return None if "qat_final_loss" in found else "has no qat_final_loss"
    row = found.get("row")
    if not isinstance(row, dict) or "plan" not in found:
        return "has no row or no plan"
    missing = [f for f in row_fields if f not in row]
    if missing:
        return f"has a row without {', '.join(missing)}"
    bad = [f for f in ("bpp", "psnr_rgb") if mean_disagrees(row, images, f)]
    if bad:
        return f"has a row whose {', '.join(bad)} is not the mean of its per-image rows"
    return None
