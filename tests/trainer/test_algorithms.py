"""The post-training algorithms: registry, which fields each reads, the online sampler, and that each learns."""
import math

import pytest
import torch

from tests.trainer.conftest import make_tiny_task
from tests.trainer.test_knobs import POST_SFT
from trainer import config as C
from trainer import losses
from trainer.algorithms import ALGORITHMS, StageData, _online_prepare
from trainer.batching import make_batch
from trainer.errors import ConfigError
from trainer.evaluate import LookupEvaluator
from trainer.knobs import ALGORITHM_FIELDS
from trainer.loop import METRIC_KEYS, fit_sft, train
from trainer.model import PointerSelector
from trainer.online import sample_sequences, score_samples
from trainer.state import RunState, ranking_metrics, reference_logp


@pytest.fixture(scope="module")
def sft():
    torch.set_num_threads(1)
    cfg, task = make_tiny_task()
    return fit_sft(cfg, task, log=lambda s: None)


def run(cfg, task, sft_state, **kw):
    reports = []
    result = train(cfg, task, lambda m, save: reports.append(m), sft_state=sft_state, **kw)
    return result, reports


# ---------------------------------------------------------------------------- registry and config


def test_every_configurable_algorithm_has_a_step_and_a_field_list():
    assert set(ALGORITHMS) | {"rce_only"} == set(C.ALGORITHMS)
    assert set(ALGORITHM_FIELDS) == set(C.ALGORITHMS)
    grpo_fields = set(C.GRPOConfig.__dataclass_fields__)
    for name, own in ALGORITHM_FIELDS.items():
        assert set(own) <= grpo_fields, name
    assert C.TrainConfig().grpo.algorithm == "grpo"


@pytest.mark.parametrize("values, fragment", [
    ({"algorithm": "ppo"}, "algorithm: 'ppo' is not one of grpo"),
    ({"raft_top_k": 0}, "raft_top_k: must be >= 1"),
    ({"rwr_temperature": 0.0}, "rwr_temperature: must be > 0.0"),
    ({"rwr_max_weight": 0.5}, "rwr_max_weight: must be >= 1.0"),
    ({"dpo_beta": 0}, "dpo_beta: must be > 0.0"),
    ({"dpo_min_gap": -1.0}, "dpo_min_gap: must be >= 0.0"),
    ({"anchor_lambda": 0}, "anchor_lambda: must be > 0.0"),
    ({"online_group_size": 1}, "online_group_size: must be >= 2"),
    ({"online_temperature": 0}, "online_temperature: must be > 0.0"),
    ({"online_ppo_steps": 0}, "online_ppo_steps: must be >= 1"),
    ({"raft_require_correct": "yes"}, "raft_require_correct: expected true/false"),
])
def test_algorithm_fields_are_validated(values, fragment):
    with pytest.raises(ConfigError, match=fragment):
        C.from_dict(values)


