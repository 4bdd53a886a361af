"""Graph surgery for :mod:`bitalloc.onnx_export`: integer weights + DequantizeLinear, activation Q/DQ pairs.

Both functions edit an ``onnx.ModelProto`` exported (float) from ``bitalloc.bake.bake(qmodel)`` or one of its
submodules (``prefix``), whose initializers carry the parameters' names; see :mod:`bitalloc.onnx_export`.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from bitalloc.bake import quantized_layers
from bitalloc.quant import layer_size_bits, quantized_tensor_name, weight_quantizer

__all__ = ["activation_qdq_graph", "quantized_weight_graph"]


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
