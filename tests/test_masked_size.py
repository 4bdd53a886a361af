"""A context model's causally masked weights are not stored, so they are not part of a layer's size (issue 11).

CompressAI's ``MaskedConv2d`` (the context model of ``mbt2018`` and ``cheng2020-*``) multiplies its weight by a
fixed 0/1 mask; the quantized forward pass keeps the masked positions at exactly zero
(:class:`bitalloc.fake_quant.WeightQuantizer`), so :func:`bitalloc.quant.layer_size_bits` counts only the
unmasked weights, and cost tables, budgets and plan sizes follow it.
"""

from __future__ import annotations

import pytest
import torch
from compressai.layers import MaskedConv2d
from compressai.models import JointAutoregressiveHierarchicalPriors

import bitalloc
from bitalloc.quant import layer_size_bits


@pytest.mark.parametrize("mask_type, kept", [("A", 12), ("B", 13)])  # positions before (A) / up to (B) the centre
def test_a_masked_layer_stores_only_its_unmasked_weights(mask_type, kept):
    conv = MaskedConv2d(4, 8, kernel_size=5, padding=2, mask_type=mask_type)
    for bits in (2, 4, 8):
        assert layer_size_bits(conv, bits) == 8 * 4 * kept * bits + 8 * 32
    assert layer_size_bits(torch.nn.Conv2d(4, 8, 5), 4) == 8 * 4 * 25 * 4 + 8 * 32  # an unmasked layer: all


def test_the_size_is_the_same_before_and_after_apply_plan():
    torch.manual_seed(0)
    model = JointAutoregressiveHierarchicalPriors(N=16, M=24).eval()
    before = {n: layer_size_bits(m, 4) for n, m in bitalloc.quantizable_layers(model).items()}
    q = bitalloc.apply_plan(model, bitalloc.BitPlan.uniform(list(before), 4))
    after = {n: layer_size_bits(m, 4) for n, m in bitalloc.quantizable_layers(q).items()}
    assert after == before
    assert before["context_prediction"] == 48 * 24 * 12 * 4 + 48 * 32  # (48, 24, 5, 5), mask A: 12 of 25 kept


def test_cost_table_sizes_of_a_context_model_count_the_unmasked_weights():
    torch.manual_seed(0)
    model = JointAutoregressiveHierarchicalPriors(N=16, M=24).eval()
    model.meta = {"lambda": 0.013}
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    table = bitalloc.measure_sensitivity(model, x, bits=(4, 8), hessian_samples=0, progress=False)
    layers = bitalloc.quantizable_layers(model)
    for name in table.layer_names:
        assert table.size_bits[table.index(name)].tolist() == [layer_size_bits(layers[name], b) for b in (4, 8)]
    i = table.index("context_prediction")
    kept = int(model.context_prediction.mask.sum())
    assert kept == 48 * 24 * 12 and table.size_bits[i].tolist() == [kept * b + 48 * 32 for b in (4, 8)]
    plan = bitalloc.BitPlan.uniform(list(table.layer_names), 4)
    assert table.plan_size(plan.choices(table)) == sum(layer_size_bits(m, 4) for m in layers.values())
