"""QAT-aware costs: what a layer at a bit-width costs *after* quantization-aware fine-tuning, not right after PTQ.

A cost table measures each (layer, bits) cell as the loss increase right after post-training quantization. A
plan that is fine-tuned afterwards (QAT) pays something else: QAT repairs some layers almost fully and others
hardly at all. On the compact Mean-Scale Hyperprior (q4) the first analysis layer at 2 bits costs +30 % RD loss
after PTQ and +1.6 % after 50 QAT steps, so an allocator that trusts the PTQ table protects layers QAT would
have repaired and pays for it in layers it cannot (the study's Mean-Scale QAT rows at 4 bits, where the
Hessian-proxy plan beat every table-driven one).

:func:`measure_recovered_costs` measures, for every cell whose PTQ cost leaves the noise (the bits in play,
:func:`bitalloc.interactions.bits_in_play`), the loss after ``steps`` QAT steps with only that layer quantized,
against the float model fine-tuned with the same steps, seed and batches (the QAT anchor: the fine-tuning
itself moves the loss):

    recovered[l, b] = (L(QAT of {l: b}) - L(QAT of {})) / L(QAT of {})

on the table's calibration crops, every crop its own observation (so each cell has a standard error). Cells
not in play keep the table's cost (they are within its noise). A layer is measured from its fewest bits up and
stops once QAT repairs it into the noise (``|recovered| <= max(noise_floor, noise_z * se)``): its cells above
take that measurement (more bits cost no more; ``frame.attrs["inferred"]`` lists them). Every row is then
fitted monotone over bits (:func:`bitalloc.noise.fit_costs`: non-negative, non-increasing). The table returned
has the same layers, bits and sizes and no pairwise terms (those were measured after PTQ), ready for any
allocator; :meth:`Recovery.check` measures a whole plan after the same QAT against its prediction. The harness
names such allocators with the ``+qat`` suffix (``ilp+qat``): they run in QAT mode only.

The measurement costs one QAT run of ``steps`` per cell measured (plus the anchor); ``workdir`` keeps every
cell as it is measured, so an interrupted measurement resumes where it stopped.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch.nn as nn
from tqdm.auto import tqdm

from bitalloc.allocation import QAT_SUFFIX, split_qat  # re-exported: the suffix lives with the allocator names
from bitalloc.atomic import atomic_write_text
from bitalloc.costs import CostTable
from bitalloc.graph import quantizable_layers
from bitalloc.interactions import bits_in_play
from bitalloc.noise import fit_costs, noise_floor as table_noise_floor
from bitalloc.objective import Loss, evaluate_loss, model_device, resolve_loss
from bitalloc.quant import apply_plan, plan_of
from bitalloc.sensitivity.calibration import calibration_batches
from bitalloc.sensitivity.plan_check import PlanCheck
from bitalloc.sensitivity.probe import mean_parts, per_sample_batches, sample_increases, summarize

__all__ = ["ANCHOR_FILE", "QAT_SUFFIX", "Recovered", "Recovery", "measure_recovered_costs", "split_qat"]

_CELLS_FILE = "recovered_cells.json"
ANCHOR_FILE = "anchor.json"  # in a QAT-aware table's work folder: its anchor, for every Recovery of its settings


@dataclass(frozen=True)
class Recovered:
    """What :func:`measure_recovered_costs` found. ``table``: the QAT-aware cost table; ``frame``: one row per
    measured cell (``layer``, ``bits``, ``ptq_cost`` from the table, the raw ``zeta`` after recovery and its
    ``zeta_se``, ``cost`` as fitted, the loss parts, ``time_s``); ``qat_runs``: fine-tuning runs (cells plus the
    anchor) this call ran, ``qat_steps``: their steps; ``time_s``: seconds."""

    table: CostTable
    frame: pd.DataFrame
    steps: int
    qat_runs: int
    qat_steps: int
    time_s: float


def _read_work(path, settings: dict, what: str) -> dict | None:
    """What an earlier call with the same ``settings`` kept at ``path`` (None when nothing is there); a file that is
    not ``what``, or was kept with other settings, is refused naming them: its work is not this call's."""
    if path is None or not Path(path).is_file():
        return None
    try:
        found = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: not {what} ({exc}); remove it or use another workdir") from None
    kept = found.get("settings") if isinstance(found, dict) else None
    if kept != settings:
        differ = [k for k in settings if not isinstance(kept, dict) or kept.get(k) != settings[k]]
        raise ValueError(f"{path} holds {what} of other settings ({', '.join(differ) or 'their keys'}); use another "
                         "workdir")
    return found


