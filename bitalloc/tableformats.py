"""A cost table's files: the tidy frame and CSV (:mod:`bitalloc.tableio`) and JSON (:mod:`bitalloc.tablejson`).

:class:`TableFormats` gives :class:`~bitalloc.costs.CostTable` its ``to_*`` / ``from_*`` methods; the readers
and writers themselves live in those two modules (imported on use: they import :mod:`bitalloc.costs`).
Files are written atomically (:func:`bitalloc.atomic.atomic_write_text`).
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any, Mapping

import pandas as pd

from bitalloc.atomic import atomic_write_text

if TYPE_CHECKING:
    from bitalloc.costs import CostTable

__all__ = ["TABLE_FORMAT", "TABLE_VERSION", "TABLE_VERSION_ACT", "TABLE_VERSION_PAIRWISE", "TableFormats"]

TABLE_FORMAT = "bitalloc.costtable"
TABLE_VERSION = 1  # written when the table has no pairwise terms (files of older bitalloc read the same)
TABLE_VERSION_PAIRWISE = 2  # with pairwise terms: a reader that would drop them refuses the file instead
TABLE_VERSION_ACT = 3  # with (weight, activation) candidates (``act_bits``): older readers refuse the file


class TableFormats:
    """The serialisation methods of :class:`~bitalloc.costs.CostTable`."""

    def to_frame(self) -> pd.DataFrame:
        """Tidy frame, one row per (layer, bits); with pairwise terms also one row per (pair, bits, bits) with
        columns ``pair_layer`` and ``pair_bits`` (blank on the layers' own rows; :mod:`bitalloc.tableio`); with
        the costs' uncertainty also ``cost_se`` and ``noise_floor`` (the table's one value on every layer row)."""
        from bitalloc.tableio import table_to_frame
        return table_to_frame(self)

    @classmethod
    def from_frame(cls, frame: pd.DataFrame) -> CostTable:
        """Inverse of :meth:`to_frame` (layer order = first appearance); errors name the row and field."""
        from bitalloc.tableio import table_from_frame
        return table_from_frame(frame)

    def to_csv(self, path: str | os.PathLike) -> None:
        atomic_write_text(path, self.to_frame().to_csv(index=False))

    @classmethod
    def from_csv(cls, path: str | os.PathLike) -> CostTable:
        """Read :meth:`to_csv`'s file; a truncated or hand-edited one raises naming the file, line and field."""
        from bitalloc.tableio import read_table_csv
        return read_table_csv(path)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready mapping (:mod:`bitalloc.tablejson`; version 2 with the pairwise terms)."""
        from bitalloc.tablejson import table_to_dict
        return table_to_dict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CostTable:
        """Inverse of :meth:`to_dict`; errors name the layer and field."""
        from bitalloc.tablejson import table_from_dict
        return table_from_dict(data)

    def to_json(self, path: str | os.PathLike | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=1)
        if path is not None:
            atomic_write_text(path, text)
        return text

    @classmethod
    def from_json(cls, path_or_text: str | os.PathLike) -> CostTable:
        """Read JSON text or :meth:`to_json`'s file; a truncated or hand-edited one raises naming the file,
        the layer and the field."""
        from bitalloc.tablejson import read_table_json
        return read_table_json(path_or_text)
