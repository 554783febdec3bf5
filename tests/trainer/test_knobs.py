"""Every hyperparameter the framework accepts changes the computation.

The users' scripts passed knobs that nothing read (REWARD_ALPHA outside legacy
mode, USE_RANK_ADVANTAGE); this file is the guard against that. For each
field: a context in which it is active, an alternative value, and a check that
the trained parameters (or, for evaluation/data fields, what is evaluated or
trained on) differ. Data-selection fields are covered in tests/trainer/test_task.py.
"""
import pytest
import torch

from trainer import config as C
from trainer.loop import fit_sft, train
from tests.trainer.conftest import make_tiny_task

# field -> (context overrides, alternative value)
POST_SFT = {
    "rce_epochs": ({}, 1), "rce_lr": ({}, 3e-3), "rce_temp_start": ({}, 0.1), "rce_temp_end": ({}, 0.05),
    "rce_use_raw_reward": ({}, True), "grpo_epochs": ({}, 1), "grpo_lr": ({}, 3e-3), "kl_beta": ({}, 0.01),
    "adaptive_kl": ({}, False), "kl_target_min": ({"kl_target_max": 1000.0}, 999.0),
    "kl_target_max": ({}, 1000.0), "kl_adjust_factor": ({}, 3.0), "clip_epsilon": ({}, 0.05),
    "advantage_clip": ({}, 0.3), "std_floor": ({}, 2.0), "grpo_early_epochs": ({}, 0),
    "grpo_early_top_k": ({}, 2), "grpo_late_top_k": ({}, 3), "old_policy_refresh": ({}, "epoch"), "post_dropout": ({}, False),
    "batch_size": ({}, 2), "weight_decay": ({}, 0.5), "grad_clip": ({}, 0.01),
    "lr_schedule": ({}, "cosine"), "warmup_ratio": ({"lr_schedule": "cosine"}, 0.6),
    "early_stopping_patience": ({"grpo_epochs": 4, "grpo_lr": 1e-9}, 1),
    "reward_mode": ({}, "hard_plus_soft"), "reward_alpha": ({}, 0.9), "reward_beta": ({}, 0.3),
    "correctness_mode": ({}, "pm1"), "hard_weight": ({"reward_mode": "hard_plus_soft"}, 0.2),
    "soft_weight": ({"reward_mode": "hard_plus_soft"}, 3.0), "normalize_method": ({}, "rank"),
    "normalize_clamp": ({}, 0.5), "seed": ({}, 7),
    # the post-training algorithms and their own fields (trainer.algorithms)
    "algorithm": ({}, "raft"), "anchor_lambda": ({"algorithm": "grpo_anchor"}, 1.0),
    "raft_top_k": ({"algorithm": "raft"}, 3), "raft_require_correct": ({"algorithm": "raft"}, False),
    "rwr_temperature": ({"algorithm": "rwr"}, 2.0), "rwr_max_weight": ({"algorithm": "rwr"}, 1.5),
    "dpo_beta": ({"algorithm": "dpo"}, 1.0), "dpo_min_gap": ({"algorithm": "dpo"}, 0.0),
    "online_group_size": ({"algorithm": "online_grpo"}, 3),
    "online_temperature": ({"algorithm": "online_grpo"}, 0.5),
    "online_ppo_steps": ({"algorithm": "online_grpo"}, 2),
}
SFT = {"num_layers": 2, "hidden_dim": 8, "num_heads": 2, "dropout": 0.1, "attn_dropout": 0.4,
       "label_smoothing": 0.2, "sft_epochs": 1, "sft_lr": 1e-2, "sft_batch_size": 3}
# covered elsewhere, with the reason
ELSEWHERE = {
    "train_queries": "test_task.py", "filter_min_beam_score_quantile": "test_task.py",
    "require_positive_query": "test_task.py", "skip_fallback": "test_task.py", "val_fraction": "test_task.py",
    "test_fraction": "test_task.py", "split_seed": "test_task.py",
    "max_shot": "test_evaluation_fields below", "eval_mode": "test_evaluation_fields below",
    "device": "placement only: the same computation on another device (no GPU on CI)",
}


def test_every_field_is_covered():
    assert set(POST_SFT) | set(SFT) | set(ELSEWHERE) == set(C.field_names())


@pytest.fixture(scope="module")
def sft_state():
    torch.set_num_threads(1)
    cfg, task = make_tiny_task()
    return fit_sft(cfg, task, log=lambda s: None)


def _final(cfg, task, sft):
    reports = []
    result = train(cfg, task, lambda m, s: reports.append(m), sft_state=sft)
    return result.final_state, len(reports)


@pytest.mark.parametrize("name", sorted(POST_SFT))
def test_post_sft_field_changes_trained_parameters(name, sft_state):
    context, alternative = POST_SFT[name]
    cfg_a, task = make_tiny_task(**context)
    cfg_b = cfg_a.replace(**{name: alternative})
    assert getattr(cfg_a, "to_dict")()[name] != alternative
    assert name not in C.inactive_fields(cfg_a) and name not in C.inactive_fields(cfg_b)
    state_a, n_a = _final(cfg_a, task, sft_state)
    state_b, n_b = _final(cfg_b, task, sft_state)
    changed = n_a != n_b or any(not torch.equal(state_a[k], state_b[k]) for k in state_a)
    assert changed, f"{name}={alternative} trained exactly the same parameters"


@pytest.mark.parametrize("name", sorted(SFT))
def test_sft_and_model_fields_change_the_sft_checkpoint(name):
    cfg_a, task_a = make_tiny_task()
    cfg_b, task_b = make_tiny_task(**{name: SFT[name]})
    a = fit_sft(cfg_a, task_a, log=lambda s: None)
    b = fit_sft(cfg_b, task_b, log=lambda s: None)
    assert a.keys() != b.keys() or any(a[k].shape != b[k].shape or not torch.equal(a[k], b[k]) for k in a)


def test_evaluation_fields(sft_state):
    from trainer.state import evaluate_split

    cfg, task = make_tiny_task()
    model = task.new_model()
    model.load_state_dict(sft_state)
    assert set(evaluate_split(model, task, "val", 4).correct) == {1, 2, 3, 4}
    assert set(evaluate_split(model, task, "val", 2).correct) == {1, 2}
    # eval_mode switches the simulator evaluator between exact and sampled: see test_evaluate.py
