"""Pairwise interaction terms in the cost table: validation naming the pair, the one objective, round trips."""

import ast
import json
import re
from pathlib import Path

import numpy as np
import pytest

from bitalloc import BitPlan, CostTable, CostTableError
from bitalloc.costs import plan_objective
from bitalloc.pairwise import ConditionalCost

ROOT = Path(__file__).resolve().parents[1]
BITS = (2, 4, 8)


def table(pairwise=None, **kw):
    cost = [[0.5, 0.2, 0.0], [0.9, 0.3, 0.1], [0.4, 0.1, 0.0]]
    return CostTable.from_arrays(["g_a.0", "h_s.0", "h_s.2"], BITS, cost, num_params=[100, 30, 20],
                                 pairwise=pairwise, **kw)


def interactions():
    return {("h_s.0", "h_s.2"): [[0.7, 0.1, 0.0], [0.1, 0.0, 0.0], [0.0, 0.0, 0.0]],
            ("g_a.0", "h_s.2"): [[-0.2, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.05]]}


def test_objective_adds_the_pairwise_terms_of_the_plan():
    t = table(interactions())
    assert t.objective([0, 0, 0]) == pytest.approx(0.5 + 0.9 + 0.4 + 0.7 - 0.2)
    assert t.objective([2, 1, 2]) == pytest.approx(0.0 + 0.3 + 0.0 + 0.0 + 0.05)
    plan = BitPlan({"g_a.0": 2, "h_s.0": 2, "h_s.2": 2})
    assert plan.cost(t) == t.objective([0, 0, 0])  # BitPlan's objective is the table's
    batch = plan_objective(t.cost, np.array([[0, 0, 0], [2, 1, 2]]), t.pair_terms)
    np.testing.assert_allclose(batch, [t.objective([0, 0, 0]), t.objective([2, 1, 2])])
    assert table().objective([0, 0, 0]) == pytest.approx(1.8) and table().pair_terms is None


def test_conditional_costs_are_the_objective_change_of_a_move():
    t = table(interactions())
    rng = np.random.default_rng(0)
    cond = ConditionalCost(t.cost, t.pair_terms, np.array([0, 1, 2]))
    for _ in range(20):
        l, k = int(rng.integers(3)), int(rng.integers(3))
        before = t.objective(cond.choice)
        change = cond.matrix[l, k] - cond.matrix[l, cond.choice[l]]
        cond.move(l, k)
        assert t.objective(cond.choice) == pytest.approx(before + change, abs=1e-12)
    assert sorted(cond.neighbours(2).tolist()) == [0, 1] and cond.neighbours(1).tolist() == [2]


@pytest.mark.parametrize("pairwise, text", [
    ({("h_s.0", "h_s.9"): np.zeros((3, 3))}, r"pairwise term \('h_s.0', 'h_s.9'\) names layer 'h_s.9', which is not"),
    ({("h_s.0", "h_s.0"): np.zeros((3, 3))}, r"pairwise term \('h_s.0', 'h_s.0'\) pairs a layer with itself"),
    ({("h_s.0", "h_s.2"): np.zeros((3, 3)), ("h_s.2", "h_s.0"): np.zeros((3, 3))},
     r"pairwise term \('h_s.2', 'h_s.0'\) is given twice, also as \('h_s.0', 'h_s.2'\)"),
    ({("h_s.0", "h_s.2"): np.zeros((3, 2))},
     r"pairwise term \('h_s.0', 'h_s.2'\) has shape \(3, 2\), expected \(3, 3\)"),
    ({("h_s.0", "h_s.2"): [[0, 0, 0], [0, np.nan, 0], [0, 0, 0]]},
     r"pairwise term \('h_s.0', 'h_s.2'\) at \(4, 4\) bits is nan; it must be finite"),
    ({("h_s.0", "h_s.2"): [["a"] * 3] * 3}, r"pairwise term \('h_s.0', 'h_s.2'\) is not numeric"),
    ({"h_s.0": np.zeros((3, 3))}, r"pairwise key 'h_s.0' must be a pair of layer names"),
    ([("h_s.0", "h_s.2")], r"pairwise must be a mapping"),
    ({("h_s.0", "h_s.2"): np.full((3, 3), 1e308), ("g_a.0", "h_s.2"): np.full((3, 3), -1e308),
      ("g_a.0", "h_s.0"): np.full((3, 3), 1e308)}, r"pairwise terms add up to more than the float range"),
], ids=["unknown-layer", "self-pair", "twice", "shape", "nan", "text", "bad-key", "not-mapping", "overflow"])
def test_bad_pairwise_terms_name_the_pair(pairwise, text):
    with pytest.raises(CostTableError, match=text):
        table(pairwise)


def test_stored_terms_are_read_only_copies():
    m = np.zeros((3, 3))
    t = table({("h_s.0", "h_s.2"): m})
    m[0, 0] = 5.0
    assert t.pairwise[("h_s.0", "h_s.2")][0, 0] == 0.0
    with pytest.raises(ValueError):
        t.pairwise[("h_s.0", "h_s.2")][0, 0] = 1.0
    with pytest.raises(TypeError):
        t.pairwise[("a", "b")] = m  # type: ignore[index]


