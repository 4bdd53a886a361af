"""Learning curves of the long training runs: validation RD loss and Kodak rate against JPEG, by step.

Each run of ``studies/train_zoo.py --schedule plateau`` writes ``history.csv`` into its work folder: training
EMAs every 50 steps, the RD loss on the held-out validation split of ``train/`` (``val_*``, which steers the
learning rate) and, for the curve only, Kodak forwarded with rounded latents (``monitor_*``: estimated bpp from
the likelihoods, PSNR). ``--collect`` copies those files into ``studies/results/training/`` (so the committed
figure can be redrawn anywhere); the figure and a markdown table are drawn from the copies:

    python studies/learning_curves.py --collect /work/runs/zoo \
        --start-from bmshj2018-hyperprior-q4=models/checkpoints/bmshj2018-hyperprior-compact-q4.pt \
        --start-from mbt2018-mean-q4=models/checkpoints/mbt2018-mean-compact-q4.pt
    python studies/learning_curves.py

``--start-from RUN=CHECKPOINT`` measures the checkpoint a run started from on the same validation crops and
Kodak monitor crops and records it as step 0 of that run, for runs started before ``train`` validated its
starting weights itself.

The Kodak column is the single-point rate difference against JPEG at equal PSNR: ``bpp / bpp_JPEG(PSNR) - 1``,
with JPEG's published Kodak curve (``bitalloc.reference_curve("jpeg")``) interpolated by PCHIP in log-rate. It
is the one-quality analogue of a BD-rate (the BD-rate of the whole ladder is in the zoo table).

Runs of another size than the registry's (``train_zoo.py --channels 96 192``) are collected under their own name with
``--tag``: ``--collect /work/runs/n96p --tag n96`` gives ``bmshj2018-hyperprior-n96-q6``.

What a top quality must reach (``--ladder MODEL``): the rate against JPEG at equal PSNR that points at
``--upper-rates`` (default 0.47, 0.64, 0.87 bpp) need, each alike, for the ladder of the shipped lower points
(``--keep-qualities``, from the zoo table) plus them to reach ``--ladder-target`` BD-rate against JPEG (the issue's
-40 % over about 0.1-0.9 bpp), found by bisection (:func:`required_vs_jpeg`). Every run with Kodak monitor points
then gets the step at which the power-law trend of its monitor's rate ratio ``bpp / bpp_JPEG`` reaches it.

How many more steps: a run whose best validation loss is above that of another run of the same quality (same
lambda, same validation crops) gets that loss as its target, and the step where the power-law trend of its last 8
validation points (``loss = a + b * step**-c``, :func:`trend`) reaches it. A trend, not a promise: the plateau
schedule's next halving of the learning rate usually brings the curve down faster than the fit says.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from bitalloc.atomic import atomic_write_text
from bitalloc.reference import reference_curve

RESULTS = Path(__file__).resolve().parent / "results" / "training"


def rate_vs_jpeg(bpp, psnr) -> np.ndarray:
    """Percent rate difference of (bpp, psnr) points against JPEG's Kodak curve at equal PSNR."""
    from scipy.interpolate import PchipInterpolator

    jpeg = reference_curve("jpeg").sort_values("psnr_rgb")
    log_rate = PchipInterpolator(jpeg.psnr_rgb.to_numpy(), np.log(jpeg.bpp.to_numpy()), extrapolate=False)
    return (np.asarray(bpp, float) / np.exp(log_rate(np.asarray(psnr, float))) - 1.0) * 100.0


def required_vs_jpeg(lower: pd.DataFrame, upper_rates, target_bd: float = -40.0) -> float:
    """The rate difference against JPEG at equal PSNR (percent, the same for each) that points at ``upper_rates``
    (bpp) need so that ``lower`` (columns bpp, psnr_rgb) plus them reach ``target_bd`` BD-rate against JPEG.

    Raises ValueError naming the target when no difference in [-90 %, +50 %] reaches it."""
    from scipy.interpolate import PchipInterpolator

    from bitalloc.bdrate import bd_rate

    jpeg = reference_curve("jpeg").sort_values("bpp")
    psnr_at = PchipInterpolator(np.log(jpeg.bpp.to_numpy()), jpeg.psnr_rgb.to_numpy(), extrapolate=True)
    rates = np.asarray(sorted(upper_rates), float)

    def ladder_bd(pct: float) -> float:  # an upper point with rate (1 + pct) x JPEG's codes JPEG's PSNR there
        psnr = psnr_at(np.log(rates / (1 + pct / 100.0)))
        bpp = np.concatenate([lower.bpp.to_numpy(), rates])
        try:
            return bd_rate(jpeg.bpp, jpeg.psnr_rgb, bpp, np.concatenate([lower.psnr_rgb.to_numpy(), psnr]))
        except ValueError:  # upper points under the lower ones: no curve, as bad as it gets
            return np.inf

    lo, hi = -90.0, 50.0
    if not ladder_bd(lo) <= target_bd <= ladder_bd(hi):
        raise ValueError(f"--ladder-target {target_bd} % is out of reach with upper points between -90 % and "
                         f"+50 % against JPEG (BD-rate {ladder_bd(lo):.1f} to {ladder_bd(hi):.1f} %)")
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if ladder_bd(mid) >= target_bd else (mid, hi)
    return (lo + hi) / 2


