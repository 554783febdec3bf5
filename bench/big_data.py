"""Big data, shared: per-trial memory of concurrent trials on VQAv2-scale inputs vs a no-data trial.

Writes synthetic Lever-Plus files under a temp dir in /tmp (removed afterwards): a
443,757 x 512 float32 embedding matrix (0.9 GB, torch.save), a k64 RL JSON of 5,000
queries x 20 candidates and a beam JSON (5 beams each); the same files at toy scale
(2,000 rows, 400 queries), the "no-data" trial; and the 5,000 queries over a 7,000-row
matrix ("same queries"), whose trials compute exactly what the data trials compute
(same split sizes, batches, decode chunks) and differ only by the embedding matrix.
Each set is loaded once by
``DataSource.from_files``, its trials' tensors built once (``DataSource.prepare``, as
``sweep/run.py`` does), and run as ``--trials`` concurrent Tune trials of the real
``icd_trainable`` (``tune.with_parameters``, 1 CPU each; no RCE, 1 GRPO epoch on
``train_queries`` queries, validation and test evaluation on every held-out query);
the big set runs once more without ``prepare`` (each trial builds its own tensors, as a
trial whose data configuration the driver could not enumerate does),
while a sampler reads every trial worker's memory (bench/lib/procs.py). Last, one
``ray.get`` in a fresh worker measures what shipping costs: the DataSource as shipped
vs its fields pickled the way a plain dataclass pickles them (``ray_get_uss_mb``).

Growth = the worst data trial's peak minus the mean no-data trial's peak, as a
fraction of the embedding bytes; ``embedding_growth`` is the same against the
"same queries" trials: what the embedding matrix alone adds to a trial. Three readings
of "resident memory":
  RSS  counts every resident page the process maps, including the object-store pages
       it reads (shared by all trials and stored once; the kernel maps up to 16
       neighbouring pages per read fault, so random row reads map most of the matrix);
  PSS  divides each shared page among the processes mapping it;
  USS  counts only the process's private pages: a copy of the data per trial shows
       here, shared zero-copy pages do not.
``rss_growth_fraction`` (the key) is the USS reading, the one that answers "is there a
copy per trial"; the RSS and PSS readings are printed next to it. Last line: one JSON object.

    python bench/big_data.py [--rows 443757] [--queries 5000] [--trials 2] [--keep DIR]
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.lib.procs import TreeSampler  # noqa: E402
from bench.lib.sweeps import write_tmp_root  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
KINDS = ("rss", "uss", "pss", "anon", "shmem_pss")


def write_files(root: Path, rows: int, dim: int, queries: int, candidates: int, seed: int = 0) -> dict:
    """Synthetic embeddings [rows, dim], k64 RL JSON (queries x candidates) and beam JSON under ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    emb = torch.empty(rows, dim)
    for s in range(0, rows, 1 << 16):  # chunks: no second full-size temporary
        block = torch.randn(min(1 << 16, rows - s), dim, generator=g)
        emb[s:s + len(block)] = torch.nn.functional.normalize(block, dim=-1)
    torch.save(emb, root / "embeddings.pt")
    del emb
    rng = np.random.default_rng(seed)
    rl, beam = {}, {}
    for q in range(queries):
        pool = rng.choice(rows, 64, replace=False).tolist()
        cands = []
        for c in range(candidates):
            local = rng.choice(64, 2, replace=False).tolist()
            acc = float(rng.choice([0.0, 0.3, 0.6, 1.0]))
            is_beam = c < candidates // 2
            cands.append({"pointer": local, "pointer_global": [pool[i] for i in local],
                          "gen_method": "beam" if is_beam else "sample",
                          "beam_score": round(float(rng.random()), 6) if is_beam else None,
                          "logprob_score": round(float(-3 * rng.random()), 6), "vqa_acc_score": acc,
                          "vqa_correct": int(acc > 0), "vqa_eval_mode": "vqaEval", "eval_failed": False})
        rl[str(q)] = {"candidate_pool_ids": pool, "pointer_candidates": cands}
        beams = [rng.choice(pool, 2, replace=False).tolist() for _ in range(5)]
        beam[str(q)] = {"id_list": [b + [q] for b in beams],
                        "score_list": sorted((round(float(x), 6) for x in rng.random(5)), reverse=True)}
    (root / "rl.json").write_text(json.dumps(rl))
    (root / "beam.json").write_text(json.dumps(beam))
    return {k: str(root / name) for k, name in
            (("embeddings", "embeddings.pt"), ("rl", "rl.json"), ("beam", "beam.json"))}


