"""A hyperprior LIC model with content-aware quantizers and per-image dynamic weight bit-widths.

DynaQuant (Bao et al., arXiv 2511.07903) on CompressAI's Scale / Mean-Scale Hyperprior. Every Conv2d /
ConvTranspose2d becomes a :class:`DynamicLayer` (its input through a content-aware activation quantizer, its
weight through a :class:`~bitalloc.dynaquant.quantizers.NestedWeight`). Three symmetric selectors decide the
bits, each from features both sides of the channel have::

    x -> g_a.0 --+--> S_enc --> bits of g_a.2, g_a.4, g_a.6            (encoder only)
                 +--> g_a.1 ... g_a.6 -> y -> h_a (8 bit) -> z -> EB -> z_hat
    z_hat --------> S_hyp --> bits of h_s.0, h_s.2, h_s.4               (encoder and decoder: same z_hat)
    y_hat -> g_s.0 --+--> S_syn --> bits of g_s.2, g_s.4, g_s.6         (decoder only)
                     +--> g_s.1 ... g_s.6 -> x_hat

g_a.0, g_s.0 and the hyper-encoder h_a stay at 8 bits (the paper's choice); the selectors run in float and are
not part of the weight bits. No bit configuration is transmitted: the decoder recomputes S_hyp and S_syn from
z_hat and y_hat, which it decodes exactly, and the argmax at inference is deterministic.

Average bits of one image: the parameter-weighted mean over all quantized layers (the fixed 8-bit ones
included), ``avg_bits = sum_n p_n b_n / sum_n p_n`` -- the same weighting as :meth:`BitPlan.avg_bits`, so a
static plan and the dynamic model are compared at the same definition of cost. The *storage* is that of the
stored 8-bit integers; the dynamic bits reduce the precision the layers compute with (bit-operations,
``MACs x weight bits x activation bits``), not the file size.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn

from bitalloc.errors import BudgetTooSmallError
from bitalloc.graph import quantizable_layers
from bitalloc.quant import weight_mask

from .layer import FIXED_BITS, DynamicLayer
from .selector import BitSelector

__all__ = ["DynaQuantModel", "DynamicLayer"]

def _hyperprior_kind(model: nn.Module) -> str:
    from compressai.models import MeanScaleHyperprior, ScaleHyperprior

    masked = [n for n, m in quantizable_layers(model).items() if weight_mask(m) is not None]
    if masked:  # mbt2018 and cheng2020-* subclass MeanScaleHyperprior, but this forward skips their context model
        raise TypeError(f"DynaQuant supports ScaleHyperprior and MeanScaleHyperprior; {type(model).__name__} has a "
                        f"causal context model (masked layer '{masked[0]}') that its forward and bitstreams do not "
                        "run")
    if isinstance(model, MeanScaleHyperprior):
        return "mean_scale"
    if isinstance(model, ScaleHyperprior):
        return "scale"
    raise TypeError(f"DynaQuant supports ScaleHyperprior and MeanScaleHyperprior, got {type(model).__name__}")


class DynaQuantModel(nn.Module):
    """The dynamic model built from a float hyperprior (copied, never mutated); see the module docstring."""

    GROUPS = {"enc": "g_a", "hyp": "h_s", "syn": "g_s"}

    def __init__(self, float_model: nn.Module, candidate_bits=(4, 6, 8), *, act_bits: int | None = 8,
                 estimator: str = "dgm", beta: float = 2.0, max_bits: int | None = None,
                 calibration: str = "minmax"):
        super().__init__()
        self.kind = _hyperprior_kind(float_model)
        self.candidate_bits = tuple(sorted(int(b) for b in candidate_bits))
        if len(set(self.candidate_bits)) != len(self.candidate_bits) or not self.candidate_bits:
            raise ValueError(f"candidate_bits must be distinct bit-widths, got {candidate_bits!r}")
        self.config = dict(candidate_bits=self.candidate_bits, act_bits=act_bits, estimator=estimator, beta=beta,
                           max_bits=max_bits, calibration=calibration)
        base = copy.deepcopy(float_model)
        self.meta = dict(getattr(float_model, "meta", {}) or {})
        layers = quantizable_layers(base)
        self.layer_names = list(layers)
        self.num_params = {n: int(m.weight.numel()) for n, m in layers.items()}
        self.dynamic_layers: dict[str, list[str]] = {g: [] for g in self.GROUPS}
        for name, m in layers.items():
            branch, idx = name.split(".")
            dynamic = (branch in ("g_a", "g_s") and idx != "0") or branch == "h_s"
            parent = getattr(base, branch)
            parent[int(idx)] = DynamicLayer(m, name, self.candidate_bits, dynamic=dynamic, act_bits=act_bits,
                                            estimator=estimator, beta=beta, calibration=calibration)
            if dynamic:
                group = {"g_a": "enc", "h_s": "hyp", "g_s": "syn"}[branch]
                self.dynamic_layers[group].append(name)
        self.base = base
        n_ch = {"enc": base.g_a[0].layer.out_channels, "hyp": base.h_s[0].layer.in_channels,
                "syn": base.g_s[0].layer.out_channels}
        self.selectors = nn.ModuleDict({g: BitSelector(n_ch[g], len(self.dynamic_layers[g]), self.candidate_bits,
                                                       max_bits=max_bits) for g in self.GROUPS})
        self.tau = 1.0
        self.last_bits: dict[str, int] = {}

    # bookkeeping ---------------------------------------------------------------------------------------------
    def layer(self, name: str) -> DynamicLayer:
        branch, idx = name.split(".")
        return getattr(self.base, branch)[int(idx)]

    def layers(self) -> dict[str, DynamicLayer]:
        return {n: self.layer(n) for n in self.layer_names}

    def set_max_bits(self, max_bits: int | None) -> None:
        self.config["max_bits"] = max_bits
        for s in self.selectors.values():
            s.max_bits = max_bits

    def set_bit_bias(self, value: float) -> None:
        for s in self.selectors.values():
            s.bit_bias.fill_(float(value))

    def min_avg_bits(self) -> float:
        """The smallest achievable average: every dynamic layer at the lowest candidate."""
        dyn = {n for g in self.dynamic_layers.values() for n in g}
        lo = self.candidate_bits[0]
        total = sum(self.num_params.values())
        return sum(p * (lo if n in dyn else FIXED_BITS) for n, p in self.num_params.items()) / total

    def check_target(self, target_avg_bits: float) -> None:
        """Raise :class:`~bitalloc.errors.BudgetTooSmallError` when ``target_avg_bits`` is below
        :meth:`min_avg_bits` (stating it and which layers stay at 8 bits)."""
        if target_avg_bits < self.min_avg_bits() - 1e-9:
            dyn = {n for g in self.dynamic_layers.values() for n in g}
            fixed = [n for n in self.num_params if n not in dyn]
            raise BudgetTooSmallError(
                f"target_avg_bits={target_avg_bits:g} is below the smallest achievable average "
                f"{self.min_avg_bits():.4g} bits (every dynamic layer at {self.candidate_bits[0]} bits, the fixed "
                f"layers {', '.join(fixed) or '(none)'} at {FIXED_BITS})")

    def _select(self, group: str, features: torch.Tensor, probs: dict) -> None:
        choices, p = self.selectors[group](features, self.tau)
        for i, name in enumerate(self.dynamic_layers[group]):
            self.layer(name).choice = choices[:, i]
            probs[name] = p[:, i]

    def expected_bits(self, probs: dict[str, torch.Tensor]) -> torch.Tensor:
        """(N,) parameter-weighted expected average bits under the selectors' softmax (L_bits)."""
        bits = torch.tensor(self.candidate_bits, dtype=torch.float32)
        total = sum(self.num_params.values())
        out = 0.0
        for name, p in self.num_params.items():
            out = out + p * ((probs[name] * bits).sum(-1) if name in probs else FIXED_BITS)
        return out / total

    def chosen_bits(self) -> dict[str, torch.Tensor]:
        """{layer: (N,) weight bits} of the last forward pass."""
        return {n: m.bits_used for n, m in self.layers().items()}

    def avg_bits_of(self, bits: dict[str, torch.Tensor]) -> torch.Tensor:
        total = sum(self.num_params.values())
        return sum(self.num_params[n] * b for n, b in bits.items()) / total

    # the transforms ------------------------------------------------------------------------------------------
    def _transform(self, layers: nn.Sequential, group: str, x, probs):
        """Run ``layers``; the selectors of ``group`` choose from the first layer's (fixed 8-bit) output."""
        h = layers[0](x)
        self._select(group, h, probs)
        for m in list(layers)[1:]:
            h = m(h)
        return h

    def _hyper_synthesis(self, z_hat, probs):
        self._select("hyp", z_hat, probs)
        params = self.base.h_s(z_hat)
        if self.kind == "mean_scale":
            scales, means = params.chunk(2, 1)
            return scales, means
        return params, None

    def _h_a_input(self, y):
        return torch.abs(y) if self.kind == "scale" else y

    def forward(self, x: torch.Tensor) -> dict:
        probs: dict[str, torch.Tensor] = {}
        y = self._transform(self.base.g_a, "enc", x, probs)
        z = self.base.h_a(self._h_a_input(y))
        z_hat, z_likelihoods = self.base.entropy_bottleneck(z)
        scales, means = self._hyper_synthesis(z_hat, probs)
        y_hat, y_likelihoods = self.base.gaussian_conditional(y, scales, means=means)
        x_hat = self._transform(self.base.g_s, "syn", y_hat, probs)
        return {"x_hat": x_hat, "likelihoods": {"y": y_likelihoods, "z": z_likelihoods}, "probs": probs,
                "expected_bits": self.expected_bits(probs)}

    # real bitstreams -----------------------------------------------------------------------------------------
    def _record(self, names) -> None:
        for n in names:
            self.last_bits[n] = int(self.layer(n).bits_used[0])

    @torch.no_grad()
    def compress(self, x: torch.Tensor) -> dict:
        probs: dict = {}
        gc = self.base.gaussian_conditional
        y = self._transform(self.base.g_a, "enc", x, probs)
        z = self.base.h_a(self._h_a_input(y))
        z_strings = self.base.entropy_bottleneck.compress(z)
        z_hat = self.base.entropy_bottleneck.decompress(z_strings, z.size()[-2:])
        scales, means = self._hyper_synthesis(z_hat, probs)
        indexes = gc.build_indexes(scales)
        y_strings = gc.compress(y, indexes, means=means)
        self.last_bits = {}
        self._record([n for n in self.layer_names if n.split(".")[0] in ("g_a", "h_a")])
        self.encoder_hyp_bits = {n: int(self.layer(n).bits_used[0]) for n in self.dynamic_layers["hyp"]}
        self.last_macs = {n: self.layer(n).macs for n in self.layer_names if n.split(".")[0] in ("g_a", "h_a")}
        return {"strings": [y_strings, z_strings], "shape": z.size()[-2:]}

    @torch.no_grad()
    def decompress(self, strings, shape) -> dict:
        probs: dict = {}
        gc = self.base.gaussian_conditional
        z_hat = self.base.entropy_bottleneck.decompress(strings[1], shape)
        scales, means = self._hyper_synthesis(z_hat, probs)
        indexes = gc.build_indexes(scales)
        y_hat = gc.decompress(strings[0], indexes, z_hat.dtype, means=means)
        x_hat = self._transform(self.base.g_s, "syn", y_hat, probs).clamp_(0, 1)
        self._record([n for n in self.layer_names if n.split(".")[0] in ("h_s", "g_s")])
        if not hasattr(self, "last_macs"):
            self.last_macs = {}
        self.last_macs.update({n: self.layer(n).macs for n in self.layer_names if n.split(".")[0] in ("h_s", "g_s")})
        return {"x_hat": x_hat}

    def load_state_dict(self, state_dict, strict: bool = True):
        """Resize the entropy coders' CDF buffers first (as CompressAI's ``CompressionModel`` does)."""
        from compressai.entropy_models import EntropyBottleneck, GaussianConditional
        from compressai.models.utils import update_registered_buffers

        for name, module in self.named_modules():
            if isinstance(module, (EntropyBottleneck, GaussianConditional)) and any(
                    k.startswith(name + ".") for k in state_dict):
                names = ["_quantized_cdf", "_offset", "_cdf_length"]
                names += ["scale_table"] if isinstance(module, GaussianConditional) else []
                update_registered_buffers(module, name, names, state_dict)
        return super().load_state_dict(state_dict, strict=strict)

    def update(self, scale_table=None, force: bool = False) -> bool:
        return self.base.update(scale_table=scale_table, force=force)

    def aux_loss(self) -> torch.Tensor:
        return self.base.aux_loss()

    def freeze(self) -> "DynaQuantModel":
        """Store every layer's 8-bit integers for inference (lower precisions are derived from them)."""
        for m in self.layers().values():
            m.weight_q.freeze(m.layer.weight)
        return self

    def unfreeze(self) -> "DynaQuantModel":
        for m in self.layers().values():
            m.weight_q.unfreeze()
        return self
