"""DynaQuant against static ILP plans at equal weight size and at equal bit-operations (compact Scale Hyperprior).

    BITALLOC_DATA=../shared/data python studies/dynaquant_study.py

Per quality (1, 3, 4, 6 when their checkpoints ship):

* ``fp32``: the float checkpoint;
* ``dynaquant`` (DGM) and ``dynaquant_ste`` (the gradient-modulator ablation): :func:`run_dynaquant_cell` with
  candidates {4, 6, 8} and 8-bit activations, ``--steps`` training steps on random 128x128 crops of ``train/``,
  average bits steered to ``--target-bits`` on fresh 256x256 crops of the training photos;
* ``ilp_ptq`` and ``ilp_qat``: the ILP plan (sensitivity table of :func:`bitalloc.sensitivity.measure_sensitivity`
  on 8 centre crops of ``train/``, candidates {4, 6, 8}) at the *same average weight bits as DynaQuant measured
  on Kodak*, float activations; PTQ (MSE calibration), and QAT with :func:`bitalloc.qat.finetune` for the same
  number of steps (DGM estimator, learnable scales);
* ``ilp_a8_ptq`` / ``ilp_a8_qat``: the same plan with every quantized layer's input at 8 bits, as DynaQuant's;
  ranges calibrated by ``--act-observer`` on the same 8 crops (:func:`bitalloc.calibrate_activations`) and, in
  QAT, learned LSQ-style with the weights (``finetune``'s ``learn_act_range``, on with learnable scales);
* ``ilp_bops_ptq`` / ``ilp_bops_qat``: the ILP on a (weight, activation) table (weights {4, 6, 8} x inputs
  ``--act-candidates``, same crops and observer) under two budgets: bit-operations (MACs x weight bits x
  activation bits, :meth:`bitalloc.LinearConstraint.bit_operations`) at most DynaQuant's measured Kodak mean, and
  weight size at most DynaQuant's (its Kodak average bits);
* ``dynaquant_wonly`` (``--weights-only``): DynaQuant with float activations, as the weight-only plans have.

Every configuration is entropy-coded on the 24 Kodak images (bpp from the bytes). BD-rates (PCHIP over
PSNR-RGB) against the FP32 curve and against DynaQuant's. Writes ``studies/results/dynaquant/``:
``results.csv`` (one row per quality and method), ``images.csv`` (per image, weight ``bits:`` and input
activation ``act:`` bits per layer, DynaQuant's chosen ones included), ``bd_rate.csv``, ``dynaquant.md``,
``bits_per_layer.png`` (distribution of DynaQuant's chosen bits per layer across Kodak) and ``rd_curves.png``.
Work (trained models, tables, plans, per-image CSVs) is cached under ``--work`` (default
``runs/dynaquant_study``, git-ignored), one folder per quality keyed by the checkpoint's weights and the settings
(:func:`work_key`); an interrupted run resumes.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from bitalloc.atomic import atomic_write_text
from dynaquant_report import (ARCH, FLOAT_ACT, bd_table, plot_bits, plot_rd,
                              summarize, write_markdown)

RESULTS = Path(__file__).parent / "results" / "dynaquant"
ACT_BITS = 8  # DynaQuant's activation bit-width, given to every layer's input in the ilp_a8 plans


def numpy_scalars_allowed():
    """Allow numpy scalars in a checkpoint's metadata under ``weights_only`` loading.

    The zoo's first checkpoints store ``final_train_bpp``/``final_train_psnr`` as numpy float64, which
    torch's weights-only unpickler rejects; this allowlists just the numpy scalar and dtype types (the tensors
    are still loaded weights-only). Harmless once the checkpoints store plain floats.
    """
    import numpy.core.multiarray as multiarray

    return torch.serialization.safe_globals([multiarray.scalar, np.dtype, type(np.dtype("float64"))])


def work_key(model: torch.nn.Module, args) -> str:
    """12 hex digits of the weights' sha256 and the settings that change this study's numbers: a quality's work
    folder, so that new checkpoints or other settings never reuse cached frames, tables or trained models."""
    import hashlib
    import json

    from bitalloc.study_cache import weights_digest

    key = {"weights": weights_digest(model), "candidates": list(args.candidates), "target_bits": args.target_bits,
           "steps": args.steps, "batch_size": args.batch_size, "eval_limit": args.eval_limit, "seed": args.seed,
           "act_candidates": list(args.act_candidates), "act_observer": args.act_observer,
           "train": str(args.train_dir)}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]


def _cached_frame(path: Path, make) -> pd.DataFrame:

    if path.exists():
        return pd.read_csv(path)
    df = make()
    atomic_write_text(path, df.to_csv(index=False))
    return df


def layer_macs(model: torch.nn.Module, height: int, width: int) -> dict[str, float]:
    """MACs per quantizable layer for one (3, height, width) image (:func:`bitalloc.count_macs`)."""
    from bitalloc.graph import quantizable_layers
    from bitalloc.macs import count_macs

    macs = count_macs(model, (3, height, width))
    return {name: float(macs[name]) for name in quantizable_layers(model) if name in macs}


def add_cost_columns(df: pd.DataFrame, macs: dict[str, float]) -> pd.DataFrame:
    """``wbit_macs`` = sum over layers of MACs x weight bits (``bits:<layer>``) and ``bit_ops`` = sum of MACs x
    weight bits x input-activation bits (``act:<layer>``, 32 for a float input), per row."""
    w = {n: macs[n] * df[f"bits:{n}"] for n in macs}
    return df.assign(wbit_macs=sum(w.values()), bit_ops=sum(w[n] * df[f"act:{n}"] for n in macs))


def plan_columns(plan, table, names) -> dict:
    """A static plan's per-image columns: its average weight bits and, per layer, weight and input bits."""
    avg = plan.avg_bits(table)
    return {"avg_bits": avg, "max_avg_bits": avg, **{f"bits:{n}": plan.bits[n] for n in names},
            **{f"act:{n}": plan.act_bits.get(n, FLOAT_ACT) for n in names}}


