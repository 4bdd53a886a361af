"""BitPlan: mapping behaviour, validation, versioned JSON."""

import json

import numpy as np
import pytest

from bitalloc import BitPlan, CostTable, PlanError


def test_mapping_behaviour_and_order():
    p = BitPlan({"g_a.0": 8, "g_a.2": 4, "g_s.0": 6})
    assert list(p) == ["g_a.0", "g_a.2", "g_s.0"]
    assert p["g_a.2"] == 4 and len(p) == 3 and "g_s.0" in p
    with pytest.raises(TypeError):
        p.bits["g_a.0"] = 2  # type: ignore[index]


def test_equality_by_bits_only():
    assert BitPlan({"a": 4}, {"allocator": "ilp"}) == BitPlan({"a": 4}, {"allocator": "fmpq"})
    assert BitPlan({"a": 4}) != BitPlan({"a": 5})


@pytest.mark.parametrize("bad, text", [(True, "must be an int"), (4.0, "must be an int"), (0, "1..32"),
                                       (33, "1..32"), ("8", "must be an int")],
                         ids=["bool", "float", "zero", "too-large", "str"])
def test_bad_bits_name_layer(bad, text):
    with pytest.raises(PlanError, match=f"bits of layer 'g_a.2'.*{text}"):
        BitPlan({"g_a.0": 8, "g_a.2": bad})


def test_numpy_ints_accepted():
    assert BitPlan({"a": np.int64(4)})["a"] == 4


def test_json_round_trip_string_and_file(tmp_path):
    p = BitPlan({"g_a.0": 8, "h_s.1": 3}, {"allocator": "ilp", "budget_bits": 123.0})
    text = p.to_json()
    d = json.loads(text)
    assert d["format"] == "bitalloc.plan" and d["version"] == 1
    assert BitPlan.from_json(text) == p
    path = tmp_path / "plan.json"
    p.to_json(path)
    back = BitPlan.from_json(path)
    assert back == p and list(back) == list(p) and back.meta["allocator"] == "ilp"


def test_activation_bits_round_trip_and_weight_only_plans_stay_version_1(tmp_path):
    w = BitPlan({"g_a.0": 8, "h_s.1": 3}, {"allocator": "ilp"})
    old_text = ('{"format": "bitalloc.plan", "version": 1, "bits": {"g_a.0": 8, "h_s.1": 3}, '
                '"meta": {"allocator": "ilp"}}')  # what bitalloc wrote before activation bits existed
    assert json.loads(w.to_json()) == json.loads(old_text) and BitPlan.from_json(old_text) == w
    wa = BitPlan({"g_a.0": 8, "h_s.1": 3}, {"allocator": "ilp"}, act_bits={"h_s.1": 6, "g_a.0": 8})
    d = json.loads(wa.to_json())
    assert d["version"] == 2 and d["act_bits"] == {"g_a.0": 8, "h_s.1": 6}  # in the plan's layer order
    wa.to_json(tmp_path / "p.json")
    back = BitPlan.from_json(tmp_path / "p.json")
    assert back == wa and back != w and hash(back) != hash(w) and back.weights_only() == w
    assert BitPlan.uniform(["a", "b"], 4, act_bits=8).act_bits == {"a": 8, "b": 8}
    assert "act_bits" in repr(wa) and "act_bits" not in repr(w)


def test_activation_bits_are_checked():
    with pytest.raises(PlanError, match="activation bits for layer 'x', which has no weight bits"):
        BitPlan({"a": 4}, act_bits={"x": 8})
    with pytest.raises(PlanError, match="activation bits of layer 'a' is 40"):
        BitPlan({"a": 4}, act_bits={"a": 40})
    with pytest.raises(PlanError, match="'act_bits', which needs version 2"):
        BitPlan.from_dict({"format": "bitalloc.plan", "version": 1, "bits": {"a": 4}, "act_bits": {"a": 8}})
    with pytest.raises(PlanError, match="version 2 lacks the mapping field 'act_bits'"):
        BitPlan.from_dict({"format": "bitalloc.plan", "version": 2, "bits": {"a": 4}})


def test_bit_operations_are_macs_times_weight_times_activation_bits():
    p = BitPlan({"a": 4, "b": 8}, act_bits={"a": 6})
    assert p.bit_operations({"a": 100, "b": 10}) == 100 * 4 * 6 + 10 * 8 * 32  # b's input stays float32
    assert p.bit_operations({"a": 100, "b": 10}, float_act_bits=16) == 100 * 4 * 6 + 10 * 8 * 16
    with pytest.raises(PlanError, match="no MAC count for layer 'b'"):
        p.bit_operations({"a": 100})


@pytest.mark.parametrize("patch, text", [({"version": 3}, "unsupported bit-plan version 3"),
                                         ({"format": "other"}, "not a bit plan"),
                                         ({"bits": [1, 2]}, "field 'bits'")],
                         ids=["version", "format", "bits"])
def test_json_rejects(patch, text):
    d = {"format": "bitalloc.plan", "version": 1, "bits": {"a": 4}} | patch
    with pytest.raises(PlanError, match=text):
        BitPlan.from_json(json.dumps(d))


def test_avg_bits_and_size():
    t = CostTable.from_arrays(["a", "b"], (4, 8), np.zeros((2, 2)), num_params=[100, 300])
    p = BitPlan({"a": 8, "b": 4})
    assert p.avg_bits() == 6.0
    assert p.avg_bits(t) == (8 * 100 + 4 * 300) / 400
    assert p.size_bits(t) == 800 + 1200
    assert BitPlan.uniform(t.layer_names, 8).size_bits(t) == t.max_size_bits


def test_plan_must_cover_table():
    t = CostTable.from_arrays(["a", "b"], (4, 8), np.zeros((2, 2)), num_params=[1, 1])
    with pytest.raises(PlanError, match="no entry for layer 'b'"):
        BitPlan({"a": 4}).size_bits(t)
    with pytest.raises(PlanError, match="layer 'a' has 5 bits, not a candidate"):
        BitPlan({"a": 5, "b": 4}).size_bits(t)


@pytest.mark.parametrize("bits, text", [
    ({"a": 8}, r"no entry for layer 'b' \(nor for 'c'\) of the cost table"),
    ({"a": 8, "b": 4, "c": 4, "zz": 8, "yy": 2}, r"bit plan has layers 'zz', 'yy' which the cost table lacks"),
    ({"a": 8, "zz": 8}, r"no entry for layer 'b' \(nor for 'c'\) of the cost table; and has layer 'zz' which"),
], ids=["missing", "unknown", "both"])
def test_measures_name_every_missing_or_unknown_layer(bits, text):
    t = CostTable.from_arrays(["a", "b", "c"], (4, 8), np.zeros((3, 2)), num_params=[100, 300, 50])
    p = BitPlan(bits)
    for measure in (p.avg_bits, p.size_bits, p.cost):
        with pytest.raises(PlanError, match=text):
            measure(t)


def test_size_and_cost_use_the_tables_exact_sums():
    t = CostTable.from_arrays(["a", "b", "c"], (4, 8), [[0.1, 0.0], [1e16, 0.0], [-0.0, 0.0]],
                              [[0.1, 0.2], [1e16, 2e16], [1.0, 2.0]])
    p = BitPlan({"a": 4, "b": 4, "c": 4})
    assert p.size_bits(t) == t.plan_size([0, 0, 0]) == 1e16 + 1.1
    assert p.cost(t) == t.objective([0, 0, 0])
