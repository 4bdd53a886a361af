"""Harness options of issue 14 item 4: static plans with activation bits (``act_bits``, ``act_observer``) and the
calibration photos' offset (``calib_offset``), each in the cache keys, the defaults' keys unchanged."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from bitalloc.harness import StudySpec, run_study
from bitalloc.study_cache import StudyCache
import test_harness

images = test_harness.images  # the same fixture (module scope here)
tiny_loader = test_harness.tiny_loader()


def _run(spec, out, images, **kw):
    return run_study(spec, out, model_loader=tiny_loader, calib_images=images["calib"], eval_images=images["eval"],
                     progress=False, **kw)


def _key_names(spec) -> dict:
    """The file names the cache gives a spec's cost table, pairwise table, cells and outcomes (fixed inputs)."""
    c = StudyCache(_key_names.root, spec, {"eval_images": "E", "calib_images": "C", "train_images": "T",
                                           "loss": None})
    c.set_weights(1, "W")
    return {"sens": c.path("sensitivity", "s", c.sensitivity_key(1)).name,
            "pairs": c.path("sensitivity", "p", c.interactions_key(1)).name,
            "ilp_ptq": c.path("cells", "c", c.cell_key(1, "ilp", 6.0, "ptq", True)).name,
            "iqp_qat": c.path("cells", "c", c.cell_key(1, "iqp+verify", 6.0, "qat", True)).name,
            "fp32": c.path("cells", "c", c.cell_key(1, "fp32", None, "ptq", False)).name,
            "dyn": c.path("cells", "c", c.cell_key(1, "dynaquant", 6.0, "qat", False)).name,
            "out_ptq": c.path("outcomes", "o", c.outcome_key(1, "ptq", {"a": 4, "b": 8})).name,
            "out_qat": c.path("outcomes", "o", c.outcome_key(1, "qat", {"a": 4, "b": 8})).name}


# what the cache named these before act_bits / act_observer / calib_offset existed (commit e33a0d6): the keys
# are JSON of the fixed strings above, so the names are deterministic and existing caches stay valid. Only the
# +verify cell's name moved since, with the verify tolerance's default (0.05 -> 0.002, a setting in its key)
KEYS_BEFORE = {"sens": "s_de6ce08edbaf.json", "pairs": "p_440edba91b95.json", "ilp_ptq": "c_ce9e86346092.json",
               "iqp_qat": "c_88402c01a63f.json", "fp32": "c_1afd4b8f07c4.json", "dyn": "c_20a949213aa4.json",
               "out_ptq": "o_f06425f9f3f8.json", "out_qat": "o_499e12dfa1f3.json"}


def test_default_keys_are_those_of_before_and_each_option_changes_what_it_affects(tmp_path):
    _key_names.root = tmp_path
    base = dict(modes=("ptq", "qat"))
    assert _key_names(StudySpec(**base)) == KEYS_BEFORE
    assert _key_names(StudySpec(**base, act_bits=None, act_observer="minmax", calib_offset=0)) == KEYS_BEFORE
    acts = _key_names(StudySpec(**base, act_bits=8))
    changed = {k for k in KEYS_BEFORE if acts[k] != KEYS_BEFORE[k]}
    assert changed == {"ilp_ptq", "iqp_qat", "out_ptq", "out_qat"}  # static cells and outcomes; not tables, fp32
    assert _key_names(StudySpec(**base, act_bits=6)) != acts
    assert _key_names(StudySpec(**base, act_bits=8, act_observer="minmax")) != acts
    offset = _key_names(StudySpec(**base, calib_offset=2))
    assert {k for k in KEYS_BEFORE if offset[k] != KEYS_BEFORE[k]} == {"sens", "pairs", "ilp_ptq", "iqp_qat"}


def test_qat_aware_cell_keys_follow_what_the_cell_allocates_on_and_measures(tmp_path):
    spec = StudySpec(modes=("qat",), allocators=("iqp+qat", "ilp+verify+qat"), recovery_steps=5)
    c = StudyCache(tmp_path, spec, {"eval_images": "E", "calib_images": "C", "train_images": "T", "loss": None})
    c.set_weights(1, "W")
    iqp = c.cell_key(1, "iqp+qat", 6.0, "qat", True)  # the QAT-aware table: no pairwise terms
    assert iqp["recovery"] == c.recovery_key(1)["recovery"] and "interactions" not in iqp
    verified = c.cell_key(1, "ilp+verify+qat", 6.0, "qat", True)  # measured after that QAT: both settings
    assert verified["recovery"] == iqp["recovery"] and verified["verify"] == c.cell_key(1, "ilp+verify", 6.0, "qat",
                                                                                        True)["verify"]
    assert "recovery" not in c.cell_key(1, "ilp+verify", 6.0, "qat", True)


