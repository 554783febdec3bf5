"""Optuna is told PRUNED (with the curve) for stopped trials, COMPLETE only for full-budget ones."""
import math

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch

from sweep.search import PrunedAwareOptunaSearch, SeedRepeater

MAX_T = 4
SPACE = {"x": FloatDistribution(0.0, 1.0)}


def curve(x: float, t: int, seed: int = 0) -> float:
    """Early values are inflated (they fall with t): a trial stopped at a rung looks better than it is."""
    return x + 2.0 / t + 0.05 * seed


def searcher(cls=PrunedAwareOptunaSearch):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return cls(space=SPACE, metric="score", mode="max", seed=0)


def run_trial(s, trial_id, x, steps, *, finished, seed=0, error=False):
    """Report ``steps`` results of ``trial_id`` (suggested with ``x``), then complete it."""
    last = None
    for t in range(1, steps + 1):
        last = {"score": curve(x, t, seed), "training_iteration": t, "train_finished": finished and t == steps}
        s.on_trial_result(trial_id, last)
    s.on_trial_complete(trial_id, result=last, error=error)


def ot_trial(s, trial_id):
    return s._ot_study.trials[s._ot_trials[trial_id].number]


# ---------------------------------------------------------------------------
# the searchers, driven directly


def test_stopped_trial_is_pruned_with_its_curve_and_best_trial_is_complete():
    stock, ours = searcher(OptunaSearch), searcher()
    for s in (stock, ours):
        xs = {tid: s.suggest(tid)["x"] for tid in ("full", "stopped")}
        run_trial(s, "full", xs["full"], MAX_T, finished=True)
        run_trial(s, "stopped", xs["stopped"], 1, finished=False)   # the scheduler stopped it at step 1
    assert ot_trial(stock, "stopped").state == TrialState.COMPLETE           # the stock behaviour
    got = ot_trial(ours, "stopped")
    assert got.state == TrialState.PRUNED
    assert got.intermediate_values == {1: pytest.approx(curve(got.params["x"], 1))}
    assert ot_trial(ours, "full").state == TrialState.COMPLETE
    assert ours._ot_study.best_trial.number == ot_trial(ours, "full").number


def test_an_errored_trial_is_fail_even_with_a_metric():
    s = searcher()
    x = s.suggest("t")["x"]
    run_trial(s, "t", x, 2, finished=False, error=True)
    assert ot_trial(s, "t").state == TrialState.FAIL


def _repeat(ids_seeds):
    rep = SeedRepeater(searcher(), repeat=2, set_index=True)
    configs = {tid: rep.suggest(tid) for tid in ids_seeds}
    return rep, configs


def test_seed_repeater_group_is_complete_only_when_every_seed_finished():
    rep, cfg = _repeat(["a0", "a1", "b0", "b1"])
    assert (cfg["a0"]["__trial_index__"], cfg["a1"]["__trial_index__"]) == (0, 1)
    assert cfg["a0"]["x"] == cfg["a1"]["x"] and cfg["b0"]["x"] == cfg["b1"]["x"]
    inner = rep.searcher
    run_trial(rep, "a0", cfg["a0"]["x"], MAX_T, finished=True, seed=0)
    assert ot_trial(inner, "a0").state == TrialState.RUNNING        # waits for the other seed
    run_trial(rep, "a1", cfg["a1"]["x"], MAX_T, finished=True, seed=1)
    run_trial(rep, "b0", cfg["b0"]["x"], MAX_T, finished=True, seed=0)
    run_trial(rep, "b1", cfg["b1"]["x"], 2, finished=False, seed=1)  # stopped at step 2
    a, b = ot_trial(inner, "a0"), ot_trial(inner, "b0")
    assert a.state == TrialState.COMPLETE
    assert a.value == pytest.approx((curve(a.params["x"], MAX_T, 0) + curve(a.params["x"], MAX_T, 1)) / 2)
    assert b.state == TrialState.PRUNED
    # per step, the mean over the seeds that reached it: both at 1-2, only seed 0 at 3-4
    xb = b.params["x"]
    assert b.intermediate_values == pytest.approx(
        {1: curve(xb, 1, 0.5), 2: curve(xb, 2, 0.5), 3: curve(xb, 3, 0), 4: curve(xb, 4, 0)})
    assert inner._ot_study.best_trial.number == a.number


