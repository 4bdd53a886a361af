"""A cost table's uncertainty (issue 12, item 5): ``cost_se`` and ``noise_floor`` validated, kept by every copy,
round-tripped through CSV, JSON and frames, filled by ``measure_sensitivity(uncertainty=True)``; the tie-breaking
allocator wrapper; a table without them is the table of before."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pandas as pd
import pytest

from bitalloc import Budget, CostTable, build_allocator
from bitalloc.acttable import weight_view
from bitalloc.errors import CostTableError
from bitalloc.noise import within_noise

NAMES = ["g_a.0", "g_a.2", "g_s.0"]
COST = np.array([[1.0, 0.1, 0.0], [2.0, 0.5, 0.0], [0.5, 0.0, 0.0]])
SE = np.array([[0.05, 0.02, 0.01], [0.1, 0.0, 0.03], [0.02, 0.01, 0.01]])


def table(**kw) -> CostTable:
    return CostTable.from_arrays(NAMES, [2, 4, 8], COST, num_params=[100, 300, 50], **kw)


def test_round_trip_through_csv_json_frame_and_copies(tmp_path):
    t = table(cost_se=SE, noise_floor=0.04)
    t.to_csv(tmp_path / "t.csv")
    t.to_json(tmp_path / "t.json")
    for back in (CostTable.from_csv(tmp_path / "t.csv"), CostTable.from_json(tmp_path / "t.json"),
                 CostTable.from_frame(t.to_frame()), CostTable.from_dict(t.to_dict()), pickle.loads(pickle.dumps(t))):
        assert back == t and np.array_equal(back.cost_se, SE) and back.noise_floor == 0.04
    assert t.to_dict()["version"] == 1  # they change no objective: no new version
    frame = t.to_frame()
    assert frame.cost_se.tolist() == SE.ravel().tolist() and frame.noise_floor.eq(0.04).all()
    assert t != table(cost_se=SE, noise_floor=0.05) and t != table(cost_se=SE * 2, noise_floor=0.04)
    assert t != table()
    # copies keep them: replace, subset, monotone; a subset keeps its layers' rows
    assert t.replace(cost=COST * 2).noise_floor == 0.04 and np.array_equal(t.monotone().cost_se, SE)
    sub = t.subset(["g_s.0", "g_a.0"])
    assert np.array_equal(sub.cost_se, SE[[2, 0]]) and sub.noise_floor == 0.04
    assert not t.cost_se.flags.writeable
    # with pairwise terms too (the pairwise rows of a frame have no cost_se)
    joint = t.replace(pairwise={("g_a.0", "g_s.0"): np.full((3, 3), 0.01)})
    joint.to_csv(tmp_path / "p.csv")
    assert CostTable.from_csv(tmp_path / "p.csv") == joint
    # a (weight, activation) table's weight view picks each layer's standard errors with its costs
    act = CostTable.from_arrays(NAMES, [4, 4, 8], COST, num_params=[100, 300, 50], act_bits=(4, None, None),
                                cost_se=SE)
    view, pick = weight_view(act)
    assert np.array_equal(view.cost_se, SE[np.arange(3)[:, None], pick])


def test_a_table_without_them_is_the_table_of_before(tmp_path):
    t = table()
    assert t.cost_se is None and t.noise_floor is None
    assert "cost_se" not in t.to_frame() and "noise_floor" not in t.to_frame()
    assert "cost_se" not in json.dumps(t.to_dict()) and "noise_floor" not in t.to_dict()
    old = {"format": "bitalloc.costtable", "version": 1, "bits": [2, 4, 8], "layers": [  # as written before
        {"name": n, "kind": "", "num_params": p, "branch": "", "cost": list(c),
         "size_bits": [2.0 * p, 4.0 * p, 8.0 * p]} for n, p, c in zip(NAMES, [100, 300, 50], COST.tolist())]}
    assert CostTable.from_dict(old) == t
    old_csv = "layer,kind,branch,num_params,bits,cost,size_bits\n" + "".join(
        f"{n},,,{p},{b},{c},{b * p}\n" for n, p, row in zip(NAMES, [100, 300, 50], COST)
        for b, c in zip([2, 4, 8], row))
    (tmp_path / "old.csv").write_text(old_csv)
    assert CostTable.from_csv(tmp_path / "old.csv") == t


@pytest.mark.parametrize("kw, match", [
    (dict(cost_se=SE[:, :2]), r"field 'cost_se' has shape \(3, 2\), expected \(3, 3\)"),
    (dict(cost_se=np.where(SE == 0.03, -0.03, SE)), r"cost_se of layer 'g_a.2' at 8 bits is -0.03"),
    (dict(cost_se=np.where(SE == 0.05, np.nan, SE)), r"cost_se of layer 'g_a.0' at 2 bits is nan"),
    (dict(cost_se=np.where(SE == 0.0, np.inf, SE)), r"cost_se of layer 'g_a.2' at 4 bits is inf"),
    (dict(noise_floor=-1.0), r"field 'noise_floor' is -1.0; it must be a finite number >= 0"),
    (dict(noise_floor=float("nan")), r"field 'noise_floor' is nan"),
    (dict(noise_floor="0.1"), r"field 'noise_floor' is '0.1'"),
])
def test_bad_uncertainty_is_refused_naming_the_field_and_layer(kw, match):
    with pytest.raises(CostTableError, match=match):
        table(**kw)
    with pytest.raises(CostTableError, match=r"field 'cost_se' has shape \(3, 3\), expected \(3, 2\)"):
        table(cost_se=SE).replace(bits=(2, 4), cost=COST[:, :2], size_bits=table().size_bits[:, :2])


@pytest.mark.parametrize("edit, match", [
    (lambda s: s.replace(",0.1,0.02,", ",0.1,-0.02,"), r"cost_se of layer 'g_a.0' at 4 bits is -0.02"),
    (lambda s: s.replace(",0.1,0.02,", ",0.1,,"), r"t.csv, line 3: field 'cost_se' is missing"),
    (lambda s: s.replace("0.04\ng_s.0", "0.05\ng_s.0"), r"t.csv, line 7: field 'noise_floor' is 0.05, but 0.04 on "
                                                        r"line 2 \(one noise floor per table\)"),
])
def test_hand_edited_csv_uncertainty_names_the_line_and_field(tmp_path, edit, match):
    path = tmp_path / "t.csv"
    table(cost_se=SE, noise_floor=0.04).to_csv(path)
    path.write_text(edit(path.read_text()))
    with pytest.raises(CostTableError, match=match):
        CostTable.from_csv(path)


def test_hand_edited_json_uncertainty_names_the_layer_and_field():
    d = table(cost_se=SE, noise_floor=0.04).to_dict()
    d["layers"][1].pop("cost_se")
    with pytest.raises(CostTableError, match=r"layers\[1\] \('g_a.2'\): field 'cost_se' is missing"):
        CostTable.from_dict(d)
    d = table(cost_se=SE, noise_floor=0.04).to_dict()
    d["noise_floor"] = "x"
    with pytest.raises(CostTableError, match=r"field 'noise_floor' is 'x', not a number"):
        CostTable.from_dict(d)


def test_within_noise_takes_the_bigger_plan_among_ties_and_reports_the_tables_objective():
    tied = CostTable.from_arrays(["a", "b"], [4, 8], [[0.0, 0.0], [0.0, 0.0]], num_params=[100, 100],
                                 cost_se=np.full((2, 2), 1e-3), noise_floor=2e-3)
    budget = Budget(tied.max_size_bits)
    assert build_allocator("ilp").allocate(tied, budget).size_bits < tied.max_size_bits  # ties: any plan
    alloc = within_noise("ilp").allocate(tied, budget)
    assert alloc.size_bits == tied.max_size_bits and alloc.objective == 0.0
    assert alloc.extra["tie_break"] == 1e-3 and "ties within noise" in alloc.message
    # a real difference (0.1, beyond the noise floor) outweighs the tie-break's preference for the bigger plan
    real = CostTable.from_arrays(["a", "b"], [4, 8], [[0.0, 0.0], [0.1, 0.0]], num_params=[300, 100],
                                 noise_floor=2e-3)
    bigger = Budget(real.size_bits[0, 1] + real.size_bits[1, 0])  # a@8 + b@4 fits, and so does a@4 + b@8
    assert within_noise("ilp").allocate(real, bigger).plan.bits == {"a": 4, "b": 8}
    with pytest.raises(ValueError, match=r"allocator 'greedy' within noise: the cost table has no noise_floor"):
        within_noise("greedy").allocate(table(), Budget(table().max_size_bits))
    exact = tied.replace(noise_floor=0.0)  # nothing ties within noise: the table as it is
    assert within_noise("ilp").allocate(exact, budget).plan == build_allocator("ilp").allocate(exact, budget).plan


def test_measure_sensitivity_fills_the_tables_uncertainty(hyperprior, images):
    from bitalloc.sensitivity import measure_sensitivity

    kw = dict(bits=(2, 8), hessian_samples=0, progress=False, crop=64)
    plain = measure_sensitivity(hyperprior, images, **kw)
    assert plain.cost_se is None and plain.noise_floor is None
    for fit in ("clip", "isotonic"):
        t, frame = measure_sensitivity(hyperprior, images, uncertainty=True, fit=fit, return_frame=True, **kw)
        assert t.cost_se.shape == t.cost.shape and np.isfinite(t.cost_se).all() and (t.cost_se >= 0).all()
        assert (t.cost_se > 0).any() and t.noise_floor == frame.attrs["noise_floor"] > 0
        assert np.array_equal(t.cost_se, frame.pivot(index="layer", columns="bits", values="cost_se")
                              .loc[list(t.layer_names)].to_numpy())
    with pytest.raises(ValueError, match=r"uncertainty=True needs at least two calibration samples .* got 1"):
        measure_sensitivity(hyperprior, images[:1], uncertainty=True, **kw)
    assert isinstance(frame, pd.DataFrame)
