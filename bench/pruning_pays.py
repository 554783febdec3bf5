"""Pruning pays: a pruning scheduler's GRPO trial-epochs vs FIFO's on the same study and seeds, and what its pick loses.

Runs ``sweep/run.py --space kl_beta`` on the embedded benchmark with the same seeds
under each of ``--schedulers`` (default sha, what ``--scheduler auto`` picks for a grid,
and asha), then ``--scheduler fifo`` (one output root: all start from the same cached
SFT/RCE warm-up). ``<scheduler>_epoch_fraction`` = sum of its grpo_epochs_done / FIFO's
(leaderboards). The configuration a scheduler ranks first is the top configuration row
of its comparison.csv; ``<scheduler>_regret`` = FIFO's best configuration's mean final
acc_mean over seeds minus FIFO's mean final acc_mean of that pick (``regret``: the first
scheduler's);
``regret_se`` is the standard error of FIFO's best configuration's mean:
sqrt(seed variance / n_seeds + validation-query SE^2), the query SE being the trials'
reported acc_mean_se (shared by every seed, so it does not shrink with seeds).
Targets: epoch fraction <= 0.40 and regret <= regret_se (``<scheduler>_targets_met``).

Modes: ``--quick`` (default; what ``make bench`` runs): the space at reduced budgets,
rce_epochs=5 and grpo_epochs=8 (the grace periods scale down), 2 seeds;
``--full``: the space's own budgets (RCE 25 + GRPO 25 epochs: about 6, 10 and 13 min on 2
cores for sha, asha and fifo); ``--smoke``: the smoke benchmark, to check this script. Last line: one JSON object.

    python bench/pruning_pays.py [--quick | --full | --smoke] [--set KEY=VALUE ...] [--keep DIR]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pandas as pd  # noqa: E402

from bench.lib.sweeps import Experiment, run_cli, write_tmp_root  # noqa: E402

QUICK = ["rce_epochs=5", "grpo_epochs=8"]


def fifo_by_config(exp: Experiment) -> pd.DataFrame:
    """Per configuration: mean final acc_mean over seeds, its seed and query standard errors."""
    lb = exp.leaderboard.copy()
    se = {tid: rows[-1].get("acc_mean_se", math.nan) for tid, rows in exp.reports.items() if rows}
    lb["acc_mean_se"] = lb["trial_id"].map(se)
    g = lb.groupby("config_hash")
    out = pd.DataFrame({"mean": g["acc_mean"].mean(), "n": g["acc_mean"].size(),
                        "std": g["acc_mean"].std(ddof=1), "query_se": g["acc_mean_se"].mean()})
    seed_se = (out["std"] / out["n"] ** 0.5).fillna(0.0)
    out["se"] = (seed_se ** 2 + out["query_se"].fillna(0.0) ** 2) ** 0.5
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="reduced budgets (default)")
    mode.add_argument("--full", action="store_true", help="the space's own budgets")
    mode.add_argument("--smoke", action="store_true", help="smoke benchmark: checks this script only")
    p.add_argument("--seeds", type=int, help="seeds per configuration (default: the space's, 2)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="passed to every sweep")
    p.add_argument("--schedulers", default="sha,asha",
                   help="pruning schedulers to compare with FIFO, comma-separated; the first is the "
                        "headline 'regret' (default sha,asha: sha is what --scheduler auto picks for a grid)")
    p.add_argument("--keep", help="write the experiments here and keep them (default: a temp dir, removed)")
    args = p.parse_args()
    name = "full" if args.full else "smoke" if args.smoke else "quick"
    sets = (QUICK if name == "quick" else []) + args.set
    root = write_tmp_root(args.keep, "icd-bench-pruning-")
    try:
        common = (["--space", "kl_beta"] + (["--smoke-test"] if args.smoke else [])
                  + [a for s in sets for a in ("--set", s)]
                  + (["--seeds", str(args.seeds)] if args.seeds else [])
                  + ["--seed", "0", "--output", str(root), "--verbose", "0"])
        schedulers = [x for x in args.schedulers.split(",") if x]
        runs = {s: run_cli(common + ["--scheduler", s, "--name", s]) for s in [*schedulers, "fifo"]}
        fifo = Experiment.read(root / "fifo")
        table = fifo_by_config(fifo)
        best = table["mean"].idxmax()
        keys = fifo.sweep["swept_keys"]
        show = fifo.leaderboard.drop_duplicates("config_hash").set_index("config_hash")[keys]
        out = {"mode": name, "trials": len(fifo.leaderboard), "fifo_grpo_epochs": fifo.grpo_epochs_done(),
               "fifo_best": show.loc[best].to_dict(), "fifo_best_acc": float(table.loc[best, "mean"]),
               "regret_se": float(table.loc[best, "se"]),
               "regret_seed_se": float(table.loc[best, "std"] / table.loc[best, "n"] ** 0.5),
               "regret_query_se": float(table.loc[best, "query_se"]), "fifo_wall_s": runs["fifo"].wall_s}
        for s in schedulers:
            exp = Experiment.read(root / s)
            comparison = pd.read_csv(root / s / "comparison.csv")
            configs = comparison[comparison["kind"] == "config"].sort_values("acc_mean", ascending=False)
            pick = configs.iloc[0]["config_hash"]
            key = s.replace("-", "_")
            out.update({f"{key}_grpo_epochs": exp.grpo_epochs_done(),
                        f"{key}_epoch_fraction": exp.grpo_epochs_done() / fifo.grpo_epochs_done(),
                        f"{key}_pick": show.loc[pick].to_dict(),
                        f"{key}_fifo_acc_of_pick": float(table.loc[pick, "mean"]),
                        f"{key}_regret": float(table.loc[best, "mean"] - table.loc[pick, "mean"]),
                        f"{key}_wall_s": runs[s].wall_s})
            out[f"{key}_targets_met"] = bool(out[f"{key}_epoch_fraction"] <= 0.40
                                             and out[f"{key}_regret"] <= out["regret_se"])
            print(f"{name}: {s} {out[f'{key}_grpo_epochs']} GRPO trial-epochs vs FIFO {out['fifo_grpo_epochs']} "
                  f"({out[f'{key}_epoch_fraction']:.2f}); its pick {out[f'{key}_pick']} has FIFO acc_mean "
                  f"{out[f'{key}_fifo_acc_of_pick']:.4f} vs FIFO's best {out['fifo_best']} {out['fifo_best_acc']:.4f}: "
                  f"regret {out[f'{key}_regret']:.4f} (SE {out['regret_se']:.4f})")
        default = schedulers[0].replace("-", "_")
        out["regret"] = out[f"{default}_regret"]  # of the default scheduler (sha for a grid study)
        out["commands"] = [r.command() for r in runs.values()]
        print(json.dumps({k: None if isinstance(v, float) and math.isnan(v) else v for k, v in out.items()},
                         default=str))
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
