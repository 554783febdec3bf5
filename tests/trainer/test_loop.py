import math

import pytest
import torch

from trainer.loop import METRIC_KEYS, fit_sft, train
from trainer.state import EVALUATION_FILE, STATE_FILE


def run(cfg, task, sft, **kw):
    reports = []
    result = train(cfg, task, lambda m, save: reports.append(m), sft_state=sft, **kw)
    return result, reports


@pytest.fixture
def setup(tiny):
    torch.set_num_threads(1)
    cfg, task = tiny()
    return cfg, task, fit_sft(cfg, task, log=lambda s: None)


def test_sft_is_deterministic_and_learns(tiny):
    cfg, task = tiny(sft_epochs=6)
    a, b = fit_sft(cfg, task, log=lambda s: None), fit_sft(cfg, task, log=lambda s: None)
    assert all(torch.equal(a[k], b[k]) for k in a)
    fresh = task.new_model().state_dict()
    assert any(not torch.equal(a[k], fresh[k]) for k in a)


def test_reports_every_key_every_epoch_and_grpo_epoch_counts_after_warmup(setup):
    cfg, task, sft = setup
    result, reports = run(cfg, task, sft)
    assert len(reports) == cfg.rce.rce_epochs + cfg.grpo.grpo_epochs
    for r in reports:
        assert set(METRIC_KEYS) <= set(r)
    assert [r["phase"] for r in reports] == ["rce", "rce", "grpo", "grpo"]
    assert [r["grpo_epoch"] for r in reports] == [0, 0, 1, 2]
    assert [r["train_finished"] for r in reports] == [False, False, False, True]
    assert reports[-1]["stop_reason"] == "completed"
    assert math.isnan(reports[0]["kl"]) and not math.isnan(reports[-1]["kl"])
    # the best checkpoint is chosen among GRPO epochs only
    assert result.best_epoch in (3, 4)
    assert set(result.evaluation) == {"best_epoch", "metric", "val", "test"}
    assert len(result.evaluation["val"]["correct"]["4"]) == 4


def test_shared_rce_state_skips_the_warmup(setup):
    cfg, task, sft = setup
    warm = train(cfg.replace(grpo_epochs=0), task, lambda m, s: None, sft_state=sft).final_state
    _, reports = run(cfg, task, sft, rce_state=warm)
    assert [r["phase"] for r in reports] == ["grpo", "grpo"]


@pytest.mark.parametrize("overrides", [
    {}, {"algorithm": "dpo"}, {"algorithm": "rwr"},
    # online: the resumed run must draw the same samples (the batch generator is checkpointed)
    {"algorithm": "online_grpo", "online_ppo_steps": 2, "lr_schedule": "cosine"},
], ids=["grpo", "dpo", "rwr", "online_grpo"])
def test_resume_continues_bit_for_bit(setup, tmp_path, overrides):
    cfg, task, sft = setup
    cfg = cfg.replace(**overrides)
    full, full_reports = run(cfg, task, sft)

    class Stop(Exception):
        pass

    seen = []

    def report(metrics, save):
        seen.append(metrics)
        save(tmp_path)
        if len(seen) == 3:
            raise Stop

    with pytest.raises(Stop):
        train(cfg, task, report, sft_state=sft)
    assert (tmp_path / STATE_FILE).exists() and (tmp_path / EVALUATION_FILE).exists()
    resumed, rest = run(cfg, task, sft, resume_dir=str(tmp_path))
    assert len(rest) == 1
    assert rest[-1]["acc_mean"] == full_reports[-1]["acc_mean"]
    assert rest[-1]["grpo_loss"] == pytest.approx(full_reports[-1]["grpo_loss"], rel=1e-6)
    assert all(torch.equal(resumed.final_state[k], full.final_state[k]) for k in full.final_state)


@pytest.mark.parametrize("algorithm", ["grpo", "raft", "online_grpo"])
def test_non_finite_loss_stops_as_diverged(setup, algorithm):
    cfg, task, sft = setup
    result, reports = run(cfg.replace(algorithm=algorithm), task, sft, loss_hook=lambda loss: loss * float("nan"))
    assert result.stop_reason.startswith("diverged: non-finite grpo_loss")
    assert reports[-1]["train_finished"] is True


def test_early_stopping_stops_after_patience(tiny):
    cfg, task = tiny(grpo_epochs=8, early_stopping_patience=1, grpo_lr=1e-9)
    sft = fit_sft(cfg, task, log=lambda s: None)
    result, reports = run(cfg, task, sft)
    # a negligible learning rate cannot improve on the first GRPO epoch's accuracy
    assert result.stop_reason.startswith("early_stopped")
    assert reports[-1]["grpo_epoch"] == 2


def test_rce_only_run_selects_among_rce_epochs(tiny):
    cfg, task = tiny(grpo_epochs=0)
    sft = fit_sft(cfg, task, log=lambda s: None)
    result, reports = run(cfg, task, sft)
    assert [r["phase"] for r in reports] == ["rce", "rce"] and result.best_epoch in (1, 2)


def test_nothing_to_train_evaluates_the_start_once(tiny):
    cfg, task = tiny(grpo_epochs=0, rce_epochs=0)
    sft = fit_sft(cfg, task, log=lambda s: None)
    result, reports = run(cfg, task, sft)
    assert len(reports) == 1 and reports[0]["train_finished"] and not math.isnan(result.best_acc_mean)


def test_ranking_metrics_on_a_hand_made_group():
    from trainer.data.groups import QueryGroups
    from trainer.state import ranking_metrics

    # one query, 3 recorded candidates (the third padded): acc 1.0 and 0.0
    groups = QueryGroups(query_ids=torch.tensor([0]), pool=torch.zeros(1, 2, dtype=torch.long),
                         pool_mask=torch.ones(1, 2, dtype=torch.bool), seqs=torch.zeros(1, 3, 2, dtype=torch.long),
                         seq_mask=torch.tensor([[True, True, False]]), correct=torch.tensor([[1.0, 0.0, 0.0]]),
                         acc=torch.tensor([[1.0, 0.0, 0.0]]), beam_score=torch.zeros(1, 3))
    # logp ln(3) vs 0: softmax weights 3/4, 1/4 -> expected reward 0.75; best ranked first -> NDCG 1
    out = ranking_metrics(torch.tensor([[math.log(3.0), 0.0, 5.0]]), groups)
    assert out["expected_reward"] == pytest.approx(0.75) and out["ndcg"] == pytest.approx(1.0)
    # reversed ranking: DCG = 1/log2(3), ideal 1
    out = ranking_metrics(torch.tensor([[0.0, math.log(3.0), 5.0]]), groups)
    assert out["expected_reward"] == pytest.approx(0.25) and out["ndcg"] == pytest.approx(1 / math.log2(3))
