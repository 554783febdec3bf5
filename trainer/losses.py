"""RCE, GRPO and the alternative post-training losses as pure tensor functions.

Shapes: B queries, C candidate sequences per query. ``mask`` [B, C] bool marks real
candidates; padded entries may hold any value (even NaN) and never reach a result.
Nothing here reads a config, logs, or moves tensors between devices.
"""
from __future__ import annotations

import torch

LOG_RATIO_BOUND = 20.0
"""|log pi_new - log pi_old| is saturated here before exp (see :func:`grpo_loss`)."""

ADVANTAGE_SCALES = ("std", "none")


def _masked_mean_std(x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-row mean and population std over valid entries, and the valid count; [B] each."""
    n = mask.sum(-1)
    x0 = torch.where(mask, x, torch.zeros_like(x))
    mean = x0.sum(-1) / n.clamp(min=1)
    dev = torch.where(mask, x - mean.unsqueeze(-1), torch.zeros_like(x))
    std = (dev.pow(2).sum(-1) / n.clamp(min=1)).sqrt()
    return mean, std, n


def group_advantages(rewards: torch.Tensor, mask: torch.Tensor, *, std_floor: float = 0.1,
                     clip: float = 5.0, scale: str = "std") -> torch.Tensor:
    """Group-relative advantages, one group per query.

    ``A = clip((r - mean) / max(std, std_floor), -clip, clip)`` with mean and the
    *population* std (unbiased=False) over the query's valid entries; ``scale="none"``
    keeps only the mean-centring (Dr. GRPO), then clips. A group of one, or of equal
    rewards, gets A = 0. This z-scores its input: give it raw rewards, not rewards that
    were already normalised per query (Lever-Plus z-scored twice).

    Args:
        rewards: [B, C] float.
        mask: [B, C] bool.
        std_floor: lower bound of the divisor, so near-ties are not blown up to +-1.
        clip: advantages are clipped to [-clip, clip].
        scale: "std" or "none".

    Returns:
        [B, C] float, 0 at invalid entries.
    """
    if scale not in ADVANTAGE_SCALES:
        raise ValueError(f"group_advantages: scale={scale!r} is not one of {', '.join(ADVANTAGE_SCALES)}")
    mean, std, _ = _masked_mean_std(rewards, mask)
    adv = rewards - mean.unsqueeze(-1)
    if scale == "std":
        adv = adv / std.clamp(min=std_floor).unsqueeze(-1)
    adv = adv.clamp(-clip, clip)
    return torch.where(mask, adv, torch.zeros_like(adv))


def rce_loss(seq_logp: torch.Tensor, rewards: torch.Tensor, mask: torch.Tensor, *,
             tau: float) -> torch.Tensor:
    """Reward-weighted cross-entropy: mean_q sum_c softmax(r_q / tau)_c * -log pi(y_qc).

    The softmax runs over each query's valid entries only; queries without any valid
    entry are left out of the mean (the loss is 0 if none has one). As tau -> 0 this is
    the cross-entropy of each query's best candidate; as tau grows, the mean over all.

    Args:
        seq_logp: [B, C] float, sequence log-probs under the policy (carries the gradient).
        rewards: [B, C] float, treated as constants.
        mask: [B, C] bool.
        tau: softmax temperature, > 0.

    Returns:
        scalar.
    """
    if not tau > 0:
        raise ValueError(f"rce_loss: tau must be > 0, got {tau}")
    has_any = mask.any(-1)                                              # [B]
    logits = torch.where(mask, rewards.detach() / tau, torch.full_like(rewards, float("-inf")))
    # Rows without a valid entry softmax to NaN; they are zeroed and excluded below.
    weights = torch.where(mask, torch.softmax(logits, dim=-1), torch.zeros_like(rewards))
    nll = torch.where(mask, -seq_logp, torch.zeros_like(seq_logp))
    per_query = (weights * nll).sum(-1)
    return torch.where(has_any, per_query, torch.zeros_like(per_query)).sum() / has_any.sum().clamp(min=1)


def grpo_loss(new_logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor,
              mask: torch.Tensor, *, clip_epsilon: float, kl_beta: float,
              ref_logp: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """GRPO: PPO-clip surrogate plus a k3 KL penalty.

    ``r = exp(new - old)``; ``ppo = -mean(min(r*A, clip(r, 1-eps, 1+eps)*A))``;
    ``loss = ppo + kl_beta * kl``. Means run over valid entries of the whole batch.
    Offline (``ref_logp`` None): ``kl = mean(r - 1 - log r)`` against the old policy, on
    the fixed offline sequences. Online (``ref_logp`` given, the sequences were sampled
    from the policy): DeepSeekMath's ``kl = mean(exp(ref - new) - (ref - new) - 1)``,
    KL(pi_theta || pi_ref) estimated on the policy's own samples.

    Overflow guard: the log-ratio is saturated at +-``LOG_RATIO_BOUND`` (20) in value
    only, with a straight-through gradient, so r <= e^20 (~4.9e8) stays finite in
    float32 while a sequence that ran away still receives a (bounded) gradient pulling
    it back. Below the bound nothing changes.

    Args:
        new_logp: [B, C] float, log pi_theta(y) (carries the gradient).
        old_logp: [B, C] float, log pi_old(y) (treated as constant).
        advantages: [B, C] float (treated as constant).
        mask: [B, C] bool.
        clip_epsilon: eps of the ratio clip.
        kl_beta: weight of the KL term.
        ref_logp: optional [B, C] float, log pi_ref(y) (treated as constant).

    Returns:
        (loss scalar, stats) with python floats: ``ppo_loss``, ``kl``, ``clip_frac`` (share
        of valid entries whose surrogate gradient the clip cuts: r > 1+eps with A > 0, or
        r < 1-eps with A < 0, as TRL counts it), ``mean_ratio``, ``adv_mean``, ``adv_std``
        (population), ``adv_abs_max``. All zero when nothing is valid.
    """
    zeros = torch.zeros_like(new_logp)
    adv = torch.where(mask, advantages.detach(), zeros)
    log_ratio = _saturate(torch.where(mask, new_logp - old_logp.detach(), zeros))
    ratio = log_ratio.exp()
    surrogate = torch.minimum(ratio * adv, ratio.clamp(1 - clip_epsilon, 1 + clip_epsilon) * adv)
    if ref_logp is None:
        k3 = ratio - 1 - log_ratio
    else:
        log_ref = _saturate(torch.where(mask, ref_logp.detach() - new_logp, zeros))
        k3 = log_ref.exp() - 1 - log_ref
    n = mask.sum().clamp(min=1)
    ppo = -torch.where(mask, surrogate, zeros).sum() / n
    kl = torch.where(mask, k3, zeros).sum() / n
    loss = ppo + kl_beta * kl

    with torch.no_grad():
        clipped = ((ratio > 1 + clip_epsilon) & (adv > 0)) | ((ratio < 1 - clip_epsilon) & (adv < 0))
        valid_adv = adv[mask]
        has_any = valid_adv.numel() > 0
        stats = {
            "ppo_loss": float(ppo.detach()),
            "kl": float(kl.detach()),
            "clip_frac": float((clipped & mask).sum() / n),
            "mean_ratio": float(torch.where(mask, ratio, zeros).sum() / n),
            "adv_mean": float(valid_adv.mean()) if has_any else 0.0,
            "adv_std": float(valid_adv.std(unbiased=False)) if has_any else 0.0,
            "adv_abs_max": float(valid_adv.abs().max()) if has_any else 0.0,
        }
    return loss, stats


def _saturate(log_ratio: torch.Tensor) -> torch.Tensor:
    """Clamp to +-LOG_RATIO_BOUND in value only; the gradient passes straight through."""
    saturated = log_ratio.clamp(-LOG_RATIO_BOUND, LOG_RATIO_BOUND)
    return log_ratio + (saturated - log_ratio).detach()


def update_kl_beta(kl_beta: float, kl: float, *, target_min: float, target_max: float, factor: float,
                   bounds: tuple[float, float] = (1e-3, 10.0)) -> float:
    """Adaptive KL weight (Lever-Plus's rule): beta*factor if kl > target_max, beta/factor if
    kl < target_min, unchanged inside the band; the result is clamped to ``bounds``.

    A beta of 0 stays 0: multiplicative control cannot leave 0, so ``kl_beta=0`` means a
    fixed beta of 0 (PPO-clip only) whatever ``adaptive_kl`` says. A NaN kl falls in no
    band and leaves beta unchanged.
    """
    if kl_beta == 0:
        return 0.0
    if kl > target_max:
        kl_beta = kl_beta * factor
    elif kl < target_min:
        kl_beta = kl_beta / factor
    low, high = bounds
    return float(min(max(kl_beta, low), high))


def top_k_mask(rewards: torch.Tensor, mask: torch.Tensor, k: int) -> torch.Tensor:
    """The valid top-k entries by reward in each query; k = 0 keeps every valid entry.

    Ties are broken towards the lower candidate index (stable sort), so the curriculum's
    group is deterministic. A query with fewer than k valid entries keeps all of them.

    Args:
        rewards: [B, C] float; mask: [B, C] bool; k >= 0.

    Returns:
        [B, C] bool, a subset of ``mask``.
    """
    if k < 0:
        raise ValueError(f"top_k_mask: k must be >= 0, got {k}")
    if k == 0 or k >= rewards.shape[-1]:
        return mask.clone()
    key = torch.where(mask, rewards, torch.full_like(rewards, float("-inf")))
    order = torch.sort(key, dim=-1, descending=True, stable=True).indices[:, :k]
    keep = torch.zeros_like(mask).scatter(1, order, True)
    return keep & mask


# ---------------------------------------------------------------------------
# Alternatives to offline GRPO (grpo-notes §3): each reads the same batch.


def selected_ce_loss(seq_nll: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Cross-entropy on the kept candidates only: ``sum(nll * keep) / max(#kept, 1)``.

    RAFT's loss (keep = the top / correct candidates) and GRPO's SFT anchor (keep =
    each query's top candidate). Nothing is ever pushed down. With nothing kept the
    loss is 0 (and still differentiable).

    Args:
        seq_nll: [B, C] float, per-sequence cross-entropy (carries the gradient).
        keep: [B, C] bool, a subset of the valid entries.

    Returns:
        scalar.
    """
    nll = torch.where(keep, seq_nll, torch.zeros_like(seq_nll))
    return nll.sum() / keep.sum().clamp(min=1)


def rwr_loss(seq_nll: torch.Tensor, rewards: torch.Tensor, mask: torch.Tensor, *, temperature: float,
             max_weight: float) -> tuple[torch.Tensor, dict[str, float]]:
    """Reward-weighted regression: ``sum_valid min(exp(r / T), w_max) * nll / #valid``.

    ``rewards`` should be normalised per query (z-scored or ranked), as AWR does with
    advantages, so T has the same meaning in every group. Unlike RCE's per-query
    softmax the weights are not renormalised within a query: a query whose best
    candidate stands out more trains more. Every weight is positive.

    Args:
        seq_nll: [B, C] float (carries the gradient); rewards: [B, C] float (constant).
        mask: [B, C] bool; temperature: T > 0; max_weight: clip of the weights, >= 1.

    Returns:
        (scalar, stats) with ``weight_mean`` and ``weight_max`` over valid entries.
    """
    if not temperature > 0:
        raise ValueError(f"rwr_loss: temperature must be > 0, got {temperature}")
    r = torch.where(mask, rewards.detach(), torch.zeros_like(rewards))
    w = torch.where(mask, (r / temperature).exp().clamp(max=max_weight), torch.zeros_like(r))
    nll = torch.where(mask, seq_nll, torch.zeros_like(seq_nll))
    n = mask.sum().clamp(min=1)
    with torch.no_grad():
        stats = {"weight_mean": float(w.sum() / n), "weight_max": float(w.max()) if w.numel() else 0.0}
    return (w * nll).sum() / n, stats


def preference_pairs(rewards: torch.Tensor, mask: torch.Tensor, min_gap: float) -> torch.Tensor:
    """Ordered pairs (w, l) within each query with ``r_w - r_l > min_gap``: [B, C, C] bool (w, l)."""
    r = torch.where(mask, rewards, torch.zeros_like(rewards))
    both = mask.unsqueeze(-1) & mask.unsqueeze(-2)
    return both & (r.unsqueeze(-1) - r.unsqueeze(-2) > min_gap)


def dpo_loss(new_logp: torch.Tensor, ref_logp: torch.Tensor, rewards: torch.Tensor, mask: torch.Tensor, *,
             beta: float, min_gap: float) -> tuple[torch.Tensor, dict[str, float]]:
    """DPO over every pair of one query's candidates with a reward gap.

    ``h_c = log pi(y_c) - log pi_ref(y_c)``; for each pair (w, l) with
    ``r_w - r_l > min_gap``: ``-log sigmoid(beta * (h_w - h_l))``, averaged over all
    pairs of the batch (0 when there is none).

    Args:
        new_logp: [B, C] float (carries the gradient); ref_logp: [B, C] float (constant).
        rewards: [B, C] float; mask: [B, C] bool; beta > 0; min_gap >= 0.

    Returns:
        (scalar, stats) with ``frac_used`` (valid entries in at least one pair / valid
        entries) and ``pair_acc`` (pairs whose margin h_w - h_l is positive; NaN without pairs).
    """
    pairs = preference_pairs(rewards, mask, min_gap)
    h = torch.where(mask, new_logp - ref_logp.detach(), torch.zeros_like(new_logp))
    margin = beta * (h.unsqueeze(-1) - h.unsqueeze(-2))                 # [B, C(w), C(l)]
    per_pair = torch.where(pairs, torch.nn.functional.softplus(-margin), torch.zeros_like(margin))
    n = pairs.sum()
    with torch.no_grad():
        used = (pairs.any(-1) | pairs.any(-2)) & mask
        stats = {"frac_used": float(used.sum()) / max(int(mask.sum()), 1),
                 "pair_acc": float(((margin > 0) & pairs).sum() / n) if n else float("nan")}
    return per_pair.sum() / n.clamp(min=1), stats
