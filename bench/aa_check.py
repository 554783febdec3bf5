"""A/A check: the same configuration with different seeds, compared with itself by the comparison table.

    python bench/aa_check.py                   # synthetic + real simulator runs (~4 min on 2 busy cores)
    python bench/aa_check.py --skip-real --table-reps 1000

Three measurements, each the fraction of repetitions whose verdict is 'no
detectable difference' (the issue asks for >= 0.95):

1. table, synthetic: ``sweep.comparison.build_comparison`` (the product's code
   path: two-level bootstrap, sign-flip tests, Holm over the whole table) on a
   table with SFT, configuration A (3 seeds, marked as the document's
   original) and configuration A' (3 other seeds of the same per-query
   success probabilities, 200 queries x 4 shots, sampled 0/1 correctness).
   Reported: A' vs original on acc_mean, and "every cell of the table" (all
   15 comparisons, each of them an A/A). Also with a 2-point training-seed
   spread and 6 rows of the configuration (the seed variance pooled over 12 df).
2. batched, synthetic (``sweep.aa.aa_false_positive_rate``), many more
   repetitions, also with a training-seed spread (each seed's probabilities
   shifted by N(0, sd)) and without Holm (the per-test rate, which a valid
   test keeps near alpha = 0.05), with the table's test and with the
   sign-flip test alone.
3. table, real runs: one configuration (grpo_lr 1e-3, kl_beta 0) trained with
   8 seeds on the reduced simulator of ``bench/sim_record.py``; per
   repetition a new eval seed draws sampled outcomes (as the product's
   sampled evaluator) for the final-epoch selections, the 8 seeds are split
   at random into A (3) and A' (3), and the table is built with the real SFT
   selector as the SFT row.

The last line is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import pandas as pd

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sweep import aa, stats  # noqa: E402
from sweep.comparison import METRICS, build_comparison  # noqa: E402

NO_DIFF = stats.VERDICTS[2]
REAL_HYPER = {"grpo_lr": 1e-3, "kl_beta": 0.0}


def split_record(ids: list[int], correct: np.ndarray, sel: np.ndarray) -> dict:
    """evaluation.json split: correct [S, Q] 0/1, sel [Q, S] (shot k = first k ids)."""
    return {"query_ids": ids, "correct": {str(k + 1): correct[k].tolist() for k in range(correct.shape[0])},
            "selections": {str(k + 1): sel[:, : k + 1].tolist() for k in range(correct.shape[0])}}


def aa_table(ids: list[int], sft: tuple, sides: dict[str, list[tuple]]) -> pd.DataFrame:
    """The comparison table of SFT + configurations; ``sides``: name -> [(correct, sel)] per seed."""
    rows, evaluations = [], {}
    for j, (name, seeds) in enumerate(sides.items()):
        for s, (corr, sel) in enumerate(seeds):
            tid = f"{name}_{s}"
            evaluations[tid] = {"val": split_record(ids, corr, sel)}
            rows.append({"trial_id": tid, "status": "completed", "stop_reason": "completed",
                         "grpo_epochs_done": 9, "kl_beta": 0.1 * (j + 1),
                         **{m: float(corr.mean()) for m in METRICS}, "seed": s, "config_hash": name})
    meta = {"scientific": [], "original": {"kl_beta": 0.1}}   # the first side is the "original"
    table, _ = build_comparison(pd.DataFrame(rows), evaluations, {"sft": {"val": split_record(ids, *sft)}}, meta)
    return table


def verdicts(table: pd.DataFrame, name: str) -> tuple[bool, bool]:
    """(A' vs original on acc_mean says no difference, every verdict in the table says no difference)."""
    row = table[table["row"] == name].iloc[0]
    cells = [c for c in table.columns if "_verdict_" in c]
    every = all(v == NO_DIFF for v in table[cells].to_numpy().ravel() if isinstance(v, str))
    return row["acc_mean_verdict_orig"] == NO_DIFF, every


def synthetic_table(reps: int, n: int, seed: int, *, seed_sd: float = 0.0, n_configs: int = 2) -> dict:
    """``n_configs`` rows of one configuration (3 seeds each; seeds shifted by N(0, seed_sd)) + SFT."""
    rng = np.random.default_rng(seed)
    p = rng.beta(2, 2, size=(4, n))
    ids = list(range(10_000, 10_000 + n))
    new_sel = lambda: rng.integers(0, 2**40, size=(n, 4))  # noqa: E731  (distinct selections: drift 1)

    def draw(sd: float = seed_sd):
        return ((rng.random(p.shape) < np.clip(p + rng.normal(0, sd) if sd else p, 0, 1)).astype(float),
                new_sel())

    ok_pair = ok_all = 0
    names = ["A"] + [f"B{i}" for i in range(1, n_configs)]
    for _ in range(reps):
        table = aa_table(ids, draw(0.0), {name: [draw() for _ in range(3)] for name in names})
        pair, every = verdicts(table, "B1")
        ok_pair, ok_all = ok_pair + pair, ok_all + every
    return {"reps": reps, "n_val": n, "configs": n_configs, "seed_sd_points": 100 * seed_sd,
            "pair_no_diff_rate": ok_pair / reps, "table_no_diff_rate": ok_all / reps}


def batched(reps: int, n: int, seed: int, seed_sds: list[float]) -> list[dict]:
    p = np.random.default_rng(seed).beta(2, 2, size=(4, n))
    out = []
    for sd in seed_sds:
        kw = dict(n_seeds=3, n_reps=reps, seed_sd=sd)
        fam = aa.aa_false_positive_rate(p, seed=seed + 1, **kw)
        single = aa.aa_false_positive_rate(p, seed=seed + 2, holm_family=False, **kw)
        query_only = aa.aa_false_positive_rate(p, seed=seed + 2, holm_family=False, seed_aware=False, **kw)
        out.append({"seed_sd_points": 100 * sd, "no_diff_rate_holm_5": 1 - fam, "per_test_fp_rate": single,
                    "per_test_fp_rate_sign_flip_only": query_only})
    return out


def real_runs(reps: int, seed: int, n_seeds: int, use_cache: bool = True) -> dict:
    from sim_record import Curve, Recorder

    rec = Recorder(share_rce=True)
    t0 = time.time()
    curves = [rec.record({**REAL_HYPER, "seed": s}, use_cache=use_cache) for s in range(n_seeds)]
    train_s = time.time() - t0
    sft_p, sft_sel = rec.sft_record()
    sft = Curve({}, curves[0].query_ids, sft_p[None], sft_sel[None])
    ids = curves[0].query_ids.tolist()
    exact = np.array([c.exact_acc(-1) for c in curves])
    final_sel = [c.sel[-1] for c in curves]
    drift = np.mean([np.mean(np.any(final_sel[i] != final_sel[j], axis=1))
                     for i in range(n_seeds) for j in range(i + 1, n_seeds)])
    rng = np.random.default_rng(seed)
    ok_pair = ok_all = 0
    for r in range(reps):
        eval_seed = 7_000_000 + seed * 10_007 + r
        perm = rng.permutation(n_seeds)
        side = lambda idx: [(curves[i].sampled(-1, eval_seed), curves[i].sel[-1]) for i in idx]  # noqa: E731
        table = aa_table(ids, (sft.sampled(0, eval_seed), sft_sel), {"A": side(perm[:3]), "B1": side(perm[3:6])})
        pair, every = verdicts(table, "B1")
        ok_pair, ok_all = ok_pair + pair, ok_all + every
    return {"reps": reps, "seeds_trained": n_seeds, "n_val": len(ids), "config": REAL_HYPER,
            "exact_acc_mean_per_seed": [round(float(x), 4) for x in exact],
            "seed_sd_points": round(100 * float(exact.std(ddof=1)), 3),
            "mean_pairwise_selection_drift": round(float(drift), 3), "train_s": round(train_s, 1),
            "pair_no_diff_rate": ok_pair / reps, "table_no_diff_rate": ok_all / reps}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--table-reps", type=int, default=400, help="repetitions through build_comparison")
    ap.add_argument("--batched-reps", type=int, default=4000)
    ap.add_argument("--real-reps", type=int, default=200)
    ap.add_argument("--spread-reps", type=int, default=100,
                    help="repetitions of the 6-row table with a 2-point seed spread (0 skips it)")
    ap.add_argument("--real-seeds", type=int, default=8)
    ap.add_argument("--n-val", type=int, default=200)
    ap.add_argument("--seed-sd", type=float, nargs="+", default=[0.0, 0.005, 0.01, 0.02],
                    help="training-seed spreads (accuracy units) for the batched check")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-real", action="store_true")
    ap.add_argument("--no-cache", action="store_true", help="retrain the real runs instead of reading the cache "
                    "(the cache key is the spec and config, not the trainer's code)")
    args = ap.parse_args(argv)

    out: dict = {}
    t = time.time()
    out["table_synthetic"] = synthetic_table(args.table_reps, args.n_val, args.seed)
    print(f"table, synthetic ({args.table_reps} reps, {time.time() - t:.0f} s): {out['table_synthetic']}", flush=True)
    t = time.time()
    out["batched_synthetic"] = batched(args.batched_reps, args.n_val, args.seed, args.seed_sd)
    print(f"batched, synthetic ({args.batched_reps} reps per row, {time.time() - t:.0f} s):")
    print("| seed sd (points) | 'no detectable difference', Holm over 4 shots + mean | per-test false positives "
          "(shot mean, unadjusted) | same, sign-flip test alone |\n|---|---|---|---|")
    for row in out["batched_synthetic"]:
        print(f"| {row['seed_sd_points']:.1f} | {row['no_diff_rate_holm_5']:.4f} | {row['per_test_fp_rate']:.4f} | "
              f"{row['per_test_fp_rate_sign_flip_only']:.4f} |")
    if args.spread_reps:
        t = time.time()
        out["table_synthetic_seed_spread"] = synthetic_table(args.spread_reps, args.n_val, args.seed + 5,
                                                             seed_sd=0.02, n_configs=6)
        print(f"table, synthetic, 6 rows of one configuration, seed sd 2 points ({time.time() - t:.0f} s): "
              f"{out['table_synthetic_seed_spread']}", flush=True)
    from sim_record import prompt_uniforms_source

    out["uniforms"] = prompt_uniforms_source()[1]
    if not args.skip_real:
        t = time.time()
        out["table_real"] = real_runs(args.real_reps, args.seed, args.real_seeds, not args.no_cache)
        print(f"table, real simulator runs ({time.time() - t:.0f} s): {out['table_real']}", flush=True)
    out["aa_no_diff_rate"] = out["table_synthetic"]["pair_no_diff_rate"]
    print(json.dumps(out))
    rates = [out["table_synthetic"]["pair_no_diff_rate"]] + (
        [out["table_real"]["pair_no_diff_rate"]] if "table_real" in out else [])
    return 0 if min(rates) >= 0.95 else 1


if __name__ == "__main__":
    sys.exit(main())
