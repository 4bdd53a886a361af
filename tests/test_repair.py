"""Measured verify-and-repair (bitalloc.repair): never over budget, never worse measured than the start."""

import numpy as np
import pytest
import torch

from bitalloc import AllocStatus, BitPlan, Budget
from bitalloc.repair import VERIFY_SUFFIX, split_verify, verify_and_repair, verifying
from bitalloc.sensitivity import calibration_batch, check_plan, measure_sensitivity
from conftest import pair_mse, toy_mlp


@pytest.fixture(scope="module")
def hyperprior_case():
    """The shipped compact Mean-Scale q4 on two 64x64 crops, and its table with the side-information layers
    (h_a, h_s) made to look free at 2 bits (cost 0, rising to 2e-4 at 8 bits): the table the ILP trusts when
    each hyper layer at 2 bits lowers the loss alone; quantized together they do not."""
    from bitalloc.models import load_model

    model = load_model("mbt2018-mean", 4).eval()
    x = calibration_batch(None, crop=64, limit=2)
    table = measure_sensitivity(model, x, bits=(2, 4, 8), calibration="mse", hessian_samples=0, progress=False)
    cost = np.array(table.cost)
    for i, name in enumerate(table.layer_names):
        if name.startswith("h_"):
            cost[i] = [0.0, 1e-4, 2e-4]
    return model, x, table.replace(cost=cost)


@pytest.mark.parametrize("allocator", ["ilp", "greedy"])
def test_repair_raises_the_layers_that_interact_and_returns_a_better_measured_plan(hyperprior_case, allocator):
    model, x, table = hyperprior_case
    budget = Budget.from_avg_bits(table, 8)
    rep = verify_and_repair(model, x, table, budget, allocator, calibration="mse", max_evals=6)
    start = rep.start.plan
    assert all(start[n] == 2 for n in table.layer_names if n.startswith("h_"))  # the table calls them free
    assert rep.start_measured == pytest.approx(check_plan(model, start, table, x, calibration="mse").measured)
    assert rep.start_measured > 0.3 and rep.measured < rep.start_measured / 5
    assert rep.improved and budget.fits(rep.plan.size_bits(table))
    assert rep.correction == ("pairwise" if allocator == "greedy" else "unary")  # greedy optimizes pair terms
    h = rep.history
    assert 2 <= len(h) <= 6 and h.iteration.tolist() == list(range(len(h)))
    assert h.plan.iloc[0] == dict(start.bits) and h.measured.iloc[0] == rep.start_measured
    assert h.measured.min() == rep.measured and (h.size_bits <= budget.max_size_bits).all()
    assert rep.predicted == pytest.approx(rep.plan.cost(table)) and rep.evaluations == len(h)


def test_the_verifying_allocator_returns_an_allocation_of_the_best_measured_plan(hyperprior_case):
    model, x, table = hyperprior_case
    budget = Budget.from_avg_bits(table, 8)
    alloc = verifying("ilp" + VERIFY_SUFFIX, model, x, calibration="mse", max_evals=4)
    assert alloc.name == "ilp+verify" and split_verify("iqp+verify") == ("iqp", True)
    assert split_verify("ilp") == ("ilp", False)
    out = alloc.allocate(table, budget)
    assert out.ok and out.status == AllocStatus.FEASIBLE and out.gap is None
    assert out.plan.meta["allocator"] == "ilp+verify" and out.plan == alloc.last.plan
    assert out.objective == pytest.approx(out.plan.cost(table)) and out.size_bits <= budget.max_size_bits
    assert 1 <= out.iterations <= 4 and out.extra["measured"] < out.extra["start_measured"]
    assert out.extra["inner"] == "ilp" and len(out.extra["history"]) == out.iterations
    row = next(r for r in out.extra["history"] if r["plan"] == dict(out.plan.bits))
    assert out.extra["learned_predicted"] == row["learned"] == alloc.last.learned_predicted
    assert "repaired" in out.message and "ilp plan measured" in out.message


@pytest.fixture(scope="module")
def mlp_case():
    model = toy_mlp(3)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 8, generator=g)
    with torch.no_grad():
        y = model(x) + 0.02 * torch.randn(64, 4, generator=g)
    data = [(x, y)]
    table = measure_sensitivity(model, data, bits=(2, 3, 4, 8), loss=pair_mse, hessian_samples=2, progress=False)
    return model, data, table


