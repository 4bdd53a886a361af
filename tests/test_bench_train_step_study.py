"""studies/bench_train_step.py: one row per setting, each size against the compact one at the same setting."""

import argparse

import pytest

from conftest import load_study


@pytest.fixture(scope="module")
def study():
    return load_study("bench_train_step")


def test_every_setting_is_timed_against_the_compact_size(tmp_path, study):
    out = tmp_path / "bench.md"
    assert study.main(["--sizes", "16,24", "--shapes", "64x2", "--threads", "1", "--steps", "1", "--warmup", "0",
                       "--out", str(out)]) == 0
    rows = [line.split("|")[1:-1] for line in out.read_text().splitlines() if line.startswith("| 4") or
            line.startswith("| 1")]
    assert len(rows) == 4  # 2 sizes (the compact first) x 2 formats
    by_size = {(r[0].strip(), r[2].strip()): float(r[-1]) for r in rows}
    assert by_size[("48,64", "contiguous")] == 1.0 and by_size[("48,64", "channels_last")] == 1.0
    assert by_size[("16,24", "contiguous")] > 0


@pytest.mark.parametrize("parse, text", [("pair", "96x192"), ("shape", "256,4")])
def test_malformed_settings_are_named(study, parse, text):
    with pytest.raises(argparse.ArgumentTypeError, match=repr(text)):
        getattr(study, parse)(text)
