"""Model registry, checkpoints and real-bitstream evaluation (issue #3)."""

import json
import re

import pytest
import torch
from compressai.models import MeanScaleHyperprior, ScaleHyperprior

from bitalloc.evaluation import compress_image, evaluate, to_compressai_json
from bitalloc.models import (
    LAMBDAS,
    Cheng2020AnchorWavefront,
    MODELS,
    available_models,
    build_model,
    checkpoint_name,
    load_checkpoint,
    load_model,
    save_checkpoint,
)

EXPECTED_CLASS = {
    "bmshj2018-hyperprior": ScaleHyperprior,
    "mbt2018-mean": MeanScaleHyperprior,
    "cheng2020-anchor": Cheng2020AnchorWavefront,  # CompressAI's Cheng2020Anchor, coded by wavefronts
}


@pytest.mark.parametrize("name", sorted(EXPECTED_CLASS))
@pytest.mark.parametrize("size", ["compact", "paper"])
def test_registry_builds_exactly_its_class(name, size):
    quality = MODELS[name].qualities[0]
    model = build_model(name, quality, size)
    assert type(model) is EXPECTED_CLASS[name]
    assert model.N == MODELS[name].channels(quality, size)[0]


def test_registry_lists_every_family():
    assert available_models() == sorted(EXPECTED_CLASS)


@pytest.mark.parametrize(
    "name,quality,expected",
    [("bmshj2018-hyperprior", 1, (128, 192)), ("bmshj2018-hyperprior", 6, (192, 320)),
     ("mbt2018-mean", 8, (192, 320)), ("cheng2020-anchor", 4, (192,))],
)
def test_paper_sizes_follow_compressai(name, quality, expected):
    assert MODELS[name].channels(quality, "paper") == expected


def test_compressai_lambdas():
    assert LAMBDAS[1] == 0.0018 and LAMBDAS[8] == 0.18 and len(LAMBDAS) == 9
    assert LAMBDAS[0] < LAMBDAS[1]  # bitalloc's low-rate point below CompressAI's ladder


def test_quality_0_is_compact_only():
    assert build_model("mbt2018-mean", 0).M == 64
    assert MODELS["mbt2018-mean"].qualities_for("compact")[0] == 0
    with pytest.raises(ValueError, match=r"mbt2018-mean \(paper\); valid qualities: 1, 2, 3, 4, 5, 6, 7, 8$"):
        build_model("mbt2018-mean", 0, size="paper")
    # CompressAI publishes no quality 0: refused before any download is tried
    with pytest.raises(ValueError, match="valid qualities: 1, 2, 3, 4, 5, 6, 7, 8"):
        load_model("bmshj2018-hyperprior", 0, pretrained="compressai")


