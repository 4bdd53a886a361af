"""Any torch model with any loss goes through the same public functions as the LIC models (issue 11, item 1)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import bitalloc
from bitalloc import Budget, build_allocator
from bitalloc.graph import quantizable_layers
from bitalloc.quant import plan_of

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _classifier_loss(model, batch):
    x, y = batch
    logits = model(x)
    return {"loss": F.cross_entropy(logits, y), "accuracy": (logits.argmax(1) == y).float().mean()}


def _resnet18() -> torch.nn.Module:
    from torchvision.models import resnet18

    return resnet18(weights=None, num_classes=10)


@pytest.mark.parametrize("device", DEVICES)
def test_resnet18_with_cross_entropy_goes_through_the_whole_pipeline(device, tmp_path):
    torch.manual_seed(0)
    model = _resnet18().to(device).eval()
    x, y = torch.rand(2, 3, 32, 32), torch.tensor([3, 7])  # on the CPU: the library moves batches
    loader = DataLoader(TensorDataset(x, y), batch_size=2)
    seen = []

    def loss(m, batch):
        seen.append(batch[0].device.type)
        return _classifier_loss(m, batch)

    with pytest.raises(ValueError, match="not a CompressAI model.*pass loss="):
        bitalloc.measure_sensitivity(model, loader, bits=(4,), progress=False)
    table, frame = bitalloc.measure_sensitivity(model, loader, bits=(4, 8), loss=loss, hessian_samples=1,
                                                progress=False, return_frame=True)
    assert table.layer_names == tuple(quantizable_layers(model)) and len(table.layer_names) == 21  # 20 conv + fc
    assert frame.attrs["method"] == "naive" and {"accuracy", "accuracy_fp", "loss_fp"} <= set(frame.columns)
    assert (table.cost[:, 0] >= table.cost[:, 1]).mean() > 0.5  # 4 bits mostly hurt more than 8
    assert table.hessian_trace is not None and (table.hessian_trace > 0).all()

    alloc = build_allocator("ilp").allocate(table, Budget.from_avg_bits(table, 6.0))
    assert alloc.plan is not None and alloc.plan.avg_bits(table) <= 6.0 + 1e-9
    qmodel = bitalloc.apply_plan(model, alloc.plan)
    assert plan_of(qmodel) == alloc.plan

    tuned, log = bitalloc.finetune(model, alloc.plan, loader, loss=loss, steps=2, lr=1e-3, calibration="minmax",
                                   progress=False)
    assert list(log["step"]) == [1, 2] and {"loss", "accuracy", "lr"} <= set(log.columns)
    assert np.isfinite(log["loss"]).all()
    assert not torch.equal(tuned.fc.parametrizations.weight.original, model.fc.weight)  # it trained, on a copy

    check = bitalloc.check_plan(model, alloc.plan, table, loader, loss=loss)
    assert check.predicted == pytest.approx(alloc.plan.cost(table)) and check.loss_fp > 0
    assert check.bpp_fp is None and "accuracy" in check.parts_plan
    assert set(seen) == {torch.device(device).type}  # every batch reached the loss on the model's device

    tuned = tuned.cpu()
    report = bitalloc.export_packed(tuned, tmp_path / "resnet18.bin")
    assert report["plan_size_bits"] == sum(table.size_bits[table.index(n), table.bits.index(b)]
                                           for n, b in alloc.plan.bits.items())
    back = bitalloc.load_packed(tmp_path / "resnet18.bin", model_factory=_resnet18)
    assert plan_of(back) == alloc.plan
    with torch.no_grad():
        assert torch.equal(back(x), tuned.eval()(x))


def test_a_loss_must_give_a_scalar_and_the_float_loss_must_be_positive():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 2))
    x = torch.rand(3, 3, 2, 2)
    with pytest.raises(ValueError, match="without 'loss'.*keys: ce"):
        bitalloc.measure_sensitivity(model, x, bits=(4,), loss=lambda m, b: {"ce": m(b).sum()}, progress=False)
    with pytest.raises(ValueError, match=r"scalar tensor as its loss, got shape \(3, 2\)"):
        bitalloc.measure_sensitivity(model, x, bits=(4,), loss=lambda m, b: m(b), progress=False)
    with pytest.raises(ValueError, match="loss of the float Sequential is 0.0.*positive"):
        bitalloc.measure_sensitivity(model, x, bits=(4,), loss=lambda m, b: m(b).sum() * 0, progress=False)


def test_finetune_cycles_a_loader_and_resumes_by_replaying_it(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 2))
    data = TensorDataset(torch.rand(4, 3, 2, 2), torch.tensor([0, 1, 1, 0]))
    loader = DataLoader(data, batch_size=2)  # 2 batches: 5 steps run through it 2.5 times
    plan = {"1": 4}

    calls = {"n": 0, "crash_at": None}

    def loss(m, batch):
        calls["n"] += 1
        if calls["n"] == calls["crash_at"]:
            raise KeyboardInterrupt  # killed during step 4; the state of step 2 is on disk
        return F.cross_entropy(m(batch[0]), batch[1])

    kw = dict(loss=loss, steps=5, lr=1e-2, save_every=2, progress=False)
    full, log_full = bitalloc.finetune(model, plan, loader, **kw)
    assert list(log_full["step"]) == [1, 2, 3, 4, 5] and list(log_full.columns[:2]) == ["step", "loss"]
    calls.update(n=0, crash_at=4)
    with pytest.raises(KeyboardInterrupt):
        bitalloc.finetune(model, plan, loader, workdir=tmp_path, **kw)
    assert torch.load(tmp_path / "qat_state.pt", weights_only=True)["data_rng"] == {"batches_drawn": 2}
    resumed, log = bitalloc.finetune(model, plan, loader, workdir=tmp_path, **kw)
    assert log["loss"].tolist() == pytest.approx(log_full["loss"].tolist(), rel=1e-6)
    assert torch.equal(resumed[1].parametrizations.weight.original, full[1].parametrizations.weight.original)
    with pytest.raises(ValueError, match="yielded no batch after 0"):
        bitalloc.finetune(model, plan, iter(()), loss=loss, steps=1, progress=False)
