"""studies/learning_curves.py: where each long run stands and how many more steps its trend needs."""

import re

import numpy as np
import pandas as pd
import pytest

from conftest import load_study


@pytest.fixture(scope="module")
def study():
    return load_study("learning_curves")


def test_trend_recovers_a_power_law_and_the_step_it_reaches_a_target(study):
    steps = np.arange(1000, 15000, 1000)
    a, b, c = 1.9, 40.0, 0.5
    fit = study.trend(steps, a + b * steps ** -c)
    assert fit[0] == pytest.approx(a, abs=0.01) and fit[2] == pytest.approx(c, rel=0.05)
    target = a + b * 40000 ** -c
    assert study.steps_to_reach(fit, target) == pytest.approx(40000, rel=0.05)
    assert study.steps_to_reach(fit, 1.5) == float("inf")  # below the asymptote: never


def test_a_flat_or_short_curve_has_no_trend(study):
    assert study.trend([1000, 2000, 3000, 4000], [2.0, 2.01, 2.02, 2.03]) is None
    assert study.trend([1000, 2000, 3000], [3.0, 2.5, 2.2]) is None
    assert np.isnan(study.steps_to_reach(None, 2.0))


def test_targets_are_the_best_peer_of_the_same_quality(study):
    rows = [{"run": "a-q4", "best_val_loss": 2.05}, {"run": "b-q4", "best_val_loss": 2.06},
            {"run": "c-q4", "best_val_loss": 2.4}, {"run": "c-q6", "best_val_loss": 1.0}]
    assert study.targets_of(rows) == {"b-q4": ("a-q4", 2.05), "c-q4": ("a-q4", 2.05)}


def test_main_writes_the_steps_the_trend_needs(tmp_path, study):
    steps = np.arange(0, 12001, 1000)
    loss = 2.0 + 30.0 * np.maximum(steps, 500) ** -0.5
    pd.DataFrame({"step": steps, "val_loss": loss, "lr": 1e-4}).to_csv(tmp_path / "slow-q4.csv", index=False)
    pd.DataFrame({"step": [0, 1000], "val_loss": [2.1, 2.05], "lr": 1e-4}).to_csv(tmp_path / "fast-q4.csv",
                                                                                 index=False)
    study.main(["--results", str(tmp_path)])
    text = (tmp_path / "learning_curves.md").read_text()
    expected = (30.0 / 0.05) ** 2  # 2.0 + 30 s^-0.5 = 2.05
    line = next(x for x in text.splitlines() if x.startswith("- slow-q4"))
    assert "fast-q4's best 2.050" in line
    step = float(re.search(r"near step ([\d,]+),", line).group(1).replace(",", ""))
    assert step == pytest.approx(expected, rel=0.05)
