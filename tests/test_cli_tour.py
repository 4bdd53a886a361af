"""The README tour as shell commands (issue 15, item 2): sensitivity -> allocate -> apply / export -> evaluate, each
step reading the file the previous one wrote.

``TOUR`` holds the command lines as the README prints them; the tests append only the flags that make them tiny
(64-pixel crops, one image, three candidate bit-widths). The default suite runs the lines in process
(``bitalloc.cli.main``) and checks every file; ``test_the_tour_runs_as_shell_commands`` (slow: five interpreter
starts) runs the same lines through ``bash`` as ``python -m bitalloc``.
"""

import json
import shlex
import subprocess
import sys
from contextlib import redirect_stdout
from io import StringIO

import numpy as np
import pytest
import torch
from PIL import Image

from bitalloc import BitPlan, Budget, CostTable
from bitalloc.cli import main

MODEL, QUALITY = "bmshj2018-hyperprior", 4
TOUR = [
    f"bitalloc sensitivity --model {MODEL} --quality {QUALITY} --out table.csv",
    "bitalloc allocate --table table.csv --budget 4 --allocator ilp --out plan.json",
    f"bitalloc apply --model {MODEL} --quality {QUALITY} --plan plan.json --out q4.pt",
    f"bitalloc export --model {MODEL} --quality {QUALITY} --plan plan.json --out q4.bin --format packed",
    f"bitalloc evaluate --model {MODEL} --qualities {QUALITY} --files q4.pt q4.bin --json tour.json",
]
TINY = {"sensitivity": "--bits 2,4,8 --calib-images 1 --crop 64 --hessian-samples 0 --threads 1",
        "apply": "--threads 1", "export": "--threads 1", "evaluate": "--limit 1 --threads 1"}


def tiny_data(root):
    """Two 64x64 photos (seeded noise) in ``root/kodak`` and ``root/train``."""
    rng = np.random.default_rng(0)
    for subset in ("kodak", "train"):
        (root / subset).mkdir(parents=True)
        for name in ("a", "b"):
            Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(root / subset / f"{name}.png")
    return root


def tour_lines(data) -> list[str]:
    out = []
    for line in TOUR:
        command = line.split()[1]
        data_flag = f" --data {shlex.quote(str(data))}" if command in ("sensitivity", "evaluate") else ""
        out.append(f"{line} {TINY.get(command, '')}{data_flag}".strip())
    return out


@pytest.fixture(scope="module")
def tour(tmp_path_factory):
    """The tour run in process in a fresh folder: {command: its stdout}, and the folder."""
    work = tmp_path_factory.mktemp("tour")
    data = tiny_data(work / "data")
    printed = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        mp.delenv("BITALLOC_DATA", raising=False)
        for line in tour_lines(data):
            argv = shlex.split(line)[1:]
            buf = StringIO()
            with redirect_stdout(buf):
                assert main(argv) == 0, line
            printed[argv[0]] = buf.getvalue()
    return work, printed


def test_sensitivity_writes_a_table_of_every_layer_at_the_asked_bits(tour):
    work, printed = tour
    table = CostTable.from_csv(work / "table.csv")
    from bitalloc.graph import quantizable_layers
    from bitalloc.models import load_model

    assert table.layer_names == tuple(quantizable_layers(load_model(MODEL, QUALITY)))
    assert table.bits == (2, 4, 8) and np.isfinite(table.cost).all() and (table.cost >= 0).all()
    assert (table.cost[:, 0] > table.cost[:, -1]).sum() > table.num_layers // 2  # 2 bits hurt more than 8
    assert "14 layers x bits 2,4,8" in printed["sensitivity"] and "-> table.csv" in printed["sensitivity"]


def test_allocate_writes_a_plan_within_the_budget_and_one_summary_line(tour):
    work, printed = tour
    table = CostTable.from_csv(work / "table.csv")
    plan = BitPlan.from_json(work / "plan.json")
    assert Budget.from_avg_bits(table, 4).fits(plan.size_bits(table))
    assert plan.meta["allocator"] == "ilp" and plan.meta["status"] == "optimal"
    assert plan.meta["objective"] == pytest.approx(plan.cost(table))
    line, = printed["allocate"].strip().splitlines()
    assert line.startswith("ilp: optimal, ") and f"{plan.avg_bits(table):.3f} avg bits" in line
    assert "predicted RD-loss increase" in line and "solved in" in line and line.endswith("-> plan.json")


