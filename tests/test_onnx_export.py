"""ONNX export (issue 14, item 3): onnxruntime runs the exported graph and matches the fake-quantized forward."""

import random

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

import bitalloc
from bitalloc.graph import quantizable_layers
from bitalloc.onnx_export import export_lic_transforms, export_onnx, run_onnx, transform_inputs
from bitalloc.quant import apply_plan, plan_of, weight_quantizer

BITS = (2, 3, 4, 5, 6, 8)


def _random_plan(model, seed=0, gdn=False):
    rng = random.Random(seed)
    return {n: rng.choice(BITS) for n in quantizable_layers(model, gdn=gdn)}


def _dequantize_nodes(path):
    m = onnx.load(str(path))
    inits = {t.name: t for t in m.graph.initializer}
    return m, inits, [n for n in m.graph.node if n.op_type == "DequantizeLinear"]


@pytest.fixture(scope="module")
def scale_q4():
    m = bitalloc.load_model("bmshj2018-hyperprior", 4)
    plan = _random_plan(m, seed=1, gdn=True)
    return apply_plan(m, plan, keep_float=True).eval()


def test_scale_hyperprior_transforms_run_in_onnxruntime(scale_q4, tmp_path):
    reports = export_lic_transforms(scale_q4, tmp_path, height=64, width=64)
    assert list(reports) == ["g_a", "h_a", "h_s", "g_s"]
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    inputs = transform_inputs(scale_q4, x)
    assert inputs["g_s"].shape == (1, 64, 4, 4) and inputs["h_s"].shape == (1, 48, 1, 1)
    plan = plan_of(scale_q4)
    for t, report in reports.items():
        with torch.no_grad():
            ref = getattr(scale_q4, t)(inputs[t])
        out = run_onnx(report["path"], inputs[t])
        assert out.shape == ref.shape
        assert (out - ref).abs().max().item() <= 1e-5, t
        exported = {k: v["bits"] for k, v in report["layers"].items()}
        assert exported == {k: b for k, b in plan.bits.items() if k.startswith(t + ".")}  # every layer, its bits


def test_onnx_weights_are_the_plan_integers(scale_q4, tmp_path):
    report = export_onnx(scale_q4, tmp_path / "g_a.onnx", torch.zeros(1, 3, 64, 64), module="g_a")
    m, inits, dq = _dequantize_nodes(report["path"])
    assert len(dq) == len(report["layers"])
    layers = quantizable_layers(scale_q4, gdn=True)
    for node in dq:
        layer, t = node.output[0].rsplit(".", 1)
        q = weight_quantizer(layers["g_a." + layer])
        codes = numpy_helper.to_array(inits[node.input[0]]).astype(np.int64)
        expect = q.integers(getattr(layers["g_a." + layer].parametrizations, t).original)
        assert np.array_equal(codes, expect.numpy())
        assert np.abs(codes).max() <= 2 ** (q.bits - 1) - 1  # the b-bit range in its container
        container = inits[node.input[0]].data_type
        assert container == (onnx.TensorProto.INT4 if q.bits <= 4 else onnx.TensorProto.INT8)
        assert dict((a.name, a.i) for a in node.attribute)["axis"] == q.axis
    assert not any(i.data_type == onnx.TensorProto.FLOAT and i.name in {n.output[0] for n in dq}
                   for i in m.graph.initializer)  # the float weight is gone


def test_resnet18_runs_in_onnxruntime_with_int8_containers(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None).eval()
    q = apply_plan(net, _random_plan(net, seed=2))
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    report = export_onnx(q, tmp_path / "r18.onnx", x, int4=False)
    with torch.no_grad():
        ref = q(x)
    out = run_onnx(report["path"], x)
    assert (out - ref).abs().max().item() <= 1e-5
    assert {v["container"] for v in report["layers"].values()} == {"int8"}
    assert len(report["layers"]) == len(quantizable_layers(net))
    # int8 containers: about one byte per weight, plus biases, BN and scales
    n_weights = sum(m.parametrizations.weight.original.numel() for m in quantizable_layers(q).values())
    assert n_weights <= report["file_bytes"] <= 1.05 * n_weights


