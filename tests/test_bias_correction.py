"""Bias correction (bitalloc.bias_correction): each quantized layer's bias absorbs the mean output error of its own
weight quantization on the float model's inputs; the same model in the cost table, the joint check and the
harness; remove_plan and re-planning restore the float biases; the study keys it only when set."""

import copy

import pytest
import torch

import test_harness
from bitalloc import apply_plan, correct_bias, quantizable_layers, remove_plan
from bitalloc.bias_correction import BIAS_BUFFER, BiasCorrector
from bitalloc.harness import StudySpec, run_study
from bitalloc.objective import evaluate_loss, resolve_loss
from bitalloc.quant import quantize_weight
from bitalloc.sensitivity import JointLoss, measure_sensitivity
from bitalloc.sensitivity.probe import LossProbe
from bitalloc.study_cache import StudyCache
from conftest import pair_mse, toy_mlp


def _float_inputs(model, x):
    got, layers = {}, quantizable_layers(model)
    hooks = [m.register_forward_pre_hook(lambda mod, a, n=n: got.__setitem__(n, a[0])) for n, m in layers.items()]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return got


def test_each_layer_mean_output_error_on_its_float_inputs_vanishes(hyperprior, images):
    plan = {n: 3 for n in quantizable_layers(hyperprior)}
    q = apply_plan(hyperprior, plan, calibration="mse")
    inputs, fl, ql = _float_inputs(hyperprior, images), quantizable_layers(hyperprior), quantizable_layers(q)
    with torch.no_grad():
        before = max(float((fl[n](inputs[n]) - ql[n](inputs[n])).mean(dim=(0, 2, 3)).abs().max()) for n in plan)
    shifts = correct_bias(q, images)
    assert set(shifts) == set(plan) and before > 1e-3
    with torch.no_grad():
        for n in plan:
            err = (fl[n](inputs[n]) - ql[n](inputs[n])).mean(dim=(0, 2, 3))
            assert float(err.abs().max()) < 1e-5, n
            assert torch.equal(getattr(ql[n], BIAS_BUFFER), shifts[n])


def test_correcting_twice_does_not_add_up_and_remove_plan_restores_the_float_biases(hyperprior, images):
    plan = {n: 2 for n in quantizable_layers(hyperprior)}
    q = apply_plan(hyperprior, plan, calibration="mse")
    first = correct_bias(q, images)
    second = correct_bias(q, images)
    assert all(torch.allclose(first[n], second[n], atol=1e-6) for n in first)
    floats = {n: m.bias.detach().clone() for n, m in quantizable_layers(hyperprior).items()}
    restored = remove_plan(copy.deepcopy(q))
    replanned = apply_plan(q, {n: 8 for n in plan})  # re-planning starts from the float biases too
    for model in (restored, replanned):
        for n, m in quantizable_layers(model).items():
            assert torch.allclose(m.bias, floats[n], atol=1e-7) and not hasattr(m, BIAS_BUFFER), n
    q2 = apply_plan(hyperprior, plan, calibration="mse")
    assert not torch.equal(quantizable_layers(q2)["h_s.4"].bias, quantizable_layers(q)["h_s.4"].bias)


def test_a_float_model_is_refused_and_bias_free_layers_are_left_alone():
    model = toy_mlp()
    with pytest.raises(ValueError, match="needs a fake-quantized model"):
        correct_bias(model, [(torch.randn(4, 8), torch.randn(4, 4))])
    model[2] = torch.nn.Linear(32, 32, bias=False)
    q = apply_plan(model, {"0": 3, "2": 3, "4": 3})
    data = [(torch.randn(16, 8), torch.randn(16, 4))]
    shifts = correct_bias(q, data, loss=pair_mse)
    assert set(shifts) == {"0", "4"} and q[2].bias is None
    x = data[0][0]
    with torch.no_grad():  # a Linear's channel is its last axis: layer "0"'s mean error over the batch is gone
        err = model[0](x) - q[0](x)
    assert float(err.mean(dim=0).abs().max()) < 1e-5


def test_the_probe_measures_the_model_correct_bias_builds(hyperprior, images):
    objective = resolve_loss(hyperprior, None, None)
    layers = quantizable_layers(hyperprior)
    probe = LossProbe(hyperprior, objective, [images], layers, calibration="mse", bias_correction=True)
    probe.prepare_bias((2, 4))
    assert probe.corrector.passes == 1
    for layer in ("h_s.4", "g_a.2"):
        q = apply_plan(hyperprior, {layer: 2}, keep_float=True, calibration="mse")
        correct_bias(q, images)
        expected = evaluate_loss(q.eval(), objective, [images])["loss"]
        assert probe.losses({layer: 2})[0]["loss"] == pytest.approx(expected, rel=1e-5)
    assert probe.corrector.passes == 1  # every (layer, bits) came from the one pass


