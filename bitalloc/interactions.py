"""Pairwise interaction costs: what two layers quantized together cost beyond their single-layer costs.

For a pair of layers (i, j) and bit-widths (a, b) of the table's candidates,

    P_ij[a, b] = max(zeta(i@a, j@b), 0) - cost[i, a] - cost[j, b]

where ``zeta(i@a, j@b)`` is the fractional loss increase with both layers (and only they) quantized, measured
like the table (same data, loss and calibration), and ``cost`` are the table's single-layer costs. So
``cost[i, a] + cost[j, b] + P_ij[a, b]`` is the pair's measured joint cost, clipped at 0 as the table clips: the
pairwise term is in the table's own units (fractions of the float model's loss), ready for
``CostTable.from_arrays(..., pairwise={(i, j): P_ij})``. Positive: the pair costs more together than apart
(the Mean-Scale Hyperprior's hyper-synthesis layers, each free alone); negative: less. Negative terms are set
to 0 by default (``negative="clip"``; the frame keeps the measured value): an exact solver seeks out every
negative term, and on small calibration sets most of them are noise that adds up over the pairs a layer is in
(on two 64x64 crops, ``iqp`` found a Mean-Scale plan "predicted" at -18 % RD loss that measured +6.5 %).

**Which pairs** (``pairs=None``): every pair when the table has at most :data:`ALL_PAIRS_MAX_LAYERS` layers;
otherwise the *structure pairs*: neighbours in the layer graph (:func:`bitalloc.graph.layer_graph`, an edge u->v
when v reads u's output) plus the couplings of the hyperprior, every pair among the side-information layers
(h_a, h_s, entropy_parameters, context_prediction: h_a makes z, h_s and the entropy-parameter path turn z_hat
and the context into p(y), so all of them move the rate together). All pairs cost about (L-1)/2 * B'^2/B
single-layer tables (B' bits in play of B): on the shipped compact Mean-Scale q4 (14 layers, 4.2 of 6 bits in
play) 1,610 evaluations against the table's 84 (19x), the structure pairs 362 (4.3x, 24 pairs;
``studies/interaction_cost.py``); at 8 layers all pairs are about 10x, the price of the structure pairs at 14.

**Which bit-widths**: an interaction is a product of two perturbations, so only where both layers' single
costs leave the noise: layer l's bits in play are the candidates at or below the largest bit-width whose raw
single-layer change ``|zeta|`` exceeds ``max(noise_floor, noise_z * se)`` (raw, not clipped: a layer that
*lowers* the loss alone is not noise). Cells outside are 0 (not measured; the frame lists what was).

Measurements go through :class:`~bitalloc.sensitivity.probe.LossProbe`: cached pipelines (a pair re-runs from
one of its layers when the other one runs in that re-run, else a full forward pass) and quantized weights
computed once per (layer, bits).
"""

from __future__ import annotations

import itertools
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch.nn as nn
from tqdm.auto import tqdm

from bitalloc.costs import CostTable
from bitalloc.graph import branch_of, layer_graph, quantizable_layers
from bitalloc.objective import Loss, model_device, resolve_loss
from bitalloc.quant import plan_of
from bitalloc.sensitivity.calibration import calibration_batches
from bitalloc.sensitivity.probe import LossProbe, per_sample_batches, summarize

__all__ = ["ALL_PAIRS_MAX_LAYERS", "SIDE_BRANCHES", "Interactions", "bits_in_play", "frame_matrix",
           "measure_interactions", "structure_pairs", "with_pairwise"]

#: Tables with at most this many layers get every pair measured by default (module docstring).
ALL_PAIRS_MAX_LAYERS = 8
#: Branches of the hyperprior's side information, coupled pairwise by default.
SIDE_BRANCHES = ("h_a", "h_s", "entropy_parameters", "context_model")


