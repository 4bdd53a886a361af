"""studies/qat_seed_spread.py: the spread over QAT seeds of each allocator's BD-rate and of the gaps."""

import pandas as pd
import pytest

from conftest import load_study


@pytest.fixture(scope="module")
def study():
    return load_study("qat_seed_spread")


def write_bd(folder, rows):
    folder.mkdir(parents=True)
    pd.DataFrame(rows).to_csv(folder / "bd_rate.csv", index=False)


def rows(convex, iqp, ilp_verify=None, budget=4.0):
    out = [{"allocator": "convex", "mode": "qat", "budget": budget, "bd_rate_vs_fp32_qat_pct": convex},
           {"allocator": "iqp", "mode": "qat", "budget": budget, "bd_rate_vs_fp32_qat_pct": iqp},
           {"allocator": "convex", "mode": "ptq", "budget": budget, "bd_rate_vs_fp32_qat_pct": float("nan")}]
    if ilp_verify is not None:
        out.append({"allocator": "ilp+verify", "mode": "qat", "budget": budget, "bd_rate_vs_fp32_qat_pct": ilp_verify})
    return out


def test_spread_over_seeds_keeps_the_allocators_every_seed_has(tmp_path, study):
    write_bd(tmp_path / "compare_m_noise", rows(10.0, 16.0, 13.0))  # seed 0: the committed study
    write_bd(tmp_path / "qat_seed" / "compare_m_seed1", rows(14.0, 12.0))
    write_bd(tmp_path / "qat_seed" / "compare_m_seed2", rows(12.0, 11.0))
    write_bd(tmp_path / "qat_seed" / "compare_other_seed1", rows(0.0, 0.0))  # another model: not read
    frames = study.seed_frames("m", tmp_path)
    assert sorted(frames) == [0, 1, 2]
    summary, gaps = study.spread(frames, 4.0)
    assert list(summary.index) == ["convex", "iqp"]  # ilp+verify is missing at seeds 1, 2: left out
    assert summary.loc["convex", "mean"] == pytest.approx(12.0) and summary.loc["convex", "sd"] == pytest.approx(2.0)
    assert summary.loc["iqp", "best at seeds"] == "1, 2" and summary.loc["convex", "best at seeds"] == "0"
    assert gaps.loc["iqp", 0] == pytest.approx(6.0)
    diffs = study.pair_gaps(summary, [0, 1, 2], "convex")
    assert list(diffs.loc["iqp", ["seed 0", "seed 1", "seed 2"]]) == pytest.approx([6.0, -2.0, -1.0])
    assert diffs.loc["iqp", "mean"] == pytest.approx(1.0)


def test_missing_study_and_missing_budget_are_named(tmp_path, study):
    with pytest.raises(FileNotFoundError, match="seed 0"):
        study.seed_frames("m", tmp_path)
    write_bd(tmp_path / "compare_m_noise", rows(10.0, 16.0))
    with pytest.raises(ValueError, match="6-bit budget"):
        study.spread(study.seed_frames("m", tmp_path), 6.0)


def test_main_writes_the_table(tmp_path, study):
    write_bd(tmp_path / "compare_m_noise", rows(10.0, 16.0))
    write_bd(tmp_path / "qat_seed" / "compare_m_seed1", rows(14.0, 12.0))
    study.main(["--model", "m", "--budget", "4", "--results", str(tmp_path)])
    text = (tmp_path / "qat_seed" / "m_4bits.md").read_text()
    assert "| iqp |" in text and "seeds [0, 1]" in text
    with pytest.raises(SystemExit):
        study.main(["--model", "m", "--results", str(tmp_path), "--reference", "greedy"])