def collect(runs: Path, results: Path = RESULTS, tag: str | None = None) -> list[Path]:
    """Copy ``<runs>/<family>/q<N>/history.csv`` to ``studies/results/training/<family>[-<tag>]-q<N>.csv``, keeping
    the step-0 rows an earlier ``--start-from`` measured into the copy when the run's own history has none."""

    out = []
    for hist in sorted(runs.glob("*/q*/history.csv")):
        family = hist.parent.parent.name + (f"-{tag}" if tag else "")
        target = results / f"{family}-{hist.parent.name}.csv"
        new = pd.read_csv(hist)
        if target.is_file() and not (new.step == 0).any():
            old = pd.read_csv(target)
            new = pd.concat([old[old.step == 0], new], ignore_index=True)
        atomic_write_text(target, new.to_csv(index=False))
        out.append(target)
    if not out:
        raise SystemExit(f"no <family>/q<N>/history.csv under {runs}")
    return out


def add_start(csv: Path, checkpoint: Path, crop: int = 256) -> None:
    """Insert step 0 (``checkpoint`` on the validation crops) into a collected learning curve lacking it."""
    import torch

    from bitalloc.atomic import atomic_write_text
    from bitalloc.data import data_root
    from bitalloc.models import RateDistortionLoss, load_checkpoint
    from bitalloc.models.run_state import validate, validation_crops

    df = pd.read_csv(csv)
    if "val_loss" in df and (df.step == 0).any():
        return
    torch.set_num_threads(1)
    model = load_checkpoint(checkpoint)
    crops = validation_crops(data_root() / "train", crop)
    from bitalloc.data import resolve_images

    criterion = RateDistortionLoss(model.meta["lambda"])
    rows = [{"step": 0, **validate(model, crops, criterion), "lr": 0.0}]
    kodak = [x[..., : x.shape[-2] // 64 * 64, : x.shape[-1] // 64 * 64]  # as train()'s Kodak monitor crops
             for x in resolve_images(data_root() / "kodak").values()]
    monitor = validate(model, kodak, criterion)
    rows.append({"step": 0, **{k.replace("val_", "monitor_"): v for k, v in monitor.items()}})
    atomic_write_text(csv, pd.concat([pd.DataFrame(rows), df]).to_csv(index=False))


def load(path: Path, steps_before: int = 0) -> pd.DataFrame:
    df = pd.read_csv(path)
    df["total_step"] = df["step"] + steps_before
    return df


def trend(steps, losses, recent: int = 8) -> tuple[float, float, float] | None:
    """Power-law trend ``loss(step) = a + b * step**-c`` of a run's last ``recent`` validation points: least squares
    of ``log(loss - a)`` on ``log(step)`` for each asymptote ``a`` on a grid below the lowest loss, the best fit
    kept. Returns ``(a, b, c)``, or None with fewer than 4 points or a curve that is not falling."""
    s, y = np.asarray(steps, float)[-recent:], np.asarray(losses, float)[-recent:]
    keep = s > 0
    s, y = s[keep], y[keep]
    if len(s) < 4 or np.polyfit(np.log(s), y, 1)[0] >= 0:
        return None
    best = None
    X = np.vstack([np.ones_like(s), np.log(s)]).T
    for a in np.linspace(0.0, y.min(), 400, endpoint=False):
        coef, *_ = np.linalg.lstsq(X, np.log(y - a), rcond=None)
        err = float(np.sum((a + np.exp(X @ coef) - y) ** 2))
        if coef[1] < 0 and (best is None or err < best[0]):
            best = (err, a, float(np.exp(coef[0])), float(-coef[1]))
    return None if best is None else best[1:]


def steps_to_reach(fit: tuple[float, float, float] | None, target: float) -> float:
    """The step at which a :func:`trend` fit reaches ``target`` (inf when its asymptote is at or above it)."""
    if fit is None:
        return float("nan")
    a, b, c = fit
    return float("inf") if target <= a else float((b / (target - a)) ** (1.0 / c))


def targets_of(rows: list[dict]) -> dict[str, tuple[str, float]]:
    """Per run, the run of the same quality (name suffix ``-qN``) with the lowest best validation loss, when it is
    lower than this run's: what this run has to reach (same lambda, same validation crops)."""
    out = {}
    for row in rows:
        quality = row["run"].rsplit("-", 1)[-1]
        peers = [r for r in rows if r is not row and r["run"].rsplit("-", 1)[-1] == quality
                 and r.get("best_val_loss", np.inf) < row.get("best_val_loss", -np.inf)]
        if peers:
            best = min(peers, key=lambda r: r["best_val_loss"])
            out[row["run"]] = (best["run"], best["best_val_loss"])
    return out


def summary(name: str, df: pd.DataFrame) -> dict:
    val = df.dropna(subset=["val_loss"]) if "val_loss" in df else df.iloc[:0]
    mon = df.dropna(subset=["monitor_bpp"]) if "monitor_bpp" in df else df.iloc[:0]
    row = {"run": name, "steps": int(df.step.max())}
    if len(val):
        best = val.loc[val.val_loss.idxmin()]
        row.update(first_val_loss=float(val.val_loss.iloc[0]), best_val_loss=float(best.val_loss),
                   best_step=int(best.step), lr_now=float(val.lr.iloc[-1]))
    if len(mon):
        vs = rate_vs_jpeg(mon.monitor_bpp, mon.monitor_psnr)
        row.update(kodak_bpp=float(mon.monitor_bpp.iloc[-1]), kodak_psnr=float(mon.monitor_psnr.iloc[-1]),
                   first_vs_jpeg_pct=float(vs[0]), last_vs_jpeg_pct=float(vs[-1]))
    return row


def figure(runs: dict[str, pd.DataFrame], path: Path, need: float | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for i, (name, df) in enumerate(runs.items()):
        color = f"C{i}"  # one colour per run in both panels
        if "val_loss" in df:
            val = df.dropna(subset=["val_loss"])
            ax1.plot(val.step, val.val_loss, marker=".", label=name, color=color)
        if "monitor_bpp" in df:
            mon = df.dropna(subset=["monitor_bpp"])
            ax2.plot(mon.step, rate_vs_jpeg(mon.monitor_bpp, mon.monitor_psnr), marker="o", label=name, color=color)
    ax1.set(xlabel="step of this run", ylabel="validation RD loss (bpp + lambda 255^2 MSE)",
            title="Held-out validation split of train/ (lower is better)")
    ax2.set(xlabel="step of this run", ylabel="rate vs JPEG at equal PSNR (%)",
            title="Kodak, one quality, estimated bpp (lower is better)")
    if need is not None:
        ax2.axhline(need, color="k", ls="--", lw=1, label=f"the ladder's upper points need {need:+.1f} %")
    ax1.set_yscale("log")
    if not any(line.get_marker() == "o" for line in ax2.lines):
        ax2.text(0.5, 0.5, "no Kodak monitor point yet\n(every 5000 steps)", ha="center", va="center",
                 transform=ax2.transAxes)
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3, which="both")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def reach_text(at: float, last: int) -> str:
    """Where a trend reaches its target, in words; beyond 100x the steps so far counts as a flat trend."""
    if np.isnan(at):
        return "nowhere (fewer than 4 points or not falling)"
    if np.isinf(at):
        return "never (asymptote above it)"
    if at > 100 * max(last, 1):
        return f"only beyond 100x its {last:,} steps (a nearly flat trend)"
    return f"near step {at:,.0f}"


def ladder_notes(args, runs: dict[str, pd.DataFrame], rows: list[dict]) -> tuple[float, list[str]]:
    """The ``--ladder`` requirement (percent against JPEG) and its notes: per run with monitor points, the step its
    trend meets it (rows updated)."""
    zoo = pd.read_csv(args.zoo)
    lower = zoo[(zoo.model == args.ladder) & zoo.quality.isin(args.keep_qualities)]
    missing = sorted(set(args.keep_qualities) - set(lower.quality))
    if missing:
        raise SystemExit(f"--keep-qualities {missing} of {args.ladder} are not in {args.zoo}")
    need = required_vs_jpeg(lower, args.upper_rates, args.ladder_target)
    notes = [f"- Ladder requirement: {args.ladder} q{', q'.join(map(str, sorted(args.keep_qualities)))} (shipped, "
             f"{args.zoo.name}) plus points at {', '.join(f'{r:g}' for r in sorted(args.upper_rates))} bpp reach "
             f"{args.ladder_target:g} % BD-rate against JPEG when each upper point spends {need:+.1f} % of JPEG's "
             f"rate at equal PSNR (column ladder_need_pct)."]
    for row in rows:
        df = runs[row["run"]]
        if "monitor_bpp" not in df or not row["run"].startswith(args.ladder):
            continue
        mon = df.dropna(subset=["monitor_bpp"])
        ratio = 1 + rate_vs_jpeg(mon.monitor_bpp, mon.monitor_psnr) / 100
        at = steps_to_reach(trend(mon.step, ratio), 1 + need / 100)
        row.update(ladder_need_pct=need, monitor_steps_to_need=at)
        notes.append(f"- {row['run']}: Kodak monitor {row.get('last_vs_jpeg_pct', float('nan')):+.1f} % against "
                     f"JPEG at step {int(mon.step.iloc[-1]):,}; the power-law trend of its last 8 monitor points "
                     f"reaches {need:+.1f} % " + reach_text(at, int(mon.step.iloc[-1])) + ".")
    return need, notes


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--collect", type=Path, default=None, help="copy history.csv files from this runs folder first")
    p.add_argument("--results", type=Path, default=RESULTS)
    p.add_argument("--start-from", action="append", default=[], metavar="RUN=CHECKPOINT",
                   help="measure the checkpoint RUN started from as its step 0 (needs BITALLOC_DATA)")
    p.add_argument("--tag", default=None, help="name the collected runs <family>-<tag>-q<N> (another size)")
    p.add_argument("--ladder", default=None, metavar="MODEL",
                   help="what the upper points of MODEL's ladder need against JPEG (see the docstring)")
    p.add_argument("--zoo", type=Path, default=RESULTS.parent / "zoo_kodak.csv",
                   help="zoo table with the shipped lower points")
    p.add_argument("--keep-qualities", type=int, nargs="+", default=[0, 1, 3])
    p.add_argument("--upper-rates", type=float, nargs="+", default=[0.47, 0.64, 0.87])
    p.add_argument("--ladder-target", type=float, default=-40.0)
    args = p.parse_args(argv)
    if args.collect is not None:
        for path in collect(args.collect, args.results, args.tag):
            print("collected", path)
    for item in args.start_from:
        run, _, ckpt = item.partition("=")
        add_start(args.results / f"{run}.csv", Path(ckpt))
    files = sorted(args.results.glob("*.csv"))
    if not files:
        raise SystemExit(f"no learning-curve CSVs in {args.results}")
    runs = {f.stem: load(f) for f in files}
    rows = [summary(name, df) for name, df in runs.items()]
    notes = []
    for run, (peer, loss) in targets_of(rows).items():
        val = runs[run].dropna(subset=["val_loss"])
        fit = trend(val.step, val.val_loss)
        at = steps_to_reach(fit, loss)
        row = next(r for r in rows if r["run"] == run)
        row.update(target=f"{peer} {loss:.3f}", trend_steps_to_target=at)
        notes.append(f"- {run}: the power-law trend of its last 8 validation points (asymptote "
                     + ("n/a" if fit is None else f"{fit[0]:.3f}") + f") reaches {peer}'s best {loss:.3f} "
                     + ("nowhere (the curve is not falling)" if np.isnan(at) else
                        "never (asymptote above it)" if np.isinf(at) else
                        f"near step {at:,.0f}, {max(at - row['steps'], 0):,.0f} steps after the last one") + ".")
    need = None
    if args.ladder is not None:
        need, ladder = ladder_notes(args, runs, rows)
        notes += ladder
    table = pd.DataFrame(rows)
    md = table.to_markdown(index=False, floatfmt=".4g") + ("\n\n" + "\n".join(notes) if notes else "")
    atomic_write_text(args.results / "learning_curves.md",
        "# Learning curves of the long runs\n\n`python studies/learning_curves.py` (from the CSVs here).\n\n"
        + md + "\n")
    figure(runs, args.results / "learning_curves.png", need)
    print(md)


if __name__ == "__main__":
    main()
