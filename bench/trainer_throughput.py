"""Trainer throughput: batched RCE/GRPO epochs vs a per-query loop computing the same losses.

Lever-Plus scale: 800 training queries, 12-40 candidate sequences each, 64-item pools,
512-d embeddings, shot_num 2. The batched trainer puts ``batch_size`` query groups and all
their candidates in one forward; the reference does what the users' trainer does, one
query group per optimiser step. Both are timed in this one process, so the ratio holds on a
noisy machine. Last line: one JSON object.

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

from trainer import losses  # noqa: E402
from trainer.batching import make_batch  # noqa: E402
from trainer.data.groups import QueryGroups  # noqa: E402
from trainer.model import PointerSelector  # noqa: E402


def lever_plus_scale(n_queries: int, seed: int = 0, dim: int = 512, pool: int = 64) -> tuple[QueryGroups, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    n_items = 9009  # OK-VQA train size
    emb = torch.nn.functional.normalize(torch.randn(n_items, dim, generator=g), dim=-1)
    counts = torch.randint(12, 41, (n_queries,), generator=g)
    c_max = int(counts.max())
    pools = torch.stack([torch.randperm(n_items, generator=g)[:pool] for _ in range(n_queries)])
    seqs = torch.stack([torch.stack([torch.randperm(pool, generator=g)[:2] for _ in range(c_max)])
                        for _ in range(n_queries)])
    seq_mask = torch.arange(c_max)[None, :] < counts[:, None]
    correct = (torch.rand(n_queries, c_max, generator=g) < 0.55).float() * seq_mask
    groups = QueryGroups(query_ids=torch.arange(n_queries), pool=pools,
                         pool_mask=torch.ones(n_queries, pool, dtype=torch.bool), seqs=seqs, seq_mask=seq_mask,
                         correct=correct, acc=correct, beam_score=torch.rand(n_queries, c_max, generator=g) * seq_mask)
    return groups, emb


def rce_step(model, b, rewards, tau=1.0):
    nll = model.sequence_nll(b.query_emb, b.cand_emb, b.pool_mask, b.seqs, seq_mask=b.seq_mask)
    return losses.rce_loss(-nll, rewards, b.seq_mask, tau=tau)


def grpo_step(model, b, rewards, old_logp):
    adv = losses.group_advantages(rewards, b.seq_mask)
    new = model.sequence_logp(b.query_emb, b.cand_emb, b.pool_mask, b.seqs, seq_mask=b.seq_mask)
    return losses.grpo_loss(new, old_logp, adv, b.seq_mask, clip_epsilon=0.2, kl_beta=0.1)[0]


def epoch(model, groups, emb, batch_size: int, kind: str, old_logp: torch.Tensor) -> float:
    """One training epoch; returns wall seconds."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)
    model.train()
    start = time.perf_counter()
    for s in range(0, groups.num_queries, batch_size):
        idx = torch.arange(s, min(s + batch_size, groups.num_queries))
        b = make_batch(groups, idx, emb, torch.device("cpu"))
        r = groups.correct[idx, : b.seq_mask.shape[1]]
        loss = rce_step(model, b, r) if kind == "rce" else grpo_step(model, b, r, old_logp[idx, : b.seq_mask.shape[1]])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return time.perf_counter() - start


def same_losses(model, groups, emb, old_logp, n: int = 32) -> float:
    """max |batched loss - mean of per-query losses| on identical parameters (eval mode: no dropout)."""
    model.eval()
    idx = torch.arange(n)
    diffs = []
    with torch.no_grad():
        b = make_batch(groups, idx, emb, torch.device("cpu"))
        r = groups.correct[idx, : b.seq_mask.shape[1]]
        for kind in ("rce", "grpo"):
            batched = rce_step(model, b, r) if kind == "rce" else grpo_step(
                model, b, r, old_logp[idx, : b.seq_mask.shape[1]])
            singles = []
            for i in range(n):
                one = make_batch(groups, idx[i:i + 1], emb, torch.device("cpu"))
                ri = groups.correct[i:i + 1, : one.seq_mask.shape[1]]
                singles.append(rce_step(model, one, ri) if kind == "rce" else grpo_step(
                    model, one, ri, old_logp[i:i + 1, : one.seq_mask.shape[1]]))
            # GRPO's means run over all valid entries of the batch, so weight queries by their group size
            if kind == "grpo":
                w = groups.seq_mask[idx].sum(1).double()
                reference = float((torch.stack(singles).double() * w).sum() / w.sum())
            else:
                reference = float(torch.stack(singles).double().mean())
            diffs.append(abs(float(batched) - reference))
    return max(diffs)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--queries", type=int, default=800)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    groups, emb = lever_plus_scale(args.queries)
    model = PointerSelector(emb.shape[1])
    old_logp = torch.zeros(groups.seq_mask.shape)
    with torch.no_grad():
        for s in range(0, groups.num_queries, 64):
            idx = torch.arange(s, min(s + 64, groups.num_queries))
            b = make_batch(groups, idx, emb, torch.device("cpu"))
            old_logp[idx, : b.seq_mask.shape[1]] = model.reference_logp(b.query_emb, b.cand_emb, b.pool_mask, b.seqs)
    diff = same_losses(model, groups, emb, old_logp)
    out = {"queries": args.queries, "batch_size": args.batch_size, "threads": args.threads,
           "max_abs_loss_diff": diff}
    for kind in ("rce", "grpo"):
        batched = epoch(model, groups, emb, args.batch_size, kind, old_logp)
        looped = epoch(model, groups, emb, 1, kind, old_logp)
        out[f"{kind}_batched_qps"] = args.queries / batched
        out[f"{kind}_per_query_qps"] = args.queries / looped
        out[f"{kind}_speedup"] = looped / batched
        print(f"{kind}: batched {args.queries / batched:8.1f} queries/s, per-query loop "
              f"{args.queries / looped:8.1f} queries/s, speedup {looped / batched:5.2f}x")
    print(f"max |batched - per-query| loss: {diff:.2e}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
