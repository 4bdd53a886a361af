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
``runs/dynaquant_study``, git-ignored; delete it to rerun from scratch); an interrupted run resumes.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from bitalloc.atomic import atomic_savefig, atomic_write_text

RESULTS = Path(__file__).parent / "results" / "dynaquant"
ARCH = "bmshj2018-hyperprior"
STATIC = ("ilp", "ilp_a8", "ilp_bops")  # the static plans, each evaluated with PTQ and QAT
METHODS = ("fp32", *(f"{k}_{m}" for k in STATIC for m in ("ptq", "qat")), "dynaquant", "dynaquant_ste",
           "dynaquant_wonly")
ACT_BITS = 8  # DynaQuant's activation bit-width, given to every layer's input in the ilp_a8 plans
FLOAT_ACT = 32  # a float input counts 32 bits in the bit-operations


def numpy_scalars_allowed():
    """Allow numpy scalars in a checkpoint's metadata under ``weights_only`` loading.

    The zoo's first checkpoints store ``final_train_bpp``/``final_train_psnr`` as numpy float64, which
    torch's weights-only unpickler rejects; this allowlists just the numpy scalar and dtype types (the tensors
    are still loaded weights-only). Harmless once the checkpoints store plain floats.
    """
    import numpy.core.multiarray as multiarray

    return torch.serialization.safe_globals([multiarray.scalar, np.dtype, type(np.dtype("float64"))])


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


def _bits_columns(df: pd.DataFrame) -> list[str]:
    return [c for c in df.columns if c.startswith("bits:")]


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


def summarize(images: pd.DataFrame) -> pd.DataFrame:
    agg = {"bpp": "mean", "psnr_rgb": "mean", "ms_ssim_rgb": "mean", "avg_bits": "mean", "max_avg_bits": "max",
           "wbit_macs": "mean", "bit_ops": "mean"}
    for extra in ("gamma", "bit_bias", "train_avg_bits", "train_time_s"):
        if extra in images:
            agg[extra] = "first"
    res = images.groupby(["quality", "method"], sort=False).agg({**agg, "image": "count"}).reset_index()
    res = res.rename(columns={"image": "num_images"})
    res["gbit_ops"] = res.bit_ops / 1e9
    res["gwbit_macs"] = res.wbit_macs / 1e9
    res["act_bits_eff"] = res.bit_ops / res.wbit_macs
    return res


def bd_table(results: pd.DataFrame) -> pd.DataFrame:
    """Per method: mean bits and bit-operations, PSNR/bpp change and BD-rate/BD-PSNR against FP32, BD-rate
    against DynaQuant (the harness's analysis helpers, :mod:`bitalloc.analysis`, over methods instead of
    allocators)."""
    from bitalloc.analysis import bd_against, paired_deltas

    fp = results[results.method == "fp32"].sort_values("quality")
    dq = results[results.method == "dynaquant"].sort_values("quality")
    rows = []
    for method in [m for m in METHODS if m != "fp32" and m in set(results.method)]:
        cur = results[results.method == method].sort_values("quality")
        entry = {"method": method, "num_points": len(cur), "avg_bits": cur.avg_bits.mean(),
                 "max_avg_bits": cur.max_avg_bits.max(), "gwbit_macs": cur.gwbit_macs.mean(),
                 "gbit_ops": cur.gbit_ops.mean(), "act_bits_eff": cur.act_bits_eff.mean(), **paired_deltas(fp, cur)}
        notes = []
        for anchor, name, psnr in ((fp, "fp32", True), (dq, "dynaquant", False)):
            values, note = bd_against(anchor, cur, name, psnr=psnr)
            entry.update(values if note is None else {f"bd_rate_vs_{name}_pct": float("nan")})
            notes += [] if note is None else [f"vs {name}: {note}"]
        if method == "dynaquant":
            entry["bd_rate_vs_dynaquant_pct"] = 0.0
        if notes:
            entry["note"] = "; ".join(notes)[:200]
        rows.append(entry)
    return pd.DataFrame(rows)


