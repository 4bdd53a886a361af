"""The allocator study: fmpq, ilp, convex, greedy and uniform on the compact Scale Hyperprior and Mean-Scale
Hyperprior, budgets equal to uniform 8, 6 and 4 bits (weights), calibration only (PTQ) and with QAT;
DynaQuant (a dynamic, per-image bit-width model trained for the same steps) joins the QAT rows at 6 bits.

    BITALLOC_DATA=../shared/data python studies/compare_allocators.py            # both families, PTQ + QAT
    BITALLOC_DATA=../shared/data python studies/compare_allocators.py --model mbt2018-mean --modes ptq
    BITALLOC_DATA=../shared/data python studies/compare_allocators.py --table-fit noise   # noise-aware tables
    ... --allocators ilp ilp+qat --recovery-steps 50 --recovery-crop 128     # + QAT-aware allocation (QAT rows)
    ... --allocators ilp+verify+qat ...    # QAT-aware, each plan verified and repaired by its loss after the QAT

Results: studies/results/compare_<model>/ (``compare_<model>_noise/`` with ``--table-fit noise``: report.md, CSV,
figures; the cache under runs/ makes reruns and interrupted runs resume). ``--report-only`` rebuilds report.md,
the CSVs and the figures from the committed results.csv and images.csv without evaluating a cell: the plans (for
plans.csv and the heat maps) are re-allocated as the study allocated them (``iqp`` with pairwise terms, ``+verify``
measuring its plans) from the cost tables, measured again on the same calibration crops (cached under --cache),
and each must have the size and objective the study recorded for its cell, else it stops
naming the cell.
Sensitivity is measured on centre crops of training photos, never on Kodak;
evaluation entropy-codes all 24 Kodak images. QAT uses the same steps, learning rate and data for every plan.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from bitalloc import StudySpec, run_study, write_report
from bitalloc.analysis import StudyResult, bd_table, merge_results, rank
from bitalloc.harness import qat_only
from bitalloc.models import load_model
from bitalloc.repair import CORRECTIONS
from bitalloc.report import layer_frame

RESULTS = Path(__file__).parent / "results"
REBUILT = "report rebuilt by"
ALLOCATORS = ("fmpq", "ilp", "convex", "greedy", "uniform", "iqp", "ilp+verify", "iqp+verify")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", nargs="+", default=["bmshj2018-hyperprior", "mbt2018-mean"])
    p.add_argument("--modes", nargs="+", default=["ptq", "qat"])
    p.add_argument("--allocators", nargs="+", default=list(ALLOCATORS),
                   help="static allocators compared (the interaction-aware ones measure pairwise terms / joint losses)")
    p.add_argument("--out", default=None,
                   help="results folder, '{model}' replaced by the model (default: studies/results/compare_<model>)")
    p.add_argument("--ptq-budgets", type=float, nargs="+", default=[8.0, 6.0, 4.0],
                   help="average weight bits of the PTQ budgets")
    p.add_argument("--qat-budgets", type=float, nargs="+", default=[8.0, 6.0, 4.0],
                   help="budgets that also get QAT (default: all three)")
    p.add_argument("--dynaquant-budgets", type=float, nargs="*", default=[6.0],
                   help="average bits at which DynaQuant (trained for --qat-steps) joins the QAT comparison; "
                        "its smallest achievable average is about 5.3 bits (pass none to skip)")
    p.add_argument("--qualities", type=int, nargs="+", default=list(StudySpec.qualities))
    p.add_argument("--qat-steps", type=int, default=StudySpec.qat_steps)
    p.add_argument("--seed", type=int, default=StudySpec.seed,
                   help="seed of the QAT batches (and DynaQuant's); rerun with others to measure QAT's own spread")
    p.add_argument("--limit", type=int, default=None, help="first N Kodak images only")
    p.add_argument("--act-bits", type=int, default=None,
                   help="input-activation bits of every static plan's quantized layers (default: weights only)")
    p.add_argument("--calib-offset", type=int, default=0,
                   help="calibration crops from this training photo on (8: disjoint from the default 8)")
    p.add_argument("--table-fit", choices=["clip", "noise"], default="clip",
                   help="cost tables: clip (max(zeta, 0)) or noise (standard errors, monotone fit, ties within "
                        "noise broken toward the bigger plan; bitalloc.study_steps)")
    p.add_argument("--recovery-steps", type=int, default=None,
                   help="QAT steps of each cell of the QAT-aware tables the '+qat' allocators (QAT mode only) "
                        "allocate on (default: --qat-steps)")
    p.add_argument("--recovery-crop", type=int, default=None,
                   help="training crop size of those QAT runs (default: the study's QAT crops, 256)")
    p.add_argument("--verify-tolerance", type=float, default=StudySpec.verify_tolerance,
                   help="'+verify': the excess of a plan's measured joint loss over its (learned) prediction, as a "
                        "fraction of the float loss, that triggers a repair")
    p.add_argument("--verify-max-evals", type=int, default=StudySpec.verify_max_evals,
                   help="'+verify': plans measured at most per cell")
    p.add_argument("--verify-noise-z", type=float, default=StudySpec.verify_noise_z,
                   help="'+verify': a plan replaces the best one only when it measures lower by more than this many "
                        "standard errors of the per-crop difference (0: plain means)")
    p.add_argument("--verify-holdout", type=int, default=StudySpec.verify_holdout,
                   help="'+verify': centre crops of this many further training photos (after the calibration set) "
                        "confirm each PTQ repair: the allocator's own plan is kept unless the repair also measures "
                        "lower there (0: none)")
    p.add_argument("--verify-correction", default=StudySpec.verify_correction, choices=CORRECTIONS,
                   help="'+verify': what a repair learns from a measurement ('context': every single-layer move of "
                        "the plan measured and re-solved on; needs --verify-max-evals of a round plus two)")
    p.add_argument("--verify-snap-ties", action="store_true",
                   help="'+verify' with --verify-correction context: in-context costs within the table's noise floor "
                        "count as ties (the bigger plan wins them)")
    p.add_argument("--bias-correction", action="store_true",
                   help="every quantized layer's bias absorbs the mean output error of its weight quantization on "
                        "the calibration crops, in tables, checks, repairs and the models evaluated (PTQ only)")
    p.add_argument("--bias-choice", action="store_true",
                   help="with --bias-correction: the models evaluated keep only the transforms' corrections "
                        "bitalloc.choose_bias_correction chooses (lowest coded RD loss on the calibration crops)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--data", default=None)
    p.add_argument("--cache", default="runs/compare_allocators")
    p.add_argument("--report-only", action="store_true",
                   help="rebuild the report from the committed CSVs (plans re-allocated and checked; no evaluation)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    machine = f"{platform.machine()} CPU, {os.cpu_count()} cores, torch {torch.__version__}"
    command = "python studies/compare_allocators.py " + " ".join(sys.argv[1:] if argv is None else argv)
    if args.report_only:
        for model in args.model:
            print(rebuild_report(model, args, command))
        return
    for model in args.model:
        results = []
        for mode in args.modes:
            budgets = tuple(args.ptq_budgets) if mode == "ptq" else tuple(args.qat_budgets)
            allocators = tuple(a for a in args.allocators if mode == "qat" or not qat_only(a))
            if not allocators:
                continue
            spec = StudySpec(model=model, allocators=allocators, budgets=budgets, modes=(mode,),
                             qat_steps=args.qat_steps, eval_limit=args.limit, qualities=tuple(args.qualities),
                             act_bits=args.act_bits, calib_offset=args.calib_offset, table_fit=args.table_fit,
                             seed=args.seed, recovery_steps=args.recovery_steps, recovery_crop=args.recovery_crop,
                             verify_tolerance=args.verify_tolerance, verify_max_evals=args.verify_max_evals,
                             verify_noise_z=args.verify_noise_z, verify_holdout=args.verify_holdout,
                             verify_correction=args.verify_correction, bias_correction=args.bias_correction,
                             verify_snap_ties=args.verify_snap_ties, bias_choice=args.bias_choice)
            results.append(run_study(spec, Path(args.cache) / model, data=args.data))
        if "qat" in args.modes and args.dynaquant_budgets:
            spec = StudySpec(model=model, allocators=("dynaquant",), budgets=tuple(args.dynaquant_budgets),
                             modes=("qat",), qat_steps=args.qat_steps, eval_limit=args.limit,
                             qualities=tuple(args.qualities), seed=args.seed)
            results.append(run_study(spec, Path(args.cache) / model, data=args.data))
        merged = merge_results(*results)
        models = {q: load_model(model, q, pretrained=StudySpec.pretrained) for q in args.qualities}
        out = results_folder(model, args)
        report = write_report(merged, out, command=command, machine=machine,
                              layers=layer_frame(models))
        print(report.read_text())


def results_folder(model: str, args) -> Path:
    """``--out`` with ``{model}`` replaced, else studies/results/compare_<model> (``_noise`` for noise tables,
    ``_biascorr`` with bias correction, ``_biaschoice`` with the chosen one, ``_ties`` with snapped ties)."""
    if getattr(args, "out", None):
        return Path(args.out.format(model=model))
    return RESULTS / (f"compare_{model}{'' if getattr(args, 'table_fit', 'clip') == 'clip' else '_noise'}"
                      f"{'_biascorr' if getattr(args, 'bias_correction', False) else ''}"
                      f"{'_biaschoice' if getattr(args, 'bias_choice', False) else ''}"
                      f"{'_ties' if getattr(args, 'verify_snap_ties', False) else ''}")


def _recorded_lines(report: Path, field: str) -> list[str]:
    """Every ``<field>: ...`` line of an existing report.md, without the field name (none when absent)."""
    lines = report.read_text().splitlines() if report.is_file() else []
    return [line.split(": ", 1)[1] for line in lines if line.startswith(field + ": ")]


def _recorded(report: Path, field: str) -> str:
    """The ``Command:``/``Machine:`` line of an existing report.md ('' when absent)."""
    found = [line.strip("` ") for line in _recorded_lines(report, field)]
    return found[0] if found else ""


def _recorded_plans(folder: Path, cells: pd.DataFrame) -> dict:
    """The plans of plans.csv for the rows of ``cells`` whose allocator runs in QAT mode only (``+qat``), keyed
    (quality, allocator, budget, mode); stops naming the first one plans.csv lacks."""
    from bitalloc.plan import BitPlan

    wanted = cells[cells.allocator.map(qat_only)]
    if wanted.empty:
        return {}
    path = folder / "plans.csv"
    frame = pd.read_csv(path) if path.is_file() else pd.DataFrame(columns=["quality", "allocator", "budget", "mode"])
    found = {}
    for row in wanted.itertuples():
        rows = frame[(frame.quality == row.quality) & (frame.allocator == row.allocator)
                     & (frame.budget == row.budget) & (frame["mode"] == row.mode)]
        if rows.empty:
            raise SystemExit(f"{path}: no plan of {row.allocator} q{row.quality} {row.mode} at {row.budget:g} bits "
                             "(a +qat plan is read from there, not re-measured): run the study itself")
        found[(row.quality, row.allocator, row.budget, row.mode)] = BitPlan(
            {str(r.layer): int(r.bits) for r in rows.itertuples()})
    return found


def rebuild_report(model: str, args, command: str) -> Path:
    """report.md, CSVs and figures of compare_<model> from its results.csv and images.csv (see the docstring)."""
    from bitalloc import study_steps as steps
    from bitalloc.costs import Budget, CostTable
    from bitalloc.repair import split_verify

    folder, fit = results_folder(model, args), getattr(args, "table_fit", "clip")
    # round_trip: the CSVs are written back unchanged, not with their last digits moved
    results = pd.read_csv(folder / "results.csv", float_precision="round_trip")
    images = pd.read_csv(folder / "images.csv", float_precision="round_trip")
    qualities = sorted(int(q) for q in results.quality.unique())
    spec = StudySpec(model=model, qualities=tuple(qualities), modes=tuple(sorted(results["mode"].unique())),
                     qat_steps=args.qat_steps, calib_offset=getattr(args, "calib_offset", 0), table_fit=fit,
                     seed=getattr(args, "seed", StudySpec.seed),
                     verify_tolerance=getattr(args, "verify_tolerance", StudySpec.verify_tolerance),
                     verify_max_evals=getattr(args, "verify_max_evals", StudySpec.verify_max_evals),
                     verify_noise_z=getattr(args, "verify_noise_z", StudySpec.verify_noise_z),
                     verify_holdout=getattr(args, "verify_holdout", StudySpec.verify_holdout),
                     verify_correction=getattr(args, "verify_correction", StudySpec.verify_correction),
                     bias_correction=getattr(args, "bias_correction", False),
                     verify_snap_ties=getattr(args, "verify_snap_ties", False),
                     bias_choice=getattr(args, "bias_choice", False))
    calib = steps.calibration_crops(None, spec.calib_images, spec.calib_crop, args.data, spec.calib_offset)
    models = {q: load_model(model, q, pretrained=spec.pretrained) for q in qualities}
    plans, cells = {}, results[~results.allocator.isin(["fp32", "dynaquant"])]
    recorded_plans = _recorded_plans(folder, cells)
    for q in qualities:
        stem = Path(args.cache) / model / "report_tables" / f"{model}_q{q}{'' if fit == 'clip' else '_' + fit}"
        stem.parent.mkdir(parents=True, exist_ok=True)
        path, pairs_path = stem.with_suffix(".json"), stem.parent / f"{stem.name}_pairs.json"
        table = CostTable.from_json(path) if path.is_file() else steps.measure_cost_table(models[q], calib, spec,
                                                                                          path)
        joint = None  # the table with its pairwise terms, measured once per quality when a cell needs it
        for row in cells[cells.quality == q].itertuples():
            if qat_only(row.allocator):  # its QAT-aware table costs a QAT run per cell: the plan the study wrote
                plan = recorded_plans[(q, row.allocator, row.budget, row.mode)]
                if not np.isclose(plan.size_bits(table), row.size_bits, rtol=1e-9):
                    raise SystemExit(f"{folder}/plans.csv: {model} q{q} {row.allocator} {row.mode} at "
                                     f"{row.budget:g} bits is {plan.size_bits(table):.0f} bits, results.csv records "
                                     f"{row.size_bits:.0f}: run the study itself")
                plans[(q, row.allocator, row.budget, row.mode)] = plan
                continue
            cell_table = table
            if split_verify(row.allocator)[0] in spec.pairwise_allocators:  # as the harness gives them
                if joint is None:
                    joint = (CostTable.from_json(pairs_path) if pairs_path.is_file()
                             else steps.measure_pairwise_table(models[q], calib, table, spec, pairs_path))
                cell_table = joint
            allocator = steps.cell_allocator(row.allocator, models[q], calib, spec)  # +verify measures, as in the study
            plan = allocator.allocate(cell_table, Budget.from_avg_bits(cell_table, row.budget)).plan
            size = plan.size_bits(cell_table) / 1e6
            want = row.size_mbit if "size_mbit" in results else row.size_bits / 1e6
            if not (np.isclose(size, want, rtol=1e-9) and np.isclose(plan.cost(cell_table), row.objective, rtol=1e-6)):
                raise SystemExit(f"{folder}/results.csv: {model} q{q} {row.allocator} {row.mode} at "
                                 f"{row.budget:g} bits records {want:.6f} Mbit and objective {row.objective:.6g}; "
                                 f"re-allocated: {size:.6f} Mbit, objective {plan.cost(cell_table):.6g} (other "
                                 f"weights or calibration than the study's): run the study itself")
            plans[(q, row.allocator, row.budget, row.mode)] = plan
    images_used = list(dict.fromkeys(images.image))
    rebuilt = f"report rebuilt by `{command}`"
    recorded = [line.split(f" ({REBUILT}", 1)[0].rstrip(".")
                for line in _recorded_lines(folder / "report.md", "Settings")]
    if recorded:  # what the study itself recorded (weights' and images' fingerprints included) stays
        settings = {"parts": [{"recorded": line, "source": rebuilt} for line in recorded]}
    else:
        settings = {**asdict(spec), "inputs": {"eval_image_names": images_used},
                    "source": f"reconstructed from the command and images.csv, the run predates spec.json; {rebuilt}"}
    bd = bd_table(results)
    result = StudyResult(results, images, bd, rank(bd), plans, settings)
    machine = _recorded(folder / "report.md", "Machine") or f"{platform.machine()} CPU, {os.cpu_count()} cores"
    return write_report(result, folder, command=_recorded(folder / "report.md", "Command"), machine=machine,
                        layers=layer_frame(models))


if __name__ == "__main__":
    main()
