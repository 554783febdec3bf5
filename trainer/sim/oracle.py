"""The reader oracle: P(correct | query, ordered ICD sequence), vectorised.

For query q and ICDs c_1..c_k in prompt order (c_k nearest the query)::

    logit = base - difficulty_q
            + sum_j w_j (rel_weight * z_q^T M z_cj + helpfulness_cj)   relevance, item quality
            - distraction * k                                          every ICD costs attention
            - redundancy * sum_{i<j} relu(cos(z_ci, z_cj) - threshold) near-duplicates add nothing
    w_j = recency ** (k - j)                                           nearest the query counts most
    P(correct) = sigmoid(logit)

so random ICDs hurt a little as k grows, similarity retrieval helps at first and
then degrades (its picks crowd one topic), and the best sequences need the hidden
map M, which a selector can learn from embeddings but cosine similarity cannot see.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from trainer.sim.world import World


@dataclass(frozen=True)
class OracleParams:
    """The reader's response curve (part of the cache key)."""

    base: float = 0.1
    rel_weight: float = 1.6
    recency: float = 0.6
    distraction: float = 0.1
    redundancy: float = 1.0
    redundancy_threshold: float = 0.5


def sequence_logits(world: World, params: OracleParams, query_ids: torch.Tensor,
                    seqs: torch.Tensor) -> torch.Tensor:
    """Reader logits. query_ids [B] long, seqs [B, k] long global ids in prompt order (k >= 0).

    Returns [B] float64.
    """
    _check_ids(world, query_ids, seqs)
    k = seqs.shape[1]
    logit = params.base - world.difficulty[query_ids]
    if k == 0:
        return logit
    zq = world.latents[query_ids]                       # [B, L]
    zc = world.latents[seqs]                            # [B, k, L]
    rel = ((zq @ world.relevance)[:, None, :] * zc).sum(-1)         # [B, k]
    gain = params.rel_weight * rel + world.helpfulness[seqs]          # [B, k]
    weights = params.recency ** torch.arange(k - 1, -1, -1, dtype=torch.float64)
    logit = logit + (gain * weights).sum(-1) - params.distraction * k
    if k > 1:
        cos = zc @ zc.transpose(1, 2)                                 # [B, k, k]
        upper = torch.triu(torch.ones(k, k, dtype=torch.bool), diagonal=1)
        overlap = (cos - params.redundancy_threshold).clamp_min(0) * upper
        logit = logit - params.redundancy * overlap.sum((1, 2))
    return logit


def p_correct(world: World, params: OracleParams, query_ids: torch.Tensor, seqs: torch.Tensor,
              chunk: int = 65536) -> torch.Tensor:
    """Exact P(correct). query_ids [B] long, seqs [B, k] long (prompt order). Returns [B] float64."""
    out = [torch.sigmoid(sequence_logits(world, params, query_ids[i:i + chunk], seqs[i:i + chunk]))
           for i in range(0, max(1, query_ids.shape[0]), chunk)]
    return torch.cat(out)


def _check_ids(world: World, query_ids: torch.Tensor, seqs: torch.Tensor) -> None:
    if query_ids.dim() != 1 or seqs.dim() != 2 or seqs.shape[0] != query_ids.shape[0]:
        raise ValueError(f"oracle: expected query_ids [B] and seqs [B, k], got "
                         f"{tuple(query_ids.shape)} and {tuple(seqs.shape)}")
    for name, t in (("query_ids", query_ids), ("seqs", seqs)):
        if t.dtype != torch.long:
            raise ValueError(f"oracle: {name} must be torch.long global item ids, got {t.dtype}")
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= world.n_items):
            raise ValueError(f"oracle: {name} holds ids outside [0, {world.n_items})")
