"""Loss functions on small hand-computed tables."""
from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from trainer.losses import (dpo_loss, grpo_loss, group_advantages, preference_pairs, rce_loss, rwr_loss,
                            selected_ce_loss, top_k_mask, update_kl_beta)

T, F_ = True, False
NAN = float("nan")


# ------------------------------------------------------------------ group_advantages


def test_group_advantages_zscore_with_floor_and_padding():
    rewards = torch.tensor([[1.0, 2.0, 3.0], [4.0, 4.1, NAN]])
    mask = torch.tensor([[T, T, T], [T, T, F_]])
    # Row 0: mean 2, population var (1 + 0 + 1) / 3 = 2/3, std 0.81650 -> A = +-1/0.81650 = +-1.22474.
    # Row 1: mean 4.05, std 0.05 < floor 0.1 -> A = +-0.05 / 0.1 = +-0.5; the NaN pad -> 0.
    expected = torch.tensor([[-1.224745, 0.0, 1.224745], [-0.5, 0.5, 0.0]])
    assert_close(group_advantages(rewards, mask), expected, atol=1e-5, rtol=0)


def test_group_advantages_mean_centring_only_then_clip():
    rewards = torch.tensor([[0.0, 0.0, 0.0, 10.0]])
    mask = torch.ones(1, 4, dtype=torch.bool)
    # mean 2.5 -> [-2.5, -2.5, -2.5, 7.5]; 7.5 clipped to 5.
    assert_close(group_advantages(rewards, mask, scale="none"), torch.tensor([[-2.5, -2.5, -2.5, 5.0]]))
    # With std: population std = sqrt((3 * 6.25 + 56.25) / 4) = sqrt(18.75) = 4.33013;
    # 7.5 / 4.33013 = 1.73205 -> clipped to 1.5; -2.5 / 4.33013 = -0.57735.
    got = group_advantages(rewards, mask, clip=1.5)
    assert_close(got, torch.tensor([[-0.57735, -0.57735, -0.57735, 1.5]]), atol=1e-5, rtol=0)


def test_group_advantages_single_and_constant_groups_are_zero():
    rewards = torch.tensor([[2.0, 2.0, 2.0], [7.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    mask = torch.tensor([[T, T, T], [T, F_, F_], [F_, F_, F_]])
    assert torch.equal(group_advantages(rewards, mask), torch.zeros(3, 3))


def test_group_advantages_rejects_unknown_scale():
    with pytest.raises(ValueError, match="scale"):
        group_advantages(torch.zeros(1, 2), torch.ones(1, 2, dtype=torch.bool), scale="rank")


# --------------------------------------------------------------------------- rce_loss


def test_rce_loss_hand_computed_with_padding_and_empty_query():
    seq_logp = torch.tensor([[-1.0, -2.0], [-4.0, NAN], [NAN, NAN]])
    rewards = torch.tensor([[0.0, math.log(3.0)], [5.0, NAN], [1.0, 2.0]])
    mask = torch.tensor([[T, T], [T, F_], [F_, F_]])
    # Query 0: softmax([0, ln 3]) = [1/4, 3/4] -> 0.25 * 1 + 0.75 * 2 = 1.75.
    # Query 1: one valid entry, weight 1 -> 4. Query 2 has none and leaves the mean.
    # Loss = (1.75 + 4) / 2 = 2.875.
    assert_close(rce_loss(seq_logp, rewards, mask, tau=1.0), torch.tensor(2.875))


def test_rce_loss_temperature_limits():
    seq_logp = torch.tensor([[-1.0, -3.0, -2.0]])
    rewards = torch.tensor([[1.0, 2.0, 1.5]])
    mask = torch.ones(1, 3, dtype=torch.bool)
    # tau -> 0: all weight on the best reward (index 1) -> CE of the best = 3.
    assert_close(rce_loss(seq_logp, rewards, mask, tau=1e-3), torch.tensor(3.0))
    # tau -> inf: uniform weights -> mean NLL = (1 + 3 + 2) / 3 = 2.
    assert_close(rce_loss(seq_logp, rewards, mask, tau=1e6), torch.tensor(2.0))


def test_rce_loss_gradient_is_minus_weight_over_queries():
    seq_logp = torch.tensor([[-1.0, -2.0], [-4.0, 0.0]], requires_grad=True)
    rewards = torch.tensor([[0.0, math.log(3.0)], [5.0, 100.0]])
    mask = torch.tensor([[T, T], [T, F_]])
    rce_loss(seq_logp, rewards, mask, tau=1.0).backward()
    # d/dlogp = -w / (2 queries); the padded entry gets no gradient despite its huge reward.
    assert_close(seq_logp.grad, torch.tensor([[-0.125, -0.375], [-0.5, 0.0]]))


def test_rce_loss_rejects_nonpositive_tau():
    with pytest.raises(ValueError, match="tau"):
        rce_loss(torch.zeros(1, 2), torch.zeros(1, 2), torch.ones(1, 2, dtype=torch.bool), tau=0.0)


# -------------------------------------------------------------------------- grpo_loss


def test_grpo_loss_at_ratio_one_is_minus_mean_advantage():
    adv = torch.tensor([[1.0, -2.0, 0.5], [3.0, NAN, NAN]])
    mask = torch.tensor([[T, T, T], [T, F_, F_]])
    old = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, NAN, NAN]])
    new = old.clone().requires_grad_(True)
    loss, stats = grpo_loss(new, old, adv, mask, clip_epsilon=0.2, kl_beta=0.7)
    # Valid A = 1, -2, 0.5, 3: mean 0.625; r = 1 so ppo = -0.625 and kl = 0 (beta irrelevant).
    assert_close(loss, torch.tensor(-0.625))
    assert stats["kl"] == 0 and stats["clip_frac"] == 0 and stats["mean_ratio"] == 1
    # Population std: deviations .375, -2.625, -.125, 2.375 -> var 12.6875 / 4 = 3.171875.
    assert stats["adv_mean"] == pytest.approx(0.625)
    assert stats["adv_std"] == pytest.approx(math.sqrt(3.171875))
    assert stats["adv_abs_max"] == 3.0 and stats["ppo_loss"] == pytest.approx(-0.625)
    loss.backward()
    # At r = 1 nothing is clipped: d ppo / d new_i = -A_i / 4; the k3 gradient r - 1 is 0.
    assert_close(new.grad, torch.tensor([[-0.25, 0.5, -0.125], [-0.75, 0.0, 0.0]]))


