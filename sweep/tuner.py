"""Scheduler, searcher, resources and storage: everything that turns a Space into a ``tune.Tuner``.

ASHA's time unit is ``grpo_epoch`` (GRPO epochs done after the warm-up), so no
trial is ever compared on warm-up metrics: reports from the RCE phase carry
``grpo_epoch = 0``, which is below every rung.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, PopulationBasedTraining
from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter

from trainer.errors import UserError

TIME_ATTR = "grpo_epoch"
METRICS = ("acc_mean", "acc_shot1", "acc_shot2", "acc_shot3", "acc_shot4")


@dataclass
class SchedulerOptions:
    name: str = "asha"            # asha | sha | noise-asha | fifo | pbt
    max_t: int = 25               # GRPO epochs of the longest trial
    grace_period: int | None = None
    reduction_factor: float = 3.0
    brackets: int = 1
    noise_k: float = 1.0          # noise-asha: stop only when below the cutoff by k standard errors
    decisions_path: str | None = None
    num_trials: int | None = None  # sha: the whole cohort (every trial of a grid/random sweep)

    def grace(self) -> int:
        """At least one GRPO evaluation: a fifth of the budget for sha, which ranks the whole cohort at
        each rung; a quarter for ASHA, which decides against partly filled rungs (ray-tune-notes §4.3)."""
        if self.grace_period is not None:
            return self.grace_period
        if self.name == "sha":
            return max(1, round(self.max_t / 5))
        return max(1, math.ceil(self.max_t / 4))


def make_scheduler(opts: SchedulerOptions, pbt_mutations: dict | None = None):
    """The scheduler; metric and mode come from the TuneConfig (Tune refuses them in both places)."""
    if opts.max_t < 1 and opts.name != "fifo":
        raise UserError(f"--scheduler {opts.name}: the space trains no GRPO epoch (grpo_epochs=0); use fifo")
    if opts.name == "fifo":
        return FIFOScheduler()
    if opts.grace() < 1 or opts.grace() > opts.max_t:
        raise UserError(f"--grace-period: must be in 1..{opts.max_t} (GRPO epochs), got {opts.grace()}")
    if opts.reduction_factor <= 1:
        raise UserError(f"--reduction-factor: must be > 1, got {opts.reduction_factor}")
    if opts.name == "asha":
        return ASHAScheduler(time_attr=TIME_ATTR, max_t=opts.max_t,
                             grace_period=opts.grace(), reduction_factor=opts.reduction_factor,
                             brackets=opts.brackets)
    if opts.name == "sha":
        from sweep.halving import SuccessiveHalving

        if not opts.num_trials:
            raise UserError("--scheduler sha: needs every trial of the sweep up front (--search grid or "
                            "random, no --max-concurrent); use asha with optuna")
        return SuccessiveHalving(time_attr=TIME_ATTR, max_t=opts.max_t, grace_period=opts.grace(),
                                 reduction_factor=opts.reduction_factor, num_trials=opts.num_trials,
                                 decisions_path=opts.decisions_path)
    if opts.name == "noise-asha":
        from sweep.schedulers import NoiseAwareASHA

        return NoiseAwareASHA(time_attr=TIME_ATTR, max_t=opts.max_t,
                              grace_period=opts.grace(), reduction_factor=opts.reduction_factor,
                              brackets=opts.brackets, k=opts.noise_k, decisions_path=opts.decisions_path)
    if opts.name == "pbt":
        if not pbt_mutations:
            raise UserError("--scheduler pbt: the space has no continuous nuisance/scientific range to mutate")
        return PopulationBasedTraining(time_attr=TIME_ATTR, perturbation_interval=max(1, opts.grace()),
                                       hyperparam_mutations=pbt_mutations)
    raise UserError(f"--scheduler: {opts.name!r} is not one of asha, sha, noise-asha, fifo, pbt")


def make_search(space, search: str, metric: str, seed: int, max_concurrent: int | None, seeds: int | None):
    """Grid/random enumerate ``param_space``; Optuna samples from the space itself."""
    if search in ("grid", "random"):
        gen = BasicVariantGenerator(random_state=seed, max_concurrent=max_concurrent or 0)
        return gen
    if search in ("optuna-tpe", "optuna-qmc"):
        from sweep.spaces import make_optuna_search

        searcher = make_optuna_search(space, search.split("-")[1], metric, seed, seeds)
        return ConcurrencyLimiter(searcher, max_concurrent=max_concurrent or 2)
    raise UserError(f"--search: {search!r} is not one of grid, random, optuna-tpe, optuna-qmc")


def make_tuner(trainable: Callable, *, param_space: dict, num_samples: int, metric: str, scheduler,
               search_alg, name: str, storage_path: str, cpus_per_trial: float, gpus_per_trial: float,
               max_failures: int, max_concurrent: int | None, verbose: int = 1,
               callbacks: list | None = None) -> tune.Tuner:
    return tune.Tuner(
        with_trial_resources(trainable, cpus_per_trial, gpus_per_trial),
        param_space=param_space,
        tune_config=tune.TuneConfig(metric=metric, mode="max", scheduler=scheduler, search_alg=search_alg,
                                    num_samples=num_samples,  # concurrency: the searcher's limit
                                    trial_dirname_creator=_trial_dirname,
                                    # the next trial starts in the finished one's worker: no new process,
                                    # no re-import of torch, the shared data already mapped
                                    reuse_actors=True),
        run_config=tune.RunConfig(
            name=name, storage_path=storage_path, verbose=verbose, callbacks=callbacks,
            failure_config=tune.FailureConfig(max_failures=max_failures),
            # keep the latest two: a crash while writing one still leaves the other
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
        ),
    )


def with_trial_resources(trainable: Callable, cpus_per_trial: float, gpus_per_trial: float) -> Callable:
    """CPU share (= the trial's torch threads) and a possibly fractional GPU share.

    Ray only sets CUDA_VISIBLE_DEVICES for a fractional GPU: trials sharing a
    GPU are not memory-isolated from each other.
    """
    resources: dict[str, Any] = {"cpu": cpus_per_trial}
    if gpus_per_trial:
        resources["gpu"] = gpus_per_trial
    return tune.with_resources(trainable, resources)


def _trial_dirname(trial) -> str:
    return f"trial_{trial.trial_id}"
