"""The work of one study, as functions a worker process can run: a cost table, its pairwise terms, a cell's
allocation (with its joint plan check), the outcome of a plan, a reference cell.

Each takes plain, picklable arguments (models and images as :class:`~bitalloc.executor.Shipped`), writes what
it computes atomically where the cache says (cost tables, pairwise tables, outcomes; cells are written by the
harness), and returns the result. None of them reads the cache: the harness decides what is missing, so two
workers never compute the same thing.
"""

from __future__ import annotations

import copy
import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .analysis import FP_ALLOCATOR
from .costs import Budget, CostTable
from .errors import BudgetError, BudgetTooSmallError
from .plan import BitPlan
from .qat import fresh_source
from .allocation import allocator_parts

__all__ = ["DYNAMIC_ACT_BITS", "DYNAMIC_ALLOCATOR", "Cell", "PlanOverBudgetError", "allocate_task",
           "cached_plan_problem", "check_act_settings", "check_within_budget", "folder_recipe",
           "outcome_task", "pairs_task", "recovered_task", "reference_task", "study_budget", "table_task", "with_means"]

DYNAMIC_ALLOCATOR = "dynaquant"
DYNAMIC_ACT_BITS = 8  # DynaQuant cells quantize activations with their own 8-bit quantizers whatever spec.act_bits


def check_act_settings(spec) -> None:
    """Refuse, by field, a study's activation bits, observer or calibration offset that cannot run."""
    from .bits import check_bits
    from .observers import OBSERVERS

    if spec.act_bits is not None:
        check_bits(spec.act_bits, subject=f"StudySpec.act_bits {spec.act_bits!r}")
    if spec.act_observer not in OBSERVERS:
        raise ValueError(f"StudySpec.act_observer: unknown activation observer {spec.act_observer!r}; valid "
                         f"choices: {', '.join(OBSERVERS)}")
    offset = spec.calib_offset
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise ValueError(f"StudySpec.calib_offset must be an integer >= 0, got {offset!r}")


def check_verify_settings(spec) -> None:
    """Refuse, by field, the ``+verify`` allocators' settings of a study that cannot run."""
    from .repair import CORRECTIONS

    if isinstance(spec.verify_max_evals, bool) or not isinstance(spec.verify_max_evals, int) \
            or spec.verify_max_evals < 1:
        raise ValueError(f"verify_max_evals must be an integer >= 1, got {spec.verify_max_evals!r}")
    if not (isinstance(spec.verify_tolerance, (int, float)) and math.isfinite(spec.verify_tolerance)
            and spec.verify_tolerance >= 0):
        raise ValueError(f"verify_tolerance must be a finite number >= 0, got {spec.verify_tolerance!r}")
    if isinstance(spec.verify_noise_z, bool) or not (isinstance(spec.verify_noise_z, (int, float))
                                                     and math.isfinite(spec.verify_noise_z)
                                                     and spec.verify_noise_z >= 0):
        raise ValueError(f"verify_noise_z must be a finite number >= 0, got {spec.verify_noise_z!r}")
    if isinstance(spec.verify_holdout, bool) or not isinstance(spec.verify_holdout, int) or spec.verify_holdout < 0:
        raise ValueError(f"verify_holdout must be an integer >= 0 (photos), got {spec.verify_holdout!r}")
    after_qat = [a for a in spec.allocators if all(allocator_parts(a)[1:])]  # +verify+qat
    if spec.verify_correction not in CORRECTIONS:
        raise ValueError(f"verify_correction must be one of {', '.join(CORRECTIONS)}, got "
                         f"{spec.verify_correction!r}")
    if spec.verify_correction == "context" and after_qat:
        raise ValueError(f"verify_correction='context' probes every single-layer move of each plan, a QAT run "
                         f"each after QAT: PTQ repairs only; allocator {after_qat[0]!r} verifies after QAT")
    if not isinstance(spec.verify_snap_ties, bool):
        raise ValueError(f"verify_snap_ties must be True or False, got {spec.verify_snap_ties!r}")
    if spec.verify_snap_ties and spec.verify_correction != "context":
        raise ValueError("verify_snap_ties snaps in-context costs: it needs verify_correction='context'")
    if spec.verify_holdout and after_qat:
        raise ValueError(f"verify_holdout confirms PTQ repairs only; allocator {after_qat[0]!r} verifies after QAT "
                         f"(drop it or set verify_holdout=0)")