def test_grpo_loss_clip_fraction_and_values_on_a_constructed_case():
    ratio = torch.tensor([[1.5, 1.5, 0.5, 0.5, 1.1]])
    adv = torch.tensor([[1.0, -1.0, -1.0, 1.0, 1.0]])
    mask = torch.ones(1, 5, dtype=torch.bool)
    new = ratio.log().clone().requires_grad_(True)
    loss, stats = grpo_loss(new, torch.zeros(1, 5), adv, mask, clip_epsilon=0.2, kl_beta=0.5)
    # min(rA, clip(r)A): min(1.5, 1.2) = 1.2 [clipped]; min(-1.5, -1.2) = -1.5; min(-0.5, -0.8) = -0.8
    # [clipped]; min(0.5, 0.8) = 0.5; min(1.1, 1.1) = 1.1 -> sum 0.5, ppo = -0.1, clip_frac = 2/5.
    # k3 = r - 1 - ln r: 2 * 0.0945349 + 2 * 0.1931472 + 0.0046898 = 0.5800540 -> kl = 0.1160108.
    assert stats["clip_frac"] == pytest.approx(0.4)
    assert stats["ppo_loss"] == pytest.approx(-0.1, abs=1e-6)
    assert stats["kl"] == pytest.approx(0.1160108, abs=1e-6)
    assert stats["mean_ratio"] == pytest.approx(1.02)
    assert float(loss.detach()) == pytest.approx(-0.1 + 0.5 * 0.1160108, abs=1e-6)
    # Gradient of the PPO part is cut exactly on the clipped entries.
    new.grad = None
    grpo_loss(new, torch.zeros(1, 5), adv, mask, clip_epsilon=0.2, kl_beta=0.0)[0].backward()
    assert torch.equal(new.grad[0] == 0, torch.tensor([T, F_, T, F_, F_]))


def test_grpo_loss_guards_exp_overflow_but_keeps_a_gradient():
    new = torch.tensor([[100.0, -100.0]], requires_grad=True)
    old = torch.zeros(1, 2)
    adv = torch.tensor([[-1.0, 1.0]])
    loss, stats = grpo_loss(new, old, adv, torch.ones(1, 2, dtype=torch.bool), clip_epsilon=0.2, kl_beta=0.1)
    loss.backward()
    assert math.isfinite(float(loss.detach())) and torch.isfinite(new.grad).all()
    assert new.grad[0, 0] > 0                     # the runaway sequence is still pushed back down
    assert stats["mean_ratio"] == pytest.approx((math.exp(20) + math.exp(-20)) / 2, rel=1e-5)


def test_grpo_loss_with_nothing_valid_is_zero_and_finite():
    new = torch.full((2, 2), NAN, requires_grad=True)
    loss, stats = grpo_loss(new, torch.full((2, 2), NAN), torch.full((2, 2), NAN),
                            torch.zeros(2, 2, dtype=torch.bool), clip_epsilon=0.2, kl_beta=1.0)
    loss.backward()
    assert float(loss.detach()) == 0 and all(v == 0 for v in stats.values())
    assert torch.equal(new.grad, torch.zeros(2, 2))


