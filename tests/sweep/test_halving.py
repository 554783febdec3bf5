"""Synchronous successive halving: the rung barrier, who goes on, resume, and a real Tune run."""
import csv
import json
import os
from types import SimpleNamespace

import pytest
from ray.tune.experiment import Trial
from ray.tune.schedulers import TrialScheduler

from sweep.halving import SuccessiveHalving, milestones

CONT, STOP, PAUSE = TrialScheduler.CONTINUE, TrialScheduler.STOP, TrialScheduler.PAUSE


class Controller:
    """What the scheduler may call on Tune's controller: stop_trial (which calls back on_trial_remove)."""

    def __init__(self):
        self.sched = None

    def stop_trial(self, trial):
        trial.status = Trial.TERMINATED
        self.sched.on_trial_remove(self, trial)


def cohort(n, tmp_path=None, **kw):
    args = dict(time_attr="grpo_epoch", metric="acc_mean", max_t=9, grace_period=1, reduction_factor=3,
                num_trials=n)
    args.update(kw)
    if tmp_path is not None:
        args["decisions_path"] = str(tmp_path / "decisions.csv")
    s, tc = SuccessiveHalving(**args), Controller()
    tc.sched = s
    trials = [SimpleNamespace(trial_id=f"t{i}", status=Trial.PENDING, last_result={}) for i in range(n)]
    for t in trials:
        s.on_trial_add(tc, t)
    return s, tc, trials


def report(s, tc, trial, epoch, acc, **extra):
    trial.status = Trial.RUNNING
    action = s.on_trial_result(tc, trial, {"grpo_epoch": epoch, "acc_mean": acc, "acc_mean_se": 0.02, **extra})
    trial.status = {PAUSE: Trial.PAUSED, STOP: Trial.TERMINATED}.get(action, Trial.RUNNING)
    if action == STOP:
        s.on_trial_complete(tc, trial, {})
    return action


def test_rungs_lie_below_the_budget():
    assert milestones(1, 3, 9) == [1, 3] and milestones(5, 3, 25) == [5, 15] and milestones(7, 3, 25) == [7, 21]
    assert milestones(3, 3, 25) == [3, 9] and milestones(25, 3, 25) == [] and milestones(2, 1.5, 8) == [2, 3, 4, 7]


def test_every_trial_waits_at_the_rung_then_the_best_third_goes_on(tmp_path):
    s, tc, trials = cohort(6, tmp_path)
    accs = [0.50, 0.70, 0.60, 0.40, 0.65, 0.55]
    actions = [report(s, tc, t, 1, a) for t, a in zip(trials, accs)]
    assert actions[:5] == [PAUSE] * 5
    assert actions[5] == STOP                               # the last arrival decides the rung: 0.55 is out
    assert [t.status for t in trials] == [Trial.TERMINATED, Trial.PAUSED, Trial.TERMINATED, Trial.TERMINATED,
                                          Trial.PAUSED, Trial.TERMINATED]
    assert s.choose_trial_to_run(tc) is trials[1]          # the kept trials are resumed, in Tune's order
    trials[1].status = Trial.PENDING
    assert s.choose_trial_to_run(tc) is trials[1]           # until it runs: pending trials come first
    assert report(s, tc, trials[1], 2, 0.71) == CONT
    assert s.choose_trial_to_run(tc) is trials[4]
    assert report(s, tc, trials[4], 2, 0.66) == CONT
    assert s.choose_trial_to_run(tc) is None
    assert report(s, tc, trials[1], 3, 0.60) == PAUSE      # rung 3 waits for trial 4 too
    assert s.choose_trial_to_run(tc) is None                 # a waiting trial is never resumed early
    assert report(s, tc, trials[4], 3, 0.68) == CONT        # max(1, floor(2 / 3)) = 1 goes on: trial 4
    assert trials[1].status == Trial.TERMINATED
    assert [report(s, tc, trials[4], e, 0.7) for e in range(4, 10)] == [CONT] * 5 + [STOP]
    rows = list(csv.DictReader(open(tmp_path / "decisions.csv")))
    assert [(r["trial"], r["rung"], r["decision"]) for r in rows[:2]] == [("t1", "1", "continue"),
                                                                         ("t4", "1", "continue")]
    assert sum(r["decision"] == "stop" for r in rows) == 5 and float(rows[0]["cutoff"]) == 0.65