def test_round_trips_through_frame_csv_and_json(tmp_path):
    t = table(interactions(), hessian_trace=[1.0, 2.0, 3.0])
    f = t.to_frame()
    assert {"pair_layer", "pair_bits"} <= set(f.columns) and len(f) == 9 + 2 * 9
    pair_rows = f[f["pair_layer"] != ""]
    assert set(zip(pair_rows["layer"], pair_rows["pair_layer"])) == set(interactions())
    assert CostTable.from_frame(f) == t
    t.to_csv(tmp_path / "t.csv")
    assert CostTable.from_csv(tmp_path / "t.csv") == t
    t.to_json(tmp_path / "t.json")
    back = CostTable.from_json(tmp_path / "t.json")
    assert back == t and back.objective([0, 0, 0]) == t.objective([0, 0, 0])
    assert json.loads(t.to_json())["version"] == 2  # a reader that would drop the terms refuses the file
    assert t != t.replace(pairwise={}) and t.replace(pairwise={}) == table(hessian_trace=[1.0, 2.0, 3.0])


def test_a_table_without_pairs_writes_what_it_wrote_before():
    t = table()
    assert list(t.to_frame().columns) == ["layer", "kind", "branch", "num_params", "bits", "cost", "size_bits"]
    d = t.to_dict()
    assert d["version"] == 1 and "pairwise" not in d


def test_tables_pickle_and_copy():
    import copy
    import pickle

    for t in (table(interactions()), table()):
        assert pickle.loads(pickle.dumps(t)) == t and copy.deepcopy(t) == t
        assert pickle.loads(pickle.dumps(t)).objective([0, 0, 0]) == t.objective([0, 0, 0])


def test_subset_keeps_the_pairs_among_its_layers():
    s = table(interactions()).subset(["h_s.2", "h_s.0"])
    assert list(s.pairwise) == [("h_s.0", "h_s.2")] and s.objective([0, 0]) == pytest.approx(0.4 + 0.9 + 0.7)


@pytest.mark.parametrize("edit, text", [
    (lambda s: s.replace("h_s.0,,,,4,h_s.2,2,0.1,\n", ""),
     r"t.csv is not complete: the pairwise term \('h_s.0', 'h_s.2'\) has no row at \(4, 2\) bits"),
    (lambda s: s.replace("h_s.0,,,,4,h_s.2,2,0.1,", "h_s.0,,,,4,h_s.2,4,0.1,"),
     r"t.csv, line \d+: the pairwise term \('h_s.0', 'h_s.2'\) has a second row at \(4, 4\) bits"),
    (lambda s: s.replace("h_s.0,,,,4,h_s.2,2,0.1,", "h_s.0,,,,4,h_s.2,3,0.1,"),
     r"t.csv, line \d+: field 'pair_bits' of the pairwise term \('h_s.0', 'h_s.2'\) is 3, not a candidate"),
    (lambda s: re.sub(r"^h_s.0,,,,(\d),h_s.2,", r"h_s.0,,,,\1,h_s.7,", s, flags=re.M),
     r"t.csv: pairwise term \('h_s.0', 'h_s.7'\) names layer 'h_s.7', which is not in the cost table"),
    (lambda s: s.replace("h_s.0,,,,4,h_s.2,2,0.1,", "h_s.0,,,,4,h_s.2,2,x,"),
     r"t.csv, line \d+: field 'cost' is 'x', not a number"),
], ids=["missing-cell", "duplicate-cell", "bad-bits", "unknown-layer", "bad-cost"])
def test_csv_errors_name_the_line_and_pair(tmp_path, edit, text):
    path = tmp_path / "t.csv"
    table(interactions()).to_csv(path)
    original = path.read_text()
    edited = edit(original)
    assert edited != original
    path.write_text(edited)
    with pytest.raises(CostTableError, match=text):
        CostTable.from_csv(path)


@pytest.mark.parametrize("edit, text", [
    (lambda d: d["pairwise"][1].update(cost=[[0, 0, 0], [0, 0]]), r"pairwise\[1\] \('g_a.0', 'h_s.2'\): field 'cost'"),
    (lambda d: d["pairwise"][0].update(layers=["h_s.0"]), r"pairwise\[0\]: field 'layers' is \['h_s.0'\]"),
    (lambda d: d["pairwise"][0]["cost"][1].__setitem__(2, "x"), r"pairwise\[0\] \('h_s.0', 'h_s.2'\), cost\[1\]\[2\]"),
    (lambda d: d["pairwise"].append(d["pairwise"][0]), r"pairwise\[2\] \('h_s.0', 'h_s.2'\): the pair is given twice"),
    (lambda d: d.update(pairwise={}), r"field 'pairwise' is a dict; expected a list"),
], ids=["short-row", "one-layer", "text-cell", "twice", "not-a-list"])
def test_json_errors_name_the_pair(tmp_path, edit, text):
    d = table(interactions()).to_dict()
    edit(d)
    path = tmp_path / "t.json"
    path.write_text(json.dumps(d))
    with pytest.raises(CostTableError, match="t.json, " + text if not text.startswith("field") else text):
        CostTable.from_json(path)


def test_the_objective_has_one_home():
    """No module adds up chosen costs itself: every objective goes through costs.plan_objective (issue 11, item 4).
    The conformance checker's rational-arithmetic re-sum is the one deliberate, independent exception."""
    pattern = re.compile(r"(exact_sum|fsum|\.sum)\(\s*\w*cost\w*\[(rows|np\.arange)|cost\w*\[rows, \w+\]\.sum\(")
    found = []
    for top in ("bitalloc", "solvers"):
        for path in sorted((ROOT / top).rglob("*.py")):
            if path.name == "conformance.py":
                continue
            for n, line in enumerate(path.read_text().splitlines(), 1):
                if pattern.search(line):
                    found.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not found, "objective summed outside costs.plan_objective:\n" + "\n".join(found)
    tree = ast.parse((ROOT / "bitalloc" / "costs.py").read_text())
    assert "plan_cost" not in {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
