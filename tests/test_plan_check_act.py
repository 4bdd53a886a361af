"""check_plan / JointLoss with a plan that quantizes activations: ranges calibrated on the check's own data."""

import numpy as np
import pytest

from bitalloc.act_quant import calibrate_activations
from bitalloc.costs import CostTable
from bitalloc.graph import quantizable_layers
from bitalloc.objective import evaluate_loss, resolve_loss
from bitalloc.plan import BitPlan
from bitalloc.quant import apply_plan
from bitalloc.sensitivity import JointLoss, check_plan


def _table(model) -> CostTable:
    layers = quantizable_layers(model)
    names = list(layers)
    params = [m.weight.numel() for m in layers.values()]
    return CostTable.from_arrays(names, (4, 8), np.zeros((len(names), 2)), num_params=params)


def test_check_plan_calibrates_activation_ranges_on_its_data(hyperprior, images):
    model = hyperprior.eval()
    table = _table(model)
    plan = BitPlan.uniform(table.layer_names, 8, act_bits=4)
    check = check_plan(model, plan, table, images)  # raised "not calibrated" before
    # the same number by hand: apply, calibrate on the same batch with the default observer, evaluate
    q = calibrate_activations(apply_plan(model, plan), images)
    assert check.loss_plan == pytest.approx(evaluate_loss(q, resolve_loss(model, None, None), [images])["loss"],
                                            rel=1e-6)
    weights_only = check_plan(model, plan.weights_only(), table, images)
    assert check.loss_plan != weights_only.loss_plan  # the 4-bit activations are in the measurement
    clipped = check_plan(model, plan, table, images, observer="percentile", observer_options={"percentile": 90.0})
    assert clipped.loss_plan != check.loss_plan  # the observer reaches the calibration
    assert check.loss_fp == clipped.loss_fp == weights_only.loss_fp


def test_joint_loss_refuses_an_unknown_observer_before_any_work(hyperprior, images):
    with pytest.raises(ValueError, match="'histogram'"):
        JointLoss(hyperprior, images, observer="histogram")
    with pytest.raises(ValueError, match="'percentile' does not take"):
        check_plan(hyperprior, BitPlan.uniform(_table(hyperprior).layer_names, 8, act_bits=8), _table(hyperprior),
                   images, observer="percentile", observer_options={"momentum": 0.1})