@pytest.mark.parametrize("allocator", ["ilp", "greedy", "convex", "fmpq", "uniform"])
@pytest.mark.parametrize("avg_bits", [2.5, 3.0, 4.0, 6.0])
def test_never_over_budget_and_never_worse_measured_than_the_start(mlp_case, allocator, avg_bits):
    model, data, table = mlp_case
    budget = Budget.from_avg_bits(table, avg_bits)
    rep = verify_and_repair(model, data, table, budget, allocator, loss=pair_mse, max_evals=5, tolerance=0.0)
    assert budget.exceeded(table, rep.plan.choices(table)) is None
    assert rep.measured <= rep.start_measured
    assert (rep.history.size_bits <= budget.max_size_bits).all() and len(rep.history) <= 5
    assert rep.measured == rep.history.measured.min()
    if allocator == "uniform":  # its plan ignores the costs: the learned table changes nothing, local search runs
        assert rep.converged or "local search" in set(rep.history.source)


def test_the_evaluation_and_time_budgets_stop_the_search(mlp_case):
    model, data, table = mlp_case
    budget = Budget.from_avg_bits(table, 3.0)
    one = verify_and_repair(model, data, table, budget, "uniform", loss=pair_mse, max_evals=1, tolerance=0.0)
    assert one.evaluations == 1 and one.plan == one.start.plan and not one.improved
    assert one.learned_predicted is None  # the allocator's plan: the table's prediction is the one
    quick = verify_and_repair(model, data, table, budget, "uniform", loss=pair_mse, max_evals=50, tolerance=0.0,
                              time_limit=1e-9)
    assert quick.evaluations == 1 and quick.plan == quick.start.plan
    low = Budget.from_avg_bits(table, 2.5)  # uniform 2 bits, measured far above its prediction
    wide = verify_and_repair(model, data, table, low, "uniform", loss=pair_mse, max_evals=6, tolerance=0.0)
    assert set(wide.history.source) == {"allocator", "local search"} and wide.evaluations == 6
    assert wide.measured < wide.start_measured / 2 and low.fits(wide.plan.size_bits(table))


def test_options_are_checked_and_a_failed_allocation_passes_through(mlp_case):
    model, data, table = mlp_case
    budget = Budget.from_avg_bits(table, 3.0)
    with pytest.raises(ValueError, match="max_evals must be an integer >= 1"):
        verify_and_repair(model, data, table, budget, loss=pair_mse, max_evals=0)
    with pytest.raises(ValueError, match="correction must be one of auto, unary, pairwise"):
        verify_and_repair(model, data, table, budget, loss=pair_mse, correction="group")
    with pytest.raises(ValueError, match="time_limit must be a positive number"):
        verify_and_repair(model, data, table, budget, loss=pair_mse, time_limit=0)
    with pytest.raises(TypeError, match="allocator must be a registered name"):
        verify_and_repair(model, data, table, budget, object(), loss=pair_mse)
    start = BitPlan.uniform(table.layer_names, 8)
    from bitalloc.allocation import Allocation

    over = Allocation(start, AllocStatus.FEASIBLE, start.cost(table), start.size_bits(table), 0.0, 0, "")
    with pytest.raises(Exception, match="returned a plan over the budget"):
        verify_and_repair(model, data, table, budget, loss=pair_mse, start=over)


def test_a_measure_given_replaces_the_joint_loss(mlp_case):
    from bitalloc.allocation import build_allocator

    model, data, table = mlp_case
    budget = Budget.from_avg_bits(table, 3.0)
    start = build_allocator("ilp").allocate(table, budget).plan
    low = min(start.bits, key=lambda n: (start.bits[n], n))  # the layer the ILP pushes lowest
    seen = []

    def measure(plan):  # a measurement the table does not predict: that layer hurts at its start bits or below
        seen.append(plan)
        return plan.cost(table) + (1.0 if plan.bits[low] <= start.bits[low] else 0.0)

    rep = verify_and_repair(None, None, table, budget, "ilp", measure=measure, max_evals=8, tolerance=0.0)
    assert all(isinstance(p, BitPlan) for p in seen) and len(seen) == rep.evaluations
    assert rep.start_measured == pytest.approx(start.cost(table) + 1.0)
    assert rep.plan.bits[low] > start.bits[low] and rep.measured < rep.start_measured
    assert rep.measured == pytest.approx(measure(rep.plan)) and budget.exceeded(table, rep.plan.choices(table)) is None
    with pytest.raises(TypeError, match="measure must be a function of a BitPlan"):
        verify_and_repair(model, data, table, budget, measure=3.0)