def test_the_joint_loss_with_correction_is_that_of_the_corrected_model(hyperprior, images):
    plan = {n: 3 for n in quantizable_layers(hyperprior)}
    joint = JointLoss(hyperprior, images, calibration="mse", bias_correction=True)
    q = apply_plan(hyperprior, plan, calibration="mse")
    correct_bias(q, images)
    expected = evaluate_loss(q.eval(), joint.objective, joint.batches)["loss"]
    assert joint.parts(plan)["loss"] == pytest.approx(expected, rel=1e-5)
    plain = JointLoss(hyperprior, images, calibration="mse")
    assert joint.parts(plan)["loss"] != pytest.approx(plain.parts(plan)["loss"], rel=1e-6)


def test_a_table_with_correction_has_the_same_sizes_and_other_costs(hyperprior, images):
    t0 = measure_sensitivity(hyperprior, images, bits=(2, 8), calibration="mse", hessian_samples=0, progress=False)
    t1, frame = measure_sensitivity(hyperprior, images, bits=(2, 8), calibration="mse", hessian_samples=0,
                                    progress=False, bias_correction=True, return_frame=True)
    assert frame.attrs["bias_correction"] is True
    assert (t0.size_bits == t1.size_bits).all() and not (t0.cost == t1.cost).all()


def test_the_corrector_names_an_unknown_layer(hyperprior, images):
    corrector = BiasCorrector(hyperprior, [images], lambda n, b: quantize_weight(quantizable_layers(hyperprior)[n], b))
    with pytest.raises(ValueError, match="layer 'g_a.99'"):
        corrector.shifts({"g_a.99": 4})


def test_study_spec_refuses_bias_correction_with_qat_and_keys_it_only_when_set(tmp_path):
    with pytest.raises(ValueError, match="bias_correction corrects PTQ models only"):
        StudySpec(modes=("ptq", "qat"), bias_correction=True)
    with pytest.raises(ValueError, match="must be True or False"):
        StudySpec(bias_correction="yes")
    inputs = {"eval_images": "E", "calib_images": "C", "train_images": "T", "loss": None}

    def keys(spec):
        c = StudyCache(tmp_path, spec, inputs)
        c.set_weights(1, "W")
        return (c.sensitivity_key(1), c.cell_key(1, "ilp", 6.0, "ptq", True), c.outcome_key(1, "ptq", {"a": 4}),
                c.cell_key(1, "fp32", None, "ptq", False))

    off, on = keys(StudySpec()), keys(StudySpec(bias_correction=True))
    assert all("bias_correction" not in k for k in off)
    assert all("bias_correction" in k for k in on[:3]) and on[3] == off[3]  # the float reference is not corrected
    chosen = keys(StudySpec(bias_correction=True, bias_choice=True))
    assert chosen[0] == on[0]  # the same corrected cost table
    assert all(k.get("bias_choice") is True for k in chosen[1:3]) and "bias_choice" not in chosen[3]
    assert all("bias_choice" not in k for k in on)
    with pytest.raises(ValueError, match="bias_choice chooses among the bias corrections: set bias_correction=True"):
        StudySpec(bias_choice=True)


def test_a_study_with_bias_correction_evaluates_corrected_plans(tmp_path):
    images = {"calib": torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)),
              "eval": {f"img{k}": torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(k)) for k in range(2)}}
    common = dict(qualities=(1,), allocators=("ilp", "uniform"), budgets=(4.0,), eval_limit=1, calib_images=2,
                  calib_crop=64)

    def run(spec):
        return run_study(spec, tmp_path, model_loader=test_harness.tiny_loader(), calib_images=images["calib"],
                         eval_images=images["eval"], progress=False).results.set_index(["allocator", "budget"])

    plain, corrected = run(StudySpec(**common)), run(StudySpec(**common, bias_correction=True))
    static = corrected.index.get_level_values("allocator") != "fp32"
    assert not corrected.cached[static].any() and corrected.cached[~static].all()
    assert (corrected.psnr_rgb[static] != plain.psnr_rgb.loc[corrected.index[static]]).all()
    uniform = corrected.index.get_level_values("allocator") == "uniform"  # the same plans, other biases
    assert corrected.size_bits[uniform].equals(plain.size_bits.loc[corrected.index[uniform]])
    # the chosen correction: the same plans (tables cached), each model evaluated corrected by the chooser
    import bitalloc.bias_correction as bc

    calls = []

    def recording(qmodel, *args, **kwargs):
        calls.append(qmodel)
        return chooser(qmodel, *args, **kwargs)

    chooser = bc.choose_bias_correction
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(bc, "choose_bias_correction", recording)
        chosen = run(StudySpec(**common, bias_correction=True, bias_choice=True))
    assert not chosen.cached[static].any() and len(calls) == int(static.sum())
    assert chosen.size_bits[static].equals(corrected.size_bits[static])


def test_the_report_settings_line_says_what_corrected_and_repaired():
    from bitalloc.report import settings_line

    base = {"model": "m", "qualities": (1,), "modes": ("ptq",), "allocators": ("ilp", "ilp+verify"),
            "verify_max_evals": 250}
    assert "biases corrected" not in settings_line(base) and "correction context" not in settings_line(base)
    line = settings_line({**base, "bias_correction": True, "verify_correction": "context"})
    assert "biases corrected" in line and "'+verify' correction context, at most 250 measurements" in line


