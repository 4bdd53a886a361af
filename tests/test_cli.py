"""The command line: every bad argument is refused before any work, naming its flag (issue #10, item 6)."""

import json

import numpy as np
import pytest
from PIL import Image

import bitalloc
from bitalloc.cli import main
from bitalloc.models import shipped_checkpoint_dir


@pytest.fixture
def data(tmp_path, monkeypatch):
    """A tiny data root: two 64x64 photos in kodak/ and in train/ ($BITALLOC_DATA unset)."""
    monkeypatch.delenv("BITALLOC_DATA", raising=False)
    rng = np.random.default_rng(0)
    for subset in ("kodak", "train"):
        (tmp_path / "data" / subset).mkdir(parents=True)
        for name in ("a", "b"):
            Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(
                tmp_path / "data" / subset / f"{name}.png")
    return tmp_path / "data"


@pytest.fixture
def no_work(monkeypatch):
    """Make every command's work fail loudly, so a test proves the refusal came first."""
    import bitalloc.evaluation
    import bitalloc.harness
    import bitalloc.models
    import bitalloc.models.train
    import bitalloc.sensitivity

    def work(*args, **kwargs):
        raise AssertionError("work started before the arguments were checked")

    for module, name in ((bitalloc.harness, "run_study"), (bitalloc.models.train, "train"),
                         (bitalloc.evaluation, "evaluate"), (bitalloc.models, "load_model"),
                         (bitalloc.sensitivity, "measure_sensitivity")):
        monkeypatch.setattr(module, name, work)


def _refused(capsys, argv, flag, message):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2, err
    assert f"error: argument {flag}: " in err and message in err, err
    assert "Traceback" not in err
    return err


@pytest.mark.parametrize("argv,flag,message", [
    (["compare", "--threads", "0"], "--threads", "must be a positive integer, got '0'"),
    (["evaluate", "--model", "mbt2018-mean", "--quality", "1", "--threads", "-2"], "--threads", "got '-2'"),
    (["train", "--model", "mbt2018-mean", "--quality", "1", "--batch-size", "0"], "--batch-size", "got '0'"),
    (["train", "--model", "mbt2018-mean", "--quality", "1", "--steps", "-1"], "--steps", "got '-1'"),
    (["train", "--model", "mbt2018-mean", "--quality", "1", "--lr", "nan"], "--lr", "positive number"),
    (["evaluate", "--model", "mbt2018-mean", "--quality", "1", "--limit", "-1"], "--limit", "got '-1'"),
    (["compare", "--limit", "0"], "--limit", "got '0'"),
    (["compare", "--budgets", "4", "0"], "--budgets", "must be a positive number, got '0'"),
    (["compare", "--qat-steps", "0"], "--qat-steps", "got '0'"),
], ids=["threads-0", "threads-negative", "batch-size-0", "steps-negative", "lr-nan", "limit-negative",
        "compare-limit-0", "budget-0", "qat-steps-0"])
def test_malformed_numbers_name_the_flag(capsys, no_work, argv, flag, message):
    _refused(capsys, argv, flag, message)


@pytest.mark.parametrize("argv,flag,message", [
    (["--allocators", "ilp", "foo"], "--allocators", "unknown allocator 'foo'; valid allocators: "),
    (["--model", "cheng2020-anchor", "--qualities", "2", "5"], "--qualities",
     "no shipped checkpoint for cheng2020-anchor quality 2, 5; shipped: qualities 0, 1, 3, 4, 6"),
    (["--model", "hyperprior"], "--model", "valid models: bmshj2018-hyperprior"),
    (["--qualities", "4", "2"], "--qualities", "no shipped checkpoint for bmshj2018-hyperprior quality 2; "
                                               "shipped: qualities 0, 1, 3, 4, 6, 8"),
    (["--qualities", "9"], "--qualities", "valid qualities: 0, 1"),
    (["--qualities", "4", "4"], "--qualities", "repeated values"),
    (["--budgets", "1.5"], "--budgets", "1.5 average bits is below the smallest candidate bit-width 2"),
    (["--budget-kind", "ratio", "--budgets", "20"], "--budgets", "compression ratio 20 is above 16"),
    (["--allocators", "dynaquant"], "--allocators/--modes", "add 'qat' to modes"),
], ids=["allocator", "no-checkpoint", "model", "quality-not-shipped", "quality-invalid", "repeated",
        "budget-below-min-bits", "ratio-too-high", "dynaquant-without-qat"])
def test_compare_refuses_bad_arguments_before_any_work(capsys, tmp_path, data, no_work, argv, flag, message):
    out = tmp_path / "study"
    _refused(capsys, ["compare", "--data", str(data), "--out", str(out), *argv], flag, message)
    assert not out.exists()


