"""No loader runs code from a file (issue 10, item 1).

Every loader of the project is fed a pickle whose unpickling runs a shell command (the classic
``__reduce__ -> os.system`` payload), plus a truncated torch file and a torch file of another format. Each must
refuse the file with a ``ValueError`` naming it, and the payload's marker file must never appear.
"""

from __future__ import annotations

import argparse
import os
import pickle
import re
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from conftest import load_study

REPO = Path(__file__).resolve().parents[1]


class Payload:
    """Unpickling this object runs ``touch <marker>``."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(self.marker)}",)


def _write_bad_file(kind: str, path: Path, marker: Path) -> None:
    if kind == "pickled-object-torch":  # what torch.save writes, with an object where tensors belong
        torch.save({"format": "bitalloc.checkpoint", "model": Payload(marker), "state": Payload(marker)}, path)
    elif kind == "pickled-object-raw":  # a bare pickle stream
        path.write_bytes(pickle.dumps(Payload(marker), protocol=2))
    elif kind == "truncated":
        torch.save({"model": {"w": torch.zeros(64, 64)}, "step": 3}, path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif kind == "foreign":  # loads safely, but is not the kind of file the loader reads
        torch.save({"weights": torch.zeros(3)}, path)
    else:
        raise AssertionError(kind)


KINDS = ["pickled-object-torch", "pickled-object-raw", "truncated", "foreign"]


def test_the_payload_runs_when_unpickled_unsafely(tmp_path):
    """The attack is real: a plain unpickler runs it (so the tests below would see the marker)."""
    marker = tmp_path / "owned"
    _write_bad_file("pickled-object-raw", tmp_path / "evil.pkl", marker)
    with open(tmp_path / "evil.pkl", "rb") as f:
        pickle.load(f)
    assert marker.exists()


# ---------------------------------------------------------------------------------------------- the loaders
# Each takes the bad file and a scratch folder, puts the file where the loader looks, and returns
# (the path the error must name, a call that loads it).

def _tiny():
    from bitalloc.models import build_model, lambda_of

    torch.manual_seed(0)
    model = build_model("bmshj2018-hyperprior", 1).eval()
    model.meta = {"architecture": "bmshj2018-hyperprior", "quality": 1, "lambda": lambda_of(1), "N": 48, "M": 64}
    return model


def _crops():
    return torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def _place(bad: Path, target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(bad, target)
    return target


def _train_folder(folder: Path) -> Path:
    from bitalloc.data import split_of

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(12):
        Image.fromarray(rng.integers(0, 255, (96, 96, 3), dtype=np.uint8)).save(folder / f"photo{i:02d}.png")
    assert any(split_of(p) == "train" for p in folder.iterdir())
    return folder


def qat_resume(bad, tmp):
    from bitalloc.graph import quantizable_layers
    from bitalloc.plan import BitPlan
    from bitalloc.qat import STATE_FILE, finetune

    model = _tiny()
    plan = BitPlan.uniform(list(quantizable_layers(model)), 8)
    target = _place(bad, tmp / "run" / STATE_FILE)
    return target, lambda: finetune(model, plan, _crops(), steps=1, batch_size=1, calibration="minmax",
                                    workdir=target.parent, progress=False)


def dynaquant_resume(bad, tmp):
    from bitalloc.dynaquant import DynaQuantModel, train_dynaquant

    dq = DynaQuantModel(_tiny(), (4, 6, 8))
    target = _place(bad, tmp / "dq" / "state.pt")
    return target, lambda: train_dynaquant(dq, _crops(), lmbda=0.01, steps=1, batch_size=1,
                                           workdir=target.parent, progress=False)


def dynaquant_load(bad, tmp):
    from bitalloc.dynaquant import load_dynaquant

    target = _place(bad, tmp / "dynaquant.pt")
    return target, lambda: load_dynaquant(target)


def load_model_from_path(bad, tmp):
    from bitalloc.models import load_model

    target = _place(bad, tmp / "sent-to-me.pt")
    return target, lambda: load_model("bmshj2018-hyperprior", 1, pretrained=target)


def load_checkpoint_file(bad, tmp):
    from bitalloc.models import load_checkpoint

    target = _place(bad, tmp / "checkpoint.pt")
    return target, lambda: load_checkpoint(target)


def train_resume(bad, tmp):
    from bitalloc.models.train import train

    folder = _train_folder(tmp / "train")
    target = _place(bad, tmp / "work" / "state.pt")
    return target, lambda: train("bmshj2018-hyperprior", 1, folder, target.parent, steps=1, batch_size=1, crop=64,
                                 progress=False)


def train_init_from(bad, tmp):
    from bitalloc.models.train import train

    folder = _train_folder(tmp / "train")
    target = _place(bad, tmp / "init.pt")
    return target, lambda: train("bmshj2018-hyperprior", 1, folder, tmp / "work", steps=1, batch_size=1, crop=64,
                                 init_from=target, progress=False)


def packed_export(bad, tmp):
    """A packed file of format 1 (the safetensors container of format 2 has no pickle): its .rest.pt sidecar."""
    import json
    import struct

    from bitalloc.export import load_packed

    header = json.dumps({"format": "bitalloc.packed", "version": 1, "meta": _tiny().meta, "act_bits": None,
                         "rest": "model.bin.rest.pt", "layers": []}).encode()
    (tmp / "model.bin").write_bytes(b"BAPK" + struct.pack("<I", len(header)) + header)
    target = _place(bad, tmp / "model.bin.rest.pt")  # the part of a packed model that torch reads
    return target, lambda: load_packed(tmp / "model.bin")


def bench_sensitivity_run_state(bad, tmp):
    module = load_study("bench_sensitivity")
    target = _place(bad, tmp / "state.pt")
    args = argparse.Namespace(run_state=str(target), model="bmshj2018-hyperprior", quality=1, checkpoint=None)
    return target, lambda: module.load_model_arg(args)


LOADERS = [qat_resume, dynaquant_resume, dynaquant_load, load_model_from_path, load_checkpoint_file, train_resume,
           train_init_from, packed_export, bench_sensitivity_run_state]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("loader", LOADERS, ids=lambda f: f.__name__)
def test_every_loader_refuses_a_bad_file_naming_it(tmp_path, loader, kind):
    marker = tmp_path / "owned"
    bad = tmp_path / "incoming.bin"
    _write_bad_file(kind, bad, marker)
    target, load = loader(bad, tmp_path)
    with pytest.raises(ValueError, match=re.escape(str(target))):
        load()
    assert not marker.exists(), f"{loader.__name__} ran code from {target}"


def test_no_source_loads_torch_files_unsafely():
    offenders = []
    for top in ("bitalloc", "solvers", "models", "studies"):
        for path in sorted((REPO / top).rglob("*.py")):
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if re.search(r"weights_only\s*=\s*False", line):
                    offenders.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert not offenders, "torch.load must use weights_only=True:\n" + "\n".join(offenders)
    scanned = list((REPO / "bitalloc").rglob("*.py"))
    assert len(scanned) > 20  # the scan really read the package
