"""Trainer throughput: the batched RCE/GRPO epochs vs the users' per-query loop, same losses.

Data: Lever-Plus scale from the embedded simulator (``SPEC``: 800 anchors, 64-item pools,
512-d embeddings, shot_num 2, beam 16 + 20 retrieval pairs + 4 samples + 1 random per
query, deduplicated: 12-40 candidate sequences per query), every anchor a training query.

Three ways through one RCE epoch and one GRPO epoch (group = top 5 by reward, the
document's late curriculum), each on one thread (a trial's CPU share), timed in this
one process so that ratios hold on a noisy machine:

* ``batched``: the product, ``trainer.loop.run_rce_epoch`` / ``run_post_epoch`` with
  ``--batch-size`` query groups per step (every candidate of a group in one forward);
* ``per_query``: the users' trainer (bench/lib/lever_reference.py): one query group per
  step, the pool repeated per candidate sequence, textbook attention;
* ``own_batch1``: the product at batch size 1 (shows what batching alone buys).

Before timing, the batched losses of one batch are compared with the per-query losses on
the same parameters (eval mode): ``max_abs_loss_diff``. Last line: one JSON object.

    python bench/trainer_throughput.py [--queries 800] [--batch-size 32] [--threads 1]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from bench.lib import lever_reference as ref  # noqa: E402
from trainer.algorithms import ALGORITHMS, StageData  # noqa: E402
from trainer.batching import batch_indices, make_batch  # noqa: E402
from trainer.config import from_dict  # noqa: E402
from trainer.data.build import build_dataset  # noqa: E402
from trainer.loop import rce_batch_loss, run_post_epoch, run_rce_epoch  # noqa: E402
from trainer.rewards import rewards_for_training  # noqa: E402
from trainer.simulator import BenchmarkSpec, ensure_files  # noqa: E402
from trainer.state import RunState, Task, reference_logp, seeded  # noqa: E402
from trainer.task import DataSource  # noqa: E402

SPEC = BenchmarkSpec(n_anchors=800, beam_size=16, num_retrieval=20)
GROUP_K, TAU = 5, 1.0


def lever_scale_task(n_queries: int, batch_size: int) -> tuple:
    files = ensure_files(SPEC)
    src = DataSource.from_files(embeddings=str(files.embeddings), rl=str(files.rl), pools=str(files.pools))
    cfg = from_dict({"batch_size": batch_size, "rce_epochs": 1, "grpo_epochs": 1, "grpo_early_epochs": 0,
                     "grpo_late_top_k": GROUP_K, "rce_temp_start": TAU, "rce_temp_end": TAU})
    dataset, _, _ = build_dataset(embeddings=src.embeddings, rl=dict(src.rl), pools=dict(src.pools),
                                  data_cfg=cfg.data, check_finite=False)
    train = dataset.rl.select(torch.arange(min(n_queries, dataset.rl.num_queries)))
    task = Task(model_cfg=cfg.model, embeddings=src.embeddings, train=train, beam_train=None, splits={},
                evaluator=None)  # type: ignore[arg-type]
    return cfg, task


def fresh_state(cfg, task, weights: dict, phase: str) -> RunState:
    torch.manual_seed(0)
    return RunState.start(cfg, task, weights, None if phase == "rce" else weights)


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def batched_epochs(cfg, task, weights: dict, raw, norm) -> dict[str, float]:
    st = fresh_state(cfg, task, weights, "rce")
    rce_s = timed(lambda: run_rce_epoch(st, task, norm, cfg))
    st = fresh_state(cfg, task, weights, "grpo")
    old = reference_logp(st.ref_model, task.train, task)
    grpo_s = timed(lambda: run_post_epoch(st, task, StageData(raw, norm, old, GROUP_K), cfg))
    return {"rce": rce_s, "grpo": grpo_s}


def per_query_epochs(cfg, task, weights: dict, raw, norm) -> dict[str, float]:
    """The users' loop: AdamW (PyTorch defaults, weight decay 0.01), clip 1.0, one query per step."""
    groups, out = task.train, {}
    old = reference_logp(fresh_state(cfg, task, weights, "grpo").ref_model, groups, task)
    for kind in ("rce", "grpo"):
        model = task.new_model()
        model.load_state_dict(weights)
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.01)
        gen = seeded(0, "batches")

        def epoch() -> None:
            for idx in batch_indices(groups.num_queries, 1, gen):
                b = ref.one_query(make_batch(groups, idx, task.embeddings, task.device))
                n = b.seqs.shape[1]
                if kind == "rce":
                    loss = ref.rce_loss(model, b, norm[idx, :n], TAU)
                else:
                    loss, _ = ref.grpo_loss(model, b, raw[idx, :n], old[idx, :n], group_k=GROUP_K,
                                            kl_beta=cfg.grpo.kl_beta)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()

        out[kind] = timed(epoch)
    return out


