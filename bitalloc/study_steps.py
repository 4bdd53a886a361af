"""The steps of one harness cell, on top of the public backend (sensitivity, apply_plan, QAT, evaluate).

Kept apart from :mod:`bitalloc.harness` so the harness reads as the study's control flow, and so a test can
replace a step (e.g. a tiny model loader) without touching the cache logic.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch

from .costs import CostTable
from .data import ImageFolder, data_root, resolve_images

__all__ = ["calibration_crops", "check_joint_plan", "evaluate_images", "evaluation_images", "load_float_model",
           "measure_cost_table", "quantize_plan", "training_source"]


def load_float_model(name: str, quality: int, pretrained: str):
    from .models import load_model

    return load_model(name, quality, pretrained=pretrained)


def calibration_crops(images, count: int, crop: int, data=None) -> torch.Tensor:
    """Centre crops of the first ``count`` training photos (never the evaluation set), else scikit-image's."""
    from .sensitivity import calibration_batch

    if images is None:
        root = data_root(data)
        images = None if root is None else root / "train"
        if images is None:
            images = resolve_images(None)
    return calibration_batch(images, crop=crop, limit=count)


def evaluation_images(images, limit, data=None) -> dict[str, torch.Tensor]:
    return resolve_images(images, subset="kodak", root=data, limit=limit)


def training_source(images, crop: int, data=None, seed: int = 0):
    """What QAT draws batches from: random crops of ``<data>/train`` (or of scikit-image's photos)."""
    if images is not None:
        return images
    root = data_root(data)
    if root is not None:
        return ImageFolder(root / "train", crop=crop, seed=seed)
    photos = torch.stack([x[:, :256, :256] for x in resolve_images(None).values() if min(x.shape[1:]) >= 256])
    return photos


def measure_cost_table(model, calib: torch.Tensor, spec, path: Path) -> CostTable:
    """Measure the cost table of ``model`` on the calibration crops and write it to ``path`` (the harness
    names ``path`` by a key of everything that changes the table and reads it back from there)."""
    from .sensitivity import measure_sensitivity

    table = measure_sensitivity(model, calib, bits=spec.candidate_bits, calibration=spec.calibration,
                                progress=False)
    table.to_json(path)
    return table


def quantize_plan(model, plan, mode: str, spec, train, workdir: Path | None = None):
    """Apply ``plan`` (calibration only), then fine-tune it with QAT when ``mode == "qat"``.

    Returns the model and the final QAT loss (None for PTQ).
    """
    from .quant import apply_plan

    # an empty plan is the float reference: nothing to quantize, the same QAT loop when mode == "qat"
    qmodel = apply_plan(model, plan, calibration=spec.calibration) if len(plan) else model
    if mode != "qat":
        return qmodel, None
    from .qat import finetune

    qmodel, log = finetune(qmodel, plan, train, steps=spec.qat_steps, lr=spec.qat_lr, workdir=workdir,
                           progress=False)
    return qmodel, float(log["loss"].iloc[-1]) if len(log) else None


def evaluate_images(model, images: dict) -> pd.DataFrame:
    from .evaluation import evaluate

    return evaluate(model, images, progress=False)


def check_joint_plan(model, plan, table: CostTable, calib: torch.Tensor, spec):
    """The plan's joint RD-loss increase against the table's additive prediction, on the calibration crops."""
    from .sensitivity import check_plan

    return check_plan(model, plan, table, calib, calibration=spec.calibration)