def run_trials(files: dict, n_trials: int, train_queries: int, interval: float, storage: Path,
               name: str, prepare: bool = True) -> list[dict]:
    """``n_trials`` concurrent trials of icd_trainable on ``files``; each trial worker's peak/last memory."""
    from ray import tune

    from trainer.config import from_dict
    from trainer.model import PointerSelector
    from trainer.task import DataSource, WarmStart
    from trainer.trainable import icd_trainable

    source = DataSource.from_files(**files, evaluator="lookup")
    base = {"rce_epochs": 0, "grpo_epochs": 1, "train_queries": train_queries}
    cfg = from_dict(base)
    if prepare:  # what sweep/run.py does: the trials' tensors are built once, here, and shipped built
        source.prepare([cfg])
    # untrained SFT weights: this measures memory, not accuracy, and the driver's SFT is not per trial
    warm = WarmStart(PointerSelector.from_config(cfg.model, int(source.embeddings.shape[1])).state_dict())
    trainable = tune.with_resources(tune.with_parameters(icd_trainable, source=source, warm=warm), {"cpu": 1})
    betas = [round(0.05 * (i + 1), 2) for i in range(n_trials)]
    tuner = tune.Tuner(trainable, param_space={**base, "kl_beta": tune.grid_search(betas)},
                       tune_config=tune.TuneConfig(metric="acc_mean", mode="max"),
                       run_config=tune.RunConfig(name=name, storage_path=str(storage), verbose=0))
    with TreeSampler(os.getpid(), interval=interval, memory=True) as sampler:
        results = tuner.fit()
    if results.errors:
        raise SystemExit(f"{name}: a trial failed: {results.errors[0]}")
    pids = {int(r.metrics["pid"]) for r in results}
    traces = [t for t in sampler.trials() if t.pid in pids and t.peak]
    if len(traces) != n_trials:
        raise SystemExit(f"{name}: sampled {len(traces)} of {n_trials} trial workers; lower --interval")
    first = min(t.trial_since for t in traces)
    overlap = min(t.last_seen for t in traces) - max(t.trial_since for t in traces)
    del source, trainable, tuner, results
    gc.collect()
    return [{"pid": t.pid, "peak": t.peak, "concurrent_s": overlap,
             "span_s": [round(t.trial_since - first, 1), round(t.last_seen - first, 1)]} for t in traces]


def transport_cost(files: dict) -> dict:
    """USS (MB) that one ``ray.get`` adds to a fresh worker: the DataSource as shipped, and the same
    fields as a plain dataclass pickles them (the torch tensor and the loaders' dicts)."""
    import dataclasses

    import ray

    from trainer.task import DataSource

    source = DataSource.from_files(**files, evaluator="lookup")
    boxes = {"datasource": ray.put(source),
             "plain_fields": ray.put({f.name: getattr(source, f.name) for f in dataclasses.fields(source)})}
    del source

    @ray.remote(num_cpus=1, max_calls=1)  # a fresh worker process per call
    def added_uss(box: list) -> float:
        import gc

        import psutil

        import trainer.task  # noqa: F401  (imports, torch's included, are not the data's cost)

        me = psutil.Process()
        gc.collect()
        before = me.memory_full_info().uss
        value = ray.get(box[0])  # noqa: F841  (held while measuring)
        gc.collect()
        return (me.memory_full_info().uss - before) / 1e6

    # the ref travels inside a list so that the worker, not Ray's argument resolution, calls ray.get
    out = {name: ray.get(added_uss.remote([ref])) for name, ref in boxes.items()}
    del boxes
    return out


