"""Quantizable layers of a model and the data-flow graph between them.

A *quantizable layer* is a module whose weight a bit plan sets: ``Conv2d``, ``ConvTranspose2d``, ``Linear``,
and optionally CompressAI's ``GDN`` (its ``gamma`` matrix). Layers are named by module path (``"g_a.0"``),
the names bit plans use. Entropy models (``EntropyBottleneck``, ``GaussianConditional``) hold no quantizable
layer: their CDF tables are never touched by a plan.

The graph (:func:`layer_graph`) is traced with forward hooks plus a ``TorchFunctionMode`` that propagates,
through every torch operation, the set of quantizable layers a tensor was last produced by. An edge ``u -> v``
means that ``v``'s input depends on ``u``'s output without passing through another quantizable layer. For
CompressAI's Scale Hyperprior this gives the chain g_a, the hyper-encoder h_a (fed by g_a's last layer), h_s,
and g_s (fed by g_a's last layer through the rounding of y)::

    x -> g_a.0 -> ... -> g_a.6 -> h_a.0 -> h_a.2 -> h_a.4 -> [EB] -> h_s.0 -> h_s.2 -> h_s.4
                           \\-> [round] -> g_s.0 -> g_s.2 -> g_s.4 -> g_s.6 -> x_hat
"""

from __future__ import annotations

from typing import Any

import networkx as nx
import torch
import torch.nn as nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

__all__ = ["BRANCHES", "branch_of", "channel_axis", "is_quantizable", "layer_graph", "quantizable_layers"]

#: Module-path prefixes of CompressAI models -> branch label.
BRANCHES: dict[str, str] = {
    "g_a": "g_a", "g_s": "g_s", "h_a": "h_a", "h_s": "h_s",
    "entropy_parameters": "entropy_parameters", "context_prediction": "context_model",
}

_WEIGHT_TYPES = (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)


def _gdn_type() -> type | None:
    try:
        from compressai.layers import GDN
    except ImportError:  # pragma: no cover - compressai is a dependency
        return None
    return GDN


def is_gdn(module: nn.Module) -> bool:
    t = _gdn_type()
    return t is not None and isinstance(module, t)


def is_quantizable(module: nn.Module, gdn: bool = False) -> bool:
    """A weight layer (Conv2d, ConvTranspose2d, Linear), or a GDN when ``gdn``."""
    return isinstance(module, _WEIGHT_TYPES) or (gdn and is_gdn(module))


def channel_axis(module: nn.Module) -> int:
    """The output-channel axis of the quantized tensor: 1 for ConvTranspose (weight is in x out), else 0."""
    return 1 if isinstance(module, nn.modules.conv._ConvTransposeNd) else 0


def branch_of(name: str) -> str:
    """Branch label of a module path: g_a, g_s, h_a, h_s, entropy_parameters, context_model, or the prefix."""
    head = name.split(".", 1)[0]
    return BRANCHES.get(head, head)


def quantizable_layers(model: nn.Module, *, gdn: bool = False) -> dict[str, nn.Module]:
    """``{module path: module}`` of every quantizable layer, in registration order.

    Modules inside entropy models are skipped. Already fake-quantized layers (see :mod:`bitalloc.quant`) are
    still listed under their own name.
    """
    from compressai.entropy_models import EntropyModel

    skip: list[str] = []
    out: dict[str, nn.Module] = {}
    for name, module in model.named_modules():
        if isinstance(module, EntropyModel):
            skip.append(name + ".")
            continue
        if not name or any(name.startswith(s) for s in skip) or ".parametrizations." in name:
            continue
        if is_quantizable(module, gdn):
            out[name] = module
    return out


class _Provenance(TorchFunctionMode):
    """Tags every tensor produced by a torch function with the union of its inputs' tags."""

    def __init__(self, tags: dict[int, frozenset[str]], keep: list[Any]):
        super().__init__()
        self.tags, self.keep = tags, keep

    def tags_of(self, obj: Any) -> frozenset[str]:
        leaves, _ = tree_flatten(obj)
        out: frozenset[str] = frozenset()
        for t in leaves:
            if isinstance(t, torch.Tensor):
                out |= self.tags.get(id(t), frozenset())
        return out

    def mark(self, obj: Any, tags: frozenset[str]) -> None:
        leaves, _ = tree_flatten(obj)
        for t in leaves:
            if isinstance(t, torch.Tensor):
                self.tags[id(t)] = tags
                self.keep.append(t)  # ids stay unique while the trace runs

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        tags = self.tags_of((args, kwargs))
        if tags:
            self.mark(out, tags | self.tags_of(out))
        return out


def layer_graph(model: nn.Module, x: torch.Tensor | None = None, *, gdn: bool = False) -> nx.DiGraph:
    """Data-flow DiGraph of the quantizable layers, traced on ``x`` (default: one random 3x64x64 image).

    Node attributes: ``kind`` (class name), ``branch``, ``num_params`` (of the quantized tensor), ``order``
    (execution order). Layers that did not run keep ``order=-1`` and no edges.
    """
    layers = quantizable_layers(model, gdn=gdn)
    g = nx.DiGraph()
    for name, m in layers.items():
        w = m.gamma if is_gdn(m) else m.weight
        g.add_node(name, kind=type(m).__name__.removeprefix("Parametrized"), branch=branch_of(name),
                   num_params=int(w.numel()), order=-1)
    if x is None:
        x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    tags: dict[int, frozenset[str]] = {}
    keep: list[Any] = []
    mode = _Provenance(tags, keep)
    order: list[str] = []

    def pre(name: str):
        def hook(module, args):
            for src in mode.tags_of(args):
                g.add_edge(src, name)
        return hook

    def post(name: str):
        def hook(module, args, out):
            order.append(name)
            mode.mark(out, frozenset([name]))
        return hook

    handles = []
    for name, m in layers.items():
        handles.append(m.register_forward_pre_hook(pre(name)))
        handles.append(m.register_forward_hook(post(name)))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad(), mode:
            model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    for i, name in enumerate(dict.fromkeys(order)):
        g.nodes[name]["order"] = i
    return g