# ---------------------------------------------------------------------- update_kl_beta

BAND = dict(target_min=0.01, target_max=0.1, factor=1.5)


@pytest.mark.parametrize("kl, expected", [(0.5, 0.15), (0.001, 0.1 / 1.5), (0.05, 0.1), (0.1, 0.1),
                                          (0.01, 0.1), (float("nan"), 0.1)])
def test_update_kl_beta_bands(kl, expected):
    assert update_kl_beta(0.1, kl, **BAND) == pytest.approx(expected)


def test_update_kl_beta_bounds_and_zero():
    assert update_kl_beta(9.0, 1.0, **BAND) == 10.0           # 13.5 clamped to the upper bound
    assert update_kl_beta(0.0012, 0.0, **BAND) == 1e-3        # 0.0008 clamped to the lower bound
    assert update_kl_beta(0.5, 1.0, **BAND, bounds=(0.1, 0.6)) == 0.6
    assert update_kl_beta(0.0, 5.0, **BAND) == 0.0            # a fixed beta of 0 stays 0
    assert update_kl_beta(0.0, 0.0, **BAND) == 0.0


# -------------------------------------------------------------------------- top_k_mask


def test_top_k_mask_picks_valid_best_with_stable_ties():
    rewards = torch.tensor([[3.0, 1.0, 2.0, 5.0], [1.0, 1.0, 1.0, 99.0], [0.5, 9.0, 9.0, 9.0]])
    mask = torch.tensor([[T, T, T, T], [T, T, T, F_], [T, F_, F_, F_]])
    got = top_k_mask(rewards, mask, 2)
    expected = torch.tensor([[T, F_, F_, T],      # 5 and 3
                             [T, T, F_, F_],      # three-way tie -> lowest indices; the 99 is padding
                             [T, F_, F_, F_]])    # fewer valid entries than k -> all of them
    assert torch.equal(got, expected)
    assert torch.equal(top_k_mask(rewards, mask, 0), mask)
    assert torch.equal(top_k_mask(rewards, mask, 10), mask)
    with pytest.raises(ValueError):
        top_k_mask(rewards, mask, -1)


# ------------------------------------------------------------ online GRPO: KL against a reference


def test_grpo_loss_with_ref_logp_uses_the_deepseek_k3_against_the_reference():
    old = torch.tensor([[-1.0, -2.0, NAN]])
    new = old.clone().requires_grad_(True)
    ref = torch.tensor([[-1.0 + math.log(2.0), -2.0, NAN]])
    adv = torch.tensor([[1.0, -1.0, NAN]])
    mask = torch.tensor([[T, T, F_]])
    loss, stats = grpo_loss(new, old, adv, mask, clip_epsilon=0.2, kl_beta=0.5, ref_logp=ref)
    # r = 1 -> ppo = -mean(A) = 0. k3 = e^(ref-new) - (ref-new) - 1: 2 - ln 2 - 1 = 0.3068528 and 0;
    # kl = 0.1534264, loss = 0.5 * kl. Against the old policy (no ref) kl would be 0.
    assert stats["ppo_loss"] == pytest.approx(0.0, abs=1e-7)
    assert stats["kl"] == pytest.approx(0.1534264, abs=1e-6)
    assert float(loss.detach()) == pytest.approx(0.0767132, abs=1e-6)
    loss.backward()
    # d/dnew: -A/n + beta * (1 - e^(ref-new)) / n = [-0.5 + 0.5 * (1 - 2) / 2, 0.5 + 0] = [-0.75, 0.5]
    assert_close(new.grad, torch.tensor([[-0.75, 0.5, 0.0]]))
    assert grpo_loss(new, old, adv, mask, clip_epsilon=0.2, kl_beta=0.5)[1]["kl"] == 0


# --------------------------------------------------------------------- RAFT / anchor CE


def test_selected_ce_loss_averages_the_kept_entries_only():
    nll = torch.tensor([[1.0, 2.0, NAN], [3.0, 4.0, 5.0]], requires_grad=True)
    keep = torch.tensor([[T, F_, F_], [F_, T, T]])
    loss = selected_ce_loss(nll, keep)
    assert_close(loss, torch.tensor(10.0 / 3.0))      # (1 + 4 + 5) / 3; the NaN is not kept
    loss.backward()
    assert_close(nll.grad, keep.float() / 3.0)
    nothing = selected_ce_loss(nll, torch.zeros(2, 3, dtype=torch.bool))
    assert float(nothing.detach()) == 0.0 and nothing.requires_grad


# ------------------------------------------------------------------------------- RWR


