"""Hyperparameters: one validated dataclass per stage, one name per concept.

A field's name is the hyperparameter's name everywhere: in search-space YAML,
in the Ray Tune config, in leaderboard columns. ``from_dict`` builds every
stage from one flat dict and rejects unknown keys, so a misspelt knob fails
loudly instead of silently doing nothing (the users' old scripts passed
``REWARD_ALPHA`` to code that never read it).

Defaults are the tuning document's "current config" (RCE/GRPO 25 epochs,
batch 1, RCE lr 5e-4, GRPO lr 5e-6, KL beta 0.3, alpha 0.2, beta 1.0) and
Lever-Plus's trainer defaults otherwise.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field, fields
from typing import Any, Mapping

from trainer.errors import ConfigError


def hp(default: Any, help: str, *, choices: tuple | None = None, low: float | None = None,
       high: float | None = None, low_open: bool = False) -> Any:
    """A hyperparameter field: default, help text and the checks ``__post_init__`` runs.

    ``low``/``high`` are inclusive bounds unless ``low_open`` (then ``value > low``).
    """
    meta = {"help": help, "choices": choices, "low": low, "high": high, "low_open": low_open}
    return field(default=default, metadata=meta)


class _Validated:
    """Type and range checks driven by each field's metadata."""

    def __post_init__(self) -> None:
        for f in fields(self):  # type: ignore[arg-type]
            setattr(self, f.name, _check_field(f, getattr(self, f.name)))
        self.check()

    def check(self) -> None:
        """Cross-field invariants; overridden per stage."""


def _check_field(f: dataclasses.Field, value: Any) -> Any:
    name, meta, default = f.name, f.metadata, f.default
    want = type(default)
    if want is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{name}: expected true/false, got {value!r}")
    elif want is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or float(value) != int(value):
            raise ConfigError(f"{name}: expected an integer, got {value!r}")
        value = int(value)
    elif want is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{name}: expected a number, got {value!r}")
        value = float(value)
        if not math.isfinite(value):
            raise ConfigError(f"{name}: expected a finite number, got {value!r}")
    elif want is str and not isinstance(value, str):
        raise ConfigError(f"{name}: expected a string, got {value!r}")
    if meta.get("choices") and value not in meta["choices"]:
        raise ConfigError(f"{name}: {value!r} is not one of {', '.join(map(str, meta['choices']))}")
    low, high = meta.get("low"), meta.get("high")
    if low is not None and (value <= low if meta.get("low_open") else value < low):
        op = ">" if meta.get("low_open") else ">="
        raise ConfigError(f"{name}: must be {op} {low}, got {value!r}")
    if high is not None and value > high:
        raise ConfigError(f"{name}: must be <= {high}, got {value!r}")
    return value


# ---------------------------------------------------------------------------
# Stages


@dataclass
class ModelConfig(_Validated):
    """The v2 pointer selector (Lever-Plus PointerSelectorV2)."""

    num_layers: int = hp(1, "cross-attention layers; 0 = v1-style bi-encoder", low=0, high=8)
    hidden_dim: int = hp(256, "width of the projected query/candidate space", low=8, high=4096)
    num_heads: int = hp(1, "attention heads; must divide hidden_dim", low=1, high=64)
    dropout: float = hp(0.5, "dropout on the query state and candidate tokens (train mode only)",
                        low=0.0, high=0.95)
    attn_dropout: float = hp(0.1, "dropout inside cross-attention (train mode only)", low=0.0, high=0.95)
    label_smoothing: float = hp(0.0, "label smoothing of every cross-entropy (SFT, RCE, anchors)",
                                low=0.0, high=0.5)

    def check(self) -> None:
        if self.hidden_dim % self.num_heads:
            raise ConfigError(f"num_heads: {self.num_heads} must divide hidden_dim={self.hidden_dim}")


@dataclass
class SFTConfig(_Validated):
    """Supervised warm start on beam-searched sequences (computed once per sweep)."""

    sft_epochs: int = hp(20, "epochs of cross-entropy on the beam sequences", low=0, high=1000)
    sft_lr: float = hp(1e-4, "AdamW learning rate for SFT", low=0.0, low_open=True, high=1.0)
    sft_batch_size: int = hp(64, "query groups per SFT optimiser step", low=1, high=100000)


