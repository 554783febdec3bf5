"""The post-training stage's algorithms: a registry {name: Algorithm} over the pure losses.

``trainer.loop.run_post_epoch`` is the one epoch loop for every algorithm: it
draws the batches, calls ``prepare`` once per batch and ``loss`` once per
optimiser step (``online_ppo_steps`` times for online GRPO, once otherwise),
steps the optimiser and adapts the KL weight. Only the per-batch loss differs:

==============  ==========================================================================
grpo            offline GRPO on the top-k group (curriculum), PPO clip + k3 KL vs the old policy
dr_grpo         the same with mean-centred advantages (no std scaling: no near-tie blow-up)
grpo_anchor     grpo + anchor_lambda * CE of each query's top-reward candidate
raft            CE on the top raft_top_k candidates by reward (only recorded-correct ones)
rwr             CE weighted by min(exp(normalised reward / T), w_max)
dpo             DPO on candidate pairs with a raw reward gap > dpo_min_gap, reference = SFT
online_grpo     G samples per query from the policy, rewards from Task.evaluator, PPO vs the
                sampling policy (refreshed every batch), k3 KL vs SFT
rce_only        no post-training stage (``trainer.config.post_epochs`` is 0)
==============  ==========================================================================

Offline losses see the same batch (``make_batch`` over the recorded candidates); only
``online_grpo`` needs the evaluator inside the loop (see ``trainer.online``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from trainer import losses
from trainer.batching import Batch, make_batch
from trainer.config import TrainConfig
from trainer.online import sample_sequences, score_samples
from trainer.state import RunState, Task

Stats = dict[str, float]


@dataclass
class StageData:
    """What one post-training epoch reads besides the batch: [Q, C] over ``task.train``."""

    raw: torch.Tensor                 # raw rewards
    norm: torch.Tensor                # rewards normalised per query (reward_mode's normalize_method)
    ref_logp: torch.Tensor | None     # old policy (GRPO family) or fixed SFT reference (DPO)
    group_k: int                      # curriculum top-k of this epoch (GRPO family)


@dataclass(frozen=True)
class Algorithm:
    """``prepare(st, task, cfg, data, idx)`` once per batch, then ``loss(st, cfg, prepared)`` per step."""

    prepare: Callable[[RunState, Task, TrainConfig, StageData, torch.Tensor], Any]
    loss: Callable[[RunState, TrainConfig, Any], tuple[torch.Tensor, Stats]]
    reference: str = "none"   # "old": refreshable old policy; "sft": the fixed SFT policy; "none"
    kl: bool = False          # has a KL term that adaptive_kl steers
    curriculum: bool = False  # reads the top-k group of the epoch


# ---------------------------------------------------------------------------
# Offline: the recorded candidate groups


@dataclass
class OfflineBatch:
    b: Batch
    raw: torch.Tensor                 # [B, C]
    norm: torch.Tensor                # [B, C]
    ref_logp: torch.Tensor | None     # [B, C]
    correct: torch.Tensor             # [B, C]
    group_k: int


def _offline(st: RunState, task: Task, cfg: TrainConfig, data: StageData, idx: torch.Tensor) -> OfflineBatch:
    b = make_batch(task.train, idx, task.embeddings, task.device)
    c = b.seq_mask.shape[1]

    def cut(x: torch.Tensor | None) -> torch.Tensor | None:
        return None if x is None else x[idx, :c].to(task.device)

    return OfflineBatch(b, cut(data.raw), cut(data.norm), cut(data.ref_logp), cut(task.train.correct),
                        data.group_k)


def _logp(st: RunState, b: Batch) -> torch.Tensor:
    return st.model.sequence_logp(b.query_emb, b.cand_emb, b.pool_mask, b.seqs, seq_mask=b.seq_mask)


def _nll(st: RunState, cfg: TrainConfig, b: Batch) -> torch.Tensor:
    """Per-sequence CE with the model's label smoothing (every CE of the project uses it)."""
    return st.model.sequence_nll(b.query_emb, b.cand_emb, b.pool_mask, b.seqs,
                                 label_smoothing=cfg.model.label_smoothing, seq_mask=b.seq_mask)


def _zero_spread(r: torch.Tensor, group: torch.Tensor) -> float:
    """Share of queries whose group rewards are all equal: zero advantage, a dead batch for GRPO."""
    spread = r.masked_fill(~group, -torch.inf).amax(1) + r.masked_fill(~group, torch.inf).amin(1).neg()
    return float((spread <= 0).float().mean())


def _grpo_family(scale: str, anchor: bool) -> Callable[[RunState, TrainConfig, OfflineBatch], tuple]:
    def loss(st: RunState, cfg: TrainConfig, x: OfflineBatch) -> tuple[torch.Tensor, Stats]:
        g = cfg.grpo
        # curriculum: the group is the top-k candidates by reward; only they are decoded
        group = losses.top_k_mask(x.raw, x.b.seq_mask, x.group_k)
        b, cols = x.b.take_sequences(group)
        raw, ref_logp = x.raw.gather(1, cols), x.ref_logp.gather(1, cols)
        adv = losses.group_advantages(raw, b.seq_mask, std_floor=g.std_floor, clip=g.advantage_clip,
                                      scale=scale)
        new_logp = _logp(st, b)
        total, stats = losses.grpo_loss(new_logp, ref_logp, adv, b.seq_mask, clip_epsilon=g.clip_epsilon,
                                        kl_beta=st.kl_beta)
        if anchor:
            # PPO-ptx style: keep the best recorded candidate likely while GRPO reshapes the rest
            # (the top-1 is in every top-k group, and the cut keeps the tie order)
            nll = -new_logp if not cfg.model.label_smoothing else _nll(st, cfg, b)
            ce = losses.selected_ce_loss(nll, losses.top_k_mask(raw, b.seq_mask, 1))
            total = total + g.anchor_lambda * ce
            stats["anchor_loss"] = float(ce.detach())
        return total, {**stats, "frac_zero_std": _zero_spread(x.raw, group)}
    return loss


