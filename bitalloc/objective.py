"""The objective bitalloc measures and trains: any model, any loss, batches on the model's device.

A loss is a callable ``loss(model, batch)`` returning a scalar tensor, or a dict with a scalar ``"loss"`` plus
named parts for the logs (``bpp``, ``mse``, ``accuracy``...). ``batch`` is whatever the data yields: an image
tensor, an ``(input, target)`` tuple from a DataLoader, a dict. :func:`bitalloc.measure_sensitivity`,
:func:`bitalloc.check_plan` and :func:`bitalloc.finetune` take it as ``loss=``; without one, a CompressAI model
gets the LIC rate-distortion loss at its own lambda (:func:`bitalloc.models.losses.rd_loss_fn`) and any other
model is an error that says to pass ``loss=``. For example, a classifier::

    def loss(model, batch):
        x, y = batch
        return torch.nn.functional.cross_entropy(model(x), y)
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Union

import torch
import torch.nn as nn

__all__ = ["Loss", "evaluate_loss", "is_compressai_model", "loss_parts", "model_device", "model_lambda",
           "relative_increase", "resolve_loss", "to_device"]

Loss = Callable[[nn.Module, Any], Union[torch.Tensor, Mapping[str, torch.Tensor]]]


def is_compressai_model(model: nn.Module) -> bool:
    """True for CompressAI's image codecs (subclasses of ``compressai.models.CompressionModel``)."""
    from compressai.models import CompressionModel

    return isinstance(model, CompressionModel)


def model_lambda(model: nn.Module, lmbda: float | None = None) -> float:
    """``lmbda`` if given, else ``model.meta["lambda"]`` (from the checkpoint), else an error."""
    if lmbda is not None:
        return float(lmbda)
    meta = getattr(model, "meta", None) or {}
    if "lambda" in meta:
        return float(meta["lambda"])
    raise ValueError(f"the {type(model).__name__} model has no meta['lambda'] (not loaded from a checkpoint); "
                     "pass lmbda=... for the rate-distortion loss, or loss=callable(model, batch)")


def resolve_loss(model: nn.Module, loss: Loss | None = None, lmbda: float | None = None) -> Loss:
    """``loss`` if given, else the MSE rate-distortion loss of a CompressAI model at its lambda."""
    if loss is not None:
        if not callable(loss):
            raise TypeError(f"loss must be a callable loss(model, batch), got {type(loss).__name__}")
        return loss
    if not is_compressai_model(model):
        raise ValueError(f"{type(model).__name__} is not a CompressAI model, so there is no default loss; pass "
                         "loss=callable(model, batch) returning a scalar tensor (or a dict with 'loss'), e.g. "
                         "lambda m, b: torch.nn.functional.cross_entropy(m(b[0]), b[1])")
    from bitalloc.models.losses import rd_loss_fn

    return rd_loss_fn(model_lambda(model, lmbda))


def loss_parts(value: Any, loss: Any = None) -> dict[str, torch.Tensor]:
    """A loss's return value as ``{"loss": scalar tensor, **named parts}`` (tensors or numbers)."""
    name = getattr(loss, "__name__", type(loss).__name__) if loss is not None else "the loss"
    if isinstance(value, Mapping):
        if "loss" not in value:
            raise ValueError(f"{name} returned a dict without 'loss' (keys: {', '.join(map(str, value))})")
        parts = dict(value)
    else:
        parts = {"loss": value}
    main = parts["loss"]
    if not isinstance(main, torch.Tensor) or main.numel() != 1:
        what = f"shape {tuple(main.shape)}" if isinstance(main, torch.Tensor) else type(main).__name__
        raise ValueError(f"{name} must return a scalar tensor as its loss, got {what}")
    return parts


def evaluate_loss(model: nn.Module, loss: Loss, batches: list) -> dict[str, float]:
    """Mean over ``batches`` of every part of ``loss(model, batch)``, as floats (no gradients)."""
    totals: dict[str, float] = {}
    with torch.no_grad():
        for batch in batches:
            for k, v in loss_parts(loss(model, batch), loss).items():
                totals[k] = totals.get(k, 0.0) + float(v)
    return {k: v / len(batches) for k, v in totals.items()}


def relative_increase(loss: float, loss_fp: float, model: nn.Module) -> float:
    """(loss - loss_fp) / loss_fp, FMPQ's fractional measure; the float model's loss must be positive."""
    if not (loss_fp > 0 and loss_fp < float("inf")):
        raise ValueError(f"the loss of the float {type(model).__name__} is {loss_fp!r}; fractional sensitivities "
                         "(L_q - L_fp) / L_fp need a positive finite loss (shift or rescale the loss=)")
    return (loss - loss_fp) / loss_fp


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (or buffer); CPU for a model without either."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def to_device(batch: Any, device: torch.device) -> Any:
    """``batch`` with every tensor in it (nested tuples, lists, dicts) on ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True) if batch.device != device else batch
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # a named tuple
        return type(batch)(*(to_device(b, device) for b in batch))
    if isinstance(batch, (tuple, list)):
        return type(batch)(to_device(b, device) for b in batch)
    if isinstance(batch, Mapping):
        return {k: to_device(v, device) for k, v in batch.items()}
    return batch
