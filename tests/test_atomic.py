"""bitalloc.atomic: the one home of atomic writes (issue 11, item 4).

A failed write leaves the target as it was and no temporary file; files get open()'s mode, not mkstemp's 0600;
no other source writes through its own temporary file.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import pytest

from bitalloc.atomic import (atomic_savefig, atomic_torch_save, atomic_write, atomic_write_bytes, atomic_write_json,
                             atomic_write_text, file_mode)

REPO = Path(__file__).resolve().parents[1]


class Boom(Exception):
    pass


def _failing_writer(fh):
    fh.write(b"half of a file")
    raise Boom("disk full")


def test_failing_write_leaves_target_unchanged_and_no_tmp(tmp_path):
    target = tmp_path / "cell.json"
    target.write_text("old")
    with pytest.raises(Boom):
        atomic_write(target, _failing_writer)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["cell.json"]


def test_failing_write_of_a_new_file_creates_nothing(tmp_path):
    with pytest.raises(Boom):
        atomic_write(tmp_path / "sub" / "new.bin", _failing_writer)
    assert list((tmp_path / "sub").iterdir()) == []


def test_interrupt_during_write_cleans_up(tmp_path):
    def interrupted(fh):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(tmp_path / "a.txt", interrupted)
    assert list(tmp_path.iterdir()) == []


def test_unserialisable_json_and_torch_objects_leave_nothing(tmp_path):
    (tmp_path / "a.json").write_text("{}")
    with pytest.raises(TypeError):
        atomic_write_json(tmp_path / "a.json", {"x": object()})
    with pytest.raises(Exception):
        atomic_torch_save({"f": lambda: 0}, tmp_path / "s.pt")  # a lambda does not pickle
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]
    assert (tmp_path / "a.json").read_text() == "{}"


def test_writes_replace_and_round_trip(tmp_path):
    import torch

    atomic_write_text(tmp_path / "t.txt", "a\r\nb\n")
    assert (tmp_path / "t.txt").read_bytes() == b"a\r\nb\n"  # no newline translation
    atomic_write_text(tmp_path / "t.txt", "ü")
    assert (tmp_path / "t.txt").read_text(encoding="utf-8") == "ü"
    atomic_write_bytes(tmp_path / "b.bin", b"\x00\x01")
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    atomic_torch_save({"w": torch.arange(3)}, tmp_path / "s.pt")
    assert torch.equal(torch.load(tmp_path / "s.pt", weights_only=True)["w"], torch.arange(3))
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*"))


def test_files_get_open_mode_not_mkstemp_private_mode(tmp_path):
    old = os.umask(0o022)
    try:
        assert file_mode() == 0o666 & ~0o022  # read at import; this process runs with umask 022
        atomic_write_text(tmp_path / "a.txt", "x")
        atomic_torch_save({}, tmp_path / "b.pt")
    finally:
        os.umask(old)
    for name in ("a.txt", "b.pt"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644, name


def test_writing_onto_a_folder_names_it(tmp_path):
    with pytest.raises(IsADirectoryError, match=re.escape(str(tmp_path))):
        atomic_write_text(tmp_path, "x")


def test_savefig_keeps_the_format_of_the_suffix(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([0, 1])
    atomic_savefig(fig, tmp_path / "f.png")
    atomic_savefig(fig, tmp_path / "f.svg")
    plt.close(fig)
    assert (tmp_path / "f.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert b"<svg" in (tmp_path / "f.svg").read_bytes()[:400]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.png", "f.svg"]


def test_atomic_write_text_stays_importable_from_costs():
    from bitalloc import costs

    assert costs.atomic_write_text is atomic_write_text


def test_no_other_source_writes_through_its_own_temporary_file():
    """mkstemp / NamedTemporaryFile / a '.tmp' name / os.replace appear only in bitalloc/atomic.py (and the
    cache's rename of a corrupt file aside, which is a rename, not a write)."""
    allowed = {("bitalloc/atomic.py", None), ("bitalloc/study_files.py", "os.replace(path, target)")}
    # a DataFrame's rename(columns=...) renames no file
    pattern = re.compile(r"mkstemp|NamedTemporaryFile|[\"']\.tmp|os\.replace\(|\.rename\((?!columns=)")
    offenders = []
    for top in ("bitalloc", "solvers", "models", "studies"):
        for path in sorted((REPO / top).rglob("*.py")):
            rel = path.relative_to(REPO).as_posix()
            if (rel, None) in allowed:
                continue
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if pattern.search(line) and not any(rel == f and s and s in line for f, s in allowed):
                    offenders.append(f"{rel}:{number}: {line.strip()}")
    assert not offenders, "write through bitalloc.atomic instead:\n" + "\n".join(offenders)
