"""Synchronous successive halving: every trial reaches a rung before any of them goes past it.

ASHA decides each trial when it arrives at a rung, against whatever the rung holds by
then. On a small grid (a 20-trial study on two cores) that makes the budget depend on
the order the trials happen to run in: the first trials find their rungs empty and run
to the end, a later block of seeds that happens to be ahead at a rung is promoted
whole, and trials whose values tie the cutoff continue (bench/RESULTS.md, "Pruning
pays"). Successive halving waits instead: a trial that reaches rung k pauses (Tune saves
its checkpoint and frees its resources) until every trial promoted to rung k has
reported there, died or finished; then the best ``floor(n / reduction_factor)`` (at
least one) continue from their checkpoints and the rest stop. The GRPO budget is then
fixed by the rung schedule alone: with n trials, rungs g, g*rf, ... below max_t, it is
``n*g + floor(n/rf)*(g*rf - g) + ...``.

It needs the whole cohort up front: ``num_trials`` is the sweep's trial count, so the
searcher must enumerate every trial (grid/random) without a concurrency limit. After a
``--resume`` the state is rebuilt from the trials' last results: a rung that some trial
has passed was decided, and the live trials still at it were the ones kept.
"""
from __future__ import annotations

import math

from ray.tune.experiment import Trial
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from sweep.schedulers import log_decision


def milestones(grace_period: int, reduction_factor: float, max_t: int) -> list[int]:
    """Rung times grace, grace*rf, ... strictly below max_t (max_t itself ends a trial)."""
    out, t = [], float(grace_period)
    while round(t) < max_t:
        if not out or round(t) > out[-1]:
            out.append(int(round(t)))
        t *= reduction_factor
    return out