def test_compare_refuses_an_out_that_is_a_file_and_a_missing_data_root(capsys, tmp_path, data, no_work):
    (tmp_path / "taken").write_text("x")
    _refused(capsys, ["compare", "--data", str(data), "--out", str(tmp_path / "taken")], "--out",
             "taken is a file; --out names a folder")
    _refused(capsys, ["compare", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "s")], "--data",
             "nowhere does not exist")
    (data / "kodak" / "a.png").unlink(), (data / "kodak" / "b.png").unlink()
    _refused(capsys, ["compare", "--data", str(data), "--out", str(tmp_path / "s")], "--data", "holds no images")


def test_compare_hands_valid_arguments_to_the_study(monkeypatch, tmp_path, data):
    import bitalloc.harness
    import bitalloc.report

    seen = {}

    class Result:
        ranking = __import__("pandas").DataFrame({"allocator": ["ilp"]})

    def run_study(spec, out, data=None, workers=1, executor=None):
        seen.update(spec=spec, out=out, data=data, workers=workers, executor=executor)
        return Result()

    monkeypatch.setattr(bitalloc.harness, "run_study", run_study)
    def write_report(result, out, command, machine, layers):
        seen["layers"] = layers
        return f"{out}/report.md"

    monkeypatch.setattr(bitalloc.report, "write_report", write_report)
    out = str(tmp_path / "study")
    assert main(["compare", "--quick", "--limit", "1", "--allocators", "ilp", "uniform", "--threads", "1",
                 "--data", str(data), "--out", out]) == 0
    spec = seen["spec"]
    assert (spec.qualities, spec.allocators, spec.budgets, spec.eval_limit, spec.qat_steps, seen["out"]) == \
        ((1, 3, 4, 6), ("ilp", "uniform"), (8.0, 4.0), 1, 20, out)
    assert (seen["workers"], seen["executor"]) == (1, None)
    # by default the additive and the interaction-aware allocators, on noise-aware tables
    assert main(["compare", "--quick", "--data", str(data), "--out", out]) == 0
    assert {"ilp", "iqp", "ilp+verify", "iqp+verify"} <= set(seen["spec"].allocators)
    assert seen["spec"].table_fit == "noise"

    # the interaction-aware names the harness takes pass the CLI's check too
    assert main(["compare", "--quick", "--limit", "1", "--allocators", "iqp", "ilp+verify", "iqp+verify",
                 "--threads", "1", "--data", str(data), "--out", out]) == 0
    assert seen["spec"].allocators == ("iqp", "ilp+verify", "iqp+verify")
    assert set(seen["layers"]["quality"]) == {1, 3, 4, 6} and seen["layers"]["layer"].iloc[0] == "g_a.0"
    assert main(["compare", "--quick", "--qualities", "1,4", "--workers", "2", "--data", str(data), "--out", out]) == 0
    assert (seen["spec"].qualities, seen["workers"], seen["executor"]) == ((1, 4), 2, None)


def test_train_refuses_bad_arguments_before_any_work(capsys, tmp_path, data, no_work, monkeypatch):
    base = ["train", "--model", "mbt2018-mean", "--data", str(data), "--workdir", str(tmp_path / "runs")]
    _refused(capsys, [*base, "--quality", "9"], "--quality", "valid qualities: 0, 1, 2")
    _refused(capsys, [*base, "--quality", "0", "--size", "paper"], "--quality", "valid qualities: 1, 2")
    _refused(capsys, [*base, "--quality", "1", "--init-from", str(tmp_path / "none.pt")], "--init-from",
             "no such file")
    _refused(capsys, [*base, "--quality", "1", "--out", str(tmp_path)], "--out", "is a folder; --out names a file")
    _refused(capsys, [*base, "--quality", "1", "--device", "gpu0"], "--device", "")
    _refused(capsys, [*base, "--quality", "1", "--channels", "96"], "--channels", "give N, M")
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    _refused(capsys, [*base, "--quality", "1", "--device", "cuda"], "--device", "torch sees no CUDA device")
    no_root = ["train", "--model", "mbt2018-mean", "--quality", "1", "--workdir", str(tmp_path / "runs")]
    _refused(capsys, no_root, "--data", "no data root; set BITALLOC_DATA or pass --data")
    assert not (tmp_path / "runs").exists()


@pytest.fixture
def fake_training(monkeypatch):
    """train() and finalize() that record their arguments instead of training."""
    import bitalloc.models.train

    calls = {}

    def train(name, quality, train_dir, workdir, **kwargs):
        calls["train"] = dict(name=name, quality=quality, train_dir=train_dir, workdir=workdir, **kwargs)
        return workdir / "state.pt"

    def finalize(state, out, eval_dir=None):
        calls["out"] = out
        return {"quality": 1}

    monkeypatch.setattr(bitalloc.models.train, "train", train)
    monkeypatch.setattr(bitalloc.models.train, "finalize", finalize)
    return calls


