"""Atomic file writes: the one way bitalloc writes a file that others (or a resumed run) read back.

A write goes to a temporary file in the target's folder (``.<name>.<random>.tmp``), is flushed to disk, and
replaces the target in one ``os.replace``; so a reader sees the old file or the new one, never half of one.
If anything fails (the writer raises, the disk fills, Ctrl-C), the temporary file is removed and the target
is left as it was. Files get the mode a plain ``open(path, "w")`` would give them (``0o666`` minus the umask:
``0o644`` under the usual umask 022), not ``mkstemp``'s private ``0o600``.

>>> import tempfile, pathlib
>>> folder = pathlib.Path(tempfile.mkdtemp())
>>> atomic_write_json(folder / "a.json", {"bits": [4, 8]})
>>> (folder / "a.json").read_text()
'{\\n "bits": [\\n  4,\\n  8\\n ]\\n}'
>>> sorted(p.name for p in folder.iterdir())      # no temporary file left behind
['a.json']

Torch-free at import (``atomic_torch_save`` imports torch when called), so the core may use it.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable

__all__ = ["atomic_savefig", "atomic_torch_save", "atomic_write", "atomic_write_bytes", "atomic_write_json",
           "atomic_write_text", "file_mode"]

TMP_SUFFIX = ".tmp"


def _read_umask() -> int:
    """The process's umask, read without changing it where the system says it (Linux), else set and reset."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # not thread-safe for that instant: only where /proc says nothing
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def file_mode() -> int:
    """The mode a new file gets from ``open()``: ``0o666`` without the umask bits (read at import)."""
    return 0o666 & ~_UMASK


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], Any]) -> None:
    """Call ``write(fh)`` with a binary file open on a temporary file beside ``path``, then move it onto
    ``path`` (folders created as needed). On any error the temporary file is removed, the
    target is unchanged, and the error propagates."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"cannot write {path}: it is a folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    atomic_write(path, lambda fh: fh.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically, UTF-8, line endings as given (no newline translation)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, value: Any, *, indent: int | None = 1, **dumps_kw) -> None:
    """Write ``json.dumps(value, indent=indent, **dumps_kw)`` to ``path`` atomically."""
    atomic_write_text(path, json.dumps(value, indent=indent, **dumps_kw))


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj, path)`` atomically (load it back with :func:`bitalloc.safe_load.load_torch_file`)."""
    import torch

    atomic_write(path, lambda fh: torch.save(obj, fh))


def atomic_savefig(fig, path: str | os.PathLike, **savefig_kw) -> None:
    """Save a matplotlib figure to ``path`` atomically, in the format of its suffix (``dpi=120`` unless given)."""
    path = Path(path)
    buf = io.BytesIO()
    fig.savefig(buf, format=path.suffix.lstrip(".") or None, **{"dpi": 120, **savefig_kw})
    atomic_write_bytes(path, buf.getvalue())
