"""The ``iqp`` allocator (pairwise interaction terms, solved exactly) and how the other allocators treat such terms."""

import itertools
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bitalloc import AllocStatus, Budget, CostTable, LinearConstraint, build_allocator
from bitalloc.solvers import IQPAllocator

PROPS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def pairwise_tables(draw, max_layers=8):
    """Up to 8 layers x 2-4 candidates; interactions of either sign on a random subset of the pairs."""
    bits = sorted(draw(st.sets(st.sampled_from([2, 3, 4, 6, 8]), min_size=2, max_size=4)))
    B = len(bits)
    L = draw(st.integers(1, min(max_layers, int(math.log(20_000) / math.log(B)))))
    params = draw(st.lists(st.integers(1, 300), min_size=L, max_size=L))
    size = np.outer(params, bits) + np.array(draw(st.lists(st.integers(0, 64), min_size=L, max_size=L)))[:, None]
    floats = st.floats(0, 10, allow_nan=False, allow_subnormal=False)
    cost = np.array(draw(st.lists(floats, min_size=L * B, max_size=L * B))).reshape(L, B)
    names = [f"l{i}" for i in range(L)]
    pairwise = {}
    for i, j in itertools.combinations(range(L), 2):
        if draw(st.booleans()):
            inter = st.floats(-5, 5, allow_nan=False, allow_subnormal=False)
            m = np.array(draw(st.lists(inter, min_size=B * B, max_size=B * B))).reshape(B, B)
            pairwise[(names[i], names[j]) if draw(st.booleans()) else (names[j], names[i])] = m
    return CostTable.from_arrays(names, bits, cost, size.astype(float), num_params=params, pairwise=pairwise)


def objective(table, choice):
    """Independent of the library: the plan's costs plus its pairwise terms, summed with math.fsum."""
    terms = [table.cost[l, j] for l, j in enumerate(choice)]
    idx = {n: i for i, n in enumerate(table.layer_names)}
    terms += [m[choice[idx[a]], choice[idx[b]]] for (a, b), m in table.pairwise.items()]
    return math.fsum(terms)


def brute(table, budget, ok=lambda choice: True):
    best, arg = math.inf, None
    for choice in itertools.product(range(len(table.bits)), repeat=table.num_layers):
        size = math.fsum(table.size_bits[l, j] for l, j in enumerate(choice))
        if size <= budget.max_size_bits and ok(choice):
            v = objective(table, choice)
            if v < best:
                best, arg = v, choice
    return best, arg


def close(a, b):
    return abs(a - b) <= 1e-9 * max(1.0, abs(a), abs(b))


@given(pairwise_tables(), st.floats(0, 1))
@PROPS
def test_iqp_equals_brute_force_with_pairwise_terms(table, t):
    budget = Budget(table.min_size_bits + t * (table.max_size_bits - table.min_size_bits))
    best, _ = brute(table, budget)
    r = build_allocator("iqp").allocate(table, budget)
    assert r.status == AllocStatus.OPTIMAL and r.gap == 0.0, r.message
    assert close(r.objective, best) and close(objective(table, r.plan.choices(table)), best)
    assert budget.fits(r.size_bits)


@given(pairwise_tables(max_layers=5), st.floats(0, 1))
@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_iqp_through_cbc_equals_brute_force(table, t):
    budget = Budget(table.min_size_bits + t * (table.max_size_bits - table.min_size_bits))
    r = build_allocator("iqp", solver="cbc").allocate(table, budget)
    assert r.status == AllocStatus.OPTIMAL and close(r.objective, brute(table, budget)[0]), r.message


@given(pairwise_tables(), st.floats(0, 1))
@PROPS
def test_without_pairs_iqp_is_the_additive_ilp(table, t):
    table = table.replace(pairwise={})
    budget = Budget(table.min_size_bits + t * (table.max_size_bits - table.min_size_bits))
    ilp, iqp = build_allocator("ilp").allocate(table, budget), build_allocator("iqp").allocate(table, budget)
    assert iqp.plan == ilp.plan and iqp.objective == ilp.objective and iqp.status == ilp.status
    assert "no pairwise terms, so the additive ILP" in iqp.message


def two_layers_that_hurt_together():
    """At 2 bits each layer alone is cheap, both together are dear: the additive optimum takes both low."""
    t = CostTable.from_arrays(["h_s.0", "h_s.2", "g_a.0"], (2, 8), [[0.01, 0.0], [0.01, 0.0], [0.5, 0.0]],
                              num_params=[100, 100, 100], pairwise={("h_s.0", "h_s.2"): [[1.0, 0.0], [0.0, 0.0]]})
    return t, Budget(100 * 2 * 2 + 100 * 8)  # room for one layer at 8 bits


