"""bitalloc.training.train_step: the one training step of QAT, model training and DynaQuant (issue 11, item 4)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import bitalloc.dynaquant.train as dq_train
import bitalloc.models.train as model_train
import bitalloc.qat as qat
from bitalloc import training
from bitalloc.training import train_step


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lin = torch.nn.Linear(4, 2)
        self.quantiles = torch.nn.Parameter(torch.ones(3))

    def forward(self, x):
        return self.lin(x)

    def aux_loss(self):
        return (self.quantiles ** 2).sum()


def _mse(model, batch):
    x, y = batch
    pred = model(x)
    return {"loss": ((pred - y) ** 2).mean(), "mean_pred": pred.mean()}


def _batch():
    g = torch.Generator().manual_seed(0)
    return torch.randn(8, 4, generator=g), torch.randn(8, 2, generator=g)


def test_step_updates_main_and_aux_and_reports_parts():
    m = Tiny()
    w0, q0 = m.lin.weight.detach().clone(), m.quantiles.detach().clone()
    opt, aux = torch.optim.SGD(m.lin.parameters(), lr=0.1), torch.optim.SGD([m.quantiles], lr=0.1)
    row = train_step(m, _batch(), _mse, opt, aux, clip_norm=None)
    assert set(row) == {"loss", "mean_pred", "aux_loss"} and all(type(v) is float for v in row.values())
    assert row["aux_loss"] == pytest.approx(3.0)
    assert torch.allclose(m.quantiles, q0 * 0.8)  # d/dq sum(q^2) = 2q, lr 0.1
    assert not torch.equal(m.lin.weight, w0)
    assert m.training


def test_step_clips_the_gradient_norm_of_the_optimiser_parameters():
    m = Tiny()
    w0 = [p.detach().clone() for p in m.lin.parameters()]
    opt = torch.optim.SGD(m.lin.parameters(), lr=1.0)
    big = lambda model, batch: 1e6 * _mse(model, batch)["loss"]  # noqa: E731
    train_step(m, _batch(), big, opt, clip_norm=0.5)
    moved = torch.cat([(p.detach() - p0).ravel() for p, p0 in zip(m.lin.parameters(), w0)])
    assert moved.norm().item() == pytest.approx(0.5, rel=1e-5)


def test_nonfinite_loss_is_skipped_only_when_asked():
    m = Tiny()
    w0 = m.lin.weight.detach().clone()
    opt, aux = torch.optim.SGD(m.lin.parameters(), lr=0.1), torch.optim.SGD([m.quantiles], lr=0.1)
    nan = lambda model, batch: model(batch[0]).sum() * float("nan")  # noqa: E731
    assert train_step(m, _batch(), nan, opt, aux, skip_nonfinite=True) is None
    assert torch.equal(m.lin.weight, w0) and torch.equal(m.quantiles, torch.ones(3))
    assert all(p.grad is None for p in m.parameters())
    train_step(m, _batch(), nan, opt, clip_norm=None)
    assert torch.isnan(m.lin.weight).all()


def test_bad_loss_return_names_the_loss():
    m = Tiny()
    opt = torch.optim.SGD(m.parameters(), lr=0.1)

    def vector_loss(model, batch):
        return model(batch[0])

    with pytest.raises(ValueError, match="vector_loss must return a scalar tensor"):
        train_step(m, _batch(), vector_loss, opt)


def _counting(monkeypatch, module):
    calls = []

    def counted(*args, **kwargs):
        calls.append(args[2])
        return training.train_step(*args, **kwargs)

    assert module.train_step is training.train_step  # the one step, not a copy
    monkeypatch.setattr(module, "train_step", counted)
    return calls


@pytest.mark.filterwarnings("ignore:.*split")
def test_qat_model_training_and_dynaquant_all_step_through_train_step(monkeypatch, hyperprior, images, tmp_path):
    from PIL import Image

    from bitalloc.dynaquant import DynaQuantModel
    from bitalloc.graph import quantizable_layers
    from bitalloc.models import lambda_of

    calls = _counting(monkeypatch, qat)
    _, log = qat.finetune(hyperprior, dict.fromkeys(quantizable_layers(hyperprior), 6), images, steps=2,
                          batch_size=1, progress=False)
    assert len(calls) == 2 and len(log) == 2

    calls = _counting(monkeypatch, dq_train)
    dq = DynaQuantModel(hyperprior, (4, 6, 8))
    log = dq_train.train_dynaquant(dq, images, lmbda=lambda_of(1), steps=2, batch_size=1, progress=False)
    assert len(calls) == 2 and {"rd_loss", "bpp", "psnr", "expected_bits"} <= set(log.columns)
    assert (log["loss"] >= log["rd_loss"]).all()  # the bit penalty is added on top of the RD loss

    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (72, 72, 3), dtype=np.uint8)).save(tmp_path / f"im{i}.png")
    calls = _counting(monkeypatch, model_train)
    model_train.train("bmshj2018-hyperprior", 1, tmp_path, tmp_path / "run", steps=2, batch_size=1, crop=64,
                      progress=False)
    assert len(calls) == 2
