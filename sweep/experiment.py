"""One sweep from flags to leaderboard: data, warm start, baselines, Tune, outputs.

Order matters for two promises. "Bad input creates nothing": every input (flags,
space, data files checked against the configuration) is validated before the
experiment folder is claimed. "A kill loses nothing": the folder appears
atomically with its record (two sweeps never share one, no folder lacks its
record), and ``--resume`` continues from whatever stage it reached:
warm-up and baselines are recomputed if missing, a Tune run that never started
is started, one that did is restored with its completed trials kept.
"""
from __future__ import annotations

import argparse
import errno
import json
import os
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

from sweep import cluster
from sweep.ray_session import init_ray, stop_tune_on_sigint
from trainer.config import TrainConfig, from_dict
from trainer.errors import UserError
from trainer.faults import FAULT_ENV, parse_rules

RUN_ARGS = "run_args.json"
SMOKE_OVERRIDES = {"sft_epochs": 3, "rce_epochs": 2, "grpo_epochs": 4}
INTERRUPTED = 130  # the shell's code for "stopped by SIGINT"


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


def base_config(space, args: argparse.Namespace) -> TrainConfig:
    """The configuration of the shared SFT/RCE warm-up and the baselines: the space's first point."""
    first = space.preview(args.search, args.num_samples, 1, args.seed)[0]
    return from_dict({**space.resolve(first), "seed": args.seed})


def run(args: argparse.Namespace) -> int:
    space = load_study(args)
    seeds = 1 if args.smoke_test and args.seeds is None else args.seeds
    if args.dry_run:
        trials = space.preview(args.search, args.num_samples, seeds, args.seed)
        for i, trial in enumerate(trials):
            print(f"{i:4d}  " + "  ".join(f"{k}={v}" for k, v in trial.items()))
        per = seeds or space.seeds
        print(f"{len(trials)} trials ({space.name}: {len(trials) // max(per, 1)} configurations "
              f"x {per} seeds)")
        return 0
    out = cluster.resolve_output(args.output)
    output = out.local
    if args.name:
        out.fresh(args.name)  # refused if it exists, here or at the URI
    parse_rules(os.environ.get(FAULT_ENV, ""))  # a malformed test hook fails here, not in every trial
    base = base_config(space, args)
    files = bool(args.rl_data or args.beam_data)
    if files:  # reading the user's files writes nothing
        source = load_source(args, output)
        check_data(args, source, base)
    tune_options(args, space, seeds, decisions_path=None)  # scheduler/search flags vs the space
    cluster.attach(args.address, out, cpus_per_trial=args.cpus_per_trial, gpus_per_trial=args.gpus_per_trial)
    if not files:  # generates (once) and caches the embedded benchmark's files under the output root
        source = load_source(args, output)
    record = {"argv": list(getattr(args, "argv", sys.argv[1:])), "name": args.name, "seeds": seeds,
              "fingerprint": source.fingerprint, "args": {k: v for k, v in vars(args).items() if k != "argv"}}
    return execute(args, space, source, record, exp_dir=None)


def check_data(args: argparse.Namespace, source, base: TrainConfig) -> None:
    """The files against each other and the configuration, before anything is written or Ray starts.

    Ids beyond the embedding rows are reported with the file that holds them;
    ``source.task`` then checks what the configuration needs (split, pools,
    filters) and an ``--sft-ckpt`` must load strictly into the selector.
    """
    from trainer.checkpoints import load_selector_weights
    from trainer.data.build import check_ids

    names = {"rl": args.rl_data, "beam": args.beam_data, "pools": args.pools, "embeddings": args.embeddings}
    check_ids(source.embeddings.shape[0], rl=source.rl, beam=source.beam, pools=source.pools,
              sources={k: v for k, v in names.items() if v})
    task = source.task(base)
    if args.sft_ckpt:
        load_selector_weights(task.new_model(), args.sft_ckpt)


def tune_options(args: argparse.Namespace, space, seeds: int | None, *, decisions_path: str | None):
    """(param_space, num_samples, scheduler, search) of a new Tune run; UserError for flags it refutes."""
    from sweep import tuner as T

    param_space, num_samples = space.to_tune(args.search, args.num_samples, seeds, rng_seed=args.seed)
    max_t = max(from_dict(space.resolve(c)).grpo.grpo_epochs
                for c in space.preview(args.search, args.num_samples, 1, args.seed))
    cohort = None
    if args.search in ("grid", "random") and not args.max_concurrent:
        cohort = len(space.preview(args.search, args.num_samples, seeds, args.seed))
    opts = T.SchedulerOptions(name=scheduler_name(args), max_t=max_t, grace_period=args.grace_period,
                              reduction_factor=args.reduction_factor, brackets=args.brackets,
                              noise_k=args.noise_k, decisions_path=decisions_path, num_trials=cohort)
    mutations = space.pbt_mutations() if args.scheduler == "pbt" else None
    scheduler = T.make_scheduler(opts, pbt_mutations=mutations)
    search = T.make_search(space, args.search, args.metric, args.seed, args.max_concurrent, seeds)
    return param_space, num_samples, scheduler, search