@dataclass
class RCEConfig(_Validated):
    """Reward-weighted cross-entropy warm-up over each query's candidate group."""

    rce_epochs: int = hp(25, "epochs of RCE warm-up (0 skips it)", low=0, high=1000)
    rce_lr: float = hp(5e-4, "AdamW learning rate for RCE", low=0.0, low_open=True, high=1.0)
    rce_temp_start: float = hp(2.0, "softmax temperature over rewards at the first RCE step",
                               low=0.0, low_open=True, high=1e4)
    rce_temp_end: float = hp(0.5, "temperature at the last RCE step (annealed linearly per step)",
                             low=0.0, low_open=True, high=1e4)
    rce_use_raw_reward: bool = hp(False, "weight by raw rewards instead of normalised ones")


ALGORITHMS = ("grpo", "rce_only", "raft", "rwr", "dpo", "grpo_anchor", "dr_grpo", "online_grpo")
"""Post-training objectives (trainer.algorithms); every one runs after the same RCE warm-up."""


@dataclass
class GRPOConfig(_Validated):
    """The post-training stage: offline GRPO by default, or another ``algorithm``.

    ``grpo_epochs`` and ``grpo_lr`` are the stage's budget and learning rate for every
    algorithm (the names stay, since ASHA counts ``grpo_epoch``); each algorithm reads
    only its own fields below (see :func:`inactive_fields`).
    """

    grpo_epochs: int = hp(25, "epochs of the post-training stage after the warm-up, whatever the "
                          "algorithm (0 = RCE only)", low=0, high=1000)
    grpo_lr: float = hp(5e-6, "AdamW learning rate of the post-training stage", low=0.0, low_open=True,
                        high=1.0)
    algorithm: str = hp("grpo", "post-training objective: grpo, dr_grpo (mean-centred advantages), "
                        "grpo_anchor (+ CE on the top candidate), raft, rwr, dpo, online_grpo (policy "
                        "samples scored by the evaluator), rce_only (no post-training)", choices=ALGORITHMS)
    kl_beta: float = hp(0.3, "weight of the KL penalty (initial value when adaptive_kl)", low=0.0, high=100.0)
    adaptive_kl: bool = hp(True, "multiply/divide kl_beta by kl_adjust_factor outside the KL band")
    kl_target_min: float = hp(0.01, "adaptive KL: shrink beta when KL is below this", low=0.0, high=1e3)
    kl_target_max: float = hp(0.1, "adaptive KL: grow beta when KL is above this", low=0.0, high=1e3)
    kl_adjust_factor: float = hp(1.5, "adaptive KL: multiplicative step of beta", low=1.0, low_open=True,
                                 high=100.0)
    clip_epsilon: float = hp(0.2, "PPO ratio clip: [1-eps, 1+eps]", low=0.0, low_open=True, high=10.0)
    advantage_clip: float = hp(5.0, "advantages are clipped to [-c, c]", low=0.0, low_open=True, high=1e3)
    std_floor: float = hp(0.1, "group std is floored at this before dividing", low=0.0, low_open=True,
                          high=1e3)
    grpo_early_epochs: int = hp(1, "GRPO epochs that use grpo_early_top_k", low=0, high=1000)
    grpo_early_top_k: int = hp(3, "group = top-k candidates by reward in early epochs (0 = all)",
                               low=0, high=1000)
    grpo_late_top_k: int = hp(5, "group = top-k candidates by reward afterwards (0 = all)", low=0, high=1000)
    post_dropout: bool = hp(True, "dropout stays on while post-training computes new log-probs (Lever-Plus); "
                            "false = TRL's disable_dropout: the PPO ratio then compares like with like")
    old_policy_refresh: str = hp("never", "old log-probs: 'never' (the starting SFT policy) or "
                                 "'epoch' (refreshed every GRPO epoch)", choices=("never", "epoch"))
    anchor_lambda: float = hp(0.3, "grpo_anchor: weight of the cross-entropy on each query's top-reward "
                              "candidate", low=0.0, low_open=True, high=100.0)
    raft_top_k: int = hp(1, "raft: imitate each query's top-k candidates by reward", low=1, high=1000)
    raft_require_correct: bool = hp(True, "raft: keep only candidates recorded correct (a query with none "
                                    "trains nothing)")
    rwr_temperature: float = hp(0.5, "rwr: candidate weight exp(normalised reward / T)", low=0.0,
                                low_open=True, high=100.0)
    rwr_max_weight: float = hp(20.0, "rwr: weights are clipped at this (AWR's 20)", low=1.0, high=1e6)
    dpo_beta: float = hp(0.1, "dpo: beta of -log sigmoid(beta * margin of log-ratios to the SFT reference)",
                         low=0.0, low_open=True, high=100.0)
    dpo_min_gap: float = hp(0.5, "dpo: pair (w, l) of one query's candidates when raw r_w - r_l > this "
                            "(0.5 under the legacy reward: correctness differs)", low=0.0, high=100.0)
    online_group_size: int = hp(8, "online_grpo: sequences sampled from the policy per training query (G)",
                                low=2, high=1024)
    online_temperature: float = hp(1.0, "online_grpo: sampling temperature (exploration only; ratios and "
                                   "KL use the untempered policy)", low=0.0, low_open=True, high=100.0)
    online_ppo_steps: int = hp(1, "online_grpo: optimiser steps per sampled batch (PPO's mu); the old "
                               "policy is the one that sampled", low=1, high=64)

    def check(self) -> None:
        if self.kl_target_min > self.kl_target_max:
            raise ConfigError(f"kl_target_min: {self.kl_target_min} must be <= kl_target_max="
                              f"{self.kl_target_max}")
        for name in ("grpo_early_top_k", "grpo_late_top_k"):
            if getattr(self, name) == 1:
                raise ConfigError(f"{name}: a group of 1 has zero advantage; use 0 (all) or >= 2")


