"""Reward modes and per-query normalisation on small tables."""
from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from trainer.config import RewardConfig
from trainer.data.groups import QueryGroups
from trainer.errors import ConfigError
from trainer.rewards import normalize_rewards, raw_rewards, rewards_for_training

T, F_ = True, False


def groups() -> QueryGroups:
    """Q=2, C=3; query 1's third candidate is padding, with non-zero fields that must not leak."""
    return QueryGroups(
        query_ids=torch.tensor([10, 11]),
        pool=torch.arange(8).view(2, 4),
        pool_mask=torch.ones(2, 4, dtype=torch.bool),
        seqs=torch.tensor([[[0, 1], [1, 2], [2, 3]], [[0, 1], [3, 2], [0, 0]]]),
        seq_mask=torch.tensor([[T, T, T], [T, T, F_]]),
        correct=torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]]),
        acc=torch.tensor([[1.0, 0.0, 0.6], [0.3, 0.9, 1.0]]),
        beam_score=torch.tensor([[0.9, 0.5, 0.2], [0.4, 0.3, 0.7]]),
    )


@pytest.mark.parametrize("overrides, expected", [
    # 0.2 * beam_score + 1.0 * correct
    (dict(reward_mode="legacy", reward_alpha=0.2, reward_beta=1.0, correctness_mode="01"),
     [[1.18, 0.10, 1.04], [0.08, 1.06, 0.0]]),
    # 0.2 * beam_score + 1.0 * (2 * correct - 1)
    (dict(reward_mode="legacy", reward_alpha=0.2, reward_beta=1.0, correctness_mode="pm1"),
     [[1.18, -0.90, 1.04], [-0.92, 1.06, 0.0]]),
    # correct + acc (OK-VQA values {0, 1.6, 2.0} plus 0.3 / 1.9 here)
    (dict(reward_mode="hard_plus_soft"), [[2.0, 0.0, 1.6], [0.3, 1.9, 0.0]]),
    # 2 * correct
    (dict(reward_mode="hard_only", hard_weight=2.0), [[2.0, 0.0, 2.0], [0.0, 2.0, 0.0]]),
    # 0.5 * acc
    (dict(reward_mode="soft_only", soft_weight=0.5), [[0.5, 0.0, 0.3], [0.15, 0.45, 0.0]]),
])
def test_reward_modes(overrides, expected):
    assert_close(raw_rewards(groups(), RewardConfig(**overrides)), torch.tensor(expected))


def test_rewards_are_clipped_to_plus_minus_five():
    high = raw_rewards(groups(), RewardConfig(reward_mode="hard_plus_soft", hard_weight=10.0))
    # 10 * correct + acc = 11 -> 5; 10.6 -> 5; 0.3 and 0 stay; 10.9 -> 5.
    assert_close(high, torch.tensor([[5.0, 0.0, 5.0], [0.3, 5.0, 0.0]]))
    low = raw_rewards(groups(), RewardConfig(reward_mode="legacy", reward_alpha=0.0, reward_beta=-10.0))
    assert_close(low, torch.tensor([[-5.0, 0.0, -5.0], [0.0, -5.0, 0.0]]))


def test_unknown_reward_mode_names_the_valid_ones():
    cfg = RewardConfig()
    cfg.reward_mode = "hybrid"                   # bypasses validation, as a stale object could
    with pytest.raises(ConfigError, match="reward_mode.*hard_plus_soft"):
        raw_rewards(groups(), cfg)


# ----------------------------------------------------------------- normalize_rewards

MASK = torch.tensor([[T, T, T], [T, T, F_]])


def test_z_score_and_constant_groups():
    rewards = torch.tensor([[1.0, 2.0, 3.0], [5.0, 5.0, 99.0]])
    # Row 0: mean 2, population std sqrt(2/3) = 0.81650 -> [-1.22474, 0, 1.22474].
    # Row 1: constant over its valid entries -> r - mean = 0 (the padded 99 is ignored).
    expected = torch.tensor([[-1.224745, 0.0, 1.224745], [0.0, 0.0, 0.0]])
    assert_close(normalize_rewards(rewards, MASK, "z_score"), expected, atol=1e-5, rtol=0)


