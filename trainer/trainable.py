"""The Ray Tune function trainable: a thin adapter around ``trainer.loop.train``.

Tune's config dict -> the stage dataclasses -> ``train``, whose per-epoch
``report`` becomes ``tune.report`` with a checkpoint. A restarted or retried
trial resumes from ``tune.get_checkpoint()``. This is the only module in
``trainer/`` that imports ray. ``ICD_SWEEP_FAULT`` (trainer/faults.py) injects
test-only crashes and divergences here.
"""
from __future__ import annotations

import tempfile
import time
from typing import Any, Callable

import ray
import torch
from ray import tune

from trainer.config import from_dict
from trainer.faults import Fault
from trainer.loop import train
from trainer.task import DataSource, WarmStart


def assigned_resources() -> dict[str, float]:
    try:
        return ray.get_runtime_context().get_assigned_resources()
    except Exception:  # not inside a Ray worker (unit tests)
        return {}


def set_threads_to_cpu_share(assigned: dict[str, float]) -> int:
    """torch threads = this trial's CPU share, so concurrent trials never oversubscribe cores."""
    threads = max(1, int(assigned.get("CPU", 1.0)))
    torch.set_num_threads(threads)
    return threads


def trial_device(assigned: dict[str, float], requested: str) -> str:
    """The device a trial trains on: its GPU share when Ray gave it one (``--gpus-per-trial``).

    Ray sets CUDA_VISIBLE_DEVICES to the trial's GPU, so "cuda" is that GPU. Without this,
    a GPU share would be reserved while the trial trained on the CPU default.
    """
    if assigned.get("GPU", 0) > 0 and requested == "cpu":
        return "cuda"
    return requested


def icd_trainable(config: dict[str, Any], *, source: DataSource, warm: WarmStart,
                  resolve: Callable[[dict], dict] | None = None) -> None:
    """Train one configuration; ``resolve`` maps Tune's config to flat hyperparameters (presets, fixed)."""
    cpu_start = time.process_time()
    assigned = assigned_resources()
    threads = set_threads_to_cpu_share(assigned)
    hyper = resolve(config) if resolve else dict(config)
    cfg = from_dict(hyper)
    cfg = cfg.replace(device=trial_device(assigned, cfg.run.device))
    task = source.task(cfg)
    node_id = ray.get_runtime_context().get_node_id()
    fault = Fault.from_env(hyper)  # test-only (trainer/faults.py); no rule, no effect

    def report(metrics: dict, save: Callable[[str], None]) -> None:
        fault.before_report(metrics)
        with tempfile.TemporaryDirectory(prefix="icd-ckpt-") as tmp:
            save(tmp)
            # cpu_s: this trial process's CPU seconds (bench/sweep_utilization.py reads it)
            tune.report({**metrics, "torch_threads": threads, "node_id": node_id,
                         "cpu_s": time.process_time() - cpu_start},
                        checkpoint=tune.Checkpoint.from_directory(tmp))

    sft_state, rce_state = warm.states(cfg)
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        train(cfg, task, report, sft_state=sft_state, rce_state=rce_state, loss_hook=fault.loss_hook)
        return
    with checkpoint.as_directory() as resume_dir:
        train(cfg, task, report, sft_state=sft_state, rce_state=rce_state, resume_dir=resume_dir,
              loss_hook=fault.loss_hook)