def scheduler_name(args: argparse.Namespace) -> str:
    """``--scheduler auto``: successive halving when the searcher creates every trial up front (grid or
    random search, no --max-concurrent: sha waits for the whole cohort at each rung), ASHA otherwise."""
    if args.scheduler != "auto":
        return args.scheduler
    return "sha" if args.search in ("grid", "random") and not args.max_concurrent else "asha"


def resume(args: argparse.Namespace) -> int:
    from sweep.cli import RESUME_FLAGS, build_parser

    out = cluster.resolve_output(args.output)
    output = out.local
    exp_dir = out.pull(args.resume)  # a URI output: mirrored into local staging first
    record = read_record(exp_dir)
    defaults = vars(build_parser().parse_args([]))  # flags added since the experiment was started
    saved = argparse.Namespace(**{**defaults, **record["args"]})
    for flag in RESUME_FLAGS - {"resume", "max_failures"}:
        setattr(saved, flag, getattr(args, flag))
    saved.max_failures = args.max_failures if args.max_failures else saved.max_failures
    snapshot = sorted(exp_dir.glob("space-*.yaml"))
    if len(snapshot) == 1:  # the space as it ran, even if its file was edited since
        saved.space = str(snapshot[0])
    space = load_study(saved)
    parse_rules(os.environ.get(FAULT_ENV, ""))
    cluster.attach(saved.address, out, cpus_per_trial=saved.cpus_per_trial,
                   gpus_per_trial=saved.gpus_per_trial)
    source = load_source(saved, output)
    if record.get("fingerprint") not in (None, source.fingerprint):  # trials would mix two data sets
        raise UserError(f"--resume: the data files of {exp_dir.name} changed since it started (content "
                        f"hash {record['fingerprint']} != {source.fingerprint}); restore them or start a new "
                        f"experiment")
    return execute(saved, space, source, record, exp_dir=exp_dir)


def read_record(exp_dir: Path) -> dict:
    path = exp_dir / RUN_ARGS
    if not path.is_file():
        what = f"is not an experiment of this tool (no {RUN_ARGS})" if exp_dir.exists() else "does not exist"
        raise UserError(f"--resume: {exp_dir} {what}")
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: unreadable ({exc}); the experiment cannot be resumed") from None
    if not isinstance(record, dict) or not isinstance(record.get("args"), dict):
        raise UserError(f"{path}: field args: missing; the experiment cannot be resumed")
    return record


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


def claim_experiment_dir(output: Path, name: str | None, space_name: str,
                         files: Callable[[str], dict[str, str]] = lambda name: {}) -> Path:
    """Create ``output/<name>`` holding ``files(name)`` ({file name: text}), atomically, and return it.

    The folder is filled in a private staging folder and renamed into place, so
    it appears complete with its record or not at all, and two sweeps never get
    the same one (a rename onto a folder that is not empty fails). An explicit
    ``name`` that is taken is an error; the default ``<space>-<timestamp>`` gets
    a ``-2``, ``-3``, ... suffix until a rename wins.
    """
    output.mkdir(parents=True, exist_ok=True)
    if name and (output / name).exists():
        raise UserError(f"--name: {output / name} already exists; use --resume {name} or another --name")
    stem = name or f"{space_name}-{time.strftime('%Y%m%d-%H%M%S')}"
    staging = Path(tempfile.mkdtemp(prefix=".claim-", dir=output))
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(staging, 0o777 & ~umask)  # mkdtemp's 0700 would hide the results from the user's group
        for n in range(1, 2 if name else 10_000):
            candidate = stem if n == 1 else f"{stem}-{n}"
            for file_name, text in files(candidate).items():
                (staging / file_name).write_text(text)
            try:
                os.rename(staging, output / candidate)
                return output / candidate
            except OSError as exc:
                if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR):
                    raise
        what = "--name" if name else "--output"
        raise UserError(f"{what}: {output / stem} was taken meanwhile (another sweep?); pass another --name")
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone already when the rename won


def tune_started(exp_dir: Path) -> bool:
    """Did Tune save a state it can restore? (A kill during warm-up or Ray start leaves none.)"""
    from ray import tune

    return tune.Tuner.can_restore(str(exp_dir)) and any(exp_dir.glob("experiment_state-*.json"))


