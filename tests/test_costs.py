"""CostTable and Budget: construction, validation messages, round trips."""

import math

import numpy as np
import pandas as pd
import pytest

from bitalloc import Budget, BudgetError, CostTable, CostTableError, LayerSpec, LinearConstraint

BITS = (2, 4, 8)


def table(cost=None, size=None, names=("g_a.0", "g_a.2", "g_s.0"), **kw):
    cost = np.array([[3.0, 1.0, 0.1], [5.0, 2.0, 0.0], [1.0, 0.5, 0.2]]) if cost is None else cost
    if size is None:
        kw.setdefault("num_params", [100, 300, 50])
    return CostTable.from_arrays(list(names), BITS, cost, size, **kw)


def test_from_arrays_defaults_size_to_params_times_bits():
    t = table()
    assert t.size_bits.tolist() == [[200, 400, 800], [600, 1200, 2400], [100, 200, 400]]
    assert t.layer_names == ("g_a.0", "g_a.2", "g_s.0")
    assert t.num_layers == 3 and t.num_params.tolist() == [100, 300, 50]
    assert t.min_size_bits == 900 and t.max_size_bits == 3600
    assert t.fp32_size_bits == 32 * 450


def test_arrays_are_read_only_copies():
    cost = np.array([[3.0, 1.0, 0.1], [5.0, 2.0, 0.0], [1.0, 0.5, 0.2]])
    t = table(cost)
    cost[0, 0] = 99
    assert t.cost[0, 0] == 3.0
    with pytest.raises(ValueError):
        t.cost[0, 0] = 1.0
    with pytest.raises(ValueError):
        t.size_bits[0, 0] = 1.0


@pytest.mark.parametrize("bad, text", [
    (math.nan, "cost of layer 'g_a.2' at 4 bits is nan"),
    (math.inf, "cost of layer 'g_a.2' at 4 bits is inf"),
    (-1.0, "cost of layer 'g_a.2' at 4 bits is -1.0"),
], ids=["nan", "inf", "negative"])
def test_bad_cost_names_layer_and_bits(bad, text):
    cost = np.ones((3, 3))
    cost[1, 1] = bad
    with pytest.raises(CostTableError, match=text.replace("(", r"\(")):
        table(cost)


def test_size_must_grow_with_bits():
    size = np.array([[2.0, 4, 8], [6, 6, 24], [1, 2, 4]])
    with pytest.raises(CostTableError, match="size_bits of layer 'g_a.2' does not grow with bits"):
        table(size=size)


def test_negative_or_nan_size_names_layer():
    size = np.array([[2.0, 4, 8], [6, 12, 24], [math.nan, 2, 4]])
    with pytest.raises(CostTableError, match="size_bits of layer 'g_s.0' at 2 bits is nan"):
        table(size=size)


def test_duplicate_layer_names():
    with pytest.raises(CostTableError, match="duplicate layer name 'g_a.0'"):
        table(names=("g_a.0", "g_a.2", "g_a.0"))


def test_empty_table():
    with pytest.raises(CostTableError, match="empty"):
        CostTable.from_arrays([], BITS, np.zeros((0, 3)), np.zeros((0, 3)))


@pytest.mark.parametrize("bits, text", [((4, 2, 8), "ascending"), ((0, 4, 8), "1..32"), ((2, 4, 33), "1..32"),
                                        ((), "empty")], ids=["descending", "zero", "too-large", "none"])
def test_bad_bits(bits, text):
    with pytest.raises(CostTableError, match=text):
        CostTable.from_arrays(["a"], bits, np.ones((1, len(bits))), np.arange(1, len(bits) + 1)[None, :])


def test_shape_mismatch_names_field():
    with pytest.raises(CostTableError, match="field 'cost' has shape"):
        CostTable.from_arrays(["a", "b"], BITS, np.ones((2, 2)), np.ones((2, 3)).cumsum(axis=1))


def test_optional_proxies_validated_per_layer():
    with pytest.raises(CostTableError, match="hessian_trace of layer 'g_a.2' is -1"):
        table(hessian_trace=[1.0, -1.0, 2.0])
    with pytest.raises(CostTableError, match="weight_variance has shape"):
        table(weight_variance=[1.0])


