"""Allocators: registry, properties over random tables (hypothesis), optimality against brute force."""

import itertools

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bitalloc import (AllocStatus, Allocation, Allocator, Budget, BudgetError, CostTable, CostTableError,
                      LinearConstraint, available_allocators, build_allocator, pareto_front)
from bitalloc.solvers import (ConvexAllocator, ExactAllocator, FMPQAllocator, GreedyAllocator, ILPAllocator,
                              IQPAllocator, UniformAllocator)

NAMES = ["convex", "exact", "fmpq", "greedy", "ilp", "iqp", "uniform"]
CLASSES = {"fmpq": FMPQAllocator, "ilp": ILPAllocator, "convex": ConvexAllocator, "greedy": GreedyAllocator,
           "uniform": UniformAllocator, "exact": ExactAllocator, "iqp": IQPAllocator}
PROPS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def tables(draw, max_layers=6, max_bits=4, strictly_decreasing=False):
    L = draw(st.integers(1, max_layers))
    bits = sorted(draw(st.sets(st.sampled_from([2, 3, 4, 5, 6, 8]), min_size=1, max_size=max_bits)))
    B = len(bits)
    params = draw(st.lists(st.integers(1, 300), min_size=L, max_size=L))
    overhead = draw(st.lists(st.integers(0, 64), min_size=L, max_size=L))
    size = np.outer(params, bits) + np.array(overhead)[:, None]
    cost = np.array(draw(st.lists(st.floats(0, 100, allow_nan=False, allow_subnormal=False),
                                  min_size=L * B, max_size=L * B))).reshape(L, B)
    monotone = draw(st.booleans())
    if strictly_decreasing:  # more bits always strictly better
        cost = np.sort(cost, axis=1)[:, ::-1] + np.arange(B)[::-1][None, :] * 0.5
    elif monotone:
        cost = np.minimum.accumulate(cost, axis=1)
    return CostTable.from_arrays([f"l{i}" for i in range(L)], bits, cost, size.astype(float), num_params=params)


def budget_between(table, t):
    return Budget(table.min_size_bits + t * (table.max_size_bits - table.min_size_bits))


def brute(table, budget, extra_ok=lambda choice: True):
    best, arg = np.inf, None
    rows = np.arange(table.num_layers)
    for choice in itertools.product(range(len(table.bits)), repeat=table.num_layers):
        c = np.array(choice)
        if table.size_bits[rows, c].sum() <= budget.max_size_bits and extra_ok(c):
            v = table.cost[rows, c].sum()
            if v < best:
                best, arg = v, c
    return best, arg


def close(a, b):
    return abs(a - b) <= 1e-9 * max(1.0, abs(a), abs(b))


# registry ----------------------------------------------------------------------------------------------------
def test_available_allocators():
    assert available_allocators() == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_build_allocator_builds_exact_type(name):
    a = build_allocator(name)
    assert type(a) is CLASSES[name] and a.name == name and isinstance(a, Allocator)


def test_build_allocator_passes_options_and_rejects_unknown():
    assert build_allocator("ilp", time_limit_s=10).time_limit_s == 10
    with pytest.raises(ValueError, match="unknown allocator 'nope'; available: convex, exact"):
        build_allocator("nope")
    with pytest.raises(ValueError, match="unknown method"):
        build_allocator("ilp", method="magic")


# properties --------------------------------------------------------------------------------------------------
@PROPS
@given(tables(), st.floats(0, 1))
def test_every_plan_fits_and_ilp_is_best(table, t):
    budget = budget_between(table, t)
    results = {n: build_allocator(n).allocate(table, budget) for n in NAMES}
    for name, r in results.items():
        assert isinstance(r, Allocation)
        assert r.status in (AllocStatus.OPTIMAL, AllocStatus.FEASIBLE), (name, r.message)
        assert r.size_bits <= budget.max_size_bits, name
        assert r.plan.size_bits(table) == r.size_bits and close(r.plan.cost(table), r.objective)
    ilp = results["ilp"]
    assert ilp.status == AllocStatus.OPTIMAL and ilp.extra["gap"] == 0.0
    for name, r in results.items():
        assert ilp.objective <= r.objective + 1e-9 * max(1.0, abs(r.objective)), name
    assert close(ilp.objective, results["exact"].objective)