@pytest.mark.parametrize(
    "call,match",
    [(lambda: build_model("hyperprior", 1), "valid models: bmshj2018-hyperprior, cheng2020-anchor, mbt2018-mean"),
     (lambda: build_model("cheng2020-anchor", 7), "valid qualities: 0, 1, 2, 3, 4, 5, 6$"),
     (lambda: build_model("mbt2018-mean", 9), "valid qualities: 0, 1, 2, 3, 4, 5, 6, 7, 8$"),
     (lambda: build_model("mbt2018-mean", 2, size="huge"), "valid sizes: compact, paper"),
     (lambda: load_model("mbt2018-mean", 2.0), "Invalid quality")],
    ids=["unknown-name", "cheng-quality-7", "quality-9", "unknown-size", "float-quality"],
)
def test_invalid_choices_name_the_valid_ones(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    model = build_model("mbt2018-mean", 3).eval()
    model.update(force=True)
    return model


def test_checkpoint_round_trip(tmp_path, tiny_model):
    path = tmp_path / checkpoint_name("mbt2018-mean", 3)
    meta = {"architecture": "mbt2018-mean", "quality": 3, "N": 48, "M": 64, "lambda": LAMBDAS[3]}
    save_checkpoint(tiny_model, path, meta)
    ckpt = torch.load(path, weights_only=True)  # what users are told to do must work
    assert ckpt["meta"] == meta
    loaded = load_checkpoint(path)
    assert type(loaded) is MeanScaleHyperprior and loaded.meta == meta
    params = {k for k, _ in tiny_model.named_parameters()}
    for key, value in tiny_model.state_dict().items():
        expected = value.half().float() if key in params else value  # buffers keep their precision
        assert torch.equal(loaded.state_dict()[key], expected), key
    # float16 would turn the likelihood lower bound (1e-9) into 0 and the estimated rate into infinity
    assert loaded.gaussian_conditional.likelihood_lower_bound.bound.item() > 0
    assert loaded.entropy_bottleneck.likelihood_lower_bound.bound.item() > 0


def test_missing_checkpoint_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.pt"):
        load_model("mbt2018-mean", 3, pretrained=tmp_path / "nothere.pt")


def test_corrupt_checkpoint_names_the_file(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a torch file at all")
    with pytest.raises(ValueError, match="bad.pt is not a bitalloc checkpoint: it does not load"):
        load_checkpoint(bad)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    with pytest.raises(ValueError, match="not a bitalloc checkpoint"):
        load_checkpoint(foreign)


def test_hand_edited_checkpoint_names_the_file_and_field(tmp_path):
    path = tmp_path / "edited.pt"
    blob = {"format": "bitalloc.checkpoint", "version": 1, "meta": {"architecture": "foo"},
            "state_dict": {"w": torch.zeros(2)}}
    torch.save(blob, path)
    with pytest.raises(ValueError, match=r"edited\.pt: Unknown model 'foo'"):
        load_checkpoint(path)
    torch.save({**blob, "state_dict": {"w": [0.0, 1.0]}}, path)
    with pytest.raises(ValueError, match=r"edited\.pt: checkpoint state_dict entry 'w' is not a tensor"):
        load_checkpoint(path)


def test_compress_decompress_matches_forward_and_counts_bytes(tiny_model):
    torch.manual_seed(1)
    x = torch.rand(1, 3, 64, 128)
    r = compress_image(tiny_model, x)
    with torch.no_grad():
        x_fwd = tiny_model(x)["x_hat"].clamp(0, 1)
    assert (r["x_hat"] - x_fwd).abs().max().item() < 0.05
    enc = tiny_model.compress(x)
    assert r["num_bytes"] == sum(len(s) for group in enc["strings"] for s in group)


def test_evaluate_rows_and_json(tmp_path, tiny_model):
    images = {"a": torch.rand(3, 64, 80), "b": torch.rand(3, 70, 64)}  # b needs padding
    df = evaluate(tiny_model, images, progress=False)
    assert list(df.image) == ["a", "b"]
    assert (df.bpp == df.num_bytes * 8 / (df.height * df.width)).all()
    assert df.psnr_rgb.notna().all()
    out = to_compressai_json([df, df], "mbt2018-mean", path=tmp_path / "r.json")
    written = json.loads((tmp_path / "r.json").read_text())
    assert written["name"] == "mbt2018-mean"
    assert written["results"]["psnr-rgb"] == out["results"]["psnr-rgb"]
    assert out["results"]["bpp"][0] == pytest.approx(df.bpp.mean())


def test_load_model_accepts_a_compressai_state_dict(tmp_path, tiny_model):
    path = tmp_path / "mbt2018-mean-downloaded.pth.tar"
    torch.save(tiny_model.state_dict(), path)
    loaded = load_model("mbt2018-mean", 3, pretrained=path)
    assert type(loaded) is MeanScaleHyperprior
    assert torch.equal(loaded.g_a[0].weight, tiny_model.g_a[0].weight)


@pytest.mark.parametrize(
    "request_,match",
    [(("bmshj2018-hyperprior", 3, "compact"), r"architecture 'bmshj2018-hyperprior' requested, 'mbt2018-mean' in"),
     (("mbt2018-mean", 6, "compact"), r"quality 6 requested, 3 in the file"),
     (("mbt2018-mean", 3, "paper"), r"size 'paper' requested, 'compact' in the file")],
    ids=["architecture", "quality", "size"],
)
def test_load_model_checks_the_file_against_the_request(tmp_path, tiny_model, request_, match):
    path = tmp_path / "mine.pt"
    meta = {"architecture": "mbt2018-mean", "quality": 3, "size": "compact", "N": 48, "M": 64}
    save_checkpoint(tiny_model, path, meta)
    assert type(load_model("mbt2018-mean", 3, pretrained=path)) is MeanScaleHyperprior  # the right request loads
    name, quality, size = request_
    with pytest.raises(ValueError, match=rf"Checkpoint {re.escape(str(tmp_path))}.mine\.pt is not .*{match}"):
        load_model(name, quality, pretrained=path, size=size)


def test_load_model_refuses_a_file_that_does_not_record_its_quality(tmp_path, tiny_model):
    path = tmp_path / "anon.pt"
    save_checkpoint(tiny_model, path, {"architecture": "mbt2018-mean", "N": 48, "M": 64})
    with pytest.raises(ValueError, match=r"anon\.pt .*quality 3 requested, 'not recorded' in the file"):
        load_model("mbt2018-mean", 3, pretrained=path)


def test_load_model_checks_a_plain_state_dict_by_its_channels(tmp_path, tiny_model):
    path = tmp_path / "downloaded.pth.tar"
    torch.save(tiny_model.state_dict(), path)
    with pytest.raises(ValueError, match=r"downloaded\.pth\.tar .*channels \(128, 192\) requested \(paper size\), "
                                         r"\(48, 64\) in the file \(the compact size: pass size='compact'\)"):
        load_model("mbt2018-mean", 3, pretrained=path, size="paper")
    with pytest.raises(ValueError, match=r"downloaded\.pth\.tar does not hold bmshj2018-hyperprior weights"):
        load_model("bmshj2018-hyperprior", 3, pretrained=path)


def test_compressai_download_failure_says_how_to_proceed(monkeypatch):
    import compressai.zoo

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setitem(compressai.zoo.image_models, "mbt2018-mean", offline)
    with pytest.raises(RuntimeError, match="needs internet access.*pretrained='path/to/file.pt'"):
        load_model("mbt2018-mean", 3, pretrained="compressai")


def test_checkpoint_meta_with_numpy_values_still_loads_weights_only(tmp_path, tiny_model):
    import numpy as np

    path = tmp_path / "np.pt"
    save_checkpoint(tiny_model, path, {"bpp": np.float64(0.25), "steps": np.int64(3), "curve": np.arange(2)})
    meta = torch.load(path, weights_only=True)["meta"]
    assert meta == {"bpp": 0.25, "steps": 3, "curve": [0, 1]} and type(meta["bpp"]) is float
    with pytest.raises(TypeError, match=r"meta\['w'\]"):
        save_checkpoint(tiny_model, tmp_path / "bad.pt", {"w": torch.zeros(2)})


def test_train_resume_finetune_and_finalize_ship_a_loadable_file(tmp_path):
    from PIL import Image
    import numpy as np

    from bitalloc.models.train import finalize, train

    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (80, 96, 3), dtype=np.uint8)).save(tmp_path / f"im{i}.png")
    kw = dict(batch_size=2, crop=64, save_every=2, progress=False)
    state = train("bmshj2018-hyperprior", 2, tmp_path, tmp_path / "base", steps=2, **kw)
    state = train("bmshj2018-hyperprior", 2, tmp_path, tmp_path / "base", steps=4, **kw)  # resumes at 2
    assert torch.load(state, weights_only=True)["step"] == 4
    tuned = train("bmshj2018-hyperprior", 3, tmp_path, tmp_path / "q3", steps=1, init_from=state, **kw)
    out = tmp_path / "ship.pt"
    meta = finalize(tuned, out, eval_dir=tmp_path, aux_steps=2, progress=False)
    assert meta["init_from"] == "state.pt" and meta["kodak"]["num_images"] == 3
    shipped = torch.load(out, weights_only=True)  # the format's promise
    assert shipped["meta"]["quality"] == 3 and shipped["meta"]["kodak"]["bpp"] > 0
    model = load_checkpoint(out)
    assert model.meta["training_steps"] == 5  # cumulative: the 4 steps of the run it started from + 1
    # a shipped checkpoint renamed like a run state still starts a fine-tune (the format decides, not the name)
    renamed = tmp_path / "ckpt" / "state.pt"
    renamed.parent.mkdir()
    renamed.write_bytes(out.read_bytes())
    again = train("bmshj2018-hyperprior", 3, tmp_path, tmp_path / "q3b", steps=1, init_from=renamed, **kw)
    assert torch.load(again, weights_only=True)["init_from"] == str(renamed)
    with pytest.raises(ValueError, match="neither a bitalloc checkpoint nor a train"):
        train("bmshj2018-hyperprior", 3, tmp_path, tmp_path / "q3c", steps=1, init_from=tmp_path / "im0.png",
              **kw)


