"""Warm-up once: SFT and RCE epochs executed across a whole sweep, and its wall time vs independent runs.

Runs ``sweep/run.py --space kl_beta`` (no SFT/RCE hyperparameter varies: only kl_beta and
adaptive_kl) with an empty warm-up cache, then every one of its trials again as an
independent single-configuration run (``--set`` of the trial's swept values, its own
empty warm-up cache), the way the users ran configurations one at a time. All runs
share the simulator's data cache, written before any timing. Epochs are counted, not
inferred: the driver logs one line per SFT and RCE epoch, and every trial reports one
``phase: rce`` row per RCE epoch it runs (trials never run SFT: they start from the
driver's checkpoint). ``sft_runs`` = SFT epochs / sft_epochs, ``rce_runs`` = RCE
epochs / rce_epochs, over the sweep; ``wall_ratio_vs_independent`` = sweep wall /
sum of the independent runs' walls. Default: the smoke benchmark and budgets
(--smoke-test, 2 configurations); ``--default`` uses the embedded benchmark at the
space's budgets (about 15 min for the sweep alone). Last line: one JSON object.

    python bench/warmup_once.py [--seeds 1] [--default] [--set KEY=VALUE ...] [--keep DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.lib.sweeps import Experiment, count_driver_epochs, run_cli, write_tmp_root  # noqa: E402


def epochs_of(run, exp: Experiment) -> dict:
    return {"sft": count_driver_epochs(run.stdout, "sft"),
            "rce": count_driver_epochs(run.stdout, "rce") + exp.trial_rce_epochs()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--default", action="store_true", help="embedded benchmark and the space's budgets")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="passed to every run")
    p.add_argument("--keep", help="write the experiments here and keep them (default: a temp dir, removed)")
    args = p.parse_args()
    from trainer.config import from_dict
    from trainer.simulator import DEFAULT_SPEC, SMOKE_SPEC, ensure_files

    root = write_tmp_root(args.keep, "icd-bench-warmup-")
    try:
        ensure_files(DEFAULT_SPEC if args.default else SMOKE_SPEC, root / "_cache" / "simulator")
        common = (["--space", "kl_beta"] + ([] if args.default else ["--smoke-test"])
                  + [a for s in args.set for a in ("--set", s)] + ["--output", str(root), "--verbose", "0"])
        sweep = run_cli(common + ["--seeds", str(args.seeds), "--name", "sweep"])
        exp = Experiment.read(root / "sweep")
        keys = exp.sweep["swept_keys"]
        fixed = exp.sweep["fixed"]
        cfg = from_dict({k: v for k, v in fixed.items() if k in from_dict({}).to_dict()})
        counted = epochs_of(sweep, exp)
        independent = []
        for i, row in exp.leaderboard.sort_values("trial_id").reset_index(drop=True).iterrows():
            shutil.rmtree(root / "_cache" / "warmup", ignore_errors=True)  # each run trains its own warm-up
            sets = [a for k in keys for a in ("--set", f"{k}={row[k]}")]
            run = run_cli(common + sets + ["--seeds", "1", "--name", f"solo{i}"])
            solo = Experiment.read(root / f"solo{i}")
            counts = epochs_of(run, solo)
            independent.append({"wall_s": run.wall_s, **{f"{k}_epochs": v for k, v in counts.items()}})
        indep_wall = sum(r["wall_s"] for r in independent)
        out = {"trials": len(exp.leaderboard), "sft_epochs": cfg.sft.sft_epochs,
               "rce_epochs": cfg.rce.rce_epochs,
               "sft_epochs_executed": counted["sft"], "rce_epochs_executed": counted["rce"],
               "sft_runs": counted["sft"] / cfg.sft.sft_epochs,
               "rce_runs": counted["rce"] / cfg.rce.rce_epochs if cfg.rce.rce_epochs else 0.0,
               "warm_start": exp.sweep.get("warm_start"), "shared_rce": exp.sweep.get("shared_rce"),
               "sweep_wall_s": sweep.wall_s, "independent_wall_s": indep_wall,
               "independent_sft_runs": sum(r["sft_epochs"] for r in independent) / cfg.sft.sft_epochs,
               "independent_rce_runs": (sum(r["rce_epochs"] for r in independent) / cfg.rce.rce_epochs
                                        if cfg.rce.rce_epochs else 0.0),
               "wall_ratio_vs_independent": sweep.wall_s / indep_wall, "command": sweep.command()}
        print(f"sweep of {out['trials']} trials: {counted['sft']} SFT epochs ({out['sft_runs']:.2f} runs' "
              f"worth), {counted['rce']} RCE epochs ({out['rce_runs']:.2f}); {sweep.wall_s:.1f} s vs "
              f"{indep_wall:.1f} s "
              f"for {len(independent)} independent runs (ratio {out['wall_ratio_vs_independent']:.2f})")
        print(json.dumps(out))
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
