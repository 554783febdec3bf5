"""How often stock ASHA and noise-aware ASHA keep the truly best configuration, and at what compute.

    python bench/pruning_fidelity.py                 # record once (~5 min on 2 busy cores), replay 40 sweeps
    python bench/pruning_fidelity.py --repetitions 200 --concurrency 1

1. Recording (real training, once, cached): every configuration of a learning-
   rate study (rce_lr x grpo_lr, 16 configurations, seed 0) is trained on the
   reduced simulator of ``bench/sim_record.py`` for its full GRPO budget
   (9 epochs) through ``trainer.loop.train``; each GRPO epoch's validation
   selections and their exact P(correct) are kept.
2. Replay (many sweeps, no training): per repetition a new eval seed draws the
   sampled validation outcomes the product's sampled evaluator would give
   (deterministic per prompt), the trials start in a new random order,
   ``--concurrency`` run at a time, one GRPO epoch per step round-robin; every
   result (acc_mean and its standard error, computed by ``EvalReport.metrics``
   exactly as the trainer reports them) goes through Ray's own
   ``ASHAScheduler`` and through ``NoiseAwareASHA`` with the same grace
   period, reduction factor and max_t.

The truly best configuration is the one with the highest *exact* acc_mean at
the full budget. Per scheduler: how often it reached the full budget (kept),
how far the best surviving configuration is below it (exact points), how far
the configuration a sweep would pick (best *sampled* final value among
survivors) is below it, and the GRPO trial-epochs used relative to FIFO.
The last line is one JSON object (the headline setting: the product's default
grace period).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from types import SimpleNamespace

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler  # noqa: E402

from sweep.schedulers import NoiseAwareASHA  # noqa: E402
from trainer.evaluate import EvalReport  # noqa: E402

RCE_LRS = (1e-5, 1e-4, 1e-3, 5e-3)
GRPO_LRS = (5e-6, 1e-4, 1e-3, 3e-3)
TIME_ATTR, METRIC = "grpo_epoch", "acc_mean"


def study() -> list[dict]:
    return [{"rce_lr": r, "grpo_lr": g} for r in RCE_LRS for g in GRPO_LRS]


def sampled_curves(curves, eval_seed: int) -> np.ndarray:
    """[N, E, 2] (acc_mean, acc_mean_se) of every trial and epoch, as the trainer would report them."""
    import torch

    out = np.empty((len(curves), curves[0].p.shape[0], 2))
    for i, c in enumerate(curves):
        for e in range(c.p.shape[0]):
            outcomes = c.sampled(e, eval_seed)
            rep = EvalReport(query_ids=torch.as_tensor(c.query_ids),
                             correct={s + 1: outcomes[s] for s in range(outcomes.shape[0])})
            m = rep.metrics()
            out[i, e] = m["acc_mean"], m["acc_mean_se"]
    return out


def make(kind: str, max_t: int, grace: int, rf: float, k: float):
    if kind == "fifo":
        return FIFOScheduler()
    if kind == "asha":
        return ASHAScheduler(time_attr=TIME_ATTR, metric=METRIC, mode="max", max_t=max_t,
                             grace_period=grace, reduction_factor=rf, brackets=1)
    return NoiseAwareASHA(time_attr=TIME_ATTR, metric=METRIC, mode="max", max_t=max_t,
                          grace_period=grace, reduction_factor=rf, brackets=1, k=k)


def replay(sched, values: np.ndarray, order: np.ndarray, concurrency: int) -> np.ndarray:
    """Run the trials through ``sched``: [N] GRPO epochs each trial used.

    ``values``: [N, E, 2] reported (acc_mean, se) per epoch; trials start in
    ``order``, ``concurrency`` at a time, advancing one epoch per turn.
    """
    n, max_t = values.shape[0], values.shape[1]
    used = np.zeros(n, dtype=int)
    queue, running = list(order), []
    trials = [SimpleNamespace(trial_id=f"t{i:03d}") for i in range(n)]
    while queue or running:
        while queue and len(running) < concurrency:
            i = queue.pop(0)
            sched.on_trial_add(None, trials[i])
            running.append(i)
        for i in list(running):
            used[i] += 1
            acc, se = values[i, used[i] - 1]
            result = {TIME_ATTR: used[i], METRIC: acc, f"{METRIC}_se": se}
            if sched.on_trial_result(None, trials[i], result) == TrialScheduler.STOP or used[i] >= max_t:
                sched.on_trial_complete(None, trials[i], result)
                running.remove(i)
    return used


def evaluate(curves, args) -> dict:
    exact = np.array([c.exact_acc(-1) for c in curves])
    best = int(np.argmax(exact))
    max_t = curves[0].p.shape[0]
    settings = [("fifo", None, None)] + [(kind, g, k) for g in args.grace for kind, k in
                                         [("asha", None)] + [("noise-asha", k) for k in args.k]]
    stats = {s: {"kept": [], "regret_kept": [], "regret_pick": [], "epochs": []} for s in settings}
    noise = {"reported_se": [], "best_final_sampled": []}
    for r in range(args.repetitions):
        rng = np.random.default_rng([args.seed, r])
        values = sampled_curves(curves, eval_seed=args.seed * 100_003 + r)
        noise["reported_se"].append(values[..., 1].mean())
        noise["best_final_sampled"].append(values[best, -1, 0])
        order = rng.permutation(len(curves))
        for s in settings:
            kind, g, k = s
            used = replay(make(kind, max_t, g or 1, args.reduction_factor, k or 0.0), values, order,
                          args.concurrency)
            alive = used >= max_t
            pick = int(np.flatnonzero(alive)[np.argmax(values[alive, -1, 0])])
            st = stats[s]
            st["kept"].append(bool(alive[best]))
            st["regret_kept"].append(exact[best] - exact[alive].max())
            st["regret_pick"].append(exact[best] - exact[pick])
            st["epochs"].append(used.sum() / (len(curves) * max_t))
    return {"exact": exact, "best": best, "stats": stats, "max_t": max_t, "noise": noise}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repetitions", type=int, default=40)
    ap.add_argument("--concurrency", type=int, default=2, help="trials running at once (default 2: this machine)")
    ap.add_argument("--grace", type=int, nargs="+", default=[3, 1],
                    help="grace periods to compare; the first is the headline (3 = the product's default "
                         "for 9 GRPO epochs, a quarter of the budget)")
    ap.add_argument("--reduction-factor", type=float, default=3.0)
    ap.add_argument("--k", type=float, nargs="+", default=[1.0, 2.0], help="noise-asha k values; first is headline")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-cache", action="store_true", help="retrain instead of reading cached recordings "
                    "(the cache key is the spec and config, not the trainer's code)")
    args = ap.parse_args(argv)

    from sim_record import BASE, Recorder

    t0 = time.time()
    rec = Recorder(share_rce=False)
    curves = []
    for hyper in study():
        curves.append(rec.record(hyper, use_cache=not args.no_cache))
        c = curves[-1]
        print(f"  recorded rce_lr={hyper['rce_lr']:g} grpo_lr={hyper['grpo_lr']:g}: exact acc_mean per GRPO "
              f"epoch {' '.join(f'{100 * c.exact_acc(e):.1f}' for e in range(c.p.shape[0]))}"
              + (f" ({c.seconds:.0f} s)" if c.seconds else " (cached)"), flush=True)
    record_s = time.time() - t0
    from sim_record import prompt_uniforms_source

    uniforms = prompt_uniforms_source()[1]
    print(f"sampled evaluation draws: {uniforms}")
    t1 = time.time()
    res = evaluate(curves, args)
    replay_s = time.time() - t1

    exact, best = res["exact"], res["best"]
    ranked = np.argsort(-exact)
    q = curves[0].p.shape[2]
    print(f"\nstudy: {len(curves)} configurations (rce_lr x grpo_lr), GRPO budget {res['max_t']} epochs, "
          f"{q} validation queries x 4 shots; base {BASE}")
    print("exact final acc_mean, best first: " + ", ".join(
        f"{study()[i]['rce_lr']:g}/{study()[i]['grpo_lr']:g} {100 * exact[i]:.2f}" for i in ranked[:6]) + " ...")
    print(f"gap best - second: {100 * (exact[ranked[0]] - exact[ranked[1]]):.2f} points; "
          f"spread best - worst: {100 * (exact[ranked[0]] - exact[ranked[-1]]):.2f} points")
    se, spread = np.mean(res["noise"]["reported_se"]), np.std(res["noise"]["best_final_sampled"], ddof=1)
    print(f"noise: reported acc_mean_se {100 * se:.2f} points on average; the best configuration's sampled final "
          f"acc_mean varies by {100 * spread:.2f} points (sd) across eval seeds")
    print(f"\n{args.repetitions} replayed sweeps (new eval seed and trial order each), concurrency "
          f"{args.concurrency}, reduction factor {args.reduction_factor:g}\n")
    print("| scheduler | grace | keeps truly best (± binomial SE) | best survivor below best (pts) | picked config "
          "below best (pts) | GRPO epochs vs FIFO |")
    print("|---|---|---|---|---|---|")
    for (kind, g, k), st in res["stats"].items():
        name = kind + (f" k={k:g}" if k is not None else "")
        kept = np.mean(st["kept"])
        binom = np.sqrt(kept * (1 - kept) / len(st["kept"]))
        print(f"| {name} | {g if g else '-'} | {kept:.3f} ± {binom:.3f} | {100 * np.mean(st['regret_kept']):.2f} | "
              f"{100 * np.mean(st['regret_pick']):.2f} | {np.mean(st['epochs']):.3f} |")
    print(f"\nrecording {record_s:.0f} s, replay {replay_s:.0f} s")
    g0, k0 = args.grace[0], args.k[0]
    head = {s: res["stats"][s] for s in (("asha", g0, None), ("noise-asha", g0, k0), ("fifo", None, None))}
    a, n, f = head.values()
    out = {"repetitions": args.repetitions, "configurations": len(curves), "max_t": res["max_t"],
           "grace_period": g0, "reduction_factor": args.reduction_factor, "noise_k": k0,
           "concurrency": args.concurrency, "val_queries": q,
           "uniforms": "product" if uniforms.startswith("trainer.") else "corrected",
           "asha_keep_best_rate": round(float(np.mean(a["kept"])), 4),
           "noise_asha_keep_best_rate": round(float(np.mean(n["kept"])), 4),
           "asha_epoch_fraction": round(float(np.mean(a["epochs"])), 4),
           "noise_asha_epoch_fraction": round(float(np.mean(n["epochs"])), 4),
           "asha_pick_regret_points": round(100 * float(np.mean(a["regret_pick"])), 3),
           "noise_asha_pick_regret_points": round(100 * float(np.mean(n["regret_pick"])), 3),
           "fifo_pick_regret_points": round(100 * float(np.mean(f["regret_pick"])), 3),
           "best_minus_second_points": round(100 * float(exact[ranked[0]] - exact[ranked[1]]), 3),
           "reported_se_points": round(100 * float(se), 3), "eval_seed_sd_points": round(100 * float(spread), 3)}
    print(json.dumps(out))
    return 0 if all(math.isfinite(v) for v in out.values() if isinstance(v, float)) else 1


if __name__ == "__main__":
    sys.exit(main())