def test_shipped_checkpoints_cover_four_qualities_per_family_within_60_mb():
    from bitalloc.models import available_checkpoints, shipped_checkpoint_dir

    files = sorted(shipped_checkpoint_dir().glob("*.pt"))
    assert sum(f.stat().st_size for f in files) <= 60 * 2**20
    rows = available_checkpoints()
    for family in ("bmshj2018-hyperprior", "mbt2018-mean", "cheng2020-anchor"):
        mine = sorted((r for r in rows if r["architecture"] == family), key=lambda r: r["quality"])
        assert len(mine) >= 4, family
        for r in mine:  # Cheng2020-anchor has one width, N (its latent has N channels too)
            keys = {"N", "lambda", "training_steps", "training_data", "kodak_bpp", "kodak_psnr_rgb"}
            assert keys | ({"M"} if family != "cheng2020-anchor" else set()) <= set(r), r
            assert "kodak" not in r["training_data"].lower()  # trained on train/ only
        bpp = [r["kodak_bpp"] for r in mine]
        assert bpp == sorted(bpp), f"{family}: Kodak bpp must grow with quality"
    model = load_model("bmshj2018-hyperprior", 4)
    assert model.gaussian_conditional.likelihood_lower_bound.bound.item() > 0


def test_available_checkpoints_reads_any_folder_and_names_a_missing_one(tmp_path):
    import shutil

    from bitalloc.models import available_checkpoints, shipped_checkpoint_dir

    shutil.copy(shipped_checkpoint_dir() / "bmshj2018-hyperprior-compact-q1.pt", tmp_path)
    rows = available_checkpoints(tmp_path)
    assert [(r["file"], r["quality"]) for r in rows] == [("bmshj2018-hyperprior-compact-q1.pt", 1)]
    with pytest.raises(FileNotFoundError, match="nowhere"):
        available_checkpoints(tmp_path / "nowhere")