def test_to_frame_is_tidy():
    t = table(kinds=["Conv2d"] * 3, branches=["g_a", "g_a", "g_s"], hessian_trace=[1.0, 2.0, 3.0])
    f = t.to_frame()
    assert list(f.columns[:7]) == ["layer", "kind", "branch", "num_params", "bits", "cost", "size_bits"]
    assert len(f) == 9
    assert f.loc[(f.layer == "g_a.2") & (f.bits == 4), "cost"].item() == 2.0


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_round_trip(tmp_path, fmt):
    rng = np.random.default_rng(0)
    t = table(rng.random((3, 3)) / 7, kinds=["Conv2d", "ConvTranspose2d", ""], branches=["g_a", "", "g_s"],
              hessian_trace=rng.random(3), weight_variance=rng.random(3))
    path = tmp_path / f"t.{fmt}"
    getattr(t, f"to_{fmt}")(path)
    back = getattr(CostTable, f"from_{fmt}")(path)
    assert back == t
    assert [s.kind for s in back.layers] == ["Conv2d", "ConvTranspose2d", ""]


def test_json_rejects_unknown_version():
    d = table().to_dict()
    d["version"] = 99
    with pytest.raises(CostTableError, match="unsupported cost-table version 99"):
        CostTable.from_dict(d)


def test_from_frame_incomplete_names_problem():
    f = table().to_frame().iloc[:-1]
    with pytest.raises(CostTableError, match="not complete"):
        CostTable.from_frame(f)


def test_monotone_makes_cost_non_increasing_in_bits():
    t = table(np.array([[3.0, 4.0, 0.1], [5.0, 2.0, 3.0], [1.0, 0.5, 0.2]]))
    m = t.monotone()
    assert (np.diff(m.cost, axis=1) <= 0).all()
    assert m.cost.tolist()[0] == [3.0, 3.0, 0.1] and m.cost.tolist()[1] == [5.0, 2.0, 2.0]


def test_subset_keeps_order_given():
    s = table().subset(["g_s.0", "g_a.0"])
    assert s.layer_names == ("g_s.0", "g_a.0") and s.cost[0].tolist() == [1.0, 0.5, 0.2]


# Budget ------------------------------------------------------------------------------------------------------
def test_budget_from_avg_bits_is_exactly_the_uniform_size():
    overhead = np.array([[64.0], [32.0], [16.0]])
    t = table(size=np.outer([100, 300, 50], BITS) + overhead, num_params=[100, 300, 50])
    for j, b in enumerate(BITS):
        assert Budget.from_avg_bits(t, b).max_size_bits == t.size_bits[:, j].sum()
    assert Budget.from_avg_bits(t, 3).max_size_bits == (t.size_bits[:, 0].sum() + t.size_bits[:, 1].sum()) / 2
    assert t.size_to_avg_bits(Budget.from_avg_bits(t, 5.5).max_size_bits) == pytest.approx(5.5)


def test_budget_from_compression_ratio():
    t = table()
    assert Budget.from_compression_ratio(t, 4).max_size_bits == 32 * 450 / 4


@pytest.mark.parametrize("value", [0, -5, math.nan, math.inf, "x"])
def test_budget_must_be_positive_finite(value):
    with pytest.raises(BudgetError, match="max_size_bits"):
        Budget(value)


def test_budget_below_smallest_size_states_it():
    t = table()
    with pytest.raises(BudgetError, match=r"below the smallest achievable size 900 bits \(2 avg bits"):
        Budget(899).check(t)
    with pytest.raises(BudgetError, match="smallest achievable size 900 bits"):
        Budget.from_avg_bits(t, 1.5)


def test_bit_operations_constraint():
    t = table()
    c = LinearConstraint.bit_operations(t, {"g_a.0": 10, "g_a.2": 20, "g_s.0": 5}, 1e9)
    assert c.matrix(t)[0].tolist() == [10 * 2 * 8, 10 * 4 * 8, 10 * 8 * 8]
    with pytest.raises(BudgetError, match="no MAC count for layer 'g_s.0'"):
        LinearConstraint.bit_operations(t, {"g_a.0": 1, "g_a.2": 1}, 1.0)
    with pytest.raises(BudgetError, match="constraint 'bit_operations' limit"):
        Budget(1e9, extra=(LinearConstraint.bit_operations(t, {n: 1 for n in t.layer_names}, 1.0),)).check(t)


def test_layer_spec_is_frozen():
    s = LayerSpec("g_a.0", "Conv2d", 10)
    with pytest.raises(Exception):
        s.name = "x"  # type: ignore[misc]