def test_z_score_clamp():
    rewards = torch.tensor([[0.0] * 9 + [10.0]])
    mask = torch.ones(1, 10, dtype=torch.bool)
    # mean 1, population var (9 * 1 + 81) / 10 = 9, std 3: zeros -> -1/3, the 10 -> 3 -> clamped to 2.
    expected = torch.tensor([[-1 / 3] * 9 + [2.0]])
    assert_close(normalize_rewards(rewards, mask, "z_score_clamp", clamp=2.0), expected)
    assert_close(normalize_rewards(rewards, mask, "z_score_clamp", clamp=3.0)[0, -1], torch.tensor(3.0))


def test_rank_with_ties_and_a_single_entry():
    rewards = torch.tensor([[10.0, 30.0, 20.0, 20.0], [7.0, 100.0, -100.0, 0.0]])
    mask = torch.tensor([[T, T, T, T], [T, F_, F_, F_]])
    # Row 0 ranks: 10 -> 0, 30 -> 3, the two 20s share (1 + 2) / 2 = 1.5; scaled 2 * rank / 3 - 1
    # -> [-1, 1, 0, 0]. Row 1 has one valid entry -> 0.
    expected = torch.tensor([[-1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    assert_close(normalize_rewards(rewards, mask, "rank"), expected)
    # All tied -> every rank is the middle -> 0.
    assert_close(normalize_rewards(torch.ones(1, 3), torch.ones(1, 3, dtype=torch.bool), "rank"),
                 torch.zeros(1, 3))


def test_rank_matches_a_sorting_reference_on_random_rows():
    g = torch.Generator().manual_seed(0)
    rewards = torch.randint(0, 4, (20, 9), generator=g).float()   # many ties
    mask = torch.rand(20, 9, generator=g) > 0.3
    got = normalize_rewards(rewards, mask, "rank")
    for i in range(20):
        vals = rewards[i][mask[i]].tolist()
        n = len(vals)
        for j in range(9):
            if not mask[i, j]:
                assert got[i, j] == 0
                continue
            r = float(rewards[i, j])
            positions = [p for p, v in enumerate(sorted(vals)) if v == r]
            avg_rank = sum(positions) / len(positions)
            want = 0.0 if n == 1 else 2 * avg_rank / (n - 1) - 1
            assert math.isclose(float(got[i, j]), want, abs_tol=1e-6)


def test_none_keeps_rewards_and_zeroes_padding():
    rewards = torch.tensor([[1.0, -2.0, 3.0], [4.0, 5.0, float("nan")]])
    assert_close(normalize_rewards(rewards, MASK, "none"), torch.tensor([[1.0, -2.0, 3.0], [4.0, 5.0, 0.0]]))


def test_unknown_normalize_method():
    with pytest.raises(ConfigError, match="normalize_method"):
        normalize_rewards(torch.zeros(1, 2), torch.ones(1, 2, dtype=torch.bool), "rank_normalize")


def test_rewards_for_training_normalises_exactly_once():
    cfg = RewardConfig(reward_mode="hard_plus_soft", normalize_method="z_score")
    raw, normed = rewards_for_training(groups(), cfg)
    assert_close(raw, torch.tensor([[2.0, 0.0, 1.6], [0.3, 1.9, 0.0]]))
    # Row 0: mean 1.2, deviations .8, -1.2, .4, population std sqrt(2.24 / 3) = 0.864099.
    # Row 1: mean 1.1, deviations -.8, .8, std 0.8 -> [-1, 1].
    expected = torch.tensor([[0.925820, -1.388730, 0.462910], [-1.0, 1.0, 0.0]])
    assert_close(normed, expected, atol=1e-5, rtol=0)
