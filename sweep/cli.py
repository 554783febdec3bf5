"""Command-line flags of ``sweep/run.py`` and their validation (one line, exit 2, on misuse)."""
from __future__ import annotations

import argparse
import ipaddress
import os
import re

from trainer.errors import UserError

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")

EPILOG = """\
examples:
  python sweep/run.py --space kl_beta                      # embedded benchmark, ASHA, grid x seeds
  python sweep/run.py --space kl_beta --smoke-test         # tiny data and budgets (about a minute)
  python sweep/run.py --space lr --search optuna-tpe --num-samples 16
  python sweep/run.py --space kl_beta --rl-data rl_data_k64_v3.json --beam-data beams.json \\
      --embeddings query_embeddings.pt --sft-ckpt v2.ckpt     # the users' Lever-Plus files
  python sweep/run.py --resume kl_beta-20261125-101500    # continue a killed or stopped sweep

--evaluator module:function IMPORTS AND RUNS that module's code in the driver and in every trial:
only name code you trust. See SECURITY.md for what else the framework trusts.

Ctrl-C stops the trials, saves the state and prints the --resume command (exit code 130).
Bad input (flags, search space, data files): one line naming the file/field/flag, exit code 2.
"""

# What --resume may change: how and where the saved experiment runs, never what it computes.
RESUME_FLAGS = {"resume", "output", "verbose", "max_failures", "address", "dashboard", "dashboard_host",
                "dashboard_port"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python sweep/run.py", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="Sweep RCE + GRPO post-training of the ICD selector with Ray Tune.")
    a = p.add_argument
    g = p.add_argument_group("what to sweep")
    g.add_argument("--space", help="search space: a name from search_spaces/ (see --list-spaces) or a YAML path")
    g.add_argument("--list-spaces", action="store_true", help="list the shipped search spaces and exit")
    g.add_argument("--dry-run", action="store_true", help="print the trials the sweep would run and exit")
    g.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a hyperparameter for every trial (repeatable), e.g. --set grpo_epochs=10")
    g.add_argument("--seeds", type=int, help="repetitions of every configuration (default: the space's seeds)")
    g.add_argument("--seed", type=int, default=0,
                   help="master seed: searcher, shared SFT/RCE warm-up, sampled evaluation (default 0)")
    g.add_argument("--smoke-test", action="store_true",
                   help="tiny benchmark, 2 configurations, 1 seed, a few epochs: checks the whole pipeline")
    g = p.add_argument_group("search and pruning")
    g.add_argument("--search", default="grid", choices=["grid", "random", "optuna-tpe", "optuna-qmc"],
                   help="grid/random enumerate the space; optuna-* sample it adaptively (default grid)")
    g.add_argument("--num-samples", type=int, help="samples of sampled dimensions (default: the space's)")
    g.add_argument("--scheduler", default="auto", choices=["auto", "sha", "asha", "noise-asha", "fifo", "pbt"],
                   help="pruning on --metric at GRPO-epoch rungs. sha: successive halving, every trial meets "
                        "at each rung and the best 1/--reduction-factor go on (a fixed budget); asha: each "
                        "trial decided on arrival (for optuna's stream of trials); auto (default): sha for "
                        "grid/random search, asha otherwise; noise-asha: asha that only prunes beyond "
                        "--noise-k standard errors; fifo never prunes")
    g.add_argument("--metric", default="acc_mean",
                   help="validation metric to prune and rank on: acc_mean (default) or acc_shot1..acc_shot4")
    g.add_argument("--grace-period", type=int,
                   help="GRPO epochs before the first rung (default: a fifth of the budget for sha, a quarter "
                        "for asha/noise-asha, which decide on partly filled rungs)")
    g.add_argument("--reduction-factor", type=float, default=3.0,
                   help="keep 1/rf of the trials at each rung (default 3)")
    g.add_argument("--brackets", type=int, default=1, help="ASHA brackets (default 1)")
    g.add_argument("--noise-k", type=float, default=1.0, help="noise-asha: standard errors of margin (default 1)")
    g = p.add_argument_group("resources")
    g.add_argument("--max-concurrent", type=int, help="trials at once (default: as many as resources allow)")
    g.add_argument("--cpus-per-trial", type=float, default=1.0, help="CPUs per trial = its torch threads")
    g.add_argument("--gpus-per-trial", type=float, default=0.0,
                   help="GPU share per trial, fractional allowed (0.25 packs four trials per GPU)")
    g.add_argument("--max-failures", type=int, default=0,
                   help="retry a failed trial this many times from its last checkpoint (default 0: a trial "
                        "that raises is recorded as errored and the sweep goes on; -1: no limit)")
    g.add_argument("--address", help="HOST:PORT or auto of a running Ray cluster (also RAY_ADDRESS) instead of "
                                     "starting one; run the driver on a cluster node (docs/cluster.md)")
    g.add_argument("--dashboard", action="store_true",
                   help="start the Ray dashboard on 127.0.0.1:8265 (token authentication stays on)")
    g.add_argument("--dashboard-host", default="127.0.0.1", metavar="HOST",
                   help="with --dashboard: bind this address instead of 127.0.0.1. Anything else exposes the "
                        "dashboard (which can run jobs) to that network: prints a warning, and is refused "
                        "when RAY_AUTH_MODE=disabled. Prefer an SSH tunnel")
    g.add_argument("--dashboard-port", type=int, default=8265,
                   help="with --dashboard: its port (default 8265)")
    g = p.add_argument_group("output")
    g.add_argument("--output", default="results",
                   help="output root (default results/): a folder, or a URI pyarrow opens (s3://..., gs://..., "
                        "file://...); on a multi-node cluster every node must see it (docs/cluster.md)")
    g.add_argument("--name", help="experiment name (default <space>-<timestamp>); refused if it exists")
    g.add_argument("--resume", metavar="NAME",
                   help="continue experiment NAME under --output after a kill, crash or Ctrl-C: completed "
                        "trials are kept, unfinished ones continue from their last checkpoint; with "
                        "--max-failures N (not 0) errored trials are retried from theirs too")
    g.add_argument("--verbose", type=int, default=1, choices=[0, 1, 2], help="Tune's progress output")
    g = p.add_argument_group("data (default: the embedded simulated benchmark)")
    g.add_argument("--rl-data", help="Lever-Plus RL JSON (global, k64 or balanced variant)")
    g.add_argument("--beam-data", help="Lever-Plus beam-search JSON (id_list / score_list) for SFT")
    g.add_argument("--embeddings", help="[N, d] float tensor saved with torch.save (row i = train item i)")
    g.add_argument("--pools", help="sampler cache {anchor_idx: [64 ids]} giving evaluation pools")
    g.add_argument("--sft-ckpt", help="start from this SFT checkpoint (ours, Lever-Plus v3 .pt or v2 .ckpt)")
    g.add_argument("--evaluator", default=None,
                   help="simulator (default without data), lookup (default with --rl-data: recorded "
                        "correctness), or module:function called as fn(query_ids, sequences) -> correctness "
                        "(imports and runs your code)")
    return p


def validate(args: argparse.Namespace) -> None:
    """Flag combinations argparse cannot express; raises UserError naming the flag."""
    if args.list_spaces:
        return
    if not args.space and not args.resume:
        raise UserError("--space: required (or --resume NAME); see --list-spaces")
    if args.resume and (args.space or args.name):
        raise UserError("--resume: continues an existing experiment; do not combine with --space/--name")
    if args.resume:
        _check_resume_flags(args)
    for flag in ("resume", "name"):
        value = getattr(args, flag)
        if value is not None and not NAME_RE.match(value):
            raise UserError(f"--{flag}: {value!r} is not a valid experiment name "
                            f"(letters, digits, '.', '_', '-'; no path separators)")
    if args.metric not in ("acc_mean", "acc_shot1", "acc_shot2", "acc_shot3", "acc_shot4"):
        raise UserError(f"--metric: {args.metric!r} is not one of acc_mean, acc_shot1..acc_shot4")
    positive = {"seeds": 1, "num_samples": 1, "max_concurrent": 1, "brackets": 1}
    for flag, low in positive.items():
        value = getattr(args, flag)
        if value is not None and value < low:
            raise UserError(f"--{flag.replace('_', '-')}: must be >= {low}, got {value}")
    if args.cpus_per_trial <= 0:
        raise UserError(f"--cpus-per-trial: must be > 0, got {args.cpus_per_trial}")
    if args.gpus_per_trial < 0:
        raise UserError(f"--gpus-per-trial: must be >= 0, got {args.gpus_per_trial}")
    if args.max_failures < -1:
        raise UserError(f"--max-failures: must be >= -1 (-1 = unlimited), got {args.max_failures}")
    if args.dashboard and (args.address or os.environ.get("RAY_ADDRESS")):
        flag = "--address" if args.address else "RAY_ADDRESS"
        raise UserError(f"--dashboard: starts a local Ray; with {flag} use that cluster's dashboard")
    _check_dashboard(args)
    data_flags = [f for f in ("rl_data", "beam_data", "embeddings") if getattr(args, f)]
    if data_flags and not args.embeddings:
        raise UserError("--embeddings: required with --rl-data/--beam-data")
    if args.embeddings and not (args.rl_data or args.beam_data):
        raise UserError("--rl-data: --embeddings given without --rl-data or --beam-data")
    if args.smoke_test and data_flags:
        raise UserError("--smoke-test: runs on the embedded benchmark; drop the data flags")
    if args.evaluator == "simulator" and data_flags:
        raise UserError("--evaluator simulator: only for the embedded benchmark; use lookup or module:function")
    if args.evaluator not in (None, "simulator") and not data_flags and not args.resume:
        raise UserError("--evaluator: the embedded benchmark is scored by its simulator; give data files "
                        "(--rl-data ...) to use lookup or module:function")
    if args.search in ("grid",) and args.num_samples and args.scheduler == "pbt":
        raise UserError("--scheduler pbt: needs --search random (PBT mutates sampled values)")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_dashboard(args: argparse.Namespace) -> None:
    for flag, default in (("dashboard_host", "127.0.0.1"), ("dashboard_port", 8265)):
        if getattr(args, flag) != default and not args.dashboard:
            raise UserError(f"--{flag.replace('_', '-')}: only with --dashboard")
    if not 1 <= args.dashboard_port <= 65535:
        raise UserError(f"--dashboard-port: must be in 1..65535, got {args.dashboard_port}")
    host = args.dashboard_host
    if host != "localhost":
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise UserError(f"--dashboard-host: {host!r} is not an IP address (e.g. 127.0.0.1, 0.0.0.0)") \
                from None
    if args.dashboard and not is_loopback(host) and os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
        raise UserError(f"--dashboard-host {host}: refused while RAY_AUTH_MODE=disabled: anyone who reaches "
                        f"the dashboard could run code on this machine; unset it or keep 127.0.0.1")


def _check_resume_flags(args: argparse.Namespace) -> None:
    """--resume runs the saved flags: a flag that would change the experiment is an error, not ignored."""
    parser = build_parser()
    for dest, value in vars(args).items():
        if dest not in RESUME_FLAGS and value != parser.get_default(dest):
            raise UserError(f"--{dest.replace('_', '-')}: cannot be combined with --resume (the experiment "
                            f"runs with its saved flags; start a new experiment to change them)")