@PROPS
@given(tables(max_layers=5), st.floats(0, 1))
def test_ilp_and_exact_methods_match_brute_force(table, t):
    budget = budget_between(table, t)
    best, _ = brute(table, budget)
    for alloc in (ILPAllocator(), ILPAllocator(method="structured", max_states=1), ExactAllocator(method="brute"),
                  ExactAllocator(method="grid"), ExactAllocator(method="pareto")):
        r = alloc.allocate(table, budget)
        assert r.status == AllocStatus.OPTIMAL, r.message
        assert close(r.objective, best), (alloc, r.objective, best)


@settings(max_examples=15, deadline=None)
@given(tables(max_layers=4, max_bits=3), st.floats(0, 1))
def test_full_pulp_model_matches_brute_force(table, t):
    budget = budget_between(table, t)
    r = ILPAllocator(method="pulp").allocate(table, budget)
    assert r.status == AllocStatus.OPTIMAL and close(r.objective, brute(table, budget)[0])


@PROPS
@given(tables(strictly_decreasing=True))
def test_extreme_budgets(table):
    high = Budget(table.max_size_bits)
    low = Budget(table.min_size_bits)
    for name in NAMES:
        a = build_allocator(name)
        assert set(a.allocate(table, high).plan.bits.values()) == {table.bits[-1]}, name
        assert set(a.allocate(table, low).plan.bits.values()) == {table.bits[0]}, name


@pytest.mark.parametrize("name", NAMES)
def test_budget_below_smallest_size_raises_before_solving(name):
    t = CostTable.from_arrays(["a", "b"], (4, 8), [[1.0, 0.0], [1.0, 0.0]], num_params=[10, 10])
    with pytest.raises(BudgetError, match="smallest achievable size 80 bits"):
        build_allocator(name).allocate(t, Budget(79))


@pytest.mark.parametrize("name", NAMES)
def test_every_allocator_raises_the_typed_error_for_a_budget_too_small(name):
    from bitalloc.errors import BudgetTooSmallError

    t = CostTable.from_arrays(["a", "b"], (4, 8), [[1.0, 0.0], [1.0, 0.0]], num_params=[10, 10])
    with pytest.raises(BudgetTooSmallError, match=r"budget of 79 bits .* smallest achievable size 80 bits"):
        build_allocator(name).allocate(t, Budget(79))


def test_allocate_does_not_mutate_table():
    rng = np.random.default_rng(1)
    t = CostTable.from_arrays([f"l{i}" for i in range(8)], (2, 4, 8), rng.random((8, 3)), num_params=[5] * 8)
    before = t.to_json()
    for name in NAMES:
        build_allocator(name).allocate(t, Budget.from_avg_bits(t, 4))
    assert t.to_json() == before


# ilp extras --------------------------------------------------------------------------------------------------
def random_table(L, bits=(2, 4, 6, 8), seed=0):
    rng = np.random.default_rng(seed)
    p = rng.integers(10, 500, L)
    scale = rng.lognormal(0, 1, L) * p  # drawn before the noise, as the one-line form did
    cost = scale[:, None] * 2.0 ** (-2 * np.array(bits))[None, :] * rng.uniform(0.7, 1.3, (L, len(bits)))
    return CostTable.from_arrays([f"l{i}" for i in range(L)], bits, cost, num_params=p)


@pytest.mark.parametrize("seed", range(4))
def test_ilp_second_resource_matches_brute_force(seed):
    t = random_table(5, seed=seed)
    rng = np.random.default_rng(seed)
    bops = LinearConstraint.bit_operations(t, {n: float(m) for n, m in zip(t.layer_names, rng.integers(1, 100, 5))},
                                           max_value=0.0)
    m = bops.matrix(t)
    limit = float(m.min(axis=1).sum() + 0.4 * (m.max(axis=1).sum() - m.min(axis=1).sum()))
    budget = Budget.from_avg_bits(t, 6, extra=(LinearConstraint("bops", bops.coeffs, limit),))
    r = ILPAllocator().allocate(t, budget)
    rows = np.arange(5)
    best, _ = brute(t, budget, lambda c: m[rows, c].sum() <= limit)
    assert r.status == AllocStatus.OPTIMAL and close(r.objective, best)
    assert m[rows, r.plan.choices(t)].sum() <= limit * (1 + 1e-9)


