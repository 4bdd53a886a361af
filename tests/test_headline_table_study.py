"""studies/headline_table.py prints the headline table each committed study's report.md opens with (one table,
built by bitalloc.report.headline_table, not a second copy of it), and the QAT gain of the float model."""

from pathlib import Path

import pytest
from conftest import load_study

SCRIPT = Path(__file__).resolve().parents[1] / "studies" / "headline_table.py"
RESULTS = SCRIPT.parent / "results"


@pytest.fixture(scope="module")
def study():
    return load_study("headline_table")


def test_it_prints_the_table_every_committed_report_opens_with(study, capsys):
    folders = sorted(RESULTS.glob("compare_*"))
    assert folders
    study.main([])
    out = capsys.readouterr().out
    for folder in folders:
        opening = (folder / "report.md").read_text().split("\n\n")[1]
        assert opening.startswith("| mode | budget | rank | allocator |")
        assert f"### {folder.name.removeprefix('compare_')}\n\n{opening}\n" in out, folder.name
    assert "FP32 + the same QAT steps against FP32, per quality: bpp q1 " in out


def test_a_missing_study_is_named(study, tmp_path):
    (tmp_path / "compare_m").mkdir()
    with pytest.raises(SystemExit, match=r"compare_m/ranking.csv not found; run studies/compare_allocators.py "
                                         r"--model m"):
        study.main(["--results", str(tmp_path)])
