import dataclasses

import pytest

from trainer import config as C
from trainer.errors import ConfigError, UserError

REQUIRED = (
    "rce_epochs grpo_epochs batch_size rce_lr grpo_lr kl_beta adaptive_kl kl_target_min kl_target_max "
    "kl_adjust_factor reward_mode reward_alpha reward_beta correctness_mode clip_epsilon advantage_clip "
    "std_floor normalize_method rce_temp_start rce_temp_end grpo_early_epochs grpo_early_top_k "
    "grpo_late_top_k warmup_ratio lr_schedule grad_clip weight_decay label_smoothing dropout num_layers "
    "hidden_dim old_policy_refresh early_stopping_patience train_queries filter_min_beam_score_quantile "
    "require_positive_query seed"
).split()


def test_every_required_hyperparameter_exists_once():
    names = C.field_names()
    assert len(names) == len(set(names)), "a name must belong to exactly one stage"
    assert set(REQUIRED) <= set(names)


def test_defaults_are_the_tuning_documents_current_config():
    cfg = C.TrainConfig()
    assert (cfg.rce.rce_epochs, cfg.grpo.grpo_epochs, cfg.optim.batch_size) == (25, 25, 1)
    assert (cfg.rce.rce_lr, cfg.grpo.grpo_lr, cfg.grpo.kl_beta) == (5e-4, 5e-6, 0.3)
    assert (cfg.reward.reward_alpha, cfg.reward.reward_beta) == (0.2, 1.0)
    # Lever-Plus defaults where the document is silent
    assert (cfg.grpo.clip_epsilon, cfg.grpo.kl_target_min, cfg.grpo.kl_target_max) == (0.2, 0.01, 0.1)
    assert (cfg.rce.rce_temp_start, cfg.rce.rce_temp_end, cfg.model.num_layers) == (2.0, 0.5, 1)
    # the post-training stage is the document's GRPO unless a study chooses another algorithm
    assert cfg.grpo.algorithm == "grpo" and C.post_epochs(cfg) == 25
    assert C.post_epochs(cfg.replace(algorithm="rce_only")) == 0


def test_every_field_has_help():
    for stage in C.STAGES:
        for f in dataclasses.fields(stage):
            assert len(f.metadata["help"]) > 10, f.name


def test_from_dict_round_trips_and_casts():
    cfg = C.from_dict({"kl_beta": 0.1, "rce_epochs": 3.0, "adaptive_kl": False})
    assert cfg.grpo.kl_beta == 0.1 and cfg.rce.rce_epochs == 3 and isinstance(cfg.rce.rce_epochs, int)
    assert C.from_dict(cfg.to_dict()) == cfg
    assert cfg.replace(kl_beta=0.2).grpo.kl_beta == 0.2


@pytest.mark.parametrize("values, fragment", [
    ({"kl_bta": 0.1}, "did you mean kl_beta"),
    ({"rce_lr": 0}, "rce_lr: must be > 0.0"),
    ({"grpo_lr": -1e-5}, "grpo_lr: must be > 0.0"),
    ({"rce_epochs": 2.5}, "rce_epochs: expected an integer"),
    ({"adaptive_kl": "yes"}, "adaptive_kl: expected true/false"),
    ({"kl_beta": "0.1"}, "kl_beta: expected a number"),
    ({"reward_mode": "hybrid"}, "reward_mode: 'hybrid' is not one of legacy"),
    ({"kl_target_min": 0.5, "kl_target_max": 0.1}, "kl_target_min"),
    ({"grpo_late_top_k": 1}, "group of 1"),
    ({"hidden_dim": 10, "num_heads": 3}, "num_heads"),
    ({"val_fraction": 0.5, "test_fraction": 0.45}, "val_fraction"),
    ({"kl_beta": float("nan")}, "finite"),
])
def test_bad_values_name_the_field(values, fragment):
    with pytest.raises(ConfigError) as err:
        C.from_dict(values)
    assert fragment in str(err.value)
    assert isinstance(err.value, UserError) and "\n" not in str(err.value)


def test_unknown_key_lists_valid_names():
    with pytest.raises(ConfigError, match="valid: num_layers"):
        C.from_dict({"nonsense": 1})


def test_inactive_fields_name_the_reason():
    cfg = C.from_dict({"reward_mode": "hard_plus_soft", "adaptive_kl": False, "grpo_epochs": 5})
    inactive = C.inactive_fields(cfg)
    assert inactive["reward_alpha"] == "reward_mode=hard_plus_soft"
    assert inactive["kl_target_max"] == "adaptive_kl=false"
    assert inactive["warmup_ratio"] == "lr_schedule=constant"
    assert "kl_beta" not in inactive and "hard_weight" not in inactive
    assert "kl_beta" in C.inactive_fields(C.from_dict({"grpo_epochs": 0}))
