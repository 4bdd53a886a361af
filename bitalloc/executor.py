"""Where the harness's independent work runs: in this process, on a local process pool, or on any Executor.

The harness hands every piece of work (a cost table, the interactions of a quality, a cell's allocation, the
outcome of a plan) to a :class:`Runner` as a plain function call, and continues from each result as it comes
back; what runs next never depends on which worker ran what, so results match the serial run exactly.

* ``Runner()``: the serial run, every call made in this process in the order it was submitted;
* ``Runner(local_executor(n))``: a ``ProcessPoolExecutor`` of ``n`` spawned workers, one torch thread each;
* ``Runner(executor)``: any :class:`concurrent.futures.Executor`, e.g. Dask's
  ``distributed.Client(...).get_executor()``, on a cluster whose workers see the study's output folder.

Arguments travel as :class:`Shipped` objects: pickled once in this process (the float models, the images),
unpickled once per worker process. Warnings raised by a call are recorded (never printed through a progress
bar) as dicts with the call's ``label``; :func:`reemit` shows them again once the work is done.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import heapq
import importlib
import multiprocessing
import pickle
import uuid
import warnings
from typing import Any, Callable

__all__ = ["Runner", "Shipped", "call_recording", "local_executor", "reemit"]

_MEMO: collections.OrderedDict = collections.OrderedDict()  # key -> object unpickled in this worker process
_MEMO_SIZE = 16


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def local_executor(workers: int, threads: int = 1) -> cf.ProcessPoolExecutor:
    """A pool of ``workers`` spawned processes (no fork: torch and its thread pools do not survive one), each
    with ``threads`` torch threads."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be an integer >= 1, got {workers!r}")
    return cf.ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                  initializer=_init_worker, initargs=(threads,))


class Shipped:
    """An argument pickled once here (standard pickle, tensors as bytes) and unpickled once per worker.

    ``get()`` returns the object itself in this process, and the worker's one copy elsewhere: callers must not
    change it in place (the harness deep-copies models before use)."""

    def __init__(self, obj: Any, recipe: tuple | None = None):
        self._obj, self._here, self._blob, self.key = obj, True, None, uuid.uuid4().hex
        self.recipe = recipe  # (function, args) that rebuilds obj in a worker: shipped instead of obj

    def get(self) -> Any:
        if self._here:
            return self._obj
        if self.key not in _MEMO:
            fn, args = self.recipe or (pickle.loads, (self._blob,))  # bytes this study pickled itself, not a file
            _MEMO[self.key] = fn(*args)
            while len(_MEMO) > _MEMO_SIZE:
                _MEMO.popitem(last=False)
        _MEMO.move_to_end(self.key)
        return _MEMO[self.key]

    def __getstate__(self) -> dict:
        if self._blob is None and self.recipe is None:
            self._blob = pickle.dumps(self._obj, protocol=pickle.HIGHEST_PROTOCOL)
        return {"key": self.key, "blob": self._blob, "recipe": self.recipe}

    def __setstate__(self, state: dict) -> None:
        self._obj, self._here, self.key = None, False, state["key"]
        self._blob, self.recipe = state["blob"], state.get("recipe")

    def __dask_tokenize__(self):
        return ("bitalloc.Shipped", self.key)


def _category_name(category: type) -> str:
    return f"{category.__module__}.{category.__qualname__}"


def _category(name: str) -> type:
    module, _, qualname = name.rpartition(".")
    try:
        found = importlib.import_module(module)
        for part in qualname.split("."):
            found = getattr(found, part)
    except (ImportError, AttributeError):
        return UserWarning
    return found if isinstance(found, type) and issubclass(found, Warning) else UserWarning


def call_recording(fn: Callable, args: tuple, label: dict) -> tuple[Any, list[dict]]:
    """``fn(*args)`` with the warnings it raises recorded as dicts (``label``'s fields, ``category``,
    ``message``, ``filename``, ``lineno``), each distinct one once. Module-level, so it pickles to workers."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        warnings.simplefilter("always", RuntimeWarning)
        value = fn(*args)
    records, seen = [], set()
    for w in caught:
        rec = {**label, "category": _category_name(w.category), "message": str(w.message),
               "filename": str(w.filename), "lineno": int(w.lineno)}
        if (rec["category"], rec["message"]) not in seen:
            seen.add((rec["category"], rec["message"]))
            records.append(rec)
    return value, records


def reemit(records: list[dict]) -> None:
    """Warn again with each recorded warning, at its original place (after the progress bar is closed)."""
    for rec in records:
        warnings.warn_explicit(rec["message"], _category(rec["category"]), rec["filename"], rec["lineno"])


class Runner:
    """Runs submitted calls and hands each result to its continuation (module docstring).

    ``submit(fn, args, label, then, priority=1, raised=None)``: ``then(value)`` runs in this process once
    ``fn(*args)`` is done; it may submit more. :meth:`run` returns when nothing is left. Calls start by
    ``priority`` (lower first), then in the order submitted; at most ``window`` are with the executor at once (the
    rest wait here), so a cluster is not sent every payload up front. The warnings of every call gather in
    :attr:`warnings` (and those of a call given a ``raised`` list in that list too, before ``then`` runs, so
    that its caller can store them with the result); the first error stops the run (the calls not started are
    dropped) and propagates."""

    def __init__(self, executor: cf.Executor | None = None, window: int = 4):
        self.executor, self.window = executor, max(1, int(window))
        self.queue: list = []
        self.running: dict[cf.Future, tuple[int, Callable]] = {}
        self.warnings: list[dict] = []
        self._count = 0

    def submit(self, fn: Callable, args: tuple, label: dict, then: Callable[[Any], None], priority: int = 1,
               raised: list | None = None) -> None:
        self._count += 1
        heapq.heappush(self.queue, (priority, self._count, fn, args, label, then, raised))

    def record(self, fn: Callable, args: tuple, label: dict) -> Any:
        """``fn(*args)`` here and now, its warnings recorded with ``label``."""
        value, records = call_recording(fn, args, label)
        self.warnings += records
        return value

    def run(self) -> None:
        try:
            while self.queue or self.running:
                if self.executor is None:
                    _, _, fn, args, label, then, raised = heapq.heappop(self.queue)
                    value, records = call_recording(fn, args, label)
                else:
                    while self.queue and len(self.running) < self.window:
                        _, n, fn, args, label, then, raised = heapq.heappop(self.queue)
                        self.running[self.executor.submit(call_recording, fn, args, label)] = (n, then, raised)
                    done, _ = cf.wait(list(self.running), return_when=cf.FIRST_COMPLETED)
                    future = min(done, key=lambda f: self.running[f][0])  # the oldest first: a fixed order
                    _, then, raised = self.running.pop(future)
                    value, records = future.result()
                self.warnings += records
                if raised is not None:
                    raised += records
                then(value)
        finally:
            for future in self.running:
                future.cancel()
            self.running.clear()
            self.queue.clear()
