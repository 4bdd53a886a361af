"""bitalloc: per-layer bit allocation for learned image compression models.

The core (cost tables, budgets, plans, allocators) needs only numpy/scipy/pandas/pulp and is imported eagerly;
torch-based parts are imported lazily on first attribute access through ``_LAZY`` (name -> the module that
defines it), so ``import bitalloc`` never imports torch. ``__all__`` and ``dir(bitalloc)`` list both; a star
import therefore loads the torch-based parts too.
"""

from __future__ import annotations

import importlib
from typing import Any

from bitalloc.allocation import (AllocStatus, Allocation, Allocator, BaseAllocator, Solution, available_allocators,
                                 build_allocator, register_allocator)
from bitalloc.costs import Budget, CostTable, LayerSpec, LinearConstraint
from bitalloc.errors import BudgetError, BudgetTooSmallError, CostTableError, PlanError, SolverUnavailableError
from bitalloc.pareto import pareto_front
from bitalloc.plan import BitPlan

__version__ = "0.1.0"

__all__ = [  # the eager names; the lazy ones are appended below
    "AllocStatus", "Allocation", "Allocator", "BaseAllocator", "BitPlan", "Budget", "BudgetError",
    "BudgetTooSmallError", "CostTable", "CostTableError", "LayerSpec", "LinearConstraint", "PlanError", "Solution",
    "SolverUnavailableError", "available_allocators", "build_allocator", "pareto_front", "register_allocator",
]

# Lazily imported public names: {"name": "the module that defines it"} (the torch-based parts live here).
_LAZY: dict[str, str] = {
    "evaluate": "bitalloc.evaluation",
    "compress_image": "bitalloc.evaluation",
    "resolve_images": "bitalloc.data",
    "quantizable_layers": "bitalloc.graph",
    "layer_graph": "bitalloc.graph",
    "apply_plan": "bitalloc.quant",
    "plan_of": "bitalloc.quant",
    "remove_plan": "bitalloc.quant",
    "layer_size_bits": "bitalloc.quant",
    "WeightQuantizer": "bitalloc.fake_quant",
    "ActQuantizer": "bitalloc.act_quant",
    "calibrate_activations": "bitalloc.act_quant",
    "correct_bias": "bitalloc.bias_correction",
    "choose_bias_correction": "bitalloc.bias_correction",
    "BiasChoice": "bitalloc.bias_correction",
    "BiasCorrector": "bitalloc.bias_correction",
    "count_macs": "bitalloc.macs",
    "measure_sensitivity": "bitalloc.sensitivity.measure",
    "check_plan": "bitalloc.sensitivity.plan_check",
    "PlanCheck": "bitalloc.sensitivity.plan_check",
    "measure_interactions": "bitalloc.interactions",
    "Interactions": "bitalloc.interactions",
    "verify_and_repair": "bitalloc.repair",
    "verifying": "bitalloc.repair",
    "Repair": "bitalloc.repair",
    "tie_break_within_noise": "bitalloc.noise",
    "measure_recovered_costs": "bitalloc.recovery",
    "Recovered": "bitalloc.recovery",
    "rd_loss_fn": "bitalloc.models.losses",
    "coded_rate": "bitalloc.models.losses",
    "finetune": "bitalloc.qat",
    "export_packed": "bitalloc.export",
    "load_packed": "bitalloc.export",
    "export_baked": "bitalloc.bake",
    "export_onnx": "bitalloc.onnx_export",
    "export_lic_transforms": "bitalloc.onnx_export",
    "run_dynaquant_cell": "bitalloc.dynaquant.cell",
    "DynaQuantModel": "bitalloc.dynaquant.model",
    "load_dynaquant": "bitalloc.dynaquant.cell",
    "bd_rate": "bitalloc.bdrate",
    "bd_psnr": "bitalloc.bdrate",
    "reference_curve": "bitalloc.reference",
    "available_references": "bitalloc.reference",
    "load_model": "bitalloc.models.checkpoint",
    "available_checkpoints": "bitalloc.models.checkpoint",
    "StudySpec": "bitalloc.harness",
    "run_study": "bitalloc.harness",
    "write_report": "bitalloc.report",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'bitalloc' has no attribute '{name}'")


__all__ += list(_LAZY)


def __dir__() -> list[str]:
    """The public names (``__all__``) and ``__version__``; submodules stay importable but are not listed."""
    return sorted([*__all__, "__version__"])
