"""Shared tiny-model fixtures for the quantization backend's tests (compact models, fixed seeds, 64x64)."""

from __future__ import annotations

import pytest
import torch

torch.set_num_threads(1)


def toy_mlp(hidden: int = 2) -> torch.nn.Sequential:
    """The seeded ReLU MLP the tests of any-model features use (8 inputs, ``hidden`` layers of 32, 4 outputs; its
    quantizable layers are "0", "2", ...), in eval mode."""
    torch.manual_seed(0)
    layers = [torch.nn.Linear(8, 32), torch.nn.ReLU()]
    for _ in range(hidden - 1):
        layers += [torch.nn.Linear(32, 32), torch.nn.ReLU()]
    return torch.nn.Sequential(*layers, torch.nn.Linear(32, 4)).eval()


def pair_mse(model, batch):
    """``loss(model, batch)`` for ``(input, target)`` batches: the mean squared error."""
    x, y = batch
    return torch.nn.functional.mse_loss(model(x), y)


def _tiny(name: str) -> torch.nn.Module:
    from bitalloc.models import build_model, lambda_of

    torch.manual_seed(0)
    model = build_model(name, 1).eval()
    model.meta = {"architecture": name, "quality": 1, "lambda": lambda_of(1), "N": 48, "M": 64}
    return model


@pytest.fixture(scope="session")
def _hyperprior_master() -> torch.nn.Module:
    return _tiny("bmshj2018-hyperprior")


@pytest.fixture
def hyperprior(_hyperprior_master) -> torch.nn.Module:
    """An untrained compact Scale Hyperprior (quality 1, seed 0), a fresh copy per test."""
    import copy

    return copy.deepcopy(_hyperprior_master)


@pytest.fixture(scope="session")
def mean_scale() -> torch.nn.Module:
    return _tiny("mbt2018-mean")


@pytest.fixture(scope="session")
def images() -> torch.Tensor:
    """Two smooth-ish 64x64 test images (seeded), so the RD loss is not dominated by noise."""
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, 8, 8, generator=g)
    return torch.nn.functional.interpolate(x, size=(64, 64), mode="bilinear", align_corners=False)


def allocations_under_extra(table, budget):
    """(name, Allocation) of every registered allocator that takes extra constraints, on ``budget``; each one
    that does not must refuse it by name."""
    from bitalloc import available_allocators, build_allocator

    out = []
    for name in available_allocators():
        alloc = build_allocator(name)
        if not alloc.supports_extra:
            with pytest.raises(ValueError, match=f"allocator '{name}' does not support extra constraints"):
                alloc.allocate(table, budget)
            continue
        out.append((name, alloc.allocate(table, budget)))
    return out


def load_study(name: str):
    """The study script ``studies/<name>.py`` as a module (the studies are scripts, not a package)."""
    import importlib.util
    import sys
    from pathlib import Path

    folder = Path(__file__).resolve().parents[1] / "studies"
    if str(folder) not in sys.path:  # as `python studies/<name>.py` runs it: a study imports its own helpers
        sys.path.insert(0, str(folder))
    path = folder / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
