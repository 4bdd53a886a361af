"""The packed container (issue 14, item 3): safetensors, the plan as metadata, exact reload, sizes."""

import json
import struct

import numpy as np
import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors import safe_open

import bitalloc
from bitalloc.export import export_packed, load_packed, pack_bits, unpack_bits
from bitalloc.graph import quantizable_layers
from bitalloc.models import build_model
from bitalloc.plan import BitPlan
from bitalloc.quant import apply_plan, plan_of, quantized_tensor_name, weight_quantizer


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


def _same_compress(a, b, x):
    with torch.no_grad():
        ca, cb = a.compress(x), b.compress(x)
    return ca["strings"] == cb["strings"] and ca["shape"] == cb["shape"]


@pytest.mark.parametrize("learn_scale", [False, True], ids=["calibrated", "lsq-trained"])
def test_packed_round_trip_is_exact(hyperprior, images, tmp_path, learn_scale):
    hyperprior.update(force=True)  # entropy tables, so compress() runs and the tables travel
    q = apply_plan(hyperprior, _mixed_plan(hyperprior), calibration="mse", learn_scale=learn_scale).eval()
    if learn_scale:  # move the scales as a QAT step would
        with torch.no_grad():
            for name, p in q.named_parameters():
                if name.endswith(".0.scale"):
                    p.mul_(1.1)
    report = export_packed(q, tmp_path / "model.safetensors")
    assert not (tmp_path / "model.safetensors.rest.pt").exists()  # one file, no pickle sidecar
    loaded = load_packed(tmp_path / "model.safetensors")  # a zoo model: no model_factory
    assert plan_of(loaded) == plan_of(q)
    assert loaded.meta == {k: v for k, v in q.meta.items()}
    with torch.no_grad():
        a, b = q(images), loaded(images)
    assert torch.equal(a["x_hat"], b["x_hat"])
    assert all(torch.equal(a["likelihoods"][k], b["likelihoods"][k]) for k in ("y", "z"))
    assert _same_compress(q, loaded, images[:1])
    assert report["plan_size_bits"] <= report["payload_bytes"] * 8 <= report["plan_size_bits"] * 1.01
    assert report["side_bytes"]["cdf"] > 0
    with safe_open(report["path"], "pt") as f:
        meta = f.metadata()
    assert BitPlan.from_json(meta["plan"]) == plan_of(q)
    assert json.loads(meta["model"])["architecture"] == "bmshj2018-hyperprior"


def test_shipped_q4_sizes_match_the_plan(tmp_path):
    model = bitalloc.load_model("bmshj2018-hyperprior", 4)
    q = apply_plan(model, BitPlan.uniform(quantizable_layers(model), 4))
    report = export_packed(q, tmp_path / "q4.safetensors")
    assert abs(report["payload_bytes"] * 8 - report["plan_size_bits"]) <= 0.02 * report["plan_size_bits"]
    sides = sum(report["side_bytes"].values())
    assert report["file_bytes"] == report["header_bytes"] + report["payload_bytes"] + sides
    # the entropy tables compactly: the Gaussian conditional's int32 table alone was 802 KB
    assert report["side_bytes"]["cdf"] < report["payload_bytes"] / 4
    assert report["file_bytes"] < 1.5 * report["payload_bytes"]
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    assert _same_compress(q, load_packed(report["path"]), x)


def test_context_mask_travels_as_bits(tmp_path):
    torch.manual_seed(0)
    model = build_model("cheng2020-anchor", 1).eval()
    model.update(force=True)
    model.meta = {"architecture": "cheng2020-anchor", "quality": 1, "N": 48}
    q = apply_plan(model, {n: 4 for n in quantizable_layers(model)})
    report = export_packed(q, tmp_path / "c.safetensors")
    mask = q.context_prediction.mask
    assert report["side_bytes"]["masks"] == (mask.numel() + 7) // 8  # 1 bit per weight, not float32
    # masked weights are not stored, as layer_size_bits does not count them
    assert report["plan_size_bits"] <= report["payload_bytes"] * 8 <= report["plan_size_bits"] * 1.01
    loaded = load_packed(report["path"])
    assert torch.equal(loaded.context_prediction.mask, mask)
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        assert torch.equal(q(x)["x_hat"], loaded(x)["x_hat"])
    assert _same_compress(q, loaded, x)


