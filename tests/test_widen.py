"""Growing a hyperprior's widths N and M (bitalloc.models.widen): the wider model computes the same, training can
start from a narrower checkpoint, and the registry can give top qualities their own compact size."""

import pytest
import torch
from compressai.layers import GDN
from compressai.models import Cheng2020Anchor, MeanScaleHyperprior, ScaleHyperprior

from bitalloc.models import MODELS, ModelSpec, build_model, save_checkpoint
from bitalloc.models.run_state import init_weights
from bitalloc.models.widen import cheapest_zero_channel, widen, widened_state_dict


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
    for N, M in ((8, 10), (4, 12), (4, 20), (16, 10)):
        with pytest.raises(ValueError, match=rf"cannot shrink.*\(N, M\) = \(8, 12\) -> \({N}, {M}\)"):
            widened_state_dict(narrow, ScaleHyperprior(N, M))
    with pytest.raises(ValueError, match=r"cannot shrink.*\(8, 12\) -> \(4, 12\)"):
        widen(narrow, N=4)
    with pytest.raises(TypeError, match="not a ScaleHyperprior"):
        widened_state_dict(narrow, MeanScaleHyperprior(8, 20))


@pytest.mark.parametrize("N", [8, 16])
def test_training_starts_a_wider_model_from_a_narrower_checkpoint(tmp_path, x, N):
    narrow = _trained_looking(MeanScaleHyperprior)
    path = tmp_path / "narrow.pt"
    save_checkpoint(narrow, path, {"architecture": "mbt2018-mean", "quality": 8, "N": 8, "M": 12,
                                   "training_steps": 500}, half=False)
    wide = MeanScaleHyperprior(N, 20).eval()
    assert init_weights(wide, path) == (str(path), 500)
    with torch.no_grad():
        assert torch.equal(narrow(x)["x_hat"], wide(x)["x_hat"])


def test_a_quality_can_have_its_own_compact_size():
    base = MODELS["mbt2018-mean"]
    spec = ModelSpec(base.name, base.cls, base.paper, base.compact, base.citation, compact_by_quality={8: (48, 192)})
    assert spec.channels(8) == (48, 192) and spec.channels(6) == (48, 64) and spec.channels(8, "paper") == (192, 320)
    assert build_model("mbt2018-mean", 8).M == MODELS["mbt2018-mean"].channels(8)[1]


def _bits(likelihoods):
    return float(-torch.log2(likelihoods).sum())


def _effective(gdn):
    return gdn.gamma_reparam(gdn.gamma).detach(), gdn.beta_reparam(gdn.beta).detach()


@pytest.mark.parametrize("cls", [ScaleHyperprior, MeanScaleHyperprior])
def test_growing_N_and_M_together_computes_the_same(cls, x):
    narrow = _trained_looking(cls)  # N=8, M=12
    wide = widen(narrow, 20, N=16)
    assert type(wide) is cls and (wide.N, wide.M) == (16, 20) and not wide.training
    with torch.no_grad():
        a, b = narrow(x), wide(x)
    # the reconstruction and the latent's likelihoods: bit for bit (oneDNN convolutions at batch 2)
    assert torch.equal(a["x_hat"], b["x_hat"]) and torch.equal(a["likelihoods"]["y"], b["likelihoods"]["y"][:, :12])
    # the hyper-latent's: the same densities (copied exactly), evaluated by elementwise kernels whose vector body and
    # scalar tail split 8 and 16 channels differently, so equal to float rounding (module docstring)
    eb_a, eb_b = narrow.entropy_bottleneck, wide.entropy_bottleneck
    for p_a, p_b in zip(eb_a.parameters(), eb_b.parameters()):
        assert torch.equal(p_a, p_b[:8])
    assert torch.allclose(a["likelihoods"]["z"], b["likelihoods"]["z"][:, :8], rtol=1e-5, atol=1e-7)
    # every GDN: the old block as it was, an effective 0 between old and new channels, the fresh 0.1 I and 1 on the new
    old_modules = dict(narrow.named_modules())
    for name, gdn in wide.named_modules():
        if not isinstance(gdn, GDN):
            continue
        (gamma_old, beta_old), (gamma, beta) = _effective(old_modules[name]), _effective(gdn)
        assert torch.equal(gamma[:8, :8], gamma_old) and torch.equal(beta[:8], beta_old)
        assert not gamma[:8, 8:].any() and not gamma[8:, :8].any()
        assert torch.allclose(gamma[8:, 8:], 0.1 * torch.eye(8)) and torch.allclose(beta[8:], torch.ones(8))
    # the new hyper-latent channels are silent (z = 0) and cheap: each costs what a zero costs in the old channel
    # chosen for them, no more than in the median old channel
    with torch.no_grad():
        z = wide.h_a(wide.g_a(x) if cls is MeanScaleHyperprior else wide.g_a(x).abs())
        _, zero_old = eb_a(torch.zeros(1, 8, 1, 1), training=False)
    assert not z[:, 8:].any()
    new = b["likelihoods"]["z"][:, 8:]
    assert torch.allclose(new, zero_old.flatten()[cheapest_zero_channel(eb_a)].expand_as(new), rtol=1e-6)
    assert float(-torch.log2(new).mean()) <= float(-torch.log2(zero_old).median()) + 1e-6


