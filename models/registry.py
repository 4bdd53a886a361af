"""One table drives every model factory (the habit of CompressAI's ``zoo/image.py``).

Each entry names a CompressAI architecture, the channel sizes of the paper models per quality (exactly
CompressAI's ``cfgs``), and the *compact* size this project trains on a CPU and ships.

=====================  ==========================  =====================  ===============
name                   class                       paper (N, M)           compact (N, M)
=====================  ==========================  =====================  ===============
bmshj2018-hyperprior   ScaleHyperprior             q1-5 (128,192),        (48, 64)
                       (Balle et al., ICLR 2018)   q6-8 (192,320)
mbt2018-mean           MeanScaleHyperprior         same as above          (48, 64)
                       (Minnen et al., NeurIPS 18)
cheng2020-anchor       Cheng2020Anchor (N only)    q1-3 128, q4-6 192     (48,)
=====================  ==========================  =====================  ===============

Cheng2020-anchor is built as :class:`~bitalloc.models.wavefront.Cheng2020AnchorWavefront`: CompressAI's class
(same layers, same state dict) whose context model is entropy-coded by wavefronts, about ten times fewer serial
steps than CompressAI's raster order (:mod:`bitalloc.models.wavefront`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch.nn as nn
from compressai.models import MeanScaleHyperprior, ScaleHyperprior

from .wavefront import Cheng2020AnchorWavefront

__all__ = [
    "LAMBDAS",
    "MODELS",
    "SIZES",
    "ModelSpec",
    "available_models",
    "build_model",
    "check_channels",
    "check_model",
    "check_quality",
    "lambda_of",
]

#: CompressAI's MSE training lambdas by quality (1-8), used for the RD loss L = R + lambda * 255^2 * MSE.
#: Quality 0 is bitalloc's own low-rate point, one step below CompressAI's ladder (about half of quality 1's
#: lambda, as each CompressAI step roughly doubles it); it exists for the compact models only, so that the
#: shipped compact ladder reaches ~0.1 bpp. CompressAI's paper models and pretrained weights stay 1-8.
LAMBDAS: dict[int, float] = {
    0: 0.0009, 1: 0.0018, 2: 0.0035, 3: 0.0067, 4: 0.0130, 5: 0.0250, 6: 0.0483, 7: 0.0932, 8: 0.1800,
}

SIZES = ("compact", "paper")


@dataclass(frozen=True)
class ModelSpec:
    name: str
    cls: type[nn.Module]
    paper: dict[int, tuple[int, ...]]
    compact: tuple[int, ...]
    citation: str
    #: qualities whose compact size differs from ``compact`` (a wider latent for the top rates, say)
    compact_by_quality: Mapping[int, tuple[int, ...]] = field(default_factory=dict)

    @property
    def qualities(self) -> tuple[int, ...]:
        """CompressAI's qualities (those of the paper models and the pretrained weights)."""
        return tuple(sorted(self.paper))

    def qualities_for(self, size: str = "compact") -> tuple[int, ...]:
        """Valid qualities of one size: the compact models add bitalloc's low-rate quality 0."""
        if size not in SIZES:
            raise ValueError(f"Invalid model size {size!r}; valid sizes: {', '.join(SIZES)}")
        return (0, *self.qualities) if size == "compact" else self.qualities

    def channels(self, quality: int, size: str = "compact") -> tuple[int, ...]:
        check_quality(self.name, quality, size)
        return self.compact_by_quality.get(quality, self.compact) if size == "compact" else self.paper[quality]


def _hyperprior_cfg() -> dict[int, tuple[int, int]]:
    return {q: (128, 192) if q <= 5 else (192, 320) for q in range(1, 9)}


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            "bmshj2018-hyperprior", ScaleHyperprior, _hyperprior_cfg(), (48, 64),
            "J. Balle, D. Minnen, S. Singh, S.J. Hwang, N. Johnston, 'Variational image compression with a "
            "scale hyperprior', ICLR 2018, arXiv 1802.01436",
        ),
        ModelSpec(
            "mbt2018-mean", MeanScaleHyperprior, _hyperprior_cfg(), (48, 64),
            "D. Minnen, J. Balle, G. Toderici, 'Joint autoregressive and hierarchical priors for learned image "
            "compression', NeurIPS 2018, arXiv 1809.02736 (mean-scale hyperprior without context model)",
        ),
        ModelSpec(
            "cheng2020-anchor", Cheng2020AnchorWavefront, {q: (128,) if q <= 3 else (192,) for q in range(1, 7)}, (48,),
            "Z. Cheng, H. Sun, M. Takeuchi, J. Katto, 'Learned image compression with discretized Gaussian "
            "mixture likelihoods and attention modules', CVPR 2020, arXiv 2001.01568 (anchor variant)",
        ),
    )
}


def available_models() -> list[str]:
    return sorted(MODELS)


def check_model(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise ValueError(f"Unknown model {name!r}; valid models: {', '.join(available_models())}") from None


def check_quality(name: str, quality: int, size: str = "compact") -> int:
    """``quality`` if ``name`` at ``size`` has it, else a ValueError listing the valid qualities."""
    spec = check_model(name)
    valid = spec.qualities_for(size)
    if isinstance(quality, bool) or not isinstance(quality, int) or quality not in valid:
        raise ValueError(
            f"Invalid quality {quality!r} for {name} ({size}); valid qualities: {', '.join(map(str, valid))}"
        )
    return quality


def lambda_of(quality: int) -> float:
    if quality not in LAMBDAS:
        raise ValueError(f"Invalid quality {quality!r}; valid qualities: {', '.join(map(str, LAMBDAS))}")
    return LAMBDAS[quality]


def check_channels(name: str, channels) -> tuple[int, ...]:
    """``channels`` as a tuple if it fits ``name``'s constructor (N, M; N alone for Cheng2020-anchor), else a
    ValueError naming the model and what it takes."""
    spec = check_model(name)
    want = len(spec.compact)
    try:
        out = tuple(int(c) for c in channels)
    except (TypeError, ValueError):
        out = ()
    if len(out) != want or any(c < 1 for c in out) or any(isinstance(c, bool) for c in channels):
        names = "N, M" if want == 2 else "N"
        raise ValueError(f"Invalid channels {channels!r} for {name}: give {names} ({want} positive integer"
                         f"{'s' if want > 1 else ''}), e.g. {spec.compact}")
    return out


def build_model(name: str, quality: int, size: str = "compact", channels=None) -> nn.Module:
    """Build an untrained model: ``build_model("mbt2018-mean", 3, size="paper")``.

    ``channels`` (N, M) overrides the registry's size for this one model, e.g. a wider top quality trained
    before the registry ships it; the file it is saved to records them, and ``load_checkpoint`` rebuilds them.
    """
    spec = check_model(name)
    check_quality(name, quality, size)
    return spec.cls(*(spec.channels(quality, size) if channels is None else check_channels(name, channels)))