def _noisy_measure(table, start, penalty, sd, n=8):
    """Per-sample increases: the table's cost, plus ``penalty`` while the start's lowest layer stays at or below its
    start bits, plus per-sample noise of ``sd`` fixed for each plan (the same plan always measures the same)."""
    import zlib

    low = min(start.bits, key=lambda k: (start.bits[k], k))

    def measure(plan):
        rng = np.random.default_rng(zlib.crc32(repr(sorted(plan.bits.items())).encode()))
        extra = penalty if plan.bits[low] <= start.bits[low] else 0.0
        return plan.cost(table) + extra + sd * rng.standard_normal(n)

    return measure, low


def test_noise_aware_repair_moves_only_for_what_the_noise_cannot_explain(mlp_case):
    from bitalloc.allocation import build_allocator

    _, _, table = mlp_case
    budget = Budget.from_avg_bits(table, 3.0)
    start = build_allocator("ilp").allocate(table, budget).plan
    # a real interaction far above the noise: repaired as without noise awareness
    measure, low = _noisy_measure(table, start, penalty=1.0, sd=0.01)
    rep = verify_and_repair(None, None, table, budget, "ilp", measure=measure, max_evals=8, tolerance=0.0, noise_z=2)
    assert rep.plan.bits[low] > start.bits[low] and rep.measured < rep.start_measured - 0.5
    assert "measured_se" in rep.history and (rep.history.measured_se > 0).all()
    # an "excess" inside the noise: the plain repair spends measurements chasing it, the noise-aware one keeps the
    # allocator's plan after one
    measure, low = _noisy_measure(table, start, penalty=0.002, sd=0.05)
    plain = verify_and_repair(None, None, table, budget, "ilp", measure=lambda p: float(np.mean(measure(p))),
                              max_evals=8, tolerance=0.0)
    aware = verify_and_repair(None, None, table, budget, "ilp", measure=measure, max_evals=8, tolerance=0.0,
                              noise_z=2)
    assert plain.evaluations > 1 and not plain.converged
    assert aware.converged and aware.evaluations == 1 and aware.plan == aware.start.plan
    # whatever it measures, never worse than its start and never over budget
    for z in (0.5, 1.0, 3.0):
        rep = verify_and_repair(None, None, table, budget, "ilp", measure=measure, max_evals=6, tolerance=0.0,
                                noise_z=z)
        assert rep.measured <= rep.start_measured and budget.exceeded(table, rep.plan.choices(table)) is None


def test_noise_awareness_needs_per_sample_measurements(mlp_case, hyperprior_case):
    from bitalloc.sensitivity.plan_check import JointLoss

    _, _, table = mlp_case
    budget = Budget.from_avg_bits(table, 3.0)
    with pytest.raises(ValueError, match="noise_z must be a finite number >= 0"):
        verify_and_repair(None, None, table, budget, measure=lambda p: 0.0, noise_z=-1)
    with pytest.raises(ValueError, match="noise_z=2 needs a measure that returns the loss increase per calibration"):
        verify_and_repair(None, None, table, budget, measure=lambda p: 0.0, noise_z=2)
    # the joint loss per crop: its mean is the joint loss of the whole batch
    model, x, hyper = hyperprior_case
    joint = JointLoss(model, x, calibration="mse")
    plan = BitPlan.uniform(hyper.layer_names, 4)
    samples = joint.samples(plan)
    assert samples.shape == (2,) and samples.mean() == pytest.approx(joint.increase(plan), rel=1e-4)
    assert samples[0] != samples[1]


