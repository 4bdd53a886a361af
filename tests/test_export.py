import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bitalloc.export import export_packed, load_packed, pack_bits, unpack_bits
from bitalloc.graph import quantizable_layers
from bitalloc.plan import BitPlan
from bitalloc.quant import apply_plan, plan_of


@settings(max_examples=40, deadline=None)
@given(bits=st.integers(1, 16), n=st.integers(0, 300), seed=st.integers(0, 1000))
def test_pack_bits_round_trip(bits, n, seed):
    v = np.random.default_rng(seed).integers(0, 2 ** bits, size=n)
    buf = pack_bits(v, bits)
    assert len(buf) == (n * bits + 7) // 8
    assert np.array_equal(unpack_bits(buf, bits, n), v)


def _mixed_plan(model):
    names = list(quantizable_layers(model))
    return BitPlan({n: (2, 3, 4, 5, 6, 8, 12, 16)[i % 8] for i, n in enumerate(names)} | {"g_s.1": 6})


@pytest.mark.parametrize("learn_scale", [False, True], ids=["calibrated", "lsq-trained"])
def test_packed_round_trip_is_exact(hyperprior, images, tmp_path, learn_scale):
    q = apply_plan(hyperprior, _mixed_plan(hyperprior), calibration="mse", learn_scale=learn_scale).eval()
    if learn_scale:  # move the scales as a QAT step would
        with torch.no_grad():
            for name, p in q.named_parameters():
                if name.endswith(".0.scale"):
                    p.mul_(1.1)
    report = export_packed(q, tmp_path / "model.bapk")
    loaded = load_packed(tmp_path / "model.bapk")
    assert plan_of(loaded) == plan_of(q)
    assert loaded.meta["architecture"] == "bmshj2018-hyperprior"
    with torch.no_grad():
        a, b = q(images), loaded(images)
    assert torch.equal(a["x_hat"], b["x_hat"])
    assert all(torch.equal(a["likelihoods"][k], b["likelihoods"][k]) for k in ("y", "z"))
    payload_bits = (report["file_bytes"] - report["header_bytes"]) * 8
    assert report["plan_size_bits"] <= payload_bits <= report["plan_size_bits"] * 1.01
    assert report["header_bytes"] < 4096


def test_file_size_matches_plan_at_uniform_4_bits(hyperprior, tmp_path):
    names = list(quantizable_layers(hyperprior))
    q = apply_plan(hyperprior, BitPlan.uniform(names, 4))
    report = export_packed(q, tmp_path / "m.bapk")
    assert abs(report["file_bytes"] * 8 - report["plan_size_bits"]) <= 0.01 * report["plan_size_bits"] + 8 * 4096


def test_export_needs_a_plan(hyperprior, tmp_path):
    with pytest.raises(ValueError, match="apply_plan"):
        export_packed(hyperprior, tmp_path / "x.bapk")


def test_load_rejects_other_files(tmp_path):
    p = tmp_path / "junk.bapk"
    p.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="bad magic"):
        load_packed(p)
