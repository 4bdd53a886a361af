"""The stage commands (sensitivity, allocate, apply, export, evaluate): a bad argument is refused before any work,
naming its flag; an allocation that finds no plan names the allocator and the budget; every command takes
--threads and shows its defaults (issue 15, item 2). The happy paths run in tests/test_cli_tour.py."""

import json

import numpy as np
import pytest
import test_cli

from bitalloc import BitPlan, CostTable
from bitalloc.cli import build_parser, main

_refused = test_cli._refused
data, no_work = test_cli.data, test_cli.no_work  # fixtures: a tiny data root; every command's work fails loudly

HP = ["--model", "bmshj2018-hyperprior", "--quality", "4"]


@pytest.fixture
def table_csv(tmp_path):
    """A 3-layer cost table at 2, 4, 8 bits (sizes num_params * bits)."""
    table = CostTable.from_arrays(["a", "b", "c"], (2, 4, 8), np.array([[3.0, 1.0, 0.0], [2.0, 0.5, 0.0],
                                                                        [9.0, 2.0, 0.0]]),
                                  num_params=[100, 200, 300])
    path = tmp_path / "table.csv"
    table.to_csv(path)
    return path


@pytest.mark.parametrize("argv,flag,message", [
    (["--out", "t.txt"], "--out", "t.txt must end in .csv or .json"),
    (["--out", "t.csv", "--bits", "1,4"], "--bits", "candidate bit-width 1 is 1"),
    (["--out", "t.csv", "--bits", "4,17"], "--bits", "is 17"),
    (["--out", "t.csv", "--bits", "4", "4"], "--bits", "repeated values in 4,4"),
    (["--out", "t.csv", "--bits", "four"], "--bits", "must be integers separated by commas, got 'four'"),
    (["--out", "t.csv", "--crop", "100"], "--crop", "100 is not a multiple of 64"),
    (["--out", "t.csv", "--calib-images", "0"], "--calib-images", "must be a positive integer"),
    (["--out", "t.csv", "--hessian-samples", "-1"], "--hessian-samples", "non-negative integer"),
    (["--out", "t.csv", "--calibration", "max"], "--calibration", "invalid choice: 'max'"),
    (["--out", "t.csv", "--images", "nowhere"], "--images", "does not exist"),
    (["--out", "t.csv", "--pretrained", "nothing.pt"], "--pretrained", "not 'bitalloc', 'compressai' or an existing"),
], ids=["out-suffix", "bits-1", "bits-17", "bits-repeated", "bits-word", "crop", "calib-images", "hessian",
        "calibration", "images", "pretrained"])
def test_sensitivity_refuses_bad_arguments_before_any_work(capsys, tmp_path, data, no_work, monkeypatch, argv,
                                                           flag, message):
    monkeypatch.chdir(tmp_path)
    _refused(capsys, ["sensitivity", *HP, "--data", str(data), *argv], flag, message)
    assert not (tmp_path / "t.csv").exists()


@pytest.mark.parametrize("argv,flag,message", [
    (["--budget", "1.5"], "--budget", "1.5 (avg_bits): budget of"),
    (["--budget", "1.5"], "--budget", "below the smallest achievable size"),
    (["--budget", "17", "--budget-kind", "ratio"], "--budget", "17 (ratio)"),
    (["--budget", "100", "--budget-kind", "bits"], "--budget", "100 (bits)"),
    (["--budget", "0"], "--budget", "must be a positive number, got '0'"),
    (["--budget", "4", "--allocator", "best"], "--allocator", "invalid choice: 'best'"),
    (["--budget", "4", "--option", "speed=3"], "--option", "allocator 'ilp'"),
    (["--budget", "4", "--option", "fast"], "--option", "expected KEY=VALUE, got 'fast'"),
    (["--budget", "4", "--option", "gap_rel=2"], "--option", "gap_rel must be a finite number in [0, 1)"),
    (["--budget", "4", "--out", "plan.csv"], "--out", "plan.csv must end in .json"),
], ids=["avg-bits-too-low", "smallest-size", "ratio-too-high", "bits-too-low", "zero", "allocator",
        "unknown-option", "option-syntax", "option-value", "out-suffix"])
def test_allocate_refuses_bad_arguments_naming_the_budget_or_allocator(capsys, tmp_path, table_csv, monkeypatch,
                                                                        argv, flag, message):
    monkeypatch.chdir(tmp_path)
    _refused(capsys, ["allocate", "--table", str(table_csv), "--out", "plan.json", *argv], flag, message)
    assert not (tmp_path / "plan.json").exists()


