"""Growing a hyperprior's latent (bitalloc.models.widen): the wider model computes the same, training can start
from a narrower checkpoint, and the registry can give top qualities their own compact size."""

import pytest
import torch
from compressai.models import Cheng2020Anchor, MeanScaleHyperprior, ScaleHyperprior

from bitalloc.models import MODELS, ModelSpec, build_model, save_checkpoint
from bitalloc.models.run_state import init_weights
from bitalloc.models.widen import widen, widened_state_dict


@pytest.fixture(scope="module")
def x():
    return torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def _trained_looking(cls, N=8, M=12):
    torch.manual_seed(1)
    model = cls(N, M)
    with torch.no_grad():  # not the fresh init: every parameter moved, as training would
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


@pytest.mark.parametrize("cls", [ScaleHyperprior, MeanScaleHyperprior])
def test_the_wider_model_computes_the_same_reconstruction_and_old_likelihoods(cls, x):
    narrow = _trained_looking(cls)
    narrow.meta = {"lambda": 0.18}
    wide = widen(narrow, 20)
    assert type(wide) is cls and (wide.N, wide.M) == (8, 20) and wide.meta == narrow.meta and not wide.training
    with torch.no_grad():
        a, b = narrow(x), wide(x)
    assert torch.equal(a["x_hat"], b["x_hat"]) and torch.equal(a["likelihoods"]["z"], b["likelihoods"]["z"])
    assert torch.equal(a["likelihoods"]["y"], b["likelihoods"]["y"][:, :12])
    # the new channels start silent: zero latents at the smallest scale cost almost nothing ...
    new = b["likelihoods"]["y"][:, 12:]
    assert new.shape[1] == 8 and float(-torch.log2(new).sum()) < 1e-3 * float(-torch.log2(a["likelihoods"]["y"]).sum())
    # ... and training reaches them: its noise makes their latents non-zero and the gradients differ per channel
    wide.train()
    out = wide(x)
    (-torch.log2(out["likelihoods"]["y"]).sum() + 100 * (out["x_hat"] - x).pow(2).sum()).backward()
    grad = wide.g_a[6].weight.grad[12:].flatten(1).norm(dim=1)
    assert (grad > 0).all() and len(set(grad.tolist())) == 8


@pytest.mark.parametrize("name", ["bmshj2018-hyperprior", "mbt2018-mean"])
def test_a_shipped_checkpoint_grows_without_changing_what_it_computes(name, x):
    from bitalloc.models import load_model

    narrow = load_model(name, 6).eval()  # the README's check: the shipped top-but-one quality, widened to M=192
    wide = widen(narrow, 192)
    with torch.no_grad():
        a, b = narrow(x), wide(x)
    assert torch.equal(a["x_hat"], b["x_hat"]) and torch.equal(a["likelihoods"]["y"], b["likelihoods"]["y"][:, :64])
    wide.update(force=True)  # its entropy tables took the checkpoint's; it codes, at nearly the narrow model's rate
    narrow.update(force=True)
    sizes = [len(m.compress(x[:1])["strings"][0][0]) for m in (narrow, wide)]
    assert sizes[0] > 0 and sizes[1] <= sizes[0] + 8


def test_what_cannot_grow_is_refused_by_name():
    with pytest.raises(TypeError, match="Cheng2020Anchor is not supported"):
        widen(Cheng2020Anchor(8), 20)
    narrow = _trained_looking(ScaleHyperprior)
    with pytest.raises(ValueError, match="grows M only"):
        widened_state_dict(narrow, ScaleHyperprior(8, 10))
    with pytest.raises(ValueError, match="grows M only"):
        widened_state_dict(narrow, ScaleHyperprior(16, 20))
    with pytest.raises(TypeError, match="not a ScaleHyperprior"):
        widened_state_dict(narrow, MeanScaleHyperprior(8, 20))


def test_training_starts_a_wider_model_from_a_narrower_checkpoint(tmp_path, x):
    narrow = _trained_looking(MeanScaleHyperprior)
    path = tmp_path / "narrow.pt"
    save_checkpoint(narrow, path, {"architecture": "mbt2018-mean", "quality": 8, "N": 8, "M": 12,
                                   "training_steps": 500}, half=False)
    wide = MeanScaleHyperprior(8, 20).eval()
    assert init_weights(wide, path) == (str(path), 500)
    with torch.no_grad():
        assert torch.equal(narrow(x)["x_hat"], wide(x)["x_hat"])


def test_a_quality_can_have_its_own_compact_size():
    base = MODELS["mbt2018-mean"]
    spec = ModelSpec(base.name, base.cls, base.paper, base.compact, base.citation, compact_by_quality={8: (48, 192)})
    assert spec.channels(8) == (48, 192) and spec.channels(6) == (48, 64) and spec.channels(8, "paper") == (192, 320)
    assert build_model("mbt2018-mean", 8).M == MODELS["mbt2018-mean"].channels(8)[1]
