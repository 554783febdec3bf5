"""Seeds: training varies with the trial's seed; queries and evaluation outcomes do not.

A paired comparison is only valid when every trial validates on the same
queries and the sampled evaluator gives a prompt the same outcome whichever
trial asks (a greedy VLM does): the split follows ``split_seed`` (fixed per
sweep), sampled evaluation follows ``DataSource.eval_seed`` (the sweep's
``--seed``), and only training (init, dropout, batch order) follows ``seed``.
"""
import dataclasses

import pytest
import torch

from sweep.spaces import load_space
from trainer.config import from_dict
from trainer.loop import train
from trainer.simulator import SMOKE_SPEC
from trainer.task import DataSource

FAST = {"rce_epochs": 0, "grpo_epochs": 1, "batch_size": 16, "grpo_lr": 1e-3, "eval_mode": "sampled"}


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return DataSource.from_simulator(SMOKE_SPEC, tmp_path_factory.mktemp("sim"), eval_seed=0)


def run(source, **hyper):
    cfg = from_dict({**FAST, **hyper})
    task = source.task(cfg)
    torch.manual_seed(123)  # the same SFT start for every run
    sft = task.new_model().state_dict()
    result = train(cfg, task, lambda m, save: None, sft_state=sft)
    return task, result


def test_two_seeds_train_differently_on_the_same_queries(source):
    task0, r0 = run(source, seed=0)
    task1, r1 = run(source, seed=1)
    for name in ("val", "test"):
        assert torch.equal(task0.splits[name].query_ids, task1.splits[name].query_ids)
    assert torch.equal(task0.train.query_ids, task1.train.query_ids)
    # the held-out test split is disjoint from the validation queries used for pruning and selection
    val, test, tr = (set(x.tolist()) for x in (task0.splits["val"].query_ids, task0.splits["test"].query_ids,
                                               task0.train.query_ids))
    assert val and test and not (val & test) and not (tr & (val | test))
    assert r0.evaluation["val"]["query_ids"] == r1.evaluation["val"]["query_ids"]
    # different training streams: the weights after one GRPO epoch differ ...
    assert any(not torch.equal(r0.final_state[k], r1.final_state[k]) for k in r0.final_state)
    # ... and the same seed reproduces them exactly
    _, again = run(source, seed=0)
    assert all(torch.equal(r0.final_state[k], again.final_state[k]) for k in r0.final_state)
    # not vacuous: the split does move with split_seed
    other = source.task(from_dict({**FAST, "split_seed": 1}))
    assert not torch.equal(other.splits["val"].query_ids, task0.splits["val"].query_ids)


def test_sampled_evaluator_gives_a_prompt_the_same_outcome(source):
    task = source.task(from_dict({**FAST, "seed": 0}))
    other_trial = source.task(from_dict({**FAST, "seed": 5})).evaluator  # a different trial seed
    split = task.splits["val"]
    q, seqs = split.query_ids, split.pool[:, [3, 1, 2]]
    out = task.evaluator.score(q, seqs)
    assert set(out.tolist()) == {0.0, 1.0}
    assert torch.equal(out, task.evaluator.score(q, seqs))            # again
    assert torch.equal(out, other_trial.score(q, seqs))               # from another trial's seed
    perm = torch.randperm(len(q), generator=torch.Generator().manual_seed(0))
    assert torch.equal(out[perm], task.evaluator.score(q[perm], seqs[perm]))   # order and batch do not matter
    assert torch.equal(out[:5], task.evaluator.score(q[:5], seqs[:5]))
    # a new eval seed (another sweep's --seed) draws new outcomes
    again = dataclasses.replace(source, eval_seed=1).make_evaluator(from_dict(FAST), None).score(q, seqs)
    assert not torch.equal(again, out)


def test_sampled_outcomes_are_bernoulli_with_the_exact_probability(source):
    task = source.task(from_dict(FAST))
    split = task.splits["val"]
    q = split.query_ids.repeat(40)                          # 40 distinct prompts per query
    seqs = split.pool[:, :3].repeat(40, 1)
    seqs[:, 0] = split.pool[torch.arange(len(q)) % len(split.query_ids), 3 + torch.arange(len(q)) // len(
        split.query_ids) % (split.pool.shape[1] - 3)]
    p = source.bench.p_correct(q, seqs).double()
    draws = torch.stack([dataclasses.replace(source, eval_seed=s).make_evaluator(from_dict(FAST), None)
                         .score(q, seqs) for s in range(50)])          # [50, prompts]
    # the mean outcome over 50 eval seeds x ~1000 prompts estimates mean p with SE < 0.003
    assert abs(float(draws.mean() - p.mean())) < 0.015
    # calibration: prompts with p < 0.3 succeed about as often as p says
    low = p < 0.3
    assert abs(float(draws[:, low].mean() - p[low].mean())) < 0.03


def test_every_configuration_runs_seed_0_to_n_minus_1_with_one_split():
    space = load_space("kl_beta")
    trials = space.preview("grid", seeds=3)
    by_config: dict = {}
    for t in trials:
        resolved = from_dict(space.resolve(t)).to_dict()
        assert resolved["split_seed"] == 0                             # fixed: paired tests see one split
        key = tuple(sorted((k, v) for k, v in t.items() if k != "seed"))
        by_config.setdefault(key, []).append(t["seed"])
    assert len(by_config) == 10 and all(sorted(s) == [0, 1, 2] for s in by_config.values())
    assert {t["seed"] for t in space.preview("grid")} == {0, 1}      # the space's own `seeds: 2`