def test_iqp_avoids_the_pair_the_additive_ilp_walks_into():
    t, budget = two_layers_that_hurt_together()
    ilp, iqp = build_allocator("ilp").allocate(t, budget), build_allocator("iqp").allocate(t, budget)
    assert dict(ilp.plan.bits) == {"h_s.0": 2, "h_s.2": 2, "g_a.0": 8} and ilp.objective == pytest.approx(1.02)
    assert iqp.status == AllocStatus.OPTIMAL and iqp.objective == pytest.approx(0.51)
    assert iqp.plan["g_a.0"] == 2 and {iqp.plan["h_s.0"], iqp.plan["h_s.2"]} == {2, 8}


def test_negative_interactions_are_used_not_clipped():
    # the two layers cancel each other's error at 2 bits: the pair is worth taking though each alone costs 1
    t = CostTable.from_arrays(["a", "b"], (2, 8), [[1.0, 0.5], [1.0, 0.5]], num_params=[10, 10],
                              pairwise={("a", "b"): [[-1.9, 0.0], [0.0, 0.0]]})
    r = build_allocator("iqp").allocate(t, Budget(t.max_size_bits))
    assert r.status == AllocStatus.OPTIMAL and dict(r.plan.bits) == {"a": 2, "b": 2}
    assert r.objective == pytest.approx(0.1)


@pytest.mark.parametrize("seed", range(3))
def test_iqp_keeps_extra_resources_bounds_and_tied_groups(seed):
    rng = np.random.default_rng(seed)
    names = [f"l{i}" for i in range(6)]
    bits = (2, 4, 6, 8)
    cost = rng.uniform(0, 1, (6, 4)) * 2.0 ** -np.arange(4)
    pairwise = {(names[i], names[i + 1]): rng.normal(0, 0.3, (4, 4)) for i in range(5)}
    t = CostTable.from_arrays(names, bits, cost, num_params=rng.integers(10, 100, 6).tolist(), pairwise=pairwise)
    macs = {n: float(m) for n, m in zip(names, rng.integers(1, 50, 6))}
    bops = LinearConstraint.bit_operations(t, macs, 0.6 * sum(macs.values()) * 8 * 8)
    budget = Budget(0.8 * t.max_size_bits, extra=(bops,))
    opts = dict(min_bits={"l0": 4}, max_bits=6, tied=[("l2", "l3")])
    r = build_allocator("iqp", **opts).allocate(t, budget)
    bm = bops.matrix(t)

    def ok(choice):
        b = [bits[j] for j in choice]
        return (math.fsum(bm[l, j] for l, j in enumerate(choice)) <= bops.max_value and b[0] >= 4
                and max(b) <= 6 and b[2] == b[3])

    best, _ = brute(t, budget, ok)
    assert r.status == AllocStatus.OPTIMAL and close(r.objective, best), r.message
    assert ok(r.plan.choices(t)) and budget.exceeded(t, r.plan.choices(t)) is None


def test_a_stopped_solve_is_feasible_with_its_gap(monkeypatch):
    from bitalloc.solvers import qmodel

    t, budget = two_layers_that_hurt_together()
    real = qmodel.solve_highs

    def stopped(model, time_limit_s=None, gap_rel=0.0):  # the solver's answer, but no proof
        res = real(model, time_limit_s, gap_rel)
        return qmodel.SolveResult(res.v, False, False, 0.0, "HiGHS: Time limit reached")

    monkeypatch.setattr(qmodel, "solve_highs", stopped)
    monkeypatch.setattr("bitalloc.solvers.iqp.solve_highs", stopped)
    r = IQPAllocator(time_limit_s=1).allocate(t, budget)
    assert r.status == AllocStatus.FEASIBLE and r.gap is not None and 0 <= r.gap <= 1
    assert "Time limit" in r.message and budget.fits(r.size_bits)


def test_no_plan_in_time_keeps_the_incumbent_with_the_solvers_bound(monkeypatch):
    from bitalloc.solvers import qmodel

    t, budget = two_layers_that_hurt_together()
    empty = qmodel.SolveResult(None, False, False, 0.0, "HiGHS: Time limit reached")
    monkeypatch.setattr("bitalloc.solvers.iqp.solve_highs", lambda *a, **k: empty)
    r = IQPAllocator(time_limit_s=1).allocate(t, budget)
    assert r.status == AllocStatus.FEASIBLE and "kept the incumbent" in r.message and "Time limit" in r.message
    assert budget.fits(r.size_bits) and r.gap is not None and r.objective == pytest.approx(0.51)