class Recovery:
    """QAT runs that all draw the same batches from ``train`` (:func:`bitalloc.qat.fresh_source`), each measured
    on ``data`` crop by crop against the float model's run with the same steps (the anchor, fine-tuned once
    here, or read from ``anchor_file`` when an earlier run with the same settings kept it there; the harness keeps
    it in the QAT-aware table's work folder, so every joint check and verify of that table reuses it).
    :func:`measure_recovered_costs` measures single layers through it, :meth:`check` whole plans.
    ``train_crop``: an image folder's training crops at this size instead of its own (smaller crops make each
    step cheaper: 128^2 costs a quarter of 256^2); other sources are used as they are."""

    def __init__(self, model: nn.Module, train: Any, data: Any, *, steps: int = 100, lr: float = 5e-5,
                 loss: Loss | None = None, lmbda: float | None = None, calibration: str = "mse",
                 batch_size: int = 8, crop: int = 128, seed: int = 0, eval_crop: int = 256,
                 eval_limit: int | None = None, train_crop: int | None = None,
                 anchor_file: str | Path | None = None):
        from bitalloc.qat import finetune

        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
        if len(plan_of(model)):
            raise ValueError("QAT-aware costs need the float model, but this one is already fake-quantized")
        if train_crop is not None and (isinstance(train_crop, bool) or not isinstance(train_crop, int)
                                       or train_crop < 1):
            raise ValueError(f"train_crop must be None or an integer >= 1, got {train_crop!r}")
        self.model, self.train, self.seed, self.calibration, self.steps = model, train, seed, calibration, steps
        self.train_crop = train_crop
        self.objective = resolve_loss(model, loss, lmbda)
        self.batches = per_sample_batches(calibration_batches(data, crop=eval_crop, limit=eval_limit,
                                                              device=model_device(model)))
        self.options = dict(steps=steps, lr=lr, loss=self.objective, batch_size=batch_size, crop=crop, seed=seed,
                            progress=False)
        settings = {"steps": steps, "lr": lr, "calibration": calibration, "batch_size": batch_size, "crop": crop,
                    "seed": seed, "eval_crop": eval_crop, "eval_limit": eval_limit, "train_crop": train_crop,
                    "crops": len(self.batches)}
        kept = _read_work(anchor_file, settings, "the QAT anchor")
        self.anchor, self.runs = (None if kept is None else kept["anchor"]), 0
        if self.anchor is None:
            anchor, _ = finetune(model, {}, self._source(), **self.options)
            self.anchor, self.runs = self._per_crop(anchor), 1
            if anchor_file is not None:
                atomic_write_text(Path(anchor_file), json.dumps({"settings": settings, "anchor": self.anchor}))

    def _source(self) -> Any:
        from bitalloc.data import ImageFolder
        from bitalloc.qat import fresh_source

        source = fresh_source(self.train, self.seed)  # a copy for an image folder
        if self.train_crop is not None and isinstance(source, ImageFolder):
            source.crop = self.train_crop
        return source

    def _per_crop(self, m: nn.Module) -> list[dict[str, float]]:
        m.eval()
        return [evaluate_loss(m, self.objective, [b]) for b in self.batches]

    def measure(self, plan: Any) -> tuple[dict[str, float], float, float]:
        """(mean loss parts, fractional increase over the anchor, its standard error) of ``plan`` ({layer: bits},
        other layers float) after the QAT."""
        return summarize(self._trained(plan), self.anchor, self.model)

    def _trained(self, plan: Any) -> list[dict[str, float]]:
        """The per-crop loss parts of ``plan`` after the QAT."""
        from bitalloc.qat import finetune

        qmodel = apply_plan(self.model, plan, calibration=self.calibration, keep_float=True)
        qmodel, _ = finetune(qmodel, None, self._source(), **self.options)
        self.runs += 1
        return self._per_crop(qmodel)

    def increase(self, plan: Any) -> float:
        """``plan``'s loss increase after the QAT, a fraction of the anchor's loss (what a QAT-aware table predicts;
        the measure :func:`bitalloc.verify_and_repair` takes for ``+verify+qat``)."""
        return self.measure(plan)[1]

    def samples(self, plan: Any) -> np.ndarray:
        """``plan``'s loss increase after the QAT per evaluation crop, each a fraction of the anchor's mean loss
        (their mean is :meth:`increase`; the noise-aware measure of ``+verify+qat``)."""
        return sample_increases(self._trained(plan), self.anchor, self.model)

    def check(self, plan: Any, table: CostTable) -> PlanCheck:
        """``plan`` after the QAT against ``table``'s prediction (a QAT-aware table's, for it to mean something):
        :class:`~bitalloc.sensitivity.plan_check.PlanCheck` with the anchor as the float loss."""
        from bitalloc.plan import BitPlan

        plan = plan if isinstance(plan, BitPlan) else BitPlan(dict(plan))
        predicted = plan.cost(table)
        parts, z, _ = self.measure(plan)
        fp = mean_parts(self.anchor)
        return PlanCheck(predicted=predicted, measured=z, loss_fp=fp["loss"], loss_plan=parts["loss"],
                         bpp_fp=fp.get("bpp"), bpp_plan=parts.get("bpp"), parts_fp=fp, parts_plan=parts)