def growth(data: list[dict], base: list[dict], data_bytes: int) -> dict:
    """Worst data trial's peak minus the mean baseline trial's peak: MB, and fraction of ``data_bytes``.

    Peaks, not final samples: a worker's last sample may fall while it is already shutting down.
    """
    out = {}
    for kind in KINDS:
        extra = max(t["peak"].get(kind, np.nan) for t in data) - float(np.mean([t["peak"].get(kind, np.nan)
                                                                                  for t in base]))
        out[kind] = {"mb": extra / 1e6, "fraction": extra / data_bytes}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=443_757)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--queries", type=int, default=5000)
    p.add_argument("--candidates", type=int, default=20)
    p.add_argument("--small-rows", type=int, default=2000)
    p.add_argument("--small-queries", type=int, default=400)
    p.add_argument("--trials", type=int, default=2, help="concurrent trials (1 CPU each)")
    p.add_argument("--train-queries", type=int, default=200, help="train_queries of every trial")
    p.add_argument("--interval", type=float, default=0.1, help="memory sampling interval, seconds")
    p.add_argument("--keep", help="write the files and trial folders here and keep them")
    args = p.parse_args()
    import ray

    root = write_tmp_root(args.keep, "icd-bench-bigdata-")
    try:
        t0 = time.perf_counter()
        small = write_files(root / "small", args.small_rows, args.dim, args.small_queries, args.candidates)
        big = write_files(root / "big", args.rows, args.dim, args.queries, args.candidates)
        print(f"wrote synthetic files in {time.perf_counter() - t0:.1f} s under {root}")
        data_bytes = args.rows * args.dim * 4
        ray.init(num_cpus=args.trials, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}})
        same = write_files(root / "same_queries", args.queries + args.small_rows, args.dim, args.queries,
                           args.candidates)
        empty = run_trials(small, args.trials, args.train_queries, args.interval, root / "runs", "no_data")
        queries_only = run_trials(same, args.trials, args.train_queries, args.interval, root / "runs",
                                  "same_queries")
        data = run_trials(big, args.trials, args.train_queries, args.interval, root / "runs", "data")
        # a trial whose data configuration the driver could not prepare (an Optuna-sampled data knob)
        own = run_trials(big, args.trials, args.train_queries, args.interval, root / "runs", "data_own_build",
                         prepare=False)
        shipped = transport_cost(big)
        ray.shutdown()
        peak, emb = growth(data, empty, data_bytes), growth(data, queries_only, data_bytes)
        out = {"rows": args.rows, "dim": args.dim, "queries": args.queries, "candidates": args.candidates,
               "trials": args.trials, "data_mb": data_bytes / 1e6,
               "rss_growth_fraction": peak["uss"]["fraction"],
               "rss_growth_fraction_own_build": growth(own, empty, data_bytes)["uss"]["fraction"],
               "growth_peak": peak, "embedding_growth_peak": emb,
               "no_data_trials_mb": [{k: v / 1e6 for k, v in t["peak"].items()} for t in empty],
               "same_queries_trials_mb": [{k: v / 1e6 for k, v in t["peak"].items()} for t in queries_only],
               "data_trials_mb": [{k: v / 1e6 for k, v in t["peak"].items()} for t in data],
               "data_own_build_trials_mb": [{k: v / 1e6 for k, v in t["peak"].items()} for t in own],
               "concurrent_s": min(t["concurrent_s"] for t in data),
               "data_trial_spans_s": [t["span_s"] for t in data],
               "ray_get_uss_mb": shipped}
        for kind in KINDS:
            print(f"{kind.upper()}: each trial peaks {peak[kind]['mb']:8.1f} MB above a no-data trial "
                  f"= {100 * peak[kind]['fraction']:5.1f}% of the {data_bytes / 1e6:.0f} MB embeddings "
                  f"; above a same-queries trial: {emb[kind]['mb']:.1f} MB")
        print(f"USS of a data trial that builds its own tensors (data configuration not prepared): "
              f"{100 * out['rss_growth_fraction_own_build']:.1f}% of the embeddings above a no-data trial")
        print(f"one ray.get in a fresh worker adds {shipped['datasource']:.1f} MB USS for the DataSource, "
              f"{shipped['plain_fields']:.1f} MB for its fields pickled as a plain dataclass would")
        print(json.dumps(out))
    finally:
        if ray.is_initialized():
            ray.shutdown()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