def test_inactive_fields_follow_the_algorithm():
    def inactive(**kw):
        return C.inactive_fields(C.from_dict(kw))

    for alg in ("raft", "rwr", "dpo"):
        assert {"kl_beta", "clip_epsilon", "adaptive_kl", "grpo_late_top_k"} <= set(inactive(algorithm=alg))
    assert "dpo_beta" in inactive() and "dpo_beta" not in inactive(algorithm="dpo")
    assert inactive(algorithm="raft")["dpo_beta"] == "algorithm=raft"
    assert "std_floor" in inactive(algorithm="dr_grpo") and "std_floor" not in inactive(algorithm="grpo")
    assert "anchor_lambda" not in inactive(algorithm="grpo_anchor")
    online = inactive(algorithm="online_grpo")
    assert "old_policy_refresh" in online and "grpo_early_top_k" in online and "kl_beta" not in online
    assert "old_policy_refresh" in inactive(algorithm="dpo")
    # rce_only: the whole post-training stage, its budget and early stopping do nothing
    rce_only = inactive(algorithm="rce_only")
    assert rce_only["grpo_epochs"] == "algorithm=rce_only" and rce_only["grpo_lr"] == "algorithm=rce_only"
    assert "early_stopping_patience" in rce_only and "algorithm" not in rce_only
    assert inactive(grpo_epochs=0)["algorithm"] == "grpo_epochs=0"
    # rewards: read by RCE, by the offline algorithms; online GRPO asks the evaluator instead
    assert "reward_alpha" not in inactive(algorithm="online_grpo")          # RCE still reads it
    assert inactive(algorithm="online_grpo", rce_epochs=0)["reward_alpha"].startswith("rce_epochs=0")
    assert "normalize_method" in inactive(algorithm="raft", rce_epochs=0)
    assert "normalize_method" not in inactive(algorithm="rwr", rce_epochs=0)
    # online GRPO with one step per sample batch and no dropout has ratio 1: the clip cannot act
    assert "clip_epsilon" not in online
    assert "clip_epsilon" in inactive(algorithm="online_grpo", dropout=0.0, attn_dropout=0.0)


def _base(algorithm):
    # rce_only trains only through RCE, the others only through the post-training stage
    return {"algorithm": algorithm, "rce_epochs": 1 if algorithm == "rce_only" else 0, "grpo_epochs": 1}


@pytest.mark.parametrize("algorithm", C.ALGORITHMS)
def test_fields_marked_inactive_change_nothing(algorithm, sft):
    # without dropout the ratios start at 1, so PPO's clip and KL knobs are not drowned out
    cfg0, task = make_tiny_task(**_base(algorithm), dropout=0.0, attn_dropout=0.0)
    names = [n for n in POST_SFT if n in C.inactive_fields(cfg0)]
    assert names, algorithm
    cache: dict = {}

    def final(cfg):
        key = tuple(sorted(cfg.to_dict().items()))
        if key not in cache:
            cache[key] = run(cfg, task, sft)[0].final_state
        return cache[key]

    for name in names:
        context, alternative = POST_SFT[name]
        context = {k: v for k, v in context.items() if k != "algorithm"}
        cfg_a = cfg0.replace(**context)
        cfg_b = cfg_a.replace(**{name: alternative})
        if name not in C.inactive_fields(cfg_a) or name not in C.inactive_fields(cfg_b):
            continue  # its context makes it active; test_knobs covers that direction
        a, b = final(cfg_a), final(cfg_b)
        assert all(torch.equal(a[k], b[k]) for k in a), f"{name} is marked inactive for {algorithm} but changed it"


def test_clip_is_inactive_for_one_step_online_grpo_without_dropout():
    cfg_a, task = make_tiny_task(algorithm="online_grpo", rce_epochs=0, dropout=0.0, attn_dropout=0.0)
    sft_state = fit_sft(cfg_a, task, log=lambda s: None)
    a = run(cfg_a, task, sft_state)[0].final_state
    b = run(cfg_a.replace(clip_epsilon=0.01), task, sft_state)[0].final_state
    assert all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------------------------ the loop


@pytest.mark.parametrize("algorithm", sorted(ALGORITHMS))
def test_a_short_run_of_each_algorithm_changes_the_parameters(algorithm, sft):
    cfg, task = make_tiny_task(**{**_base(algorithm), "grpo_epochs": 2})
    result, reports = run(cfg, task, sft)
    assert [r["phase"] for r in reports] == ["grpo", "grpo"] and [r["grpo_epoch"] for r in reports] == [1, 2]
    assert all(set(METRIC_KEYS) <= set(r) for r in reports)
    assert math.isfinite(reports[-1]["grpo_loss"]) and reports[-1]["stop_reason"] == "completed"
    assert any(not torch.equal(result.final_state[k], sft[k]) for k in sft)