def test_ilp_min_max_bits_and_tied_groups():
    t = random_table(6, seed=3)
    budget = Budget.from_avg_bits(t, 4)
    r = ILPAllocator(min_bits={"l0": 6}, max_bits=6).allocate(t, budget)
    assert r.plan["l0"] == 6 and max(r.plan.bits.values()) <= 6
    col = {b: j for j, b in enumerate(t.bits)}
    best, _ = brute(t, budget, lambda c: c[0] == col[6] and (c <= col[6]).all())
    assert close(r.objective, best)
    r = ILPAllocator(tied=[["l1", "l2", "l3"]]).allocate(t, budget)
    assert r.plan["l1"] == r.plan["l2"] == r.plan["l3"]
    best, _ = brute(t, budget, lambda c: c[1] == c[2] == c[3])
    assert r.status == AllocStatus.OPTIMAL and close(r.objective, best)


def test_ilp_bounds_that_cannot_fit_are_infeasible():
    t = random_table(4)
    r = ILPAllocator(min_bits=8).allocate(t, Budget.from_avg_bits(t, 4))
    assert r.status == AllocStatus.INFEASIBLE and r.plan is None and "above the budget" in r.message


def test_ilp_rejects_unknown_layer_in_options():
    t = random_table(3)
    with pytest.raises(ValueError, match="layer 'zz'"):
        ILPAllocator(tied=[["l0", "zz"]]).allocate(t, Budget.from_avg_bits(t, 4))


def test_cbc_is_available_in_a_plain_install():
    from bitalloc.solvers.ilp import milp_solver
    solver = milp_solver()
    assert type(solver).__name__ == "PULP_CBC_CMD" and solver.available(), "pulp<4 bundles CBC; bitalloc pins it"


def test_missing_solver_is_a_clear_error(monkeypatch):
    import pulp

    from bitalloc import SolverUnavailableError
    from bitalloc.solvers.ilp import milp_solver
    monkeypatch.setattr(pulp.PULP_CBC_CMD, "available", lambda self: False)
    monkeypatch.setattr(pulp, "HiGHS", None, raising=False)
    with pytest.raises(SolverUnavailableError, match="PuLP 4 no longer bundles CBC"):
        milp_solver()


def test_other_allocators_refuse_extra_constraints():
    t = random_table(3)
    c = LinearConstraint("lat", {n: (1.0,) * 4 for n in t.layer_names}, 10.0)
    with pytest.raises(ValueError, match="'greedy' does not support extra constraints"):
        GreedyAllocator().allocate(t, Budget.from_avg_bits(t, 4, extra=(c,)))


# per-allocator behaviour -------------------------------------------------------------------------------------
def test_fmpq_converges_within_tolerance_and_12_iterations():
    t = random_table(200, bits=(2, 3, 4, 5, 6, 8), seed=5)
    for avg in (3.0, 4.5, 6.0):
        budget = Budget.from_avg_bits(t, avg)
        r = FMPQAllocator().allocate(t, budget)
        assert r.iterations <= 12 and r.size_bits <= budget.max_size_bits
        assert r.size_bits >= 0.99 * budget.max_size_bits, r.message


def test_fmpq_rule_is_lowest_bits_within_tolerance():
    t = CostTable.from_arrays(["a", "b"], (2, 4, 8), [[0.9, 0.2, 0.0], [0.3, 0.1, 0.0]], num_params=[1, 1])
    assert FMPQAllocator.choose(t.cost, 0.25).tolist() == [1, 1]
    assert FMPQAllocator.choose(t.cost, 0.35).tolist() == [1, 0]
    assert FMPQAllocator.choose(t.cost, -1.0).tolist() == [2, 2]


def test_fmpq_non_strict_may_exceed_by_tolerance_only():
    t = random_table(100, bits=(2, 3, 4, 5, 6, 8), seed=2)
    budget = Budget.from_avg_bits(t, 4.2)
    r = FMPQAllocator(strict=False).allocate(t, budget)
    assert r.status == AllocStatus.FEASIBLE and abs(r.size_bits / budget.max_size_bits - 1) <= 0.01