@dataclass
class OptimConfig(_Validated):
    """Optimisation shared by the RCE and GRPO stages."""

    batch_size: int = hp(1, "query groups per optimiser step (all candidates in one forward)",
                         low=1, high=100000)
    weight_decay: float = hp(0.01, "AdamW weight decay", low=0.0, high=10.0)
    grad_clip: float = hp(1.0, "gradient-norm clip (0 = off)", low=0.0, high=1e6)
    lr_schedule: str = hp("constant", "per-stage LR schedule", choices=("constant", "cosine"))
    warmup_ratio: float = hp(0.1, "cosine schedule: fraction of steps with linear warm-up",
                             low=0.0, high=0.9)
    early_stopping_patience: int = hp(0, "stop GRPO after this many evaluations without a new best "
                                      "acc_mean (0 = off); the best checkpoint is kept either way",
                                      low=0, high=1000)


@dataclass
class RewardConfig(_Validated):
    """Reward per candidate sequence, then one per-query normalisation."""

    reward_mode: str = hp("legacy", "legacy = alpha*quality + beta*correctness; hard_plus_soft = "
                          "hard_weight*correct + soft_weight*acc; hard_only; soft_only",
                          choices=("legacy", "hard_plus_soft", "hard_only", "soft_only"))
    reward_alpha: float = hp(0.2, "legacy: weight of quality (beam_score)", low=-100.0, high=100.0)
    reward_beta: float = hp(1.0, "legacy: weight of correctness", low=-100.0, high=100.0)
    correctness_mode: str = hp("01", "legacy: correctness as 0/1 or -1/+1", choices=("01", "pm1"))
    hard_weight: float = hp(1.0, "hard_* modes: weight of vqa_correct", low=-100.0, high=100.0)
    soft_weight: float = hp(1.0, "*_soft modes: weight of vqa_acc_score", low=-100.0, high=100.0)
    normalize_method: str = hp("z_score_clamp", "per-query reward normalisation",
                               choices=("z_score", "z_score_clamp", "rank", "none"))
    normalize_clamp: float = hp(3.0, "z_score_clamp: clamp at +-this", low=0.0, low_open=True, high=1e3)


@dataclass
class DataConfig(_Validated):
    """Which queries and candidates train; the split is fixed per sweep for paired tests."""

    train_queries: int = hp(0, "subsample this many training queries (0 = all)", low=0, high=10**8)
    filter_min_beam_score_quantile: float = hp(0.0, "drop candidates whose beam_score is below this "
                                               "per-dataset quantile (0 = keep all)", low=0.0, high=0.99)
    require_positive_query: bool = hp(False, "keep only queries with at least one correct candidate")
    skip_fallback: bool = hp(True, "drop candidates scored by the fallback evaluator")
    val_fraction: float = hp(0.15, "fraction of queries for validation (pruning, selection)",
                             low=0.0, low_open=True, high=0.5)
    test_fraction: float = hp(0.15, "fraction of queries held out for the final test", low=0.0, high=0.5)
    split_seed: int = hp(0, "seed of the query-id split (keep fixed across a sweep)", low=0, high=2**31 - 1)

    def check(self) -> None:
        if self.val_fraction + self.test_fraction >= 0.9:
            raise ConfigError(f"val_fraction: val_fraction + test_fraction = "
                              f"{self.val_fraction + self.test_fraction} leaves too few training queries")


