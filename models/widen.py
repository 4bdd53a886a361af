"""Growing a trained hyperprior model's widths (N and M) without changing what it computes: a start for top qualities.

The compact models (N = 48 transform channels, M = 64 latent channels) stop gaining PSNR near 30 dB on Kodak however
large lambda is: more rate cannot buy detail the 64-channel latent cannot hold (CompressAI moves from M = 192 to 320
for its top qualities for the same reason), and a latent grown to M = 192 still stops near 31 dB because the
48-channel transforms limit it. Training a wider model from scratch costs a whole base run; :func:`widen` instead
copies a trained model into a wider one (N and M each as large or larger) so that the wider one computes *exactly*
the same reconstruction and the same likelihoods of the old channels, and fine-tuning can then put the new channels
to use (the Net2Net idea of function-preserving growth).

Every convolution keeps the old weights in its old (first) output rows and input columns and gives a new *input*
channel zero weights, so nothing downstream of a new channel sees it until training moves those weights. The new
output rows of the hidden layers keep the wider model's fresh initialisation: they feed only zero-weighted columns,
so they change nothing, and once the first step has moved those columns away from zero the gradients reach them. A
GDN / IGDN layer keeps the old block of ``gamma`` and ``beta`` (stored reparametrised, copied as stored, so their
effective values are the old ones too) and the wider model's initialisation everywhere else: effective
``gamma = 0.1 I`` and ``beta = 1`` on the new channels and an effective cross term of exactly 0 between old and new
channels (the stored off-diagonal ``2**-18`` squares to the reparametriser's pedestal), so an old channel's
normalisation does not see the new ones.

The new latent channels start *silent*: the analysis transform's new output rows are zero (so their latents are 0)
and the hyper-synthesis predicts them the smallest scale the entropy model allows (:data:`SILENT_SCALE`; zero mean in
the Mean-Scale model), so a zero latent costs almost no bits and the wider model starts at the narrow model's rate,
not at the several bpp that freshly initialised rows spend on noise (a first attempt: 4.46 bpp from the shipped
q8's 0.67). In the Mean-Scale model the last hyper-synthesis layer outputs the scales and then the means of every
latent channel (``chunk(2)``): its old scale and mean rows move to the first rows of each half. The new hyper-latent
(z) channels, when N grows, start silent too: the hyper-analysis's last layer has zero new rows and bias (so their z
is 0), and each new channel of the (per-channel) EntropyBottleneck takes the density parameters (matrices, biases,
factors, quantiles) and entropy-table rows of the *old channel where a zero z costs least*
(:func:`cheapest_zero_channel`: the codec's cost of a zero plus training's cost of a zero plus uniform noise), so a
new z channel costs what a zero costs in the old model's cheapest channel (on the shipped and snapshot models, under
0.05 bits per element in training and under 1e-5 in the codec): nothing is spent on it until training gives it
something to carry. Copying a channel's density gives the same table rows that ``update(force=True)`` builds, which
stays the way to rebuild them after training. Training's additive noise makes the new latents non-zero and
different per channel, so the gradients reach them and break the symmetry.

"Exactly" is bit for bit where the floating-point kernels sum and evaluate each old channel the same way at both
widths: PyTorch's CPU convolutions on oneDNN (its choice for a batch of two or more images, for the 5x5 layers and
for large inputs) and the GaussianConditional did so in every test here. Two kernels do not, and differ in the last bit:
PyTorch's native CPU convolution (an im2col GEMM whose blocking depends on the input width), which it picks for the
3x3 layers of the hyper-transforms on a single small image, and, when N grows, the EntropyBottleneck's elementwise
softplus / tanh / sigmoid, whose vectorised body and scalar tail split the (channels x ...) tensors differently, so
the old hyper-latent likelihoods agree to float rounding (about 1e-7), not bit for bit. The codec's hyper-latent
stream does not use those likelihoods: its table rows are copied exactly.

Scale Hyperprior and Mean-Scale Hyperprior only; context models (Cheng2020, mbt2018) are refused by name.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
from compressai.entropy_models import EntropyBottleneck
from compressai.layers import GDN
from compressai.models import MeanScaleHyperprior, ScaleHyperprior

__all__ = ["cheapest_zero_channel", "widen", "widened_state_dict"]

#: (class, layer whose output is the [scales, means] halves of the latent channels) of each supported model
_SPLIT_OUTPUT = {ScaleHyperprior: None, MeanScaleHyperprior: "h_s.4"}
#: the layers whose outputs are the latent (analysis), the hyper-latent (hyper-analysis) and the latent's entropy
#: parameters (hyper-synthesis): their new output rows start silent instead of at the fresh initialisation
_LATENT_OUT, _HYPER_LATENT_OUT, _PARAMS_OUT = "g_a.6", "h_a.4", "h_s.4"
#: the scale a new latent channel starts with: CompressAI's GaussianConditional lower bound (a zero latent then
#: costs about 1e-5 bits); positive, so the Scale Hyperprior's final ReLU passes its gradient
SILENT_SCALE = 0.11
#: the EntropyBottleneck's tables, one row (or entry) per channel; rebuilt by ``update(force=True)``
_EB_TABLES = ("_quantized_cdf", "_offset", "_cdf_length")


def _family(model: nn.Module) -> type:
    from .run_state import has_context_model

    if has_context_model(model) or type(model) not in _SPLIT_OUTPUT:
        raise TypeError(f"widen: {type(model).__name__} is not supported (Scale Hyperprior and Mean-Scale Hyperprior "
                        "only; a context model's layers would need their own mapping)")
    return type(model)


def _rows(old: int, new: int, split: bool) -> torch.Tensor:
    """Where the old output channels go in the wider layer: the first ones, or the first of each half."""
    if not split:
        return torch.arange(old)
    return torch.cat([torch.arange(old // 2), new // 2 + torch.arange(old // 2)])


def cheapest_zero_channel(bottleneck: EntropyBottleneck, grid: int = 64) -> int:
    """The channel of ``bottleneck`` where a zero input costs least: the codec's cost (eval mode: the zero quantized
    around the channel's median) plus training's (the zero plus uniform noise in (-1/2, 1/2), averaged over ``grid``
    midpoints); the first such channel on a tie. Both terms count because a channel can give its median bin
    probability 1 and still be expensive under noise (a trained q8 model's channel 0: 0 bits quantized, 0.6 bits
    under noise), and the new channels are trained from the start."""
    channels = bottleneck.quantiles.shape[0]
    with torch.no_grad():
        _, quantized = bottleneck(torch.zeros(1, channels, 1, 1), training=False)
        noise = ((torch.arange(grid) + 0.5) / grid - 0.5).expand(channels, 1, grid).contiguous()
        noisy, _, _ = bottleneck._likelihood(noise)
        if bottleneck.use_likelihood_bound:
            noisy = bottleneck.likelihood_lower_bound(noisy)
    cost = -torch.log2(quantized.flatten()) - torch.log2(noisy).mean(-1).flatten()
    return int(cost.argmin())


def _widen_conv(name, module, old_module, state, family) -> None:
    w_old = old_module.weight.detach()
    transposed = isinstance(module, nn.ConvTranspose2d)  # its weight is (in, out, k, k)
    out_dim, in_dim = (1, 0) if transposed else (0, 1)
    rows = _rows(w_old.shape[out_dim], module.weight.shape[out_dim], name == _SPLIT_OUTPUT[family])
    n_in = w_old.shape[in_dim]
    w = state[f"{name}.weight"]
    w.narrow(in_dim, n_in, w.shape[in_dim] - n_in).zero_()  # new inputs: nothing reaches any output
    w.narrow(in_dim, 0, n_in).index_copy_(out_dim, rows, w_old)
    if module.bias is not None:
        state[f"{name}.bias"].index_copy_(0, rows, old_module.bias.detach())
    if name not in (_LATENT_OUT, _HYPER_LATENT_OUT, _PARAMS_OUT):
        return  # a hidden layer's new rows keep the fresh initialisation (module docstring)
    new_rows = torch.ones(module.weight.shape[out_dim], dtype=torch.bool)
    new_rows[rows] = False
    w.index_fill_(out_dim, new_rows.nonzero().flatten(), 0.0)  # silent new channels (module docstring)
    if module.bias is not None:
        bias = state[f"{name}.bias"]
        bias[new_rows] = 0.0
        if name == _PARAMS_OUT:  # new scales at SILENT_SCALE (the Mean-Scale means' half stays 0)
            if name == _SPLIT_OUTPUT[family]:
                new_rows[len(new_rows) // 2:] = False
            bias[new_rows] = SILENT_SCALE


def _widen_gdn(name, old_module, state) -> None:
    """The old block of the (stored, reparametrised) ``beta`` and ``gamma``; the fresh init elsewhere, whose effective
    cross terms are 0 (module docstring)."""
    n = old_module.beta.shape[0]
    state[f"{name}.beta"][:n] = old_module.beta.detach()
    state[f"{name}.gamma"][:n, :n] = old_module.gamma.detach()


def _widen_bottleneck(name, old_module, state, old_state) -> set[str]:
    """Old channels as they were; every new channel a copy of the old channel where a zero is likeliest. The keys
    it placed."""
    n = old_module.quantiles.shape[0]
    source = cheapest_zero_channel(old_module)
    prefix = f"{name}."
    keys = {k for k in old_state if k.startswith(prefix)}
    for key in keys:
        value, local = old_state[key], key[len(prefix):]
        if local in _EB_TABLES:
            if value.numel() == 0:  # the old model's tables were never built: neither are the new ones
                state[key] = value.clone()
                continue
            extra = state[f"{prefix}quantiles"].shape[0] - n
            state[key] = torch.cat([value, value[source:source + 1].expand(extra, *value.shape[1:])])
        elif local.split(".")[0] in ("quantiles", "matrices", "biases", "factors"):  # each (channels, ...)
            state[key][:n] = value
            state[key][n:] = value[source]
        else:  # target, likelihood bound: not per channel
            state[key] = value.clone()
    return keys


def widened_state_dict(old: nn.Module, new: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict that makes ``new`` (the same class as ``old``, with N and M each as large or larger) compute
    what ``old`` does (module docstring): zeros for every new input channel, silent new latent and hyper-latent
    channels, the old block of every GDN, and ``new``'s own initialisation for the new output channels of the hidden
    layers, which nothing reads until training moves them."""
    family = _family(old)
    if type(new) is not family:
        raise TypeError(f"widen: {type(new).__name__} is not a {family.__name__}")
    if new.N < old.N or new.M < old.M:
        raise ValueError(f"widen: cannot shrink a model (N and M may only grow); got (N, M) = ({old.N}, {old.M}) -> "
                         f"({new.N}, {new.M})")
    state = {k: v.clone() for k, v in new.state_dict().items()}
    old_state = old.state_dict()
    old_modules = dict(old.named_modules())
    placed = set()  # the tensors placed channel by channel below
    for name, module in new.named_modules():
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
            _widen_conv(name, module, old_modules[name], state, family)
            placed.update(f"{name}.{p}" for p in ("weight", "bias") if getattr(module, p) is not None)
        elif isinstance(module, GDN):
            _widen_gdn(name, old_modules[name], state)
            placed.update((f"{name}.beta", f"{name}.gamma"))
        elif isinstance(module, EntropyBottleneck):
            placed.update(_widen_bottleneck(name, old_modules[name], state, old_state))
    # everything else (the GDNs' reparametriser constants, the GaussianConditional and its tables, which CompressAI's
    # load_state_dict resizes): no width sizes it, as it was
    state.update({k: v.clone() for k, v in old_state.items() if k not in placed})
    return state


def widen(model: nn.Module, M: int | None = None, N: int | None = None, seed: int = 0) -> nn.Module:
    """A copy of ``model`` with ``N`` transform channels and ``M`` latent channels (each as large as ``model``'s or
    larger; ``None``: unchanged) that computes the same reconstruction and the same likelihoods of the old channels,
    and nearly the same rate (module docstring); ``seed`` seeds the wider model's construction (the fresh rows of
    its hidden layers)."""
    family = _family(model)
    N, M = model.N if N is None else N, model.M if M is None else M
    if N < model.N or M < model.M:
        raise ValueError(f"widen: cannot shrink a model (N and M may only grow); got (N, M) = ({model.N}, {model.M}) "
                         f"-> ({N}, {M})")
    torch.manual_seed(seed)
    wide = family(N, M)
    wide.load_state_dict(widened_state_dict(model, wide))
    wide.meta = copy.deepcopy(getattr(model, "meta", {}))
    return wide.train(model.training)
