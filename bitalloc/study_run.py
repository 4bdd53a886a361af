"""The harness's control flow: what each cell needs, what is cached, what to compute, in which order.

:class:`StudyRun` reads the cache (in this process), hands what is missing to a
:class:`~bitalloc.executor.Runner` as :mod:`bitalloc.cells` tasks, and continues from each result::

    cost table (per quality) --> [pairwise terms (per quality, for spec.pairwise_allocators)]
        --> allocation + joint check (per static cell) --> outcome (per distinct plan and mode) --> cell
    fp32 / DynaQuant cell (no table)                                                          --> cell

Each table, pairwise table and outcome is computed once however many cells wait for it (an outcome shared by
two cells is asked for once, and the second cell waits for the first's), so racing workers never duplicate
work. A cell is written (atomically) as soon as its parts are in; rows come out in the cells' order,
whichever worker finished first. A static cell's allocation is kept (``<out>/allocations/``) as soon as it is
done, so an interrupted run does not allocate it again (a ``+verify+qat`` allocation is minutes of QAT runs).

Warnings are cached with what raised them (:mod:`bitalloc.study_warnings`).
"""

from __future__ import annotations

from .analysis import FP_ALLOCATOR
from .cells import (Cell, allocate_task, cached_plan_problem, folder_recipe, outcome_task, pairs_task,
                    recovered_task, reference_task, study_budget, table_task, with_means)
from .executor import Runner, Shipped
from .plan import BitPlan
from .recovery import split_qat
from .repair import split_verify
from .study_cache import ROW_FIELDS, STATIC_ROW_FIELDS, StudyCache
from .study_files import set_aside
from .study_warnings import note_unstored, read_table_warnings, stored_warnings

__all__ = ["StudyRun"]

WARNINGS_FOLDER = "table_warnings"  # <out>/table_warnings/<table's name>: the warnings measuring it raised

TABLE_FIRST = 0  # cost tables gate every static cell: they start before any cell's work
TABLE, PAIRS, RECOVERED = "table", "pairs", "recovered"  # the tables a static cell allocates on
TABLE_LABELS = {TABLE: "cost table", PAIRS: "pairwise terms", RECOVERED: "QAT-aware costs"}