def with_act_bits(plan, act_bits: int = ACT_BITS):
    """``plan``'s weight bits with every layer's input at ``act_bits``."""
    from bitalloc.plan import BitPlan

    return BitPlan(dict(plan.bits), dict(plan.meta), dict.fromkeys(plan.bits, act_bits))


def bops_plan(table, macs: dict[str, float], max_size_bits: float, max_bit_ops: float, where: str):
    """The ILP's plan of a (weight, activation) ``table`` with weight size <= ``max_size_bits`` and bit-operations
    (MACs x weight bits x activation bits) <= ``max_bit_ops``; raises :class:`bitalloc.errors.BudgetError`
    naming ``where`` and both budgets when there is none, or when the plan breaks either."""
    from bitalloc import Budget, LinearConstraint, build_allocator
    from bitalloc.cells import check_within_budget
    from bitalloc.errors import BudgetError

    budget = Budget(max_size_bits, extra=(LinearConstraint.bit_operations(table, macs, max_bit_ops),))
    try:
        alloc = build_allocator("ilp").allocate(table, budget)
    except BudgetError as exc:  # a budget below every plan of the table (Budget.check), named by the allocator
        raise type(exc)(f"{where}: {exc}") from exc
    if alloc.plan is None:
        raise BudgetError(f"{where}: the ILP found no plan with weights <= {max_size_bits:.6g} bits and "
                          f"bit-operations <= {max_bit_ops:.6g} ({alloc.status}: {alloc.message})")
    check_within_budget(alloc.plan, table, budget, where)
    return alloc.plan


def quantized(model, plan, calib: torch.Tensor, observer: str):
    """PTQ of ``plan`` (MSE weight scales); input ranges, when the plan has activation bits, calibrated by
    ``observer`` on ``calib`` and frozen."""
    from bitalloc.act_quant import calibrate_activations
    from bitalloc.quant import apply_plan

    qmodel = apply_plan(model, plan, calibration="mse")
    return calibrate_activations(qmodel, calib, observer) if plan.act_bits else qmodel


def _table(path: Path, measure):
    from bitalloc import CostTable

    if path.exists():
        return CostTable.from_json(path)
    table = measure()
    table.to_json(path)
    return table