def test_a_plan_over_the_budget_from_the_solver_is_cut_off(monkeypatch):
    from bitalloc.solvers import qmodel

    t, budget = two_layers_that_hurt_together()
    real, calls = qmodel.solve_highs, []

    def sloppy(model, time_limit_s=None, gap_rel=0.0):  # first answer: every layer at 8 bits, called optimal
        calls.append(model.A.shape[0])
        if len(calls) == 1:
            v = np.zeros(model.c.size)
            v[: model.n_x] = model.column[:, 1] == 1
            return qmodel.SolveResult(v, True, False, None, "HiGHS: sloppy")
        return real(model, time_limit_s, gap_rel)

    monkeypatch.setattr("bitalloc.solvers.iqp.solve_highs", sloppy)
    r = IQPAllocator().allocate(t, budget)
    assert r.status == AllocStatus.OPTIMAL and r.objective == pytest.approx(0.51) and budget.fits(r.size_bits)
    assert calls[1] == calls[0] + 1  # one cut row added before the second solve


@pytest.mark.parametrize("name", ["ilp", "fmpq", "uniform"])
def test_allocators_that_ignore_pairwise_terms_say_so(name):
    t, budget = two_layers_that_hurt_together()
    r = build_allocator(name).allocate(t, budget)
    assert f"{name} ignored the 1 pairwise terms" in r.message and r.status == AllocStatus.FEASIBLE
    assert r.objective == pytest.approx(t.objective(r.plan.choices(t)))  # scored on the whole objective
    plain = build_allocator(name).allocate(t.replace(pairwise={}), budget)
    assert "pairwise" not in plain.message


def test_greedy_and_convex_price_moves_with_pairwise_terms():
    t, budget = two_layers_that_hurt_together()
    g = build_allocator("greedy").allocate(t, budget)
    assert "marginal costs include the 1 pairwise terms" in g.message
    assert g.objective == pytest.approx(0.51)  # the additive greedy walks into the pair (1.02)
    assert build_allocator("greedy").allocate(t.replace(pairwise={}), budget).plan["g_a.0"] == 8
    c = build_allocator("convex").allocate(t, budget)
    assert "water-filling ignored the 1 pairwise terms, the repair moves counted them" in c.message


def test_exact_enumerates_pairwise_terms_and_refuses_what_it_cannot():
    t, budget = two_layers_that_hurt_together()
    r = build_allocator("exact").allocate(t, budget)
    assert r.status == AllocStatus.OPTIMAL and r.objective == pytest.approx(0.51)
    r = build_allocator("exact", method="pareto").allocate(t, budget)
    assert r.status == AllocStatus.ERROR and "use 'iqp'" in r.message


def test_greedy_front_follows_the_whole_objective():
    t, _ = two_layers_that_hurt_together()
    f = build_allocator("greedy").front(t)
    plans = [dict(zip(t.layer_names, [8, 8, 8]))]
    for layer, b in zip(f["layer"][1:], f["bits"][1:]):
        plans.append({**plans[-1], layer: b})
    for plan, cost in zip(plans, f["cost"]):
        assert cost == pytest.approx(t.objective([t.bits.index(plan[n]) for n in t.layer_names]))


def test_a_solver_always_over_the_budget_runs_the_shared_schedule_to_its_end(monkeypatch):
    from bitalloc.solvers import qmodel
    from bitalloc.solvers.cutretry import N_CUTS, TIGHTEN

    t, budget = two_layers_that_hurt_together()
    calls = []

    def over(model, time_limit_s=None, gap_rel=0.0):  # every answer: every layer at 8 bits, over the budget
        calls.append((model.A.shape[0], float(model.hi[model.size_row])))
        v = np.zeros(model.c.size)
        v[: model.n_x] = model.column[:, 1] == 1
        return qmodel.SolveResult(v, True, False, None, "HiGHS: over")

    monkeypatch.setattr("bitalloc.solvers.iqp.solve_highs", over)
    r = IQPAllocator().allocate(t, budget)
    assert len(calls) == 1 + N_CUTS + len(TIGHTEN)  # the first solve, one per cut, one per tightening
    rows = [c[0] for c in calls]
    assert rows[N_CUTS] == rows[0] + N_CUTS and rows[-1] == rows[N_CUTS]  # cuts first, then no more rows
    limits = [c[1] for c in calls]
    assert limits[N_CUTS] == limits[0] and limits[-1] < limits[N_CUTS]  # then the budget row tightened
    assert r.status == AllocStatus.FEASIBLE and "kept the incumbent" in r.message and budget.fits(r.size_bits)
