"""The harness's cache on disk: every cell, outcome and cost table keyed by everything that changes its numbers.

A cached result is reused only under the settings that produced it. Each file's name ends in a hash of its key,
and the file holds the key itself; the key lists what the result depends on::

    every result      COST_MODEL_VERSION, model name, quality, digest of the float model's weights and metadata
    cost table        + calibration crops (content digest, count, crop size), candidate bits, calibration method
    evaluation        + evaluation images (names, shapes and pixels), eval limit
    QAT, DynaQuant    + training source (names and sizes of the photos, or the tensor's content), steps,
                        learning rate, seed, crop size
    cell              + allocator, budget, budget kind, mode (a static cell: its cost table's key too)
    pairwise terms    the cost table's key + the interaction settings (pairs, noise floor, negative terms);
                        in the key of every cell whose allocator gets them (``spec.pairwise_allocators``)
    ``+verify`` cell  + the verify settings (plans measured at most, tolerance)
    static cell,      + ``act_bits``, ``act_observer``, calibration crops (all absent when ``act_bits`` is None);
      outcome           ``calib_offset`` (absent when 0) is in the cost table's key, so in all downstream
    a user ``loss``   its :func:`loss_digest`, in the cost table's and the QAT keys (none without one)
    ``table_fit``     "noise": its measurement options in the cost table's key (so in the pairwise terms' and
                        every static cell's), and the tie-break share in every static cell's; absent for "clip"
    bias correction   the calibration crops of its shifts, in the cost table's key and every outcome's (absent
                        when off); ``bias_choice`` in every static cell's and outcome's (absent when off)

so a rerun with other settings computes new cells beside the old ones and never mixes them. A file that does
not read back (bad JSON, missing fields, a key other than its name says, numbers that disagree with its own
per-image rows) is named in a :class:`CorruptCacheWarning`, renamed to ``*.corrupt`` and recomputed.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from .atomic import atomic_write_text
from .costs import CostTable
from .study_digests import images_digest, loss_digest, source_digest, weights_digest  # re-exported
from .study_files import CorruptCacheWarning, load_json, plain_key, result_problem, set_aside  # re-exported

__all__ = ["COST_MODEL_VERSION", "CorruptCacheWarning", "StudyCache", "images_digest", "loss_digest",
           "source_digest", "weights_digest"]

#: Bump when a change of the library changes the numbers a cached result holds (sensitivity measurement, size
#: model, quantizers, QAT loop, evaluation): every result computed before is then recomputed.
COST_MODEL_VERSION = 2

ROW_FIELDS = ("status", "avg_bits", "bpp", "psnr_rgb", "ms_ssim_rgb")
STATIC_ROW_FIELDS = ("objective", "solve_time_s", "iterations", "size_bits", "budget_bits", "compression_ratio")


def _key_hash(key: Mapping) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]



class StudyCache:
    """Cells, outcomes, cost tables and QAT/DynaQuant work folders of one study under ``root``.

    ``settings`` are the study's key parts (see the module docstring) apart from the weights, which are
    added per quality with :meth:`set_weights` once the model is loaded.
    """

    def __init__(self, root: Path, spec, inputs: Mapping[str, Any]):
        self.root = Path(root)
        for sub in ("cells", "sensitivity", "outcomes"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self.spec = spec
        self.inputs = dict(inputs)
        self.weights: dict[int, str] = {}

    def set_weights(self, quality: int, digest: str) -> None:
        self.weights[quality] = digest

    # keys ------------------------------------------------------------------------------------------------
    def _common(self, quality: int) -> dict:
        return {"version": COST_MODEL_VERSION, "model": self.spec.model, "quality": quality,
                "weights": self.weights[quality]}

    def _eval(self) -> dict:
        return {"eval_images": self.inputs["eval_images"], "eval_limit": self.spec.eval_limit}

    def _qat(self) -> dict:
        s = self.spec
        return {"train_images": self.inputs["train_images"], "qat_steps": s.qat_steps, "qat_lr": s.qat_lr,
                "seed": s.seed, "train_crop": s.calib_crop, **self._loss()}

    def _loss(self) -> dict:
        loss = self.inputs.get("loss")
        return {} if loss is None else {"loss": loss}

    def _acts(self) -> dict:
        """Activation settings of static plans (none without ``spec.act_bits``: older keys stay valid)."""
        s = self.spec
        return {} if getattr(s, "act_bits", None) is None else {"acts": {
            "bits": s.act_bits, "observer": s.act_observer, "calib_images": self.inputs["calib_images"],
            "calib_offset": getattr(s, "calib_offset", 0)}}

    def sensitivity_key(self, quality: int) -> dict:
        s = self.spec
        return {**self._common(quality), "calib_images": self.inputs["calib_images"], "calib_count": s.calib_images,
                "calib_crop": s.calib_crop, "candidate_bits": list(s.candidate_bits), "calibration": s.calibration,
                **self._loss(), **({"calib_offset": s.calib_offset} if getattr(s, "calib_offset", 0) else {}),
                **self._fit(), **self._bias()}

    def _bias(self) -> dict:
        """Bias correction and the crops its shifts come from (none when off: older keys stay valid)."""
        s = self.spec
        return {"bias_correction": {"calib_images": self.inputs["calib_images"], "calib_crop": s.calib_crop,
                                    "calib_offset": getattr(s, "calib_offset", 0)}} \
            if getattr(s, "bias_correction", False) else {}

    def _fit(self) -> dict:
        """The table fit's measurement options (none for "clip": older keys stay valid)."""
        from .study_steps import TABLE_FITS

        fit = getattr(self.spec, "table_fit", "clip")
        return {} if fit == "clip" else {"table_fit": {"name": fit, **TABLE_FITS[fit]}}

    def interactions_key(self, quality: int) -> dict:
        s = self.spec
        return {**self.sensitivity_key(quality), "interactions": {
            "pairs": s.interaction_pairs, "noise_floor": s.interaction_noise_floor, "negative": "clip"}}

    def recovery_key(self, quality: int) -> dict:
        """The QAT-aware table's key: the table's, the QAT it runs per cell (its steps instead of the study's), and
        the noise settings that pick and stop the cells it measures."""
        s = self.spec
        qat = {k: v for k, v in self._qat().items() if k != "qat_steps"}
        return {**self.sensitivity_key(quality), "recovery": {
            **qat, "steps": s.recovery_steps or s.qat_steps, "noise_floor": s.interaction_noise_floor,
            **({"crop": s.recovery_crop} if s.recovery_crop is not None else {})}}

    def recovered_frames(self, qualities):
        """The measured cells of the QAT-aware tables of ``qualities`` (the ``*_frame.csv`` beside each table), one
        frame with a ``quality`` column; None when there is none."""
        frames = []
        for quality in sorted(qualities):
            path = self.path("sensitivity", f"{self.spec.model}_q{quality}_recovered", self.recovery_key(quality))
            frame_path = path.with_name(path.stem + "_frame.csv")
            if frame_path.is_file():
                frames.append(pd.read_csv(frame_path).assign(quality=quality))
        return pd.concat(frames, ignore_index=True) if frames else None

    def cell_key(self, quality: int, allocator: str, budget, mode: str, static: bool) -> dict:
        from .allocation import allocator_parts

        base = self.sensitivity_key(quality) if static else self._common(quality)
        key = {**base, **self._eval(), "allocator": allocator, "budget": budget, "mode": mode}
        if static:
            key["budget_kind"] = self.spec.budget_kind
            inner, verify, qat = allocator_parts(allocator)
            if qat:
                key["recovery"] = self.recovery_key(quality)["recovery"]
            if inner in self.spec.pairwise_allocators and not qat:  # a +qat name allocates on the QAT-aware table
                key["interactions"] = self.interactions_key(quality)["interactions"]
            if verify:
                key["verify"] = {"max_evals": self.spec.verify_max_evals, "tolerance": self.spec.verify_tolerance}
                if self.spec.verify_noise_z:  # in the key only when set: the plain repair's cells stay valid
                    key["verify"]["noise_z"] = self.spec.verify_noise_z
                if getattr(self.spec, "verify_correction", "auto") != "auto":  # keyed when set, as noise_z
                    key["verify"]["correction"] = self.spec.verify_correction
                if getattr(self.spec, "verify_snap_ties", False):  # keyed when set
                    key["verify"]["snap_ties"] = True
                if getattr(self.spec, "verify_holdout", 0) and not qat:  # the photos confirming a PTQ repair
                    key["verify"]["holdout"] = {"photos": self.spec.verify_holdout,
                                                "images": self.inputs.get("holdout_images")}
            if self._fit():
                from .study_steps import TIE_BREAK_SHARE

                key["tie_break_share"] = TIE_BREAK_SHARE
            key.update(self._acts())
            key.update(self._choice())
        if mode == "qat":
            key.update(self._qat())
        return key

    def _choice(self) -> dict:
        """The chosen bias correction of the models evaluated (none when off: older keys stay valid)."""
        return {"bias_choice": True} if getattr(self.spec, "bias_choice", False) else {}

    def outcome_key(self, quality: int, mode: str, plan_bits: Mapping[str, int]) -> dict:
        key = {**self._common(quality), **self._eval(), "mode": mode, "calibration": self.spec.calibration,
               "plan": sorted(plan_bits.items()), **self._acts(), **self._bias(), **self._choice()}
        if mode == "qat":
            key.update(self._qat())
        return key

    # paths -----------------------------------------------------------------------------------------------
    def path(self, kind: str, stem: str, key: Mapping, suffix: str = ".json") -> Path:
        return self.root / kind / f"{stem}_{_key_hash(key)}{suffix}"

    def cell_path(self, quality, allocator, budget, mode, key) -> Path:
        b = "ref" if budget is None else f"{self.spec.budget_kind}{budget:g}"
        return self.path("cells", f"{self.spec.model}_q{quality}_{allocator}_{b}_{mode}", key)

    def workdir(self, kind: str, stem: str, key: Mapping) -> Path:
        """A work folder (QAT or DynaQuant run state) that belongs to ``key`` only."""
        return self.path(kind, stem, key, suffix="")

    # reading and writing -----------------------------------------------------------------------------------
    def read(self, path: Path, key: Mapping, eval_names: list[str], row_fields=()) -> dict | None:
        """The cached cell or outcome at ``path``, or None (absent, or set aside because it does not read back)."""
        found = load_json(path)
        if found is None:
            return None
        problem = result_problem(found, key, eval_names, row_fields)
        if problem:
            set_aside(path, problem)
            return None
        return found

    def allocation_path(self, cell_path: Path) -> Path:
        """Where a static cell's allocation waits for its outcome: an interrupted run does not allocate it again."""
        return self.root / "allocations" / Path(cell_path).name

    def read_allocation(self, path: Path, key: Mapping) -> dict | None:
        """The allocation (``row``, ``plan``, ``warnings``, ...) kept at ``path`` for ``key``, or None."""
        found = load_json(path)
        if found is None:
            return None
        if not isinstance(found, dict) or found.pop("key", None) != plain_key(key) or not {"row", "plan"} <= set(found):
            set_aside(path, "is not the allocation of its cell (no row and plan, or another key)")
            return None
        return found

    def write(self, path: Path, key: Mapping, value: dict) -> None:
        atomic_write_text(path, json.dumps({**value, "key": plain_key(key)}, indent=1, default=float))

    def read_table(self, path: Path, candidate_bits) -> CostTable | None:
        if not path.exists():
            return None
        try:
            table = CostTable.from_json(path)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            set_aside(path, f"is not a cost table ({exc})")
            return None
        if tuple(table.bits) != tuple(candidate_bits):
            set_aside(path, f"has candidate bits {table.bits}, this run {tuple(candidate_bits)}")
            return None
        return table
