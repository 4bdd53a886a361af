"""A whole plan at once against the cost table's additive prediction."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import torch.nn as nn

from bitalloc.act_quant import activation_quantizers, calibrate_activations
from bitalloc.bias_correction import BiasCorrector, set_bias_shifts
from bitalloc.costs import CostTable
from bitalloc.objective import Loss, evaluate_loss, model_device, relative_increase, resolve_loss
from bitalloc.observers import make_observer
from bitalloc.graph import quantizable_layers
from bitalloc.quant import apply_plan, plan_of, quantize_weight
from bitalloc.sensitivity.calibration import calibration_batches
from bitalloc.sensitivity.probe import per_sample_batches, sample_increases

__all__ = ["JointLoss", "PlanCheck", "check_plan"]


@dataclass(frozen=True)
class PlanCheck:
    """What a cost table predicts for a plan against what the plan does when all its layers are quantized.

    ``predicted``: the table's objective for the plan (its per-layer costs, fractional loss increases, plus any
    pairwise terms: what every allocator optimizes); ``measured``: the fractional loss increase of the whole plan
    at once, on the same data. ``excess = measured - predicted`` is the interaction the table cannot see. ``bpp_fp`` and
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


class JointLoss:
    """A plan's loss with all its layers quantized at once, on fixed data: the float loss is computed once and
    every plan is applied (:func:`bitalloc.apply_plan`) and evaluated on the same batches. :func:`check_plan`
    and :func:`bitalloc.verify_and_repair` measure through it. ``evaluations`` counts the plans measured.

    ``images``, ``loss``, ``calibration``, ``observer``, ``observer_options``, ``lmbda``, ``crop``, ``limit``,
    ``bias_correction``: as for :func:`check_plan`.
    """

    def __init__(self, model: nn.Module, images: Any = None, *, loss: Loss | None = None,
                 calibration: str = "minmax", lmbda: float | None = None, crop: int = 256,
                 limit: int | None = 4, observer: str = "minmax",
                 observer_options: Mapping[str, Any] | None = None, bias_correction: bool = False):
        if len(plan_of(model)):
            raise ValueError("check_plan needs the float model, but this one is already fake-quantized")
        make_observer(observer, **dict(observer_options or {}))  # an unknown observer or option fails first
        self.model, self.calibration = model, calibration
        self.observer, self.observer_options = observer, dict(observer_options or {})
        self.objective = resolve_loss(model, loss, lmbda)
        self.batches = calibration_batches(images, crop=crop, limit=limit, device=model_device(model))
        self.evaluations = 0
        layers = quantizable_layers(model)
        self.corrector = BiasCorrector(model, self.batches, lambda n, b: quantize_weight(layers[n], b, calibration),
                                       objective=self.objective) if bias_correction else None
        self._fp_samples = None  # per-sample float loss parts, when samples() first needs them
        was_training = model.training
        model.eval()
        try:
            self.fp = evaluate_loss(model, self.objective, self.batches)
        finally:
            model.train(was_training)

    def parts(self, plan) -> dict[str, float]:
        """Every loss part of the model with ``plan`` ({layer: bits} or :class:`~bitalloc.plan.BitPlan`) applied;
        a plan's activation quantizers are calibrated (``observer``) on the same batches first."""
        return evaluate_loss(self._quantized(plan), self.objective, self.batches)

    def _quantized(self, plan) -> nn.Module:
        qmodel = apply_plan(self.model, plan, calibration=self.calibration).eval()
        if self.corrector is not None:  # the shifts of the float model's inputs: the same for every plan
            set_bias_shifts(qmodel, self.corrector.plan_shifts(plan_of(qmodel).bits))
        if activation_quantizers(qmodel):
            calibrate_activations(qmodel, self.batches, self.observer, **self.observer_options)
        self.evaluations += 1
        return qmodel

    def increase(self, plan) -> float:
        """The plan's measured loss increase, a fraction of the float loss (the cost table's unit)."""
        return relative_increase(self.parts(plan)["loss"], self.fp["loss"], self.model)

    def samples(self, plan):
        """The plan's loss increase per calibration sample (crop), each a fraction of the float model's mean loss:
        their mean is :meth:`increase` for equal-size crops, their spread its noise (what ``noise_z`` of
        :func:`bitalloc.verify_and_repair` weighs). A batch that cannot be cut into samples stays one."""
        pieces = per_sample_batches(self.batches)
        if self._fp_samples is None:
            was_training = self.model.training
            self.model.eval()
            try:
                self._fp_samples = [evaluate_loss(self.model, self.objective, [b]) for b in pieces]
            finally:
                self.model.train(was_training)
        qmodel = self._quantized(plan)
        return sample_increases([evaluate_loss(qmodel, self.objective, [b]) for b in pieces], self._fp_samples,
                                self.model)

    def check(self, plan, table: CostTable) -> PlanCheck:
        """The plan's :class:`PlanCheck` against ``table`` (which must cover exactly the plan's layers)."""
        from bitalloc.plan import BitPlan

        plan = plan if isinstance(plan, BitPlan) else BitPlan(dict(plan))
        predicted = plan.cost(table)  # raises PlanError naming a layer the plan and the table disagree on
        q = self.parts(plan)
        return PlanCheck(predicted=predicted, measured=relative_increase(q["loss"], self.fp["loss"], self.model),
                         loss_fp=self.fp["loss"], loss_plan=q["loss"], bpp_fp=self.fp.get("bpp"),
                         bpp_plan=q.get("bpp"), parts_fp=self.fp, parts_plan=q)


def check_plan(model: nn.Module, plan, table: CostTable, images: Any = None, *, loss: Loss | None = None,
               calibration: str = "minmax", lmbda: float | None = None, crop: int = 256,
               limit: int | None = 4, observer: str = "minmax",
               observer_options: Mapping[str, Any] | None = None, bias_correction: bool = False) -> PlanCheck:
    """Quantize every layer of ``plan`` together and compare the loss with the table's additive prediction.

    Use the data, loss, crop and calibration the table was measured with (``images`` and ``loss`` as in
    :func:`bitalloc.measure_sensitivity`). Per-layer sensitivities assume costs add up; when layers interact
    (e.g. all of a hyper-synthesis transform at 2 bits) a plan can cost far more than predicted, which
    :meth:`PlanCheck.ok` reports before any bitstream is written. Several plans on the same data: :class:`JointLoss`.
    A plan with activation bits has its activation ranges calibrated on the same data by ``observer``
    (:data:`bitalloc.observers.OBSERVERS`, options in ``observer_options``), as
    :func:`bitalloc.calibrate_activations` does. ``bias_correction``: measure the plan with its layers' biases
    corrected (:func:`bitalloc.correct_bias` on the same data), against a table measured the same way.
    """
    from bitalloc.plan import BitPlan

    plan = plan if isinstance(plan, BitPlan) else BitPlan(dict(plan))
    if len(plan_of(model)):
        raise ValueError("check_plan needs the float model, but this one is already fake-quantized")
    plan.cost(table)  # a plan the table does not cover fails before any forward pass
    return JointLoss(model, images, loss=loss, calibration=calibration, lmbda=lmbda, crop=crop, limit=limit,
                     observer=observer, observer_options=observer_options,
                     bias_correction=bias_correction).check(plan, table)
