"""Comparison harness: allocators x budgets x qualities on one model family, with the same backend for all.

For each quality the sensitivity table is measured once (cached on disk); every (allocator, budget, mode)
cell then allocates (timed), checks the plan against its budget, applies it, optionally fine-tunes it with
the same QAT settings for every allocator, and entropy-codes the evaluation images for real::

    quality --> measure_sensitivity --> CostTable --+--> allocator(budget) --> BitPlan --> apply (+ QAT)
                  (cached per quality)              |          (timed, checked)              |
                                                    +--------------------------------- evaluate (bytes)

**Where it runs.** The independent work (the cost table of each quality, then every cell) goes through a
standard :class:`concurrent.futures.Executor` (:mod:`bitalloc.executor`, :mod:`bitalloc.study_run`): in this
process by default, on a local pool of spawned processes with ``workers=N`` (one torch thread each), or on any
executor passed as ``executor=``, e.g. a Dask cluster's ``distributed.Client(...).get_executor()`` (its workers
must see ``out``: they write cost tables and outcomes there). Results, cache and resume are those of the
serial run: the same keys and files, atomic writes, and each table, pairwise table and outcome computed once.

**The cache.** Every cell is written atomically to ``<out>/cells/*.json`` as soon as it is done, so an
interrupted study resumes where it stopped. Quantizing, fine-tuning and evaluating a plan is cached by the
plan's content (``<out>/outcomes``): allocators that agree on a plan (all of them at the 8-bit budget, say)
share one evaluation, and the comparison stays fair because the outcome depends on the plan alone. Every cached
file is keyed by everything that changes its numbers (:mod:`bitalloc.study_cache`: weights, images,
calibration, QAT settings, candidate bits, budget kind, loss, interaction and verify settings, library
version), so a rerun with other settings recomputes instead of mixing; a cached file that does not read back
is set aside and recomputed, and a cached plan is re-checked against its budget. ``<out>/spec.json`` records
the settings and input fingerprints of the last run; the result's ``cached`` column says which rows came from
the cache. Reference cells: ``fp32`` (the float model) per quality, and ``uniform`` at 8 bits in PTQ mode, the
two anchors of the BD-rates, which :mod:`bitalloc.analysis` computes (re-exported here: ``bd_table``,
``rank``, ``merge_results``, ``StudyResult``).

**Interaction-aware cells.** Every static cell records its plan quantized as a whole against the table's
prediction (``plan_predicted_cost``, ``plan_measured_cost``, ``plan_excess``, fractions of the float loss on
the calibration crops). Allocators in ``spec.pairwise_allocators`` (``iqp``) get the cost table with the
pairwise interaction costs :func:`bitalloc.measure_interactions` measures (once per quality, cached beside the
table). A name with the ``+verify`` suffix (``ilp+verify``, ``iqp+verify``, ``fmpq+verify``) runs
:func:`bitalloc.verifying` around the allocator: the plan returned is the best one measured; its row adds
``verify_evaluations`` (plans measured), ``verify_converged`` and the start plan's ``verify_start_predicted`` /
``verify_start_measured``, and its cell file the whole ``verify_history``.

**QAT-aware cells.** A name with the ``+qat`` suffix (``ilp+qat``) allocates with the inner allocator on the
quality's QAT-aware table (:func:`bitalloc.measure_recovered_costs`: each cell's loss after ``recovery_steps``
QAT steps with that layer alone quantized, against the float model after the same steps; once per quality,
cached beside the table) and runs in QAT mode only. Its joint check measures the plan after the same QAT
(:class:`bitalloc.recovery.Recovery`) against that table's prediction. ``ilp+verify+qat`` verifies and repairs
the plan by that measurement (each plan measured costs one QAT run of ``recovery_steps``).

**Noise-aware tables.** ``table_fit="noise"`` measures each table with the standard error of every cell, fits
it monotone in bits and keeps its noise floor, and every allocator breaks ties within noise toward the bigger
plan (:mod:`bitalloc.study_steps`, :mod:`bitalloc.noise`); ``"clip"`` (the default) is today's table. Every row
with a size says how much of its budget the plan uses (``budget_used_pct``).

**Warnings** raised by any cell (layers that interact, a cached file set aside) are collected, not printed
through the progress bar: ``result.warnings`` (dicts: ``cell``, ``quality``, ``allocator``, ``budget``,
``mode``, ``category``, ``message``, ``filename``, ``lineno``) and ``<out>/warnings.csv``; once the run is over
they are raised again (``warnings.warn_explicit``, at their original place), so filters still apply.

``dynaquant`` is accepted as an allocator name in QAT mode: it is not a static plan but a dynamic model
(:mod:`bitalloc.dynaquant`) trained from the same float model, for ``qat_steps``, to an average of ``budget``
weight bits, on the same training crops, and evaluated on the same images with real bitstreams. Its row
reports the measured average bits over the evaluation images (``avg_bits``), the largest per-image
average (``max_avg_bits``) and the bit-operations; its size is the average bits x parameters.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import pandas as pd
from tqdm.auto import tqdm

from .analysis import FP_ALLOCATOR, StudyResult, bd_table, merge_results, rank
from .atomic import atomic_write_text
from .cells import (DYNAMIC_ACT_BITS, DYNAMIC_ALLOCATOR, Cell, PlanOverBudgetError, check_act_settings,
                    check_verify_settings)
from .executor import Runner, local_executor, reemit
from .plan import BitPlan
from .recovery import QAT_SUFFIX, split_qat
from .repair import TOLERANCE as VERIFY_TOLERANCE, VERIFY_SUFFIX
from .study_cache import COST_MODEL_VERSION, StudyCache, images_digest, loss_digest, source_digest, weights_digest
from .study_steps import TABLE_FITS, check_bias_settings

__all__ = ["DYNAMIC_ALLOCATOR", "PlanOverBudgetError", "StudySpec", "StudyResult", "bd_table", "merge_results",
           "qat_only", "rank", "run_study", "study_allocators"]

WARNING_FIELDS = ("cell", "quality", "allocator", "budget", "mode", "category", "message", "filename", "lineno")


def study_allocators() -> list[str]:
    """Every allocator name a study takes: the registered ones, each with the ``+verify`` suffix, each with the
    ``+qat`` suffix and with ``+verify+qat`` (QAT only), and ``dynaquant`` (QAT only)."""
    from .allocation import available_allocators

    names = available_allocators()
    verified = [n + VERIFY_SUFFIX for n in names]
    return [*names, *verified, *(n + QAT_SUFFIX for n in [*names, *verified]), DYNAMIC_ALLOCATOR]


def qat_only(allocator: str) -> bool:
    """Whether a study runs ``allocator`` in QAT mode only (``dynaquant``, and the ``+qat`` names)."""
    return allocator == DYNAMIC_ALLOCATOR or split_qat(allocator)[1]


@dataclass(frozen=True)
class StudySpec:
    """What to compare. ``budgets`` are average weight bits (``budget_kind="avg_bits"``) or compression
    ratios against FP32 (``"ratio"``); ``modes`` are ``"ptq"`` (calibration only) and/or ``"qat"``.

    ``act_bits``: every static plan also quantizes the input of each quantized (non-GDN) layer at this
    bit-width, ranges calibrated with ``act_observer`` on the calibration crops before PTQ evaluation and
    before QAT (None: weights only). ``calib_offset``: the calibration crops are the photos from this index on
    (``calib_offset=calib_images`` gives a set disjoint from the default one). ``table_fit``: ``"clip"``
    (today's cost tables) or ``"noise"`` (noise-aware tables and tie-break; module docstring).
    ``recovery_steps``: the QAT steps of each cell of the QAT-aware table the ``+qat`` allocators get (None: the
    study's ``qat_steps``); ``recovery_crop``: their training crops' size (None: the study's QAT crops,
    ``calib_crop``). ``verify_max_evals``, ``verify_tolerance``, ``verify_noise_z``: the ``+verify`` allocators'
    :func:`bitalloc.verify_and_repair` options (``noise_z``: 0 compares plain means). ``verify_holdout``: centre
    crops of this many further training photos (from ``calib_offset + calib_images`` on) confirm each PTQ repair
    before it is kept (``holdout`` of :func:`bitalloc.verify_and_repair`; 0: none; not with ``+verify+qat``).
    ``verify_correction``: what a repair learns from a measurement (``correction`` of
    :func:`bitalloc.verify_and_repair`: "auto", "unary", "pairwise", or "context", which probes every single-layer
    move of the plan and needs ``verify_max_evals`` of a round of them plus two; PTQ repairs only;
    ``verify_snap_ties``: its in-context costs within the table's noise floor count as ties).
    ``bias_correction``: every quantized layer's bias absorbs the mean output error of its weight quantization on
    the calibration crops (:func:`bitalloc.correct_bias`), in the cost tables, the pairwise terms, the joint checks
    and repairs, and the PTQ models evaluated (PTQ only; keyed only when set). ``bias_choice`` (with
    ``bias_correction``): the PTQ models evaluated keep only the corrections :func:`bitalloc.choose_bias_correction`
    chooses (the transforms whose correction lowers the coded RD loss on the calibration crops; the tables and
    checks stay corrected everywhere; keyed in the cells only when set)."""

    model: str = "bmshj2018-hyperprior"
    qualities: tuple[int, ...] = (1, 3, 4, 6)
    allocators: tuple[str, ...] = ("fmpq", "ilp", "convex", "greedy", "uniform")
    budgets: tuple[float, ...] = (8.0, 6.0, 4.0)
    budget_kind: str = "avg_bits"
    candidate_bits: tuple[int, ...] = (2, 3, 4, 5, 6, 8)
    modes: tuple[str, ...] = ("ptq",)
    qat_steps: int = 150
    qat_lr: float = 5e-5
    calibration: str = "mse"
    calib_images: int = 8
    calib_crop: int = 256
    eval_limit: int | None = None
    pretrained: str = "bitalloc"
    seed: int = 0
    pairwise_allocators: tuple[str, ...] = ("iqp",)
    interaction_pairs: str | None = None
    interaction_noise_floor: float = 1e-3
    verify_max_evals: int = 12
    verify_tolerance: float = VERIFY_TOLERANCE
    verify_noise_z: float = 0.0
    verify_holdout: int = 0
    verify_correction: str = "auto"
    verify_snap_ties: bool = False
    act_bits: int | None = None
    act_observer: str = "mse"
    calib_offset: int = 0
    table_fit: str = "clip"
    recovery_steps: int | None = None
    recovery_crop: int | None = None
    bias_correction: bool = False
    bias_choice: bool = False

    def __post_init__(self):
        if self.budget_kind not in ("avg_bits", "ratio"):
            raise ValueError(f"budget_kind must be 'avg_bits' or 'ratio', got {self.budget_kind!r}")
        bad = [m for m in self.modes if m not in ("ptq", "qat")]
        if bad:
            raise ValueError(f"unknown mode {bad[0]!r}; valid modes: ptq, qat")
        for name in ("qualities", "allocators", "budgets", "candidate_bits", "modes", "pairwise_allocators"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        valid = study_allocators()
        for name in self.allocators:
            if name not in valid:
                raise ValueError(f"unknown allocator {name!r}; valid allocators: {', '.join(valid)}")
        if self.interaction_pairs not in (None, "all", "structure"):
            raise ValueError(f"interaction_pairs must be None (the default choice), 'all' or 'structure', got "
                             f"{self.interaction_pairs!r}")
        check_verify_settings(self)
        check_act_settings(self)
        check_bias_settings(self)
        if self.table_fit not in TABLE_FITS:
            raise ValueError(f"StudySpec.table_fit must be one of {', '.join(TABLE_FITS)}, got {self.table_fit!r}")
        for field_name in ("recovery_steps", "recovery_crop"):
            value = getattr(self, field_name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"StudySpec.{field_name} must be None or an integer >= 1, got {value!r}")
        recovered = [a for a in self.allocators if split_qat(a)[1]]
        if recovered and "qat" not in self.modes:
            raise ValueError(f"allocator {recovered[0]!r} allocates on QAT-aware costs and runs in QAT mode only: add "
                             "'qat' to modes")
        if DYNAMIC_ALLOCATOR in self.allocators:
            if "qat" not in self.modes:
                raise ValueError("allocator 'dynaquant' trains its quantizers and selectors: add 'qat' to modes")
            if self.budget_kind != "avg_bits":
                raise ValueError("allocator 'dynaquant' takes average-bit budgets (budget_kind='avg_bits')")




def act_columns(spec: StudySpec, cell: Cell) -> dict:
    """A row's input-activation bit-width: the study's for a static plan, DynaQuant's own 8 bits (whatever
    ``spec.act_bits``; ``act_note`` says so), none for the float reference."""
    if cell.allocator == DYNAMIC_ALLOCATOR:
        return {"act_bits": DYNAMIC_ACT_BITS, "act_note": "dynaquant's own activation quantizers"}
    return {"act_bits": spec.act_bits if cell.static else None, "act_note": None}


def budget_used(row: dict) -> dict:
    """``{"budget_used_pct": plan size / budget size x 100}`` of a row with both sizes, else ``{}`` (fp32)."""
    size, budget = row.get("size_bits"), row.get("budget_bits")
    if size is None or not budget:
        return {}
    return {"budget_used_pct": 100.0 * float(size) / float(budget)}


def run_study(spec: StudySpec, out, *, model_loader: Callable | None = None, calib_images=None,
              eval_images=None, train_images=None, data=None, progress: bool = True, workers: int = 1,
              executor: cf.Executor | None = None, loss=None) -> StudyResult:
    """Run (or resume) a study; see the module docstring.

    ``model_loader(name, quality)`` returns the float model (default: :func:`bitalloc.models.load_model` with
    ``spec.pretrained``); it is called once per quality, in this process. ``calib_images`` feed the
    sensitivity, ``train_images`` the QAT, ``eval_images`` the real-bitstream evaluation (dicts of (3,H,W)
    tensors or folders); by default they come from the data root ``data`` (or ``$BITALLOC_DATA``): crops of
    ``train/`` for calibration and QAT, ``kodak/`` for evaluation, and scikit-image's photos when no data root
    is set. ``workers``: 1 runs every cell here; N > 1 a local pool of N spawned processes (one torch thread
    each). ``executor``: run on this :class:`concurrent.futures.Executor` instead (not shut down here; at most
    2 x ``workers`` calls are with it at once, 2 x the CPU count when ``workers`` is 1). Models, images and
    ``loss`` must pickle to go to other processes. ``loss``: ``loss(model, batch)`` for the sensitivity,
    interactions, joint checks, verify and QAT (:mod:`bitalloc.objective`; default: the model's RD loss).
    """
    from . import study_steps as steps

    if loss is not None and DYNAMIC_ALLOCATOR in spec.allocators:
        raise ValueError("allocator 'dynaquant' trains with the RD loss of its model; loss= is not supported with it")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be an integer >= 1, got {workers!r}")
    loader = model_loader or (lambda name, q: steps.load_float_model(name, q, spec.pretrained))
    photos = steps.calibration_images(calib_images, spec.calib_images, data, spec.calib_offset)
    calib = steps.calibration_crops(photos, spec.calib_images, spec.calib_crop)
    holdout = steps.holdout_crops(calib_images, photos, spec, data) if spec.verify_holdout else None
    evals = steps.evaluation_images(eval_images, spec.eval_limit, data)
    train = steps.training_source(train_images, spec.calib_crop, data, spec.seed) if "qat" in spec.modes else None
    inputs = {"eval_images": images_digest(evals), "calib_images": images_digest({"calib": calib}),
              "train_images": source_digest(train) if train is not None else None, "loss": loss_digest(loss),
              "holdout_images": images_digest({"holdout": holdout}) if holdout is not None else None}
    cache = StudyCache(Path(out), spec, inputs)
    settings = {**asdict(spec), "cost_model_version": COST_MODEL_VERSION,
                "inputs": {**inputs, "eval_image_names": list(evals), "calib_shape": list(calib.shape),
                           "calib_image_names": list(photos) if isinstance(photos, dict) else None},
                "weights": cache.weights}
    atomic_write_text(cache.root / "spec.json", json.dumps(settings, indent=1))
    models = {}
    for quality in spec.qualities:  # each float model loaded once: its weights are part of every key
        models[quality] = loader(spec.model, quality)
        cache.set_weights(quality, weights_digest(models[quality]))
    cells = [Cell(q, a, b, m) for q in spec.qualities for m in spec.modes for b in spec.budgets
             for a in spec.allocators if not (qat_only(a) and m != "qat")]
    refs = [Cell(q, FP_ALLOCATOR, None, "ptq") for q in spec.qualities]
    if "qat" in spec.modes:  # the float model fine-tuned with the same QAT steps: the anchor for QAT rows
        refs += [Cell(q, FP_ALLOCATOR, None, "qat") for q in spec.qualities]
    refs += [Cell(q, "uniform", 8.0, "ptq") for q in spec.qualities
             if spec.budget_kind == "avg_bits" and Cell(q, "uniform", 8.0, "ptq") not in cells]
    own = local_executor(workers) if executor is None and workers > 1 else None
    runner = Runner(executor or own, window=2 * (workers if workers > 1 else (os.cpu_count() or 2)))
    bar = tqdm(total=len(refs + cells), disable=not progress, desc=f"study {spec.model}")
    from .study_run import RECOVERED, StudyRun

    study = StudyRun(spec, cache, models, calib, evals, train, loss, runner, bar, progress, holdout)
    try:
        done = study.run(refs + cells)
    finally:
        bar.close()
        if own is not None:
            own.shutdown(wait=True, cancel_futures=True)
        reemit(runner.warnings)
    collected = list(runner.warnings)
    frame = pd.DataFrame(collected, columns=list(WARNING_FIELDS))
    atomic_write_text(cache.root / "warnings.csv", frame.to_csv(index=False))
    atomic_write_text(cache.root / "spec.json", json.dumps(settings, indent=1))  # now with every weights digest
    rows, image_rows, plans = [], [], {}
    for cell, found_cell, fresh in done:
        cols = {"model": spec.model, "quality": cell.quality, "allocator": cell.allocator, "budget": cell.budget,
                "budget_kind": spec.budget_kind, "mode": cell.mode, **act_columns(spec, cell)}
        rows.append({**cols, **found_cell["row"], **budget_used(found_cell["row"]), "cached": not fresh})
        image_rows += [{**cols, **r} for r in found_cell["images"]]
        if found_cell["plan"] is not None:
            plans[(cell.quality, cell.allocator, cell.budget, cell.mode)] = BitPlan.from_dict(found_cell["plan"])
    results = pd.DataFrame(rows)
    bd = bd_table(results)
    result = StudyResult(results, pd.DataFrame(image_rows), bd, rank(bd), plans, json.loads(json.dumps(settings)))
    result.warnings = collected  # dicts, WARNING_FIELDS (also <out>/warnings.csv)
    result.recovered = cache.recovered_frames(q for q, kind in study.tables if kind == RECOVERED)
    return result