def _raft(st: RunState, cfg: TrainConfig, x: OfflineBatch) -> tuple[torch.Tensor, Stats]:
    keep = losses.top_k_mask(x.raw, x.b.seq_mask, cfg.grpo.raft_top_k)
    if cfg.grpo.raft_require_correct:
        keep = keep & (x.correct > 0)
    loss = losses.selected_ce_loss(_nll(st, cfg, x.b), keep)
    return loss, {"frac_used": float(keep.sum()) / max(int(x.b.seq_mask.sum()), 1)}


def _rwr(st: RunState, cfg: TrainConfig, x: OfflineBatch) -> tuple[torch.Tensor, Stats]:
    loss, _ = losses.rwr_loss(_nll(st, cfg, x.b), x.norm, x.b.seq_mask, temperature=cfg.grpo.rwr_temperature,
                              max_weight=cfg.grpo.rwr_max_weight)
    return loss, {}


def _dpo(st: RunState, cfg: TrainConfig, x: OfflineBatch) -> tuple[torch.Tensor, Stats]:
    return losses.dpo_loss(_logp(st, x.b), x.ref_logp, x.raw, x.b.seq_mask, beta=cfg.grpo.dpo_beta,
                           min_gap=cfg.grpo.dpo_min_gap)


# ---------------------------------------------------------------------------
# Online: the policy's own samples, scored by the evaluator


@dataclass
class OnlineBatch:
    query_emb: torch.Tensor   # [B, d]
    cand_emb: torch.Tensor    # [B, P, d]
    pool_mask: torch.Tensor   # [B, P]
    seqs: torch.Tensor        # [B, G, k] sampled positions
    mask: torch.Tensor        # [B, G] scored samples
    reward: torch.Tensor      # [B, G] oracle reward (NaN = unscored)
    old_logp: torch.Tensor    # [B, G] the sampling policy, dropout-free
    ref_logp: torch.Tensor    # [B, G] the SFT policy
    adv: torch.Tensor         # [B, G]


def _online_prepare(st: RunState, task: Task, cfg: TrainConfig, data: StageData,
                    idx: torch.Tensor) -> OnlineBatch:
    g, groups = cfg.grpo, task.train
    b = make_batch(groups, idx, task.embeddings, task.device)
    # The batch generator draws the samples too, so a resumed run samples the same sequences.
    pos = sample_sequences(st.model, b.query_emb, b.cand_emb, b.pool_mask, k=groups.shot_num,
                           num_samples=g.online_group_size, generator=st.generator,
                           temperature=g.online_temperature)
    reward = score_samples(task.evaluator, groups.query_ids[idx], groups.pool[idx, : b.pool_mask.shape[1]],
                           pos).to(task.device)
    mask = torch.isfinite(reward)
    old = st.model.reference_logp(b.query_emb, b.cand_emb, b.pool_mask, pos, seq_mask=mask)
    ref = st.ref_model.reference_logp(b.query_emb, b.cand_emb, b.pool_mask, pos, seq_mask=mask)
    adv = losses.group_advantages(reward, mask, std_floor=g.std_floor, clip=g.advantage_clip)
    return OnlineBatch(b.query_emb, b.cand_emb, b.pool_mask, pos, mask, reward, old, ref, adv)


def _online_loss(st: RunState, cfg: TrainConfig, x: OnlineBatch) -> tuple[torch.Tensor, Stats]:
    new_logp = st.model.sequence_logp(x.query_emb, x.cand_emb, x.pool_mask, x.seqs, seq_mask=x.mask)
    loss, stats = losses.grpo_loss(new_logp, x.old_logp, x.adv, x.mask, clip_epsilon=cfg.grpo.clip_epsilon,
                                   kl_beta=st.kl_beta, ref_logp=x.ref_logp)
    reward = float(x.reward[x.mask].mean()) if x.mask.any() else float("nan")
    return loss, {**stats, "train_reward": reward, "frac_zero_std": _zero_spread(x.reward, x.mask)}


ALGORITHMS: dict[str, Algorithm] = {
    "grpo": Algorithm(_offline, _grpo_family("std", anchor=False), reference="old", kl=True, curriculum=True),
    "dr_grpo": Algorithm(_offline, _grpo_family("none", anchor=False), reference="old", kl=True,
                         curriculum=True),
    "grpo_anchor": Algorithm(_offline, _grpo_family("std", anchor=True), reference="old", kl=True,
                             curriculum=True),
    "raft": Algorithm(_offline, _raft),
    "rwr": Algorithm(_offline, _rwr),
    "dpo": Algorithm(_offline, _dpo, reference="sft"),
    "online_grpo": Algorithm(_online_prepare, _online_loss, kl=True),
}
"""Every ``trainer.config.ALGORITHMS`` entry except ``rce_only``, which has no post-training stage."""
