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


def test_a_result_past_several_rungs_is_stopped_at_the_lowest_and_not_recorded_above():
    s = make(max_t=9, k=0.0)                          # rungs 1, 3, 9
    for t, v in [("a", 0.9), ("b", 0.8), ("c", 0.7)]:
        s.decide(t, 1, v, 0.0)
        s.decide(t, 3, v, 0.0)
    # d reports first at t=3 (e.g. evaluated every 3 epochs): rung 1 stops it, rung 3 never sees it
    assert s.decide("d", 3, 0.1, 0.0) == STOP
    assert "d" in s._recorded[0][1] and "d" not in s._recorded[0][3]


def test_tune_hook_reads_the_standard_error_from_the_result():
    from types import SimpleNamespace

    def run(se_key):
        s = make(k=1.0)
        for t, v in [("a", 0.60), ("b", 0.62), ("c", 0.64)]:
            s.on_trial_add(None, SimpleNamespace(trial_id=t))
            s.on_trial_result(None, SimpleNamespace(trial_id=t), {"grpo_epoch": 1, "acc_mean": v})
        d = SimpleNamespace(trial_id="d")
        s.on_trial_add(None, d)
        return s.on_trial_result(None, d, {"grpo_epoch": 1, "acc_mean": 0.58, se_key: 0.05})

    # 0.58 is 4.7 points under the cutoff 0.6267: within one SE of 5 points it continues ...
    assert run("acc_mean_se") == CONT
    # ... and without an SE (a metric reported without one) the same result is cut
    assert run("other_se") == STOP


def test_results_without_the_time_attribute_or_metric_are_ignored():
    from types import SimpleNamespace

    s = make(k=0.0)
    trial = SimpleNamespace(trial_id="a")
    assert s.on_trial_result(None, trial, {"acc_mean": 0.1}) == CONT           # RCE-phase style report
    assert s.on_trial_result(None, trial, {"grpo_epoch": 1}) == CONT
    assert all(not rec for b in s._recorded for rec in b.values())


@pytest.mark.parametrize("max_t, grace, rf, brackets", [(9, 1, 3, 1), (25, 7, 3, 1), (27, 1, 3, 2),
                                                        (8, 2, 2, 2), (12, 3, 3, 1)])
def test_rungs_are_rays_asha_rungs(max_t, grace, rf, brackets):
    from ray.tune.schedulers.async_hyperband import _Bracket

    s = make(max_t=max_t, grace_period=grace, reduction_factor=rf, brackets=brackets)
    ray_rungs = [sorted(m for m, _ in _Bracket(grace, max_t, rf, b)._rungs) for b in range(brackets)]
    assert s._brackets == ray_rungs