def test_a_holdout_keeps_a_repair_only_when_it_also_measures_lower_there(mlp_case):
    from bitalloc.allocation import build_allocator

    _, _, table = mlp_case
    budget = Budget.from_avg_bits(table, 3.0)
    start = build_allocator("ilp").allocate(table, budget).plan
    per_crop, low = _noisy_measure(table, start, penalty=1.0, sd=0.01)  # the search crops: the start's layer hurts

    def search(plan):
        return float(np.mean(per_crop(plan)))
    plain = verify_and_repair(None, None, table, budget, "ilp", measure=search, max_evals=8, tolerance=0.0)
    assert plain.plan.bits[low] > start.bits[low] and plain.holdout is None
    # held-out crops where the same interaction shows: the repair is confirmed and kept
    confirm = verify_and_repair(None, None, table, budget, "ilp", measure=search, max_evals=8, tolerance=0.0,
                                holdout=search)
    assert confirm.plan == plain.plan and confirm.measured == plain.measured
    assert confirm.holdout["kept"] == "best" and confirm.holdout["best"] < confirm.holdout["start"]
    # held-out crops where it does not (the search crops' penalty was theirs alone): the allocator's plan comes back
    other, _ = _noisy_measure(table, start, penalty=0.0, sd=0.01)
    held = verify_and_repair(None, None, table, budget, "ilp", measure=search, max_evals=8, tolerance=0.0,
                             holdout=other)
    assert held.holdout["kept"] == "start" and held.plan == held.start.plan and not held.improved
    assert held.measured == held.start_measured and held.holdout["best"] >= held.holdout["start"]
    # noise-aware: a held-out gain inside z standard errors of the paired difference does not confirm
    noisy, _ = _noisy_measure(table, start, penalty=0.02, sd=0.5)
    z = verify_and_repair(None, None, table, budget, "ilp", measure=per_crop, max_evals=8, tolerance=0.0, noise_z=3,
                          holdout=noisy)
    assert z.holdout["gain_se"] > 0.05 and z.holdout["start"] - z.holdout["best"] < 3 * z.holdout["gain_se"]
    assert z.holdout["kept"] == "start" and z.plan == z.start.plan
    with pytest.raises(TypeError, match="holdout must be a function of a BitPlan"):
        verify_and_repair(None, None, table, budget, "ilp", measure=search, holdout=torch.zeros(2, 3, 64, 64))
    with pytest.raises(ValueError, match="the holdout measure of the start plan is not finite"):
        verify_and_repair(None, None, table, budget, "ilp", measure=search, max_evals=8, tolerance=0.0,
                          holdout=lambda p: float("nan"))


def test_a_holdout_of_crops_is_measured_like_the_search_data(hyperprior_case):
    model, x, table = hyperprior_case
    budget = Budget.from_avg_bits(table, 3.0)
    rep = verify_and_repair(model, x, table, budget, "ilp", calibration="mse", max_evals=4, tolerance=0.0,
                            holdout=x.flip(-1))
    assert rep.measured <= rep.start_measured and budget.exceeded(table, rep.plan.choices(table)) is None
    if rep.improved:  # a repair kept was confirmed on the mirrored crops
        assert rep.holdout["kept"] == "best" and rep.holdout["best"] < rep.holdout["start"]
    else:
        assert rep.holdout is None or rep.holdout["kept"] == "start"


def _interacting_measure(table, start):
    """A measurement the additive table cannot predict: the table's cost, plus 1.0 while the two layers the ILP
    pushes lowest both stay at or below their start bits (either one raised removes it)."""
    low = sorted(start.bits, key=lambda n: (start.bits[n], n))[:2]

    def measure(plan):
        both = all(plan.bits[n] <= start.bits[n] for n in low)
        return plan.cost(table) + (1.0 if both else 0.0)

    return measure, low


def test_in_context_costs_are_measured_single_moves_and_their_re_solve_repairs(mlp_case):
    from bitalloc.allocation import build_allocator

    _, _, table = mlp_case
    budget = Budget.from_avg_bits(table, 3.0)
    start = build_allocator("ilp").allocate(table, budget).plan
    measure, low = _interacting_measure(table, start)
    seen = []
    rep = verify_and_repair(None, None, table, budget, "ilp", measure=lambda p: seen.append(p) or measure(p),
                            max_evals=60, tolerance=0.0, correction="context")
    moves = len(table.layer_names) * (len(table.bits) - 1)
    assert rep.correction == "context" and rep.evaluations == len(seen) <= 60 and rep.evaluations > moves
    assert rep.improved and rep.measured == pytest.approx(rep.start_measured - 1.0, abs=0.2)
    assert any(rep.plan.bits[n] > start.bits[n] for n in low)
    # over-budget moves were probed to learn from, never candidates: the history holds plans within the budget
    assert any(budget.exceeded(table, p.choices(table)) is not None for p in seen)
    assert (rep.history.size_bits <= budget.max_size_bits).all() and len(rep.history) < rep.evaluations
    assert budget.exceeded(table, rep.plan.choices(table)) is None and rep.measured == rep.history.measured.min()
    # converged: the last round, learned around the best plan (the last measured), re-solved to that plan itself;
    # its learned table predicts that plan and each of its single-layer moves exactly
    h = rep.history
    assert rep.converged and BitPlan(h.plan.iloc[-1]) == rep.plan
    around = rep.plan
    choice = around.choices(table)
    assert rep.learned.objective(choice) + rep.learned_offset == pytest.approx(measure(around))
    for layer in range(len(choice)):
        for b in range(len(table.bits)):
            move = choice.copy()
            move[layer] = b
            assert rep.learned.objective(move) + rep.learned_offset == pytest.approx(
                measure(BitPlan.from_choices(table, move)))
    # the re-solved plan was predicted before it was measured: exactly here, the interaction being one move away
    solved = h[h.source == "allocator (in context)"]
    assert len(solved) >= 1 and solved.learned.iloc[0] == pytest.approx(solved.measured.iloc[0])
    assert rep.learned_predicted == pytest.approx(rep.measured)  # the returned plan's, made before measuring it


