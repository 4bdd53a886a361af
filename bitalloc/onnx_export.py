"""ONNX export with QuantizeLinear/DequantizeLinear at each layer's bit-width, run by onnxruntime.

How the graph is made (the robust route): :func:`bitalloc.bake.bake` writes the dequantized weights into a plain
copy of the model (no parametrizations), torch's TorchScript-based exporter (``dynamo=False``, no constant
folding) writes that float graph, whose weight initializers keep the parameters' names; then every quantized
layer's weight initializer (GDN: ``gamma``, before its reparametrization) is replaced, with the onnx helper API,
by its integer codes and a ``DequantizeLinear`` node that outputs the same name::

    <layer>.weight_q  (int8, or int4 for b <= 4 with int4=True)  --+
    <layer>.weight_scale  (float32, one per output channel)       +--> DequantizeLinear(axis) --> <layer>.weight
    <layer>.weight_zero_point  (zeros, the codes' type)           --+

The codes are bitalloc's own integers q in [-(2^(b-1)-1), 2^(b-1)-1] (:meth:`WeightQuantizer.integers`), so a
b-bit layer holds only b-bit integers in its int8 container (the b-bit range is in the data; nothing beyond it
can be represented by the plan), and DequantizeLinear computes q * s in float32: the very tensor the
fake-quantized forward uses. The export checks that equality per layer before writing. Weights as integer
initializers + DequantizeLinear is the QDQ form runtimes (onnxruntime's quantizer, TensorRT) use for constant
weights; the QuantizeLinear of a constant is folded away.

Why not export the parametrized model directly: the parametrization's rounding is a custom autograd function
and the exported graph would carry float weights and re-quantize them at every run; the dynamo exporter
(``torch.onnx.export(..., dynamo=True)``) also works on the baked model but constant-folds GDN's ``gamma``
reparametrization, so the quantized ``gamma`` is no longer an initializer of its own.

Activations: a layer whose input is quantized (:class:`bitalloc.act_quant.ActQuantizer`, range frozen by
:func:`bitalloc.calibrate_activations`) gets ``QuantizeLinear -> [Clip] -> DequantizeLinear`` on its data input
at its own bit-width (:func:`activation_qdq_graph`): the quantizer's grid is ONNX's, so the codes are the
quantizer's codes of the same input. End to end, a float difference of ~1e-6 upstream (onnxruntime's GDN vs
torch's) can move a value across a rounding boundary of a later quantizer, so outputs agree to 1e-5 except such
values (one step of that quantizer).

LIC models: :func:`export_lic_transforms` writes one file per transform (``g_a``, ``h_a``, ``h_s``, ``g_s``) with
static shapes taken from a sample forward pass at ``height`` x ``width``; the entropy coder stays in CompressAI.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn as nn

from bitalloc.atomic import atomic_write
from bitalloc.bake import bake, quantized_layers
from bitalloc.quant import layer_size_bits, quantized_tensor_name, weight_quantizer

__all__ = ["LIC_TRANSFORMS", "activation_qdq_graph", "export_lic_transforms", "export_onnx", "quantized_weight_graph",
           "run_onnx", "transform_inputs"]

LIC_TRANSFORMS = ("g_a", "h_a", "h_s", "g_s")
DEFAULT_OPSET = 21  # DequantizeLinear with int4 and per-axis scales
TORCHSCRIPT_OPSET = 20  # the newest the TorchScript exporter writes; the graph is then declared at DEFAULT_OPSET


def _float_graph(module: nn.Module, example: torch.Tensor, opset: int, names: tuple[str, str]):
    import onnx

    buf = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter's notice (module docstring)
        torch.onnx.export(module, (example,), buf, dynamo=False, opset_version=min(opset, TORCHSCRIPT_OPSET),
                          do_constant_folding=False, input_names=[names[0]], output_names=[names[1]])
    model = onnx.load_from_string(buf.getvalue())
    for imp in model.opset_import:  # opset 21 adds types (int4) to the ops the float graph uses, not semantics
        if imp.domain in ("", "ai.onnx"):
            imp.version = max(imp.version, opset)
    return model


def quantized_weight_graph(graph_model, qmodel: nn.Module, prefix: str = "", *, int4: bool = True) -> dict:
    """Replace, in ``graph_model`` (an ``onnx.ModelProto`` exported from ``bake(qmodel)`` or its submodule
    ``prefix``), each quantized layer's float weight initializer by integer codes + DequantizeLinear (module
    docstring). Returns ``{layer: {"bits", "container", "initializer"}}``; ValueError names a layer whose
    initializer is missing or whose codes do not reproduce the baked weight."""
    from onnx import helper, numpy_helper

    graph = graph_model.graph
    inits = {t.name: t for t in graph.initializer}
    done, nodes = {}, []
    for name, m in quantized_layers(qmodel).items():
        if prefix and not name.startswith(prefix + "."):
            continue
        t = quantized_tensor_name(m)
        init_name = f"{name[len(prefix) + 1:] if prefix else name}.{t}"
        if init_name not in inits:
            raise ValueError(f"the exported graph has no initializer '{init_name}' for quantized layer '{name}' "
                             f"(initializers: {', '.join(list(inits)[:12])}...)")
        q = weight_quantizer(m)
        original = getattr(m.parametrizations, t).original
        codes = q.integers(original).cpu().numpy()
        scale = q.effective_scale().detach().cpu().to(torch.float32).numpy()
        shape = [1] * codes.ndim
        shape[q.axis] = -1
        baked = numpy_helper.to_array(inits[init_name])
        if not np.array_equal(codes.astype(np.float32) * scale.reshape(shape), baked):
            raise ValueError(f"layer '{name}': the integer codes times the scales do not reproduce its baked "
                             "weight; the export would not match the fake-quantized model")
        small = int4 and q.bits <= 4
        container = _int4() if small else np.int8
        qi = numpy_helper.from_array(codes.astype(container), f"{init_name}_q")  # raw bytes, int4 packed 2/byte
        zp = numpy_helper.from_array(np.zeros(scale.size, dtype=container), f"{init_name}_zero_point")
        sc = numpy_helper.from_array(scale.astype(np.float32), f"{init_name}_scale")
        graph.initializer.remove(inits[init_name])
        graph.initializer.extend([qi, sc, zp])
        nodes.append(helper.make_node("DequantizeLinear", [qi.name, sc.name, zp.name], [init_name],
                                      name=f"{init_name}_dequantize", axis=q.axis))
        done[name] = {"bits": q.bits, "container": "int4" if small else "int8", "initializer": init_name,
                      "plan_bits": layer_size_bits(m, q.bits)}
    for i, node in enumerate(nodes):
        graph.node.insert(i, node)
    return done


def activation_qdq_graph(graph_model, qmodel: nn.Module, prefix: str = "") -> dict:
    """Insert ``QuantizeLinear -> [Clip] -> DequantizeLinear`` on the data input of each layer of ``qmodel`` (under
    ``prefix``) that quantizes its input (:class:`bitalloc.act_quant.ActQuantizer`, frozen range): per tensor,
    the quantizer's scale and integer zero-point, a uint8 container (uint16 above 8 bits) and, below the
    container's width, a Clip to ``[0, 2^b - 1]``, which is the quantizer's own grid (in uint16, which
    onnxruntime cannot Clip, the float input is clipped to ``[(0 - z) s, (2^b - 1 - z) s]`` before
    QuantizeLinear: the same codes, as those ends quantize to 0 and 2^b - 1 exactly). Call after
    :func:`quantized_weight_graph` (the layer's node is found as the consumer of its weight). Returns
    ``{layer: qparams}``."""
    from onnx import helper, numpy_helper

    from bitalloc.act_quant import activation_quantizers

    graph = graph_model.graph
    done, new_nodes = {}, []
    for name, aq in activation_quantizers(qmodel).items():
        if prefix and not name.startswith(prefix + "."):
            continue
        local = name[len(prefix) + 1:] if prefix else name
        m = qmodel.get_submodule(name)
        weight = f"{local}.{quantized_tensor_name(m)}"
        users = [n for n in graph.node if len(n.input) > 1 and n.input[1] == weight]
        if len(users) != 1:
            raise ValueError(f"layer '{name}': expected one node reading its weight '{weight}' in the exported "
                             f"graph, found {len(users)}; cannot place its activation quantizer")
        node, qp = users[0], aq.qparams()  # qparams: an error naming the layer when not calibrated
        container = np.uint8 if qp["bits"] <= 8 else np.uint16
        base = f"{local}.input_quantizer"
        graph.initializer.extend([
            numpy_helper.from_array(np.array(qp["scale"], dtype=np.float32), f"{base}.scale"),
            numpy_helper.from_array(np.array(qp["zero_point"], dtype=container), f"{base}.zero_point")])
        x, codes = node.input[0], f"{base}.codes"
        if container is np.uint16 and qp["qmax"] < np.iinfo(container).max:  # onnxruntime has no uint16 Clip:
            s, z = np.float32(qp["scale"]), np.float32(qp["zero_point"])  # clip x to the grid's ends instead
            graph.initializer.extend([
                numpy_helper.from_array((np.float32(qp["qmin"]) - z) * s, f"{base}.lo"),
                numpy_helper.from_array((np.float32(qp["qmax"]) - z) * s, f"{base}.hi")])
            new_nodes.append(helper.make_node("Clip", [x, f"{base}.lo", f"{base}.hi"], [f"{base}.clipped_input"],
                                              name=f"{base}.clip_input"))
            x = f"{base}.clipped_input"
        new_nodes.append(helper.make_node("QuantizeLinear", [x, f"{base}.scale", f"{base}.zero_point"], [codes],
                                          name=f"{base}.quantize"))
        if container is np.uint8 and qp["qmax"] < np.iinfo(container).max:
            graph.initializer.extend([
                numpy_helper.from_array(np.array(qp["qmin"], dtype=container), f"{base}.qmin"),
                numpy_helper.from_array(np.array(qp["qmax"], dtype=container), f"{base}.qmax")])
            new_nodes.append(helper.make_node("Clip", [codes, f"{base}.qmin", f"{base}.qmax"], [codes + "_clipped"],
                                              name=f"{base}.clip"))
            codes += "_clipped"
        new_nodes.append(helper.make_node("DequantizeLinear", [codes, f"{base}.scale", f"{base}.zero_point"],
                                          [f"{base}.output"], name=f"{base}.dequantize"))
        node.input[0] = f"{base}.output"
        done[name] = qp
    _insert_before_users(graph, new_nodes)
    return done


def _insert_before_users(graph, new_nodes) -> None:
    """Put each new node right before the first node that reads one of its outputs (topological order kept)."""
    for new in reversed(new_nodes):  # a quantizer's DequantizeLinear first, then the nodes that feed it
        nodes = list(graph.node)
        at = next((i for i, n in enumerate(nodes) if set(n.input) & set(new.output)), len(nodes))
        graph.node.insert(at, new)


def _int4():
    import ml_dtypes  # onnx's own dependency: numpy dtypes for int4

    return ml_dtypes.int4


def export_onnx(qmodel: nn.Module, path: str | os.PathLike, example_input: torch.Tensor, *,
                module: str | None = None, int4: bool = True, opset: int = DEFAULT_OPSET,
                input_name: str = "input", output_name: str = "output") -> dict[str, Any]:
    """Export a fake-quantized model (or its submodule ``module``, e.g. ``"g_a"``) to ONNX with its weights as
    integers + DequantizeLinear; static shapes of ``example_input``. Returns a size report:
    ``file_bytes``, ``plan_size_bits`` (the exported layers' plan size), ``layers`` ({layer: bits, container})."""
    return _export(qmodel, bake(qmodel, drop_activations=True), path, example_input, module=module, int4=int4,
                   opset=opset, names=(input_name, output_name))


def _export(qmodel: nn.Module, baked: nn.Module, path: str | os.PathLike, example_input: torch.Tensor, *,
            module: str | None, int4: bool, opset: int, names: tuple[str, str]) -> dict[str, Any]:
    import onnx

    target = (baked.get_submodule(module) if module else baked).cpu()
    graph_model = _float_graph(target.eval(), example_input.detach().cpu(), opset, names)
    layers = quantized_weight_graph(graph_model, qmodel, module or "", int4=int4)
    if module and not layers:
        raise ValueError(f"submodule '{module}' of {type(qmodel).__name__} has no quantized layer")
    acts = activation_qdq_graph(graph_model, qmodel, module or "")
    onnx.checker.check_model(graph_model)
    data = graph_model.SerializeToString()
    path = Path(path)
    atomic_write(path, lambda fh: fh.write(data))
    return {"path": str(path), "file_bytes": path.stat().st_size,
            "plan_size_bits": sum(v.pop("plan_bits") for v in layers.values()), "layers": layers,
            "activations": acts}


def export_lic_transforms(qmodel: nn.Module, directory: str | os.PathLike, *, height: int = 64, width: int = 64,
                          transforms: Sequence[str] = LIC_TRANSFORMS, int4: bool = True,
                          opset: int = DEFAULT_OPSET) -> dict[str, dict[str, Any]]:
    """Write ``<directory>/<transform>.onnx`` for each transform of a fake-quantized LIC model, with the input
    shape each one sees when a ``height`` x ``width`` image passes through (:func:`transform_inputs`)."""
    device = next(qmodel.parameters()).device
    inputs = transform_inputs(qmodel, torch.zeros(1, 3, height, width, device=device), transforms)
    baked = bake(qmodel, drop_activations=True)
    return {t: _export(qmodel, baked, Path(directory) / f"{t}.onnx", inputs[t], module=t, int4=int4, opset=opset,
                       names=("input", "output")) for t in transforms}


def transform_inputs(model: nn.Module, image: torch.Tensor,
                     transforms: Sequence[str] = LIC_TRANSFORMS) -> dict[str, torch.Tensor]:
    """The input each named submodule receives during ``model(image)`` (forward pre-hooks)."""
    seen: dict[str, torch.Tensor] = {}
    handles = []
    for t in transforms:
        if not hasattr(model, t):
            raise ValueError(f"{type(model).__name__} has no transform '{t}'")

        def hook(_m, args, t=t):
            seen.setdefault(t, args[0].detach().clone())
        handles.append(getattr(model, t).register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            model(image)
    finally:
        for h in handles:
            h.remove()
    return seen


def run_onnx(path: str | os.PathLike, x: torch.Tensor, *, optimize: bool = False) -> torch.Tensor:
    """Run an exported file on one input with onnxruntime (CPU); returns the first output as a tensor.

    ``optimize=False`` (default) runs the graph as written (graph optimizations off): the reference semantics of
    QuantizeLinear/DequantizeLinear, which equal bitalloc's fake-quantized forward. With ``optimize=True``
    onnxruntime may fuse ``DequantizeLinear -> Conv -> Relu -> QuantizeLinear`` into integer kernels
    (QLinearConv), which requantize each layer's output on the next layer's grid and round a few values to
    the neighbouring level: the deployed integer arithmetic, not bit-identical to the float simulation.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    out = sess.run(None, {sess.get_inputs()[0].name: x.detach().cpu().numpy()})
    return torch.from_numpy(out[0])