def _tiny_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 5)).eval()


def test_a_model_outside_the_zoo_needs_its_factory(tmp_path):
    q = apply_plan(_tiny_net(), {"0": 3, "3": 5})
    path = tmp_path / "net.safetensors"
    export_packed(q, path)
    with pytest.raises(ValueError, match=f"{path.name}.*model_factory"):
        load_packed(path)
    loaded = load_packed(path, model_factory=_tiny_net)
    x = torch.rand(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(loaded(x), q(x))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_export_of_a_cuda_model_writes_cpu_tensors(tmp_path):
    q = apply_plan(_tiny_net(), {"0": 3, "3": 5}).cuda()
    export_packed(q, tmp_path / "net.safetensors")
    loaded = load_packed(tmp_path / "net.safetensors", model_factory=_tiny_net)
    x = torch.rand(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(loaded(x), q(x.cuda()).cpu())


def _write_version_1(q, path):
    """A file of the old format (BAPK + .rest.pt sidecar), written as bitalloc 0.1 wrote it."""
    entries, blobs, offset, skip = [], [], 0, set()
    for name in plan_of(q):
        m = quantizable_layers(q, gdn=True)[name]
        wq, t = weight_quantizer(m), quantized_tensor_name(m)
        w = getattr(m.parametrizations, t).original.detach()
        packed = pack_bits(wq.integers(w).numpy().ravel().astype(np.int64) + wq.qmax, wq.bits)
        scales = wq.effective_scale().detach().numpy().astype("<f4")
        entries.append({"name": name, "tensor": t, "bits": wq.bits, "shape": list(w.shape), "axis": wq.axis,
                        "offset": offset, "nbytes": len(packed), "channels": int(scales.size)})
        blobs += [packed, scales.tobytes()]
        offset += len(packed) + scales.nbytes
        skip |= {f"{name}.parametrizations.{t}.original", f"{name}.parametrizations.{t}.0.scale"}
    header = json.dumps({"format": "bitalloc.packed", "version": 1, "meta": q.meta, "act_bits": None,
                         "rest": path.name + ".rest.pt", "layers": entries}).encode()
    path.write_bytes(b"BAPK" + struct.pack("<I", len(header)) + header + b"".join(blobs))
    torch.save({k: v for k, v in q.state_dict().items() if k not in skip}, str(path) + ".rest.pt")


def test_version_1_files_still_load(hyperprior, images, tmp_path):
    q = apply_plan(hyperprior, _mixed_plan(hyperprior)).eval()
    _write_version_1(q, tmp_path / "old.bapk")
    loaded = load_packed(tmp_path / "old.bapk")
    with torch.no_grad():
        assert torch.equal(q(images)["x_hat"], loaded(images)["x_hat"])


def test_export_needs_a_plan(hyperprior, tmp_path):
    with pytest.raises(ValueError, match="apply_plan"):
        export_packed(hyperprior, tmp_path / "x.safetensors")


def test_load_rejects_other_files(tmp_path):
    p = tmp_path / "junk.bapk"
    p.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="junk.bapk.*bad magic"):
        load_packed(p)
    from safetensors.torch import save_file

    other = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(other), metadata={"format": "pt"})
    with pytest.raises(ValueError, match="other.safetensors.*not a bitalloc packed model"):
        load_packed(other)


def test_activation_ranges_travel_with_the_plan(hyperprior, images, tmp_path):
    from bitalloc.act_quant import activation_qparams, calibrate_activations

    names = list(quantizable_layers(hyperprior))
    plan = BitPlan({n: 6 for n in names}, act_bits={n: (4, 8)[i % 2] for i, n in enumerate(names)})
    q = calibrate_activations(apply_plan(hyperprior, plan), images)
    export_packed(q, tmp_path / "a.safetensors")
    loaded = load_packed(tmp_path / "a.safetensors")
    assert plan_of(loaded) == plan  # weight and activation bits
    assert activation_qparams(loaded) == activation_qparams(q)  # frozen ranges, not recalibrated
    with torch.no_grad():
        assert torch.equal(loaded(images)["x_hat"], q(images)["x_hat"])