class PlanOverBudgetError(BudgetError):
    """An allocator returned a plan larger than its budget: the study stops, naming the cell."""


@dataclass(frozen=True)
class Cell:
    """One (quality, allocator, budget, mode) of a study; ``budget`` None for the float reference."""

    quality: int
    allocator: str
    budget: float | None
    mode: str

    @property
    def static(self) -> bool:
        """A cell with a static plan from a cost table (not fp32, not DynaQuant)."""
        return self.allocator not in (FP_ALLOCATOR, DYNAMIC_ALLOCATOR)

    def where(self, spec) -> str:
        return f"{spec.model} q{self.quality} allocator '{self.allocator}' at {spec.budget_kind}={self.budget or 0:g}"

    def label(self, spec) -> dict:
        """How warnings name the cell (``cell`` plus its fields)."""
        b = "" if self.budget is None else f" {spec.budget_kind}={self.budget:g}"
        return {"cell": f"{spec.model} q{self.quality} {self.allocator}{b} {self.mode}", "quality": self.quality,
                "allocator": self.allocator, "budget": self.budget, "mode": self.mode}


def study_budget(spec, table: CostTable, budget: float) -> Budget:
    return (Budget.from_avg_bits(table, budget) if spec.budget_kind == "avg_bits"
            else Budget.from_compression_ratio(table, budget))


def check_within_budget(plan: BitPlan, table: CostTable, budget: Budget, where: str) -> float:
    """The plan's size; raises :class:`PlanOverBudgetError` naming the cell unless it meets the budget under the
    one rule every allocator uses (:meth:`Budget.exceeded`)."""
    choice = plan.choices(table)
    problem = budget.exceeded(table, choice)
    if problem:
        raise PlanOverBudgetError(f"{where}: plan size {table.plan_size(choice):.10g} bits does not fit: {problem}")
    return table.plan_size(choice)


def cached_plan_problem(cell: dict, table: CostTable, budget: Budget, where: str) -> str | None:
    """Why a cached static cell's plan cannot stand (None when it fits its table and budget as recorded)."""
    try:
        plan = BitPlan.from_dict(cell["plan"])
        size = check_within_budget(plan, table, budget, where)
    except (TypeError, ValueError, KeyError) as exc:  # PlanOverBudgetError is a ValueError too
        return f"holds a plan that does not stand: {str(exc).splitlines()[0]}"
    if set(plan.bits) != set(table.layer_names):
        return "holds a plan of other layers than its cost table"
    if not abs(size - float(cell["row"]["size_bits"])) <= 1e-9 * max(1.0, size):
        return f"records size_bits {cell['row']['size_bits']} for a plan of {size:.10g} bits"
    return None


def with_means(cell: dict, outcome: dict) -> dict:
    """``cell`` with the outcome's per-image rows, their means and the QAT loss."""
    df = pd.DataFrame(outcome["images"])
    cell["images"] = outcome["images"]
    cell["row"].update({k: float(df[k].mean()) for k in ("bpp", "psnr_rgb", "ms_ssim_rgb")})
    cell["row"]["qat_final_loss"] = outcome["qat_final_loss"]
    return cell


def folder_recipe(train) -> tuple | None:
    """How a worker rebuilds an :class:`~bitalloc.data.ImageFolder` of a whole folder (decoding its photos
    once) instead of receiving every decoded photo with every task; None for any other source."""
    from .data import ImageFolder, image_paths

    if not isinstance(train, ImageFolder) or not train.paths:
        return None
    folder = train.paths[0].parent
    if list(train.paths) != image_paths(folder):  # a split: shipped as it is
        return None
    return ImageFolder, (folder, train.crop, train.flips)


