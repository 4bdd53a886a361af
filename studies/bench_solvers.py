"""Benchmark (not a test): solve time and objective gap to the ILP optimum for every allocator.

Tables of 14, 60, 1,000 and 10,000 layers x 6 candidates (2, 3, 4, 5, 6, 8 bits), synthetic but shaped like
learned-image-compression layers: conv weights k*k*C_in*C_out with k in {3, 5} and C in {128, 192, 320}, a
per-channel scale overhead, and costs w_l * 2^(-2b) times log-normal measurement noise (not monotone).
Budgets: 3.5 and 5 average bits per weight. Writes ``studies/results/bench_solvers.md`` (atomically).

    python studies/bench_solvers.py [--sizes 14,60,1000,10000] [--seed 0] [--no-generic]

``--property N`` instead checks every allocator on N seeded random tables at boundary budgets
(:mod:`bitalloc.solvers.conformance`: fractional sizes, ties, budgets exactly at the smallest, largest and every
uniform size and one float step below, random budgets) and writes the counts of tables, budget violations,
crashes, ``optimal`` plans worse than another allocator's, and disagreements of ilp / ilp (PuLP) / exact to
``studies/results/bench_solvers_property.md``:

    python studies/bench_solvers.py --property 10000 --seed 0 --jobs 2

``--pairwise`` instead times ``iqp`` (pairwise interaction terms, proven optimal) on the same tables with
interaction terms on two layer graphs, a chain (layer l with l+1) and a random graph (2 L pairs drawn uniformly),
against greedy's objective gap (pairwise marginal costs) and the additive ILP's (it ignores the terms), and writes
``studies/results/bench_solvers_pairwise.md``:

    python studies/bench_solvers.py --pairwise --sizes 60,1000,10000 --seed 0 --time-limit 600
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import statistics
import sys
import time

import numpy as np

from bitalloc import Budget, CostTable, build_allocator
from bitalloc.costs import atomic_write_text
from bitalloc.solvers import conformance

BITS = (2, 3, 4, 5, 6, 8)
AVG_BITS = (3.5, 5.0)
ORDER = ["ilp", "exact", "greedy", "convex", "fmpq", "uniform"]


def lic_like_table(num_layers: int, seed: int) -> CostTable:
    rng = np.random.default_rng(seed)
    k = rng.choice([3, 5], num_layers)
    cin = rng.choice([128, 192, 320], num_layers)
    cout = rng.choice([128, 192, 320], num_layers)
    params = k * k * cin * cout
    size = np.outer(params, BITS) + (32 * cout)[:, None]  # one fp32 scale per output channel
    w = rng.lognormal(0.0, 1.5, num_layers) * params
    noise = rng.lognormal(0.0, 0.15, (num_layers, len(BITS)))
    cost = w[:, None] * 2.0 ** (-2 * np.asarray(BITS, dtype=float))[None, :] * noise / params.sum()
    return CostTable.from_arrays([f"layer{i}" for i in range(num_layers)], BITS, cost, size.astype(float),
                                 num_params=params.tolist())


def with_interactions(table: CostTable, graph: str, seed: int) -> CostTable:
    """``table`` plus pairwise terms on a ``"chain"`` or ``"random"`` layer graph, shaped like measured ones:
    P_ij[a, b] = rho_ij * sqrt(c_i(a) c_j(b)) * log-normal noise where both layers are at 4 bits or fewer (above,
    a pair sits in the noise floor and is not measured: 0), rho_ij uniform in [-0.3, 1] (mostly layers that hurt
    each other, as the hyper-synthesis layers do; some that cancel)."""
    rng = np.random.default_rng(seed + 1)
    L, B = table.cost.shape
    if graph == "chain":
        edges = [(i, i + 1) for i in range(L - 1)]
    else:
        found: set[tuple[int, int]] = set()
        while len(found) < min(2 * L, L * (L - 1) // 2):
            a, b = map(int, rng.integers(L, size=2))
            if a != b:
                found.add((min(a, b), max(a, b)))
        edges = sorted(found)
    low = np.asarray(table.bits) <= 4
    c, names = table.cost, table.layer_names
    pairwise = {}
    for i, j in edges:
        m = rng.uniform(-0.3, 1.0) * np.sqrt(np.outer(c[i], c[j])) * rng.lognormal(0.0, 0.2, (B, B))
        m[~low[:, None] | ~low[None, :]] = 0.0
        pairwise[(names[i], names[j])] = m
    return table.replace(pairwise=pairwise)


def pairwise_bench(args: argparse.Namespace) -> int:
    """iqp's time to a proven optimum, and greedy's / the additive ILP's gap to it, on tables with pairs."""
    rows = []
    for L in [int(x) for x in args.sizes.split(",")]:
        for graph in ("chain", "random"):
            table = with_interactions(lic_like_table(L, args.seed), graph, args.seed)
            budget = Budget.from_avg_bits(table, 3.5)
            runs = {}
            for name, opts in (("iqp", {"time_limit_s": args.time_limit}), ("greedy", {}), ("ilp", {})):
                wall, cpu = time.perf_counter(), time.process_time()
                r = build_allocator(name, **opts).allocate(table, budget)
                runs[name] = (r, time.perf_counter() - wall, time.process_time() - cpu)
            best = runs["iqp"][0].objective
            for name, (r, wall, cpu) in runs.items():
                gap = 100.0 * (r.objective - best) / best
                proven = "-" if r.gap is None else f"{100.0 * r.gap:.4f}"
                rows.append((L, graph, len(table.pairwise), name, wall, cpu, str(r.status), proven, gap))
                print(f"{L:>6} {graph:<6} {name:<6} {wall:>8.2f} s wall {cpu:>8.2f} s CPU  {str(r.status):<9} "
                      f"proven gap {proven:>8} %  gap to iqp {gap:>8.4f} %", flush=True)
    lines = [
        "# Allocator benchmark: pairwise interaction terms",
        "",
        f"Command: `python studies/bench_solvers.py --pairwise --sizes {args.sizes} --seed {args.seed} "
        f"--time-limit {args.time_limit:g}`  ",
        f"Machine: this sandbox, {os.cpu_count()}-core CPU shared with background training jobs (wall times are "
        f"inflated by them; CPU is this process's time); Python {platform.python_version()}, "
        f"{platform.machine()}.  ",
        "Tables: the LIC-like tables of `bench_solvers.md` (6 candidates, 2-8 bits) plus pairwise terms "
        "(`with_interactions`: rho * sqrt(c_i(a) c_j(b)) * noise where both layers are at <= 4 bits, rho in "
        "[-0.3, 1]) on a chain (L-1 pairs) or a random graph (2 L pairs); budget 3.5 average bits. "
        "iqp: HiGHS through SciPy, one run, time limit as in the command. Proven gap: the allocator's own bound "
        "(0 = proven optimal; - = none). Gap to iqp: objective above iqp's plan, in percent; `ilp` optimises the "
        "per-layer costs only (today's additive allocation, scored on the whole objective).",
        "",
        "| layers | graph | pairs | allocator | wall (s) | CPU (s) | status | proven gap (%) | gap to iqp (%) |",
        "| ---: | --- | ---: | --- | ---: | ---: | --- | ---: | ---: |",
    ]
    for L, graph, n, name, wall, cpu, status, proven, gap in rows:
        lines.append(f"| {L} | {graph} | {n} | {name} | {wall:.2f} | {cpu:.2f} | {status} | {proven} | {gap:.4f} |")
    atomic_write_text(args.pairwise_out, "\n".join(lines) + "\n")
    print(f"wrote {args.pairwise_out}")
    return 0