class SuccessiveHalving(FIFOScheduler):
    def __init__(self, *, time_attr: str, metric: str | None = None, mode: str = "max", max_t: int,
                 grace_period: int, reduction_factor: float = 3.0, num_trials: int,
                 decisions_path: str | None = None):
        super().__init__()
        if reduction_factor <= 1 or not 1 <= grace_period <= max_t or num_trials < 1:
            raise ValueError("SuccessiveHalving: need reduction_factor > 1, 1 <= grace_period <= max_t, "
                             "num_trials >= 1")
        self._time_attr, self._metric, self._sign = time_attr, metric, 1.0 if mode == "max" else -1.0
        self._max_t, self._rf, self._num_trials = max_t, reduction_factor, num_trials
        self._rungs = milestones(grace_period, reduction_factor, max_t)
        self._decisions_path = decisions_path
        self._trials: dict[str, Trial] = {}                   # in the order Tune added them
        self._at: dict[str, dict[int, tuple[float, float]]] = {}  # trial -> rung -> (signed value, se)
        self._time: dict[str, float] = {}                     # latest reported time_attr
        self._dead: set[str] = set()                          # completed, errored or stopped
        self._kept: dict[int, set[str]] = {}                  # decided rungs -> the trials that went on
        self._to_resume: dict[str, None] = {}                 # kept trials to go on once paused (ordered)

    def set_search_properties(self, metric, mode, **spec) -> bool:
        if metric and self._metric and metric != self._metric:
            return False
        self._metric = metric or self._metric
        if mode:
            self._sign = 1.0 if mode == "max" else -1.0
        return True

    # -- Tune's hooks ---------------------------------------------------------------------

    def on_trial_add(self, tune_controller, trial: Trial) -> None:
        tid = trial.trial_id
        self._trials[tid] = trial
        self._at.setdefault(tid, {})
        if trial.status in (Trial.TERMINATED, Trial.ERROR):
            self._dead.add(tid)
        else:  # a retried trial (--max-failures) is reported as errored, then added again
            self._dead.discard(tid)
        last = trial.last_result or {}
        if self._time_attr in last and self._metric in last:  # restored after a kill
            self._record(tid, last)

    def on_trial_result(self, tune_controller, trial: Trial, result: dict) -> str:
        if self._time_attr not in result or self._metric not in result:
            return TrialScheduler.CONTINUE
        tid = trial.trial_id
        self._to_resume.pop(tid, None)  # it runs
        t = self._record(tid, result)
        if t >= self._max_t:
            return TrialScheduler.STOP  # the budget is spent
        if result.get("train_finished"):
            return TrialScheduler.CONTINUE  # it ends by itself (early stopping); on_trial_complete follows
        self._infer_decided()
        for k, m in enumerate(self._rungs):
            if t < m:
                break
            if k in self._kept:
                if tid not in self._kept[k]:
                    return TrialScheduler.STOP
                continue
            if not self._ready(k):
                return TrialScheduler.PAUSE  # waits for the rest of the rung
            if not self._decide(tune_controller, k, current=tid):
                return TrialScheduler.STOP
        return TrialScheduler.CONTINUE

    def on_trial_complete(self, tune_controller, trial: Trial, result: dict) -> None:
        self._gone(tune_controller, trial)

    def on_trial_error(self, tune_controller, trial: Trial) -> None:
        self._gone(tune_controller, trial)

    def on_trial_remove(self, tune_controller, trial: Trial) -> None:
        self._gone(tune_controller, trial)

    def choose_trial_to_run(self, tune_controller) -> Trial | None:
        """New trials first (they must reach the first rung), then kept trials waiting to go on.

        A paused trial that waits for its rung's decision is never chosen (FIFO would resume it).
        Rungs left waiting only for trials that have ended are decided here, on Tune's next step:
        by then a trial that is retried has been added again and is waited for.
        """
        self._infer_decided()
        for k in range(len(self._rungs)):
            if k not in self._kept and self._ready(k):
                self._decide(tune_controller, k, current=None)
        for trial in self._trials.values():
            if trial.status == Trial.PENDING:
                return trial
        for tid in list(self._to_resume):
            trial = self._trials[tid]
            if trial.status == Trial.PAUSED:
                return trial
            if trial.status in (Trial.TERMINATED, Trial.ERROR):
                self._to_resume.pop(tid)
        return None  # a kept trial still being paused is resumed once it is

    def debug_string(self) -> str:
        kept = ", ".join(f"rung {self._rungs[k]}: {len(v)} kept" for k, v in sorted(self._kept.items()))
        return f"SuccessiveHalving: rungs {self._rungs} of max_t {self._max_t}; {kept or 'no rung decided yet'}"

    # -- bookkeeping ----------------------------------------------------------------------

    def _record(self, tid: str, result: dict) -> float:
        """The first result at or past each rung is the trial's value there; returns its time."""
        t = float(result[self._time_attr])
        self._time[tid] = max(t, self._time.get(tid, 0.0))
        value = self._sign * float(result[self._metric])
        se = result.get(f"{self._metric}_se")
        for k, m in enumerate(self._rungs):
            if t >= m and k not in self._at[tid]:
                self._at[tid][k] = (value, se if isinstance(se, (int, float)) else math.nan)
        return t

    def _cohort(self, k: int) -> list[str]:
        return list(self._trials) if k == 0 else [t for t in self._trials if t in self._kept.get(k - 1, ())]

    def _ready(self, k: int) -> bool:
        """Rung k can be decided: the one before is, and every trial sent to it is there or gone."""
        if k > 0 and k - 1 not in self._kept:
            return False
        if k == 0 and len(self._trials) < self._num_trials:
            return False  # some trials of the sweep have not been created yet
        return all(k in self._at[t] or t in self._dead for t in self._cohort(k))

    def _infer_decided(self) -> None:
        """After a resume: a rung some trial has passed was decided; the live trials at it were kept."""
        for k, m in enumerate(self._rungs):
            if k in self._kept or not any(t > m for t in self._time.values()):
                continue
            self._kept[k] = {tid for tid, t in self._time.items()
                             if t > m or (t == m and tid not in self._dead)}

    def _decide(self, tune_controller, k: int, current: str | None) -> bool:
        """Keep the best floor(n / rf) of rung k (ties: the earlier trial); True if ``current`` is kept."""
        ranked = [t for t in self._cohort(k) if k in self._at[t] and t not in self._dead]
        ranked.sort(key=lambda t: -self._at[t][k][0])  # stable: ties keep Tune's order
        n_keep = max(1, math.floor(len(ranked) / self._rf)) if ranked else 0
        keep = set(ranked[:n_keep])
        self._kept[k] = keep  # before stopping others: Tune calls back on_trial_remove
        cutoff = self._at[ranked[n_keep - 1]][k][0] if ranked else math.nan
        for tid in ranked:
            value, se = self._at[tid][k]
            log_decision(self._decisions_path, tid, self._rungs[k], self._sign * value, self._sign * cutoff, se,
                         len(ranked), "continue" if tid in keep else "stop")
            trial = self._trials[tid]
            if tid == current:
                continue
            if tid in keep:
                if trial.status in (Trial.PAUSED, Trial.RUNNING):  # RUNNING: its pause is under way
                    self._to_resume[tid] = None
            elif trial.status in (Trial.PAUSED, Trial.RUNNING, Trial.PENDING):
                tune_controller.stop_trial(trial)
        return current in keep

    def _gone(self, tune_controller, trial: Trial) -> None:
        """A trial ended: it is no longer waited for (``choose_trial_to_run`` decides what it held up)."""
        self._dead.add(trial.trial_id)