@dataclass
class EvalConfig(_Validated):
    """Per-shot validation accuracy."""

    max_shot: int = hp(4, "evaluate shot_num = 1..max_shot", low=1, high=16)
    eval_mode: str = hp("exact", "simulator: exact expected accuracy or sampled (binomial) correctness",
                        choices=("exact", "sampled"))


@dataclass
class RunConfig(_Validated):
    """Reproducibility and placement."""

    seed: int = hp(0, "seed of training (init, dropout, batches); data split is split_seed",
                   low=0, high=2**31 - 1)
    device: str = hp("cpu", "torch device ('cpu', 'cuda', 'cuda:1')")


STAGES: tuple[type, ...] = (ModelConfig, SFTConfig, RCEConfig, GRPOConfig, OptimConfig,
                            RewardConfig, DataConfig, EvalConfig, RunConfig)


@dataclass
class TrainConfig:
    """Every stage of one training run."""

    model: ModelConfig = field(default_factory=ModelConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    rce: RCEConfig = field(default_factory=RCEConfig)
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    data: DataConfig = field(default_factory=DataConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict[str, Any]:
        """The flat dict ``from_dict`` accepts."""
        out: dict[str, Any] = {}
        for stage in _stage_values(self):
            out.update(dataclasses.asdict(stage))
        return out

    def replace(self, **overrides: Any) -> "TrainConfig":
        return from_dict({**self.to_dict(), **overrides})


def _stage_values(cfg: TrainConfig) -> list[Any]:
    return [getattr(cfg, f.name) for f in fields(cfg)]


# hyperparameter name -> the TrainConfig attribute of its stage
_STAGE_OF: dict[str, str] = {
    f.name: sf.name for sf in fields(TrainConfig) for f in fields(sf.default_factory)  # type: ignore[arg-type]
}


def field_names() -> list[str]:
    """Every hyperparameter name, in stage order."""
    return list(_STAGE_OF)


def field_help(name: str) -> str:
    return _field(name).metadata["help"]


def field_default(name: str) -> Any:
    return _field(name).default


def _field(name: str) -> dataclasses.Field:
    for stage in STAGES:
        for f in fields(stage):
            if f.name == name:
                return f
    raise ConfigError(unknown_key_message(name))


def unknown_key_message(name: str) -> str:
    import difflib

    close = difflib.get_close_matches(name, field_names(), n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    return f"unknown hyperparameter {name!r}{hint}; valid: {', '.join(field_names())}"


def from_dict(values: Mapping[str, Any]) -> TrainConfig:
    """Build every stage from one flat dict; unknown keys are an error."""
    unknown = [k for k in values if k not in _STAGE_OF]
    if unknown:
        raise ConfigError(unknown_key_message(unknown[0]))
    per_stage: dict[str, dict[str, Any]] = {sf.name: {} for sf in fields(TrainConfig)}
    for key, value in values.items():
        per_stage[_STAGE_OF[key]][key] = value
    return TrainConfig(**{sf.name: sf.default_factory(**per_stage[sf.name])  # type: ignore[misc]
                          for sf in fields(TrainConfig)})


def inactive_fields(cfg: TrainConfig) -> dict[str, str]:
    """Hyperparameters that cannot change this run's computation, with the reason.

    A sweep that varies one of these would spend trials on identical runs, so
    the sweep refuses it (the knob-that-did-nothing failure of the old scripts).
    The rules, one per algorithm and stage, are in :mod:`trainer.knobs`.
    """
    from trainer.knobs import inactive_fields as rules

    return rules(cfg)


def post_epochs(cfg: TrainConfig) -> int:
    """Epochs of the post-training stage: ``grpo_epochs``, or 0 for ``algorithm: rce_only``."""
    return 0 if cfg.grpo.algorithm == "rce_only" else cfg.grpo.grpo_epochs


def post_steps_per_batch(cfg: TrainConfig) -> int:
    """Optimiser steps per batch of the post-training stage (online_grpo reuses each sample batch)."""
    return cfg.grpo.online_ppo_steps if cfg.grpo.algorithm == "online_grpo" else 1
