"""Comparison harness: allocators x budgets x qualities on one model family, with the same backend for all.

For each quality the sensitivity table is measured once (cached on disk); every (allocator, budget, mode)
cell then allocates (timed), checks the plan against its budget, applies it, optionally fine-tunes it with
the same QAT settings for every allocator, and entropy-codes the evaluation images for real::

    quality --> measure_sensitivity --> CostTable --+--> allocator(budget) --> BitPlan --> apply (+ QAT)
                  (cached per quality)              |          (timed, checked)              |
                                                    +--------------------------------- evaluate (bytes)

Every cell is written atomically to ``<out>/cells/*.json`` as soon as it is done, so an interrupted study
resumes where it stopped. Quantizing, fine-tuning and evaluating a plan is cached by the plan's content
(``<out>/outcomes``): allocators that agree on a plan (all of them at the 8-bit budget, say) share one
evaluation, and the comparison stays fair because the outcome depends on the plan alone. Every cached file is
keyed by everything that changes its numbers (:mod:`bitalloc.study_cache`: weights, images, calibration, QAT
settings, candidate bits, budget kind, library version), so a rerun with other settings recomputes instead of
mixing; a cached file that does not read back is set aside and recomputed, and a cached plan is re-checked
against its budget. ``<out>/spec.json`` records the settings and input fingerprints of the last run; the
result's ``cached`` column says which rows came from the cache. Reference cells: ``fp32`` (the float model)
per quality, and ``uniform`` at 8 bits in PTQ mode, the two anchors of the BD-rates, which
:mod:`bitalloc.analysis` computes (re-exported here: ``bd_table``, ``rank``, ``merge_results``, ``StudyResult``).

``dynaquant`` is accepted as an allocator name in QAT mode: it is not a static plan but a dynamic model
(:mod:`bitalloc.dynaquant`) trained from the same float model, for ``qat_steps``, to an average of ``budget``
weight bits, on the same training crops, and evaluated on the same images with real bitstreams. Its row
reports the measured average bits over the evaluation images (``avg_bits``), the largest per-image
average (``max_avg_bits``) and the bit-operations; its size is the average bits x parameters.
"""

from __future__ import annotations

import copy
import json
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import pandas as pd
from tqdm.auto import tqdm

from .allocation import build_allocator
from .analysis import FP_ALLOCATOR, StudyResult, bd_table, merge_results, rank
from .atomic import atomic_write_text
from .costs import Budget, CostTable
from .errors import BudgetError, BudgetTooSmallError
from .plan import BitPlan
from .study_cache import (COST_MODEL_VERSION, ROW_FIELDS, STATIC_ROW_FIELDS, StudyCache, images_digest, set_aside,
                          source_digest, weights_digest)

__all__ = ["PlanOverBudgetError", "StudySpec", "StudyResult", "bd_table", "merge_results", "rank", "run_study"]

DYNAMIC_ALLOCATOR = "dynaquant"


class PlanOverBudgetError(BudgetError):
    """An allocator returned a plan larger than its budget: the study stops, naming the cell."""


