"""A whole plan at once against the cost table's additive prediction."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch.nn as nn

from bitalloc.costs import CostTable
from bitalloc.objective import Loss, evaluate_loss, model_device, relative_increase, resolve_loss
from bitalloc.quant import apply_plan, plan_of
from bitalloc.sensitivity.calibration import calibration_batches

__all__ = ["PlanCheck", "check_plan"]


@dataclass(frozen=True)
class PlanCheck:
    """What a cost table predicts for a plan against what the plan does when all its layers are quantized.

    ``predicted``: the sum of the table's per-layer costs (fractional loss increases, the additive model
    every allocator optimizes); ``measured``: the fractional loss increase of the whole plan at once, on the
    same data. ``excess = measured - predicted`` is the interaction the table cannot see. ``bpp_fp`` and
    ``bpp_plan`` are None when the loss reports no ``bpp``; ``parts_fp``/``parts_plan`` hold every named part.
    """

    predicted: float
    measured: float
    loss_fp: float
    loss_plan: float
    bpp_fp: float | None = None
    bpp_plan: float | None = None
    parts_fp: dict = field(default_factory=dict, compare=False)
    parts_plan: dict = field(default_factory=dict, compare=False)

    @property
    def excess(self) -> float:
        return self.measured - self.predicted

    def ok(self, tolerance: float = 0.05) -> bool:
        """True when the plan costs at most ``tolerance`` (fractional loss) more than the table predicts."""
        return self.excess <= tolerance


def check_plan(model: nn.Module, plan, table: CostTable, images: Any = None, *, loss: Loss | None = None,
               calibration: str = "minmax", lmbda: float | None = None, crop: int = 256,
               limit: int | None = 4) -> PlanCheck:
    """Quantize every layer of ``plan`` together and compare the loss with the table's additive prediction.

    Use the data, loss, crop and calibration the table was measured with (``images`` and ``loss`` as in
    :func:`bitalloc.measure_sensitivity`). Per-layer sensitivities assume costs add up; when layers interact
    (e.g. all of a hyper-synthesis transform at 2 bits) a plan can cost far more than predicted, which
    :meth:`PlanCheck.ok` reports before any bitstream is written.
    """
    from bitalloc.plan import BitPlan

    plan = plan if isinstance(plan, BitPlan) else BitPlan(dict(plan))
    if len(plan_of(model)):
        raise ValueError("check_plan needs the float model, but this one is already fake-quantized")
    predicted = plan.cost(table)  # raises PlanError naming a layer the plan and the table disagree on
    objective = resolve_loss(model, loss, lmbda)
    batches = calibration_batches(images, crop=crop, limit=limit, device=model_device(model))
    qmodel = apply_plan(model, plan, calibration=calibration).eval()
    was_training = model.training
    model.eval()
    try:
        fp = evaluate_loss(model, objective, batches)
        q = evaluate_loss(qmodel, objective, batches)
    finally:
        model.train(was_training)
    return PlanCheck(predicted=predicted, measured=relative_increase(q["loss"], fp["loss"], model),
                     loss_fp=fp["loss"], loss_plan=q["loss"], bpp_fp=fp.get("bpp"), bpp_plan=q.get("bpp"),
                     parts_fp=fp, parts_plan=q)
