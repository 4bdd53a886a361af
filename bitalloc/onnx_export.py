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
at its own bit-width (:func:`bitalloc.onnx_qdq.activation_qdq_graph`): the quantizer's grid is ONNX's, so the
codes are the quantizer's codes of the same input. End to end, a float difference of ~1e-6 upstream
(onnxruntime's GDN vs torch's) can move a value across a rounding boundary of a later quantizer, so outputs
agree to 1e-5 except such values (one step of that quantizer).

LIC models: :func:`export_onnx` without an example input writes the four transforms (``g_a``, ``h_a``, ``h_s``,
``g_s``) into one file as independent graphs, :func:`export_lic_transforms` one file per transform; static shapes
from a sample forward pass at ``height`` x ``width``; the entropy coder stays in CompressAI.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn as nn

from bitalloc.atomic import atomic_write
from bitalloc.bake import bake
from bitalloc.onnx_qdq import activation_qdq_graph, quantized_weight_graph

__all__ = ["LIC_TRANSFORMS", "export_lic_transforms", "export_onnx", "run_onnx", "transform_inputs"]

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


def export_onnx(qmodel: nn.Module, path: str | os.PathLike, example_input: torch.Tensor | None = None, *,
                module: str | None = None, height: int = 64, width: int = 64, int4: bool = True,
                opset: int = DEFAULT_OPSET) -> dict[str, Any]:
    """Export a fake-quantized model (or its submodule ``module``, e.g. ``"g_a"``) to one ONNX file: weights as
    integer codes + DequantizeLinear, activation Q/DQ pairs; static shapes of ``example_input`` (input
    ``"input"``, output ``"output"``). Without ``example_input``, an LIC model's four transforms go into the one
    file as independent graphs (inputs ``"g_a/input"``..., outputs ``"g_a/output"``..., shapes of a ``height`` x
    ``width`` image; the entropy coder stays in CompressAI). Returns a size report: ``file_bytes``,
    ``plan_size_bits`` (the exported layers' plan size), ``layers`` ({layer: bits, container, initializer}),
    ``activations`` ({layer: qparams})."""
    if example_input is not None:
        graph, info = _graph(qmodel, bake(qmodel, drop_activations=True), example_input, module, int4, opset)
        return _write(graph, path, info)
    if module is not None or not all(hasattr(qmodel, t) for t in LIC_TRANSFORMS):
        raise ValueError(f"export_onnx needs example_input= (a batch of the input) for {type(qmodel).__name__}"
                         f"{f' submodule {module!r}' if module else ''}; only an LIC model with "
                         f"{', '.join(LIC_TRANSFORMS)} is exported without one")
    from onnx import compose

    merged, info = None, {"plan_size_bits": 0, "layers": {}, "activations": {}}
    for t, (graph, part) in _lic_graphs(qmodel, height, width, LIC_TRANSFORMS, int4, opset).items():
        graph = compose.add_prefix(graph, prefix=f"{t}/")
        merged = graph if merged is None else compose.merge_models(merged, graph, io_map=[])
        info["plan_size_bits"] += part["plan_size_bits"]
        info["layers"].update(part["layers"])
        info["activations"].update(part["activations"])
    return _write(merged, path, info)


def _graph(qmodel: nn.Module, baked: nn.Module, example_input: torch.Tensor, module: str | None, int4: bool,
           opset: int) -> tuple[Any, dict[str, Any]]:
    target = (baked.get_submodule(module) if module else baked).cpu()
    graph_model = _float_graph(target.eval(), example_input.detach().cpu(), opset, ("input", "output"))
    layers = quantized_weight_graph(graph_model, qmodel, module or "", int4=int4)
    if module and not layers:
        raise ValueError(f"submodule '{module}' of {type(qmodel).__name__} has no quantized layer")
    acts = activation_qdq_graph(graph_model, qmodel, module or "")
    return graph_model, {"plan_size_bits": sum(v.pop("plan_bits") for v in layers.values()), "layers": layers,
                         "activations": acts}


def _write(graph_model, path: str | os.PathLike, info: dict[str, Any]) -> dict[str, Any]:
    import onnx

    onnx.checker.check_model(graph_model)
    data = graph_model.SerializeToString()
    path = Path(path)
    atomic_write(path, lambda fh: fh.write(data))
    return {"path": str(path), "file_bytes": path.stat().st_size, **info}


def _lic_graphs(qmodel: nn.Module, height: int, width: int, transforms: Sequence[str], int4: bool,
                opset: int) -> dict[str, tuple[Any, dict[str, Any]]]:
    device = next(qmodel.parameters()).device
    inputs = transform_inputs(qmodel, torch.zeros(1, 3, height, width, device=device), transforms)
    baked = bake(qmodel, drop_activations=True)
    return {t: _graph(qmodel, baked, inputs[t], t, int4, opset) for t in transforms}


def export_lic_transforms(qmodel: nn.Module, directory: str | os.PathLike, *, height: int = 64, width: int = 64,
                          transforms: Sequence[str] = LIC_TRANSFORMS, int4: bool = True,
                          opset: int = DEFAULT_OPSET) -> dict[str, dict[str, Any]]:
    """Write ``<directory>/<transform>.onnx`` for each transform of a fake-quantized LIC model, with the input
    shape each one sees when a ``height`` x ``width`` image passes through (:func:`transform_inputs`)."""
    graphs = _lic_graphs(qmodel, height, width, transforms, int4, opset)
    return {t: _write(graph, Path(directory) / f"{t}.onnx", info) for t, (graph, info) in graphs.items()}


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


def run_onnx(path: str | os.PathLike, x: torch.Tensor | dict[str, torch.Tensor], *,
             optimize: bool = False) -> torch.Tensor | dict[str, torch.Tensor]:
    """Run an exported file with onnxruntime (CPU): on one tensor (the first input; returns the first output),
    or on ``{input name: tensor}`` (returns ``{output name: tensor}``).

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
    feed = x if isinstance(x, dict) else {sess.get_inputs()[0].name: x}
    out = sess.run(None, {k: v.detach().cpu().numpy() for k, v in feed.items()})
    if not isinstance(x, dict):
        return torch.from_numpy(out[0])
    return {o.name: torch.from_numpy(v) for o, v in zip(sess.get_outputs(), out)}