def test_algorithm_specific_metrics_are_reported(sft):
    def last(alg):
        cfg, task = make_tiny_task(**_base(alg))
        return run(cfg, task, sft)[1][-1]

    assert 0 < last("raft")["frac_used"] <= 1 and math.isnan(last("raft")["kl"])
    dpo = last("dpo")
    assert 0 <= dpo["pair_acc"] <= 1 and 0 < dpo["frac_used"] <= 1 and math.isnan(dpo["kl_beta"])
    assert last("grpo_anchor")["anchor_loss"] > 0 and last("grpo")["group_k"] == 3
    online = last("online_grpo")
    assert 0 < online["train_reward"] < 1 and online["kl"] >= 0 and math.isnan(online["group_k"])


def test_rce_only_is_grpo_epochs_zero(sft):
    cfg, task = make_tiny_task(algorithm="rce_only", rce_epochs=2, grpo_epochs=5)
    result, reports = run(cfg, task, sft)
    reference, ref_reports = run(cfg.replace(algorithm="grpo", grpo_epochs=0), task, sft)
    assert [r["phase"] for r in reports] == ["rce", "rce"] and reports[-1]["train_finished"]
    assert [r["acc_mean"] for r in reports] == [r["acc_mean"] for r in ref_reports]
    assert all(torch.equal(result.final_state[k], reference.final_state[k]) for k in sft)


def test_online_grpo_refuses_the_lookup_evaluator(sft):
    cfg, task = make_tiny_task(algorithm="online_grpo")
    task.evaluator = LookupEvaluator.from_groups(task.train)
    with pytest.raises(ConfigError, match="algorithm: online_grpo .* lookup evaluator"):
        run(cfg, task, sft)


# ------------------------------------------------------------------------------ online sampling


def _tiny_selector(seed=0, d=8, pool=6):
    torch.manual_seed(seed)
    model = PointerSelector(d, hidden_dim=8, num_layers=1, dropout=0.3)
    g = torch.Generator().manual_seed(seed)
    q, c = torch.randn(2, d, generator=g), torch.randn(2, pool, d, generator=g)
    mask = torch.ones(2, pool, dtype=torch.bool)
    mask[0, -2:] = False
    return model, q, c, mask


def test_samples_are_distinct_valid_reproducible_and_leave_the_mode_alone():
    model, q, c, mask = _tiny_selector()
    model.train()
    pos = sample_sequences(model, q, c, mask, k=3, num_samples=200, generator=torch.Generator().manual_seed(1))
    assert pos.shape == (2, 200, 3) and model.training
    assert (pos[0] < 4).all()                                        # query 0's last two slots are padding
    assert all(len(set(s)) == 3 for s in pos.reshape(-1, 3).tolist())
    again = sample_sequences(model, q, c, mask, k=3, num_samples=200, generator=torch.Generator().manual_seed(1))
    assert torch.equal(pos, again)
    with pytest.raises(ValueError, match="k=5"):
        sample_sequences(model, q, c, mask, k=5, num_samples=2, generator=torch.Generator())


def test_sample_frequencies_match_the_policys_sequence_probabilities():
    model, q, c, mask = _tiny_selector(pool=3)
    q, c, mask = q[1:], c[1:], mask[1:]
    n = 20000
    pos = sample_sequences(model, q, c, mask, k=2, num_samples=n, generator=torch.Generator().manual_seed(2))
    seqs = torch.tensor([[a, b] for a in range(3) for b in range(3) if a != b]).unsqueeze(0)   # [1, 6, 2]
    p = model.reference_logp(q, c, mask, seqs).exp()[0]
    freq = torch.stack([(pos[0] == s).all(-1).float().mean() for s in seqs[0]])
    assert p.sum().item() == pytest.approx(1.0, abs=1e-5)
    assert torch.allclose(freq, p, atol=0.015), (freq, p)
    # a near-zero temperature samples the greedy decode
    cold = sample_sequences(model, q, c, mask, k=2, num_samples=5, generator=torch.Generator(), temperature=1e-4)
    assert (cold[0] == model.decode(q, c, mask, 2)[0]).all()