def test_allocate_refuses_a_missing_or_broken_table(capsys, tmp_path, table_csv):
    out = str(tmp_path / "plan.json")
    _refused(capsys, ["allocate", "--table", str(tmp_path / "none.csv"), "--budget", "4", "--out", out],
             "--table", "no such file")
    broken = tmp_path / "broken.csv"
    broken.write_text(table_csv.read_text().replace(",4,", ",x,", 1))
    _refused(capsys, ["allocate", "--table", str(broken), "--budget", "4", "--out", out], "--table", "line 3")
    _refused(capsys, ["allocate", "--table", str(table_csv).replace(".csv", ".txt"), "--budget", "4", "--out", out],
             "--table", "no such file")


def test_allocate_that_finds_no_plan_names_the_allocator_and_the_budget(capsys, tmp_path, table_csv):
    out = tmp_path / "plan.json"
    assert main(["allocate", "--table", str(table_csv), "--budget", "4", "--option", "min_bits=8",
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "allocator 'ilp' found no plan within budget 4 avg_bits (2400 bits): infeasible" in err, err
    assert not out.exists()


@pytest.mark.parametrize("allocator", ["ilp", "greedy", "uniform", "exact"])
def test_allocate_writes_the_plan_each_allocator_finds(capsys, tmp_path, table_csv, allocator):
    out = tmp_path / "plan.json"
    assert main(["allocate", "--table", str(table_csv), "--budget", "2000", "--budget-kind", "bits",
                 "--allocator", allocator, "--out", str(out)]) == 0
    plan, table = BitPlan.from_json(out), CostTable.from_csv(table_csv)
    assert plan.size_bits(table) <= 2000 and plan.meta["allocator"] == allocator
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{allocator}: {plan.meta['status']}, {plan.avg_bits(table):.3f} avg bits")
    if allocator in ("ilp", "exact"):  # the optimum of 2000 bits: a and c at 4 bits (400 + 1200), b at 2 (400)
        assert dict(plan.bits) == {"a": 4, "b": 2, "c": 4} and plan.meta["objective"] == pytest.approx(5.0)


def _plan(tmp_path, bits=None) -> str:
    from bitalloc.graph import quantizable_layers
    from bitalloc.models import build_model

    names = list(quantizable_layers(build_model("bmshj2018-hyperprior", 4)))
    path = tmp_path / "plan.json"
    BitPlan(bits or dict.fromkeys(names, 8)).to_json(path)
    return str(path)


def test_apply_and_export_refuse_bad_arguments_before_any_work(capsys, tmp_path, no_work):
    plan = _plan(tmp_path)
    out = str(tmp_path / "q.pt")
    for command in ("apply", "export"):
        _refused(capsys, [command, *HP, "--plan", str(tmp_path / "none.json"), "--out", out], "--plan",
                 "no such file")
        (tmp_path / "bad.json").write_text('{"format": "other"}')
        _refused(capsys, [command, *HP, "--plan", str(tmp_path / "bad.json"), "--out", out], "--plan",
                 "not a bit plan: field 'format' is 'other'")
        _refused(capsys, [command, *HP, "--plan", plan, "--out", str(tmp_path)], "--out", "is a folder")
        _refused(capsys, [command, *HP, "--plan", plan, "--out", out, "--threads", "0"], "--threads", "got '0'")
        _refused(capsys, [command, "--model", "bmshj2018-hyperprior", "--quality", "2", "--plan", plan,
                          "--out", out], "--quality", "no shipped checkpoint")
    _refused(capsys, ["apply", *HP, "--plan", plan, "--out", str(tmp_path / "q.bin")], "--out", "must end in .pt")
    _refused(capsys, ["export", *HP, "--plan", plan, "--out", out, "--format", "zip"], "--format",
             "invalid choice: 'zip'")
    _refused(capsys, ["export", *HP, "--plan", plan, "--out", out, "--format", "onnx", "--height", "100"],
             "--height", "100 is not a multiple of 64")
    assert not (tmp_path / "q.pt").exists()


def test_apply_names_the_plan_that_does_not_fit_the_model(capsys, tmp_path):
    plan = _plan(tmp_path, {"g_a.0": 8, "decoder.9": 4})
    assert main(["apply", *HP, "--plan", plan, "--out", str(tmp_path / "q.pt"), "--threads", "1"]) == 2
    err = capsys.readouterr().err
    assert f"argument --plan: {plan} does not fit bmshj2018-hyperprior quality 4: plan names layer 'decoder.9'" \
        in err, err
    assert not (tmp_path / "q.pt").exists()


def test_evaluate_refuses_bad_arguments_before_any_work(capsys, tmp_path, data, no_work):
    base = ["evaluate", "--data", str(data)]
    _refused(capsys, base, "--qualities/--files", "nothing to evaluate")
    _refused(capsys, [*base, "--qualities", "1,3"], "--model", "--qualities needs the model family")
    _refused(capsys, [*base, "--model", "mbt2018-mean", "--qualities", "1,3", "1"], "--qualities",
             "repeated values in 1,3,1")
    _refused(capsys, [*base, "--model", "mbt2018-mean", "--qualities", "1,x"], "--qualities/--quality",
             "must be integers separated by commas, got '1,x'")
    (tmp_path / "m.pt").write_text("not a model")
    _refused(capsys, [*base, "--model", "mbt2018-mean", "--qualities", "1,3", "--pretrained", str(tmp_path / "m.pt")],
             "--pretrained", "one file holds one quality")
    _refused(capsys, [*base, "--files", str(tmp_path / "none.pt")], "--files", "no such file")
    _refused(capsys, [*base, "--files", str(tmp_path / "m.pt")], "--files", "m.pt")


def test_evaluate_takes_qualities_as_a_list_spaced_or_repeated():
    parse = build_parser().parse_args
    assert parse(["evaluate", "--qualities", "1,3", "4", "--quality", "6"]).qualities == [1, 3, 4, 6]
    assert parse(["sensitivity", *HP, "--out", "t.csv"]).bits == [2, 3, 4, 5, 6, 8]
    assert parse(["sensitivity", *HP, "--out", "t.csv", "--bits", "4,8", "--bits", "2"]).bits == [4, 8, 2]


def test_evaluate_writes_one_point_per_quality_into_the_json(monkeypatch, tmp_path, data, capsys):
    import pandas as pd

    import bitalloc.evaluation

    seen = []

    def evaluate(model, images, root=None, limit=None):  # the model's quality as its bpp: order is checked
        seen.append((model.meta["quality"], limit))
        return pd.DataFrame({"image": ["a"], "bpp": [float(model.meta["quality"])], "psnr_rgb": [30.0],
                             "ms_ssim_rgb": [0.9], "encoding_time": [0.1], "decoding_time": [0.2]})

    monkeypatch.setattr(bitalloc.evaluation, "evaluate", evaluate)
    out = tmp_path / "curve.json"
    assert main(["evaluate", "--model", "mbt2018-mean", "--qualities", "6,1", "--quality", "3", "--limit", "1",
                 "--data", str(data), "--json", str(out), "--name", "mine"]) == 0
    curve = json.loads(out.read_text())
    assert seen == [(6, 1), (1, 1), (3, 1)] and curve["name"] == "mine" and curve["results"]["bpp"] == [6, 1, 3]
    assert "mbt2018-mean q6" in capsys.readouterr().out


COMMANDS = {"train": ["--model", "mbt2018-mean", "--quality", "1"], "sensitivity": [*HP, "--out", "t.csv"],
            "apply": [*HP, "--plan", "p.json", "--out", "q.pt"], "export": [*HP, "--plan", "p.json", "--out", "q"],
            "evaluate": ["--model", "mbt2018-mean", "--qualities", "1"], "compare": []}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_that_runs_a_model_takes_threads(capsys, no_work, command):
    _refused(capsys, [command, *COMMANDS[command], "--threads", "0"], "--threads", "must be a positive integer")


@pytest.mark.parametrize("command,shown", [
    ("sensitivity", ["(default: 2,3,4,5,6,8)", "{minmax,percentile,mse}", "(default: mse)", "(default: 256)",
                     "(default: 8)", "(default: 2)"]),
    ("allocate", ["{avg_bits,ratio,bits}", "(default: avg_bits)", "(default: ilp)", "greedy", "(default: none)"]),
    ("apply", ["(default: mse)", "(default: bitalloc)"]),
    ("export", ["(default: packed)", "{packed,safetensors,onnx}", "(default: 64)"]),
    ("evaluate", ["(default: 1)", "(default: bitalloc)", "(default: all)"]),
])
def test_help_shows_every_default_and_choice(capsys, command, shown):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert all(s in text for s in shown), [s for s in shown if s not in text]
    assert "(default: None)" not in text
    assert ("--threads" in text) == (command != "allocate")


def test_allocate_reads_a_json_table_as_well(capsys, tmp_path, table_csv):
    table = CostTable.from_csv(table_csv)
    table.to_json(tmp_path / "table.json")
    out = tmp_path / "plan.json"
    assert main(["allocate", "--table", str(tmp_path / "table.json"), "--budget", "2000", "--budget-kind", "bits",
                 "--out", str(out)]) == 0
    assert dict(BitPlan.from_json(out).bits) == {"a": 4, "b": 2, "c": 4}


def test_a_plan_with_activation_bits_exports_calibrated_and_is_refused_by_apply(capsys, tmp_path, data):
    import bitalloc
    from bitalloc.act_quant import activation_quantizers
    from bitalloc.graph import quantizable_layers
    from bitalloc.models import build_model

    names = list(quantizable_layers(build_model("bmshj2018-hyperprior", 4)))
    plan = tmp_path / "plan.json"
    BitPlan(dict.fromkeys(names, 8), act_bits={"g_a.2": 8, "g_s.0": 6}).to_json(plan)
    _refused(capsys, ["apply", *HP, "--plan", str(plan), "--out", str(tmp_path / "q.pt")], "--plan",
             "quantizes the input activations of 2 layers (e.g. 'g_a.2')")
    out = tmp_path / "q.bin"
    assert main(["export", *HP, "--plan", str(plan), "--out", str(out), "--calib-images", "1", "--crop", "64",
                 "--data", str(data), "--threads", "1"]) == 0
    acts = activation_quantizers(bitalloc.load_packed(out))
    assert sorted(acts) == ["g_a.2", "g_s.0"] and all(q.qparams()["bits"] in (6, 8) for q in acts.values())


def test_bias_correction_in_apply_and_export_needs_the_photos_and_moves_only_biases(capsys, tmp_path, data):
    import torch

    import bitalloc
    from bitalloc.graph import quantizable_layers
    from bitalloc.models import build_model
    from bitalloc.models.checkpoint import load_checkpoint

    names = list(quantizable_layers(build_model("bmshj2018-hyperprior", 4)))
    plan = tmp_path / "plan.json"
    BitPlan(dict.fromkeys(names, 3)).to_json(plan)
    _refused(capsys, ["apply", *HP, "--plan", str(plan), "--out", str(tmp_path / "n.pt"), "--bias-correction",
                      "--data", str(tmp_path / "nowhere")], "--data", "nowhere")
    calib = ["--calib-images", "1", "--crop", "64", "--data", str(data), "--threads", "1"]
    plain, fixed = tmp_path / "p.pt", tmp_path / "c.pt"
    assert main(["apply", *HP, "--plan", str(plan), "--out", str(plain), *calib]) == 0
    assert main(["apply", *HP, "--plan", str(plan), "--out", str(fixed), "--bias-correction", *calib]) == 0
    assert "biases corrected" in capsys.readouterr().out
    a, b = load_checkpoint(plain), load_checkpoint(fixed)
    assert b.meta["bias_correction"] == {"calib_images": 1, "crop": 64} and "bias_correction" not in a.meta
    la, lb = quantizable_layers(a), quantizable_layers(b)
    assert all(torch.equal(la[n].weight, lb[n].weight) for n in names)
    moved = [n for n in names if not torch.equal(la[n].bias, lb[n].bias)]
    assert len(moved) == len(names)
    packed = tmp_path / "c.bin"
    capsys.readouterr()
    assert main(["export", *HP, "--plan", str(plan), "--out", str(packed), "--bias-correction", *calib]) == 0
    assert json.loads(capsys.readouterr().out)["bias_correction"] == {"calib_images": 1, "crop": 64}
    lp = quantizable_layers(bitalloc.load_packed(packed))
    assert all(torch.allclose(lp[n].bias, lb[n].bias) for n in names)


def test_apply_with_the_chosen_bias_correction_corrects_the_chosen_transforms_and_says_which(capsys, tmp_path, data):
    from bitalloc.graph import branch_of, quantizable_layers
    from bitalloc.models import build_model
    from bitalloc.models.checkpoint import load_checkpoint

    names = list(quantizable_layers(build_model("bmshj2018-hyperprior", 4)))
    plan = tmp_path / "plan.json"
    BitPlan(dict.fromkeys(names, 3)).to_json(plan)
    calib = ["--calib-images", "1", "--crop", "64", "--data", str(data), "--threads", "1"]
    plain, chosen = tmp_path / "p.pt", tmp_path / "c.pt"
    assert main(["apply", *HP, "--plan", str(plan), "--out", str(plain), *calib]) == 0
    capsys.readouterr()
    assert main(["apply", *HP, "--plan", str(plan), "--out", str(chosen), "--bias-correction", "chosen", *calib]) == 0
    out = capsys.readouterr().out
    a, b = load_checkpoint(plain), load_checkpoint(chosen)
    groups = b.meta["bias_correction"]["chosen"]
    assert set(groups) <= {"g_a", "h_a", "h_s", "g_s"}
    assert f"biases of {'+'.join(groups) or 'no transform'} corrected (chosen)" in out
    la, lb = quantizable_layers(a), quantizable_layers(b)
    # a shift taken back out leaves float round-off (1e-8), a shift kept moves the bias by far more
    moved = {n for n in names if float((la[n].bias - lb[n].bias).detach().abs().max()) > 1e-6}
    assert moved == {n for n in names if branch_of(n) in groups}
    _refused(capsys, ["apply", *HP, "--plan", str(plan), "--out", str(tmp_path / "x.pt"), "--bias-correction",
                      "some", *calib], "--bias-correction", "invalid choice: 'some'")