def test_baking_keeps_the_corrected_biases(hyperprior, images):
    from bitalloc.bake import bake

    q = apply_plan(hyperprior, {n: 3 for n in quantizable_layers(hyperprior)}, calibration="mse")
    correct_bias(q, images)
    baked = bake(q)
    for n, m in quantizable_layers(baked).items():
        assert torch.equal(m.bias, quantizable_layers(q)[n].bias) and not hasattr(m, BIAS_BUFFER), n
    with torch.no_grad():
        assert torch.allclose(baked(images)["x_hat"], q.eval()(images)["x_hat"], atol=1e-6)


def test_gdn_layers_in_a_table_with_correction_get_no_shift(hyperprior, images):
    table = measure_sensitivity(hyperprior, images, bits=(4, 8), calibration="mse", hessian_samples=0, gdn=True,
                                progress=False, bias_correction=True)
    assert any(name.startswith("g_a.1") for name in table.layer_names)  # GDN measured, its gamma quantized alone
    corrector = BiasCorrector(hyperprior, [images], lambda n, b: quantize_weight(quantizable_layers(
        hyperprior, gdn=True)[n], b))
    assert set(corrector.shifts({"g_a.1": 4, "g_a.0": 4})) == {("g_a.0", 4)}


def test_correct_bias_can_be_limited_to_some_layers(hyperprior, images):
    plan = {n: 3 for n in quantizable_layers(hyperprior)}
    q = apply_plan(hyperprior, plan, calibration="mse")
    every = correct_bias(q, images)
    some = correct_bias(q, images, layers=["h_s.0", "h_s.2", "h_s.4"])
    assert set(some) == {"h_s.0", "h_s.2", "h_s.4"} and all(torch.allclose(some[n], every[n]) for n in some)
    floats = quantizable_layers(hyperprior)
    for n, m in quantizable_layers(q).items():  # the layers left out are back at their float bias
        assert hasattr(m, BIAS_BUFFER) == (n in some)
        if n not in some:
            assert torch.allclose(m.bias, floats[n].bias, atol=1e-6), n
    with pytest.raises(ValueError, match="layer 'g_a.9' is not a quantized layer"):
        correct_bias(q, images, layers=["g_a.9"])


def test_the_chosen_correction_is_the_combination_of_transforms_that_measures_lowest(hyperprior, images):
    from bitalloc import choose_bias_correction
    from bitalloc.models.losses import rd_loss_fn

    plan = {n: 2 for n in quantizable_layers(hyperprior)}
    q = apply_plan(hyperprior, plan, calibration="mse")
    choice = choose_bias_correction(q, images)
    m = choice.measured
    assert len(m) == 16 and set(m.groups) >= {"none", "g_a", "h_a+h_s", "g_a+g_s+h_a+h_s"}
    best = m.loc[m.loss.idxmin()]
    assert bool(best.chosen) and m.chosen.sum() == 1
    assert choice.groups == (() if best.groups == "none" else tuple(best.groups.split("+")))
    assert set(choice.layers) == {n for n in plan if n.split(".")[0] in choice.groups}
    # the model is left with exactly the chosen layers corrected, and measures what the chooser measured
    ql = quantizable_layers(q)
    assert {n for n, mod in ql.items() if hasattr(mod, BIAS_BUFFER)} == set(choice.layers)
    loss = rd_loss_fn(None, rate="coded")
    assert evaluate_loss(q, loss, [images[:1], images[1:]])["loss"] == pytest.approx(best.loss, rel=1e-5)
    ref = apply_plan(hyperprior, plan, calibration="mse")
    correct_bias(ref, images, layers=choice.layers)
    for n in choice.layers:
        assert torch.allclose(ql[n].bias, quantizable_layers(ref)[n].bias)
    assert m.loss_se.notna().all()  # two crops: a standard error per combination


def test_choosing_refuses_bad_groups_by_name(hyperprior, images):
    from bitalloc import choose_bias_correction

    q = apply_plan(hyperprior, {"g_a.0": 2, "h_s.0": 2}, calibration="mse", keep_float=True)
    with pytest.raises(ValueError, match="layer 'g_s.0' of group 'mine' is not a corrected layer of this plan"):
        choose_bias_correction(q, images, groups={"mine": ["g_a.0", "g_s.0"]})
    with pytest.raises(ValueError, match=r"2 groups \(g_a, h_s\); it measures 2\^groups combinations, so give "
                                         r"between 1 and max_groups=1"):
        choose_bias_correction(q, images, max_groups=1)
    two = choose_bias_correction(q, images, groups={"both": ["g_a.0", "h_s.0"]})
    assert set(two.measured.groups) == {"none", "both"}
    with pytest.raises(ValueError, match="is not a CompressAI model, so there is no default loss"):
        choose_bias_correction(apply_plan(toy_mlp(), {"0": 2}, keep_float=True), torch.randn(4, 8))