LIKE_FOR_LIKE = {
    "dynaquant": "DynaQuant: weights {4,6,8} chosen per image, inputs 8 bits",
    "ilp_ptq": "equal weight size, float inputs", "ilp_qat": "equal weight size, float inputs",
    "ilp_a8_ptq": "equal weight size, inputs 8 bits", "ilp_a8_qat": "equal weight size, inputs 8 bits",
    "ilp_bops_ptq": "equal bit-operations, weight size <=", "ilp_bops_qat": "equal bit-operations, weight size <=",
}


def like_for_like(bd: pd.DataFrame) -> pd.DataFrame:
    """DynaQuant and the static plans, with what they are held equal at."""
    cols = ["method", "basis", "avg_bits", "gbit_ops", "act_bits_eff", "bd_rate_vs_fp32_pct",
            "bd_rate_vs_dynaquant_pct"]
    order = {m: i for i, m in enumerate(LIKE_FOR_LIKE)}
    df = bd[bd.method.isin(list(order))].sort_values("method", key=lambda m: m.map(order))
    df = df.assign(basis=df.method.map(LIKE_FOR_LIKE))
    return df[[c for c in cols if c in df]]


def plans_table(images: pd.DataFrame) -> pd.DataFrame:
    """Per quality, the static plans' (weight, input) bits per layer as ``w6a8`` (``w6``: a float input)."""
    from bitalloc.acttable import candidate_label

    rows = []
    for (q, method), cur in images[images.method.isin([f"{k}_ptq" for k in STATIC])].groupby(
            ["quality", "method"], sort=False):
        first = cur.iloc[0]
        rows.append({"quality": q, "plan": method[:-4], **{
            c[5:]: candidate_label(int(first[c]), None if first[f"act:{c[5:]}"] == FLOAT_ACT else
                                   int(first[f"act:{c[5:]}"])) for c in _bits_columns(cur)}})
    return pd.DataFrame(rows)


