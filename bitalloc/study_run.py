"""The harness's control flow: what each cell needs, what is cached, what to compute, in which order.

:class:`StudyRun` reads the cache (in this process), hands what is missing to a
:class:`~bitalloc.executor.Runner` as :mod:`bitalloc.cells` tasks, and continues from each result::

    cost table (per quality) --> [pairwise terms (per quality, for spec.pairwise_allocators)]
        --> allocation + joint check (per static cell) --> outcome (per distinct plan and mode) --> cell
    fp32 / DynaQuant cell (no table)                                                          --> cell

Each table, pairwise table and outcome is computed once however many cells wait for it (an outcome shared by
two cells is asked for once, and the second cell waits for the first's), so racing workers never duplicate
work. A cell is written (atomically) as soon as its parts are in; rows come out in the cells' order,
whichever worker finished first.
"""

from __future__ import annotations

from .analysis import FP_ALLOCATOR
from .cells import (Cell, allocate_task, cached_plan_problem, folder_recipe, outcome_task, pairs_task, reference_task,
                    study_budget, table_task, with_means)
from .executor import Runner, Shipped
from .plan import BitPlan
from .repair import split_verify
from .study_cache import ROW_FIELDS, STATIC_ROW_FIELDS, StudyCache, set_aside

__all__ = ["StudyRun"]

TABLE_FIRST = 0  # cost tables gate every static cell: they start before any cell's work