def test_rwr_loss_exponential_weights_clipped_and_not_renormalised():
    nll = torch.tensor([[1.0, 2.0], [3.0, NAN]], requires_grad=True)
    rewards = torch.tensor([[0.0, 0.5 * math.log(3.0)], [1.0, NAN]])
    mask = torch.tensor([[T, T], [T, F_]])
    # T = 0.5: weights exp(0) = 1, exp(ln 3) = 3, exp(2) = 7.389; three valid entries.
    loss, stats = rwr_loss(nll, rewards, mask, temperature=0.5, max_weight=100.0)
    assert_close(loss, torch.tensor((1 * 1 + 3 * 2 + math.exp(2) * 3) / 3))
    assert stats["weight_max"] == pytest.approx(math.exp(2))
    loss.backward()
    assert_close(nll.grad, torch.tensor([[1 / 3, 1.0], [math.exp(2) / 3, 0.0]]))
    # max_weight 2 clips the 3 and the 7.389: (1 + 2 * 2 + 2 * 3) / 3 = 11 / 3
    clipped, stats = rwr_loss(nll, rewards, mask, temperature=0.5, max_weight=2.0)
    assert_close(clipped, torch.tensor(11.0 / 3.0))
    assert stats["weight_mean"] == pytest.approx(5.0 / 3.0)
    with pytest.raises(ValueError, match="temperature"):
        rwr_loss(nll, rewards, mask, temperature=0.0, max_weight=2.0)


# ------------------------------------------------------------------------------- DPO


def test_preference_pairs_need_a_gap_larger_than_min_gap():
    rewards = torch.tensor([[1.0, 0.0, 0.9, 5.0]])
    mask = torch.tensor([[T, T, T, F_]])
    got = preference_pairs(rewards, mask, 0.5)
    expected = torch.zeros(1, 4, 4, dtype=torch.bool)
    expected[0, 0, 1] = expected[0, 2, 1] = True      # 1.0 > 0.0 and 0.9 > 0.0; 1.0 vs 0.9 is too close
    assert torch.equal(got, expected)
    assert int(preference_pairs(rewards, mask, 0.0).sum()) == 3


def test_dpo_loss_hand_computed_pairs_and_gradient():
    new = torch.tensor([[-1.0, -2.0, -3.0, NAN], [-1.0, -1.0, NAN, NAN]], requires_grad=True)
    ref = torch.tensor([[-1.5, -1.5, -1.5, NAN], [-2.0, -2.0, NAN, NAN]])
    rewards = torch.tensor([[1.0, 0.0, 0.9, 9.0], [0.3, 0.3, 0.0, 0.0]])
    mask = torch.tensor([[T, T, T, F_], [T, T, F_, F_]])
    loss, stats = dpo_loss(new, ref, rewards, mask, beta=1.0, min_gap=0.5)
    # h = new - ref = [0.5, -0.5, -1.5]; pairs (0 > 1): margin 1 -> softplus(-1) = 0.3132617;
    # (2 > 1): margin -1 -> softplus(1) = 1.3132617. Mean over 2 pairs = 0.8132617. Query 1: equal rewards.
    assert_close(loss, torch.tensor(0.8132617), atol=1e-6, rtol=0)
    assert stats["pair_acc"] == 0.5 and stats["frac_used"] == pytest.approx(3 / 5)
    loss.backward()
    s1, s_1 = 1 / (1 + math.e), 1 / (1 + math.exp(-1))   # sigmoid(-1), sigmoid(1)
    # d/dh_w = -beta * sigmoid(-margin) / n, d/dh_l = +beta * sigmoid(-margin) / n
    expected = torch.tensor([[-s1 / 2, (s1 + s_1) / 2, -s_1 / 2, 0.0], [0.0, 0.0, 0.0, 0.0]])
    assert_close(new.grad, expected, atol=1e-6, rtol=0)
    # beta scales the margin: beta 2 -> softplus(-2) and softplus(2)
    loss2, _ = dpo_loss(new, ref, rewards, mask, beta=2.0, min_gap=0.5)
    expected2 = (math.log1p(math.exp(-2)) + math.log1p(math.exp(2))) / 2
    assert float(loss2.detach()) == pytest.approx(expected2, abs=1e-6)


def test_dpo_loss_without_pairs_is_zero_and_differentiable():
    new = torch.zeros(1, 2, requires_grad=True)
    loss, stats = dpo_loss(new, torch.zeros(1, 2), torch.ones(1, 2), torch.ones(1, 2, dtype=torch.bool),
                           beta=0.1, min_gap=0.0)
    loss.backward()
    assert float(loss.detach()) == 0 and math.isnan(stats["pair_acc"]) and stats["frac_used"] == 0
    assert torch.equal(new.grad, torch.zeros(1, 2))