def test_greedy_front_is_one_pass_path():
    t = random_table(10, seed=4)
    f = GreedyAllocator().front(t)
    assert f["size_bits"].iloc[0] == t.max_size_bits and f["size_bits"].iloc[-1] == t.min_size_bits
    assert (np.diff(f["size_bits"]) < 0).all() and f["pareto"].any()


def test_convex_uses_hessian_proxies():
    t = random_table(6, seed=1)
    sensitive = t.replace(hessian_trace=[1e6, 1, 1, 1, 1, 1], weight_variance=[1.0] * 6)
    r = ConvexAllocator().allocate(sensitive, Budget.from_avg_bits(t, 4))
    b = r.extra["continuous_bits"]
    assert b[0] == 8 and (b[1:] < 8).all()
    assert r.extra["weights"].tolist() == [1e6, 1, 1, 1, 1, 1]


def test_pareto_front_frame():
    t = random_table(8)
    budgets = [Budget.from_avg_bits(t, a) for a in (2, 3, 4, 6, 8)]
    f = pareto_front(t, "ilp", budgets)
    assert list(f.columns[:3]) == ["allocator", "budget_bits", "budget_avg_bits"] and len(f) == 5
    assert (f["size_bits"] <= f["budget_bits"]).all() and (np.diff(f["cost"]) <= 1e-12).all()
    assert (f["status"] == "optimal").all()


@pytest.mark.parametrize("method", ["pulp", "structured"])
def test_ilp_never_exceeds_a_budget_a_hair_below_a_plan(method):
    # CBC's feasibility tolerance once admitted the 8-bit plan for a budget of 8 - 1e-15 bits
    t = CostTable.from_arrays(["a"], (2, 3, 8), [[1.0, 1.0, 0.0]], [[2.0, 3.0, 8.0]])
    r = ILPAllocator(method=method).allocate(t, Budget(8 * (1 - 1e-15)))
    assert r.status == AllocStatus.OPTIMAL and r.plan["a"] in (2, 3)


# budget boundaries with fractional sizes (issue 10, item 4) ------------------------------------------------------
def fractional_table(seed, L=12, bits=(2, 4, 8)):
    rng = np.random.default_rng(seed)
    p = rng.uniform(10, 100, L)
    size = np.outer(p, bits) + rng.uniform(0, 5, L)[:, None]
    cost = rng.uniform(0, 1, (L, 1)) * 2.0 ** (-2 * np.array(bits))[None, :]
    return CostTable.from_arrays([f"l{i}" for i in range(L)], bits, cost, size)


@pytest.mark.parametrize("seed, j", [(1, 0), (13, 2), (15, 1)], ids=["min", "max", "uniform-4"])
def test_budget_exactly_at_a_uniform_size_with_fractional_sizes(seed, j):
    # these tables made uniform raise IndexError (min) or stop a candidate low, exact refuse fractional sizes and
    # the PuLP path call the smallest budget infeasible
    t = fractional_table(seed)
    budget = Budget.from_avg_bits(t, t.bits[j])
    assert budget.max_size_bits == t.plan_size(np.full(t.num_layers, j))
    assert set(UniformAllocator().allocate(t, budget).plan.bits.values()) == {t.bits[j]}
    opt = ExactAllocator().allocate(t, budget)
    assert opt.status == AllocStatus.OPTIMAL and budget.fits(opt.size_bits)
    for alloc in (ILPAllocator(), ILPAllocator(method="pulp"), ExactAllocator(method="pareto")):
        r = alloc.allocate(t, budget)
        assert r.status == AllocStatus.OPTIMAL and close(r.objective, opt.objective), (alloc, r.message)
    for name in NAMES:
        r = build_allocator(name).allocate(t, budget)
        assert r.ok and budget.fits(r.size_bits), (name, r.message)


def lic_table(seed, L=6, bits=(1, 2, 3, 4, 5, 6, 7, 8)):
    rng = np.random.default_rng(seed)
    p = rng.uniform(10, 100, L)
    size = np.outer(p, bits) + rng.uniform(0, 5, L)[:, None]
    cost = (rng.lognormal(0, 2, (L, 1)) * 2.0 ** (-2 * np.array(bits, float))[None, :]
            * rng.lognormal(0, 0.3, (L, len(bits))))
    return CostTable.from_arrays([f"l{i}" for i in range(L)], bits, cost, size)