def table_task(model, calib, spec, path: Path, frame_path: Path | None, loss) -> CostTable:
    from . import study_steps as steps

    return steps.measure_cost_table(copy.deepcopy(model.get()), calib.get(), spec, path, loss, frame_path)


def pairs_task(model, calib, table: CostTable, spec, path: Path, frame_path: Path | None, loss) -> CostTable:
    from . import study_steps as steps

    return steps.measure_pairwise_table(copy.deepcopy(model.get()), calib.get(), table, spec, path, loss, frame_path)


def recovered_task(model, calib, train, table: CostTable, spec, path: Path, frame_path: Path | None, workdir: Path,
                   loss) -> CostTable:
    from . import study_steps as steps

    return steps.measure_recovered_table(copy.deepcopy(model.get()), calib.get(), train.get(), table, spec, path,
                                         loss, frame_path, workdir)


def allocate_task(cell: Cell, spec, model, calib, table: CostTable, loss, plan: dict | None = None,
                  train=None, workdir: Path | None = None, holdout=None) -> dict:
    """Allocate the cell's plan (timed, checked against its budget; ``+verify`` measures and repairs it), then
    measure it quantized as a whole against the table's prediction (a ``+qat`` cell: after the QAT of its
    QAT-aware table, on ``train``; ``holdout``: the crops confirming a PTQ repair). Returns the cell's ``row`` and
    ``plan`` (and ``verify_history``); with ``plan`` given (a cached cell), only the joint check's row fields."""
    from . import study_steps as steps

    where = cell.where(spec)
    _, verify, after_qat = allocator_parts(cell.allocator)
    out: dict = {"row": {}}
    if plan is None:
        budget = study_budget(spec, table, cell.budget)
        allocator = steps.cell_allocator(cell.allocator, copy.deepcopy(model.get()), calib.get(), spec, loss,
                                         None if train is None else train.get(), workdir,
                                         None if holdout is None else holdout.get())
        alloc = allocator.allocate(table, budget)
        if alloc.plan is None:
            raise BudgetError(f"{where}: no plan ({alloc.status}: {alloc.message})")
        size = check_within_budget(alloc.plan, table, budget, where)
        plan = json.loads(alloc.plan.to_json())
        out["row"] = {"status": str(getattr(alloc.status, "value", alloc.status)), "objective": alloc.objective,
                      "solve_time_s": alloc.solve_time_s, "iterations": alloc.iterations, "size_bits": size,
                      "budget_bits": budget.max_size_bits, "avg_bits": alloc.plan.avg_bits(table),
                      "compression_ratio": table.fp32_size_bits / size}
        if table.pairwise:
            out["row"]["pairwise_pairs"] = len(table.pairwise)
        if verify:
            extra = alloc.extra
            out["row"].update(verify_evaluations=len(extra["history"]), verify_converged=bool(extra["converged"]),
                              verify_start_predicted=extra["start_predicted"],
                              verify_start_measured=extra["start_measured"])
            if extra.get("learned_predicted") is not None:
                out["row"]["verify_learned_predicted"] = extra["learned_predicted"]
            if extra.get("holdout"):
                held = extra["holdout"]
                out["row"].update(verify_holdout_kept=held["kept"], verify_holdout_start=held["start"],
                                  verify_holdout_best=held["best"])
            out["verify_history"] = extra["history"]
        out["plan"] = plan
    if after_qat:
        if train is None:
            raise ValueError(f"{where}: a +qat cell's joint check needs the training crops (train=)")
        check = steps.recovery_run(copy.deepcopy(model.get()), calib.get(), train.get(), spec, loss, workdir).check(
            BitPlan.from_dict(plan), table)
    else:
        check = steps.check_joint_plan(copy.deepcopy(model.get()), BitPlan.from_dict(plan), table, calib.get(),
                                       spec, loss)
    out["row"].update(plan_predicted_cost=check.predicted, plan_measured_cost=check.measured,
                      plan_excess=check.excess)
    if not check.ok():
        state = f"after {spec.recovery_steps or spec.qat_steps} QAT steps" if after_qat else "quantized together"
        warnings.warn(f"{where}: {state} its layers add {check.measured:.1%} loss on the calibration crops, the "
                      f"cost table predicted {check.predicted:.1%} (layers interact)", stacklevel=1)
    return out