def test_an_interrupted_run_saves_its_state_and_writes_its_snapshot(tmp_path, monkeypatch):
    """Ctrl-C / SIGTERM (KeyboardInterrupt) leaves both files: the state to resume from and the weights to commit."""
    from PIL import Image
    import numpy as np

    import bitalloc.models.train as train_mod

    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (80, 96, 3), dtype=np.uint8)).save(tmp_path / f"im{i}.png")
    real, calls = train_mod.train_step, []

    def step_then_interrupt(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt("signal 15")
        return real(*args, **kwargs)

    monkeypatch.setattr(train_mod, "train_step", step_then_interrupt)
    snap = tmp_path / "snap.pt"
    with pytest.raises(KeyboardInterrupt):
        train_mod.train("bmshj2018-hyperprior", 2, tmp_path, tmp_path / "run", steps=5, batch_size=2, crop=64,
                        save_every=100, progress=False, snapshot=snap, snapshot_every_s=1e9)
    assert (tmp_path / "run" / "state.pt").is_file()
    assert (tmp_path / "run" / "history.csv").is_file()  # the learning curve as far as the state goes
    assert snap.is_file()
    assert train_mod.read_checkpoint(snap)["meta"]["run_step"] == 1


def test_a_run_at_other_channels_records_them_resumes_with_them_and_ships_them(tmp_path):
    from PIL import Image
    import numpy as np

    from bitalloc.models.train import finalize, train

    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (80, 96, 3), dtype=np.uint8)).save(tmp_path / f"im{i}.png")
    kw = dict(batch_size=2, crop=64, save_every=1, progress=False)
    narrow = train("bmshj2018-hyperprior", 6, tmp_path, tmp_path / "narrow", steps=1, channels=(8, 12), **kw)
    # a wider run starts from the narrower one's checkpoint (it grows into the new channels)
    small = tmp_path / "narrow.pt"
    finalize(narrow, small, aux_steps=1, progress=False)
    wide = train("bmshj2018-hyperprior", 6, tmp_path, tmp_path / "wide", steps=1, channels=[16, 24],
                 init_from=small, **kw)
    assert torch.load(wide, weights_only=True)["config"]["channels"] == [16, 24]
    wide = train("bmshj2018-hyperprior", 6, tmp_path, tmp_path / "wide", steps=2, **kw)  # no flag: resumes at 16, 24
    assert torch.load(wide, weights_only=True)["step"] == 2
    with pytest.raises(ValueError, match=r"started with channels \(16, 24\), not \(8, 12\)"):
        train("bmshj2018-hyperprior", 6, tmp_path, tmp_path / "wide", steps=3, channels=(8, 12), **kw)
    meta = finalize(wide, tmp_path / "wide.pt", aux_steps=1, progress=False)
    assert (meta["N"], meta["M"]) == (16, 24)
    model = load_checkpoint(tmp_path / "wide.pt")
    assert (model.N, model.M) == (16, 24) and model.meta["init_from"] == "narrow.pt"
    # the registry's size is what load_model asks for: the file names its own channels
    with pytest.raises(ValueError, match=r"channels \(48, 64\) requested.*\(16, 24\) in the file"):
        load_model("bmshj2018-hyperprior", 6, pretrained=tmp_path / "wide.pt")


@pytest.mark.parametrize("channels", [(16,), (16, 24, 32), (0, 8), ("a", 8), (True, 8)])
def test_channels_that_do_not_fit_the_model_are_named(channels):
    with pytest.raises(ValueError, match=r"Invalid channels .* for bmshj2018-hyperprior: give N, M"):
        build_model("bmshj2018-hyperprior", 6, channels=channels)
