import csv

import pytest
from ray.tune.schedulers import TrialScheduler

from sweep.schedulers import NoiseAwareASHA

CONT, STOP = TrialScheduler.CONTINUE, TrialScheduler.STOP


def make(tmp_path=None, **kw):
    args = dict(time_attr="grpo_epoch", metric="acc_mean", max_t=9, grace_period=1, reduction_factor=3, k=1.0)
    args.update(kw)
    if tmp_path is not None:
        args["decisions_path"] = str(tmp_path / "decisions.csv")
    return NoiseAwareASHA(**args)


def test_second_trial_slightly_below_a_single_recorded_value_continues():
    # stock ASHA stops this one: the cutoff of a rung holding one value is that value
    s = make()
    assert s.decide("a", 1, 0.60, 0.03) == CONT
    assert s.decide("b", 1, 0.58, 0.03) == CONT


def test_no_stop_before_the_rung_holds_reduction_factor_results():
    s = make(k=0.0)
    assert [s.decide(t, 1, v, 0.0) for t, v in [("a", 0.9), ("b", 0.1), ("c", 0.05)]] == [CONT, CONT, CONT]
    # now 3 results are recorded: cutoff = 66.7th percentile of {0.9, 0.1, 0.05} = 0.3667
    assert s.decide("d", 1, 0.2, 0.0) == STOP


def test_stops_only_beyond_k_standard_errors(tmp_path):
    s = make(tmp_path, k=2.0)
    for t, v in [("a", 0.60), ("b", 0.62), ("c", 0.64)]:
        s.decide(t, 1, v, 0.02)
    # cutoff for d = 66.7th pct of {.60,.62,.64} = 0.6267: 0.60 is within 2 SE (0.04) and continues;
    # for e the rung also holds d: pct of {.60,.60,.62,.64} = 0.62, and 0.55 < 0.62 - 0.04 stops
    assert s.decide("d", 1, 0.60, 0.02) == CONT
    assert s.decide("e", 1, 0.55, 0.02) == STOP
    rows = list(csv.DictReader(open(tmp_path / "decisions.csv")))
    assert [r["decision"] for r in rows][-2:] == ["continue (within noise)", "stop"]
    assert float(rows[-2]["cutoff"]) == pytest.approx(0.626667, abs=1e-5)
    assert float(rows[-1]["cutoff"]) == pytest.approx(0.62)
    assert set(rows[0]) == {"trial", "rung", "value", "cutoff", "se", "n_recorded", "decision"}


def test_each_rung_is_decided_once_and_budget_end_stops():
    s = make(max_t=3, k=0.0)
    for t in "abc":
        s.decide(t, 1, 0.5, 0.0)
    assert s.decide("d", 1, 0.4, 0.0) == STOP
    assert s.decide("a", 2, 0.1, 0.0) == CONT        # rung 1 already decided for a; rung 3 not reached
    assert s.decide("a", 3, 0.1, 0.0) == STOP         # max_t reached


def test_minimise_mode_flips_the_comparison():
    s = make(mode="min", k=0.0)
    for t, v in [("a", 1.0), ("b", 2.0), ("c", 3.0)]:
        s.decide(t, 1, v, 0.0)
    assert s.decide("d", 1, 5.0, 0.0) == STOP and s.decide("e", 1, 0.5, 0.0) == CONT
