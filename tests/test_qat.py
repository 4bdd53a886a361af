import pandas as pd
import pytest
import torch

from bitalloc.graph import quantizable_layers
from bitalloc.plan import BitPlan
from bitalloc.qat import finetune
from bitalloc.quant import plan_of


def _plan(model, bits=4):
    return BitPlan.uniform(list(quantizable_layers(model)), bits)


def test_finetune_returns_model_and_log(hyperprior, images):
    q, log = finetune(hyperprior, _plan(hyperprior), images, steps=3, batch_size=2, progress=False)
    assert plan_of(q) == _plan(hyperprior)
    assert isinstance(log, pd.DataFrame) and list(log["step"]) == [1, 2, 3]
    assert {"loss", "bpp", "mse", "psnr", "aux_loss", "lr", "time_s"} <= set(log.columns)
    assert log["lr"].iloc[0] == pytest.approx(1e-4) and log["lr"].iloc[-1] < 1e-4  # cosine
    assert not q.training
    assert len(plan_of(hyperprior)) == 0  # the input model is untouched


def test_empty_plan_fine_tunes_a_float_copy(hyperprior, images, tmp_path):
    fp, log = finetune(hyperprior, {}, images, steps=2, batch_size=2, lr=1e-3, workdir=tmp_path, progress=False)
    assert len(plan_of(fp)) == 0 and len(log) == 2
    assert not torch.equal(fp.g_s[0].weight, hyperprior.g_s[0].weight)  # it trained, on a copy
    again, _ = finetune(hyperprior, BitPlan({}), images, steps=2, batch_size=2, lr=1e-3, workdir=tmp_path,
                        progress=False)  # resumes the finished run: same weights
    assert torch.equal(again.g_s[0].weight, fp.g_s[0].weight)
    quantized, _ = finetune(hyperprior, _plan(hyperprior), images, steps=1, batch_size=2, progress=False)
    with pytest.raises(ValueError, match="empty plan fine-tunes a float model"):
        finetune(quantized, {}, images, steps=1, progress=False)


def test_learned_scales_and_weights_move(hyperprior, images):
    from bitalloc.quant import apply_plan

    before = apply_plan(hyperprior, _plan(hyperprior), calibration="mse", learn_scale=True)
    q, _ = finetune(hyperprior, _plan(hyperprior), images, steps=2, batch_size=2, lr=1e-3, progress=False)
    sb, sa = before.state_dict(), q.state_dict()
    assert not torch.equal(sb["g_a.0.parametrizations.weight.0.scale"], sa["g_a.0.parametrizations.weight.0.scale"])
    assert not torch.equal(sb["g_s.6.parametrizations.weight.original"],
                           sa["g_s.6.parametrizations.weight.original"])


def test_interrupted_run_resumes_where_it_stopped(hyperprior, images, tmp_path, monkeypatch):
    import bitalloc.qat as qat

    kw = dict(steps=4, batch_size=2, progress=False, save_every=2, lr=1e-3)
    full, log_full = finetune(hyperprior, _plan(hyperprior), images, **kw)
    real, calls = qat.train_step, []

    def crashing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt  # killed during step 4; the state of step 2 is on disk
        return real(*args, **kwargs)

    monkeypatch.setattr(qat, "train_step", crashing)
    with pytest.raises(KeyboardInterrupt):
        finetune(hyperprior, _plan(hyperprior), images, workdir=tmp_path, **kw)
    assert torch.load(tmp_path / "qat_state.pt", weights_only=True)["step"] == 2
    monkeypatch.setattr(qat, "train_step", real)
    resumed, log = finetune(hyperprior, _plan(hyperprior), images, workdir=tmp_path, **kw)
    assert list(log["step"]) == [1, 2, 3, 4]
    assert log["loss"].tolist() == pytest.approx(log_full["loss"].tolist(), rel=1e-5)
    for k, v in full.state_dict().items():
        assert torch.allclose(v.float(), resumed.state_dict()[k].float(), atol=1e-6), k
    assert torch.load(tmp_path / "qat_state.pt", weights_only=True)["step"] == 4


def test_resume_refuses_another_plan(hyperprior, images, tmp_path):
    finetune(hyperprior, _plan(hyperprior, 4), images, steps=1, batch_size=1, workdir=tmp_path, progress=False)
    with pytest.raises(ValueError, match="different plan"):
        finetune(hyperprior, _plan(hyperprior, 6), images, steps=1, batch_size=1, workdir=tmp_path, progress=False)


def test_batches_accept_an_image_folder_object(tmp_path):
    """The harness hands QAT an ImageFolder (random crops of train/), not a path."""
    import numpy as np
    from PIL import Image

    from bitalloc.data import ImageFolder
    from bitalloc.qat import Batches

    for i in range(2):
        Image.fromarray(np.full((80, 80, 3), 40 * i, dtype=np.uint8)).save(tmp_path / f"im{i}.png")
    folder = ImageFolder(tmp_path, crop=64, seed=0)
    b = Batches(folder, batch_size=3)
    assert b.folder is folder and b.next().shape == (3, 3, 64, 64)


def test_activation_ranges_are_calibrated_then_learned_or_kept(hyperprior, images, tmp_path):
    from bitalloc.act_quant import activation_qparams, calibrate_activations
    from bitalloc.quant import apply_plan

    plan = BitPlan.uniform(list(quantizable_layers(hyperprior)), 6, act_bits=6)
    kw = dict(steps=2, batch_size=2, lr=1e-2, progress=False)
    calibrated = activation_qparams(calibrate_activations(apply_plan(hyperprior, plan, calibration="mse"), images))
    kept, _ = finetune(hyperprior, plan, images, act_calibration=images, learn_act_range=False, **kw)
    assert plan_of(kept) == plan and activation_qparams(kept) == calibrated
    learned, _ = finetune(hyperprior, plan, images, act_calibration=images, workdir=tmp_path, **kw)
    got = activation_qparams(learned)
    assert got.keys() == calibrated.keys()
    assert any(got[n]["scale"] != calibrated[n]["scale"] for n in got)  # LSQ moved the ranges
    assert all(isinstance(p["zero_point"], int) and 0 <= p["zero_point"] <= 63 for p in got.values())
    resumed, _ = finetune(hyperprior, plan, images, act_calibration=images, workdir=tmp_path, **kw)
    assert activation_qparams(resumed) == got  # the finished run's learned ranges come back from its state
    default, _ = finetune(hyperprior, plan, images, steps=1, batch_size=2, progress=False)  # calibrates itself
    assert all(a["bits"] == 6 for a in activation_qparams(default).values())
