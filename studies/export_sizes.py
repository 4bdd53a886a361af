"""File sizes of every export format against the plan's size, and onnxruntime against the fake-quantized forward.

    python studies/export_sizes.py

Models: the shipped Scale Hyperprior q4 (compact) at uniform 4 and 8 bits and at a random mixed plan (2-8 bits,
GDN included), the joint autoregressive mbt2018 at CompressAI's paper size (quality 4, N = M = 192, untrained:
sizes only; its context mask is what made the old sidecar 9.2 MB), and torchvision's resnet18 at a random plan.
For each: the plan's size (:func:`bitalloc.quant.layer_size_bits`), the packed container (payload = codes +
scales; side tables apart), the ONNX file (int4 containers for <= 4 bits, and int8 only), the baked float32
safetensors file, and the largest |onnxruntime - fake-quantized| over the exported graphs on one 64x64 input.
Writes studies/results/export_sizes.md.
"""

from __future__ import annotations

import platform
import random
import tempfile
from pathlib import Path

import torch

from bitalloc.atomic import atomic_write_text
from bitalloc.bake import export_baked
from bitalloc.export import export_packed
from bitalloc.graph import quantizable_layers
from bitalloc.models import load_model
from bitalloc.onnx_export import export_onnx, run_onnx, transform_inputs
from bitalloc.quant import apply_plan

RESULTS = Path(__file__).parent / "results"


def _plans(model, gdn: bool) -> dict[str, dict[str, int]]:
    names, rng = list(quantizable_layers(model, gdn=gdn)), random.Random(0)
    convs = list(quantizable_layers(model))
    return {"uniform 4": dict.fromkeys(convs, 4), "uniform 8": dict.fromkeys(convs, 8),
            "mixed 2-8": {n: rng.choice((2, 3, 4, 5, 6, 8)) for n in names}}


def _onnx_diff(q, path, x) -> float:
    if x is None:  # LIC: the four transforms of one file
        inputs = transform_inputs(q, torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)))
        out = run_onnx(path, {f"{t}/input": v for t, v in inputs.items()})
        with torch.no_grad():
            return max((out[f"{t}/output"] - getattr(q, t)(v)).abs().max().item() for t, v in inputs.items())
    with torch.no_grad():
        return (run_onnx(path, x) - q(x)).abs().max().item()


def measure(label: str, q, tmp: Path, x=None, onnx: bool = True) -> dict:
    packed = export_packed(q, tmp / "m.safetensors")
    row = {"model / plan": label, "plan KB": packed["plan_size_bits"] / 8e3,
           "packed payload KB": packed["payload_bytes"] / 1e3,
           "payload / plan": packed["payload_bytes"] * 8 / packed["plan_size_bits"],
           "packed file KB": packed["file_bytes"] / 1e3, "header KB": packed["header_bytes"] / 1e3,
           **{f"{k} KB": v / 1e3 for k, v in packed["side_bytes"].items()},
           "baked fp32 KB": export_baked(q, tmp / "b.safetensors")["file_bytes"] / 1e3}
    if onnx:
        for int4 in (True, False):
            report = export_onnx(q, tmp / "m.onnx", x, int4=int4)
            row["ONNX int4+int8 KB" if int4 else "ONNX int8 KB"] = report["file_bytes"] / 1e3
        row["max |ORT - fake-quant|"] = _onnx_diff(q, tmp / "m.onnx", x)
    print(row, flush=True)
    return row


def main() -> None:
    import pandas as pd
    import torchvision
    from compressai.models import JointAutoregressiveHierarchicalPriors

    torch.manual_seed(0)
    rows = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        scale = load_model("bmshj2018-hyperprior", 4)
        for name, plan in _plans(scale, gdn=True).items():
            rows.append(measure(f"Scale q4 compact, {name}", apply_plan(scale, plan, keep_float=True), tmp))
        mbt = JointAutoregressiveHierarchicalPriors(192, 192).eval()
        mbt.update(force=True)
        rows.append(measure("mbt2018 paper q4 (untrained), uniform 4", apply_plan(mbt, _plans(mbt, False)["uniform 4"]),
                            tmp, onnx=False))
        net = torchvision.models.resnet18(weights=None).eval()
        x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
        rows.append(measure("resnet18, mixed 2-8", apply_plan(net, _plans(net, False)["mixed 2-8"]), tmp, x))
    frame = pd.DataFrame(rows)
    text = ("# Export sizes against the plan\n\n`python studies/export_sizes.py` on " + platform.platform()
            + " (shared 2-core CPU sandbox). KB = 1000 bytes. payload = packed codes + float32 scales; cdf, masks, "
            "rest = the packed container's side tables (entropy CDFs as uint16 row differences, weight masks as "
            "bits, the other float tensors); ONNX: whole file (LIC: the four transforms), the graph run by "
            "onnxruntime with optimizations off against bitalloc's fake-quantized forward.\n\n"
            + frame.to_markdown(index=False, floatfmt=".4g") + "\n")
    atomic_write_text(RESULTS / "export_sizes.md", text)
    print(text)


if __name__ == "__main__":
    main()
