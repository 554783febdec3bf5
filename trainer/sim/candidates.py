"""RL candidates as Lever-Plus's generate_rl_data.py makes them, scored by one VLM run each.

Shapes: A anchors, P pool size, M candidates over all anchors. A candidate is a
pair of pool positions in pointer order, which is also prompt order.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from trainer.sim.generate import similarity_ranks
from trainer.sim.oracle import OracleParams, p_correct
from trainer.sim.world import BenchmarkSpec, World, rng_for

SAMPLE_TEMPERATURES = (1.0, 1.0, 1.3, 1.3)  # two samples at each tau


@dataclass(frozen=True)
class ProposerParams:
    """The stand-in for the SFT pointer that proposes candidates (part of the cache key).

    Its logits over a pool mix the embedding cosine (what an SFT selector learns
    first), the oracle's one-shot InfoScore (what the beams taught it) and noise;
    ``scale`` plays the pointer's 1/temperature.
    """

    scale: float = 2.2
    similarity_weight: float = 0.6
    infoscore_weight: float = 0.6
    noise_weight: float = 0.8


@dataclass
class Candidates:
    """Every anchor's candidate pairs, flattened; optional fields hold NaN / -1 where absent."""

    query_index: torch.Tensor    # [M] long, row into anchors
    positions: torch.Tensor      # [M, 2] long, pool positions in pointer (= prompt) order
    method: list[str]            # [M] "beam" | "retrieval" | "sample" | "random"
    beam_rank: torch.Tensor      # [M] long, -1 unless beam
    beam_score: torch.Tensor     # [M] float64, sum of step probabilities; NaN unless beam
    logprob_score: torch.Tensor  # [M] float64, sum of step log-probs; NaN for retrieval/random
    temperature: torch.Tensor    # [M] float64, NaN unless sample
    similarity: torch.Tensor     # [M] float64, mean cosine of the pair to the query; NaN unless retrieval


@dataclass
class Scores:
    """One simulated VLM run per candidate (OK-VQA-like: acc in {0, 0.6, 1.0})."""

    p: torch.Tensor          # [M] float64, the oracle's exact P(correct)
    correct: torch.Tensor    # [M] long 0/1, one Bernoulli draw
    acc: torch.Tensor        # [M] float64, 0 iff incorrect, else 0.6 or 1.0
    gt_prob: torch.Tensor    # [M] float64, tiny like Qwen's teacher-forced answer probability
    rel: torch.Tensor        # [M] float64, 1 when correct, partial string overlap otherwise


def proposer_logits(world: World, params: OracleParams, prop: ProposerParams, spec: BenchmarkSpec,
                    anchors: torch.Tensor, pools: torch.Tensor) -> torch.Tensor:
    """The stand-in SFT pointer's logits over each pool. [A], [A, P] -> [A, P] float64."""
    def standardize(x: torch.Tensor) -> torch.Tensor:
        return (x - x.mean(1, keepdim=True)) / x.std(1, keepdim=True).clamp_min(1e-12)

    _, cos = similarity_ranks(world.embeddings, anchors, pools)
    A, P = pools.shape
    one_shot = p_correct(world, params, anchors.repeat_interleave(P), pools.reshape(-1, 1)).view(A, P)
    noise = torch.from_numpy(rng_for(spec, "proposer").standard_normal((A, P)))
    mix = (prop.similarity_weight * standardize(cos) + prop.infoscore_weight * standardize(one_shot)
           + prop.noise_weight * noise)
    return prop.scale * mix