def test_score_samples_maps_positions_to_global_ids():
    seen = {}

    class Recorder:
        def score(self, query_ids, seqs):
            seen.update(q=query_ids.tolist(), s=seqs.tolist())
            return torch.tensor([0.25, 1.0, float("nan"), 0.5], dtype=torch.float64)

    pool = torch.tensor([[10, 11, 12], [20, 21, 22]])
    pos = torch.tensor([[[2, 0], [1, 2]], [[0, 1], [2, 1]]])          # [B=2, G=2, k=2]
    r = score_samples(Recorder(), torch.tensor([7, 8]), pool, pos)
    assert seen == {"q": [7, 7, 8, 8], "s": [[12, 10], [11, 12], [20, 21], [22, 21]]}
    assert r.shape == (2, 2) and r[0].tolist() == [0.25, 1.0] and math.isnan(r[1, 0])


def test_unscored_samples_are_left_out_of_their_group(sft):
    cfg, task = make_tiny_task(algorithm="online_grpo", online_group_size=6)
    inner = task.evaluator

    class Partial:
        def score(self, query_ids, seqs):
            out = inner.score(query_ids, seqs)
            return torch.where(seqs[:, 0] % 2 == 0, out, torch.full_like(out, float("nan")))

    task.evaluator = Partial()
    st = RunState.start(cfg, task, sft, None)
    x = _online_prepare(st, task, cfg, StageData(None, None, None, 0), torch.arange(4))
    assert torch.equal(x.mask, torch.isfinite(x.reward)) and (~x.mask).any() and x.mask.any()
    assert (x.adv[~x.mask] == 0).all() and (x.old_logp[~x.mask] == 0).all()
    assert torch.allclose(x.old_logp[x.mask], st.model.reference_logp(
        *_embedded(task, torch.arange(4)), x.seqs)[x.mask])


@pytest.mark.parametrize("algorithm, group_k", [("grpo", 3), ("grpo", 0), ("grpo_anchor", 2), ("dr_grpo", 4)])
def test_grpo_family_decodes_only_its_group_and_computes_the_full_batch_loss(algorithm, group_k, sft):
    # The loss restated on every candidate with the top-k group as its mask (the definition);
    # the algorithm decodes only the group's sequences and must give the same number.
    cfg, task = make_tiny_task(algorithm=algorithm, rce_epochs=0, grpo_epochs=1)
    st = RunState.start(cfg, task, sft, None)
    st.model.eval()
    raw = task.train.beam_score + task.train.correct
    ref = reference_logp(st.ref_model, task.train, task) - 0.1 * task.train.correct   # ratio != 1
    idx = torch.tensor([0, 5, 10, 3])                     # rows 0, 5, 10 have a padded candidate
    algo = ALGORITHMS[algorithm]
    x = algo.prepare(st, task, cfg, StageData(raw, raw, ref, group_k), idx)
    with torch.no_grad():
        loss, stats = algo.loss(st, cfg, x)
        b = x.b
        group = losses.top_k_mask(x.raw, b.seq_mask, group_k)
        scale = "none" if algorithm == "dr_grpo" else "std"
        adv = losses.group_advantages(x.raw, group, std_floor=cfg.grpo.std_floor, clip=cfg.grpo.advantage_clip,
                                      scale=scale)
        logp = st.model.sequence_logp(b.query_emb, b.cand_emb, b.pool_mask, b.seqs, seq_mask=b.seq_mask)
        expected, expected_stats = losses.grpo_loss(logp, x.ref_logp, adv, group,
                                                    clip_epsilon=cfg.grpo.clip_epsilon, kl_beta=st.kl_beta)
        if algorithm == "grpo_anchor":
            expected = expected + cfg.grpo.anchor_lambda * losses.selected_ce_loss(
                -logp, losses.top_k_mask(x.raw, b.seq_mask, 1))
    assert abs(float(loss) - float(expected)) <= 1e-6
    for key in ("ppo_loss", "kl", "mean_ratio", "adv_mean", "adv_std", "clip_frac"):
        assert stats[key] == pytest.approx(expected_stats[key], abs=1e-6), key