def test_apply_writes_a_checkpoint_the_loader_reads_with_the_quantized_weights(tour):
    import bitalloc
    from bitalloc.models import load_model, read_checkpoint

    work, _ = tour
    plan = BitPlan.from_json(work / "plan.json")
    loaded = load_model(MODEL, QUALITY, pretrained=str(work / "q4.pt"))  # weights_only, through the loader
    assert BitPlan.from_dict(loaded.meta["plan"]) == plan and "kodak" not in loaded.meta
    assert read_checkpoint(work / "q4.pt")["state_dict"]["g_a.0.weight"].dtype == torch.float32
    fake = bitalloc.apply_plan(load_model(MODEL, QUALITY), plan, calibration="mse")
    for name in plan:
        assert torch.equal(loaded.get_submodule(name).weight, fake.get_submodule(name).weight), name
    levels = loaded.get_submodule("g_a.0").weight[0].unique().numel()  # one channel: at most 2^b - 1 levels
    assert levels <= 2 ** plan["g_a.0"] - 1


def test_export_and_apply_give_the_same_model_and_the_json_has_every_point(tour):
    import bitalloc
    from bitalloc.models import load_model

    work, printed = tour
    report = json.loads(printed["export"])
    assert report["path"] == "q4.bin" and report["plan_size_bits"] == BitPlan.from_json(
        work / "plan.json").size_bits(CostTable.from_csv(work / "table.csv"))
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a = load_model(MODEL, QUALITY, pretrained=str(work / "q4.pt"))(x)["x_hat"]
        b = bitalloc.load_packed(work / "q4.bin")(x)["x_hat"]
    assert torch.equal(a, b)
    curve = json.loads((work / "tour.json").read_text())
    assert curve["name"] == MODEL and len(curve["results"]["bpp"]) == 3
    float_bpp, applied, packed = curve["results"]["bpp"]
    assert applied == packed and applied != float_bpp
    assert curve["results"]["psnr-rgb"][1] == curve["results"]["psnr-rgb"][2]
    assert "q4.pt" in printed["evaluate"] and "q4.bin" in printed["evaluate"]


@pytest.mark.slow
def test_the_tour_runs_as_shell_commands(tmp_path):
    data = tiny_data(tmp_path / "data")
    script = "set -e\n" + "\n".join(line.replace("bitalloc ", f"{shlex.quote(sys.executable)} -m bitalloc ", 1)
                                    for line in tour_lines(data))
    done = subprocess.run(["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    curve = json.loads((tmp_path / "tour.json").read_text())
    assert len(curve["results"]["bpp"]) == 3 and curve["results"]["bpp"][1] == curve["results"]["bpp"][2]
    assert BitPlan.from_json(tmp_path / "plan.json").meta["allocator"] == "ilp"
    assert "ilp: optimal" in done.stdout


@pytest.mark.parametrize("fmt", ["safetensors", "onnx"])
def test_export_writes_the_other_formats_from_the_same_plan(tour, fmt, monkeypatch, capsys):
    """Besides the tour's packed file: the baked safetensors loads into the model class without bitalloc, the
    ONNX file's analysis transform runs in onnxruntime; both compute what the applied checkpoint computes."""
    from bitalloc.models import build_model, load_model

    work, _ = tour
    monkeypatch.chdir(work)
    out = f"q4.{fmt}"
    assert main(["export", *shlex.split(TOUR[3])[2:8], "--plan", "plan.json", "--out", out, "--format", fmt,
                 "--threads", "1"]) == 0
    assert json.loads(capsys.readouterr().out)["file_bytes"] == (work / out).stat().st_size
    applied = load_model(MODEL, QUALITY, pretrained=str(work / "q4.pt"))
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = applied.g_a(x)
        if fmt == "safetensors":
            from safetensors.torch import load_file

            plain = build_model(MODEL, QUALITY)
            plain.load_state_dict(load_file(work / out))
            assert torch.equal(plain.eval().g_a(x), want)
        else:
            from bitalloc.onnx_export import LIC_TRANSFORMS, run_onnx, transform_inputs

            inputs = transform_inputs(applied, x)
            got = run_onnx(work / out, {f"{t}/input": inputs[t] for t in LIC_TRANSFORMS})
            for t in LIC_TRANSFORMS:
                want = getattr(applied, t)(inputs[t])
                assert torch.allclose(got[f"{t}/output"], want, atol=1e-4), (t, (got[f"{t}/output"] - want).abs().max())
