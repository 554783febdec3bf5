"""Noise-aware ASHA: successive halving that does not cut trials on noise.

Ray's ASHA stops a trial as soon as it is below the rung's cutoff, and a
cutoff exists once a single value is recorded: with validation accuracy on a
few hundred queries (SE about 3.5 points at n=200), that is a coin flip.
This scheduler changes two rules and keeps the rest:

* no decision while the rung holds fewer than ``reduction_factor`` results;
* stop only when ``value < cutoff - k * se``, where ``se`` is the trial's
  standard error reported with the metric (``<metric>_se``, from the
  evaluator's per-query results).

Every decision (continue or stop) is appended to ``decisions.csv``.
"""
from __future__ import annotations

import csv
import math
import os
from pathlib import Path

import numpy as np
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

DECISION_FIELDS = ("trial", "rung", "value", "cutoff", "se", "n_recorded", "decision")


class NoiseAwareASHA(FIFOScheduler):
    def __init__(self, *, time_attr: str, metric: str | None = None, mode: str = "max", max_t: int,
                 grace_period: int = 1,
                 reduction_factor: float = 3.0, brackets: int = 1, k: float = 1.0,
                 decisions_path: str | None = None):
        super().__init__()
        if reduction_factor <= 1 or grace_period < 1 or max_t < grace_period or brackets < 1 or k < 0:
            raise ValueError("NoiseAwareASHA: need reduction_factor > 1, 1 <= grace_period <= max_t, "
                             "brackets >= 1, k >= 0")
        self._time_attr, self._metric, self._sign = time_attr, metric, 1.0 if mode == "max" else -1.0
        self._max_t, self._rf, self._k = max_t, reduction_factor, k
        self._decisions_path = decisions_path
        n_rungs = int(math.log(max_t / grace_period) / math.log(reduction_factor) + 1e-9) + 1
        # bracket s skips its first s rungs; rung milestones ascend
        self._brackets = [[grace_period * reduction_factor ** (i + s) for i in range(n_rungs - s)]
                          for s in range(min(brackets, n_rungs))]
        self._recorded: list[dict[float, dict[str, float]]] = [{m: {} for m in b} for b in self._brackets]
        self._bracket_of: dict[str, int] = {}
        self._added = 0

    def set_search_properties(self, metric, mode, **spec) -> bool:
        """Metric and mode from TuneConfig; refuses a second, different metric."""
        if metric and self._metric and metric != self._metric:
            return False
        if metric:
            self._metric = metric
        if mode:
            self._sign = 1.0 if mode == "max" else -1.0
        return True

    def on_trial_add(self, tune_controller, trial) -> None:
        # round-robin instead of Ray's draw from the global numpy RNG: reproducible
        self._bracket_of[trial.trial_id] = self._added % len(self._brackets)
        self._added += 1

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        if self._time_attr not in result or self._metric not in result:
            return TrialScheduler.CONTINUE
        return self.decide(trial.trial_id, result[self._time_attr], result[self._metric],
                           result.get(f"{self._metric}_se", 0.0))

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        self._bracket_of.pop(trial.trial_id, None)

    def on_trial_remove(self, tune_controller, trial) -> None:
        self._bracket_of.pop(trial.trial_id, None)

    def decide(self, trial_id: str, t: float, value: float, se: float | None) -> str:
        """The decision for one result; pure bookkeeping, so it is unit-testable without Tune.

        ``t`` is the trial's ``time_attr``, ``value`` its metric, ``se`` the
        metric's standard error (None or NaN: 0). Every rung the result reaches
        for the first time is decided and logged, lowest first, until one says stop.
        """
        b = self._bracket_of.setdefault(trial_id, 0)
        se = 0.0 if se is None or not math.isfinite(se) else float(se)
        action = TrialScheduler.CONTINUE
        for milestone in self._brackets[b]:
            recorded = self._recorded[b][milestone]
            if t < milestone or trial_id in recorded:
                continue
            score = self._sign * value
            decision, cutoff = "continue (first results of rung)", math.nan
            if len(recorded) >= self._rf:
                cutoff = float(np.nanpercentile(list(recorded.values()), (1 - 1 / self._rf) * 100))
                if score < cutoff - self._k * se:
                    decision, action = "stop", TrialScheduler.STOP
                elif score < cutoff:
                    decision = "continue (within noise)"
                else:
                    decision = "continue"
            recorded[trial_id] = score
            self._log(trial_id, milestone, value, self._sign * cutoff, se, len(recorded) - 1, decision)
            if action == TrialScheduler.STOP:
                break  # a stopped trial's value must not count at the higher rungs this result also passed
        if action == TrialScheduler.CONTINUE and t >= self._max_t:
            action = TrialScheduler.STOP  # the budget is spent
        return action

    def _log(self, trial_id, rung, value, cutoff, se, n, decision) -> None:
        log_decision(self._decisions_path, trial_id, rung, value, cutoff, se, n, decision)

    def debug_string(self) -> str:
        counts = [sum(len(r) for r in rec.values()) for rec in self._recorded]
        return f"NoiseAwareASHA: k={self._k}, rf={self._rf}, recorded per bracket {counts}"


def log_decision(path: str | None, trial_id: str, rung, value, cutoff, se, n: int, decision: str) -> None:
    """Append one row of ``DECISION_FIELDS`` to the decisions CSV (header first), durably."""
    if not path:
        return
    path = Path(path)
    new = not path.exists()
    with open(path, "a", newline="") as fh:
        w = csv.writer(fh)
        if new:
            w.writerow(DECISION_FIELDS)
        w.writerow([trial_id, rung, value, cutoff, se, n, decision])
        fh.flush()
        os.fsync(fh.fileno())