def outcome_task(cache, spec, quality: int, mode: str, plan: dict, model, train, evals, loss, calib=None) -> dict:
    """Quantize (+ QAT, resuming from the outcome's own work folder) and evaluate ``plan``; the outcome is
    written atomically where ``cache`` keeps it, and returned. ``calib`` (shipped calibration crops) calibrates
    the activation ranges when ``spec.act_bits`` is set."""
    from . import study_steps as steps

    bits = BitPlan.from_dict(plan)
    key = cache.outcome_key(quality, mode, bits.bits)
    path = cache.path("outcomes", f"{spec.model}_q{quality}_{mode}", key)
    evaluated, qat_loss = steps.quantize_plan(copy.deepcopy(model.get()), bits, mode, spec,
                                              fresh_source(train.get(), spec.seed),
                                              cache.root / "qat" / path.stem, loss,
                                              calib=None if calib is None else calib.get())
    found = {"images": steps.evaluate_images(evaluated, evals.get()).to_dict(orient="records"),
             "qat_final_loss": qat_loss}
    cache.write(path, key, found)
    return found


def reference_task(cell: Cell, spec, model, train, evals, workdir: Path | None, loss, progress: bool) -> dict:
    """The float model (fine-tuned with the study's QAT steps in QAT mode) or DynaQuant, evaluated."""
    from . import study_steps as steps

    model = copy.deepcopy(model.get())
    if cell.allocator == FP_ALLOCATOR:
        found = {"row": {"status": "reference", "avg_bits": 32.0}, "plan": None}
        model, qat_loss = steps.quantize_plan(model, {}, cell.mode, spec, fresh_source(train.get(), spec.seed),
                                              workdir, loss)
        outcome = {"images": steps.evaluate_images(model, evals.get()).to_dict(orient="records"),
                   "qat_final_loss": qat_loss}
    else:
        found, outcome = _dynamic_cell(workdir, spec, cell, model, fresh_source(train.get(), spec.seed), evals.get(),
                                       progress)
    return with_means(found, outcome)


def _dynamic_cell(workdir: Path, spec, cell: Cell, model, train, evals, progress: bool) -> tuple[dict, dict]:
    """Train and evaluate DynaQuant at ``budget`` average bits (resumes from ``workdir``, its own work folder)."""
    from .dynaquant import run_dynaquant_cell
    from .sensitivity import model_lambda

    try:  # DynaQuant's own candidates (4, 6, 8): its selectors pick among them per image
        frame, summary = run_dynaquant_cell(model, target_avg_bits=cell.budget, lmbda=model_lambda(model),
                                            steps=spec.qat_steps, train_images=train, eval_images=evals,
                                            seed=spec.seed, workdir=workdir, progress=progress)
    except BudgetTooSmallError as exc:
        raise BudgetTooSmallError(f"{cell.where(spec)}: {exc}") from exc
    params = sum(p.numel() for p in model.parameters())
    row = {"status": "dynamic", "objective": float("nan"), "solve_time_s": float("nan"), "iterations": 0,
           "avg_bits": summary["avg_bits"], "max_avg_bits": summary["max_avg_bits"], "bit_ops": summary["bit_ops"],
           "size_bits": summary["avg_bits"] * params, "budget_bits": cell.budget * params,
           "compression_ratio": 32.0 / summary["avg_bits"], "train_time_s": summary["train_time_s"],
           "final_train_psnr": summary["final_train_psnr"]}
    keep = ["image", "height", "width", "num_bytes", "bpp", "psnr_rgb", "ms_ssim_rgb", "avg_bits"]
    return {"row": row, "plan": None}, {"images": frame[keep].to_dict(orient="records"), "qat_final_loss": None}