def test_no_decision_before_the_whole_sweep_exists():
    s, tc, trials = cohort(3, num_trials=4)
    assert [report(s, tc, t, 1, 0.5 + i / 10) for i, t in enumerate(trials)] == [PAUSE] * 3
    late = SimpleNamespace(trial_id="t3", status=Trial.PENDING, last_result={})
    s.on_trial_add(tc, late)
    assert s.choose_trial_to_run(tc) is late
    assert report(s, tc, late, 1, 0.1) == STOP and trials[2].status == Trial.PAUSED   # floor(4/3) = 1 kept


def test_a_trial_that_dies_or_finishes_early_does_not_hold_the_rung():
    s, tc, trials = cohort(4)
    assert report(s, tc, trials[0], 1, 0.9) == PAUSE
    assert report(s, tc, trials[1], 1, 0.2) == PAUSE
    assert report(s, tc, trials[2], 1, 0.5, train_finished=True) == CONT   # early-stopped: it ends itself
    s.on_trial_complete(tc, trials[2], {})
    trials[3].status = Trial.ERROR
    s.on_trial_error(tc, trials[3])                      # the last one errors before the rung
    assert trials[1].status == Trial.PAUSED              # decided on Tune's next step, not inside the error
    assert s.choose_trial_to_run(tc) is trials[0]         # ... keeping max(1, floor(2 / 3)) of the live ones
    assert trials[1].status == Trial.TERMINATED


def test_a_retried_trial_is_waited_for_again():
    s, tc, trials = cohort(3)
    assert report(s, tc, trials[0], 1, 0.9) == PAUSE
    assert report(s, tc, trials[1], 1, 0.2) == PAUSE
    s.on_trial_error(tc, trials[2])                      # --max-failures: Tune re-adds it at once
    trials[2].status = Trial.PENDING
    s.on_trial_add(tc, trials[2])
    assert s.choose_trial_to_run(tc) is trials[2]         # not decided without it
    assert trials[1].status == Trial.PAUSED
    assert report(s, tc, trials[2], 1, 0.5) == STOP and trials[1].status == Trial.TERMINATED


def test_a_resumed_sweep_rebuilds_the_rungs_from_the_last_results():
    # Before the kill: rung 1 kept t1 and t4 (t0 pruned there); t4 went on to epoch 2; t1 was kept but had
    # not run again; rung 3 is undecided. t2, t3, t5 were pruned at rung 1.
    s, tc = SuccessiveHalving(time_attr="grpo_epoch", metric="acc_mean", max_t=9, grace_period=1,
                              reduction_factor=3, num_trials=6), Controller()
    tc.sched = s
    last = {"t0": (1, Trial.TERMINATED), "t1": (1, Trial.PENDING), "t2": (1, Trial.TERMINATED),
            "t3": (1, Trial.TERMINATED), "t4": (2, Trial.PENDING), "t5": (1, Trial.TERMINATED)}
    trials = {tid: SimpleNamespace(trial_id=tid, status=st, last_result={"grpo_epoch": e, "acc_mean": 0.5})
              for tid, (e, st) in last.items()}
    for t in trials.values():
        s.on_trial_add(tc, t)
    assert report(s, tc, trials["t1"], 2, 0.6) == CONT     # rung 1 was decided: t1 was kept
    assert report(s, tc, trials["t4"], 3, 0.7) == PAUSE
    assert report(s, tc, trials["t1"], 3, 0.6) == STOP      # rung 3: t4 is better
    assert trials["t4"].status == Trial.PAUSED and s.choose_trial_to_run(tc) is trials["t4"]