class StudyRun:
    """One run over ``cells`` (module docstring); :meth:`run` returns ``[(cell, cell_dict, fresh), ...]``."""

    def __init__(self, spec, cache: StudyCache, models: dict, calib, evals: dict, train, loss, runner: Runner,
                 bar=None, progress: bool = False, holdout=None):
        self.spec, self.cache, self.loss, self.runner, self.bar = spec, cache, loss, runner, bar
        self.progress = progress and runner.executor is None  # DynaQuant's own bar, in this process only
        self.models = {q: Shipped(m) for q, m in models.items()}
        self.calib, self.evals, self.train = Shipped(calib), Shipped(evals), Shipped(train, folder_recipe(train))
        self.holdout = None if holdout is None else Shipped(holdout)  # crops confirming PTQ repairs
        self.eval_names = list(evals)
        self.tables: dict = {}  # (quality, pairwise) -> CostTable
        self.waiting: dict = {}  # (quality, pairwise) or outcome path -> continuations
        self.outcomes: dict = {}  # outcome path -> outcome
        self.done: dict = {}
        self.raised: dict = {}  # label "cell" -> warnings its submitted work raised in this run
        self.unstored = 0  # cached cells without stored warnings (written before they were stored)

    def run(self, cells: list[Cell]) -> list[tuple[Cell, dict, bool]]:
        for i, cell in enumerate(cells):
            self._open(i, cell)
        self.runner.run()
        if self.unstored:
            self.runner.record(note_unstored, (self.unstored, self.spec.model, self.cache.root),
                               {"cell": f"{self.spec.model} study cache"})
        order: dict = {}
        for cell in cells:  # a table before the first cell that uses it
            if cell.static:
                order.setdefault(self._table_label(cell.quality, TABLE)["cell"], len(order))
                if self._kind(cell) != TABLE:
                    order.setdefault(self._table_label(cell.quality, self._kind(cell))["cell"], len(order))
            order.setdefault(cell.label(self.spec)["cell"], len(order))
        self.runner.warnings.sort(key=lambda rec: order.get(rec.get("cell"), len(order)))
        return [self.done[i] for i in range(len(cells))]

    def _submit(self, fn, args, label: dict, then, priority: int = 1) -> None:
        """Submit ``fn(*args)``; the warnings it raises are kept under its label (to store with its result)."""
        self.runner.submit(fn, args, label, then, priority, raised=self.raised.setdefault(label["cell"], []))

    def _recovered(self, quality: int) -> tuple[str, dict]:
        """The stem and key of the quality's QAT-aware table: its file, and its work folder (cells, anchor)."""
        return f"{self.spec.model}_q{quality}_recovered", self.cache.recovery_key(quality)

    def _kind(self, cell: Cell) -> str:
        """Which table a static cell allocates on: the cost table, with its pairwise terms, or QAT-aware."""
        if split_qat(cell.allocator)[1]:
            return RECOVERED
        return PAIRS if split_verify(cell.allocator)[0] in self.spec.pairwise_allocators else TABLE

    def _table_label(self, quality: int, kind: str) -> dict:
        return {"cell": f"{self.spec.model} q{quality} {TABLE_LABELS[kind]}", "quality": quality}

    # what a cell needs ------------------------------------------------------------------------------------
    def _read(self, label: dict, path, key, fields=()):
        return self.runner.record(self.cache.read, (path, key, self.eval_names, fields), label)

    def _table(self, quality: int, kind: str, then) -> None:
        """Call ``then(table)`` with the quality's table of ``kind`` (TABLE, PAIRS, RECOVERED), once there."""
        k = (quality, kind)
        if k in self.tables:
            return then(self.tables[k])
        if k in self.waiting:
            return self.waiting[k].append(then)
        self.waiting[k] = [then]
        spec, cache = self.spec, self.cache
        label = self._table_label(quality, kind)
        if kind == TABLE:
            stem, key = f"{spec.model}_q{quality}", cache.sensitivity_key(quality)
            if not self._cached_table(k, stem, key, label):
                args = (self.models[quality], self.calib, spec, cache.path("sensitivity", stem, key),
                        self._frame_path(quality), self.loss)
                self._submit(table_task, args, label, self._measured(k, stem, key, label), TABLE_FIRST)
            return

        def with_base(base):
            if kind == PAIRS:
                stem, key = f"{spec.model}_q{quality}_pairs", cache.interactions_key(quality)
            else:
                stem, key = self._recovered(quality)
            if self._cached_table(k, stem, key, label):
                return
            path = cache.path("sensitivity", stem, key)
            if kind == PAIRS:
                fn, args = pairs_task, (self.models[quality], self.calib, base, spec, path, self._frame_path(quality),
                                        self.loss)
            else:
                fn, args = recovered_task, (self.models[quality], self.calib, self.train, base, spec, path,
                                            self._frame_path(quality), cache.workdir("recovery", stem, key),
                                            self.loss)
            self._submit(fn, args, label, self._measured(k, stem, key, label), TABLE_FIRST)

        self._table(quality, TABLE, with_base)

    def _cached_table(self, k, stem: str, key: dict, label: dict) -> bool:
        """Hand on the cached table (its stored warnings back in the run); False when it is not cached."""
        path = self.cache.path("sensitivity", stem, key)
        found = self.runner.record(self.cache.read_table, (path, self.spec.candidate_bits), label)
        if found is None:
            return False
        where = self.cache.path(WARNINGS_FOLDER, stem, key)
        self.runner.warnings += self.runner.record(read_table_warnings, (where, key), label)
        self._got(k, found)
        return True

    def _measured(self, k, stem: str, key: dict, label: dict):
        def then(table):  # its warnings stored (none too: no stale file stays) before any cell goes on
            raised = self.raised.get(label["cell"], [])
            self.runner.record(self.cache.write, (self.cache.path(WARNINGS_FOLDER, stem, key), key,
                                                  {"warnings": raised}), label)
            self._got(k, table)

        return then

    def _frame_path(self, quality: int):
        key = self.cache.sensitivity_key(quality)
        return self.cache.path("sensitivity", f"{self.spec.model}_q{quality}_frame", key, suffix=".csv")

    def _got(self, k, value) -> None:
        self.tables[k] = value
        for then in self.waiting.pop(k):
            then(value)

    def _restore(self, label: dict, records: list[dict]) -> None:
        """Warnings a cached result stores, back in this run (shown, and stored again with the cell)."""
        self.runner.warnings += records
        self.raised.setdefault(label["cell"], []).extend(records)

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
        if found is not None:  # the warnings computing it raised come back with the cell they were raised for
            mine = [r for r in stored_warnings(found.get("warnings")) or [] if r["cell"] == label["cell"]]
            self._restore(label, mine)
            self.outcomes[path] = found
            return then(found)
        self.waiting[path] = [then]
        raised: list = []

        def got(outcome):
            self.raised.setdefault(label["cell"], []).extend(raised)
            if raised:  # stored with the outcome too, for a cell recomputed later on it
                self.runner.record(cache.write, (path, key, {**outcome, "warnings": raised}), label)
            self.outcomes[path] = outcome
            for then in self.waiting.pop(path):
                then(outcome)

        args = (cache, self.spec, quality, mode, plan, self.models[quality], self.train, self.evals, self.loss,
                self.calib)
        self.runner.submit(outcome_task, args, label, got, raised=raised)

    # a cell ----------------------------------------------------------------------------------------------
    def _open(self, i: int, cell: Cell) -> None:
        spec, cache = self.spec, self.cache
        key = cache.cell_key(cell.quality, cell.allocator, cell.budget, cell.mode, cell.static)
        path = cache.cell_path(cell.quality, cell.allocator, cell.budget, cell.mode, key)
        label = cell.label(spec)
        found = self._read(label, path, key, ROW_FIELDS + (STATIC_ROW_FIELDS if cell.static else ()))
        finish = self._finisher(i, cell, key, path)
        if cell.static:
            return self._table(cell.quality, self._kind(cell),
                               lambda table: self._static(cell, found, table, finish))
        if found is not None:
            return finish(found, fresh=False)
        workdir = None
        if cell.allocator == FP_ALLOCATOR and cell.mode == "qat":
            workdir = cache.workdir("qat", f"{spec.model}_q{cell.quality}_fp32_{spec.qat_steps}steps", key)
        elif cell.allocator != FP_ALLOCATOR:
            workdir = cache.workdir("dynaquant", f"{spec.model}_q{cell.quality}_avg{cell.budget:g}_"
                                                 f"{spec.qat_steps}steps", key)
        args = (cell, spec, self.models[cell.quality], self.train, self.evals, workdir, self.loss, self.progress)
        self._submit(reference_task, args, label, lambda c: finish(c, fresh=True))

    def _static(self, cell: Cell, found: dict | None, table, finish) -> None:
        label, where = cell.label(self.spec), cell.where(self.spec)
        if found is not None:
            problem = cached_plan_problem(found, table, study_budget(self.spec, table, cell.budget), where)
            if problem:
                self.runner.record(set_aside, (finish.path, problem), label)
                found = None
        args = (cell, self.spec, self.models[cell.quality], self.calib, table, self.loss)
        train = work = None
        if self._kind(cell) == RECOVERED:  # its joint check (and verify) runs the QAT, against the table's anchor
            train, work = self.train, self.cache.workdir("recovery", *self._recovered(cell.quality))
        if found is None:  # allocate (or take the allocation an interrupted run kept), then its outcome
            pending = self.cache.allocation_path(finish.path)
            kept = self.runner.record(self.cache.read_allocation, (pending, finish.key), label)

            def allocated(res):
                if kept is None:
                    self.runner.record(self.cache.write, (pending, finish.key, {
                        **res, "warnings": list(self.raised.get(label["cell"], []))}), label)
                plan = res.pop("plan")
                self._outcome(label, cell.quality, cell.mode, plan,
                              lambda outcome: finish(with_means({**res, "plan": plan}, outcome), fresh=True))

            if kept is not None:
                self._restore(label, kept.pop("warnings", []))
                return allocated(kept)
            return self._submit(allocate_task, (*args, None, train, work, self.holdout), label, allocated)
        if "plan_excess" in found["row"]:
            return finish(found, fresh=False)

        def checked(res):  # a cell cached before the joint plan check: the check only
            found["row"].update(res["row"])
            finish(found, fresh=False, write=True)

        self._submit(allocate_task, (*args, found["plan"], train, work), label, checked)

    def _finisher(self, i: int, cell: Cell, key: dict, path):
        name = cell.label(self.spec)["cell"]

        def finish(found: dict, fresh: bool, write: bool | None = None) -> None:
            raised = self.raised.get(name, [])
            if not fresh:  # its first run's warnings, back in this run (a re-check's are in already)
                stored = stored_warnings(found.get("warnings"))
                self.unstored += stored is None
                self.runner.warnings += stored or []
                if stored is not None:
                    found["warnings"] = stored + raised
            else:
                found["warnings"] = list(raised)
            if fresh if write is None else write:
                self.cache.write(path, key, found)
            self.done[i] = (cell, found, fresh)
            if self.bar is not None:
                self.bar.update(1)
                self.bar.set_postfix_str(cell.label(self.spec)["cell"])

        finish.path, finish.key = path, key
        return finish