@dataclass(frozen=True)
class Interactions:
    """Measured pairwise interaction costs (module docstring).

    ``pairwise``: ``{(layer_i, layer_j): B x B array}`` over the table's ``bits`` (rows: bits of layer_i), layer_i
    before layer_j in table order, 0 where not measured. ``frame``: one row per measured (pair, bits) cell with
    the joint ``zeta``, its ``zeta_se`` (NaN with one batch), ``cost_i``, ``cost_j``, the measured ``interaction``,
    the ``pairwise`` term kept (negative ones clipped by default) and the loss parts; ``frame.attrs`` repeats the
    counters. ``forward_passes``: loss evaluations this measurement ran (one evaluation = the loss over all
    calibration batches; cached ones re-run only a suffix of the model), of which
    ``single_passes`` re-measured single layers (0 when the table's frame was given); ``table_forward_passes``:
    what the single-layer table takes (layers x bits); ``table_time_s``: its time when its frame was given.
    """

    bits: tuple[int, ...]
    pairwise: Mapping[tuple[str, str], np.ndarray]
    frame: pd.DataFrame = field(compare=False)
    forward_passes: int = 0
    single_passes: int = 0
    time_s: float = 0.0
    table_forward_passes: int = 0
    table_time_s: float | None = None

    @property
    def pairs(self) -> list[tuple[str, str]]:
        return list(self.pairwise)

    def matrix(self, layer_a: str, layer_b: str) -> np.ndarray:
        """The interaction matrix with rows for ``layer_a``'s bits (either order of the pair)."""
        if (layer_a, layer_b) in self.pairwise:
            return self.pairwise[(layer_a, layer_b)]
        if (layer_b, layer_a) in self.pairwise:
            return self.pairwise[(layer_b, layer_a)].T
        raise KeyError(f"pair ('{layer_a}', '{layer_b}') was not measured; measured pairs: {len(self.pairwise)}")

    def attach(self, table: CostTable) -> CostTable:
        """``table`` with these pairwise terms (replacing any it has for the same pairs): :func:`with_pairwise`."""
        return with_pairwise(table, self.pairwise)


def with_pairwise(table: CostTable, pairwise: Mapping[tuple[str, str], Any], *, add: bool = False) -> CostTable:
    """A copy of ``table`` whose pairwise terms are its own updated by ``pairwise``: replaced pair by pair, or
    added to them with ``add=True`` (a pair given in the other order than the table's is transposed). The
    table validates them (:func:`bitalloc.pairwise.validate_pairwise`: known layers, shape, finite)."""
    merged = {k: np.asarray(v, dtype=np.float64) for k, v in table.pairwise.items()}
    for (a, b), m in pairwise.items():
        m = np.asarray(m, dtype=np.float64)
        if (b, a) in merged:
            a, b, m = b, a, m.T
        merged[(a, b)] = merged[(a, b)] + m if add and (a, b) in merged else m
    return table.replace(pairwise=merged)


def structure_pairs(model: nn.Module, names: Sequence[str], x: Any = None, *,
                    branches: Mapping[str, str] | None = None) -> list[tuple[str, str]]:
    """Neighbours in the layer graph of ``model`` (traced on ``x``) plus every pair among the side-information
    layers (:data:`SIDE_BRANCHES`), restricted to ``names`` and ordered as ``names`` are."""
    order = {n: i for i, n in enumerate(names)}
    found: set[tuple[str, str]] = set()
    graph = layer_graph(model, x)
    for u, v in graph.edges:
        if u in order and v in order and u != v:
            found.add((u, v) if order[u] < order[v] else (v, u))
    branches = branches or {}
    side = [n for n in names if (branches.get(n) or branch_of(n)) in SIDE_BRANCHES]
    found.update(itertools.combinations(side, 2))
    return sorted(found, key=lambda p: (order[p[0]], order[p[1]]))


def bits_in_play(zeta: np.ndarray, se: np.ndarray | None, bits: Sequence[int], *, noise_floor: float = 1e-3,
                 noise_z: float = 2.0) -> list[tuple[int, ...]]:
    """Per layer (rows of ``zeta``), the candidates at or below the largest bit-width whose ``|zeta|`` exceeds
    ``max(noise_floor, noise_z * se)`` (empty when none does): where an interaction can matter."""
    zeta = np.asarray(zeta, dtype=np.float64)
    floor = np.full(zeta.shape, float(noise_floor))
    if se is not None:
        s = np.asarray(se, dtype=np.float64)
        floor = np.maximum(floor, noise_z * np.where(np.isfinite(s), s, 0.0))
    out = []
    for row, f in zip(zeta, floor):
        above = np.nonzero(~(np.abs(row) <= f))[0]  # a non-finite zeta is not noise either
        out.append(tuple(bits[: above.max() + 1]) if above.size else ())
    return out


