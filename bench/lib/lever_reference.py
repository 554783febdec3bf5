"""The users' trainer step, restated for comparison: one query group per optimiser step.

Lever-Plus's ``PointerSelectorV3.compute_rce_loss`` / ``compute_grpo_loss`` (via
``compute_log_probs_per_beam``) repeat the query and its whole pool once per candidate
sequence, ``[n, K, d]``, and run the v2 forward on that: the input projection, the
attention keys/values and the candidate projection are computed n times for the same
pool. GRPO first cuts the group to its top-k candidates by reward. The users' script
runs this with batch size 1 (one query group per step), AdamW and a gradient clip of 1.

This module does the same with a :class:`trainer.model.PointerSelector`'s parameters
and ``nn.MultiheadAttention`` itself, and the product's pure losses, so its losses equal
the trainer's (checked by bench/trainer_throughput.py) while its cost is the users'.
It lives in bench/ on purpose: the trainer never computes this way.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from trainer import losses
from trainer.batching import Batch
from trainer.model import MASK_VALUE, TAU, PointerSelector


def per_beam_logp(model: PointerSelector, b: Batch) -> torch.Tensor:
    """log pi of each sequence of a one-query batch, the pool repeated per sequence: [1, n].

    ``b`` holds one query (B = 1) and n sequences, all valid.
    """
    n, s = b.seqs.shape[1], b.seqs.shape[2]
    query = b.query_emb.expand(n, -1)                                # [n, d]
    pool = b.cand_emb.expand(n, -1, -1)                              # [n, P, d]
    valid = b.pool_mask.expand(n, -1)                                # [n, P]
    h = model.input_proj(query).unsqueeze(1)                         # [n, 1, H]
    tokens = model.input_proj(pool)                                  # [n, P, H]
    for attn, norm in zip(model.cross_attn_layers, model.attn_norms):
        out, _ = attn(h, tokens, tokens, key_padding_mask=~valid, need_weights=False)
        h = norm(out + h)
    q = F.normalize(model.dropout(model.query_proj(h.squeeze(1))), dim=-1)   # [n, H]
    keys = F.normalize(model.dropout(model.cand_proj(tokens)), dim=-1)       # [n, P, H]
    labels = b.seqs[0]                                               # [n, S]
    blocked = ~valid
    rows = torch.arange(n)
    total = torch.zeros(n)
    for t in range(s):
        scores = (torch.einsum("nh,nph->np", q, keys) / TAU).masked_fill(blocked, MASK_VALUE)
        a = labels[:, t]
        total = total + torch.log_softmax(scores, dim=-1)[rows, a]
        blocked = blocked.scatter(1, a.unsqueeze(1), True)
        chosen = keys[rows, a]
        g = torch.sigmoid(model.query_update_gate(torch.cat([q, chosen], dim=-1)))
        q = F.normalize(g * q + (1 - g) * chosen, dim=-1)
    return total.unsqueeze(0)


def one_query(b: Batch, keep: torch.Tensor | None = None) -> Batch:
    """Row 0 of ``b`` with only its valid (or ``keep``-marked) sequences, as the users' dataset holds it."""
    cols = (b.seq_mask[0] if keep is None else keep[0]).nonzero().squeeze(1)
    return Batch(index=b.index[:1], query_emb=b.query_emb[:1], cand_emb=b.cand_emb[:1], pool_mask=b.pool_mask[:1],
                 seqs=b.seqs[:1, cols], seq_mask=torch.ones(1, len(cols), dtype=torch.bool))


def rce_loss(model: PointerSelector, b: Batch, weights: torch.Tensor, tau: float) -> torch.Tensor:
    """RCE of one query group (``b`` from :func:`one_query`, ``weights`` [1, n])."""
    return losses.rce_loss(per_beam_logp(model, b), weights, b.seq_mask, tau=tau)


def grpo_loss(model: PointerSelector, b: Batch, raw: torch.Tensor, old_logp: torch.Tensor, *, group_k: int,
              kl_beta: float, clip_epsilon: float = 0.2, std_floor: float = 0.1,
              advantage_clip: float = 5.0) -> tuple[torch.Tensor, int]:
    """GRPO of one query group on its top-k candidates; returns (loss, group size).

    ``b`` holds the query's valid sequences; raw/old_logp are [1, n].
    """
    group = losses.top_k_mask(raw, b.seq_mask, group_k)
    cut = one_query(b, group)
    cols = group[0].nonzero().squeeze(1)
    raw, old_logp = raw[:, cols], old_logp[:, cols]
    adv = losses.group_advantages(raw, cut.seq_mask, std_floor=std_floor, clip=advantage_clip)
    loss, _ = losses.grpo_loss(per_beam_logp(model, cut), old_logp, adv, cut.seq_mask,
                               clip_epsilon=clip_epsilon, kl_beta=kl_beta)
    return loss, len(cols)