def test_train_writes_into_the_workdir_by_default(tmp_path, data, fake_training, capsys):
    shipped = sorted(shipped_checkpoint_dir().iterdir())
    workdir = tmp_path / "runs"
    assert main(["train", "--model", "mbt2018-mean", "--quality", "1", "--steps", "3", "--data", str(data),
                 "--workdir", str(workdir), "--threads", "1"]) == 0
    assert fake_training["out"] == workdir / "mbt2018-mean-compact-q1.pt"
    assert fake_training["train"]["steps"] == 3 and fake_training["train"]["workdir"] == workdir / "mbt2018-mean" / "q1"
    assert json.loads(capsys.readouterr().out)["checkpoint"] == str(workdir / "mbt2018-mean-compact-q1.pt")
    assert sorted(shipped_checkpoint_dir().iterdir()) == shipped
    out = tmp_path / "mine.pt"
    assert main(["train", "--model", "mbt2018-mean", "--quality", "1", "--data", str(data),
                 "--workdir", str(workdir), "--out", str(out)]) == 0
    assert fake_training["out"] == out and fake_training["train"]["channels"] is None
    assert main(["train", "--model", "mbt2018-mean", "--quality", "1", "--data", str(data), "--channels", "96", "192",
                 "--workdir", str(workdir), "--out", str(out)]) == 0
    assert fake_training["train"]["channels"] == [96, 192]


@pytest.mark.parametrize("command,resume", [("train", True), ("compare", True), ("evaluate", False)])
def test_ctrl_c_exits_130_without_a_traceback(monkeypatch, capsys, tmp_path, data, command, resume):
    import bitalloc.cli
    import bitalloc.cli_compare
    import bitalloc.cli_evaluate

    def interrupted(args):
        raise KeyboardInterrupt

    module, name = {"train": (bitalloc.cli, "_cmd_train"), "compare": (bitalloc.cli_compare, "run_compare"),
                    "evaluate": (bitalloc.cli_evaluate, "run_evaluate")}[command]
    monkeypatch.setattr(module, name, interrupted)
    argv = {"train": ["train", "--model", "mbt2018-mean", "--quality", "1", "--workdir", str(tmp_path / "r")],
            "compare": ["compare", "--out", str(tmp_path / "s")],
            "evaluate": ["evaluate", "--model", "mbt2018-mean", "--quality", "1"]}[command]
    assert main([*argv, "--data", str(data)]) == 130
    err = capsys.readouterr().err
    assert f"bitalloc {command}: interrupted" in err and ("rerun to resume" in err) == resume
    assert "Traceback" not in err


def test_evaluate_refuses_bad_arguments(capsys, tmp_path, data, no_work):
    base = ["evaluate", "--model", "mbt2018-mean", "--data", str(data)]
    _refused(capsys, [*base, "--quality", "2"], "--qualities", "no shipped checkpoint for mbt2018-mean quality 2")
    _refused(capsys, [*base, "--quality", "0", "--pretrained", "compressai"], "--qualities", "valid qualities: 1")
    _refused(capsys, [*base, "--quality", "1", "--pretrained", str(tmp_path / "x.pt")], "--pretrained",
             "not 'bitalloc', 'compressai' or an existing file")
    _refused(capsys, [*base, "--quality", "1", "--images", str(tmp_path / "nope")], "--images", "does not exist")
    (tmp_path / "f").write_text("x")
    _refused(capsys, [*base, "--quality", "1", "--json", str(tmp_path / "f" / "r.json")], "--json", "is a file")


def test_evaluate_json_into_a_folder_leaves_no_temporary_file(tmp_path, data, capsys):
    folder = tmp_path / "results"
    folder.mkdir()
    assert main(["evaluate", "--model", "mbt2018-mean", "--quality", "1", "--data", str(data), "--limit", "1",
                 "--threads", "1", "--json", str(folder)]) == 0
    written = folder / "mbt2018-mean.json"
    assert [p.name for p in folder.iterdir()] == [written.name]
    assert json.loads(written.read_text())["name"] == "mbt2018-mean"
    assert f"json: {written}" in capsys.readouterr().out


def test_to_compressai_json_refuses_a_folder_and_leaves_nothing_behind(tmp_path):
    import pandas as pd

    from bitalloc.evaluation import to_compressai_json

    df = pd.DataFrame({c: [1.0] for c in ("bpp", "psnr_rgb", "ms_ssim_rgb", "encoding_time", "decoding_time")})
    with pytest.raises(IsADirectoryError, match=rf"{tmp_path.name} is a folder"):
        to_compressai_json([df], "m", path=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_version_and_help_show_defaults(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.strip() == f"bitalloc {bitalloc.__version__}"
    with pytest.raises(SystemExit):
        main(["compare", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: runs/compare)" in text and "(default: 2)" in text and "(default: 1 3 4 6)" in text
    assert "(default: None)" not in text
