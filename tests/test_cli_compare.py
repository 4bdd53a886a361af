"""``bitalloc compare --workers N`` and ``--scheduler ADDRESS``: the study runs on a local pool or on a Dask
cluster's executor (issue 15, items 1 and 2); an unreachable scheduler is refused before any work, naming it."""

import operator

import pandas as pd
import pytest
import test_cli

from bitalloc.cli import main
from bitalloc.harness import StudySpec

_refused = test_cli._refused
data, no_work = test_cli.data, test_cli.no_work  # fixtures: a tiny data root; every command's work fails loudly


@pytest.fixture
def fake_study(monkeypatch):
    """run_study and write_report that record their arguments; run_study runs one task on the executor it gets."""
    import bitalloc.harness
    import bitalloc.report

    seen = {}

    class Result:
        ranking = pd.DataFrame({"allocator": ["ilp"]})

    def run_study(spec, out, data=None, workers=1, executor=None):
        seen.update(spec=spec, workers=workers, executor=type(executor).__name__,
                    ran=executor.submit(operator.add, 2, 3).result(timeout=60) if executor is not None else None)
        return Result()

    def write_report(result, out, command, machine, layers):
        seen["machine"] = machine
        return f"{out}/report.md"

    monkeypatch.setattr(bitalloc.harness, "run_study", run_study)
    monkeypatch.setattr(bitalloc.report, "write_report", write_report)
    return seen


def test_compare_runs_on_the_executor_of_a_dask_scheduler(tmp_path, data, fake_study):
    from dask.distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        assert main(["compare", "--quick", "--allocators", "ilp", "--data", str(data), "--out", str(tmp_path / "s"),
                     "--scheduler", cluster.scheduler_address]) == 0
    assert fake_study["ran"] == 5 and fake_study["executor"] == "ClientExecutor"
    assert fake_study["machine"].endswith(f"Dask scheduler {cluster.scheduler_address}")


def test_compare_refuses_a_scheduler_that_does_not_answer(capsys, monkeypatch, tmp_path, data, no_work):
    import bitalloc.cli_compare

    monkeypatch.setattr(bitalloc.cli_compare, "SCHEDULER_TIMEOUT_S", 1)
    _refused(capsys, ["compare", "--data", str(data), "--out", str(tmp_path / "s"), "--scheduler",
                      "tcp://127.0.0.1:9"], "--scheduler", "no Dask scheduler answered at tcp://127.0.0.1:9 within 1 s")
    _refused(capsys, ["compare", "--data", str(data), "--out", str(tmp_path / "s"), "--workers", "0"], "--workers",
             "must be a positive integer, got '0'")
    assert not (tmp_path / "s").exists()


def test_compare_takes_the_table_fit(tmp_path, capsys, data, fake_study):
    assert main(["compare", "--quick", "--allocators", "ilp", "--data", str(data), "--out", str(tmp_path / "s"),
                 "--table-fit", "clip"]) == 0
    assert fake_study["spec"].table_fit == "clip"
    assert main(["compare", "--quick", "--allocators", "ilp", "--data", str(data), "--out", str(tmp_path / "s")]) == 0
    assert fake_study["spec"].table_fit == "noise"  # noise-aware tables by default
    _refused(capsys, ["compare", "--data", str(data), "--out", str(tmp_path / "s"), "--table-fit", "isotonic"],
             "--table-fit", "invalid choice: 'isotonic'")


def test_compare_takes_qat_aware_allocators_and_their_recovery(tmp_path, capsys, data, fake_study):
    assert main(["compare", "--quick", "--allocators", "ilp", "ilp+qat", "--modes", "ptq", "qat", "--data", str(data),
                 "--out", str(tmp_path / "s"), "--recovery-steps", "10", "--recovery-crop", "64"]) == 0
    spec = fake_study["spec"]
    assert spec.allocators == ("ilp", "ilp+qat") and (spec.recovery_steps, spec.recovery_crop) == (10, 64)
    _refused(capsys, ["compare", "--quick", "--allocators", "ilp+qat", "--data", str(data), "--out",
                      str(tmp_path / "s")], "--allocators/--modes", "add 'qat' to modes")
    _refused(capsys, ["compare", "--quick", "--allocators", "ilp+qat", "--modes", "qat", "--data", str(data),
                      "--out", str(tmp_path / "s"), "--recovery-steps", "0"], "--recovery-steps",
             "must be a positive integer")


def test_compare_takes_the_verify_settings(tmp_path, capsys, data, fake_study):
    assert main(["compare", "--quick", "--allocators", "ilp+verify", "ilp+verify+qat", "--modes", "qat", "--data",
                 str(data), "--out", str(tmp_path / "s"), "--verify-tolerance", "0.01", "--verify-max-evals", "4",
                 "--verify-noise-z", "2"]) == 0
    spec = fake_study["spec"]
    assert spec.allocators == ("ilp+verify", "ilp+verify+qat")
    assert (spec.verify_tolerance, spec.verify_max_evals, spec.verify_noise_z) == (0.01, 4, 2.0)
    with pytest.raises(ValueError, match="verify_noise_z must be a finite number >= 0"):
        StudySpec(verify_noise_z=-1)
    _refused(capsys, ["compare", "--quick", "--data", str(data), "--out", str(tmp_path / "s"), "--verify-tolerance",
                      "-1"], "--verify-tolerance", "must be a finite number >= 0")
    with pytest.raises(ValueError, match="verify_tolerance must be a finite number >= 0"):
        StudySpec(verify_tolerance=float("nan"))
    assert main(["compare", "--quick", "--allocators", "ilp+verify", "--data", str(data), "--out",
                 str(tmp_path / "c"), "--verify-correction", "context", "--verify-max-evals", "72"]) == 0
    assert (fake_study["spec"].verify_correction, fake_study["spec"].verify_max_evals) == ("context", 72)
    _refused(capsys, ["compare", "--quick", "--allocators", "ilp+verify", "ilp+verify+qat", "--modes", "qat",
                      "--data", str(data), "--out", str(tmp_path / "c"), "--verify-correction", "context"],
             "--allocators/--modes", "PTQ repairs only")


def test_compare_takes_bias_correction_for_ptq_only(tmp_path, capsys, data, fake_study):
    assert main(["compare", "--quick", "--allocators", "ilp", "--data", str(data), "--out", str(tmp_path / "b"),
                 "--bias-correction"]) == 0
    assert (fake_study["spec"].bias_correction, fake_study["spec"].bias_choice) == (True, False)
    assert main(["compare", "--quick", "--allocators", "ilp", "--data", str(data), "--out", str(tmp_path / "c"),
                 "--bias-correction", "chosen"]) == 0
    assert (fake_study["spec"].bias_correction, fake_study["spec"].bias_choice) == (True, True)
    assert main(["compare", "--quick", "--allocators", "ilp", "--data", str(data), "--out", str(tmp_path / "p")]) == 0
    assert (fake_study["spec"].bias_correction, fake_study["spec"].bias_choice) == (False, False)
    _refused(capsys, ["compare", "--quick", "--modes", "qat", "--data", str(data), "--out", str(tmp_path / "q"),
                      "--bias-correction"], "--allocators/--modes", "corrects PTQ models only")