def test_export_onnx_needs_a_plan(hyperprior, tmp_path):
    with pytest.raises(ValueError, match="apply_plan"):
        export_onnx(hyperprior, tmp_path / "x.onnx", torch.zeros(1, 3, 64, 64))


def _with_outputs(path, names):
    """The exported model with ``names`` ({tensor: onnx elem type}) as extra graph outputs."""
    m = onnx.load(str(path))
    m.graph.output.extend(onnx.helper.make_tensor_value_info(n, t, None) for n, t in names.items())
    return m.SerializeToString()


def test_activation_qdq_has_the_quantizers_integer_grid(tmp_path):
    """Per-layer activation bits (4, 6, 8, 10, 16) from frozen ranges: every QuantizeLinear of the exported
    transforms gives the codes ActQuantizer.integers gives on the same input, and the outputs agree."""
    import onnxruntime as ort

    from bitalloc.act_quant import activation_quantizers, calibrate_activations
    from bitalloc.plan import BitPlan

    model = bitalloc.load_model("bmshj2018-hyperprior", 4)
    names = list(quantizable_layers(model))
    acts = {n: (4, 6, 8, 10, 16)[i % 5] for i, n in enumerate(names)}
    q = apply_plan(model, BitPlan({n: (4, 6, 8)[i % 3] for i, n in enumerate(names)}, act_bits=acts))
    g = torch.Generator().manual_seed(7)
    smooth = lambda n: torch.nn.functional.interpolate(torch.rand(n, 3, 8, 8, generator=g), size=(64, 64),  # noqa: E731
                                                         mode="bilinear", align_corners=False)
    calibrate_activations(q, smooth(4))
    reports = export_lic_transforms(q, tmp_path, transforms=("g_a", "h_s", "g_s"))
    inputs = transform_inputs(q, smooth(1))
    quantizers = activation_quantizers(q)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    checked = 0
    for t, report in reports.items():
        assert set(report["activations"]) == {n for n in acts if n.startswith(t + ".")}
        m = onnx.load(report["path"])
        quantize = {n.name.removesuffix(".input_quantizer.quantize"): n for n in m.graph.node
                    if n.op_type == "QuantizeLinear"}
        dequantize = {n.name.removesuffix(".input_quantizer.dequantize"): n for n in m.graph.node
                      if n.name.endswith(".input_quantizer.dequantize")}
        assert len(quantize) == len(dequantize) == len(report["activations"])
        extra = {}
        for local, node in quantize.items():
            extra[node.input[0]] = onnx.TensorProto.FLOAT
            extra[dequantize[local].input[0]] = (onnx.TensorProto.UINT8 if acts[f"{t}.{local}"] <= 8
                                                 else onnx.TensorProto.UINT16)
        sess = ort.InferenceSession(_with_outputs(report["path"], extra), options, providers=["CPUExecutionProvider"])
        got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"input": inputs[t].numpy()})))
        for local, node in quantize.items():
            aq = quantizers[f"{t}.{local}"]
            codes = got[dequantize[local].input[0]].astype(np.int64)  # what DequantizeLinear reads (after Clip)
            assert np.array_equal(codes, aq.integers(torch.from_numpy(got[node.input[0]])).numpy())
            assert codes.min() >= 0 and codes.max() <= 2 ** aq.bits - 1
            checked += 1
        with torch.no_grad():
            ref = getattr(q, t)(inputs[t])
        diff = (torch.from_numpy(got["output"]) - ref).abs()
        # a float difference upstream may move a value across a rounding boundary of a 4-bit quantizer, which moves
        # the outputs it feeds by a fraction of a step; a wrong scale or zero point would move them by the output's
        # own spread
        assert (diff <= 1e-5).float().mean().item() >= 0.9, t
        assert diff.max().item() <= 1e-2 * ref.std().item(), t
    assert checked == len([n for n in acts if n.split(".")[0] in reports])
