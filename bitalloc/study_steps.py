"""The steps of one harness cell, on top of the public backend (sensitivity, apply_plan, QAT, evaluate).

Kept apart from :mod:`bitalloc.harness` so the harness reads as the study's control flow, and so a test can
replace a step (e.g. a tiny model loader) without touching the cache logic.

**Table fits** (``StudySpec.table_fit``, :data:`TABLE_FITS`): ``"clip"`` measures today's table (max(zeta, 0));
``"noise"`` measures every calibration crop as an observation (``uncertainty=True``), fits the costs monotone in
bits weighted by their standard errors (``fit="isotonic"``) and keeps ``cost_se`` and ``noise_floor`` in the
table; every allocator of the study then allocates through :func:`bitalloc.noise.within_noise` (plans that tie
within noise: the bigger one), and the pairwise terms are measured against that table. ``snap_z`` is 0 (no cell
set to 0 because it is within 2 standard errors of it): with the study's 8 calibration crops the standard errors
are themselves noisy, so snapping zeroes real costs at the 6- and 4-bit budgets, while the tie-break alone already
fills a generous budget (the monotone fit removes "6 bits cheaper than 8" noise). Measured (shipped q4, two
disjoint sets of 8 training crops of 256^2, ILP; share of weights with equal bits in both sets' plans, snap_z 0
vs 2): Mean-Scale 0.54 vs 0.38 at 6 bits, 1.00 vs 0.90 at 4 bits; Scale 0.79 vs 0.83 at 6, 0.99 vs 0.99 at 4;
both 1.00 (8.0 bits used) at 8 bits, where clipped tables used 4.74-4.81 (Mean-Scale) and 6.65-6.82 (Scale).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch

from .costs import CostTable
from .data import ImageFolder, data_root, resolve_images

__all__ = ["calibration_crops", "calibration_images", "cell_allocator", "check_bias_settings", "check_joint_plan",
           "evaluate_images",
           "evaluation_images", "fit_allocator", "holdout_crops", "load_float_model", "measure_cost_table",
           "measure_pairwise_table", "measure_recovered_table", "quantize_plan", "recovery_run", "training_source"]
# the steps; the constants below are read by the harness and cache

NOISE_SNAP_Z = 0.0  # no snapping to 0 within noise (module docstring)
#: ``StudySpec.table_fit`` -> the :func:`bitalloc.measure_sensitivity` options of its cost table
TABLE_FITS = {"clip": {}, "noise": {"uncertainty": True, "fit": "isotonic", "snap_z": NOISE_SNAP_Z}}
TIE_BREAK_SHARE = 0.5  # a plan gains at most this share of the noise floor from the tie-break


def load_float_model(name: str, quality: int, pretrained: str):
    from .models import load_model

    return load_model(name, quality, pretrained=pretrained)


def calibration_images(images, count: int, data=None, offset: int = 0):
    """The photos the calibration crops come from: ``count`` of them from index ``offset`` on, of ``images``, of
    ``<data>/train`` (never the evaluation set), else of scikit-image's; a dict ``{name: (3,H,W)}``, or the
    rows ``offset:`` of a (N,3,H,W) tensor given as ``images`` (used as is)."""
    if isinstance(images, torch.Tensor):
        rows = images if images.dim() == 4 else images.unsqueeze(0)
        if offset and offset >= len(rows):
            raise ValueError(f"calib_offset={offset} skips every one of the {len(rows)} calibration crops given")
        return rows[offset:] if offset else images
    if images is None:
        root = data_root(data)
        images = None if root is None else root / "train"
    found = resolve_images(images, limit=offset + count)
    if len(found) <= offset:
        raise ValueError(f"calib_offset={offset} skips every calibration photo: only {len(found)} found in "
                         f"{images if images is not None else 'the sample images'}")
    return dict(list(found.items())[offset:])


def calibration_crops(images, count: int, crop: int, data=None, offset: int = 0) -> torch.Tensor:
    """Centre crops of ``count`` training photos from index ``offset`` on (:func:`calibration_images`)."""
    from .sensitivity import calibration_batch

    return calibration_batch(calibration_images(images, count, data, offset), crop=crop, limit=None)


def holdout_crops(images, photos, spec, data=None) -> torch.Tensor:
    """Centre crops of the ``spec.verify_holdout`` training photos after the calibration set ``photos`` (those of
    :func:`calibration_images`): the crops that confirm a PTQ repair (``StudySpec.verify_holdout``)."""
    count, start = spec.verify_holdout, spec.calib_offset + spec.calib_images
    if not isinstance(photos, dict):
        raise ValueError(f"verify_holdout={count} needs calibration photos by name (a folder or a dict): a tensor "
                         "of crops has no further photos to hold out")
    held = calibration_images(images, count, data, start)
    if len(held) < count:
        raise ValueError(f"verify_holdout={count}: only {len(held)} photo(s) after the calibration set's "
                         f"{spec.calib_images} (from photo {start} on)")
    return calibration_crops(held, count, spec.calib_crop)


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


def measure_cost_table(model, calib: torch.Tensor, spec, path: Path, loss=None, frame_path: Path | None = None
                       ) -> CostTable:
    """Measure the cost table of ``model`` on the calibration crops and write it to ``path`` (the harness
    names ``path`` by a key of everything that changes the table and reads it back from there); with
    ``frame_path`` also its per-cell frame (raw ``zeta``), from which :func:`measure_pairwise_table` picks the
    bits in play without measuring the single layers again."""
    from .atomic import atomic_write_text
    from .sensitivity import measure_sensitivity

    table, frame = measure_sensitivity(model, calib, bits=spec.candidate_bits, calibration=spec.calibration,
                                       loss=loss, progress=False, return_frame=True,
                                       bias_correction=getattr(spec, "bias_correction", False),
                                       **TABLE_FITS[getattr(spec, "table_fit", "clip")])
    table.to_json(path)
    if frame_path is not None:
        atomic_write_text(frame_path, frame.to_csv(index=False))
    return table


def measure_pairwise_table(model, calib: torch.Tensor, table: CostTable, spec, path: Path, loss=None,
                           frame_path: Path | None = None) -> CostTable:
    """``table`` with the pairwise interaction costs :func:`bitalloc.measure_interactions` measures (pairs
    ``spec.interaction_pairs``, noise floor ``spec.interaction_noise_floor``; every crop an observation with
    ``spec.table_fit="noise"``, as the table was measured), written to ``path``. The table's frame at
    ``frame_path``, when there, picks the bits in play (else the single layers are measured again)."""
    from .interactions import measure_interactions

    frame = None
    if frame_path is not None and Path(frame_path).is_file():
        frame = pd.read_csv(frame_path)
        if not {"layer", "bits", "zeta"} <= set(frame.columns):
            frame = None
    inter = measure_interactions(model, calib, table, spec.interaction_pairs, frame=frame, loss=loss,
                                 calibration=spec.calibration, noise_floor=spec.interaction_noise_floor,
                                 uncertainty=TABLE_FITS[getattr(spec, "table_fit", "clip")].get("uncertainty", False),
                                 bias_correction=getattr(spec, "bias_correction", False), progress=False)
    joint = inter.attach(table)
    joint.to_json(path)
    return joint



def recovery_run(model, calib: torch.Tensor, train, spec, loss=None, workdir: Path | None = None):
    """The QAT runs of a study's QAT-aware costs (:class:`bitalloc.recovery.Recovery`): the study's QAT
    (``spec.recovery_steps`` steps, default its ``qat_steps``; its lr, seed and training photos, cropped to
    ``spec.recovery_crop`` when set) measured on the calibration crops; ``workdir``: the QAT-aware table's work
    folder, whose anchor it reuses (or keeps there)."""
    from .recovery import ANCHOR_FILE, Recovery

    return Recovery(model, train, calib, steps=spec.recovery_steps or spec.qat_steps, lr=spec.qat_lr, loss=loss,
                    calibration=spec.calibration, seed=spec.seed, eval_crop=spec.calib_crop,
                    train_crop=spec.recovery_crop, anchor_file=None if workdir is None else Path(workdir) / ANCHOR_FILE)


def measure_recovered_table(model, calib: torch.Tensor, train, table: CostTable, spec, path: Path, loss=None,
                            frame_path: Path | None = None, workdir: Path | None = None) -> CostTable:
    """The QAT-aware table of ``table`` (:func:`bitalloc.measure_recovered_costs` with the study's QAT, noise
    floor and table fit), written to ``path``, its measured cells beside it (``*_frame.csv``). The table's frame
    at ``frame_path``, when there, picks the bits in play; ``workdir`` keeps the cells measured (resume)."""
    from .atomic import atomic_write_text
    from .interactions import frame_matrix
    from .recovery import measure_recovered_costs

    zeta = zeta_se = None
    if frame_path is not None and Path(frame_path).is_file():
        frame = pd.read_csv(frame_path)
        if {"layer", "bits", "zeta"} <= set(frame.columns):
            zeta = frame_matrix(frame, "zeta", table.layer_names, table.bits)
            zeta_se = frame_matrix(frame, "zeta_se", table.layer_names, table.bits)
    rec = measure_recovered_costs(model, train, table, calib, steps=spec.recovery_steps or spec.qat_steps,
                                  lr=spec.qat_lr, loss=loss, calibration=spec.calibration, seed=spec.seed,
                                  zeta=zeta, zeta_se=zeta_se, noise_floor=spec.interaction_noise_floor,
                                  snap_z=TABLE_FITS[getattr(spec, "table_fit", "clip")].get("snap_z", 0.0),
                                  eval_crop=spec.calib_crop, train_crop=spec.recovery_crop, workdir=workdir,
                                  progress=False)
    rec.table.to_json(path)
    atomic_write_text(Path(path).with_name(Path(path).stem + "_frame.csv"), rec.frame.to_csv(index=False))
    return rec.table

def fit_allocator(name: str, spec):
    """The registered allocator ``name`` as the study's table fit needs it: itself (``"clip"``), or wrapped in
    :func:`bitalloc.noise.within_noise` (``"noise"``: among plans that tie within noise, the bigger one)."""
    from .allocation import build_allocator
    from .noise import within_noise

    allocator = build_allocator(name)
    return within_noise(allocator, TIE_BREAK_SHARE) if getattr(spec, "table_fit", "clip") == "noise" else allocator


def cell_allocator(name: str, model, calib: torch.Tensor, spec, loss=None, train=None, workdir=None, holdout=None):
    """The allocator of a harness cell: a registered name (:func:`fit_allocator`), or one with the ``+verify``
    suffix wrapped in :func:`bitalloc.verifying` on ``model`` and the calibration crops (the table's data and
    settings); the tie-break of ``table_fit="noise"`` goes inside, so every re-solve of the repair uses it. A
    ``+qat`` name is its inner allocator: the harness gives it the QAT-aware table; ``+verify+qat`` measures each
    plan after the QAT of that table (:func:`recovery_run` on ``train``, the training photos), what it predicts.
    ``holdout``: crops that confirm a PTQ repair before it is kept (``StudySpec.verify_holdout``)."""
    from .allocation import allocator_parts
    from .repair import verifying

    inner, verify, qat = allocator_parts(name)
    if not verify:
        return fit_allocator(inner, spec)
    noise_z = getattr(spec, "verify_noise_z", 0.0)
    options = dict(max_evals=spec.verify_max_evals, tolerance=spec.verify_tolerance, noise_z=noise_z,
                   correction=getattr(spec, "verify_correction", "auto"),
                   snap_ties=getattr(spec, "verify_snap_ties", False))
    if qat:
        if train is None:
            raise ValueError(f"allocator {name!r} verifies its plans after QAT: it needs the training photos (train=)")
        recovery = recovery_run(model, calib, train, spec, loss, workdir)
        measure = recovery.samples if noise_z > 0 else recovery.increase
        return verifying(fit_allocator(inner, spec), model, calib, measure=measure, **options)
    return verifying(fit_allocator(inner, spec), model, calib, loss=loss, calibration=spec.calibration,
                     holdout=holdout, bias_correction=getattr(spec, "bias_correction", False), **options)


def check_bias_settings(spec) -> None:
    """Refuse, by field, a study's bias-correction settings that cannot run (PTQ only; a choice needs them on)."""
    for name in ("bias_correction", "bias_choice"):
        if not isinstance(getattr(spec, name), bool):
            raise ValueError(f"StudySpec.{name} must be True or False, got {getattr(spec, name)!r}")
    if spec.bias_choice and not spec.bias_correction:
        raise ValueError("StudySpec.bias_choice chooses among the bias corrections: set bias_correction=True too")
    if spec.bias_correction and "qat" in spec.modes:
        raise ValueError("StudySpec.bias_correction corrects PTQ models only (QAT trains the biases): drop 'qat' "
                         "from modes or set bias_correction=False")


