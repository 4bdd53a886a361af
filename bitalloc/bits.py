"""Which bit-widths are valid: one rule for plans, cost tables and the quantizer (torch-free).

* A plan or a cost table may name any integer width in ``MIN_BITS..MAX_BITS`` (1..32): a table can hold a
  1-bit candidate of some other quantizer, and 32 bits is float32.
* bitalloc's own weight quantizer (:mod:`bitalloc.fake_quant`: symmetric, per channel, restricted grid
  ``[-2^(b-1)+1, 2^(b-1)-1]``) realises ``QUANT_MIN_BITS..QUANT_MAX_BITS`` (2..16): 1 bit would leave only the
  level 0, and more than 16 bits gains nothing over the float weight it replaces.

:func:`check_bits` is the one check; :class:`~bitalloc.plan.BitPlan` and :class:`~bitalloc.costs.CostTable`
call it with ``quantizer=False`` and their own error type, the torch side (quantizers, ``apply_plan``,
``measure_sensitivity``, DynaQuant) with the default ``quantizer=True``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["MIN_BITS", "MAX_BITS", "QUANT_MIN_BITS", "QUANT_MAX_BITS", "check_bits"]

MIN_BITS, MAX_BITS = 1, 32
QUANT_MIN_BITS, QUANT_MAX_BITS = 2, 16


def check_bits(bits: Any, layer: str | None = None, *, quantizer: bool = True, error: type = ValueError,
               subject: str | None = None) -> int:
    """``bits`` as an int if it is a valid bit-width, else ``error`` with a sentence naming the layer.

    An int (numpy ints too; not a bool, not a float such as ``4.0``) in ``MIN_BITS..MAX_BITS``, and with
    ``quantizer`` also in ``QUANT_MIN_BITS..QUANT_MAX_BITS``. ``subject`` replaces ``"bits of layer '<layer>'"``
    at the start of the message (e.g. ``"candidate bit-width 33 in field 'bits'"``).
    """
    where = subject or (f"bits of layer '{layer}'" if layer else "bits of quantizer")
    if isinstance(bits, (bool, np.bool_)) or not hasattr(bits, "__index__"):
        raise error(f"{where} must be an int, got {bits!r} ({type(bits).__name__})")
    b = int(bits)
    if quantizer and b == 1:
        raise error(f"{where} is 1; the symmetric per-channel quantizer needs {QUANT_MIN_BITS}..{QUANT_MAX_BITS} "
                    "bits (1 bit would leave only the level 0)")
    if quantizer and not QUANT_MIN_BITS <= b <= QUANT_MAX_BITS:
        raise error(f"{where} is {b}; bit-widths must be in 1..{QUANT_MAX_BITS} ({QUANT_MIN_BITS}.."
                    f"{QUANT_MAX_BITS} for weight quantizers)")
    if not MIN_BITS <= b <= MAX_BITS:
        raise error(f"{where} is {b}; it must be in {MIN_BITS}..{MAX_BITS}")
    return b
