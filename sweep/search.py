"""Optuna search that is told the truth about trials the scheduler stopped.

Ray's OptunaSearch reports every trial with a metric value as COMPLETE, so an
ASHA-stopped trial's rung value reaches TPE as if it were a full-budget result
(ray-tune-notes §1.3). Here a trial whose last report lacks
``train_finished`` is told as PRUNED; its intermediate values were already
reported step by step, which is what Optuna's samplers expect of a pruned trial.
"""
from __future__ import annotations

from ray.tune.search.optuna import OptunaSearch
from optuna.trial import TrialState


class PrunedAwareOptunaSearch(OptunaSearch):
    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if error or not result or result.get("train_finished") or trial_id in self._completed_trials:
            super().on_trial_complete(trial_id, result, error)
            return
        self._ot_study.tell(self._ot_trials[trial_id], None, state=TrialState.PRUNED)
        self._completed_trials.add(trial_id)
