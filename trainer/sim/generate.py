"""Data generation mirroring Lever-Plus: anchors and pools, InfoScore beam search, baselines.

Shapes: A anchors, P pool size, B beam size. Sequences are global item ids in
prompt order (the last ICD is nearest the query) unless a name says otherwise.
"""
from __future__ import annotations

import numpy as np
import torch

from trainer.sim.oracle import OracleParams, p_correct
from trainer.sim.world import BenchmarkSpec, World, rng_for

SHOT_NUM = 2                   # Lever-Plus generates 2-shot beams and RL pairs


def sample_anchors_and_pools(spec: BenchmarkSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """Anchor query ids [A] (sorted) and their random candidate pools [A, P], self excluded."""
    rng = rng_for(spec, "anchors")
    anchors = np.sort(rng.choice(spec.n_items, size=spec.n_anchors, replace=False))
    # P distinct draws from the N-1 other items, shifted past the anchor's own id.
    pools = np.empty((spec.n_anchors, spec.pool_size), dtype=np.int64)
    for i, a in enumerate(anchors):
        draw = rng.choice(spec.n_items - 1, size=spec.pool_size, replace=False)
        pools[i] = draw + (draw >= a)
    return torch.from_numpy(anchors.astype(np.int64)), torch.from_numpy(pools)


def random_icds(pools: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """k distinct uniform ICDs per row. pools [Q, P] global ids -> [Q, k] global ids."""
    order = torch.rand(pools.shape, generator=generator).argsort(dim=1)[:, :k]
    return pools.gather(1, order)


def similarity_ranks(embeddings: torch.Tensor, query_ids: torch.Tensor, pools: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Pool positions sorted by cosine to the query, best first, and the cosines.

    embeddings [N, d] (unit rows), query_ids [Q], pools [Q, P] -> ([Q, P] long, [Q, P] float).
    """
    # One [Q, N] product then a gather: cheaper than gathering [Q, P, d] pool embeddings.
    cos = (embeddings[query_ids] @ embeddings.T).gather(1, pools).double()
    order = cos.argsort(dim=1, descending=True, stable=True)
    return order, cos


def similarity_retrieval(embeddings: torch.Tensor, query_ids: torch.Tensor, pools: torch.Tensor,
                         k: int) -> torch.Tensor:
    """Top-k by cosine, most similar nearest the query. [N, d], [Q], [Q, P] -> [Q, k] global ids."""
    order, _ = similarity_ranks(embeddings, query_ids, pools)
    return pools.gather(1, order[:, :k].flip(1))


def infoscore_beam_search(world: World, params: OracleParams, anchors: torch.Tensor, pools: torch.Tensor,
                          beam_size: int, shot_num: int = SHOT_NUM
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Lever-Plus's beam search with the oracle as the VLM (construct_order left).

    InfoScore(c | S, x) = P(c + S, x) - P(S, x) with c prepended; each beam keeps its
    top ``beam_size`` expansions, then the ``beam_size`` best by last-step score survive.
    anchors [A], pools [A, P] -> (seqs [A, B, shot_num] prompt order, scores [A, B] float64
    last-step InfoScore, sorted descending).
    """
    A, P = pools.shape
    beams = torch.empty(A, 1, 0, dtype=torch.long)
    scores = torch.zeros(A, 1, dtype=torch.float64)
    for _ in range(shot_num):
        nb, s = beams.shape[1], beams.shape[2]
        prev = p_correct(world, params, anchors.repeat_interleave(nb), beams.reshape(A * nb, s)).view(A, nb)
        cand = pools[:, None, :, None].expand(A, nb, P, 1)
        new = torch.cat([cand, beams[:, :, None, :].expand(A, nb, P, s)], dim=3)   # [A, nb, P, s+1]
        p = p_correct(world, params, anchors.repeat_interleave(nb * P), new.reshape(-1, s + 1))
        gain = p.view(A, nb, P) - prev[:, :, None]
        used = (pools[:, None, :, None] == beams[:, :, None, :]).any(-1)            # [A, nb, P]
        gain = gain.masked_fill(used, float("-inf"))
        top_gain, top_pos = gain.topk(min(beam_size, P - s), dim=2)                 # per beam
        flat_gain = top_gain.reshape(A, -1)
        keep_gain, keep = flat_gain.topk(min(beam_size, flat_gain.shape[1]), dim=1)
        beam_idx = keep // top_pos.shape[2]
        pos = top_pos.reshape(A, -1).gather(1, keep)
        chosen = pools.gather(1, pos)
        parent = beams.gather(1, beam_idx[:, :, None].expand(-1, -1, s))
        beams = torch.cat([chosen[:, :, None], parent], dim=2)
        scores = keep_gain
    return beams, scores