@torch.no_grad()
def max_loss_diff(cfg, task, weights: dict, raw, norm, n: int) -> float:
    """|batched loss - per-query losses combined as the batch combines them| on one batch, eval mode."""
    st = fresh_state(cfg, task, weights, "grpo")
    st.model.eval()
    groups, idx = task.train, torch.arange(n)
    old = reference_logp(st.ref_model, groups, task)
    b = make_batch(groups, idx, task.embeddings, task.device)
    c = b.seq_mask.shape[1]
    rce_batched = float(rce_batch_loss(st.model, b, norm[idx, :c], TAU))
    x = ALGORITHMS["grpo"].prepare(st, task, cfg, StageData(raw, norm, old, GROUP_K), idx)
    grpo_batched = float(ALGORITHMS["grpo"].loss(st, cfg, x)[0])
    rce_one, grpo_one, sizes = [], [], []
    for i in range(n):
        one = ref.one_query(make_batch(groups, idx[i:i + 1], task.embeddings, task.device))
        k = one.seqs.shape[1]
        rce_one.append(float(ref.rce_loss(st.model, one, norm[i:i + 1, :k], TAU)))
        loss, size = ref.grpo_loss(st.model, one, raw[i:i + 1, :k], old[i:i + 1, :k], group_k=GROUP_K,
                                   kl_beta=st.kl_beta)
        grpo_one.append(float(loss))
        sizes.append(size)
    rce_ref = sum(rce_one) / n                                                # RCE: mean over queries
    grpo_ref = sum(l * s for l, s in zip(grpo_one, sizes)) / sum(sizes)      # GRPO: mean over group entries
    return max(abs(rce_batched - rce_ref), abs(grpo_batched - grpo_ref))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--queries", type=int, default=800)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    cfg, task = lever_scale_task(args.queries, args.batch_size)
    raw, norm = rewards_for_training(task.train, cfg.reward)
    torch.manual_seed(0)
    weights = task.new_model().state_dict()
    counts = task.train.seq_mask.sum(1)
    q = task.train.num_queries
    out = {"queries": q, "candidates_min": int(counts.min()), "candidates_max": int(counts.max()),
           "candidates_mean": round(float(counts.float().mean()), 2), "pool": int(task.train.pool.shape[1]),
           "dim": int(task.embeddings.shape[1]), "batch_size": args.batch_size, "threads": args.threads,
           "group_k": GROUP_K, "max_abs_loss_diff": max_loss_diff(cfg, task, weights, raw, norm, 32)}
    batched = batched_epochs(cfg, task, weights, raw, norm)
    looped = per_query_epochs(cfg, task, weights, raw, norm)
    own = batched_epochs(cfg.replace(batch_size=1), task, weights, raw, norm)
    for kind in ("rce", "grpo"):
        out[f"{kind}_batched_qps"] = round(q / batched[kind], 1)
        out[f"{kind}_per_query_qps"] = round(q / looped[kind], 1)
        out[f"{kind}_own_batch1_qps"] = round(q / own[kind], 1)
        out[f"{kind}_speedup"] = round(looped[kind] / batched[kind], 2)
        out[f"{kind}_speedup_vs_own_batch1"] = round(own[kind] / batched[kind], 2)
        print(f"{kind}: batched {out[f'{kind}_batched_qps']:8.1f} queries/s | users' per-query loop "
              f"{out[f'{kind}_per_query_qps']:7.1f} ({out[f'{kind}_speedup']:.1f}x) | ours at batch 1 "
              f"{out[f'{kind}_own_batch1_qps']:7.1f} ({out[f'{kind}_speedup_vs_own_batch1']:.1f}x)")
    print(f"{q} queries, {out['candidates_min']}-{out['candidates_max']} candidates (mean "
          f"{out['candidates_mean']}); max |batched - per-query| loss: {out['max_abs_loss_diff']:.2e}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