@pytest.mark.parametrize("seed, j", [(19, 7), (44, 3), (17, 7), (56, 5)])
def test_ilp_paths_reach_brute_force_optimum_at_uniform_budgets(seed, j):
    # the default path called a worse plan optimal on (19, 7) and (44, 3); the PuLP path on (17, 7) and (56, 5)
    t = lic_table(seed)
    budget = Budget.from_avg_bits(t, t.bits[j])
    best, _ = brute(t, budget)
    for method in ("structured", "pulp"):
        r = ILPAllocator(method=method).allocate(t, budget)
        assert r.status == AllocStatus.OPTIMAL and r.gap == 0.0 and close(r.objective, best), (method, r.message)


def test_budget_one_float_step_below_a_plan_excludes_it():
    t = CostTable.from_arrays(["a"], (2, 4, 8), [[0.43, 0.14, 0.026]], [[2498.57693269, 3728.13604531, 4957.6951579]])
    at = t.plan_size([1])
    below = Budget(np.nextafter(at, 0))
    for name in NAMES:
        r = build_allocator(name).allocate(t, below)
        assert r.ok and r.plan["a"] == 2, name
    r = ILPAllocator(method="pulp").allocate(t, below)  # CBC's tolerance returns the 4-bit plan: cut and re-solved
    assert r.status == AllocStatus.OPTIMAL and r.plan["a"] == 2
    assert all(build_allocator(n).allocate(t, Budget(at)).plan["a"] == 4 for n in ("ilp", "exact", "greedy"))


# the PuLP path's status (issue 10, item 3) ------------------------------------------------------------------------
def test_pulp_path_not_fooled_by_cbc_preprocessing():
    # CBC's integer preprocessing returned the plan (2, 1 bits), 4.4 times the optimum, as "Optimal"
    cost = [[1.94122226e-01, 7.40925069e-02, 2.32219026e-02, 4.94027749e-03, 1.82029507e-03, 6.18216281e-04,
             1.15235574e-04, 2.30077537e-05],
            [2.60031010e+00, 4.12039570e-01, 1.51803700e-01, 1.94009210e-02, 1.15377959e-02, 1.58654725e-03,
             6.28097352e-04, 1.34727084e-04]]
    size = [[4575.37118385, 9087.10739481, 13598.84360578, 18110.57981675, 22622.31602772, 27134.05223869,
             31645.78844965, 36157.52466062],
            [5912.04103063, 11822.57951074, 17733.11799085, 23643.65647096, 29554.19495106, 35464.73343117,
             41375.27191128, 47285.81039139]]
    t = CostTable.from_arrays(["a", "b"], tuple(range(1, 9)), cost, size)
    budget = Budget(18954.455816279682)
    r = ILPAllocator(method="pulp").allocate(t, budget)
    assert r.status == AllocStatus.OPTIMAL and close(r.objective, brute(t, budget)[0])


def test_ilp_has_no_default_time_limit_and_reports_a_stopped_solve_as_feasible(monkeypatch):
    import pulp
    assert ILPAllocator().time_limit_s is None
    t = random_table(30, bits=(2, 3, 4, 5, 6, 8), seed=9)
    budget = Budget.from_avg_bits(t, 4.3)
    solve = pulp.LpProblem.solve

    def stopped(self, solver=None, **kw):  # what PuLP reports when CBC stops on its time limit with a plan
        status = solve(self, solver, **kw)
        self.sol_status = pulp.LpSolutionIntegerFeasible
        return status

    monkeypatch.setattr(pulp.LpProblem, "solve", stopped)
    r = ILPAllocator(method="pulp", time_limit_s=5).allocate(t, budget)
    assert r.status == AllocStatus.FEASIBLE and "time limit" in r.message
    assert r.gap is not None and r.gap >= 0 and r.extra["gap"] == r.gap and r.extra["lower_bound"] <= r.objective
    assert budget.fits(r.size_bits)


def test_gap_is_a_field():
    t = random_table(8, seed=2)
    budget = Budget.from_avg_bits(t, 4)
    assert ILPAllocator().allocate(t, budget).gap == 0.0 and ExactAllocator().allocate(t, budget).gap == 0.0
    assert GreedyAllocator().allocate(t, budget).gap is None


