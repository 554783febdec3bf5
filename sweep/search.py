"""Optuna search that is told the truth about trials the scheduler stopped.

Ray's OptunaSearch reports every trial with a metric value as COMPLETE, so an
ASHA-stopped trial's rung value reaches TPE as if it were a full-budget result
(ray-tune-notes §1.3). Here a trial whose last report lacks
``train_finished`` is told as PRUNED, with its curve as intermediate values
(Optuna takes the last one as the trial's value and ranks it below every
complete trial). Tune withholds from the searcher the very result on which the
scheduler said STOP (tune_controller passes results on only when the decision
is not STOP), so that rung value is added from the completion's last result.
An errored trial is FAIL, even when it had reported a metric before failing
(the stock searcher would call it COMPLETE).
"""
from __future__ import annotations

import logging
import math

import numpy as np
from optuna.trial import TrialState
from ray.tune.result import TRAINING_ITERATION
from ray.tune.search import Repeater
from ray.tune.search.optuna import OptunaSearch

logger = logging.getLogger(__name__)

FINISHED_KEY = "train_finished"   # the trainer sets it on the report of a run that used its full budget


class PrunedAwareOptunaSearch(OptunaSearch):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._reported_steps: dict[str, set[int]] = {}   # trial id -> steps told to Optuna

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        super().on_trial_result(trial_id, result)
        if isinstance(self.metric, str) and TRAINING_ITERATION in result:
            self._reported_steps.setdefault(trial_id, set()).add(int(result[TRAINING_ITERATION]))

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self._completed_trials or (not error and result and result.get(FINISHED_KEY)):
            super().on_trial_complete(trial_id, result, error)
            self._reported_steps.pop(trial_id, None)
            return
        ot_trial = self._ot_trials[trial_id]
        if not error and result and isinstance(self.metric, str) and TRAINING_ITERATION in result:
            step, value = int(result[TRAINING_ITERATION]), result.get(self.metric)
            if value is not None and step not in self._reported_steps.get(trial_id, ()):
                ot_trial.report(value, step)  # the result the scheduler stopped the trial on
        state = TrialState.FAIL if error else TrialState.PRUNED
        self._ot_study.tell(ot_trial, None, state=state)
        self._completed_trials.add(trial_id)
        self._reported_steps.pop(trial_id, None)


class SeedRepeater(Repeater):
    """``Repeater`` that tells the searcher the truth about a configuration's seeds.

    The searcher sees one trial per configuration (the group's primary trial).
    When the last seed ends it receives, in order:

    * the intermediate values: per ``training_iteration``, the mean metric over
      the seeds that reported that step (a stopped seed stops contributing);
      the stock Repeater forwards none, so a pruned group had no curve;
    * the completion: the mean of the seeds' last metric, with
      ``train_finished`` true only if every seed finished its budget, and
      ``error`` when a seed errored without finishing. With
      PrunedAwareOptunaSearch that is COMPLETE / PRUNED / FAIL.
    """

    def __init__(self, searcher, repeat: int = 1, set_index: bool = True):
        super().__init__(searcher, repeat=repeat, set_index=set_index)
        self._curves: dict[str, dict[int, float]] = {}       # tune trial id -> step -> metric
        self._outcome: dict[str, tuple[bool, bool]] = {}     # tune trial id -> (finished, errored)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        metric = self.searcher.metric
        if isinstance(metric, str) and metric in result and TRAINING_ITERATION in result:
            self._curves.setdefault(trial_id, {})[int(result[TRAINING_ITERATION])] = float(result[metric])

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False,
                          **kwargs) -> None:
        group = self._trial_id_to_group.get(trial_id)
        if group is None:
            logger.error("SeedRepeater: trial %s belongs to no group; its result is dropped", trial_id)
            return
        metric = self.searcher.metric
        value = result.get(metric) if result else None
        group.report(trial_id, math.nan if value is None else value)
        if value is not None and result and TRAINING_ITERATION in result and not error:
            self.on_trial_result(trial_id, result)  # Tune withholds the result a trial was stopped on
        self._outcome[trial_id] = (bool(result and result.get(FINISHED_KEY)), bool(error))
        if not group.finished_reporting():
            return
        members = list(group._trials)
        outcomes = [self._outcome.pop(t, (False, False)) for t in members]
        curves = [self._curves.pop(t, {}) for t in members]
        primary = group.primary_trial_id
        for step in sorted(set().union(*curves)):
            values = [c[step] for c in curves if step in c]
            self.searcher.on_trial_result(primary, {metric: float(np.mean(values)), TRAINING_ITERATION: step})
        finished = all(done for done, _ in outcomes)
        scores = np.asarray(group.scores(), dtype=float)
        mean = float(np.nanmean(scores)) if np.isfinite(scores).any() else math.nan
        self.searcher.on_trial_complete(primary, result={metric: mean, FINISHED_KEY: finished},
                                        error=not finished and any(err for _, err in outcomes), **kwargs)