@pytest.mark.parametrize("cls", [ScaleHyperprior, MeanScaleHyperprior])
def test_training_reaches_every_new_channel(cls, x):
    wide = widen(_trained_looking(cls), 20, N=16).train()
    opt = torch.optim.Adam(wide.parameters(), lr=1e-3)  # moves every weight with a gradient by about lr

    def step():
        opt.zero_grad()
        out = wide(x)
        loss = sum(-torch.log2(v).sum() for v in out["likelihoods"].values()) + 100 * (out["x_hat"] - x).pow(2).sum()
        loss.backward()

    def rows(w, dim, cut):  # the gradient norm of each channel from ``cut`` on, along ``dim``
        return w.grad.narrow(dim, cut, w.shape[dim] - cut).transpose(0, dim).flatten(1).norm(dim=1)

    step()
    # at once: the silent latent and hyper-latent rows (through the rate), and every zero input column that a
    # non-zero channel feeds (after a GDN, or the new latents and hyper-latents with training's noise) ...
    assert (rows(wide.g_a[6].weight, 0, 12) > 0).all() and (rows(wide.h_a[4].weight, 0, 8) > 0).all()
    for w, dim, cut in ((wide.g_a[2].weight, 1, 8), (wide.g_a[6].weight, 1, 8), (wide.g_s[0].weight, 0, 12),
                        (wide.g_s[6].weight, 0, 8), (wide.h_s[0].weight, 0, 8)):
        assert (rows(w, dim, cut) > 0).all()
    assert (rows(wide.h_a[2].weight, 1, 8) > 0).any()  # ... or a (Leaky)ReLU: the active ones
    assert wide.g_a[1].gamma.grad[:8, 8:].abs().sum() > 0  # the GDN's cross terms, from their effective 0
    assert len(set(rows(wide.g_a[6].weight, 0, 12).tolist())) == 8  # different per channel: the symmetry breaks
    # the hidden layers' new rows feed zero columns, and the hyper-analysis reads the new latents before the noise
    # (0): once one step has moved those, the gradients reach them too
    opt.step()
    step()
    for w, dim, cut in ((wide.h_a[0].weight, 1, 12), (wide.g_a[0].weight, 0, 8), (wide.g_a[4].weight, 0, 8),
                        (wide.g_s[2].weight, 1, 8)):
        assert (rows(w, dim, cut) > 0).all()
    assert (rows(wide.h_s[2].weight, 1, 8 if cls is ScaleHyperprior else 18) > 0).any()  # before a ReLU: the active


@pytest.mark.parametrize("name", ["bmshj2018-hyperprior", "mbt2018-mean"])
def test_a_shipped_checkpoint_grows_N_and_M_and_codes_the_same(name, x):
    from bitalloc.models import load_model

    narrow = load_model(name, 6).eval()  # N=48, M=64 -> N=96, M=192
    wide = widen(narrow, 192, N=96)
    with torch.no_grad():
        a, b = narrow(x), wide(x)
    assert torch.equal(a["x_hat"], b["x_hat"]) and torch.equal(a["likelihoods"]["y"], b["likelihoods"]["y"][:, :64])
    assert _bits(b["likelihoods"]["z"][:, 48:]) < 1e-3  # the 96 new hyper-latent values cost nothing measurable
    names = ("_quantized_cdf", "_offset", "_cdf_length")
    tables = [getattr(wide.entropy_bottleneck, t).clone() for t in names]
    wide.update(force=True)  # the copied table rows are the ones update() builds
    assert all(torch.equal(t, getattr(wide.entropy_bottleneck, n)) for t, n in zip(tables, names))
    narrow.update(force=True)
    # both photos at once: a batch of two keeps every convolution on oneDNN (module docstring)
    codes = [m.compress(x) for m in (narrow, wide)]
    for i in range(len(x)):
        (y_a, z_a), (y_b, z_b) = ([len(s[i]) for s in c["strings"]] for c in codes)
        assert y_a > 0 and y_b <= y_a + 8 and z_b <= z_a + 2
    out = [m.decompress(c["strings"], c["shape"])["x_hat"] for m, c in zip((narrow, wide), codes)]
    assert torch.equal(out[0], out[1])