def test_huge_costs_never_give_an_infinite_optimal():
    with pytest.raises(CostTableError, match="field 'cost' adds up to more than the float range"):
        CostTable.from_arrays(["a", "b"], (2, 8), [[1e308, 1.0], [1e308, 1.0]], num_params=[1, 1])
    # finite but enormous costs and tiny size steps: the bounds must not overflow into a false "optimal"
    t = CostTable.from_arrays(["a", "b", "c"], (2, 4, 8), [[1e300, 1e299, 1.0], [1e301, 2.0, 1.0], [5e300, 1e300, 0.0]],
                              [[1e-3, 2e-3, 3e-3], [1.0, 1.0 + 1e-12, 2.0], [5.0, 6.0, 7.0]])
    for frac in (0.0, 0.3, 0.6, 1.0):
        budget = Budget(t.min_size_bits + frac * (t.max_size_bits - t.min_size_bits))
        best, _ = brute(t, budget)
        for alloc in (ILPAllocator(), ILPAllocator(method="pulp"), ExactAllocator()):
            r = alloc.allocate(t, budget)
            assert r.status == AllocStatus.OPTIMAL and np.isfinite(r.objective) and close(r.objective, best), alloc


@pytest.mark.parametrize("make, text", [
    (lambda: FMPQAllocator(max_iter=0), "fmpq: max_iter must be an integer >= 1, got 0"),
    (lambda: FMPQAllocator(max_iter=2.5), "max_iter"),
    (lambda: FMPQAllocator(tol=float("nan")), "fmpq: tol must be a finite number"),
    (lambda: FMPQAllocator(near=-1), "fmpq: near"),
    (lambda: FMPQAllocator(far_factor=1), "fmpq: far_factor"),
    (lambda: FMPQAllocator(strict="no"), "fmpq: strict must be True or False"),
    (lambda: ILPAllocator(time_limit_s=0), "ilp: time_limit_s"),
    (lambda: ILPAllocator(gap_rel=-0.1), "ilp: gap_rel"),
    (lambda: ILPAllocator(max_states=0), "ilp: max_states"),
    (lambda: ExactAllocator(max_plans=-1), "exact: max_plans"),
    (lambda: GreedyAllocator(fill=1), "greedy: fill"),
    (lambda: ConvexAllocator(repair=None), "convex: repair"),
], ids=["fmpq-max_iter-0", "fmpq-max_iter-float", "fmpq-tol-nan", "fmpq-near", "fmpq-factor", "fmpq-strict",
        "ilp-time", "ilp-gap", "ilp-states", "exact-plans", "greedy-fill", "convex-repair"])
def test_nonsense_options_raise_naming_the_option(make, text):
    with pytest.raises(ValueError, match=text):
        make()


def test_pulp_path_not_fooled_by_cbc_cuts():
    # with CBC's cut generators on, the PuLP path called a plan 2.7e-5 worse than the optimum "optimal" here
    from bitalloc.solvers import conformance
    rng = np.random.default_rng((1, 5))
    for _ in range(63):
        t = conformance.random_table(rng)
        budgets = conformance.boundary_budgets(t, rng)
    budget = Budget(172633.648)
    assert t.num_layers == 24 and budget.max_size_bits in budgets
    r = ILPAllocator(method="pulp").allocate(t, budget)
    assert r.status == AllocStatus.OPTIMAL and close(r.objective, ExactAllocator().allocate(t, budget).objective)


def test_pulp_path_at_the_smallest_budget_is_not_infeasible():
    # the scaled size row of the all-lowest plan summed a few float steps above 1: CBC said "infeasible"
    from bitalloc.solvers import conformance
    rng = np.random.default_rng((0, 12))
    for _ in range(91):
        t = conformance.random_table(rng)
        conformance.boundary_budgets(t, rng)
    budget = Budget(t.min_size_bits)
    assert t.num_layers == 23 and budget.max_size_bits == 98503.26845221249
    r = ILPAllocator(method="pulp").allocate(t, budget)
    assert r.status == AllocStatus.OPTIMAL and set(r.plan.bits.values()) == {t.bits[0]}


