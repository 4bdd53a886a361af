"""DynaQuant against the static ILP plan at equal average bits on the shipped compact Scale Hyperprior.

    BITALLOC_DATA=../shared/data python studies/dynaquant_study.py

Per quality (1, 3, 4, 6 when their checkpoints ship):

* ``fp32``: the float checkpoint;
* ``dynaquant`` (DGM) and ``dynaquant_ste`` (the gradient-modulator ablation): :func:`run_dynaquant_cell` with
  candidates {4, 6, 8}, ``--steps`` training steps on random 128x128 crops of ``train/``, average bits steered
  to ``--target-bits`` on fresh 256x256 crops of the training photos;
* ``ilp_ptq`` and ``ilp_qat``: the ILP plan (sensitivity table of :func:`bitalloc.sensitivity.measure_sensitivity`
  on 8 centre crops of ``train/``, candidates {4, 6, 8}) at the *same average bits as DynaQuant measured on
  Kodak*; PTQ (MSE calibration), and QAT with :func:`bitalloc.qat.finetune` for the same number of steps
  (DGM estimator, learnable scales);
* ``dynaquant_wonly`` (``--weights-only``): DynaQuant with float activations, as the static plans have.

Every configuration is entropy-coded on the 24 Kodak images (bpp from the bytes). BD-rates (PCHIP over
PSNR-RGB) against the FP32 curve. Writes ``studies/results/dynaquant/``: ``results.csv`` (one row per quality and
method), ``images.csv`` (per image, DynaQuant's chosen bits per layer included), ``bd_rate.csv``,
``dynaquant.md``, ``bits_per_layer.png`` (distribution of chosen bits per layer across Kodak) and
``rd_curves.png``. Work (trained models, plans, per-image CSVs) is cached under ``--work`` (default
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
METHODS = ("fp32", "ilp_ptq", "ilp_qat", "dynaquant", "dynaquant_ste", "dynaquant_wonly")


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


def _add_cost_columns(df: pd.DataFrame, macs: dict[str, float], act_bits: int) -> pd.DataFrame:
    """``wbit_macs`` = sum MACs x weight bits (comparable across methods) and ``bit_ops`` (x activation bits)."""
    w = sum(macs[c[5:]] * df[c] for c in _bits_columns(df))
    df = df.copy()
    df["wbit_macs"] = w
    df["bit_ops"] = w * act_bits
    return df


def run_quality(q: int, args, kodak: dict, train, calib: torch.Tensor, work: Path) -> pd.DataFrame:
    from bitalloc import Budget, CostTable, build_allocator
    from bitalloc.dynaquant import run_dynaquant_cell
    from bitalloc.evaluation import evaluate
    from bitalloc.models import load_model
    from bitalloc.quant import apply_plan
    from bitalloc.sensitivity import measure_sensitivity

    with numpy_scalars_allowed():
        model = load_model(ARCH, q)
    lmbda = float(model.meta["lambda"])
    h, w = next(iter(kodak.values())).shape[-2:]
    macs = layer_macs(model, h, w)  # Kodak images are all 768x512 or 512x768: the same MACs
    names = list(macs)
    frames = []

    fp = _cached_frame(work / f"q{q}_fp32.csv", lambda: evaluate(model, kodak, progress=False))
    fp = fp.assign(method="fp32", avg_bits=32.0, max_avg_bits=32.0, **{f"bits:{n}": 32 for n in names})
    frames.append(_add_cost_columns(fp, macs, 32))

    summaries = {}
    variants = [("dgm", "dynaquant", 8)]
    variants += [] if args.no_ablation else [("ste", "dynaquant_ste", 8)]
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
        summaries[method] = s
        df = df.assign(method=method, max_avg_bits=df.avg_bits.max(),
                       gamma=s["gamma"], bit_bias=s["bit_bias"], train_avg_bits=s["train_avg_bits"],
                       train_time_s=s["train_time_s"])
        frames.append(_add_cost_columns(df.drop(columns=["bit_ops"]), macs, act_bits or 32))

    table_path = work / f"q{q}_sensitivity.json"
    if table_path.exists():
        table = CostTable.from_json(table_path)
    else:
        table = measure_sensitivity(model, calib, bits=tuple(args.candidates), calibration="mse", progress=False)
        table.to_json(table_path)
    equal_bits = float(summaries["dynaquant"]["avg_bits"])
    alloc = build_allocator("ilp").allocate(table, Budget.from_avg_bits(table, equal_bits))
    if alloc.plan is None:
        raise SystemExit(f"q{q}: the ILP found no plan at {equal_bits:.3f} avg bits: {alloc.message}")
    plan = alloc.plan
    plan.to_json(work / f"q{q}_ilp_plan.json")
    plan_bits = {f"bits:{n}": plan.bits[n] for n in names}
    ilp_avg = plan.avg_bits(table)

    ptq = _cached_frame(work / f"q{q}_ilp_ptq.csv",
                        lambda: evaluate(apply_plan(model, plan, calibration="mse"), kodak, progress=False))
    frames.append(_add_cost_columns(ptq.assign(method="ilp_ptq", avg_bits=ilp_avg, max_avg_bits=ilp_avg,
                                               **plan_bits), macs, 32))
    if not args.no_qat:
        def qat():
            from bitalloc.qat import finetune

            train.rng = np.random.default_rng(args.seed)
            t0 = time.perf_counter()
            qmodel, _ = finetune(model, plan, args.train_dir, steps=args.steps, batch_size=args.batch_size,
                                 estimator="dgm", calibration="mse", workdir=work / f"q{q}_ilp_qat",
                                 seed=args.seed, progress=args.progress)
            return evaluate(qmodel, kodak, progress=False).assign(train_time_s=time.perf_counter() - t0)

        frames.append(_add_cost_columns(_cached_frame(work / f"q{q}_ilp_qat.csv", qat).assign(
            method="ilp_qat", avg_bits=ilp_avg, max_avg_bits=ilp_avg, **plan_bits), macs, 32))
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
    res = images.groupby(["quality", "method"], sort=False).agg(agg).reset_index()
    res["gbit_ops"] = res.bit_ops / 1e9
    res["gwbit_macs"] = res.wbit_macs / 1e9
    return res


def bd_table(results: pd.DataFrame) -> pd.DataFrame:
    """Per method: mean bits and bit-operations, PSNR/bpp change and BD-rate/BD-PSNR against FP32 (the
    harness's analysis helpers, :mod:`bitalloc.analysis`, over methods instead of allocators)."""
    from bitalloc.analysis import bd_against, paired_deltas

    fp = results[results.method == "fp32"].sort_values("quality")
    rows = []
    for method in [m for m in METHODS if m != "fp32" and m in set(results.method)]:
        cur = results[results.method == method].sort_values("quality")
        entry = {"method": method, "num_points": len(cur), "avg_bits": cur.avg_bits.mean(),
                 "max_avg_bits": cur.max_avg_bits.max(), "gwbit_macs": cur.gwbit_macs.mean(),
                 "gbit_ops": cur.gbit_ops.mean(), **paired_deltas(fp, cur)}
        values, note = bd_against(fp, cur, "fp32", psnr=True)
        entry.update(values if note is None else {"bd_rate_vs_fp32_pct": float("nan"), "note": note[:160]})
        rows.append(entry)
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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for method in METHODS:
        cur = results[results.method == method].sort_values("quality")
        if len(cur):
            ax.plot(cur.bpp, cur.psnr_rgb, "k--" if method == "fp32" else "o-", ms=3, label=method)
    ax.set(xlabel="bpp (Kodak, real bitstreams)", ylabel="PSNR-RGB [dB]")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_savefig(fig, path)
    plt.close(fig)


def _md(df: pd.DataFrame, floatfmt=".4g") -> str:
    return df.to_markdown(index=False, floatfmt=floatfmt)


def write_markdown(out: Path, args, results: pd.DataFrame, bd: pd.DataFrame, elapsed: float, argv) -> None:

    cmd = "BITALLOC_DATA=../shared/data python studies/dynaquant_study.py" + (
        " " + shlex.join(argv) if argv else "")
    machine = (f"{platform.machine()} CPU sandbox, {os.cpu_count()} cores ({args.threads} torch threads), "
               f"torch {torch.__version__}")
    cols = ["quality", "method", "bpp", "psnr_rgb", "ms_ssim_rgb", "avg_bits", "max_avg_bits", "gwbit_macs",
            "gbit_ops",
            "gamma", "bit_bias", "train_avg_bits", "train_time_s"]
    res = results[[c for c in cols if c in results]]
    lines = [
        "# DynaQuant vs the static ILP plan at equal average bits (compact Scale Hyperprior, Kodak)", "",
        f"Command: `{cmd}`  ",
        f"Machine: {machine}; wall time of this invocation {elapsed / 60:.1f} min (cells cached by an earlier "
        "invocation are reused, not re-timed; `train_time_s` is each training's own time).  ",
        f"Settings: candidates {tuple(args.candidates)}, target {args.target_bits:g} avg bits, {args.steps} "
        f"training steps per model (batch {args.batch_size}, 128x128 crops of train/), Kodak "
        f"{'all 24 images' if args.eval_limit is None else f'first {args.eval_limit} images'}, seed {args.seed}.",
        f"Qualities measured: {', '.join(map(str, args.measured))}"
        + (f"; requested but without a shipped checkpoint: {', '.join(map(str, args.missing))} -- BD-rate needs "
           "4 rate points, so with fewer qualities the BD columns are NaN and `delta_psnr_db` (mean PSNR change "
           "against FP32 at each measured quality) is the comparison." if args.missing else "."),
        "",
        "## BD-rate against FP32 (PCHIP over PSNR-RGB; negative is better)", "", _md(bd), "",
        "## Per quality", "", _md(res), "",
        "Columns: `avg_bits` parameter-weighted mean weight bits (DynaQuant: mean over the Kodak images of each "
        "image's configuration; the static plans: the plan's), `max_avg_bits` the most expensive image, "
        "`gwbit_macs` 1e9 x sum over layers of MACs x weight bits per image (comparable across methods), "
        "`gbit_ops` 1e9 x sum over layers of MACs x weight bits x activation bits per image (DynaQuant: 8-bit "
        "content-aware activations; the static plans keep float activations, counted as 32 bits), "
        "`gamma` the final penalty weight of the dual ascent, `bit_bias` the calibrated decision bias, "
        "`train_avg_bits` the average on 16 fresh 256x256 crops of the training photos (<= target by "
        "construction).", "",
        "![chosen bits per layer](bits_per_layer.png)", "", "![RD curves](rd_curves.png)", "",
        "## How to read it", "",
        "* Equal average bits: the ILP budget is DynaQuant's measured Kodak average (`avg_bits` of the "
        "`dynaquant` row), so both spend the same parameter-weighted mean weight bits; DynaQuant's own target "
        "holds on the training distribution, its Kodak average can differ slightly.",
        "* DynaQuant keeps g_a.0, g_s.0 and h_a at 8 bits (the paper's choice), so its smallest average with "
        "candidates {4,6,8} is about 5.32 bits; the ILP may place any layer at 4 bits.",
        "* DynaQuant stores the 8-bit integers (lower precisions are derived by a rounding right shift), so its "
        "storage is that of an 8-bit model: the dynamic bits lower the compute precision (bit-operations), "
        "not the file. The ILP plan's average bits is also its storage.",
        "* DynaQuant quantizes activations (8-bit, content-aware) as well, the static plans do not: the "
        "comparison handicaps DynaQuant by its activation quantization.",
        "* `ilp_qat` is fine-tuned for the same number of steps as DynaQuant trains (bitalloc.qat.finetune, DGM "
        "estimator, learnable scales); `ilp_ptq` is calibration only.",
        "* `dynaquant_ste` is the same training with the straight-through estimator instead of the DGM "
        "(beta = 2) for weights and activations: the gradient-modulator ablation.",
        "* `dynaquant_wonly` (with `--weights-only`): DynaQuant with float activations, as the static plans, "
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
    p.add_argument("--no-qat", action="store_true", help="skip the QAT of the ILP plan")
    p.add_argument("--weights-only", action="store_true",
                   help="also train DynaQuant with float activations (separates the activation quantization)")
    p.add_argument("--progress", action="store_true")
    p.add_argument("--out", default=str(RESULTS))
    p.add_argument("--work", default=str(Path(__file__).resolve().parents[1] / "runs" / "dynaquant_study"))
    args = p.parse_args(argv)
    argv = list(sys.argv[1:] if argv is None else argv)
    torch.set_num_threads(args.threads)

    from bitalloc.data import ImageFolder, data_root, resolve_images
    from bitalloc.models import available_checkpoints
    from bitalloc.sensitivity import calibration_batch

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
    write_markdown(out, args, results, bd, time.perf_counter() - t0, argv)
    print(bd.to_string(index=False))
    return results


if __name__ == "__main__":
    main()
