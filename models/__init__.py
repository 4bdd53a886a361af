"""LIC architectures, their registry, training and the checkpoints bitalloc ships (``bitalloc.models``)."""

import warnings

# CompressAI 1.2.8 scripts a helper at import; torch 2.14 warns about it on every import.
warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*deprecated", category=FutureWarning)

from .checkpoint import (
    available_checkpoints,
    checkpoint_name,
    load_checkpoint,
    load_model,
    read_checkpoint,
    save_checkpoint,
    shipped_checkpoint_dir,
)
from .losses import RateDistortionLoss, split_parameters
from .wavefront import Cheng2020AnchorWavefront, wavefronts
from .registry import LAMBDAS, MODELS, SIZES, ModelSpec, available_models, build_model, check_quality, lambda_of

__all__ = [
    "Cheng2020AnchorWavefront",
    "LAMBDAS",
    "MODELS",
    "SIZES",
    "ModelSpec",
    "RateDistortionLoss",
    "available_checkpoints",
    "available_models",
    "build_model",
    "check_quality",
    "checkpoint_name",
    "lambda_of",
    "load_checkpoint",
    "load_model",
    "read_checkpoint",
    "save_checkpoint",
    "shipped_checkpoint_dir",
    "split_parameters",
    "wavefronts",
]
