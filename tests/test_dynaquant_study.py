"""studies/dynaquant_study.py's static plans beside DynaQuant: the BOPs-budget plan keeps both budgets, the
8-bit-input plan, the cost columns (bit-operations with each layer's real input bits) and the BD-rate against
DynaQuant. A tiny compact Scale Hyperprior at 64x64; no training, no Kodak."""

from __future__ import annotations


import numpy as np
import pandas as pd
import pytest

from bitalloc import Budget, CostTable, build_allocator
from bitalloc.errors import BudgetTooSmallError
from bitalloc.graph import quantizable_layers
from bitalloc.macs import count_macs
from bitalloc.quant import layer_size_bits
from conftest import load_study



@pytest.fixture(scope="module")
def study():
    return load_study("dynaquant_study")


@pytest.fixture(scope="module")
def report():
    return load_study("dynaquant_report")  # the study's tables and dynaquant.md


@pytest.fixture(scope="module")
def setup(_hyperprior_master):
    """A (weight, activation) table W{4,6,8} x A{4,6,8} (costs falling with both bit-widths, seeded) and MACs."""
    model = _hyperprior_master
    layers = quantizable_layers(model)
    names = list(layers)
    pairs = [(w, a) for w in (4, 6, 8) for a in (4, 6, 8)]
    rng = np.random.default_rng(0)
    ws, acts = rng.lognormal(0, 1, len(names)), rng.lognormal(0, 1, len(names))
    cost = np.array([[sw * 4.0 ** -w + sa * 4.0 ** -a for w, a in pairs] for sw, sa in zip(ws, acts)])
    size = [[layer_size_bits(layers[n], w) for w, _ in pairs] for n in names]
    table = CostTable.from_arrays(names, [w for w, _ in pairs], cost, size, act_bits=[a for _, a in pairs],
                                  num_params=[int(layers[n].weight.numel()) for n in names])
    macs = {n: float(v) for n, v in count_macs(model, (3, 64, 64)).items() if n in layers}
    return table, macs, names


def test_bops_plan_keeps_both_budgets_and_the_cost_columns_count_its_real_input_bits(study, setup):
    table, macs, names = setup
    size = Budget.from_avg_bits(table, 6.0).max_size_bits
    free = build_allocator("ilp").allocate(table, Budget(size)).plan  # the size-only plan
    limit = 0.6 * free.bit_operations(macs)
    plan = study.bops_plan(table, macs, size, limit, "q1 test")
    assert plan.size_bits(table) <= size
    assert plan.bit_operations(macs) <= limit < free.bit_operations(macs)  # the BOPs budget binds
    assert set(plan.act_bits) == set(names) and set(plan.act_bits.values()) <= {4, 6, 8}  # fully integer
    row = pd.DataFrame([study.plan_columns(plan, table, names)])
    cols = study.add_cost_columns(row, macs)
    assert cols.bit_ops.iloc[0] == pytest.approx(plan.bit_operations(macs), rel=1e-12)
    assert cols.wbit_macs.iloc[0] == pytest.approx(sum(macs[n] * plan.bits[n] for n in names), rel=1e-12)
    assert row.avg_bits.iloc[0] == pytest.approx(plan.avg_bits(table))


def test_bops_plan_below_every_plan_names_the_cell_and_the_budget(study, setup):
    table, macs, _ = setup
    smallest = sum(m * 4 * 4 for m in macs.values())  # every layer at w4a4
    with pytest.raises(BudgetTooSmallError, match=r"q9 ilp_bops.*bit_operations"):
        study.bops_plan(table, macs, Budget.from_avg_bits(table, 8.0).max_size_bits, 0.5 * smallest,
                        "q9 ilp_bops")


