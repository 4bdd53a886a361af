"""CostTable and Budget: construction, validation messages, round trips."""

import math

import numpy as np
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


def _lat(t, limit):
    return LinearConstraint("lat", {n: (1.0, 2.0, 3.0) for n in t.layer_names}, limit)


@pytest.mark.parametrize("make, match", [
    (lambda t: Budget(899).check(t), r"budget of 899 bits .* below the smallest achievable size 900 bits"),
    (lambda t: Budget.from_avg_bits(t, 1.5), r"budget of 675 bits .* below the smallest achievable size 900 bits"),
    (lambda t: Budget.from_compression_ratio(t, 32 * 450 / 899), "below the smallest achievable size 900 bits"),
    (lambda t: Budget(1e9, extra=(_lat(t, 2.0),)).check(t), "'lat' limit 2 is below its smallest achievable value 3"),
], ids=["check", "from_avg_bits", "from_compression_ratio", "extra"])
def test_a_budget_too_small_raises_the_typed_error_naming_budget_and_smallest(make, match):
    from bitalloc.errors import BudgetTooSmallError

    with pytest.raises(BudgetTooSmallError, match=match):
        make(table())
    Budget(900, extra=(_lat(table(), 3.0),)).check(table())  # exactly the smallest plan: fits


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


# one budget rule (issue 10, item 4) ----------------------------------------------------------------------------------
def test_sizes_add_up_the_same_in_every_order():
    from bitalloc.costs import exact_sum
    sizes = np.array([0.1] * 10 + [1e16, 1.0, -1e16])
    assert exact_sum(sizes) == exact_sum(sizes[::-1]) == exact_sum(np.sort(sizes)) == 2.0
    assert sizes.sum() != 2.0  # numpy's order loses the small terms


def test_budget_from_a_uniform_size_fits_that_plan_exactly():
    rng = np.random.default_rng(4)
    size = np.outer(rng.uniform(10, 100, 40), BITS) + rng.uniform(0, 5, 40)[:, None]
    t = CostTable.from_arrays([f"l{i}" for i in range(40)], BITS, np.zeros((40, 3)), size)
    for j, b in enumerate(BITS):
        budget = Budget.from_avg_bits(t, b)
        assert budget.fits(t.plan_size(np.full(40, j))) and budget.exceeded(t, np.full(40, j)) is None
        assert not Budget(np.nextafter(budget.max_size_bits, 0)).fits(t.plan_size(np.full(40, j)))
    assert t.min_size_bits == Budget.from_avg_bits(t, 2).max_size_bits
    assert t.max_size_bits == Budget.from_avg_bits(t, 8).max_size_bits
    Budget(t.min_size_bits).check(t)
    with pytest.raises(BudgetError, match="below the smallest achievable size"):
        Budget(np.nextafter(t.min_size_bits, 0)).check(t)


def test_exceeded_names_size_or_constraint():
    t = table()
    assert "exceeds the budget of 899 bits by 1 bits" in Budget(899).exceeded(t, [0, 0, 0])
    c = LinearConstraint("lat", {n: (1.0, 2.0, 3.0) for n in t.layer_names}, 5.0)
    assert "'lat' of 9 exceeds its limit 5" in Budget(1e9, extra=(c,)).exceeded(t, [2, 2, 2])


def test_costs_whose_total_overflows_are_refused():
    with pytest.raises(CostTableError, match=r"field 'cost' adds up to more than the float range .*layer 'g_a.0'"):
        table(np.array([[1e308, 1.0, 0.1], [1e308, 2.0, 0.0], [1.0, 0.5, 0.2]]))
    with pytest.raises(CostTableError, match="field 'size_bits' adds up"):
        table(size=np.array([[1.0, 2.0, 1e308], [1.0, 2.0, 1e308], [1.0, 2.0, 3.0]]))


# reading files (issue 10, item 5) ----------------------------------------------------------------------------------
def csv_text(tmp_path):
    t = table()
    t.to_csv(tmp_path / "t.csv")
    return (tmp_path / "t.csv").read_text()