def test_seed_repeater_group_with_an_errored_seed_fails():
    rep, cfg = _repeat(["a0", "a1"])
    run_trial(rep, "a0", cfg["a0"]["x"], MAX_T, finished=True)
    rep.on_trial_complete("a1", result=None, error=True)          # crashed before any report
    assert ot_trial(rep.searcher, "a0").state == TrialState.FAIL


# ---------------------------------------------------------------------------
# a real Tune run: ASHA stops trials, the searcher learns the truth


def curve_trainable(config):
    from ray import tune

    seed = config.get("__trial_index__", 0)
    for t in range(1, MAX_T + 1):
        tune.report({"score": curve(config["x"], t, seed), "train_finished": t == MAX_T})


@pytest.fixture(scope="module")
def ray_local():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _fit(tmp_path, search_alg, num_samples, name):
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    # one trial at a time: the TPE suggestions and ASHA's decisions are then deterministic
    asha = ASHAScheduler(time_attr="training_iteration", max_t=MAX_T, grace_period=1, reduction_factor=2)
    tuner = tune.Tuner(curve_trainable,
                       tune_config=tune.TuneConfig(metric="score", mode="max", search_alg=search_alg,
                                                   scheduler=asha, num_samples=num_samples,
                                                   max_concurrent_trials=1, reuse_actors=True),
                       run_config=tune.RunConfig(name=name, storage_path=str(tmp_path), verbose=0))
    results = tuner.fit()
    assert not results.errors
    return {r.metrics["trial_id"]: r.metrics_dataframe for r in results}


def test_tune_with_asha_tells_optuna_pruned_and_the_best_trial_ran_its_budget(ray_local, tmp_path):
    s = searcher()
    curves = _fit(tmp_path, s, 10, "pruned")
    stopped = [tid for tid, df in curves.items() if df["training_iteration"].max() < MAX_T]
    assert len(stopped) >= 3, "ASHA should stop many trials here"
    for tid, df in curves.items():
        got = ot_trial(s, tid)
        if tid in stopped:
            assert got.state == TrialState.PRUNED
            assert got.intermediate_values == pytest.approx(dict(zip(df["training_iteration"], df["score"])))
        else:
            assert got.state == TrialState.COMPLETE and got.value == pytest.approx(df["score"].iloc[-1])
    best = s._ot_study.best_trial
    best_tid = next(tid for tid in curves if s._ot_trials[tid].number == best.number)
    assert curves[best_tid]["training_iteration"].max() == MAX_T
    # not vacuous: told as COMPLETE (the stock searcher), a stopped trial's rung value would win
    last = {tid: df["score"].iloc[-1] for tid, df in curves.items()}
    assert max(last, key=last.get) in stopped


def test_tune_with_seed_repeater_counts_a_config_complete_only_if_all_seeds_finished(ray_local, tmp_path):
    rep = SeedRepeater(searcher(), repeat=2, set_index=True)
    curves = _fit(tmp_path, rep, 12, "seeds")
    inner = rep.searcher
    groups: dict = {}
    for tid in curves:
        groups.setdefault(rep._trial_id_to_group[tid].primary_trial_id, []).append(tid)
    assert len(groups) == 6 and all(len(m) == 2 for m in groups.values())
    states = set()
    for primary, members in groups.items():
        got = ot_trial(inner, primary)
        full = [curves[m]["training_iteration"].max() == MAX_T for m in members]
        assert got.state == (TrialState.COMPLETE if all(full) else TrialState.PRUNED)
        assert got.intermediate_values and min(got.intermediate_values) == 1
        states.add(got.state)
    assert states == {TrialState.COMPLETE, TrialState.PRUNED}
    best = inner._ot_study.best_trial
    primary = next(p for p in groups if inner._ot_trials[p].number == best.number)
    assert all(curves[m]["training_iteration"].max() == MAX_T for m in groups[primary])
    assert not math.isnan(best.value)
