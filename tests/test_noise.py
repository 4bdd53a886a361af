"""Noise-aware cost tables (bitalloc.noise): the monotone fit, the noise floor and the tie-break (torch-free)."""

import itertools

import numpy as np
import pytest

from bitalloc import BitPlan, Budget, CostTable, build_allocator
from bitalloc.noise import fit_costs, isotonic_nonincreasing, noise_floor, tie_break_within_noise
from conftest import load_study


def _brute_isotonic(y, w):
    """Least squares over non-increasing sequences by exhaustive block partitions (small n)."""
    n, best = len(y), None
    for cuts in itertools.product([0, 1], repeat=n - 1):
        blocks, start = [], 0
        for i, c in enumerate(cuts, 1):
            if c:
                blocks.append((start, i))
                start = i
        blocks.append((start, n))
        fit = np.concatenate([np.full(e - s, np.average(y[s:e], weights=w[s:e])) for s, e in blocks])
        if np.all(np.diff(fit) <= 1e-12):
            err = float(np.sum(w * (y - fit) ** 2))
            if best is None or err < best[0] - 1e-12:
                best = (err, fit)
    return best[1]


@pytest.mark.parametrize("seed", range(20))
def test_isotonic_fit_is_the_least_squares_non_increasing_fit(seed):
    rng = np.random.default_rng(seed)
    y = rng.normal(size=6)
    w = rng.uniform(0.1, 3.0, size=6)
    fit, pooled = isotonic_nonincreasing(y, w)
    np.testing.assert_allclose(fit, _brute_isotonic(y, w), atol=1e-10)
    assert np.all(np.diff(fit) <= 1e-12)
    # pooled weight: the sum of the weights of the entries fitted to one value
    for v in np.unique(fit.round(12)):
        block = np.isclose(fit, v, atol=1e-12)
        assert pooled[block] == pytest.approx(np.full(block.sum(), w[block].sum()))


def test_isotonic_fit_refuses_bad_input():
    with pytest.raises(ValueError, match="positive finite weights"):
        isotonic_nonincreasing([1.0, np.nan])
    with pytest.raises(ValueError, match="one length"):
        isotonic_nonincreasing([1.0, 2.0], [1.0])


def test_fit_costs_is_monotone_non_negative_and_snaps_to_zero_within_noise_when_asked():
    bits_zeta = np.array([[0.5, 0.7, 0.02, 0.001, -0.002, 0.0004],   # 3 bits noisier than 2: pooled
                          [-0.01, -0.006, -0.003, -0.001, 0.0, 0.0]])  # lowers the loss alone: 0
    se = np.array([[0.02, 0.2, 0.004, 0.001, 0.001, 0.0002],
                   [0.001, 0.0005, 0.0003, 0.0003, 0.0002, 0.0]])
    cost, cost_se = fit_costs(bits_zeta, se, snap_z=2.0)
    assert (cost >= 0).all() and (np.diff(cost, axis=1) <= 0).all()
    assert cost[0, 0] == cost[0, 1] and 0.5 < cost[0, 0] < 0.7  # pooled, weighted toward the precise 2-bit cell
    assert cost[0, 2] == pytest.approx(0.02)  # 5 standard errors: kept
    assert (cost[0, 3:] == 0).all()  # within 2 standard errors: noise, and every cell with more bits too
    assert (cost[1] == 0).all()
    assert cost_se[0, 0] == pytest.approx(1 / np.sqrt(1 / 0.02 ** 2 + 1 / 0.2 ** 2))
    kept, _ = fit_costs(bits_zeta, se)
    assert kept[0, 3] > 0  # by default nothing is snapped: the fit as it is
    plain, none = fit_costs(bits_zeta)
    assert none is None and (np.diff(plain, axis=1) <= 0).all() and plain[0, 3] > 0


def test_noise_floor_is_z_times_the_median_standard_error():
    assert noise_floor([[0.1, 0.3], [np.nan, 0.2]], z=2) == pytest.approx(0.4)
    assert np.isnan(noise_floor([[np.nan, 0.0]]))


def _table(cost, sizes=(10.0, 20.0, 40.0)):
    cost = np.asarray(cost, dtype=float)
    size = np.tile(np.asarray(sizes) * np.arange(1, cost.shape[0] + 1)[:, None], 1)
    return CostTable.from_arrays([f"l{i}" for i in range(cost.shape[0])], (2, 4, 8), cost, size,
                                 num_params=[int(s) for s in size[:, 0]])


def test_tie_break_makes_the_bigger_plan_win_among_ties_and_keeps_real_differences():
    # costs tie (all 0 at 4 and 8 bits): the allocators may leave the budget unused; with the tie-break they do not
    table = _table([[1.0, 0.0, 0.0], [2.0, 0.0, 0.0], [3.0, 0.0, 0.0], [4.0, 0.0, 0.0]])
    budget = Budget(table.max_size_bits)
    assert build_allocator("ilp").allocate(table, budget).size_bits < table.max_size_bits  # what it fixes
    tied = tie_break_within_noise(table, noise_floor=1e-3)
    for name in ("ilp", "greedy", "exact"):
        plan = build_allocator(name).allocate(tied, budget).plan
        assert plan.size_bits(tied) == table.max_size_bits, name
    # the added cost of any plan is at most share * floor, and equals it for the smallest plan
    smallest = np.zeros(4, dtype=int)
    low, high = BitPlan.from_choices(table, smallest), BitPlan.from_choices(table, np.full(4, 2))
    assert low.cost(tied) - low.cost(table) == pytest.approx(0.5e-3)
    assert high.cost(tied) == high.cost(table)
    # a real difference (above the floor) is not overturned: a 4-bit cell cheaper by 0.01 still wins at 8 bits' price
    real = _table([[1.0, 0.0, 0.01], [2.0, 0.0, 0.0], [3.0, 0.0, 0.0], [4.0, 0.0, 0.0]])
    plan = build_allocator("ilp").allocate(tie_break_within_noise(real, 1e-3), Budget(real.max_size_bits)).plan
    assert plan["l0"] == 4 and all(plan[f"l{i}"] == 8 for i in (1, 2, 3))
    with pytest.raises(ValueError, match="noise_floor must be a positive finite number"):
        tie_break_within_noise(table, float("nan"))


@pytest.mark.slow
def test_disjoint_calibration_sets_agree_better_with_the_noise_aware_table():
    """studies/noise_stability.py on the shipped Mean-Scale q4 with two sets of two 64x64 crops: over the 8-, 6-
    and 4-bit budgets the two sets' ILP plans share more of their bits with the noise-aware table, and at 8 bits
    both use the whole budget (the clipped tables leave some of it unused)."""

    from bitalloc.data import data_root

    if data_root(None) is None:
        pytest.skip("needs BITALLOC_DATA with train/")
    study = load_study("noise_stability")
    df = study.run(["mbt2018-mean"], [4], [8.0, 6.0, 4.0], n_images=2, crop=64)
    same = df.groupby("table").same_bits.sum()
    assert same["noise"] > same["clip"]
    at8 = df[(df.budget == 8.0) & (df.table == "noise")].iloc[0]
    assert at8.same_bits == 1.0 and at8.avg_bits_A == at8.avg_bits_B == 8.0