@pytest.mark.parametrize("edit, text", [
    (lambda s: s[: s.rindex(",")], r"t.csv, line 10: field 'size_bits' is missing"),
    (lambda s: s.replace("g_s.0,,,50,8,", "g_s.0,,,50,8.7,"), r"t.csv, line 10: field 'bits' is '8.7', not an int"),
    (lambda s: s.replace(",2.0,1200", ",two,1200"), r"t.csv, line 6: field 'cost' is 'two', not a number"),
    (lambda s: s.replace(",2.0,1200", ",,1200"), r"t.csv, line 6: field 'cost' is missing"),
    (lambda s: s.replace(",2.0,1200", ",inf,1200"), r"t.csv, line 6: field 'cost' is 'inf'; it must be a finite"),
    (lambda s: "\n".join(s.splitlines()[:-1]) + "\n", r"t.csv is not complete: layer 'g_s.0' \(line 8\) has no row "
                                                       r"at 8 bits"),
    (lambda s: s + s.splitlines()[1] + "\n", r"t.csv, line 11: layer 'g_a.0' has a second row at 2 bits \(first at "
                                             r"line 2\)"),
    (lambda s: s.replace("g_a.2,,,300,4", "g_a.2,,,301,4"), r"t.csv, line 6: field 'num_params' of layer 'g_a.2' is "
                                                            r"301, but 300 on line 5"),
    (lambda s: s.replace("size_bits", "size"), r"t.csv lacks the column 'size_bits'"),
    (lambda s: s + "x,1,2,3,4,5,6,7,8\n", r"t.csv: not a readable cost-table CSV: .*Expected 7 fields"),
    (lambda s: "", r"t.csv: not a readable cost-table CSV"),
    (lambda s: s.replace(",0.1,800", ",-0.1,800"), r"t.csv: cost of layer 'g_a.0' at 8 bits is -0.1"),
], ids=["truncated", "bits-8.7", "cost-text", "cost-empty", "cost-inf", "row-missing", "row-twice", "params-differ",
        "column-missing", "extra-fields", "empty", "negative"])
def test_hand_edited_csv_names_file_line_and_field(tmp_path, edit, text):
    path = tmp_path / "t.csv"
    path.write_text(edit(csv_text(tmp_path)))
    with pytest.raises(CostTableError, match=text):
        CostTable.from_csv(path)


@pytest.mark.parametrize("edit, text", [
    (lambda s: s[: len(s) // 2], r"t.json: not valid JSON \(.* at line \d+, column \d+; truncated\?\)"),
    (lambda s: s.replace('"bits": [\n  2,', '"bits": [\n  2.5,'),
     r"t.json, bits\[0\]: field 'bits' is 2.5, not an int"),
    (lambda s: s.replace('"size_bits"', '"sizes"', 1),
     r"t.json, layers\[0\] \('g_a.0'\): field 'size_bits' is missing"),
    (lambda s: s.replace('"layers"', '"rows"'), r"t.json: field 'layers' is missing"),
    (lambda s: s.replace("0.5,", '"half",', 1), r"t.json, layers\[2\] \('g_s.0'\), cost\[1\]: field 'cost' is 'half'"),
    (lambda s: "[1, 2]", r"t.json: not a cost table \(a list"),
], ids=["truncated", "bits-2.5", "field-missing", "layers-missing", "cost-text", "not-object"])
def test_hand_edited_json_names_file_layer_and_field(tmp_path, edit, text):
    path = tmp_path / "t.json"
    table().to_json(path)
    path.write_text(edit(path.read_text()))
    with pytest.raises(CostTableError, match=text):
        CostTable.from_json(path)


def test_integral_bits_written_as_floats_still_read(tmp_path):
    path = tmp_path / "t.csv"
    text = csv_text(tmp_path).replace(",8,", ",8.0,")
    path.write_text(text)
    assert CostTable.from_csv(path) == table()