def quantize_plan(model, plan, mode: str, spec, train, workdir: Path | None = None, loss=None, calib=None):
    """Apply ``plan`` (calibration only), then fine-tune it with QAT when ``mode == "qat"``.

    With ``spec.act_bits`` a non-empty plan also quantizes every non-GDN layer's input at that bit-width, the
    ranges calibrated with ``spec.act_observer`` on ``calib`` (the study's calibration crops): before PTQ
    evaluation here, before QAT by :func:`bitalloc.qat.finetune` on the same crops with the same observer.
    With ``spec.bias_correction`` a non-empty plan's biases are corrected on ``calib`` first
    (:func:`bitalloc.correct_bias`; with ``spec.bias_choice`` only the transforms
    :func:`bitalloc.choose_bias_correction` keeps). Returns the model and the final QAT loss (None for PTQ).
    """
    from .quant import apply_plan, plan_of

    acts = getattr(spec, "act_bits", None) if len(plan) else None
    if acts is not None and calib is None:
        raise ValueError(f"StudySpec.act_bits={acts}: the activation ranges need the calibration crops (calib=)")
    corrected = getattr(spec, "bias_correction", False) and len(plan)
    if corrected and calib is None:
        raise ValueError("StudySpec.bias_correction: the bias shifts need the calibration crops (calib=)")
    # an empty plan is the float reference: nothing to quantize, the same QAT loop when mode == "qat"
    qmodel = apply_plan(model, plan, calibration=spec.calibration, act_bits=acts) if len(plan) else model
    if corrected and getattr(spec, "bias_choice", False):
        from .bias_correction import choose_bias_correction

        choose_bias_correction(qmodel, calib, loss=loss)
    elif corrected:
        from .bias_correction import correct_bias

        correct_bias(qmodel, calib, loss=loss)
    if acts is not None and mode != "qat":
        from .act_quant import calibrate_activations

        calibrate_activations(qmodel, calib, spec.act_observer)
    if mode != "qat":
        return qmodel, None
    from .qat import finetune

    options = {} if acts is None else {"act_observer": spec.act_observer, "act_calibration": calib}
    qmodel, log = finetune(qmodel, plan_of(qmodel) if acts is not None else plan, train, steps=spec.qat_steps,
                           lr=spec.qat_lr, workdir=workdir, loss=loss, progress=False, **options)
    return qmodel, float(log["loss"].iloc[-1]) if len(log) else None


def evaluate_images(model, images: dict) -> pd.DataFrame:
    from .evaluation import evaluate

    return evaluate(model, images, progress=False)


def check_joint_plan(model, plan, table: CostTable, calib: torch.Tensor, spec, loss=None):
    """The plan's joint loss increase against the table's prediction, on the calibration crops."""
    from .sensitivity import check_plan

    return check_plan(model, plan, table, calib, calibration=spec.calibration, loss=loss,
                      bias_correction=getattr(spec, "bias_correction", False))
