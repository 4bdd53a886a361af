"""Sensitivity of each layer to quantization, and whole-plan checks: (model, data, loss) -> CostTable.

Modules:

* :mod:`~bitalloc.sensitivity.measure`: :func:`measure_sensitivity`, FMPQ's fractional loss change of each
  layer quantized alone, the cost table and its raw frame.
* :mod:`~bitalloc.sensitivity.pipelines`: cached pipelines by model class (Scale / Mean-Scale Hyperprior,
  the joint autoregressive models and Cheng2020), :func:`register_pipeline`, :func:`pipeline_for`.
* :mod:`~bitalloc.sensitivity.hessian`: :func:`hessian_traces` (Hutchinson).
* :mod:`~bitalloc.sensitivity.plan_check`: :func:`check_plan` and :class:`PlanCheck`, a plan's joint loss
  against the table's additive prediction.
* :mod:`~bitalloc.sensitivity.calibration`: the calibration data as a list of batches.

The loss is any ``loss(model, batch)`` (:mod:`bitalloc.objective`); the default, for CompressAI models, is
the rate-distortion loss of :mod:`bitalloc.models.losses`.
"""

from bitalloc.objective import model_lambda
from bitalloc.sensitivity.calibration import calibration_batch, calibration_batches
from bitalloc.sensitivity.hessian import hessian_traces
from bitalloc.sensitivity.measure import DEFAULT_BITS, measure_sensitivity, rd_loss
from bitalloc.sensitivity.pipelines import CachedPipeline, pipeline_for, register_pipeline
from bitalloc.sensitivity.plan_check import PlanCheck, check_plan

__all__ = ["DEFAULT_BITS", "CachedPipeline", "PlanCheck", "calibration_batch", "calibration_batches", "check_plan",
           "hessian_traces", "measure_sensitivity", "model_lambda", "pipeline_for", "rd_loss", "register_pipeline"]
