"""End to end: wall time of ``sweep/run.py --space kl_beta --smoke-test`` and (--full) of the default study.

Each run starts from an empty output root, as on a fresh checkout: the simulator's data,
the SFT checkpoint and the RCE warm-up are all computed inside the timed run. The wall
time is the subprocess's, from start to exit (Ray start-up and every output included).
Targets on 2 cores: smoke <= 90 s, default <= 15 min. Without --full, default_s is
"not measured". Last line: one JSON object.

    python bench/end_to_end.py [--full] [--keep DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.lib.sweeps import Experiment, run_cli, write_tmp_root  # noqa: E402

SMOKE_LIMIT_S, DEFAULT_LIMIT_S = 90.0, 15 * 60.0


def timed(root, name: str, extra: list[str]) -> tuple[float, int, str]:
    run = run_cli(["--space", "kl_beta", *extra, "--output", str(root / name), "--name", name,
                   "--verbose", "0"])
    exp = Experiment.read(root / name / name)
    return run.wall_s, len(exp.leaderboard), run.command()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--full", action="store_true", help="also time the default study (about 15 min)")
    p.add_argument("--keep", help="write the experiments here and keep them (default: a temp dir, removed)")
    args = p.parse_args()
    root = write_tmp_root(args.keep, "icd-bench-e2e-")
    try:
        smoke_s, smoke_trials, smoke_cmd = timed(root, "smoke", ["--smoke-test"])
        out = {"cores": len(os.sched_getaffinity(0)), "smoke_s": smoke_s, "smoke_trials": smoke_trials,
               "smoke_within_target": smoke_s <= SMOKE_LIMIT_S, "default_s": "not measured",
               "commands": [smoke_cmd]}
        if args.full:
            default_s, default_trials, cmd = timed(root, "default", [])
            out.update(default_s=default_s, default_trials=default_trials,
                       default_within_target=default_s <= DEFAULT_LIMIT_S)
            out["commands"].append(cmd)
        print(f"smoke: {smoke_s:.1f} s ({smoke_trials} trials); default: "
              + (f"{out['default_s']:.1f} s" if args.full else "not measured (pass --full)"))
        print(json.dumps(out))
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
