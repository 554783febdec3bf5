"""Reward per candidate sequence, then one per-query normalisation.

Shapes: Q queries, C candidate sequences per query. Rewards follow Lever-Plus's
``compute_reward_for_candidate`` (reference §3.2) and are clipped to [-5, 5] like it.

Normalisation happens exactly once. :func:`rewards_for_training` returns the raw
rewards and their normalised version; RCE weighs by one of them
(``rce_use_raw_reward``), and GRPO's :func:`trainer.losses.group_advantages`, which
z-scores on its own, must receive the *raw* ones. Lever-Plus fed GRPO the already
normalised rewards and z-scored again (reference §8.5).
"""
from __future__ import annotations

from typing import Callable

import torch

from trainer.config import RewardConfig
from trainer.data.groups import QueryGroups
from trainer.errors import ConfigError

REWARD_CLIP = 5.0
CONSTANT_STD = 1e-12
"""A group whose reward std is at most this counts as constant (Lever-Plus's threshold)."""


def _legacy(g: QueryGroups, cfg: RewardConfig) -> torch.Tensor:
    correctness = g.correct if cfg.correctness_mode == "01" else 2 * g.correct - 1
    return cfg.reward_alpha * g.beam_score + cfg.reward_beta * correctness


REWARD_MODES: dict[str, Callable[[QueryGroups, RewardConfig], torch.Tensor]] = {
    "legacy": _legacy,
    "hard_plus_soft": lambda g, cfg: cfg.hard_weight * g.correct + cfg.soft_weight * g.acc,
    "hard_only": lambda g, cfg: cfg.hard_weight * g.correct,
    "soft_only": lambda g, cfg: cfg.soft_weight * g.acc,
}


def raw_rewards(groups: QueryGroups, cfg: RewardConfig) -> torch.Tensor:
    """Reward of every candidate sequence; [Q, C] float, 0 where ``seq_mask`` is False.

    Modes: ``legacy`` = reward_alpha * beam_score + reward_beta * correctness, where
    correctness is ``correct`` ("01") or ``2*correct - 1`` ("pm1");
    ``hard_plus_soft`` = hard_weight * correct + soft_weight * acc; ``hard_only`` =
    hard_weight * correct; ``soft_only`` = soft_weight * acc. Clipped to [-5, 5].
    """
    try:
        mode = REWARD_MODES[cfg.reward_mode]
    except KeyError:
        raise ConfigError(f"reward_mode: {cfg.reward_mode!r} is not one of "
                          f"{', '.join(REWARD_MODES)}") from None
    r = mode(groups, cfg).float().clamp(-REWARD_CLIP, REWARD_CLIP)
    return torch.where(groups.seq_mask, r, torch.zeros_like(r))


def _z_score(r: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    n = mask.sum(-1, keepdim=True).clamp(min=1)
    r0 = torch.where(mask, r, torch.zeros_like(r))
    centred = r0 - r0.sum(-1, keepdim=True) / n
    std = (torch.where(mask, centred, torch.zeros_like(r)).pow(2).sum(-1, keepdim=True) / n).sqrt()
    return torch.where(std > CONSTANT_STD, centred / std.clamp(min=CONSTANT_STD), centred)


def _rank(r: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    # Pairwise comparison among valid entries: rank = #smaller + (#equal - 1) / 2 is the
    # tie-averaged 0-based rank. C is tens, so [Q, C, C] is small.
    valid_pair = mask.unsqueeze(-1) & mask.unsqueeze(-2)                 # [Q, C, C]
    smaller = (r.unsqueeze(-1) > r.unsqueeze(-2)) & valid_pair
    equal = (r.unsqueeze(-1) == r.unsqueeze(-2)) & valid_pair
    rank = smaller.sum(-1) + (equal.sum(-1) - 1) / 2
    n = mask.sum(-1, keepdim=True)
    return torch.where(n > 1, 2 * rank / (n - 1).clamp(min=1) - 1, torch.zeros_like(r))


NORMALIZE_METHODS = ("z_score", "z_score_clamp", "rank", "none")


def normalize_rewards(rewards: torch.Tensor, mask: torch.Tensor, method: str, *,
                      clamp: float = 3.0) -> torch.Tensor:
    """Per-query reward normalisation over valid entries, applied once (see module doc).

    Methods:
        ``z_score``: (r - mean) / std with the population std (unbiased=False; Lever-Plus
        used torch's default unbiased std, a factor sqrt((n-1)/n) apart). A constant group
        (std <= 1e-12, including a group of one) becomes r - mean = 0: it expresses no
        preference. Lever-Plus returned the *raw* rewards there, which gave constant groups
        an arbitrary scale next to z-scored ones.
        ``z_score_clamp``: the z-score clamped to [-clamp, clamp].
        ``rank``: tie-averaged ranks scaled to [-1, 1] (lowest -1, highest +1; a group of
        one, or all tied, gives 0).
        ``none``: the rewards unchanged.

    Args:
        rewards: [Q, C] float; mask: [Q, C] bool.

    Returns:
        [Q, C] float, 0 at invalid entries.
    """
    if method == "z_score":
        out = _z_score(rewards, mask)
    elif method == "z_score_clamp":
        out = _z_score(rewards, mask).clamp(-clamp, clamp)
    elif method == "rank":
        out = _rank(rewards, mask)
    elif method == "none":
        out = rewards
    else:
        raise ConfigError(f"normalize_method: {method!r} is not one of {', '.join(NORMALIZE_METHODS)}")
    return torch.where(mask, out, torch.zeros_like(out))


def rewards_for_training(groups: QueryGroups, cfg: RewardConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(raw [Q, C], normalised [Q, C]) with ``cfg.normalize_method`` / ``cfg.normalize_clamp``."""
    raw = raw_rewards(groups, cfg)
    return raw, normalize_rewards(raw, groups.seq_mask, cfg.normalize_method, clamp=cfg.normalize_clamp)
