"""How much can any allocator gain at a budget? Search the plans by their measured joint loss and entropy-code Kodak.

    BITALLOC_DATA=../shared/data python studies/plan_headroom.py                        # Scale Hyperprior, 4 bits
    BITALLOC_DATA=../shared/data python studies/plan_headroom.py --model mbt2018-mean --evals 300

Every allocator optimises a prediction; this study asks what the *measured* objective allows. For each quality it
measures the cost table as the harness does (noise fit, 8 calibration crops of 256 px, mse calibration), then
finds plans for one budget four ways, each scored by the joint loss increase of the whole plan on the calibration
crops (:class:`bitalloc.sensitivity.JointLoss`, what ``check_plan`` and ``+verify`` measure):

- ``ilp``: the additive ILP (ties within noise broken toward the bigger plan, as in the studies);
- ``ilp+verify``: :func:`bitalloc.verify_and_repair` with the harness's settings (12 plans measured);
- ``in-context``: :func:`bitalloc.verify_and_repair` with ``correction="context"``: every single-layer move away
  from the best plan measured, the ILP re-solved on those in-context costs (exact for one move, additive for
  several), repeated from each plan that measures lower, then the local search; ``--context-evals`` plans;
- ``search``: a simulated-annealing walk over budget-feasible plans from the ILP's (one layer a step up, others
  down until it fits, sometimes one more down), ``--evals`` plans measured, the lowest one kept.

The lowest measured plan of all the searches bounds what a better *objective* could buy with this quantizer at this
budget: if it measures only a few percent under the ILP's plan, no allocator can move the BD-rate much. Each
method's plan is entropy-coded on Kodak and its BD-rate against FP32 computed over the qualities (PCHIP,
PSNR-RGB). Writes ``plan_headroom_<model>_b<budget>.{csv,md,png}`` (per quality and method; BD-rates; the
measured joint loss of every plan visited, beside the methods' plans) to ``--out``.
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
from tqdm.auto import tqdm

from bitalloc import BitPlan, Budget, apply_plan, bd_rate, evaluate, measure_sensitivity, resolve_images
from bitalloc.atomic import atomic_savefig, atomic_write_text
from bitalloc.harness import StudySpec
from bitalloc.models import load_model
from bitalloc.repair import verify_and_repair
from bitalloc.sensitivity import JointLoss
from bitalloc.study_steps import TABLE_FITS, calibration_crops, fit_allocator

RESULTS = Path(__file__).resolve().parent / "results"
METHODS = ("ilp", "ilp+verify", "in-context", "search")


class Measured:
    """The measured joint loss increase of plans (choices), each measured once."""

    def __init__(self, joint: JointLoss, table):
        self.joint, self.table, self.values = joint, table, {}

    def __call__(self, choice) -> float:
        key = tuple(int(c) for c in choice)
        if key not in self.values:
            self.values[key] = self.joint.increase(BitPlan.from_choices(self.table, key))
        return self.values[key]


def search(measured: Measured, table, budget: Budget, start: np.ndarray, evals: int, seed: int,
           temperature: float, desc: str) -> dict:
    """Simulated annealing over budget-feasible plans from ``start`` (module docstring), ``evals`` plans measured
    (on top of those measured before); the lowest measured."""
    rng = np.random.default_rng(seed)
    n, top = len(start), len(table.bits) - 1
    cur, cur_loss = start.copy(), measured(start)
    best, best_loss = cur.copy(), cur_loss
    target = len(measured.values) + evals
    bar = tqdm(total=evals, desc=desc, leave=False)
    stalls = 0
    while len(measured.values) < target and stalls < 10_000:
        cand = cur.copy()
        up = int(rng.integers(n))
        cand[up] = min(top, cand[up] + 1)
        for _ in range(50):
            if budget.fits(table.plan_size(cand)):
                break
            down = int(rng.integers(n))
            if down != up and cand[down] > 0:
                cand[down] -= 1
        if rng.random() < 0.3:
            down = int(rng.integers(n))
            cand[down] = max(0, cand[down] - 1)
        key = tuple(int(c) for c in cand)
        if budget.exceeded(table, cand) is not None or key == tuple(cur):
            stalls += 1
            continue
        fresh = key not in measured.values
        loss = measured(cand)
        bar.update(int(fresh))
        stalls = 0 if fresh else stalls + 1
        t = temperature * (1 - (len(measured.values) - target + evals) / evals) + 1e-6
        if loss < cur_loss or rng.random() < np.exp(-(loss - cur_loss) / t):
            cur, cur_loss = cand, loss
            if loss < best_loss:
                best, best_loss = cand.copy(), loss
    bar.close()
    return {"choice": best, "measured": best_loss}


def headroom(model_name: str, quality: int, budget_bits: float, args, images: dict) -> tuple[list, pd.DataFrame]:
    """One quality: the four methods' plans (measured, predicted, Kodak) and every plan measured."""
    spec = StudySpec(model=model_name, table_fit="noise")
    model = load_model(model_name, quality, pretrained=spec.pretrained).float().eval()
    calib = calibration_crops(None, spec.calib_images, spec.calib_crop, data=args.data)
    t0 = time.perf_counter()
    table = measure_sensitivity(model, calib, bits=spec.candidate_bits, calibration=spec.calibration,
                                progress=False, **TABLE_FITS["noise"])
    table_s = time.perf_counter() - t0
    budget = Budget.from_avg_bits(table, budget_bits)
    measured = Measured(JointLoss(model, calib, calibration=spec.calibration), table)
    ilp = fit_allocator("ilp", spec)
    start = ilp.allocate(table, budget).plan.choices(table)
    found = {"ilp": {"choice": start, "measured": measured(start)}}
    repairs = {}
    for method, options in (("ilp+verify", {"max_evals": spec.verify_max_evals}),
                            ("in-context", {"max_evals": args.context_evals, "correction": "context"})):
        rep = repairs[method] = verify_and_repair(model, calib, table, budget, ilp, calibration=spec.calibration,
                                                  tolerance=spec.verify_tolerance, **options)
        found[method] = {"choice": rep.plan.choices(table), "measured": rep.measured, "evals": rep.evaluations,
                         "time_s": rep.time_s, "learned_predicted": rep.learned_predicted}
    t0 = time.perf_counter()
    found["search"] = {**search(measured, table, budget, start, args.evals, args.seed, args.temperature,
                                f"{model_name} q{quality} search"),
                       "evals": len(measured.values) - 1, "time_s": time.perf_counter() - t0}
    plans = [*measured.values.items(), *((tuple(BitPlan(r.plan).choices(table)), r.measured)
                                         for rep in repairs.values() for r in rep.history.itertuples())]
    visited = pd.DataFrame({"quality": quality, "measured": [m for _, m in plans],
                            "predicted": [table.objective(np.array(k)) for k, _ in plans],
                            "fits": [budget.exceeded(table, np.array(k)) is None for k, _ in plans]})
    rows = []
    fp = evaluate(model, images, progress=False)
    rows.append({"quality": quality, "method": "fp32", "bpp": fp.bpp.mean(), "psnr_rgb": fp.psnr_rgb.mean()})
    for method in METHODS:
        f = found[method]
        plan = BitPlan.from_choices(table, f["choice"])
        kodak = evaluate(apply_plan(model, plan, calibration=spec.calibration).eval(), images, progress=False)
        rows.append({"quality": quality, "method": method, "predicted": table.objective(f["choice"]),
                     "measured": f["measured"], "learned_predicted": f.get("learned_predicted") or np.nan,
                     "evals": f.get("evals", 1), "time_s": f.get("time_s", np.nan),
                     "avg_bits": plan.avg_bits(table), "bpp": kodak.bpp.mean(), "psnr_rgb": kodak.psnr_rgb.mean(),
                     "table_s": table_s, "plan": " ".join(f"{k}:{v}" for k, v in plan.bits.items())})
    return rows, visited