@dataclass(frozen=True)
class StudySpec:
    """What to compare. ``budgets`` are average weight bits (``budget_kind="avg_bits"``) or compression
    ratios against FP32 (``"ratio"``); ``modes`` are ``"ptq"`` (calibration only) and/or ``"qat"``."""

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

    def __post_init__(self):
        if self.budget_kind not in ("avg_bits", "ratio"):
            raise ValueError(f"budget_kind must be 'avg_bits' or 'ratio', got {self.budget_kind!r}")
        bad = [m for m in self.modes if m not in ("ptq", "qat")]
        if bad:
            raise ValueError(f"unknown mode {bad[0]!r}; valid modes: ptq, qat")
        for name in ("qualities", "allocators", "budgets", "candidate_bits", "modes"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if DYNAMIC_ALLOCATOR in self.allocators:
            if "qat" not in self.modes:
                raise ValueError("allocator 'dynaquant' trains its quantizers and selectors: add 'qat' to modes")
            if self.budget_kind != "avg_bits":
                raise ValueError("allocator 'dynaquant' takes average-bit budgets (budget_kind='avg_bits')")


def _check_within_budget(plan: BitPlan, table: CostTable, budget: Budget, where: str) -> float:
    """The plan's size; raises :class:`PlanOverBudgetError` naming the cell unless it meets the budget under the
    one rule every allocator uses (:meth:`Budget.exceeded`)."""
    choice = plan.choices(table)
    problem = budget.exceeded(table, choice)
    if problem:
        raise PlanOverBudgetError(f"{where}: plan size {table.plan_size(choice):.10g} bits does not fit: {problem}")
    return table.plan_size(choice)


def _cached_plan_problem(cell: dict, table: CostTable, budget: Budget, where: str) -> str | None:
    """Why a cached static cell's plan cannot stand (None when it fits its table and budget as recorded)."""
    try:
        plan = BitPlan.from_dict(cell["plan"])
        size = _check_within_budget(plan, table, budget, where)
    except (TypeError, ValueError, KeyError) as exc:  # PlanOverBudgetError is a ValueError too
        return f"holds a plan that does not stand: {str(exc).splitlines()[0]}"
    if set(plan.bits) != set(table.layer_names):
        return "holds a plan of other layers than its cost table"
    if not abs(size - float(cell["row"]["size_bits"])) <= 1e-9 * max(1.0, size):
        return f"records size_bits {cell['row']['size_bits']} for a plan of {size:.10g} bits"
    return None


def _budget(spec: StudySpec, table: CostTable, budget: float) -> Budget:
    return (Budget.from_avg_bits(table, budget) if spec.budget_kind == "avg_bits"
            else Budget.from_compression_ratio(table, budget))


def run_study(spec: StudySpec, out, *, model_loader: Callable | None = None, calib_images=None,
              eval_images=None, train_images=None, data=None, progress: bool = True) -> StudyResult:
    """Run (or resume) a study; see the module docstring.

    ``model_loader(name, quality)`` returns the float model (default: :func:`bitalloc.models.load_model` with
    ``spec.pretrained``); it is called once per quality. ``calib_images`` feed the sensitivity,
    ``train_images`` the QAT, ``eval_images`` the real-bitstream evaluation (dicts of (3,H,W) tensors or
    folders); by default they come from the data root ``data`` (or ``$BITALLOC_DATA``): crops of ``train/``
    for calibration and QAT, ``kodak/`` for evaluation, and scikit-image's photos when no data root is set.
    """
    from . import study_steps as steps

    loader = model_loader or (lambda name, q: steps.load_float_model(name, q, spec.pretrained))
    calib = steps.calibration_crops(calib_images, spec.calib_images, spec.calib_crop, data)
    evals = steps.evaluation_images(eval_images, spec.eval_limit, data)
    train = steps.training_source(train_images, spec.calib_crop, data, spec.seed) if "qat" in spec.modes else None
    inputs = {"eval_images": images_digest(evals), "calib_images": images_digest({"calib": calib}),
              "train_images": source_digest(train) if train is not None else None}
    cache = StudyCache(Path(out), spec, inputs)
    settings = {**asdict(spec), "cost_model_version": COST_MODEL_VERSION,
                "inputs": {**inputs, "eval_image_names": list(evals), "calib_shape": list(calib.shape)},
                "weights": cache.weights}
    atomic_write_text(cache.root / "spec.json", json.dumps(settings, indent=1))
    models: dict = {}  # quality -> float model, loaded once

    def float_model(quality: int):
        if quality not in models:
            models[quality] = loader(spec.model, quality)
            cache.set_weights(quality, weights_digest(models[quality]))
        return models[quality]

    tables: dict[int, CostTable] = {}

    def table_of(quality: int) -> CostTable:
        if quality not in tables:
            path = cache.path("sensitivity", f"{spec.model}_q{quality}", cache.sensitivity_key(quality))
            tables[quality] = cache.read_table(path, spec.candidate_bits) or steps.measure_cost_table(
                float_model(quality), calib, spec, path)
        return tables[quality]

    rows, image_rows, plans = [], [], {}
    cells = [(q, a, b, m) for q in spec.qualities for m in spec.modes for b in spec.budgets for a in spec.allocators
             if not (a == DYNAMIC_ALLOCATOR and m != "qat")]
    refs = [(q, FP_ALLOCATOR, None, "ptq") for q in spec.qualities]
    if "qat" in spec.modes:  # the float model fine-tuned with the same QAT steps: the anchor for QAT rows
        refs += [(q, FP_ALLOCATOR, None, "qat") for q in spec.qualities]
    refs += [(q, "uniform", 8.0, "ptq") for q in spec.qualities
             if spec.budget_kind == "avg_bits" and (q, "uniform", 8.0, "ptq") not in cells]
    bar = tqdm(refs + cells, disable=not progress, desc=f"study {spec.model}")
    for quality, allocator, budget, mode in bar:
        bar.set_postfix_str(f"q{quality} {allocator} {budget} {mode}")
        float_model(quality)
        static = allocator not in (FP_ALLOCATOR, DYNAMIC_ALLOCATOR)
        key = cache.cell_key(quality, allocator, budget, mode, static)
        path = cache.cell_path(quality, allocator, budget, mode, key)
        where = f"{spec.model} q{quality} allocator '{allocator}' at {spec.budget_kind}={budget or 0:g}"
        cell = cache.read(path, key, list(evals), ROW_FIELDS + (STATIC_ROW_FIELDS if static else ()))
        if static:
            table = table_of(quality)
            budget_obj = _budget(spec, table, budget)
            problem = cell and _cached_plan_problem(cell, table, budget_obj, where)
            if problem:
                set_aside(path, problem)
                cell = None
        fresh = cell is None
        if fresh:
            model = copy.deepcopy(models[quality])
            if allocator == FP_ALLOCATOR:
                cell = {"row": {"status": "reference", "avg_bits": 32.0}, "plan": None}
                if mode == "qat":
                    workdir = cache.workdir("qat", f"{spec.model}_q{quality}_fp32_{spec.qat_steps}steps", key)
                    model, loss = steps.quantize_plan(model, {}, mode, spec, train, workdir)
                else:
                    loss = None
                outcome = {"images": steps.evaluate_images(model, evals).to_dict(orient="records"),
                           "qat_final_loss": loss}
            elif allocator == DYNAMIC_ALLOCATOR:
                workdir = cache.workdir("dynaquant", f"{spec.model}_q{quality}_avg{budget:g}_{spec.qat_steps}steps",
                                        key)
                cell, outcome = _dynamic_cell(workdir, spec, quality, budget, model, train, evals, progress)
            else:
                alloc = build_allocator(allocator).allocate(table, budget_obj)
                if alloc.plan is None:
                    raise BudgetError(f"{where}: no plan ({alloc.status}: {alloc.message})")
                size = _check_within_budget(alloc.plan, table, budget_obj, where)
                outcome = _outcome(cache, spec, quality, mode, alloc.plan, model, train, evals)
                cell = {"row": {"status": str(getattr(alloc.status, "value", alloc.status)),
                                "objective": alloc.objective, "solve_time_s": alloc.solve_time_s,
                                "iterations": alloc.iterations, "size_bits": size,
                                "budget_bits": budget_obj.max_size_bits, "avg_bits": alloc.plan.avg_bits(table),
                                "compression_ratio": table.fp32_size_bits / size},
                        "plan": json.loads(alloc.plan.to_json())}
            df = pd.DataFrame(outcome["images"])
            cell["images"] = outcome["images"]
            cell["row"].update({k: float(df[k].mean()) for k in ("bpp", "psnr_rgb", "ms_ssim_rgb")})
            cell["row"]["qat_final_loss"] = outcome["qat_final_loss"]
        checked = cell["plan"] is None or "plan_excess" in cell["row"]
        if not checked:  # a new cell, or one whose joint plan check is missing
            _check_interaction(cell, copy.deepcopy(models[quality]), table_of(quality), calib, spec, where)
        if fresh or not checked:
            cache.write(path, key, cell)
        cols = {"model": spec.model, "quality": quality, "allocator": allocator,
                "budget": budget, "budget_kind": spec.budget_kind, "mode": mode}
        rows.append({**cols, **cell["row"], "cached": not fresh})
        image_rows += [{**cols, **r} for r in cell["images"]]
        if cell["plan"] is not None:
            plans[(quality, allocator, budget, mode)] = BitPlan.from_dict(cell["plan"])
    atomic_write_text(cache.root / "spec.json", json.dumps(settings, indent=1))  # now with every weights digest
    results = pd.DataFrame(rows)
    bd = bd_table(results)
    return StudyResult(results, pd.DataFrame(image_rows), bd, rank(bd), plans, json.loads(json.dumps(settings)))


def _check_interaction(cell: dict, model, table: CostTable, calib, spec: StudySpec, where: str) -> None:
    """Record what the plan costs when all its layers are quantized together against the table's prediction."""
    from . import study_steps as steps

    check = steps.check_joint_plan(model, BitPlan.from_dict(cell["plan"]), table, calib, spec)
    cell["row"].update(plan_predicted_cost=check.predicted, plan_measured_cost=check.measured,
                       plan_excess=check.excess)
    if not check.ok():
        warnings.warn(f"{where}: quantized together its layers add {check.measured:.1%} RD loss on the calibration "
                      f"crops, the cost table predicted {check.predicted:.1%} (layers interact)", stacklevel=3)


def _dynamic_cell(workdir: Path, spec: StudySpec, quality: int, budget: float, model, train, evals,
                  progress: bool) -> tuple[dict, dict]:
    """Train and evaluate DynaQuant at ``budget`` average bits (resumes from ``workdir``, its own work folder)."""
    from .dynaquant import run_dynaquant_cell
    from .sensitivity import model_lambda

    try:  # DynaQuant's own candidates (4, 6, 8): its selectors pick among them per image
        frame, summary = run_dynaquant_cell(model, target_avg_bits=budget, lmbda=model_lambda(model),
                                            steps=spec.qat_steps, train_images=train, eval_images=evals,
                                            seed=spec.seed, workdir=workdir, progress=progress)
    except BudgetTooSmallError as exc:
        where = f"{spec.model} q{quality} allocator 'dynaquant' at avg_bits={budget:g}"
        raise BudgetTooSmallError(f"{where}: {exc}") from exc
    params = sum(p.numel() for p in model.parameters())
    row = {"status": "dynamic", "objective": float("nan"), "solve_time_s": float("nan"), "iterations": 0,
           "avg_bits": summary["avg_bits"], "max_avg_bits": summary["max_avg_bits"], "bit_ops": summary["bit_ops"],
           "size_bits": summary["avg_bits"] * params, "budget_bits": budget * params,
           "compression_ratio": 32.0 / summary["avg_bits"], "train_time_s": summary["train_time_s"],
           "final_train_psnr": summary["final_train_psnr"]}
    keep = ["image", "height", "width", "num_bytes", "bpp", "psnr_rgb", "ms_ssim_rgb", "avg_bits"]
    return {"row": row, "plan": None}, {"images": frame[keep].to_dict(orient="records"),
                                        "qat_final_loss": None}


def _outcome(cache: StudyCache, spec: StudySpec, quality: int, mode: str, plan: BitPlan, model, train,
             evals) -> dict:
    """Quantize (+ QAT) and evaluate ``plan``; allocators that return the same plan share one outcome."""
    from . import study_steps as steps

    key = cache.outcome_key(quality, mode, plan.bits)
    path = cache.path("outcomes", f"{spec.model}_q{quality}_{mode}", key)
    found = cache.read(path, key, list(evals))
    if found is not None:
        return found
    evaluated, qat_loss = steps.quantize_plan(model, plan, mode, spec, train, cache.root / "qat" / path.stem)
    found = {"images": steps.evaluate_images(evaluated, evals).to_dict(orient="records"),
             "qat_final_loss": qat_loss}
    cache.write(path, key, found)
    return found