def run_dynaquant(q: int, args, model, lmbda: float, kodak: dict, train, macs, work: Path) -> list[pd.DataFrame]:
    from bitalloc.dynaquant import run_dynaquant_cell

    frames = []
    variants = [("dgm", "dynaquant", ACT_BITS)]
    variants += [] if args.no_ablation else [("ste", "dynaquant_ste", ACT_BITS)]
    variants += [("dgm", "dynaquant_wonly", None)] if args.weights_only else []
    for est, method, act_bits in variants:
        train.rng = np.random.default_rng(args.seed)
        t0 = time.perf_counter()
        df, s = run_dynaquant_cell(model, target_avg_bits=args.target_bits, candidate_bits=tuple(args.candidates),
                                   lmbda=lmbda, steps=args.steps, train_images=train, eval_images=kodak,
                                   estimator=est, seed=args.seed, workdir=work / f"q{q}_{method}",
                                   progress=args.progress, batch_size=args.batch_size, act_bits=act_bits)
        print(f"q{q} {method}: {s['avg_bits']:.3f} avg bits on Kodak ({s['train_avg_bits']:.3f} on 256x256 "
              f"training crops), {s['psnr_rgb']:.2f} dB at {s['bpp']:.4f} bpp "
              f"[{time.perf_counter() - t0:.0f} s]", flush=True)
        df = df.drop(columns=["bit_ops"]).assign(
            method=method, max_avg_bits=df.avg_bits.max(), gamma=s["gamma"], bit_bias=s["bit_bias"],
            train_avg_bits=s["train_avg_bits"], train_time_s=s["train_time_s"],
            **{f"act:{n}": act_bits or FLOAT_ACT for n in macs})
        frames.append(add_cost_columns(df, macs))
    return frames


def static_plans(q: int, args, model, calib, macs, dq: pd.DataFrame, work: Path) -> dict:
    """``{key: (plan, table)}`` of :data:`STATIC`: the ILP plan at DynaQuant's Kodak average weight bits, the
    same with 8-bit inputs, and the plan under DynaQuant's Kodak mean bit-operations (and weight size)."""
    from bitalloc import Budget, build_allocator
    from bitalloc.sensitivity import measure_sensitivity

    table = _table(work / f"q{q}_sensitivity.json", lambda: measure_sensitivity(
        model, calib, bits=tuple(args.candidates), calibration="mse", progress=False))
    equal_bits = float(dq.avg_bits.mean())
    budget = Budget.from_avg_bits(table, equal_bits)
    alloc = build_allocator("ilp").allocate(table, budget)
    if alloc.plan is None:
        raise SystemExit(f"q{q}: the ILP found no plan at {equal_bits:.3f} avg bits: {alloc.message}")
    acts = _table(work / f"q{q}_act_sensitivity.json", lambda: measure_sensitivity(
        model, calib, bits=tuple(args.candidates), act_bits=tuple(args.act_candidates), calibration="mse",
        observer=args.act_observer, hessian_samples=0, progress=False))
    bops = bops_plan(acts, macs, budget.max_size_bits, float(dq.bit_ops.mean()),
                     f"q{q} ilp_bops (DynaQuant's {equal_bits:.4g} avg bits, {dq.bit_ops.mean() / 1e9:.5g} Gbit-ops)")
    plans = {"ilp": (alloc.plan, table), "ilp_a8": (with_act_bits(alloc.plan), table), "ilp_bops": (bops, acts)}
    for key, (plan, _) in plans.items():
        plan.to_json(work / f"q{q}_{key}_plan.json")
    return plans


def run_quality(q: int, args, kodak: dict, train, calib: torch.Tensor, work: Path) -> pd.DataFrame:
    from bitalloc.evaluation import evaluate
    from bitalloc.models import load_model

    with numpy_scalars_allowed():
        model = load_model(ARCH, q)
    work = work / f"q{q}_{work_key(model, args)}"  # keyed by the weights and every setting that changes a number
    work.mkdir(parents=True, exist_ok=True)
    lmbda = float(model.meta["lambda"])
    h, w = next(iter(kodak.values())).shape[-2:]
    macs = layer_macs(model, h, w)  # Kodak images are all 768x512 or 512x768: the same MACs
    names = list(macs)

    fp = _cached_frame(work / f"q{q}_fp32.csv", lambda: evaluate(model, kodak, progress=False))
    frames = [add_cost_columns(fp.assign(method="fp32", avg_bits=32.0, max_avg_bits=32.0,
                                         **{f"{k}:{n}": 32 for n in names for k in ("bits", "act")}), macs)]
    frames += run_dynaquant(q, args, model, lmbda, kodak, train, macs, work)
    dq = next(f for f in frames if f.method.iloc[0] == "dynaquant")
    for key, (plan, table) in static_plans(q, args, model, calib, macs, dq, work).items():
        cols = plan_columns(plan, table, names)
        ptq = _cached_frame(work / f"q{q}_{key}_ptq.csv", lambda: evaluate(
            quantized(model, plan, calib, args.act_observer), kodak, progress=False))
        frames.append(add_cost_columns(ptq.assign(method=f"{key}_ptq", **cols), macs))
        if args.no_qat:
            continue

        def qat():
            from bitalloc.qat import finetune

            train.rng = np.random.default_rng(args.seed)
            t0 = time.perf_counter()
            qmodel, _ = finetune(model, plan, args.train_dir, steps=args.steps, batch_size=args.batch_size,
                                 estimator="dgm", calibration="mse", act_observer=args.act_observer,
                                 act_calibration=calib, workdir=work / f"q{q}_{key}_qat", seed=args.seed,
                                 progress=args.progress)
            return evaluate(qmodel, kodak, progress=False).assign(train_time_s=time.perf_counter() - t0)

        frames.append(add_cost_columns(_cached_frame(work / f"q{q}_{key}_qat.csv", qat).assign(
            method=f"{key}_qat", **cols), macs))
        print(f"q{q} {key}: {cols['avg_bits']:.3f} avg bits, {frames[-1].bit_ops.mean() / 1e9:.1f} Gbit-ops, "
              f"PTQ {frames[-2].psnr_rgb.mean():.2f} dB / QAT {frames[-1].psnr_rgb.mean():.2f} dB", flush=True)
    out = pd.concat(frames, ignore_index=True)
    out.insert(0, "quality", q)
    out.insert(1, "lambda", lmbda)
    return out