def _embedded(task, idx):
    b = make_batch(task.train, idx, task.embeddings, task.device)
    return b.query_emb, b.cand_emb, b.pool_mask


# --------------------------------------------------------------------- each learns on the simulator

SIM = {"sft_epochs": 5, "rce_epochs": 0, "grpo_epochs": 3, "grpo_lr": 1e-3, "rce_lr": 1e-3, "batch_size": 8,
       "max_shot": 1}


@torch.no_grad()
def exact_policy_reward(model, task) -> float:
    """sum over every ordered pair (a, b) of pi(a) pi(b | a) P(correct | a, b), averaged over training queries.

    Online GRPO's objective, computed exactly (shot_num 2: P^2 sequences per query), so the
    test is not at the mercy of sampling noise.
    """
    g = task.train
    assert g.shot_num == 2
    b = make_batch(g, torch.arange(g.num_queries), task.embeddings, task.device)
    model.eval()
    q0, cands = model.encode(b.query_emb, b.cand_emb, b.pool_mask)
    n, p = b.pool_mask.shape
    first = torch.arange(p).view(1, p, 1).expand(n, p, 1)
    logits = model.step_logits(q0, cands, b.pool_mask, torch.cat([first, torch.zeros_like(first)], -1))
    joint = torch.softmax(logits[:, 0, 0], -1).unsqueeze(-1) * torch.softmax(logits[:, :, 1], -1)  # [Q, P, P]
    pool = g.pool[:, :p]
    seqs = torch.stack([pool.unsqueeze(2).expand(n, p, p), pool.unsqueeze(1).expand(n, p, p)], -1)
    r = task.evaluator.score(g.query_ids.repeat_interleave(p * p), seqs.reshape(-1, 2)).float().view(n, p, p)
    return float((joint * r).sum((1, 2)).mean())


def recorded_expected_reward(model, task) -> float:
    """sum_c softmax(log pi over the recorded candidates)_c * acc_c: what the offline algorithms optimise."""
    return ranking_metrics(reference_logp(model, task.train, task), task.train)["expected_reward"]


@pytest.fixture(scope="module")
def simulator(tmp_path_factory):
    from trainer.simulator import SMOKE_SPEC
    from trainer.task import DataSource

    torch.set_num_threads(1)
    source = DataSource.from_simulator(SMOKE_SPEC, tmp_path_factory.mktemp("sim"))
    cfg = C.from_dict(SIM)
    task = source.task(cfg)
    sft_state = fit_sft(cfg, task, log=lambda s: None)
    model = task.new_model()
    model.load_state_dict(sft_state)
    return task, sft_state, {"recorded": recorded_expected_reward(model, task),
                             "oracle": exact_policy_reward(model, task)}


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", C.ALGORITHMS)
def test_each_algorithm_raises_its_training_reward_on_the_simulator(algorithm, simulator):
    task, sft_state, before = simulator
    over = {**SIM, "algorithm": algorithm}
    if algorithm == "rce_only":
        over["rce_epochs"] = 3          # its only training is the RCE stage
    result = train(C.from_dict(over), task, lambda m, s: None, sft_state=sft_state)
    model = task.new_model()
    model.load_state_dict(result.final_state)
    if algorithm == "online_grpo":      # its reward is the oracle's, on its own samples
        gain = exact_policy_reward(model, task) - before["oracle"]
    else:
        gain = recorded_expected_reward(model, task) - before["recorded"]
    assert gain > 0.002, f"{algorithm}: training reward changed by {gain:+.4f}"