def rl_candidates(world: World, params: OracleParams, prop: ProposerParams, spec: BenchmarkSpec,
                  anchors: torch.Tensor, pools: torch.Tensor) -> Candidates:
    """Beam, retrieval, temperature-sampled and random pairs per anchor, deduplicated.

    Proposer beam: top ``beam_size`` pairs by cumulative log-prob (step 2 renormalised
    with step 1 masked, no query update); 2 samples at each tau; ``num_retrieval``
    similarity combos (combo r = the (r+1)-th and (r+2)-th most similar); 1 random
    pair. An unordered pair is kept once, priority beam > retrieval > sample > random.
    """
    A, P = pools.shape
    nan = float("nan")
    logits = proposer_logits(world, params, prop, spec, anchors, pools)
    eye = torch.eye(P, dtype=torch.bool)

    def step_logp(scaled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """log p(first) [A, ..., P] and log p(second | first) [A, ..., P, P]."""
        second = scaled[..., None, :].masked_fill(eye, float("-inf"))
        return torch.log_softmax(scaled, -1), torch.log_softmax(second, -1)

    # Each block: pairs [A, n, 2] (pool positions), method, and per-pair fields [A, n].
    blocks = []
    lp1, lp2 = step_logp(logits)
    pair_lp = (lp1[:, :, None] + lp2).masked_fill(eye, float("-inf")).reshape(A, -1)
    beam_lp, flat = pair_lp.topk(spec.beam_size, dim=1)
    first, second = flat // P, flat % P
    beam_score = lp1.gather(1, first).exp() + lp2[torch.arange(A)[:, None], first, second].exp()
    ranks = torch.arange(spec.beam_size).expand(A, -1)
    blocks.append((torch.stack([first, second], -1), "beam", ranks, beam_score, beam_lp, nan, nan))

    order, cos = similarity_ranks(world.embeddings, anchors, pools)
    combos = torch.stack([order[:, :spec.num_retrieval], order[:, 1:spec.num_retrieval + 1]], -1)
    sim = (cos.gather(1, combos[..., 0]) + cos.gather(1, combos[..., 1])) / 2
    blocks.append((combos, "retrieval", -1, nan, nan, nan, sim))

    # Temperature samples by Gumbel-max: the same law as multinomial, drawn for all anchors at once.
    rng = rng_for(spec, "rl-candidates")
    tau = torch.tensor(SAMPLE_TEMPERATURES, dtype=torch.float64)
    scaled = logits[:, None, :] / tau[None, :, None]                       # [A, T, P]
    s1, s2 = step_logp(scaled)
    gumbel = torch.from_numpy(rng.gumbel(size=(2, A, len(tau), P)))
    i = (s1 + gumbel[0]).argmax(-1)                                         # [A, T]
    cond = s2.gather(2, i[..., None, None].expand(-1, -1, 1, P)).squeeze(2)  # [A, T, P]
    j = (cond + gumbel[1]).argmax(-1)
    # generate_rl_data.py adds 1e-8 inside each log
    lp = (s1.gather(2, i[..., None]).exp() + 1e-8).log() + (cond.gather(2, j[..., None]).exp() + 1e-8).log()
    blocks.append((torch.stack([i, j], -1), "sample", -1, nan, lp.squeeze(-1), tau.expand(A, -1), nan))

    rand = torch.from_numpy(rng.random((A, P))).argsort(1)[:, None, :2]
    blocks.append((rand, "random", -1, nan, nan, nan, nan))

    pairs = torch.cat([b[0] for b in blocks], 1)                            # [A, K, 2]
    width = [b[0].shape[1] for b in blocks]
    method = [m for b, n in zip(blocks, width) for m in [b[1]] * n]
    fields = [torch.cat([torch.as_tensor(b[f], dtype=torch.float64).expand(A, n)
                         for b, n in zip(blocks, width)], 1) for f in range(2, 7)]  # 5 x [A, K]

    keep: list[tuple[int, int]] = []
    for a, row in enumerate(pairs.tolist()):
        seen: set[frozenset] = set()
        for c, pair in enumerate(row):  # blocks are in priority order
            if frozenset(pair) not in seen:
                seen.add(frozenset(pair))
                keep.append((a, c))
    idx = torch.tensor(keep, dtype=torch.long)
    qa, qc = idx[:, 0], idx[:, 1]
    rank, bscore, lpsum, temp, simil = (f[qa, qc] for f in fields)
    return Candidates(query_index=qa, positions=pairs[qa, qc], method=[method[c] for c in qc.tolist()],
                      beam_rank=rank.long(), beam_score=bscore, logprob_score=lpsum, temperature=temp,
                      similarity=simil)


def score_candidates(world: World, params: OracleParams, spec: BenchmarkSpec, anchors: torch.Tensor,
                     pools: torch.Tensor, cands: Candidates) -> Scores:
    """One Bernoulli draw per candidate from the oracle, plus OK-VQA-shaped side scores."""
    seqs = pools[cands.query_index[:, None], cands.positions]          # [M, 2] global, prompt order
    p = p_correct(world, params, anchors[cands.query_index], seqs)
    rng = rng_for(spec, "vqa")
    m = p.shape[0]
    u, full, lognoise, partial = (rng.random(m), rng.random(m), rng.standard_normal(m), rng.random(m))
    correct = torch.from_numpy(u < p.numpy()).long()
    # A confident reader more often names the majority answer (acc 1.0) than a minority one (0.6).
    acc = torch.where(correct.bool(), torch.from_numpy(np.where(full < 0.55 + 0.4 * p.numpy(), 1.0, 0.6)),
                      torch.zeros(m, dtype=torch.float64))
    gt_prob = 1e-6 * p * torch.from_numpy(np.exp(0.5 * lognoise))
    rel = torch.where(correct.bool(), torch.ones(m, dtype=torch.float64),
                      torch.from_numpy(0.1 + 0.75 * partial))
    return Scores(p=p, correct=correct, acc=acc, gt_prob=gt_prob, rel=rel)