@pytest.mark.parametrize("field, value, match", [
    ("act_bits", 1, "StudySpec.act_bits 1"), ("act_bits", 8.0, "StudySpec.act_bits 8.0"),
    ("act_observer", "median", "StudySpec.act_observer: unknown activation observer 'median'"),
    ("calib_offset", -1, "StudySpec.calib_offset must be an integer >= 0, got -1")])
def test_bad_activation_settings_are_refused_by_field(field, value, match):
    with pytest.raises(ValueError, match=match):
        StudySpec(**{field: value})


def test_static_plans_with_8_bit_activations(tmp_path, images, monkeypatch):
    from bitalloc import act_quant

    real, observers = act_quant.calibrate_activations, []

    def recording(model, data, observer="minmax", **kw):
        observers.append((observer, tuple(data.shape)))
        return real(model, data, observer, **kw)

    monkeypatch.setattr(act_quant, "calibrate_activations", recording)
    common = dict(qualities=(1,), allocators=("ilp", "uniform"), budgets=(6.0,), modes=("ptq", "qat"), qat_steps=1,
                  eval_limit=1, calib_images=2, calib_crop=64)
    train = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    weights_only = _run(StudySpec(**common), tmp_path, images, train_images=train)
    assert not observers and weights_only.results.act_bits.isna().all()
    spec = StudySpec(**common, act_bits=8, act_observer="percentile")
    with_acts = _run(spec, tmp_path, images, train_images=train)
    r0, r8 = (r.results.set_index(["allocator", "budget", "mode"]) for r in (weights_only, with_acts))
    static = r8.index.get_level_values("allocator") != "fp32"
    assert (r8.act_bits[static] == 8).all() and r8.act_bits[~static].isna().all()
    assert not r8.cached[static].any() and r8.cached[~static].all()  # other keys; fp32 is not quantized at all
    assert (r8.psnr_rgb[static] != r0.psnr_rgb.loc[r8.index[static]]).all()
    assert r8.size_bits[static].equals(r0.size_bits.loc[r8.index[static]])  # the same weight plans
    # every outcome (ilp 6 and uniform 6 / 8, PTQ and QAT) calibrated on the study's crops with its observer
    assert observers and set(observers) == {("percentile", tuple(images["calib"].shape))}
    assert len(observers) == len(list((tmp_path / "outcomes").glob("*.json"))) // 2
    observers.clear()
    again = _run(spec, tmp_path, images, train_images=train)
    assert again.results.cached.all() and not observers
    for col in ("psnr_rgb", "bpp", "act_bits"):
        assert again.results[col].equals(with_acts.results[col])
    settings = json.loads((tmp_path / "spec.json").read_text())
    assert settings["act_bits"] == 8 and settings["act_observer"] == "percentile"
    from bitalloc.report import write_report

    report = write_report(with_acts, tmp_path / "report").read_text()
    assert "| `act_bits` | bits |" in report and "undocumented" not in report


def _photo(path, seed):
    pixels = np.random.default_rng(seed).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


@pytest.fixture
def data_root(tmp_path):
    for sub, n in (("train", 4), ("kodak", 1)):
        (tmp_path / "data" / sub).mkdir(parents=True)
        for k in range(n):
            _photo(tmp_path / "data" / sub / f"{sub}{k}.png", 10 * len(sub) + k)
    return tmp_path / "data"


def test_calibration_offset_takes_other_training_photos(tmp_path, data_root):
    common = dict(qualities=(1,), allocators=("uniform",), budgets=(8.0,), calib_images=2, calib_crop=64)
    out = tmp_path / "out"
    first = run_study(StudySpec(**common), out, model_loader=tiny_loader, data=data_root, progress=False)
    tables = set((out / "sensitivity").glob("*.json"))
    second = run_study(StudySpec(**common, calib_offset=2), out, model_loader=tiny_loader, data=data_root,
                       progress=False)
    names = [r.settings["inputs"]["calib_image_names"] for r in (first, second)]
    assert names == [["train0", "train1"], ["train2", "train3"]]
    new = set((out / "sensitivity").glob("*.json")) - tables
    assert len(tables) == 1 and len(new) == 1
    costs = [json.loads(p.read_text()) for p in (*tables, *new)]
    assert costs[0] != costs[1]
    static = second.results.allocator != "fp32"
    assert not second.results.cached[static].any() and second.results.cached[~static].all()
    with pytest.raises(ValueError, match="calib_offset=4 skips every calibration photo: only 4 found"):
        run_study(StudySpec(**common, calib_offset=4), out, model_loader=tiny_loader, data=data_root,
                  progress=False)