class StudyRun:
    """One run over ``cells`` (module docstring); :meth:`run` returns ``[(cell, cell_dict, fresh), ...]``."""

    def __init__(self, spec, cache: StudyCache, models: dict, calib, evals: dict, train, loss, runner: Runner,
                 bar=None, progress: bool = False):
        self.spec, self.cache, self.loss, self.runner, self.bar = spec, cache, loss, runner, bar
        self.progress = progress and runner.executor is None  # DynaQuant's own bar, in this process only
        self.models = {q: Shipped(m) for q, m in models.items()}
        self.calib, self.evals, self.train = Shipped(calib), Shipped(evals), Shipped(train, folder_recipe(train))
        self.eval_names = list(evals)
        self.tables: dict = {}  # (quality, pairwise) -> CostTable
        self.waiting: dict = {}  # (quality, pairwise) or outcome path -> continuations
        self.outcomes: dict = {}  # outcome path -> outcome
        self.done: dict = {}

    def run(self, cells: list[Cell]) -> list[tuple[Cell, dict, bool]]:
        for i, cell in enumerate(cells):
            self._open(i, cell)
        self.runner.run()
        return [self.done[i] for i in range(len(cells))]

    # what a cell needs ------------------------------------------------------------------------------------
    def _read(self, label: dict, path, key, fields=()):
        return self.runner.record(self.cache.read, (path, key, self.eval_names, fields), label)

    def _table(self, quality: int, pairwise: bool, then) -> None:
        """Call ``then(table)`` with the quality's cost table (with its pairwise terms), once there."""
        k = (quality, pairwise)
        if k in self.tables:
            return then(self.tables[k])
        if k in self.waiting:
            return self.waiting[k].append(then)
        self.waiting[k] = [then]
        spec, cache = self.spec, self.cache
        stem = f"{spec.model}_q{quality}"
        label = {"cell": f"{spec.model} q{quality} {'pairwise terms' if pairwise else 'cost table'}",
                 "quality": quality}
        if not pairwise:
            path = cache.path("sensitivity", stem, cache.sensitivity_key(quality))
            found = self.runner.record(cache.read_table, (path, spec.candidate_bits), label)
            if found is not None:
                return self._got(k, found)
            args = (self.models[quality], self.calib, spec, path, self._frame_path(quality), self.loss)
            return self.runner.submit(table_task, args, label, lambda t: self._got(k, t), TABLE_FIRST)

        def with_base(base):
            path = cache.path("sensitivity", f"{stem}_pairs", cache.interactions_key(quality))
            found = self.runner.record(cache.read_table, (path, spec.candidate_bits), label)
            if found is not None:
                return self._got(k, found)
            args = (self.models[quality], self.calib, base, spec, path, self._frame_path(quality), self.loss)
            self.runner.submit(pairs_task, args, label, lambda t: self._got(k, t), TABLE_FIRST)

        self._table(quality, False, with_base)

    def _frame_path(self, quality: int):
        key = self.cache.sensitivity_key(quality)
        return self.cache.path("sensitivity", f"{self.spec.model}_q{quality}_frame", key, suffix=".csv")

    def _got(self, k, value) -> None:
        self.tables[k] = value
        for then in self.waiting.pop(k):
            then(value)

    def _outcome(self, label: dict, quality: int, mode: str, plan: dict, then) -> None:
        """Call ``then(outcome)`` with the plan's outcome: cached, being computed (wait), or computed now."""
        cache = self.cache
        key = cache.outcome_key(quality, mode, BitPlan.from_dict(plan).bits)
        path = cache.path("outcomes", f"{self.spec.model}_q{quality}_{mode}", key)
        if path in self.outcomes:
            return then(self.outcomes[path])
        if path in self.waiting:
            return self.waiting[path].append(then)
        found = self._read(label, path, key)
        if found is not None:
            self.outcomes[path] = found
            return then(found)
        self.waiting[path] = [then]

        def got(outcome):
            self.outcomes[path] = outcome
            for then in self.waiting.pop(path):
                then(outcome)

        args = (cache, self.spec, quality, mode, plan, self.models[quality], self.train, self.evals, self.loss,
                self.calib)
        self.runner.submit(outcome_task, args, label, got)

    # a cell ----------------------------------------------------------------------------------------------
    def _open(self, i: int, cell: Cell) -> None:
        spec, cache = self.spec, self.cache
        key = cache.cell_key(cell.quality, cell.allocator, cell.budget, cell.mode, cell.static)
        path = cache.cell_path(cell.quality, cell.allocator, cell.budget, cell.mode, key)
        label = cell.label(spec)
        found = self._read(label, path, key, ROW_FIELDS + (STATIC_ROW_FIELDS if cell.static else ()))
        finish = self._finisher(i, cell, key, path)
        if cell.static:
            pairwise = split_verify(cell.allocator)[0] in spec.pairwise_allocators
            return self._table(cell.quality, pairwise, lambda table: self._static(cell, found, table, finish))
        if found is not None:
            return finish(found, fresh=False)
        workdir = None
        if cell.allocator == FP_ALLOCATOR and cell.mode == "qat":
            workdir = cache.workdir("qat", f"{spec.model}_q{cell.quality}_fp32_{spec.qat_steps}steps", key)
        elif cell.allocator != FP_ALLOCATOR:
            workdir = cache.workdir("dynaquant", f"{spec.model}_q{cell.quality}_avg{cell.budget:g}_"
                                                 f"{spec.qat_steps}steps", key)
        args = (cell, spec, self.models[cell.quality], self.train, self.evals, workdir, self.loss, self.progress)
        self.runner.submit(reference_task, args, label, lambda c: finish(c, fresh=True))

    def _static(self, cell: Cell, found: dict | None, table, finish) -> None:
        label, where = cell.label(self.spec), cell.where(self.spec)
        if found is not None:
            problem = cached_plan_problem(found, table, study_budget(self.spec, table, cell.budget), where)
            if problem:
                self.runner.record(set_aside, (finish.path, problem), label)
                found = None
        args = (cell, self.spec, self.models[cell.quality], self.calib, table, self.loss)
        if found is None:
            def allocated(res):
                plan = res.pop("plan")
                self._outcome(label, cell.quality, cell.mode, plan,
                              lambda outcome: finish(with_means({**res, "plan": plan}, outcome), fresh=True))

            return self.runner.submit(allocate_task, args, label, allocated)
        if "plan_excess" in found["row"]:
            return finish(found, fresh=False)

        def checked(res):  # a cell cached before the joint plan check: the check only
            found["row"].update(res["row"])
            finish(found, fresh=False, write=True)

        self.runner.submit(allocate_task, (*args, found["plan"]), label, checked)

    def _finisher(self, i: int, cell: Cell, key: dict, path):
        def finish(found: dict, fresh: bool, write: bool | None = None) -> None:
            if fresh if write is None else write:
                self.cache.write(path, key, found)
            self.done[i] = (cell, found, fresh)
            if self.bar is not None:
                self.bar.update(1)
                self.bar.set_postfix_str(cell.label(self.spec)["cell"])

        finish.path = path
        return finish