def fake_cbc(monkeypatch, answer=None):
    """Replace the solve by a solver that answers 'Optimal' with each layer at its lowest modelled choice
    (``answer="lowest"``), or stops without a plan (``None``)."""
    import pulp

    def solve(self, solver=None, **kw):
        lowest: dict[int, int] = {}
        for v in self.variables():
            _, l, j = v.name.split("_")
            lowest[int(l)] = min(lowest.get(int(l), int(j)), int(j))
        for v in self.variables():
            _, l, j = v.name.split("_")
            v.varValue = None if answer is None else float(lowest[int(l)] == int(j))
        self.status = pulp.LpStatusOptimal if answer is not None else pulp.LpStatusNotSolved
        self.sol_status = pulp.LpSolutionOptimal if answer is not None else pulp.LpSolutionNoSolutionFound
        return self.status

    monkeypatch.setattr(pulp.LpProblem, "solve", solve)


def test_pulp_path_without_a_plan_in_time_keeps_the_incumbent(monkeypatch):
    t = random_table(12, bits=(2, 3, 4, 5, 6, 8), seed=3)
    budget = Budget.from_avg_bits(t, 4.5)
    fake_cbc(monkeypatch, None)
    r = ILPAllocator(method="pulp", time_limit_s=1).allocate(t, budget)
    assert r.status == AllocStatus.FEASIBLE and "time limit" in r.message and "kept the incumbent" in r.message
    assert budget.fits(r.size_bits) and r.gap is not None and 0 <= r.gap < 1


def test_pulp_path_distrusts_an_optimal_that_a_known_plan_beats(monkeypatch):
    t = random_table(12, bits=(2, 3, 4, 5, 6, 8), seed=3)
    budget = Budget.from_avg_bits(t, 4.5)
    fake_cbc(monkeypatch, "lowest")  # each layer at its lowest modelled choice: fits, far from optimal
    r = ILPAllocator(method="pulp").allocate(t, budget)
    assert r.status == AllocStatus.FEASIBLE and "a known plan costs less" in r.message
    assert r.gap is not None and r.gap > 0


# the cut-and-retry schedule shared by the PuLP path and iqp (solvers/cutretry.py) --------------------------------
def test_cut_and_retry_cuts_then_tightens_then_gives_up():
    from bitalloc.solvers.cutretry import N_CUTS, TIGHTEN, CutAndRetry

    log = []
    retry = CutAndRetry(lambda p: False, lambda p: log.append(("cut", int(p[0]))),
                        lambda t: log.append(("tighten", t)))
    solves = 0
    for attempt in retry.attempts():
        assert attempt == solves
        solves += 1
        assert not retry.accept(np.array([attempt]))
        assert retry.tightened == (attempt >= N_CUTS)
    assert solves == 1 + N_CUTS + len(TIGHTEN)
    assert log == [("cut", a) for a in range(N_CUTS)] + [("tighten", t) for t in TIGHTEN]


def test_cut_and_retry_accepts_a_plan_that_fits_without_a_step():
    from bitalloc.solvers.cutretry import CutAndRetry

    cuts, tightenings = [], []
    retry = CutAndRetry(lambda p: p[0] == 2, lambda p: cuts.append(int(p[0])), tightenings.append)
    for attempt in retry.attempts():
        if retry.accept(np.array([attempt])):
            break
    assert attempt == 2 and cuts == [0, 1] and tightenings == [] and not retry.tightened


def test_the_pulp_path_repairs_through_the_shared_schedule(monkeypatch):
    from bitalloc.solvers import cutretry, milp

    accepted = []

    class Recording(cutretry.CutAndRetry):
        def accept(self, plan):
            accepted.append(super().accept(plan))
            return accepted[-1]

    monkeypatch.setattr(milp, "CutAndRetry", Recording)
    t = CostTable.from_arrays(["a"], (2, 4, 8), [[0.43, 0.14, 0.026]], [[2498.57693269, 3728.13604531, 4957.6951579]])
    r = ILPAllocator(method="pulp").allocate(t, Budget(np.nextafter(t.plan_size([1]), 0)))
    assert r.status == AllocStatus.OPTIMAL and r.plan["a"] == 2
    assert accepted[-1] and not all(accepted)  # CBC's 4-bit plan over the budget was cut, then the 2-bit one fit
