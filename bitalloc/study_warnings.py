"""Warnings are cached with what raised them (:mod:`bitalloc.study_run` reads and stores them).

A cell's file stores (``"warnings"``) the warnings of the work done under its label (its allocation and joint
check, the outcome it asked for, its reference run); an outcome stores those computing it raised (labelled with
the cell that asked for it), a cost table's or pairwise table's are stored beside it (``<out>/table_warnings/``),
and an allocation kept for an interrupted cell keeps its own. A cached cell or table puts its stored warnings back
into the run, and so does a cached outcome for the cell its warnings name (a cell recomputed on an outcome cached
for it), so a rerun from the cache collects what its first run did. Warnings from reading the cache itself (a
file set aside) are this run's only and are not stored. The collected warnings are ordered by the cell or table
they came from, in the study's order (each one's in the order raised), so a run's list does not depend on which
worker finished first. Cells cached before warnings were stored load as before, with one warning that says how
many there are.
"""

from __future__ import annotations

import json
import warnings

from .study_files import load_json, set_aside

__all__ = ["note_unstored", "read_table_warnings", "stored_warnings"]


def stored_warnings(value) -> list[dict] | None:
    """The warnings a cached cell or table stores (dicts, each with at least ``cell`` and ``message``), or None
    when it stores none that read back (written before warnings were stored)."""
    if not isinstance(value, list) or not all(isinstance(r, dict) and {"cell", "message"} <= set(r) for r in value):
        return None
    return value


def read_table_warnings(path, key: dict) -> list[dict]:
    """The warnings stored beside a cached table ([] when none are: a table cached before they were stored); a
    file that does not read back is set aside (named in a warning)."""
    found = load_json(path)
    if found is None:
        return []
    stored = stored_warnings(found.get("warnings")) if isinstance(found, dict) else None
    if stored is None or found.get("key") != json.loads(json.dumps(key)):
        set_aside(path, "is not the warnings of its table (no list of warnings, or another key)")
        return []
    return stored


def note_unstored(count: int, model: str, root) -> None:
    warnings.warn(f"{count} cells of {model} were read from a cache written before cells stored their warnings "
                  f"({root}/cells): the warnings their first run raised are not shown", UserWarning, stacklevel=1)