def test_a8_plan_keeps_the_weights_and_quantizes_every_input_with_frozen_ranges(study, hyperprior, images):
    from bitalloc.act_quant import activation_quantizers
    from bitalloc.plan import BitPlan

    names = list(quantizable_layers(hyperprior))
    plan = BitPlan({n: (4 if i % 2 else 8) for i, n in enumerate(names)})
    a8 = study.with_act_bits(plan)
    assert dict(a8.bits) == dict(plan.bits) and dict(a8.act_bits) == dict.fromkeys(names, 8)
    cols = study.plan_columns(plan, None, names)
    assert {cols[f"act:{n}"] for n in names} == {32}  # a float input counts 32 bits
    assert not activation_quantizers(study.quantized(hyperprior, plan, images, "minmax"))
    quant = activation_quantizers(study.quantized(hyperprior, a8, images, "minmax"))
    assert set(quant) == set(names) and all(q.frozen and q.bits == 8 for q in quant.values())


def test_bd_table_against_dynaquant_and_the_like_for_like_rows(report):
    bpp = np.array([0.2, 0.4, 0.5, 0.7])
    psnr = np.array([26.7, 28.3, 28.7, 29.1])
    rows = []
    for method, scale in (("fp32", 1.0), ("dynaquant", 1.0), ("ilp_bops_qat", 1.1), ("ilp_a8_ptq", 1.0)):
        rows += [{"quality": q, "method": method, "bpp": b * scale, "psnr_rgb": p, "avg_bits": 6.0,
                  "max_avg_bits": 6.0, "gwbit_macs": 30.0, "gbit_ops": 240.0, "act_bits_eff": 8.0}
                 for q, b, p in zip((1, 3, 4, 6), bpp, psnr)]
    bd = report.bd_table(pd.DataFrame(rows)).set_index("method")
    assert bd.loc["ilp_bops_qat", "bd_rate_vs_dynaquant_pct"] == pytest.approx(10.0, abs=1e-6)
    assert bd.loc["ilp_a8_ptq", "bd_rate_vs_dynaquant_pct"] == pytest.approx(0.0, abs=1e-9)
    assert bd.loc["dynaquant", "bd_rate_vs_dynaquant_pct"] == 0.0
    table = report.like_for_like(bd.reset_index())
    assert list(table.method) == ["dynaquant", "ilp_a8_ptq", "ilp_bops_qat"]  # DynaQuant first, fp32 not a row
    assert table.set_index("method").loc["ilp_bops_qat", "basis"].startswith("equal bit-operations")


def test_plans_table_labels_weight_and_input_bits(report):
    images = pd.DataFrame([{"quality": 1, "method": "ilp_bops_ptq", "bits:g_a.0": 6, "act:g_a.0": 8},
                           {"quality": 1, "method": "ilp_ptq", "bits:g_a.0": 6, "act:g_a.0": 32},
                           {"quality": 1, "method": "dynaquant", "bits:g_a.0": 8, "act:g_a.0": 8}])
    table = report.plans_table(images)
    assert table.to_dict(orient="records") == [{"quality": 1, "plan": "ilp_bops", "g_a.0": "w6a8"},
                                               {"quality": 1, "plan": "ilp", "g_a.0": "w6"}]


def test_the_work_folder_is_keyed_by_the_weights_and_the_settings(study):
    import argparse

    import torch
    from compressai.models import ScaleHyperprior

    torch.manual_seed(0)
    model = ScaleHyperprior(8, 12)
    args = argparse.Namespace(candidates=[4, 6, 8], target_bits=6.0, steps=100, batch_size=8, eval_limit=None,
                              seed=0, act_candidates=[4, 6, 8], act_observer="mse", train_dir="data/train")
    key = study.work_key(model, args)
    assert len(key) == 12 and study.work_key(model, args) == key
    assert study.work_key(model, argparse.Namespace(**{**vars(args), "steps": 300})) != key
    with torch.no_grad():
        model.g_a[0].weight.add_(1e-3)  # other weights (a new checkpoint): another folder
    assert study.work_key(model, args) != key