def execute(args, space, source, record: dict, *, exp_dir: Path | None) -> int:
    from sweep.spaces import shares_warmup
    from trainer.warmup import prepare_warm_start

    out = cluster.resolve_output(args.output)
    output = out.local
    base = base_config(space, args)
    share = shares_warmup(space)
    warm = prepare_warm_start(base, source, output / "_cache" / "warmup", share_rce=True,
                              sft_ckpt=args.sft_ckpt)
    trial_warm = warm if share else type(warm)(warm.sft_state, None, warm.info)
    if exp_dir is None:
        exp_dir = claim_experiment_dir(output, args.name, space.name,
                                       lambda name: _record_files(name, args, space, record, warm, share))
    out.push(exp_dir.name)  # a URI output: the record is there before anything expensive
    print(f"experiment {out.experiment(exp_dir.name)}")
    try:
        return _sweep(args, space, source, record, exp_dir, base, warm, trial_warm)
    except KeyboardInterrupt:  # a second Ctrl-C, or one before Tune took over SIGINT
        print(f"interrupted; continue with\n  {resume_command(exp_dir, args.output)}", file=sys.stderr)
        return INTERRUPTED


def _sweep(args, space, source, record, exp_dir: Path, base, warm, trial_warm) -> int:
    import ray

    from sweep import tuner as T
    from sweep.baselines import evaluate_baselines, summary_lines
    from sweep.leaderboard import write_outputs
    from trainer.trainable import icd_trainable

    if not (exp_dir / "baselines.json").is_file():
        baselines = evaluate_baselines(base, source.task(base), warm, warm.rce_state)
        atomic_write_text(exp_dir / "baselines.json", json.dumps(baselines, indent=1, default=str))
        print("baselines (validation):\n" + "\n".join(summary_lines(baselines)))
    out = cluster.resolve_output(args.output)
    out.push(exp_dir.name)
    seeds = record.get("seeds") or space.seeds
    param_space, num_samples, scheduler, search = tune_options(args, space, seeds,
                                                               decisions_path=str(exp_dir / "decisions.csv"))
    restore = tune_started(exp_dir)
    init_ray(address=args.address, dashboard=args.dashboard, dashboard_host=args.dashboard_host,
             dashboard_port=args.dashboard_port)
    # the trials' tensors are built here once per data configuration, so no trial decodes the files
    source.prepare(from_dict(space.resolve(c)) for c in space.preview(args.search, args.num_samples, 1, args.seed))
    trainable = ray.tune.with_parameters(icd_trainable, source=source, warm=trial_warm, resolve=space.resolve)
    if restore:
        # completed (and pruned) trials are kept as they are; unfinished ones continue from their last
        # checkpoint; errored ones too when retries are allowed, never from scratch (restart_errored)
        tuner = ray.tune.Tuner.restore(out.experiment(exp_dir.name), param_space=param_space,
                                       resume_unfinished=True,
                                       trainable=T.with_trial_resources(trainable, args.cpus_per_trial,
                                                                        args.gpus_per_trial),
                                       resume_errored=args.max_failures != 0, restart_errored=False)
    else:
        tuner = T.make_tuner(trainable, param_space=param_space, num_samples=num_samples, metric=args.metric,
                             scheduler=scheduler, search_alg=search, name=exp_dir.name,
                             storage_path=out.storage_path, cpus_per_trial=args.cpus_per_trial,
                             gpus_per_trial=args.gpus_per_trial, max_failures=args.max_failures,
                             max_concurrent=args.max_concurrent, verbose=args.verbose)
    started = time.time()
    with stop_tune_on_sigint() as stop:
        results = tuner.fit()
    out.pull(exp_dir.name)  # a URI output: Tune's trial folders into staging, for the leaderboard
    written = write_outputs(exp_dir)
    out.push(exp_dir.name)
    print((exp_dir / "comparison.md").read_text() if (exp_dir / "comparison.md").exists() else "")
    print(f"sweep {exp_dir.name}: {len(results)} trials in {time.time() - started:.0f} s")
    for label, path in written.items():
        print(f"  {label:<12} {path}")
    if stop.is_set():
        print(f"interrupted: state saved; continue with\n  {resume_command(exp_dir, args.output)}",
              file=sys.stderr)
        return INTERRUPTED
    return 0


def resume_command(exp_dir: Path, output: str) -> str:
    extra = f" --output {shlex.quote(str(output))}" if str(output) != "results" else ""
    return f"python sweep/run.py --resume {exp_dir.name}{extra}"


def _record_files(name: str, args, space, record: dict, warm, share: bool) -> dict[str, str]:
    """What ran, for reproduction and --resume: run_args.json, command.txt, the space, sweep.json."""
    record["name"] = name
    describe = {**space.describe(), "metric": args.metric, "search": args.search, "scheduler": scheduler_name(args),
                "shared_rce": share, "warm_start": warm.info}
    return {RUN_ARGS: json.dumps(record, indent=1, default=str),
            "command.txt": "python sweep/run.py " + shlex.join(record["argv"]) + "\n",
            f"space-{space.name}.yaml": Path(space.path).read_text(),
            "sweep.json": json.dumps(describe, indent=1, default=str)}


def atomic_write_text(path: Path, text: str) -> None:
    """A unique temporary file in the same folder, then rename: never a torn or clobbered file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
