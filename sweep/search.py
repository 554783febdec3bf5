"""Optuna search that is told the truth about trials the scheduler stopped.

Ray's OptunaSearch reports every trial with a metric value as COMPLETE, so an
ASHA-stopped trial's rung value reaches TPE as if it were a full-budget result
(ray-tune-notes §1.3). Here a trial whose last report lacks
``train_finished`` is told as PRUNED; its intermediate values were already
reported step by step, which is what Optuna's samplers expect of a pruned trial.
"""
from __future__ import annotations

from optuna.trial import TrialState
from ray.tune.search import Repeater
from ray.tune.search.optuna import OptunaSearch


class PrunedAwareOptunaSearch(OptunaSearch):
    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if error or not result or result.get("train_finished") or trial_id in self._completed_trials:
            super().on_trial_complete(trial_id, result, error)
            return
        self._ot_study.tell(self._ot_trials[trial_id], None, state=TrialState.PRUNED)
        self._completed_trials.add(trial_id)


class SeedRepeater(Repeater):
    """``Repeater`` that tells the searcher whether every seed of a configuration ran its full budget.

    The stock Repeater passes only the mean metric, which PrunedAwareOptunaSearch
    would read as a pruned trial; a configuration counts as complete only if
    every one of its seeds finished training.
    """

    def on_trial_complete(self, trial_id: str, result: dict | None = None, **kwargs) -> None:
        group = self._trial_id_to_group.get(trial_id)
        finished = getattr(self, "_finished", {})
        self._finished = finished
        if group is not None:
            key = group.primary_trial_id
            finished[key] = finished.get(key, True) and bool(result and result.get("train_finished"))
        searcher_complete = self.searcher.on_trial_complete

        def tell(primary_id, result=None, **kw):
            result = dict(result or {}, train_finished=finished.pop(primary_id, False))
            searcher_complete(primary_id, result=result, **kw)

        self.searcher.on_trial_complete = tell  # type: ignore[method-assign]
        try:
            super().on_trial_complete(trial_id, result, **kwargs)
        finally:
            del self.searcher.on_trial_complete