def _check_pairs(pairs: Iterable, names: Sequence[str]) -> list[tuple[str, str]]:
    order = {n: i for i, n in enumerate(names)}
    out: list[tuple[str, str]] = []
    for p in pairs:
        if isinstance(p, str) or not isinstance(p, Sequence) or len(p) != 2:
            raise ValueError(f"pairs: {p!r} is not a pair of layer names")
        a, b = map(str, p)
        for n in (a, b):
            if n not in order:
                raise KeyError(f"pairs: layer '{n}' of pair ('{a}', '{b}') is not in the cost table")
        if a == b:
            raise ValueError(f"pairs: ('{a}', '{b}') pairs a layer with itself")
        key = (a, b) if order[a] < order[b] else (b, a)
        if key not in out:
            out.append(key)
    return out


def frame_matrix(frame: pd.DataFrame, col: str, names: Sequence[str], bits: Sequence[int]) -> np.ndarray | None:
    """The (layers x bits) matrix of column ``col`` of a sensitivity frame (one row per layer and bits), None when
    the frame has no such column; a (layer, bits) of the table missing from the frame is an error."""
    if col not in frame:
        return None
    try:
        return frame.pivot(index="layer", columns="bits", values=col).loc[list(names), list(bits)].to_numpy()
    except KeyError as exc:
        raise ValueError(f"the frame given has no '{col}' for some (layer, bits) of the table: {exc}") from None


