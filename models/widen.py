"""Growing a trained hyperprior model's latent (M) without changing what it computes: a start for top qualities.

The compact models (M = 64 latent channels) stop gaining PSNR near 30 dB on Kodak however large lambda is: more
rate cannot buy detail the 64-channel latent cannot hold (CompressAI moves from M = 192 to 320 for its top
qualities for the same reason). Training a wider model from scratch costs a whole base run; :func:`widen`
instead copies a trained model into a wider one so that the wider one computes *exactly* the same
reconstruction and the same likelihoods of the old channels, and fine-tuning can then put the new channels to
use (the Net2Net idea of function-preserving growth).

Every convolution whose channel count depends on M keeps the old weights in the old channels and gives a new
*input* channel zero weights (nothing downstream sees the new channels until training moves them). The new
latent channels start *silent*: the analysis transform's new output rows are zero (so their latents are 0) and
the hyper-synthesis predicts them the smallest scale the entropy model allows (:data:`SILENT_SCALE`; zero mean in
the Mean-Scale model), so a zero latent costs almost no bits and the wider model starts at the narrow model's
rate, not at the several bpp that freshly initialised rows spend on noise (a first attempt: 4.46 bpp from the
shipped q8's 0.67). Training's additive noise makes the new latents non-zero and different per channel, so the
gradients reach them and break the symmetry. In the Mean-Scale model the last hyper-synthesis layer outputs the
scales and then the means of every latent channel (``chunk(2)``): its old scale and mean rows move to the first
rows of each half.

Scale Hyperprior and Mean-Scale Hyperprior only; context models (Cheng2020, mbt2018) are refused by name.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
from compressai.models import MeanScaleHyperprior, ScaleHyperprior

__all__ = ["widen", "widened_state_dict"]

#: (class, layer whose output is the [scales, means] halves of the latent channels) of each supported model
_SPLIT_OUTPUT = {ScaleHyperprior: None, MeanScaleHyperprior: "h_s.4"}
#: the layers whose outputs are the latent (analysis) and its entropy parameters (hyper-synthesis)
_LATENT_OUT, _PARAMS_OUT = "g_a.6", "h_s.4"
#: the scale a new latent channel starts with: CompressAI's GaussianConditional lower bound (a zero latent then
#: costs about 1e-5 bits); positive, so the Scale Hyperprior's final ReLU passes its gradient
SILENT_SCALE = 0.11


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


def widened_state_dict(old: nn.Module, new: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict that makes ``new`` (the same class as ``old``, as wide or wider) compute what ``old`` does
    (module docstring): zeros for every new input channel, silent new latent channels, and ``new``'s own
    initialisation for the other new output channels (the Mean-Scale hyper-synthesis's hidden layers, sized by M),
    which nothing reads until training moves them."""
    family = _family(old)
    if type(new) is not family:
        raise TypeError(f"widen: {type(new).__name__} is not a {family.__name__}")
    if new.N != old.N or new.M < old.M:
        raise ValueError(f"widen: grows M only (N stays); got N={old.N}, M={old.M} -> N={new.N}, M={new.M}")
    state = {k: v.clone() for k, v in new.state_dict().items()}
    old_state = old.state_dict()
    old_modules = dict(old.named_modules())
    mapped = set()  # the convolutions' tensors, placed channel by channel below
    for name, module in new.named_modules():
        if not isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
            continue
        w_old = old_modules[name].weight.detach()
        transposed = isinstance(module, nn.ConvTranspose2d)  # its weight is (in, out, k, k)
        out_dim, in_dim = (1, 0) if transposed else (0, 1)
        rows = _rows(w_old.shape[out_dim], module.weight.shape[out_dim], name == _SPLIT_OUTPUT[family])
        n_in = w_old.shape[in_dim]
        w = state[f"{name}.weight"]
        w.narrow(in_dim, n_in, w.shape[in_dim] - n_in).zero_()  # new inputs: nothing reaches the old outputs
        w.narrow(in_dim, 0, n_in).index_copy_(out_dim, rows, w_old)
        mapped.add(f"{name}.weight")
        if module.bias is not None:
            state[f"{name}.bias"].index_copy_(0, rows, old_state[f"{name}.bias"])
            mapped.add(f"{name}.bias")
        if name in (_LATENT_OUT, _PARAMS_OUT):  # the new latent channels start silent (module docstring)
            new_rows = torch.ones(module.weight.shape[out_dim], dtype=torch.bool)
            new_rows[rows] = False
            w.index_fill_(out_dim, new_rows.nonzero().flatten(), 0.0)
            if module.bias is not None:
                bias = state[f"{name}.bias"]
                bias[new_rows] = 0.0
                if name == _PARAMS_OUT:  # new scales at SILENT_SCALE (the Mean-Scale means' half stays 0)
                    if name == _SPLIT_OUTPUT[family]:
                        new_rows[len(new_rows) // 2:] = False
                    bias[new_rows] = SILENT_SCALE
    # everything else M does not size (GDN, the entropy models and their tables, which CompressAI's
    # load_state_dict resizes): as it was
    state.update({k: v.clone() for k, v in old_state.items() if k not in mapped})
    return state


def widen(model: nn.Module, M: int, seed: int = 0) -> nn.Module:
    """A copy of ``model`` with ``M`` latent channels that computes the same reconstruction and the same
    likelihoods of the old channels, and nearly the same rate (module docstring); ``seed`` seeds the wider
    model's construction (the fresh rows of the Mean-Scale hyper-synthesis's hidden layers)."""
    family = _family(model)
    torch.manual_seed(seed)
    wide = family(model.N, M)
    wide.load_state_dict(widened_state_dict(model, wide))
    wide.meta = copy.deepcopy(getattr(model, "meta", {}))
    return wide.train(model.training)
