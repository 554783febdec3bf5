"""Every core busy: CPU time of a sweep's trials / (trial-phase wall x cores), and threads = CPU share.

Runs ``sweep/run.py --space kl_beta --smoke-test`` with 4 seeds (8 trials), FIFO (every
trial runs its whole budget) and ``--cpus-per-trial 1`` on all cores, while a sampler
reads the CPU time of every process the sweep starts (bench/lib/procs.py). The trial
phase runs from the first trial's start to the last trial's end; trial CPU counts only
the trial workers, so warm-up, Ray start-up and gaps between trials count against
utilisation. Each trial's torch_threads (leaderboard) must equal --cpus-per-trial.
When the trainable reports ``cpu_s`` (process CPU time since the trial started), the
sum over trials is printed as a cross-check. Last line: one JSON object.

    python bench/sweep_utilization.py [--seeds 4] [--grpo-epochs 12] [--cpus-per-trial 1] [--keep DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.lib.procs import TreeSampler  # noqa: E402
from bench.lib.sweeps import Experiment, run_cli, write_tmp_root  # noqa: E402


def utilization(sampler: TreeSampler, cores: int) -> dict:
    """Trial CPU / (trial-phase wall x cores), and every sampled process's CPU over the same window."""
    trials = sampler.trials()
    if not trials:
        raise SystemExit("no trial worker was seen; did the sweep run any trial?")
    start = min(t.trial_since for t in trials)
    end = max(t.last_seen for t in trials)
    wall = end - start
    trial_cpu = sum(t.trial_cpu for t in trials)
    all_cpu = sum(t.cpu_at(end) - t.cpu_at(start) for t in sampler.traces.values())
    return {"trial_phase_s": wall, "trial_cpu_s": trial_cpu, "all_processes_cpu_s": all_cpu,
            "trial_workers": len(trials), "cpu_utilization": trial_cpu / (wall * cores),
            "all_processes_utilization": all_cpu / (wall * cores),
            # the whole machine, other users included: near 1 with a low cpu_utilization means contention
            "machine_utilization": sampler.machine_busy(start, end) / (wall * cores)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=4, help="seeds per configuration (smoke: 2 configurations)")
    p.add_argument("--grpo-epochs", type=int, default=12, help="GRPO epochs per trial (smoke default is 4)")
    p.add_argument("--cpus-per-trial", type=float, default=1.0)
    p.add_argument("--interval", type=float, default=0.2, help="sampling interval, seconds")
    p.add_argument("--keep", help="write the experiment here and keep it (default: a temp dir, removed)")
    args = p.parse_args()
    cores = len(os.sched_getaffinity(0))
    root = write_tmp_root(args.keep, "icd-bench-util-")
    try:
        argv = ["--space", "kl_beta", "--smoke-test", "--seeds", str(args.seeds), "--scheduler", "fifo",
                "--set", f"grpo_epochs={args.grpo_epochs}", "--cpus-per-trial", str(args.cpus_per_trial),
                "--output", str(root), "--name", "util", "--verbose", "0"]
        holder: dict = {}

        def sample(pid: int) -> TreeSampler:
            holder["sampler"] = TreeSampler(pid, interval=args.interval)
            return holder["sampler"]

        run = run_cli(argv, during=sample)
        exp = Experiment.read(root / "util")
        out = {"cores": cores, "trials": len(exp.leaderboard), "cpus_per_trial": args.cpus_per_trial,
               "sweep_wall_s": run.wall_s, **utilization(holder["sampler"], cores)}
        threads = exp.leaderboard["torch_threads"].tolist()
        out["torch_threads"] = sorted(set(int(t) for t in threads))
        out["threads_equal_share"] = all(int(t) == max(1, int(args.cpus_per_trial)) for t in threads)
        cpu_s = [rows[-1].get("cpu_s") for rows in exp.reports.values() if rows]
        if cpu_s and all(isinstance(c, (int, float)) for c in cpu_s):
            out["reported_cpu_s"] = sum(cpu_s)
            out["cpu_utilization_from_reports"] = sum(cpu_s) / (out["trial_phase_s"] * cores)
        else:
            out["cpu_utilization_from_reports"] = "not measured (trainable does not report cpu_s)"
        out["command"] = run.command()
        print(f"{out['trials']} trials, trial phase {out['trial_phase_s']:.1f} s on {cores} cores: trial CPU "
              f"{out['trial_cpu_s']:.1f} s -> utilisation {out['cpu_utilization']:.3f} (all processes "
              f"{out['all_processes_utilization']:.3f}, whole machine {out['machine_utilization']:.3f}); "
              f"torch_threads {out['torch_threads']}")
        print(json.dumps(out))
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
