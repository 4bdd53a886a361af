"""Sensitivity of each layer to quantization, and whole-plan checks: (model, data, loss) -> CostTable.

Modules:

* :mod:`~bitalloc.sensitivity.measure`: :func:`measure_sensitivity`, FMPQ's fractional loss change of each
  layer quantized alone, the cost table and its raw frame.
* :mod:`~bitalloc.sensitivity.pipelines`: cached pipelines by model class (Scale / Mean-Scale Hyperprior,
  the joint autoregressive models and Cheng2020), :func:`register_pipeline`, :func:`pipeline_for`.
* :mod:`~bitalloc.sensitivity.hessian`: :func:`hessian_traces` (Hutchinson).
* :mod:`~bitalloc.sensitivity.plan_check`: :func:`check_plan`, :class:`PlanCheck` and :class:`JointLoss`, a
  plan's joint loss against the table's prediction.
* :mod:`~bitalloc.sensitivity.probe`: :class:`LossProbe`, the loss with some layers quantized (cached pipelines,
  per-batch losses and their standard errors), shared by the single-layer table and the pairwise interactions.
* :mod:`~bitalloc.sensitivity.calibration`: the calibration data as a list of batches.

The loss is any ``loss(model, batch)`` (:mod:`bitalloc.objective`); the default, for CompressAI models, is
the rate-distortion loss of :mod:`bitalloc.models.losses`.
"""

from bitalloc.objective import model_lambda
from bitalloc.sensitivity.calibration import calibration_batch, calibration_batches
from bitalloc.sensitivity.hessian import hessian_traces
from bitalloc.sensitivity.measure import DEFAULT_BITS, measure_sensitivity, rd_loss
from bitalloc.sensitivity.pipelines import CachedPipeline, pipeline_for, register_pipeline
from bitalloc.sensitivity.plan_check import JointLoss, PlanCheck, check_plan
from bitalloc.sensitivity.probe import LossProbe

__all__ = ["DEFAULT_BITS", "CachedPipeline", "JointLoss", "LossProbe", "PlanCheck", "calibration_batch",
           "calibration_batches", "check_plan", "hessian_traces", "measure_sensitivity", "model_lambda", "pipeline_for",
           "rd_loss", "register_pipeline"]
