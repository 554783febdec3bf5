"""Search-space distributions: parsing, representatives, draws and their Optuna/Tune forms."""
from __future__ import annotations

import numpy as np
import pytest

from sweep.distributions import Dist, coerce_number, parse_dist
from trainer.errors import UserError


def test_parse_keeps_values_and_coerces_yaml11_exponents_for_numeric_fields():
    assert parse_dist({"loguniform": ["5e-6", 5.0e-5]}, "grpo_lr", "w") == Dist("loguniform", (5e-6, 5e-5))
    assert parse_dist({"grid": [True, False]}, "adaptive_kl", "w").args == (True, False)
    # a string field keeps strings that look like numbers
    assert coerce_number("lr_schedule", "1e5") == "1e5" and coerce_number("kl_beta", "1e-1") == 0.1


@pytest.mark.parametrize("spec,key,fragment", [
    ({"uniform": [0.1]}, "kl_beta", "uniform needs 2 finite numbers"),
    ({"uniform": [0.1, 0.1]}, "kl_beta", "low < high"),
    ({"randint": [1.5, 4]}, "batch_size", "randint needs integer bounds"),
    ({"quniform": [0, 1, 0.3]}, "kl_beta", "low and high multiples of q"),
    ({"quniform": [0, 2.5, 0.5]}, "batch_size", "quniform needs integer low, high and q"),
    ({"uniform": [0, 1]}, "reward_mode", "sweep it with grid or choice"),
    ({"choice": 0.1}, "kl_beta", "choice needs a list"),
    ({"grid": [[0.1], 0.2]}, "kl_beta", "values must be numbers"),
    ({"grid": [1, True]}, "num_layers", None),  # 1 and True are different values: accepted here
])
def test_parse_errors_are_one_line_with_the_fix(spec, key, fragment):
    if fragment is None:
        assert parse_dist(spec, key, "w").args == (1, True)
        return
    with pytest.raises(UserError) as err:
        parse_dist(spec, key, "where")
    assert str(err.value).startswith("where: ") and fragment in str(err.value)
    assert "\n" not in str(err.value)


def test_representatives_cover_ends_and_every_point_of_small_discrete_ranges():
    assert Dist("loguniform", (1e-5, 1e-3)).representatives() == [1e-5, 1e-3]
    assert Dist("randint", (0, 4)).representatives() == [0, 1, 2, 3]
    assert Dist("randint", (0, 1000)).representatives() == [0, 999]
    assert Dist("quniform", (0.0, 0.3, 0.1)).representatives() == [0.0, 0.1, 0.2, 0.3]
    assert Dist("grid", (0, 0.1)).representatives() == [0, 0.1]


@pytest.mark.parametrize("dist", [
    Dist("uniform", (0.2, 0.5)), Dist("loguniform", (1e-5, 1e-3)), Dist("randint", (2, 5)),
    Dist("quniform", (0.0, 0.5, 0.25)), Dist("quniform", (4, 16, 4)), Dist("choice", (1, 4, 8)),
])
def test_draws_stay_in_range_and_reach_across_it(dist):
    rng = np.random.default_rng(0)
    draws = [dist.sample(rng) for _ in range(400)]
    if dist.categorical or dist.kind in ("randint", "quniform"):
        assert set(draws) == set(dist.representatives())
    else:
        low, high = dist.args
        assert all(low <= d <= high for d in draws)
        span = np.log(high / low) if dist.kind == "loguniform" else high - low
        spread = np.log(max(draws) / min(draws)) if dist.kind == "loguniform" else max(draws) - min(draws)
        assert spread > 0.9 * span
    if dist.kind == "loguniform":  # log scale: about half the draws below the geometric mean
        below = np.mean([d < np.sqrt(1e-5 * 1e-3) for d in draws])
        assert 0.4 < below < 0.6
    assert all(type(d) in (int, float, bool, str) for d in draws)


def test_optuna_and_tune_forms():
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    assert Dist("randint", (2, 5)).to_optuna() == IntDistribution(2, 4)  # high is exclusive, like Tune
    assert Dist("quniform", (4, 16, 4)).to_optuna() == IntDistribution(4, 16, step=4)
    assert Dist("quniform", (0.0, 0.5, 0.25)).to_optuna() == FloatDistribution(0.0, 0.5, step=0.25)
    assert Dist("grid", (0, 0.1)).to_optuna() == CategoricalDistribution([0, 0.1])
    assert Dist("grid", (0, 0.1)).to_tune() == {"grid_search": [0, 0.1]}
    assert Dist("loguniform", (1e-5, 1e-3)).to_tune().lower == 1e-5
