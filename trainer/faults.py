"""Test-only fault injection: make chosen trials crash or diverge, to test what a sweep does then.

Inert unless the environment variable ``ICD_SWEEP_FAULT`` is set (the sweep
driver passes it on to Ray's workers). Its value is a comma-separated list of
rules ``KIND@N[:key=value]...``; a rule applies to the trials whose
hyperparameters match every ``key=value`` (all trials when there is none):

* ``raise@N``         raises before the trial's report N+1, once: a retry
                      (``--max-failures``) from the checkpoint of report N goes on;
* ``raise-always@N``  raises before report N+1 on every attempt (retries are used up);
* ``nan@N``           makes the N-th GRPO loss of an attempt NaN (the trial is
                      recorded as diverged).

Example: ``ICD_SWEEP_FAULT="raise@2:seed=1,nan@1:kl_beta=0.05:seed=0"``.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from trainer.errors import UserError

if TYPE_CHECKING:  # the driver parses rules before (and without) importing torch
    import torch

FAULT_ENV = "ICD_SWEEP_FAULT"
KINDS = ("raise", "raise-always", "nan")


@dataclass(frozen=True)
class Rule:
    kind: str                         # one of KINDS
    at: int                           # N >= 0 (>= 1 for nan)
    when: tuple[tuple[str, str], ...]  # (key, value) pairs a trial's hyperparameters must match

    def matches(self, hyper: dict[str, Any]) -> bool:
        return all(key in hyper and _same(hyper[key], value) for key, value in self.when)


def parse_rules(spec: str) -> tuple[Rule, ...]:
    """``"raise@2:seed=1,nan@1"`` -> rules; a malformed spec is a UserError naming the variable."""
    rules = []
    for text in filter(None, (part.strip() for part in spec.split(","))):
        head, *conds = text.split(":")
        kind, sep, at = head.partition("@")
        if kind not in KINDS or not sep or not at.isdigit() or (kind == "nan" and int(at) < 1):
            raise UserError(f"{FAULT_ENV}: {text!r} is not KIND@N[:key=value...] with KIND one of "
                            f"{', '.join(KINDS)} and N >= 0 (>= 1 for nan)")
        when = []
        for cond in conds:
            key, eq, value = cond.partition("=")
            if not eq or not key:
                raise UserError(f"{FAULT_ENV}: {cond!r} in {text!r} is not key=value")
            when.append((key.strip(), value.strip()))
        rules.append(Rule(kind, int(at), tuple(when)))
    return tuple(rules)


class Fault:
    """The rules that apply to one trial, and the counters of its current attempt."""

    def __init__(self, rules: tuple[Rule, ...] = ()):
        self.rules = rules
        self.start_epoch: int | None = None  # epochs already done when this attempt started
        self.losses = 0

    @classmethod
    def from_env(cls, hyper: dict[str, Any]) -> "Fault":
        return cls(tuple(r for r in parse_rules(os.environ.get(FAULT_ENV, "")) if r.matches(hyper)))

    def before_report(self, metrics: dict[str, Any]) -> None:
        """Called before each report; ``metrics["epoch"]`` counts the trial's epochs across restores."""
        if not self.rules:
            return
        epoch = int(metrics["epoch"])
        if self.start_epoch is None:
            self.start_epoch = epoch - 1
        for r in self.rules:
            once_ok = r.kind == "raise-always" or self.start_epoch < r.at
            if r.kind in ("raise", "raise-always") and epoch > r.at and once_ok:
                raise RuntimeError(f"injected fault ({FAULT_ENV}={r.kind}@{r.at}) before report {epoch}")

    def loss_hook(self, loss: torch.Tensor) -> torch.Tensor:
        self.losses += 1
        if any(r.kind == "nan" and self.losses >= r.at for r in self.rules):
            return loss * float("nan")
        return loss


def _same(actual: Any, text: str) -> bool:
    """Does a hyperparameter value equal the rule's text? Numbers compare as numbers (0 == 0.0)."""
    if isinstance(actual, bool) or not isinstance(actual, (int, float)):
        return str(actual).lower() == text.lower()
    try:
        return math.isclose(float(actual), float(text), rel_tol=0, abs_tol=1e-12)
    except ValueError:
        return False