def bd_table(rows: pd.DataFrame) -> pd.DataFrame:
    """BD-rate against FP32 of each method's curve over the qualities, and its change against the ILP's."""
    fp = rows[rows.method == "fp32"].sort_values("quality")
    out = []
    for method in METHODS:
        cur = rows[rows.method == method].sort_values("quality")
        try:
            bd, why = bd_rate(fp.bpp, fp.psnr_rgb, cur.bpp, cur.psnr_rgb), ""
        except ValueError as e:
            bd, why = np.nan, str(e).split(";")[0]
        out.append({"method": method, "bd_rate_vs_fp32_pct": bd, "note": why,
                    "measured_mean": cur.measured.mean(), "predicted_mean": cur.predicted.mean(),
                    "evals_mean": cur.evals.mean()})
    out = pd.DataFrame(out)
    ilp = out.set_index("method").bd_rate_vs_fp32_pct["ilp"]
    out["bd_change_vs_ilp_pct"] = 100 * (out.bd_rate_vs_fp32_pct / ilp - 1)
    return out


def _plot(rows: pd.DataFrame, visited: pd.DataFrame, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    qualities = sorted(rows.quality.unique())
    fig, axes = plt.subplots(1, len(qualities) + 1, figsize=(3.2 * (len(qualities) + 1), 3.4))
    colors = dict(zip(METHODS, ("C3", "C1", "C2", "C0")))
    styles = dict(zip(METHODS, ("-", "--", ":", "-.")))
    for ax, q in zip(axes, qualities):
        v = visited[(visited.quality == q) & visited.fits]
        lo, hi = v.measured.min(), min(v.measured.max(), 4 * v.measured.min())  # the long tail left out
        ax.hist(v.measured.clip(upper=hi), bins=np.linspace(lo, hi, 40), color="0.75",
                label=f"plans measured in budget\n(> {hi:.2f} piled at the right)")
        for r in rows[(rows.quality == q) & (rows.method != "fp32")].itertuples():  # styles: coinciding lines show
            ax.axvline(r.measured, color=colors[r.method], lw=1.6, ls=styles[r.method], label=r.method)
        ax.set_title(f"q{q}: measured joint loss", fontsize=9)
        ax.set_xlabel("loss increase (fraction of float)", fontsize=8)
    axes[0].legend(fontsize=7)
    ax = axes[-1]
    for method, color in (("fp32", "k"), *colors.items()):
        cur = rows[rows.method == method].sort_values("bpp")
        ax.plot(cur.bpp, cur.psnr_rgb, marker="o", ls=styles.get(method, "--"), color=color, ms=3, label=method)
    ax.set_xlabel("bpp (Kodak)", fontsize=8)
    ax.set_ylabel("PSNR-RGB [dB]", fontsize=8)
    ax.set_title("Kodak RD curves", fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    atomic_savefig(fig, path)
    plt.close(fig)


def main(argv=None) -> pd.DataFrame:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="bmshj2018-hyperprior")
    p.add_argument("--budget", type=float, default=4.0, help="average weight bits")
    p.add_argument("--qualities", type=int, nargs="+", default=[1, 3, 4, 6])
    p.add_argument("--evals", type=int, default=300, help="plans the annealing search measures per quality")
    p.add_argument("--context-evals", type=int, default=250,
                   help="plans the in-context repair measures per quality (probes included; 71 a round for 14 layers)")
    p.add_argument("--temperature", type=float, default=0.02, help="annealing start temperature (loss units)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, default=None, help="first N Kodak images only")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--data", default=None)
    p.add_argument("--out", default=str(RESULTS))
    p.add_argument("--from-csv", action="store_true",
                   help="redraw the report and figure from the CSVs a run wrote to --out (nothing measured)")
    args = p.parse_args(argv)
    if args.evals < 1:
        p.error(f"--evals must be >= 1, got {args.evals}")
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    stem = f"plan_headroom_{args.model}_b{args.budget:g}"
    if args.from_csv:
        files = [out / f"{stem}{tail}.csv" for tail in ("", "_visited")]
        if not all(f.is_file() for f in files):
            p.error(f"--from-csv: {next(f for f in files if not f.is_file())} not found; run the study first")
        rows, visited = (pd.read_csv(f) for f in files)
    else:
        images = resolve_images(None, subset="kodak", root=args.data, limit=args.limit)
        rows, visited = [], []
        for q in tqdm(args.qualities, desc=f"{args.model} qualities"):
            r, v = headroom(args.model, q, args.budget, args, images)
            rows += r
            visited.append(v)
        rows, visited = pd.DataFrame(rows), pd.concat(visited, ignore_index=True)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / f"{stem}.csv", rows.to_csv(index=False))
        atomic_write_text(out / f"{stem}_visited.csv", visited.to_csv(index=False))
    bd = bd_table(rows)
    command = "BITALLOC_DATA=../shared/data python studies/plan_headroom.py " + shlex.join(
        sys.argv[1:] if argv is None else argv)
    machine = f"{platform.machine()} CPU, {os.cpu_count()} cores, torch {torch.__version__}, {args.threads} threads"
    feasible = visited[visited.fits]  # the in-context moves include plans over the budget
    low = feasible.groupby("quality").measured.min()
    per_q = rows[rows.method != "fp32"].drop(columns=["plan"])
    md = [f"# Headroom of the measured objective: {args.model}, {args.budget:g}-bit budget, PTQ", "",
          f"- command: `{command.strip()}`" + (" (redrawn from the CSVs; measured by the same command without "
                                                 "--from-csv)" if args.from_csv else ""), f"- machine: {machine}",
          f"- Kodak: {'all 24 images' if args.limit is None else f'the first {args.limit} images'}; calibration: "
          f"{StudySpec.calib_images} training photos, "
          f"{StudySpec.calib_crop}^2 centre crops, {StudySpec.calibration}; search: {args.evals} plans per quality, "
          f"seed {args.seed}", "",
          "BD-rate against FP32 over the qualities (PCHIP, PSNR-RGB) per method; `measured_mean` / "
          "`predicted_mean`: the plans' joint loss increase on the calibration crops and the additive table's "
          "prediction (fractions of the float loss, mean over qualities).", "",
          bd.to_markdown(index=False, floatfmt=".4g"), "",
          "Per quality (`predicted`: the additive table's prediction; `learned_predicted`: the repair's learned "
          "prediction of the plan it returned, made before that plan was measured (none when the start was kept); "
          "`evals`: plans measured by the method, probes included):", "",
          per_q.to_markdown(index=False, floatfmt=".4g"), "",
          "Lowest measured joint loss of all plans visited within the budget, against the ILP's plan:", "",
          pd.DataFrame({"quality": low.index, "lowest_measured": low.values,
                        "ilp_measured": rows[rows.method == "ilp"].set_index("quality").measured.reindex(
                            low.index).values,
                        "plans_measured": visited.groupby("quality").size().values,
                        "within_budget": feasible.groupby("quality").size().values}).assign(
              lowest_vs_ilp_pct=lambda d: 100 * (d.lowest_measured / d.ilp_measured - 1)).to_markdown(
              index=False, floatfmt=".4g"), "",
          f"![measured joint loss of every plan visited, and Kodak RD curves]({stem}.png)", ""]
    atomic_write_text(out / f"{stem}.md", "\n".join(md))
    _plot(rows, visited, out / f"{stem}.png", f"{args.model}, {args.budget:g}-bit budget, PTQ: plans by measured "
          "joint loss")
    print("\n".join(md))
    return bd


if __name__ == "__main__":
    main()
