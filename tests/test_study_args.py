"""bitalloc.study_args: what the backend studies share, imported without a ``sys.path`` hack (issue 11, item 5)."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from bitalloc.study_args import add_model_args, kodak_folder, load_model_arg

REPO = Path(__file__).resolve().parents[1]


def test_no_source_edits_sys_path():
    offenders = [f"{p.relative_to(REPO)}:{n}: {line.strip()}"
                 for top in ("bitalloc", "solvers", "models", "studies") for p in sorted((REPO / top).rglob("*.py"))
                 for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
                 if re.search(r"sys\.path\.(insert|append)|sys\.path\s*[+]?=", line)]
    assert not offenders, "\n".join(offenders)


def _args(tmp_path, *argv):
    p = argparse.ArgumentParser()
    add_model_args(p, tmp_path / "results")
    return p.parse_args(list(argv))


def test_defaults_and_the_output_folder(tmp_path):
    args = _args(tmp_path)
    assert (args.model, args.quality, args.checkpoint, args.run_state, args.threads) == (
        "bmshj2018-hyperprior", 4, None, None, 1)
    assert args.out == str(tmp_path / "results")


def test_missing_checkpoint_or_kodak_exits_2_saying_what_to_pass(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        load_model_arg(_args(tmp_path, "--checkpoint", str(tmp_path / "none.pt")))
    assert info.value.code == 2 and "Pass --checkpoint FILE" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        kodak_folder(_args(tmp_path, "--data", str(tmp_path)))
    assert info.value.code == 2 and "kodak/" in capsys.readouterr().err
    (tmp_path / "kodak").mkdir()
    assert kodak_folder(_args(tmp_path, "--data", str(tmp_path))) == tmp_path / "kodak"


def test_a_run_state_of_other_weights_names_the_file(tmp_path):
    import torch

    from bitalloc.atomic import atomic_torch_save

    atomic_torch_save({"model": {"g_a.0.weight": torch.zeros(1)}}, tmp_path / "state.pt")
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "state.pt")) + ".*does not hold"):
        load_model_arg(_args(tmp_path, "--run-state", str(tmp_path / "state.pt"), "--quality", "1"))


def test_machine_and_command_lines(monkeypatch):
    import os

    from bitalloc.study_args import command_line, machine_line

    monkeypatch.setattr(os, "getloadavg", lambda: (2.04, 1.0, 0.5))
    monkeypatch.delenv("BITALLOC_MACHINE_NOTE", raising=False)
    assert machine_line(3) == f"- machine: {os.cpu_count()}-core CPU, torch threads 3, 1-minute load average 2.0"
    monkeypatch.setenv("BITALLOC_MACHINE_NOTE", "a training job")
    assert machine_line(1).endswith("1-minute load average 2.0 (sharing it: a training job)")
    assert command_line("studies/x.py", ["--repeats", "2"]) == "- command: `python studies/x.py --repeats 2`"
