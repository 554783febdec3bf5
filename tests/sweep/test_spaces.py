"""Search spaces: every shipped study loads and expands as documented; bad files fail in one line."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from sweep.spaces import (SAMPLE_KEY, SPACES_DIR, list_spaces, load_space, make_optuna_search, parse_set,
                          shares_sft, shares_warmup)
from trainer.config import from_dict
from trainer.errors import UserError

BAD = Path(__file__).parent / "fixtures" / "bad_spaces"

# Trials under the default `--search grid`: configurations x nuisance draws x seeds.
EXPECTED_TRIALS = {
    "algorithm": 8 * 3,
    "kl_beta": 5 * 2 * 2,
    "lr": 4 * 3 * 2,
    "reward_weights": 4 * 2 * 3,
    "epochs": 4 * 5 * 2,
    "batch_size": 3 * 4 * 2,
    "curriculum": 3 * 3 * 3,
    "data_filter": 3 * 2 * 3,
    "data_size": 3 * 3,
    "doc_presets": 6 * 3,
    "full": 5 * 10 * 1,
}


def write(tmp_path: Path, text: str, name: str = "mine.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def config_key(cfg: dict) -> tuple:
    return tuple(sorted(cfg.items()))


# ---------------------------------------------------------------------------
# shipped spaces


def test_every_required_study_is_shipped_with_a_description():
    listed = dict(list_spaces())
    assert set(listed) == set(EXPECTED_TRIALS)
    for name, description in listed.items():
        assert len(description) > 40, name
        # each file opens with the comment block that says what it encodes
        assert (SPACES_DIR / f"{name}.yaml").read_text().startswith("# Tuning document"), name


@pytest.mark.parametrize("name", sorted(EXPECTED_TRIALS))
def test_shipped_space_previews_the_expected_trials_and_every_one_builds_a_config(name):
    space = load_space(name)
    trials = space.preview()
    assert len(trials) == EXPECTED_TRIALS[name] == space.trial_count()
    assert len({config_key(t) for t in trials}) == len(trials)  # no trial runs twice
    for trial in trials:
        cfg = from_dict(space.resolve(trial))
        assert cfg.run.seed == trial["seed"]
        for key in space.scientific:
            assert cfg.to_dict()[key] == trial[key]


def test_kl_beta_is_a_plain_grid_of_ten_configurations_with_two_seeds():
    space = load_space("kl_beta")
    assert not space.nuisance  # the default run must stay small: nothing sampled
    trials = space.preview()
    configs = {(t["kl_beta"], t["adaptive_kl"]) for t in trials}
    assert configs == {(b, a) for b in (0, 0.05, 0.1, 0.2, 0.3) for a in (True, False)}
    assert sorted({t["seed"] for t in trials}) == [0, 1]
    assert all(t["rce_epochs"] == 25 and t["grpo_epochs"] == 25 for t in trials)


def test_to_tune_for_kl_beta_is_grid_searches_plus_constants():
    param_space, num_samples = load_space("kl_beta").to_tune("grid")
    assert num_samples == 1
    assert param_space["kl_beta"] == {"grid_search": [0, 0.05, 0.1, 0.2, 0.3]}
    assert param_space["adaptive_kl"] == {"grid_search": [True, False]}
    assert param_space["seed"] == {"grid_search": [0, 1]}
    assert param_space["rce_epochs"] == 25
    assert SAMPLE_KEY not in param_space


def test_to_tune_seeds_override_and_presets_become_a_grid():
    param_space, _ = load_space("doc_presets").to_tune("grid", seeds=4)
    assert param_space["seed"] == {"grid_search": [0, 1, 2, 3]}
    assert param_space["preset"]["grid_search"] == ["original", "optimized", "recommended", "plan1", "plan2",
                                                    "plan4"]


@pytest.mark.parametrize("name,search", [("batch_size", "grid"), ("full", "random"), ("full", "grid")])
def test_tune_expands_param_space_into_exactly_the_previewed_trials(name, search):
    from ray.tune.search.variant_generator import generate_variants

    space = load_space(name)
    param_space, num_samples = space.to_tune(search, num_samples=3, rng_seed=7)
    tune_trials = [cfg for _, cfg in generate_variants(param_space)] * num_samples
    previewed = space.preview(search, num_samples=3, rng_seed=7)
    assert sorted(map(config_key, tune_trials)) == sorted(map(config_key, previewed))


def test_seeds_repeat_a_configuration_and_nuisance_draws_are_shared_across_scientific_values():
    trials = load_space("batch_size").preview(seeds=3, rng_seed=1)
    by_draw: dict = {}
    for t in trials:
        by_draw.setdefault(t[SAMPLE_KEY], set()).add((t["rce_lr"], t["grpo_lr"]))
    assert len(by_draw) == 4
    assert all(len(values) == 1 for values in by_draw.values())  # same draw for every seed and batch size
    lrs = [next(iter(v))[0] for v in by_draw.values()]
    assert all(1e-5 <= lr <= 5e-4 for lr in lrs) and len(set(lrs)) == 4


def test_draws_are_reproducible_and_depend_on_the_rng_seed():
    space = load_space("batch_size")
    assert space.preview(rng_seed=3) == space.preview(rng_seed=3)
    assert space.preview(rng_seed=3) != space.preview(rng_seed=4)


def test_random_search_draws_scientific_choices_instead_of_enumerating_them():
    space = load_space("full")
    assert space.trial_count("grid") == 50 and space.trial_count("random") == 10
    kl = {t["kl_beta"] for t in space.preview("random", num_samples=40)}
    assert kl <= {0, 0.05, 0.1, 0.2, 0.3} and len(kl) >= 3


def test_num_samples_is_refused_when_nothing_is_sampled():
    with pytest.raises(UserError, match="--num-samples: .*kl_beta.yaml samples nothing"):
        load_space("kl_beta").to_tune("grid", num_samples=4)
    with pytest.raises(UserError, match="--seeds"):
        load_space("kl_beta").preview(seeds=0)


def test_optuna_search_objects_construct_for_both_samplers():
    from optuna.distributions import CategoricalDistribution, FloatDistribution
    from ray.tune.search import Repeater
    from ray.tune.search.optuna import OptunaSearch

    space = load_space("full")
    kwargs = space.to_optuna("tpe", seed=0)
    assert isinstance(kwargs["space"]["kl_beta"], CategoricalDistribution)
    assert kwargs["space"]["grpo_lr"] == FloatDistribution(5e-6, 5e-5, log=True)
    assert isinstance(make_optuna_search(space, "tpe", "acc_mean", 0), OptunaSearch)
    assert isinstance(make_optuna_search(space, "qmc", "acc_mean", 0), OptunaSearch)
    repeated = make_optuna_search(load_space("kl_beta"), "tpe", "acc_mean", 0)
    assert isinstance(repeated, Repeater) and repeated.repeat == 2
    param_space, num_samples = load_space("kl_beta").to_tune("optuna-tpe")
    assert num_samples == 20 and "kl_beta" not in param_space and param_space["rce_epochs"] == 25


def test_optuna_preview_is_seeded_and_repeats_each_suggestion_per_seed():
    space = load_space("batch_size")
    first = space.preview("optuna-qmc", num_samples=2, seeds=2, rng_seed=5)
    assert first == space.preview("optuna-qmc", num_samples=2, seeds=2, rng_seed=5)
    assert len(first) == 3 * 2 * 2
    assert first[0] == {**first[1], "seed": 0} and first[1]["seed"] == 1
    for trial in first:
        from_dict(space.resolve(trial))


def test_resolve_merges_fixed_preset_and_trial_values_and_maps_the_repeater_index():
    space = load_space("doc_presets")
    plan1 = space.resolve({"preset": "plan1", "__trial_index__": 2})
    assert plan1["seed"] == 2 and plan1["kl_beta"] == 0.05 and plan1["early_stopping_patience"] == 3
    assert plan1["reward_mode"] == "legacy"
    with pytest.raises(UserError, match="preset 'plan9' is not one of original"):
        space.resolve({"preset": "plan9"})
    sampled = load_space("batch_size").resolve({"batch_size": 4, SAMPLE_KEY: 0, "grpo_lr": 1e-5, "seed": 1})
    assert SAMPLE_KEY not in sampled and sampled["grpo_lr"] == 1e-5


def test_original_config_is_the_documents_original_preset():
    original = load_space("doc_presets").original_config()
    cfg = from_dict(original)
    assert (cfg.rce.rce_epochs, cfg.grpo.grpo_epochs) == (25, 25)
    assert (cfg.rce.rce_lr, cfg.grpo.grpo_lr) == (5e-4, 5e-6)
    assert (cfg.grpo.kl_beta, cfg.reward.reward_alpha, cfg.reward.reward_beta, cfg.optim.batch_size) == (
        0.3, 0.2, 1.0, 1)
    # without presets, the original is the config defaults (the document's current config) for the swept keys
    assert load_space("kl_beta").original_config() == {"rce_epochs": 25, "grpo_epochs": 25, "kl_beta": 0.3,
                                                        "adaptive_kl": True}
    recommended = load_space("doc_presets").resolve({"preset": "recommended"})
    assert (recommended["rce_lr"], recommended["grpo_lr"], recommended["kl_beta"]) == (1e-5, 1e-5, 0.1)
    assert load_space("doc_presets").resolve({"preset": "plan4"})["grpo_epochs"] == 0


def test_scientific_and_swept_keys():
    assert load_space("kl_beta").scientific_keys() == ["kl_beta", "adaptive_kl"]
    assert load_space("batch_size").swept_keys() == ["batch_size", "rce_lr", "grpo_lr"]
    assert load_space("doc_presets").scientific_keys() == ["preset"]


def test_varies_sees_sections_presets_and_seeds():
    presets = load_space("doc_presets")
    assert presets.varies("rce_epochs") and presets.varies("kl_beta") and presets.varies("preset")
    assert not presets.varies("reward_mode") and not presets.varies("hidden_dim")
    kl = load_space("kl_beta")
    assert kl.varies("kl_beta") and kl.varies("seed") and not kl.varies("rce_lr")


def test_shares_warmup_only_when_nothing_the_warmup_reads_varies(tmp_path):
    assert shares_warmup(load_space("kl_beta")) and shares_warmup(load_space("curriculum"))
    for name in ("lr", "epochs", "reward_weights", "batch_size", "data_filter", "data_size", "doc_presets",
                 "full"):
        assert not shares_warmup(load_space(name)), name
    # reward weights feed RCE, but not when no trial runs RCE
    path = write(tmp_path, "description: reward without RCE\nscientific:\n"
                           "  reward_alpha: {grid: [0.2, 0.5]}\nfixed:\n  rce_epochs: 0\n")
    assert shares_warmup(load_space(path))
    assert shares_sft(load_space("lr")) and not shares_sft(load_space("data_size"))


def test_smoke_cuts_a_study_to_two_configurations():
    for name in EXPECTED_TRIALS:
        small = load_space(name).smoke()
        assert small.trial_count(seeds=1) <= 2, name
        for trial in small.preview(seeds=1):
            from_dict(small.resolve(trial))


def test_describe_and_pbt_mutations():
    record = load_space("batch_size").describe()
    assert json.loads(json.dumps(record))["nuisance"]["grpo_lr"] == "loguniform: [5e-06, 5e-05]"
    assert set(load_space("batch_size").pbt_mutations()) == {"rce_lr", "grpo_lr"}
    assert load_space("kl_beta").pbt_mutations() == {}


# ---------------------------------------------------------------------------
# loading: names, paths, overrides, --set


def test_unknown_space_name_lists_the_valid_ones():
    with pytest.raises(UserError) as err:
        load_space("kl_bta")
    msg = str(err.value)
    assert msg.startswith("search_spaces/kl_bta.yaml: unknown search space 'kl_bta' (did you mean kl_beta?)")
    assert "valid: algorithm, batch_size, curriculum" in msg and "\n" not in msg


def test_user_yaml_by_path_and_yaml11_exponents(tmp_path):
    path = write(tmp_path, "description: mine\nseeds: 1\nscientific:\n  kl_beta: {grid: [0.1, 0.2]}\n"
                           "nuisance:\n  grpo_lr: {loguniform: [5e-6, 5e-5]}\nfixed:\n  rce_lr: 1e-4\n")
    space = load_space(str(path))
    assert space.name == "mine" and space.label == str(path)
    assert space.fixed["rce_lr"] == 1e-4 and space.nuisance["grpo_lr"].args == (5e-6, 5e-5)
    with pytest.raises(UserError, match="no such search-space file"):
        load_space(str(tmp_path / "missing.yaml"))


def test_overrides_fix_a_swept_key_and_are_validated():
    space = load_space("kl_beta", {"kl_beta": 0.1})
    assert "kl_beta" not in space.scientific and space.fixed["kl_beta"] == 0.1
    assert space.trial_count() == 2 * 2
    with pytest.raises(UserError, match=r"^search_spaces/kl_beta.yaml: --set grpo_lr: must be > 0.0"):
        load_space("kl_beta", {"grpo_lr": -1.0})
    # an override can make a swept key inert: refused, naming both
    with pytest.raises(UserError, match=r"scientific.rce_lr: sweeping rce_lr .* when rce_epochs=0"):
        load_space("lr", {"rce_epochs": 0})


def test_parse_set_types_values_like_yaml():
    assert parse_set(["grpo_lr=1e-5", "adaptive_kl=false", "rce_epochs=3", "lr_schedule=cosine",
                      "kl_beta=0.1"]) == {"grpo_lr": 1e-5, "adaptive_kl": False, "rce_epochs": 3,
                                          "lr_schedule": "cosine", "kl_beta": 0.1}
    assert isinstance(parse_set(["grpo_lr=1e-5"])["grpo_lr"], float)
    assert parse_set([]) == {}


@pytest.mark.parametrize("item,expected", [
    ("kl_bta=0.1", "--set kl_bta: unknown hyperparameter 'kl_bta' (did you mean kl_beta"),
    ("kl_beta", "--set kl_beta: expected key=value"),
    ("kl_beta=[0.1,", "--set kl_beta: cannot parse"),
    ("kl_beta=[0.1, 0.2]", "--set kl_beta: expected one value"),
    ("seed=3", "--set seed: seeds are not swept"),
])
def test_parse_set_errors_name_the_flag(item, expected):
    with pytest.raises(UserError) as err:
        parse_set([item])
    assert str(err.value).startswith(expected) and "\n" not in str(err.value)


def test_parse_set_refuses_a_key_given_twice():
    with pytest.raises(UserError, match="--set kl_beta: given twice"):
        parse_set(["kl_beta=0.1", "kl_beta=0.2"])


def test_inactive_dimension_is_allowed_when_another_swept_value_activates_it(tmp_path):
    path = write(tmp_path, "description: schedule and its warm-up\nscientific:\n"
                           "  lr_schedule: {grid: [constant, cosine]}\nnuisance:\n"
                           "  warmup_ratio: {uniform: [0.0, 0.2]}\n")
    assert load_space(path).trial_count(seeds=1) == 2


# ---------------------------------------------------------------------------
# the corpus of malformed spaces: one expected fragment per file

BAD_EXPECTED = {
    "unknown_key.yaml": "scientific.kl_bta: unknown hyperparameter 'kl_bta' (did you mean kl_beta",
    "negative_lr.yaml": "nuisance.grpo_lr: loguniform needs low > 0",
    "zero_lr_fixed.yaml": "fixed.rce_lr: must be > 0.0, got 0",
    "string_for_float.yaml": "scientific.kl_beta: expected a number, got 'high'",
    "empty_grid.yaml": "scientific.kl_beta: empty grid",
    "loguniform_low_ge_high.yaml": "nuisance.grpo_lr: loguniform needs low < high",
    "unknown_distribution.yaml": "scientific.kl_beta: unknown distribution 'normal'; valid: grid, choice",
    "key_in_two_sections.yaml": "fixed.kl_beta: also in scientific",
    "unknown_top_level.yaml": "nuisanse: unknown top-level key (did you mean nuisance?); valid: description",
    "missing_description.yaml": "description: missing or empty",
    "missing_scientific.yaml": "scientific: missing or empty",
    "seeds_zero.yaml": "seeds: must be an integer >= 1, got 0",
    "yaml_syntax.yaml": "YAML syntax error at line 3",
    "not_mapping.yaml": "expected a mapping with keys description, seeds",
    "inactive_reward_alpha.yaml": "scientific.reward_alpha: sweeping reward_alpha cannot change the "
                                  "computation when reward_mode=hard_plus_soft",
    "inactive_warmup_ratio.yaml": "nuisance.warmup_ratio: sweeping warmup_ratio cannot change the "
                                  "computation when lr_schedule=constant",
    "int_field_uniform.yaml": "scientific.batch_size: batch_size is an integer; use randint",
    "two_distributions.yaml": "scientific.kl_beta: expected one distribution",
    "preset_conflict.yaml": "presets.original.kl_beta: also swept in scientific.kl_beta",
    "seed_as_key.yaml": "fixed.seed: seeds are not swept as a hyperparameter",
    "top_k_one_inside_range.yaml": "scientific.grpo_late_top_k: a group of 1 has zero advantage",
    "heads_do_not_divide.yaml": "scientific.num_heads: 8 must divide hidden_dim=100 (when combined",
    "bad_choice_value.yaml": "scientific.reward_mode: 'bogus' is not one of legacy, hard_plus_soft",
    "duplicate_key.yaml": "scientific.kl_beta: appears twice",
    "quniform_zero_step.yaml": "scientific.kl_beta: quniform needs q > 0",
    "preset_bad_value.yaml": "presets.broken.grpo_lr: must be > 0.0",
    "fixed_list_value.yaml": "fixed.kl_beta: expected one value",
    "bool_as_number.yaml": "scientific.adaptive_kl: expected true/false, got 0",
    "grid_repeats_value.yaml": "scientific.kl_beta: grid lists 0.1 twice",
    "num_samples_text.yaml": "num_samples: must be an integer >= 1, got 'many'",
}


def test_corpus_and_expectations_cover_each_other():
    assert {p.name for p in BAD.glob("*.yaml")} == set(BAD_EXPECTED)
    assert len(BAD_EXPECTED) >= 14


@pytest.mark.parametrize("name", sorted(BAD_EXPECTED))
def test_malformed_space_fails_with_one_line_naming_file_and_key(name):
    path = BAD / name
    with pytest.raises(UserError) as err:
        load_space(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}: "), msg
    assert BAD_EXPECTED[name] in msg, msg
    assert "\n" not in msg


# ---------------------------------------------------------------------------
# end to end through Ray Tune (a trainable that only resolves its config)


def _resolving_trainable(config, space=None):
    from ray import tune

    resolved = space.resolve(config)
    from_dict(resolved)
    tune.report({"acc_mean": -abs(resolved.get("kl_beta", 0.3) - 0.1), "seed_used": resolved["seed"]})


@pytest.mark.slow
def test_tuner_runs_the_previewed_grid_and_repeats_optuna_suggestions_per_seed(tmp_path):
    import ray
    from ray import tune

    from sweep.tuner import make_search  # the real searcher wiring

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        space = load_space("batch_size")
        param_space, num_samples = space.to_tune("grid", num_samples=2, seeds=2, rng_seed=3)
        results = tune.Tuner(tune.with_parameters(_resolving_trainable, space=space), param_space=param_space,
                             tune_config=tune.TuneConfig(num_samples=num_samples),
                             run_config=tune.RunConfig(storage_path=str(tmp_path), name="grid",
                                                       verbose=0)).fit()
        ran = sorted(config_key(r.config) for r in results)
        assert ran == sorted(map(config_key, space.preview("grid", num_samples=2, seeds=2, rng_seed=3)))

        space = load_space("kl_beta")
        param_space, num_samples = space.to_tune("optuna-tpe", num_samples=None, seeds=2)
        search = make_search(space, "optuna-tpe", "acc_mean", 0, 1, 2)
        results = tune.Tuner(tune.with_parameters(_resolving_trainable, space=space), param_space=param_space,
                             tune_config=tune.TuneConfig(metric="acc_mean", mode="max", search_alg=search,
                                                         num_samples=num_samples),
                             run_config=tune.RunConfig(storage_path=str(tmp_path), name="tpe",
                                                       verbose=0)).fit()
        assert len(results) == 20 and not results.errors
        # Repeater runs every suggestion once per seed: the suggestions seen with seed 0 and seed 1 agree
        per_seed: dict = {0: [], 1: []}
        for r in results:
            assert r.metrics["seed_used"] == r.config["__trial_index__"]
            per_seed[r.metrics["seed_used"]].append((r.config["kl_beta"], r.config["adaptive_kl"]))
        assert len(per_seed[0]) == 10 and sorted(per_seed[0]) == sorted(per_seed[1])
    finally:
        ray.shutdown()
