"""DynaQuant: content-aware quantization and per-image dynamic bit-widths (Bao et al., arXiv 2511.07903).

* :mod:`.quantizers` -- content-aware activation quantizers, weights stored once at 8 bits, DGM/STE rounding
  through :mod:`bitalloc.quant`'s estimators.
* :mod:`.selector` -- the light bit-width selector (pool 5x5, MLP, dropout 0.2, Gumbel-softmax / argmax).
* :mod:`.model` -- :class:`DynaQuantModel` on a Scale / Mean-Scale Hyperprior with symmetric selectors.
* :mod:`.train` -- RD + gamma * bit-cost training, dual ascent on gamma, decision-bias calibration.
* :mod:`.cell` -- real-bitstream evaluation and :func:`run_dynaquant_cell`, the harness's ``dynaquant`` cell.
"""

from .cell import evaluate_dynamic, load_dynaquant, run_dynaquant_cell, save_dynaquant
from .model import DynamicLayer, DynaQuantModel
from .quantizers import ContentAwareActQuantizer, NestedWeight, round_with
from .selector import BitSelector
from .train import calibrate_bit_bias, train_dynaquant

__all__ = [
    "BitSelector", "ContentAwareActQuantizer", "DynaQuantModel", "DynamicLayer", "NestedWeight",
    "calibrate_bit_bias", "evaluate_dynamic", "load_dynaquant", "round_with", "run_dynaquant_cell",
    "save_dynaquant", "train_dynaquant",
]
