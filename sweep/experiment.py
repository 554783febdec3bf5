"""One sweep from flags to leaderboard: data, warm start, baselines, Tune, outputs.

Order matters for the promise "bad input creates nothing": every input is
loaded and validated before the experiment folder is created.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import time
from pathlib import Path

from trainer.config import from_dict
from trainer.errors import UserError

REPO = Path(__file__).resolve().parent.parent
RUN_ARGS = "run_args.json"
SMOKE_OVERRIDES = {"sft_epochs": 3, "rce_epochs": 2, "grpo_epochs": 4}


def list_spaces() -> int:
    from sweep.spaces import list_spaces as _list

    for name, description in _list():
        print(f"{name:<16} {description.splitlines()[0] if description else ''}")
    return 0


def load_study(args: argparse.Namespace):
    from sweep.spaces import load_space, parse_set

    overrides = parse_set(args.set)
    if args.smoke_test:
        overrides = {**SMOKE_OVERRIDES, **overrides}
    space = load_space(args.space, overrides=overrides)
    if args.smoke_test:
        space = space.smoke()
    return space


def run(args: argparse.Namespace) -> int:
    space = load_study(args)
    seeds = 1 if args.smoke_test and args.seeds is None else args.seeds
    if args.dry_run:
        trials = space.preview(args.search, args.num_samples, seeds, args.seed)
        for i, trial in enumerate(trials):
            print(f"{i:4d}  " + "  ".join(f"{k}={v}" for k, v in trial.items()))
        print(f"{len(trials)} trials ({space.name}: {len(trials) // max(seeds or space.seeds, 1)} configurations "
              f"x {seeds or space.seeds} seeds)")
        return 0
    output = Path(args.output).resolve()
    name = args.name or f"{space.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    exp_dir = output / name
    if exp_dir.exists():
        raise UserError(f"--name: {exp_dir} already exists; use --resume {name} or another --name")
    source = load_source(args, output)
    from sweep.tuner import METRICS  # noqa: F401  (import check before anything is written)

    record = {"argv": sys.argv[1:], "args": vars(args), "name": name, "seeds": seeds}
    return execute(args, space, source, exp_dir, record, restore=False)


def resume(args: argparse.Namespace) -> int:
    output = Path(args.output).resolve()
    exp_dir = output / args.resume
    run_args = exp_dir / RUN_ARGS
    if not run_args.is_file():
        raise UserError(f"--resume: {exp_dir} is not an experiment of this tool (no {RUN_ARGS})")
    record = json.loads(run_args.read_text())
    saved = argparse.Namespace(**record["args"])
    saved.output, saved.verbose = args.output, args.verbose
    saved.max_failures = args.max_failures if args.max_failures else saved.max_failures
    space = load_study(saved)
    source = load_source(saved, output)
    return execute(saved, space, source, exp_dir, record, restore=True)


def load_source(args: argparse.Namespace, output: Path):
    from trainer.task import DataSource

    if args.rl_data or args.beam_data:
        for flag in ("rl_data", "beam_data", "embeddings", "pools", "sft_ckpt"):
            path = getattr(args, flag)
            if path and not Path(path).is_file():
                raise UserError(f"--{flag.replace('_', '-')}: {path}: file not found")
        evaluator = args.evaluator or "lookup"
        return DataSource.from_files(embeddings=args.embeddings, rl=args.rl_data, beam=args.beam_data,
                                     pools=args.pools, evaluator=evaluator, eval_seed=args.seed)
    from trainer.simulator import DEFAULT_SPEC, SMOKE_SPEC

    if args.evaluator not in (None, "simulator"):
        raise UserError("--evaluator: the embedded benchmark is scored by its simulator; give data files "
                        "(--rl-data ...) to use lookup or module:function")
    spec = SMOKE_SPEC if args.smoke_test else DEFAULT_SPEC
    return DataSource.from_simulator(spec, output / "_cache" / "simulator", eval_seed=args.seed)


def execute(args, space, source, exp_dir: Path, record: dict, *, restore: bool) -> int:
    import ray

    from sweep import tuner as T
    from sweep.baselines import evaluate_baselines, summary_lines
    from sweep.leaderboard import write_outputs
    from sweep.spaces import shares_warmup
    from trainer.trainable import icd_trainable
    from trainer.warmup import prepare_warm_start

    seeds = record.get("seeds") or space.seeds
    param_space, num_samples = space.to_tune(args.search, args.num_samples, seeds, rng_seed=args.seed)
    first = space.preview(args.search, args.num_samples, 1, args.seed)[0]
    base = from_dict({**space.resolve(first), "seed": args.seed})
    share = shares_warmup(space)
    cache = Path(args.output).resolve() / "_cache" / "warmup"
    warm = prepare_warm_start(base, source, cache, share_rce=True, sft_ckpt=args.sft_ckpt)
    trial_warm = warm if share else type(warm)(warm.sft_state, None, warm.info)

    exp_dir.mkdir(parents=True, exist_ok=restore)
    if not restore:
        _write_record(exp_dir, args, space, record, warm, share)
        task = source.task(base)
        baselines = evaluate_baselines(base, task, warm, warm.rce_state)
        _atomic_json(exp_dir / "baselines.json", baselines)
        print("baselines (validation):\n" + "\n".join(summary_lines(baselines)))

    _init_ray(args)
    trainable = ray.tune.with_parameters(icd_trainable, source=source, warm=trial_warm, resolve=space.resolve)
    max_t = max(int(t.get("grpo_epochs", base.grpo.grpo_epochs)) for t in
                (space.resolve(c) for c in space.preview(args.search, args.num_samples, 1, args.seed)))
    sched_opts = T.SchedulerOptions(name=args.scheduler, max_t=max_t, grace_period=args.grace_period,
                                    reduction_factor=args.reduction_factor, brackets=args.brackets,
                                    noise_k=args.noise_k, decisions_path=str(exp_dir / "decisions.csv"))
    scheduler = T.make_scheduler(sched_opts, pbt_mutations=space.pbt_mutations()
                                 if args.scheduler == "pbt" else None)
    if restore:
        from ray import tune

        tuner = tune.Tuner.restore(str(exp_dir), trainable=T.with_trial_resources(
                                       trainable, args.cpus_per_trial, args.gpus_per_trial),
                                   resume_unfinished=True, resume_errored=args.max_failures != 0,
                                   param_space=param_space)
    else:
        search = T.make_search(space, args.search, args.metric, args.seed, args.max_concurrent, seeds)
        tuner = T.make_tuner(trainable, param_space=param_space, num_samples=num_samples, metric=args.metric,
                             scheduler=scheduler, search_alg=search, name=exp_dir.name,
                             storage_path=str(exp_dir.parent), cpus_per_trial=args.cpus_per_trial,
                             gpus_per_trial=args.gpus_per_trial, max_failures=args.max_failures,
                             max_concurrent=args.max_concurrent, verbose=args.verbose)
    started = time.time()
    results = tuner.fit()
    interrupted = getattr(results, "_experiment_interrupted", False)
    written = write_outputs(exp_dir)
    print((exp_dir / "comparison.md").read_text() if (exp_dir / "comparison.md").exists() else "")
    print(f"sweep {exp_dir.name}: {len(results)} trials in {time.time() - started:.0f} s")
    for label, path in written.items():
        print(f"  {label:<12} {path}")
    if interrupted:
        print(f"interrupted: state saved; continue with\n  python sweep/run.py --resume {exp_dir.name}"
              + (f" --output {args.output}" if args.output != "results" else ""))
        return 130
    return 0


def _init_ray(args) -> None:
    import ray

    env = {"env_vars": {"PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}}
    if args.address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=args.address or os.environ["RAY_ADDRESS"], runtime_env=env, log_to_driver=False)
        return
    ray.init(include_dashboard=args.dashboard, dashboard_host="127.0.0.1", dashboard_port=8265,
             runtime_env=env, log_to_driver=False, configure_logging=True, logging_level="WARNING")
    if args.dashboard:
        url = ray.get_runtime_context().dashboard_url if hasattr(ray.get_runtime_context(), "dashboard_url") else ""
        print(f"Ray dashboard: http://{url or '127.0.0.1:8265'} (token authentication on; "
              f"print the token with `ray get-auth-token`)")


def _write_record(exp_dir: Path, args, space, record: dict, warm, share: bool) -> None:
    _atomic_json(exp_dir / RUN_ARGS, record)
    (exp_dir / "command.txt").write_text("python sweep/run.py " + shlex.join(record["argv"]) + "\n")
    shutil.copyfile(space.path, exp_dir / f"space-{space.name}.yaml")
    _atomic_json(exp_dir / "sweep.json", {**space.describe(), "metric": args.metric, "search": args.search,
                                          "scheduler": args.scheduler, "shared_rce": share, "warm_start": warm.info})


def _atomic_json(path: Path, obj) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=str))
    os.replace(tmp, path)