def plot_bits(images: pd.DataFrame, candidates, path: Path) -> None:
    """Stacked bars per dynamic layer: the share of Kodak images that chose each candidate, one panel per
    quality."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dq = images[images.method == "dynaquant"]
    quals = sorted(dq.quality.unique())
    cols = [c for c in _bits_columns(dq) if c[5:].split(".")[0] in ("g_a", "h_s", "g_s")
            and c[5:] not in ("g_a.0", "g_s.0")]  # the dynamic layers (the others are fixed at 8 bits)
    fig, axes = plt.subplots(1, len(quals), figsize=(max(6.5, 3.6 * len(quals)), 4.2), squeeze=False,
                             sharey=True)
    colors = plt.cm.viridis(np.linspace(0.15, 0.85, len(candidates)))
    for ax, q in zip(axes[0], quals):
        cur = dq[dq.quality == q]
        bottom = np.zeros(len(cols))
        for b, color in zip(candidates, colors):
            share = np.array([(cur[c] == b).mean() for c in cols])
            ax.bar(range(len(cols)), share, bottom=bottom, color=color, label=f"{b} bits")
            bottom += share
        ax.set_xticks(range(len(cols)), [c[5:] for c in cols], rotation=60, fontsize=7)
        ax.set_title(f"q{q}: {cur.avg_bits.mean():.2f} avg bits", fontsize=9)
    axes[0][0].set_ylabel("share of Kodak images")
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    n_img = dq[dq.quality == quals[0]].shape[0]
    fig.suptitle(f"DynaQuant (DGM): chosen weight bits per layer across {n_img} Kodak images", fontsize=9)
    fig.tight_layout()
    atomic_savefig(fig, path)
    plt.close(fig)


def plot_rd(results: pd.DataFrame, path: Path) -> None:
    """The harness's RD figure (:func:`bitalloc.figures.plot_rd_curves`): PTQ panels with the static plans, QAT
    panels with their QAT and DynaQuant (trained for as many steps), each over its PSNR gap to FP32."""
    from bitalloc.figures import plot_rd_curves

    labels = {"ilp": "ilp (float inputs)", "ilp_a8": "ilp_a8 (8-bit inputs)",
              "ilp_bops": "ilp_bops (DynaQuant's bit-ops)"}
    df = results.assign(
        allocator=results.method.str.replace(r"_(ptq|qat)$", "", regex=True).replace(labels),
        mode=np.where(results.method.str.endswith("_ptq") | (results.method == "fp32"), "ptq", "qat"),
        budget=round(float(results[results.method == "dynaquant"].avg_bits.mean()), 2), budget_kind="avg_bits")
    plot_rd_curves(df, path, model=f"{ARCH} (compact), static plans and DynaQuant",
                   images=int(results.num_images.max()))


def _md(df: pd.DataFrame, floatfmt=".4g") -> str:
    return df.to_markdown(index=False, floatfmt=floatfmt)


def write_markdown(out: Path, args, results: pd.DataFrame, images: pd.DataFrame, bd: pd.DataFrame,
                   elapsed: float, argv) -> None:
    data = f"BITALLOC_DATA={os.environ['BITALLOC_DATA']} " if os.environ.get("BITALLOC_DATA") else ""
    cmd = f"{data}python studies/dynaquant_study.py" + (" " + shlex.join(argv) if argv else "")
    machine = (f"{platform.machine()} CPU sandbox, {os.cpu_count()} cores shared with other jobs (load average "
               f"{args.load_at_start:.1f} at the start), {args.threads} torch threads, torch {torch.__version__}")
    cols = ["quality", "method", "bpp", "psnr_rgb", "ms_ssim_rgb", "avg_bits", "max_avg_bits", "gwbit_macs",
            "gbit_ops", "act_bits_eff", "gamma", "bit_bias", "train_avg_bits", "train_time_s"]
    res = results[[c for c in cols if c in results]]
    lines = [
        "# DynaQuant against static ILP plans at equal weight size and at equal bit-operations (compact Scale "
        "Hyperprior, Kodak)", "",
        f"Command: `{cmd}`  ",
        f"Machine: {machine}; wall time of this invocation {elapsed / 60:.1f} min (cells cached by an earlier "
        "invocation are reused, not re-timed; `train_time_s` is each training's own time).  ",
        f"Settings: candidates {tuple(args.candidates)}, target {args.target_bits:g} avg bits, {args.steps} "
        f"training steps per model (batch {args.batch_size}, 128x128 crops of train/), Kodak "
        f"{'all 24 images' if args.eval_limit is None else f'first {args.eval_limit} images'}, seed {args.seed}; "
        f"static plans: activation candidates {tuple(args.act_candidates)} for `ilp_bops`, observer "
        f"`{args.act_observer}` on the 8 calibration crops.",
        f"Qualities measured: {', '.join(map(str, args.measured))}"
        + (f"; requested but without a shipped checkpoint: {', '.join(map(str, args.missing))} -- BD-rate needs "
           "4 rate points, so with fewer qualities the BD columns are NaN and `delta_psnr_db` (mean PSNR change "
           "against FP32 at each measured quality) is the comparison." if args.missing else "."),
        "",
        "## Like for like", "",
        "DynaQuant against the static ILP plans held at its weight size (its Kodak average weight bits; float or "
        "8-bit inputs) and at its bit-operations (its Kodak mean MACs x weight bits x input bits, with weight "
        "size no larger). BD-rates: PCHIP over PSNR-RGB, negative is better; `bd_rate_vs_dynaquant_pct` < 0 "
        "means the static plan needs fewer bits than DynaQuant for the same PSNR. `act_bits_eff` = bit-operations "
        "/ (MACs x weight bits): the mean input bit-width weighted by each layer's share (32 for float inputs).",
        "", _md(like_for_like(bd)), "",
        "## BD-rate against FP32 and DynaQuant (PCHIP over PSNR-RGB; negative is better)", "", _md(bd), "",
        "## Per quality", "", _md(res), "",
        "Columns: `avg_bits` parameter-weighted mean weight bits (DynaQuant: mean over the Kodak images of each "
        "image's configuration; the static plans: the plan's), `max_avg_bits` the most expensive image, "
        "`gwbit_macs` 1e9 x sum over layers of MACs x weight bits per image, `gbit_ops` 1e9 x sum over layers "
        "of MACs x weight bits x input-activation bits per image (8 for DynaQuant and the `ilp_a8` plans, the "
        "plan's per layer for `ilp_bops`, 32 for float inputs: `fp32`, `ilp_ptq`/`ilp_qat`, `dynaquant_wonly`), "
        "`act_bits_eff` their ratio, `gamma` the final penalty weight of the dual ascent, `bit_bias` the "
        "calibrated decision bias, `train_avg_bits` the average on 16 fresh 256x256 crops of the training photos "
        "(<= target by construction).", "",
        "## Static plans (weight and input bits per layer)", "",
        "`ilp_a8` is `ilp` with every input at 8 bits; `w6` alone: a float input.", "",
        _md(plans_table(images)), "",
        "![chosen bits per layer](bits_per_layer.png)", "",
        "![RD curves](rd_curves.png)", "",
        "*rd_curves.png*: top, PTQ of the static plans; bottom, their QAT with DynaQuant (trained for as many "
        "steps); under each, the PSNR gap to FP32 at the same rate.", "",
        "## How to read it", "",
        "* Equal weight size: the ILP budget is DynaQuant's measured Kodak average (`avg_bits` of the "
        "`dynaquant` row), so both spend the same parameter-weighted mean weight bits; DynaQuant's own target "
        "holds on the training distribution, its Kodak average can differ slightly.",
        "* Equal bit-operations: `ilp_bops` is the ILP on a (weight, activation) cost table (every weight "
        f"candidate with every input candidate of {tuple(args.act_candidates)}, measured by "
        "`measure_sensitivity(act_bits=...)` on the calibration crops) under two budgets: bit-operations at most "
        "DynaQuant's Kodak mean at that quality, weight size at most DynaQuant's. Float inputs are not "
        "candidates: the plan is fully integer, as DynaQuant is.",
        "* DynaQuant keeps g_a.0, g_s.0 and h_a at 8 bits (the paper's choice), so its smallest average with "
        "candidates {4,6,8} is about 5.32 bits; the ILP may place any layer at 4 bits.",
        "* DynaQuant stores the 8-bit integers (lower precisions are derived by a rounding right shift), so its "
        "storage is that of an 8-bit model: the dynamic bits lower the compute precision (bit-operations), "
        "not the file. The static plans' average bits is also their storage.",
        "* `ilp_ptq`/`ilp_qat` keep float inputs (weight-only, as before); `ilp_a8_*` and `ilp_bops_*` quantize "
        "every layer's input per tensor (asymmetric, `bitalloc.ActQuantizer`), ranges calibrated once by the "
        "observer and frozen for PTQ; their QAT starts from those ranges and learns them with the weights "
        "(LSQ, `finetune`'s `learn_act_range`, on since the weight scales are learned too).",
        "* The `*_qat` rows are fine-tuned for the same number of steps as DynaQuant trains "
        "(bitalloc.qat.finetune, DGM estimator, learnable scales); `*_ptq` is calibration only.",
        "* `dynaquant_ste` is the same training with the straight-through estimator instead of the DGM "
        "(beta = 2) for weights and activations: the gradient-modulator ablation.",
        "* `dynaquant_wonly` (with `--weights-only`): DynaQuant with float activations, as the weight-only plans, "
        "to separate the cost of the 8-bit activations from that of the dynamic weight bits.",
    ]
    atomic_write_text(out / "dynaquant.md", "\n".join(lines) + "\n")


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
