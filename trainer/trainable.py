"""The Ray Tune function trainable: a thin adapter around ``trainer.loop.train``.

Tune's config dict -> the stage dataclasses -> ``train``, whose per-epoch
``report`` becomes ``tune.report`` with a checkpoint. A restarted or retried
trial resumes from ``tune.get_checkpoint()``. This is the only module in
``trainer/`` that imports ray.
"""
from __future__ import annotations

import os
import tempfile
from typing import Any, Callable

import ray
import torch
from ray import tune

from trainer.config import from_dict
from trainer.loop import train
from trainer.task import DataSource, WarmStart

# Test-only fault injection (documented in SECURITY.md/README): "raise@N" raises
# in the trainable after N reports, "nan@N" makes the N-th GRPO loss non-finite.
FAULT_ENV = "ICD_SWEEP_FAULT"


def set_threads_to_cpu_share() -> int:
    """torch threads = this trial's CPU share, so concurrent trials never oversubscribe cores."""
    try:
        share = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
    except Exception:  # not inside a Ray worker (unit tests)
        share = 1.0
    threads = max(1, int(share))
    torch.set_num_threads(threads)
    return threads


def icd_trainable(config: dict[str, Any], *, source: DataSource, warm: WarmStart,
                  resolve: Callable[[dict], dict] | None = None) -> None:
    """Train one configuration; ``resolve`` maps Tune's config to flat hyperparameters (presets, fixed)."""
    threads = set_threads_to_cpu_share()
    hyper = resolve(config) if resolve else dict(config)
    cfg = from_dict(hyper)
    task = source.task(cfg)
    node_id = ray.get_runtime_context().get_node_id()
    fault = _Fault.from_env()

    def report(metrics: dict, save: Callable[[str], None]) -> None:
        fault.tick()
        with tempfile.TemporaryDirectory(prefix="icd-ckpt-") as tmp:
            save(tmp)
            tune.report({**metrics, "torch_threads": threads, "node_id": node_id},
                        checkpoint=tune.Checkpoint.from_directory(tmp))

    sft_state, rce_state = warm.states(cfg)
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        train(cfg, task, report, sft_state=sft_state, rce_state=rce_state, loss_hook=fault.loss_hook)
        return
    with checkpoint.as_directory() as resume_dir:
        train(cfg, task, report, sft_state=sft_state, rce_state=rce_state, resume_dir=resume_dir,
              loss_hook=fault.loss_hook)


class _Fault:
    """Injected failures for the fault-tolerance tests; inert unless ICD_SWEEP_FAULT is set."""

    def __init__(self, kind: str = "", at: int = 0):
        self.kind, self.at, self.reports, self.losses = kind, at, 0, 0

    @classmethod
    def from_env(cls) -> "_Fault":
        spec = os.environ.get(FAULT_ENV, "")
        if not spec:
            return cls()
        kind, _, at = spec.partition("@")
        return cls(kind, int(at or 0))

    def tick(self) -> None:
        self.reports += 1
        if self.kind == "raise" and self.reports > self.at:
            raise RuntimeError(f"injected fault ({FAULT_ENV}=raise@{self.at})")

    def loss_hook(self, loss: torch.Tensor) -> torch.Tensor:
        self.losses += 1
        if self.kind == "nan" and self.losses >= self.at:
            return loss * float("nan")
        return loss