def measure_interactions(model: nn.Module, data: Any, table: CostTable, pairs: Any = None, *,
                         frame: pd.DataFrame | None = None, loss: Loss | None = None, lmbda: float | None = None,
                         calibration: str = "minmax", method: str = "cached", crop: int = 256,
                         limit: int | None = 4, uncertainty: bool = False, noise_floor: float = 1e-3,
                         noise_z: float = 2.0, all_pairs_max_layers: int = ALL_PAIRS_MAX_LAYERS,
                         negative: str = "clip", bias_correction: bool = False, progress: bool = True
                         ) -> Interactions:
    """Pairwise interaction costs of ``table``'s layers in ``model`` (module docstring).

    ``data``, ``loss``, ``lmbda``, ``calibration``, ``crop``, ``limit``: as the table was measured
    (:func:`bitalloc.measure_sensitivity`). ``pairs``: None (default choice), "all", "structure", or pairs of
    layer names. ``frame``: the table's frame (``return_frame=True``), whose raw ``zeta`` (and ``zeta_se``) pick
    the bits in play; without it the single layers are re-measured here (counted in ``single_passes``).
    ``uncertainty``: every crop its own batch, as in :func:`bitalloc.measure_sensitivity`. ``negative``: "clip"
    (negative interactions become 0 in ``pairwise``) or "keep". ``bias_correction``: as the table was measured
    (every quantized layer's bias corrected, :mod:`bitalloc.bias_correction`).
    """
    if negative not in ("clip", "keep"):
        raise ValueError(f"negative must be 'clip' or 'keep', got {negative!r}")
    if len(plan_of(model)):
        raise ValueError("measure_interactions needs the float model, but this one is already fake-quantized")
    names, bits = list(table.layer_names), tuple(table.bits)
    layers = quantizable_layers(model, gdn=True)
    missing = [n for n in names if n not in layers]
    if missing:
        raise KeyError(f"layer '{missing[0]}' of the cost table is not a quantizable layer of {type(model).__name__}")
    objective = resolve_loss(model, loss, lmbda)
    batches = calibration_batches(data, crop=crop, limit=limit, device=model_device(model))
    if uncertainty:
        batches = per_sample_batches(batches)
    if pairs is None:
        pairs = "all" if len(names) <= all_pairs_max_layers else "structure"
    was_training = model.training
    model.eval()
    t0 = time.perf_counter()
    try:
        if pairs == "all":
            pairs = list(itertools.combinations(names, 2))
        elif pairs == "structure":
            x = per_sample_batches(batches[:1])[0]
            pairs = structure_pairs(model, names, x if not isinstance(x, (tuple, list)) else x[0],
                                    branches={s.name: s.branch for s in table.layers if s.branch})
        pairs = _check_pairs(pairs, names)
        probe = LossProbe(model, objective, batches, {n: layers[n] for n in names}, calibration=calibration,
                          method=method, keep_weights=True, bias_correction=bias_correction)
        probe.prepare_bias(bits)
        in_pairs = [n for n in names if any(n in p for p in pairs)]
        if frame is not None:
            zeta, se = frame_matrix(frame, "zeta", names, bits), frame_matrix(frame, "zeta_se", names, bits)
            if zeta is None:
                raise ValueError("the frame given has no 'zeta' column: pass measure_sensitivity's frame")
        else:
            zeta = np.full((len(names), len(bits)), np.nan)
            se = np.full_like(zeta, np.nan)
            for n in in_pairs:
                for j, b in enumerate(bits):
                    _, zeta[names.index(n), j], se[names.index(n), j] = summarize(probe.losses({n: b}), probe.fp,
                                                                                   model)
            _warn_if_other_table(table, zeta, noise_floor)
        single_passes = probe.evaluations
        play = dict(zip(names, bits_in_play(zeta, se, bits, noise_floor=noise_floor, noise_z=noise_z)))
        col = {b: j for j, b in enumerate(bits)}
        out = {p: np.zeros((len(bits), len(bits))) for p in pairs}
        rows = []
        bar = tqdm(total=sum(len(play[a]) * len(play[b]) for a, b in pairs), disable=not progress,
                   desc=f"interactions ({probe.method})", leave=False)
        for a, b in pairs:
            ia, ib = table.index(a), table.index(b)
            for ba, bb in itertools.product(play[a], play[b]):
                parts, z, z_se = summarize(probe.losses({a: ba, b: bb}), probe.fp, model)
                ci, cj = float(table.cost[ia, col[ba]]), float(table.cost[ib, col[bb]])
                value = max(z, 0.0) - ci - cj
                out[(a, b)][col[ba], col[bb]] = max(value, 0.0) if negative == "clip" else value
                rows.append({"layer_i": a, "bits_i": ba, "layer_j": b, "bits_j": bb, "zeta": z, "zeta_se": z_se,
                             "cost_i": ci, "cost_j": cj, "interaction": value,
                             "pairwise": out[(a, b)][col[ba], col[bb]], **parts})
                bar.update()
        bar.close()
    finally:
        model.train(was_training)
    elapsed = time.perf_counter() - t0
    result_frame = pd.DataFrame(rows, columns=None if rows else ["layer_i", "bits_i", "layer_j", "bits_j", "zeta",
                                                                   "zeta_se", "cost_i", "cost_j", "interaction",
                                                                   "pairwise"])
    bad = result_frame[~np.isfinite(result_frame["interaction"].to_numpy(dtype=np.float64))]
    if len(bad):
        r = bad.iloc[0]
        raise FloatingPointError(f"the loss is not finite with {r.layer_i}@{r.bits_i}b and {r.layer_j}@{r.bits_j}b "
                                 f"quantized together ({len(bad)} such cells); no finite interaction cost")
    table_time = None if frame is None else frame.attrs.get("time_s")
    counters = dict(forward_passes=probe.evaluations, single_passes=single_passes, time_s=elapsed,
                    table_forward_passes=len(names) * len(bits), table_time_s=table_time)
    result_frame.attrs.update(counters, pairs=len(pairs), method=probe.method, cached_batches=probe.cached,
                              naive_batches=probe.naive, bits_in_play={n: list(v) for n, v in play.items()})
    return Interactions(bits=bits, pairwise=out, frame=result_frame, **counters)


def _warn_if_other_table(table: CostTable, zeta: np.ndarray, noise_floor: float) -> None:
    """Warn when the single layers measured here disagree with the table's costs (other data or calibration)."""
    cost = np.asarray(table.cost)
    mine = np.maximum(np.nan_to_num(zeta, nan=0.0), 0.0)
    clear = np.isfinite(zeta) & (cost > 10 * noise_floor)
    if not clear.any():
        return
    rel = np.abs(mine - cost)[clear] / cost[clear]
    if np.median(rel) > 0.25:
        l, j = np.argwhere(clear)[int(np.argmax(rel))]
        warnings.warn(f"the single-layer costs measured here differ from the table's (median {np.median(rel):.0%}; "
                      f"'{table.layer_names[l]}' at {table.bits[j]} bits: {mine[l, j]:.4g} here, {cost[l, j]:.4g} "
                      "in the table): measure_interactions needs the data, loss and calibration of the table",
                      RuntimeWarning, stacklevel=3)