def test_in_context_repair_needs_a_round_of_probes_and_stays_in_budget(mlp_case, hyperprior_case):
    model, data, table = mlp_case
    budget = Budget.from_avg_bits(table, 3.0)
    moves = len(table.layer_names) * (len(table.bits) - 1)
    with pytest.raises(ValueError, match=f"correction='context' probes every single-layer move of a plan "
                                         f"\\({moves} for this table\\).*at least {moves + 2}, got 12"):
        verify_and_repair(model, data, table, budget, loss=pair_mse, correction="context", max_evals=12)
    for avg_bits in (2.5, 4.0, 6.0):
        low = Budget.from_avg_bits(table, avg_bits)
        rep = verify_and_repair(model, data, table, low, "greedy", loss=pair_mse, max_evals=moves + 10,
                                tolerance=0.0, correction="context")
        assert low.exceeded(table, rep.plan.choices(table)) is None and rep.measured <= rep.start_measured
    # the LIC case: the hyper layers the table calls free at 2 bits are raised, measured far lower
    model, x, hyper = hyperprior_case
    budget = Budget.from_avg_bits(hyper, 8)
    rep = verify_and_repair(model, x, hyper, budget, "ilp", calibration="mse", correction="context", max_evals=40)
    assert rep.start_measured > 0.3 and rep.measured < rep.start_measured / 5
    assert budget.fits(rep.plan.size_bits(hyper))


def test_snapped_ties_keep_the_in_context_repair_from_shrinking_a_plan_on_noise():
    from bitalloc import CostTable
    from bitalloc.allocation import build_allocator
    from bitalloc.noise import within_noise

    names, bits = [f"l{i}" for i in range(4)], (4, 6, 8)
    cost = np.tile([0.05, 1e-4, 0.0], (4, 1))
    table = CostTable.from_arrays(names, bits, cost, num_params=[100, 200, 300, 400], cost_se=np.full((4, 3), 5e-3),
                                  noise_floor=0.01)
    budget = Budget.from_avg_bits(table, 8.0)
    inner = within_noise(build_allocator("ilp"))

    def measure(plan):  # every layer below 8 bits measures 0.001 lower: noise, ten times under the floor
        return plan.cost(table) - 1e-3 * sum(b < 8 for b in plan.bits.values())

    plain = verify_and_repair(None, None, table, budget, inner, measure=measure, max_evals=40, tolerance=0.0,
                              correction="context")
    snapped = verify_and_repair(None, None, table, budget, inner, measure=measure, max_evals=40, tolerance=0.0,
                                correction="context", snap_ties=True)
    full = table.plan_size(BitPlan(dict.fromkeys(names, 8)).choices(table))
    assert table.plan_size(plain.plan.choices(table)) < full  # without snapping, the noise shrinks the plan
    assert dict(snapped.plan.bits) == dict.fromkeys(names, 8) and snapped.converged
    assert table.plan_size(snapped.plan.choices(table)) == full


def test_the_study_keys_snapped_ties_only_when_set_and_needs_the_in_context_repair(tmp_path):
    from bitalloc.harness import StudySpec
    from bitalloc.study_cache import StudyCache

    with pytest.raises(ValueError, match="verify_snap_ties snaps in-context costs"):
        StudySpec(allocators=("ilp+verify",), verify_snap_ties=True)
    with pytest.raises(ValueError, match="verify_snap_ties must be True or False"):
        StudySpec(verify_snap_ties=1)

    def verify_key(**kw):
        spec = StudySpec(allocators=("ilp+verify",), verify_correction="context", verify_max_evals=72, **kw)
        c = StudyCache(tmp_path, spec, {"eval_images": "E", "calib_images": "C", "train_images": "T", "loss": None})
        c.set_weights(1, "W")
        return c.cell_key(1, "ilp+verify", 8.0, "ptq", True)["verify"]

    assert "snap_ties" not in verify_key() and verify_key(verify_snap_ties=True)["snap_ties"] is True
