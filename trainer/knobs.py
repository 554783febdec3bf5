"""Which hyperparameters a configuration actually reads: the rules behind ``config.inactive_fields``.

A field is inactive when no stage of this run reads it: the RCE fields without
RCE epochs, the post-training fields of other algorithms (``ALGORITHM_FIELDS``),
reward fields no stage weighs by, and so on. ``tests/trainer/test_knobs.py``
checks the other direction: every field, in a context where it is active,
changes the trained parameters; ``tests/trainer/test_algorithms.py`` checks that
the post-training fields marked inactive here change nothing.
"""
from __future__ import annotations

from dataclasses import fields

from trainer.config import GRPOConfig, RewardConfig, TrainConfig, post_epochs

_KL = ("kl_beta", "adaptive_kl", "kl_target_min", "kl_target_max", "kl_adjust_factor")
_PPO = _KL + ("clip_epsilon", "advantage_clip")
_OFFLINE_GROUP = ("grpo_early_epochs", "grpo_early_top_k", "grpo_late_top_k", "old_policy_refresh")
# GRPOConfig fields each algorithm reads besides grpo_epochs, grpo_lr and algorithm itself
ALGORITHM_FIELDS: dict[str, tuple[str, ...]] = {
    "grpo": _PPO + ("std_floor",) + _OFFLINE_GROUP,
    "dr_grpo": _PPO + _OFFLINE_GROUP,
    "grpo_anchor": _PPO + ("std_floor",) + _OFFLINE_GROUP + ("anchor_lambda",),
    "raft": ("raft_top_k", "raft_require_correct"),
    "rwr": ("rwr_temperature", "rwr_max_weight"),
    "dpo": ("dpo_beta", "dpo_min_gap"),
    "online_grpo": _PPO + ("std_floor", "online_group_size", "online_temperature", "online_ppo_steps"),
    "rce_only": (),
}
# which reward tensor the post-training stage reads (trainer.rewards.rewards_for_training)
_READS_REWARD = {"grpo": "raw", "dr_grpo": "raw", "grpo_anchor": "raw", "raft": "raw", "dpo": "raw",
                 "rwr": "normalised"}


def inactive_fields(cfg: TrainConfig) -> dict[str, str]:
    """Hyperparameters that cannot change this run's computation, with the reason (field -> why)."""
    out: dict[str, str] = {}
    g, r, o, alg = cfg.grpo, cfg.reward, cfg.optim, cfg.grpo.algorithm
    runs_rce = cfg.rce.rce_epochs > 0
    if not runs_rce:
        for n in ("rce_lr", "rce_temp_start", "rce_temp_end", "rce_use_raw_reward"):
            out[n] = "rce_epochs=0"
    post = post_epochs(cfg) > 0
    no_post = "grpo_epochs=0" if g.grpo_epochs == 0 else "algorithm=rce_only"
    if not post:
        why = no_post
        for f in fields(GRPOConfig):
            if f.name not in ("grpo_epochs", "algorithm"):
                out[f.name] = why
        out["early_stopping_patience"] = why
        if g.grpo_epochs == 0:
            out["algorithm"] = why
        elif alg == "rce_only":
            out["grpo_epochs"] = why
    else:
        own = set(ALGORITHM_FIELDS[alg]) | {"grpo_epochs", "grpo_lr", "algorithm", "post_dropout"}
        for f in fields(GRPOConfig):
            if f.name not in own:
                out[f.name] = f"algorithm={alg}"
        if not (cfg.model.dropout or cfg.model.attn_dropout):
            out["post_dropout"] = "dropout=0 and attn_dropout=0"
        if not g.adaptive_kl:
            for n in ("kl_target_min", "kl_target_max", "kl_adjust_factor"):
                out.setdefault(n, "adaptive_kl=false")
        # one optimiser step per sample batch: ratios differ from 1 only through dropout
        if alg == "online_grpo" and g.online_ppo_steps == 1 and not (cfg.model.dropout or cfg.model.attn_dropout):
            out["clip_epsilon"] = "online_ppo_steps=1 without dropout"
    post_reads = _READS_REWARD.get(alg) if post else None
    reads_norm = (runs_rce and not cfg.rce.rce_use_raw_reward) or post_reads == "normalised"
    if not runs_rce and post_reads is None:
        why = "rce_epochs=0 and " + (f"algorithm={alg}" if post else no_post)
        for f in fields(RewardConfig):
            out[f.name] = why
    elif not reads_norm:
        for n in ("normalize_method", "normalize_clamp"):
            out[n] = "rce_use_raw_reward=true" if runs_rce else "rce_epochs=0"
    if r.reward_mode != "legacy":
        for n in ("reward_alpha", "reward_beta", "correctness_mode"):
            out.setdefault(n, f"reward_mode={r.reward_mode}")
    if r.reward_mode in ("legacy", "soft_only"):
        out.setdefault("hard_weight", f"reward_mode={r.reward_mode}")
    if r.reward_mode in ("legacy", "hard_only"):
        out.setdefault("soft_weight", f"reward_mode={r.reward_mode}")
    if r.normalize_method != "z_score_clamp":
        out.setdefault("normalize_clamp", f"normalize_method={r.normalize_method}")
    if o.lr_schedule == "constant":
        out["warmup_ratio"] = "lr_schedule=constant"
    return out