def timed(alloc, table, budget, repeats):
    times, res = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        res = alloc.allocate(table, budget)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), res


def _property_chunk(job: tuple[int, int, int, int]) -> conformance.Counts:
    seed, chunk, num_tables, pulp_every = job
    return conformance.run(num_tables, seed=(seed, chunk), pulp_every=pulp_every)


def property_check(args: argparse.Namespace) -> int:
    """The seeded property run over ``args.property`` tables, in chunks of 100 (one RNG stream per chunk)."""
    n, chunk = args.property, 100
    jobs = [(args.seed, k, min(chunk, n - k * chunk), args.pulp_every) for k in range((n + chunk - 1) // chunk)]
    total = conformance.Counts()
    t0 = time.perf_counter()
    with multiprocessing.Pool(args.jobs) as pool:
        for counts in pool.imap(_property_chunk, jobs):
            total.merge(counts)
            print(f"{total.tables:>6} tables {total.cases:>7} budgets: {total.violations} violations, "
                  f"{total.crashes} crashes, {total.optimal_worse} optimal-worse, {total.disagreements} "
                  f"disagreements ({time.perf_counter() - t0:.0f} s)", flush=True)
    wall = time.perf_counter() - t0
    for line in total.examples:
        print(line)
    cmd = f"python studies/bench_solvers.py --property {n} --seed {args.seed} --jobs {args.jobs}" + (
        f" --pulp-every {args.pulp_every}" if args.pulp_every != 1 else "")
    names = ", ".join(conformance.ALLOCATORS)
    lines = [
        "# Allocator property check",
        "",
        f"Command: `{cmd}`  ",
        f"Machine: this sandbox, {os.cpu_count()}-core CPU shared with background jobs; Python "
        f"{platform.python_version()}, {platform.machine()}; wall time {wall:.0f} s ({args.jobs} processes).  ",
        "Tables: `bitalloc.solvers.conformance.random_table` (1-24 layers, 1-8 candidates, integer / tenth-of-a-bit / "
        "real sizes, costs LIC-like, uniform, tied with zeros, spanning 12 orders of magnitude). Budgets per table: "
        "exactly the smallest, the largest and every uniform size, one float step below each, and 2 random ones.  ",
        f"Allocators: {names}; all on every budget but `ilp/pulp` (`ILPAllocator(method=\"pulp\")`, the full "
        f"MILP in PuLP/CBC), which ran on the budgets of one table in {args.pulp_every}: {total.pulp_cases} budgets.",
        "",
        "| tables | budgets | allocator runs | budget violations | crashes | `optimal` worse than another plan "
        "| exact allocators disagree |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        f"| {total.tables} | {total.cases} | {total.runs} | {total.violations} | {total.crashes} | "
        f"{total.optimal_worse} | {total.disagreements} |",
        "",
        "A violation: the plan's size, added exactly (rational arithmetic) and rounded once, exceeds the budget; or "
        "its reported size or objective is not the plan's; or an `optimal` plan reports a gap. Exact allocators: "
        "`ilp` (default path), `ilp/pulp`, `iqp` and `exact` must reach the same objective. A crash: an "
        "exception or a status other than optimal/feasible. Worse and disagree: beyond 1e-9 relative.",
    ]
    if total.examples:
        lines += ["", "First failures:", ""] + [f"- {e}" for e in total.examples]
    atomic_write_text(args.property_out, "\n".join(lines) + "\n")
    print(f"{total.tables} tables, {total.cases} budgets, {total.runs} runs: {total.violations} violations, "
          f"{total.crashes} crashes, {total.optimal_worse} optimal-worse, {total.disagreements} disagreements; "
          f"{wall:.0f} s wall\nwrote {args.property_out}")
    return 0 if total.failures() == 0 else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="14,60,1000,10000")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-generic", action="store_true", help="skip the plain PuLP/CBC model at 1000 layers")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "bench_solvers.md"))
    ap.add_argument("--property", type=int, default=0, metavar="N",
                    help="instead of timing, check every allocator on N random tables at boundary budgets")
    ap.add_argument("--pulp-every", type=int, default=1, help="--property: run the PuLP path on every k-th table")
    ap.add_argument("--jobs", type=int, default=1, help="--property: worker processes")
    ap.add_argument("--property-out",
                    default=os.path.join(os.path.dirname(__file__), "results", "bench_solvers_property.md"))
    ap.add_argument("--pairwise", action="store_true",
                    help="instead of the additive tables, time iqp on tables with pairwise interaction terms")
    ap.add_argument("--time-limit", type=float, default=600.0, help="--pairwise: iqp's time limit in seconds")
    ap.add_argument("--pairwise-out",
                    default=os.path.join(os.path.dirname(__file__), "results", "bench_solvers_pairwise.md"))
    args = ap.parse_args(argv)
    if args.property < 0 or args.pulp_every < 1 or args.jobs < 1:
        ap.error("--property must be >= 0, --pulp-every and --jobs >= 1")
    if args.property:
        return property_check(args)
    if args.pairwise:
        return pairwise_bench(args)
    rows = []
    for L in [int(s) for s in args.sizes.split(",")]:
        table = lic_like_table(L, args.seed)
        repeats = 5 if L <= 60 else 1
        for avg in AVG_BITS:
            budget = Budget.from_avg_bits(table, avg)
            runs = {}
            for name in ORDER:
                if name == "exact" and L > 60:
                    continue
                runs[name] = timed(build_allocator(name), table, budget, repeats)
            if L == 1000 and not args.no_generic:
                runs["ilp (plain PuLP/CBC)"] = timed(build_allocator("ilp", method="pulp", time_limit_s=120),
                                                     table, budget, 1)
            opt = runs["ilp"][1].objective
            for name, (t, r) in runs.items():
                gap = 100.0 * (r.objective - opt) / opt if r.objective is not None else float("nan")
                rows.append((L, avg, name, t * 1000.0, str(r.status), gap, r.iterations,
                             r.size_bits / budget.max_size_bits))
                print(f"{L:>6} {avg:>4} {name:<22} {t * 1000:>10.1f} ms  {str(r.status):<9} gap {gap:>8.4f} %"
                      f"  iters {r.iterations:>6}  size/budget {r.size_bits / budget.max_size_bits:.4f}",
                      flush=True)
    lines = [
        "# Allocator benchmark",
        "",
        f"Command: `python studies/bench_solvers.py --sizes {args.sizes} --seed {args.seed}`  ",
        f"Machine: this sandbox, {os.cpu_count()}-core CPU shared with a background job; Python "
        f"{platform.python_version()}, {platform.machine()}.  ",
        "Tables: synthetic LIC-like layers x 6 candidates (2, 3, 4, 5, 6, 8 bits), noisy non-monotone costs; "
        "budgets at 3.5 and 5 average bits. Time: median of 5 runs up to 60 layers, one run above, wall clock "
        "of `allocate` (validation included). Gap: objective above the ILP optimum, in percent. "
        "Iterations: FMPQ's tolerance evaluations; greedy/convex moves; states of the reduced DP for ilp.",
        "",
        "| layers | avg bits | allocator | time (ms) | status | gap to ILP (%) | iterations | size / budget |",
        "| ---: | ---: | --- | ---: | --- | ---: | ---: | ---: |",
    ]
    for L, avg, name, ms, status, gap, it, ratio in rows:
        lines.append(f"| {L} | {avg} | {name} | {ms:.1f} | {status} | {gap:.4f} | {it} | {ratio:.4f} |")
    atomic_write_text(args.out, "\n".join(lines) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