def test_minimise_mode_keeps_the_smallest():
    s, tc, trials = cohort(3, mode="min")
    assert [report(s, tc, t, 1, v) for t, v in zip(trials, [0.3, 0.1, 0.2])] == [PAUSE, PAUSE, STOP]
    assert trials[0].status == Trial.TERMINATED and trials[1].status == Trial.PAUSED


def test_auto_picks_halving_when_the_sweep_is_known_up_front():
    from argparse import Namespace

    from sweep.experiment import scheduler_name
    from sweep.tuner import SchedulerOptions

    def pick(**kw):
        return scheduler_name(Namespace(**{"scheduler": "auto", "search": "grid", "max_concurrent": None, **kw}))

    assert pick() == "sha" and pick(search="random") == "sha"
    assert pick(search="optuna-tpe") == "asha" and pick(max_concurrent=2) == "asha"
    assert pick(scheduler="noise-asha") == "noise-asha"
    assert SchedulerOptions("sha", max_t=25).grace() == 5 and SchedulerOptions("asha", max_t=25).grace() == 7
    assert SchedulerOptions("sha", max_t=4).grace() == 1 and SchedulerOptions("sha", max_t=25, grace_period=3).grace() == 3


# ------------------------------------------------------------------------------- a real Tune run

@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": os.getcwd()}})
    yield
    ray.shutdown()


def test_trials_pause_at_the_rung_and_the_kept_ones_resume_from_their_checkpoints(ray_local, tmp_path):
    from ray import tune

    from sweep.tuner import SchedulerOptions, make_scheduler, make_tuner
    from tests.trainer.conftest import make_tiny_task
    from tests.trainer.test_trainable import TinySource
    from trainer.loop import fit_sft
    from trainer.task import WarmStart
    from trainer.trainable import icd_trainable

    cfg, task = make_tiny_task(rce_epochs=0, grpo_epochs=4)
    warm = WarmStart(fit_sft(cfg, task, log=lambda s: None))
    base = {k: v for k, v in cfg.to_dict().items() if k in ("hidden_dim", "sft_epochs", "rce_epochs",
                                                              "grpo_epochs", "batch_size", "grpo_lr")}
    sched = make_scheduler(SchedulerOptions(name="sha", max_t=4, grace_period=1, num_trials=6,
                                            decisions_path=str(tmp_path / "decisions.csv")))
    tuner = make_tuner(tune.with_parameters(icd_trainable, source=TinySource(), warm=warm),
                       param_space={**base, "grpo_lr": tune.grid_search([1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2])},
                       num_samples=1, metric="acc_mean", scheduler=sched, search_alg=None, name="sha",
                       storage_path=str(tmp_path), cpus_per_trial=1, gpus_per_trial=0, max_failures=0,
                       max_concurrent=None, verbose=0)
    results = tuner.fit()
    assert len(results) == 6 and not results.errors
    done = sorted(r.metrics["grpo_epoch"] for r in results)
    assert done == [1, 1, 1, 1, 3, 4]                # rungs 1 and 3: 6 -> 2 -> 1
    rows = list(csv.DictReader(open(tmp_path / "decisions.csv")))
    at_1 = {r["trial"]: float(r["value"]) for r in rows if r["rung"] == "1"}
    kept = {r["trial"] for r in rows if r["rung"] == "1" and r["decision"] == "continue"}
    assert len(at_1) == 6 and kept == set(sorted(at_1, key=at_1.get)[-2:])
    for r in results:                                 # a resumed trial's reports continue where it paused
        epochs = [json.loads(line)["grpo_epoch"] for line in open(os.path.join(r.path, "result.json"))]
        assert epochs == list(range(1, r.metrics["grpo_epoch"] + 1))