def measure_recovered_costs(model: nn.Module, train: Any, table: CostTable, data: Any, *, steps: int = 100,
                            lr: float = 5e-5, loss: Loss | None = None, lmbda: float | None = None,
                            calibration: str = "mse", batch_size: int = 8, crop: int = 128, seed: int = 0,
                            zeta: Any = None, zeta_se: Any = None, noise_floor: float = 1e-3, noise_z: float = 2.0,
                            snap_z: float = 0.0, eval_crop: int = 256, eval_limit: int | None = None,
                            train_crop: int | None = None, workdir: str | Path | None = None,
                            progress: bool = True) -> Recovered:
    """The QAT-aware cost table of ``table``'s layers in ``model`` (module docstring).

    ``train``: what QAT draws batches from (:func:`bitalloc.qat.finetune`'s ``data``); ``data``: the crops the
    losses are measured on (the table's calibration crops, each its own observation; ``eval_crop`` and
    ``eval_limit`` as :func:`bitalloc.sensitivity.calibration_batches` takes them). ``steps``, ``lr``,
    ``batch_size``, ``crop``, ``seed``: the QAT of each cell and of the anchor (use the QAT the plans will
    get); every run draws the same batches (:class:`Recovery`, which takes ``train_crop``).
    ``zeta``/``zeta_se``: the raw single-layer measurements (layers x bits, the table's frame) that pick the bits
    in play; default: the table's costs and standard errors. ``workdir``: keeps the measured cells (resume).
    ``snap_z``: as :func:`bitalloc.noise.fit_costs` (fitted costs within that many standard errors of 0 become 0).
    """
    names, bits = list(table.layer_names), tuple(table.bits)
    layers = quantizable_layers(model, gdn=True)
    missing = [n for n in names if n not in layers]
    if missing:
        raise KeyError(f"layer '{missing[0]}' of the cost table is not a quantizable layer of {type(model).__name__}")
    raw = np.asarray(table.cost if zeta is None else zeta, dtype=np.float64)
    raw_se = table.cost_se if zeta is None else zeta_se
    if raw.shape != (len(names), len(bits)):
        raise ValueError(f"zeta has shape {raw.shape}; the table has {len(names)} layers x {len(bits)} bits")
    play = dict(zip(names, bits_in_play(raw, raw_se, bits, noise_floor=noise_floor, noise_z=noise_z)))
    settings = {"layers": names, "bits": list(bits), "steps": steps, "lr": lr, "seed": seed,
                "calibration": calibration, "batch_size": batch_size, "crop": crop, "noise_floor": noise_floor,
                "noise_z": noise_z, "train_crop": train_crop}
    path = None if workdir is None else Path(workdir) / _CELLS_FILE
    kept = _read_work(path, settings, "a recovered-costs measurement")
    done = {(r["layer"], int(r["bits"])): r for r in (kept or {}).get("cells", [])}
    t0 = time.perf_counter()
    run = Recovery(model, train, data, steps=steps, lr=lr, loss=loss, lmbda=lmbda, calibration=calibration,
                   batch_size=batch_size, crop=crop, seed=seed, eval_crop=eval_crop, eval_limit=eval_limit,
                   train_crop=train_crop, anchor_file=None if workdir is None else Path(workdir) / ANCHOR_FILE)

    def noise(row: dict) -> bool:
        se = row["zeta_se"] if np.isfinite(row["zeta_se"]) else 0.0
        return abs(row["zeta"]) <= max(noise_floor, noise_z * se)

    zeta_q = np.asarray(table.cost, dtype=np.float64).copy()
    se_q = (np.full_like(zeta_q, np.nan) if table.cost_se is None
            else np.asarray(table.cost_se, dtype=np.float64).copy())
    inferred: dict[str, list[int]] = {}
    bar = tqdm(total=sum(map(len, play.values())), disable=not progress, desc=f"QAT-aware costs ({steps} steps)",
               leave=False)
    for n in names:
        i = table.index(n)
        for k, b in enumerate(play[n]):  # from the fewest bits up
            if (n, b) not in done:
                t = time.perf_counter()
                parts, z, z_se = run.measure({n: b})
                if not np.isfinite(z):
                    raise FloatingPointError(f"the loss is not finite after QAT of '{n}' at {b} bits; no QAT-aware "
                                             "cost")
                done[(n, b)] = {"layer": n, "bits": b, "ptq_cost": float(table.cost[i, bits.index(b)]),
                                "zeta": z, "zeta_se": z_se, **parts, "time_s": time.perf_counter() - t}
                if path is not None:
                    atomic_write_text(path, json.dumps({"settings": settings, "cells": list(done.values())}))
            row = done[(n, b)]
            zeta_q[i, bits.index(b)], se_q[i, bits.index(b)] = row["zeta"], row["zeta_se"]
            bar.update()
            if noise(row) and k + 1 < len(play[n]):
                # QAT repairs this layer into the noise at b bits: more bits cost no more (monotone), so the
                # cells above in play take this measurement instead of a QAT run each
                rest = play[n][k + 1:]
                inferred[n] = list(rest)
                for r in rest:
                    zeta_q[i, bits.index(r)], se_q[i, bits.index(r)] = row["zeta"], row["zeta_se"]
                bar.update(len(rest))
                break
    bar.close()
    cost, cost_se = fit_costs(zeta_q, se_q if np.isfinite(se_q).any() else None, snap_z=snap_z)
    measured = [row for (n, b), row in done.items() if b not in inferred.get(n, ())]
    frame = pd.DataFrame(measured, columns=None if measured else ["layer", "bits", "ptq_cost", "zeta",
                                                                         "zeta_se", "time_s"])
    if len(frame):
        frame["cost"] = [float(cost[table.index(n), bits.index(int(b))]) for n, b in zip(frame.layer, frame.bits)]
        order = {n: i for i, n in enumerate(names)}
        frame = frame.sort_values(["layer", "bits"], key=lambda s: s.map(order) if s.name == "layer" else s,
                                  ignore_index=True)
    elapsed = time.perf_counter() - t0
    frame.attrs.update(steps=steps, qat_runs=run.runs, time_s=elapsed,
                       bits_in_play={n: list(v) for n, v in play.items()}, inferred=inferred)
    floor = table.noise_floor
    if cost_se is not None:  # as measure_sensitivity: a cell without a standard error has 0
        cost_se = np.where(np.isfinite(cost_se), cost_se, 0.0)
        floor = table_noise_floor(cost_se)
        floor = 0.0 if np.isnan(floor) else floor
    recovered = table.replace(cost=cost, cost_se=cost_se, pairwise={}, noise_floor=floor)
    return Recovered(table=recovered, frame=frame, steps=steps, qat_runs=run.runs, qat_steps=run.runs * steps,
                     time_s=elapsed)