def main(argv=None) -> pd.DataFrame:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=None)
    p.add_argument("--qualities", type=int, nargs="+", default=[1, 3, 4, 6])
    p.add_argument("--candidates", type=int, nargs="+", default=[4, 6, 8])
    p.add_argument("--target-bits", type=float, default=6.0)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--eval-limit", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=max(1, os.cpu_count() or 1))
    p.add_argument("--no-ablation", action="store_true", help="skip the straight-through ablation")
    p.add_argument("--no-qat", action="store_true", help="skip the QAT of the static plans")
    p.add_argument("--act-candidates", type=int, nargs="+", default=[4, 6, 8],
                   help="input bit-widths of the (weight, activation) table of the ilp_bops plans")
    p.add_argument("--act-observer", default="mse", help="observer of the static plans' activation ranges "
                   "(bitalloc.observers.OBSERVERS; the harness's default)")
    p.add_argument("--weights-only", action="store_true",
                   help="also train DynaQuant with float activations (separates the activation quantization)")
    p.add_argument("--progress", action="store_true")
    p.add_argument("--out", default=str(RESULTS))
    p.add_argument("--work", default=str(Path(__file__).resolve().parents[1] / "runs" / "dynaquant_study"))
    args = p.parse_args(argv)
    argv = list(sys.argv[1:] if argv is None else argv)
    torch.set_num_threads(args.threads)
    args.load_at_start = os.getloadavg()[0]

    from bitalloc.data import ImageFolder, data_root, resolve_images
    from bitalloc.models import available_checkpoints
    from bitalloc.observers import OBSERVERS
    from bitalloc.sensitivity import calibration_batch

    if args.act_observer not in OBSERVERS:
        p.error(f"--act-observer: unknown observer {args.act_observer!r}; valid choices: {', '.join(OBSERVERS)}")

    root = data_root(args.data)
    if root is None:
        p.error("needs Kodak and the training photos: set BITALLOC_DATA or --data")
    with numpy_scalars_allowed():
        shipped = {c["quality"] for c in available_checkpoints() if c.get("architecture") == ARCH}
    qualities = [q for q in args.qualities if q in shipped]
    if not qualities:
        raise SystemExit(f"no shipped {ARCH} checkpoint for qualities {args.qualities}")
    missing = sorted(set(args.qualities) - set(qualities))
    if missing:
        print(f"skipping qualities without a shipped checkpoint: {missing}", flush=True)
    args.measured, args.missing = qualities, missing
    out = Path(args.out)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    kodak = resolve_images(root / "kodak", limit=args.eval_limit)
    train = ImageFolder(root / "train", crop=128, seed=args.seed)
    args.train_dir = root / "train"
    calib = calibration_batch(root / "train", crop=256, limit=8)
    t0 = time.perf_counter()
    images = pd.concat([run_quality(q, args, kodak, train, calib, work) for q in qualities], ignore_index=True)
    results = summarize(images)
    bd = bd_table(results)
    atomic_write_text(out / "images.csv", images.to_csv(index=False))
    atomic_write_text(out / "results.csv", results.to_csv(index=False))
    atomic_write_text(out / "bd_rate.csv", bd.to_csv(index=False))
    plot_bits(images, args.candidates, out / "bits_per_layer.png")
    plot_rd(results, out / "rd_curves.png")
    write_markdown(out, args, results, images, bd, time.perf_counter() - t0, argv)
    print(bd.to_string(index=False))
    return results


if __name__ == "__main__":
    main()
