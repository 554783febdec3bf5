import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import trainer.simulator as sim
from trainer.errors import ConfigError, DataError
from trainer.sim.oracle import OracleParams, p_correct
from trainer.sim.world import World
from trainer.simulator import DEFAULT_SPEC, SMOKE_SPEC, Benchmark, BenchmarkSpec, ensure_files, report

REPO = Path(__file__).resolve().parents[2]
CANDIDATE_FIELDS = {
    "pointer", "pointer_global", "gen_method", "beam_rank", "beam_score", "logprob_score", "temperature",
    "similarity_score", "vqa_raw_generation", "vqa_pred_answer", "vqa_acc_score", "vqa_correct",
    "vqa_gt_prob", "vqa_rel_token_f1", "vqa_rel_edit_sim", "vqa_rel_score", "vqa_eval_mode",
    "eval_split_used", "eval_failed"}


@pytest.fixture(scope="module")
def bench():
    return Benchmark.build(DEFAULT_SPEC)


@pytest.fixture(scope="module")
def smoke():
    return Benchmark.build(SMOKE_SPEC)


@pytest.fixture(scope="module")
def smoke_files(tmp_path_factory):
    return ensure_files(SMOKE_SPEC, tmp_path_factory.mktemp("cache"))


def load(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


# -- the required properties of the default benchmark (exact accuracy) -------------


@pytest.fixture(scope="module")
def default_report(bench):
    return report(bench)


def test_retrieval_beats_random_at_two_shots(default_report):
    s2 = default_report["shot2"]
    assert s2["retrieval"] >= s2["random"] + 0.03


def test_best_beam_beats_random_by_fifteen_points(default_report):
    s1, s2 = default_report["shot1"], default_report["shot2"]
    assert s2["best_beam"] >= s2["random"] + 0.15
    assert s1["best_beam"] > s1["retrieval"] > s1["random"]


def test_retrieval_degrades_with_more_shots(default_report):
    assert default_report["shot4"]["retrieval"] < default_report["shot2"]["retrieval"]


def test_random_accuracy_is_realistic_and_slowly_falling(default_report):
    rand = [default_report[f"shot{k}"]["random"] for k in range(1, 5)]
    assert all(0.45 <= r <= 0.55 for r in rand), rand
    # like Qwen on OK-VQA (~50 -> ~45): never rising, falling a few points in total
    assert all(b <= a + 0.005 for a, b in zip(rand, rand[1:])), rand
    assert 0.01 <= rand[0] - rand[3] <= 0.10, rand


def test_report_keys_and_eval_split(bench, default_report):
    assert list(default_report) == ["shot1", "shot2", "shot3", "shot4"]
    assert set(default_report["shot2"]) == {"random", "retrieval", "best_beam"}
    assert set(default_report["shot3"]) == {"random", "retrieval"}
    ev, tr = bench.eval_query_ids(), bench.train_query_ids()
    assert len(ev) == DEFAULT_SPEC.n_eval == 240 and len(tr) == 560
    assert not set(ev.tolist()) & set(tr.tolist())
    assert sorted(ev.tolist() + tr.tolist()) == bench.anchors.tolist()


# -- the oracle --------------------------------------------------------------------


def test_p_correct_is_a_probability_for_any_shot(bench):
    q = bench.anchors[:50]
    for k in range(0, 5):
        p = bench.p_correct(q, bench.random_sequences(q, None, k, torch.Generator().manual_seed(k)))
        assert p.shape == (50,) and p.dtype == torch.float32
        assert bool(((p > 0) & (p < 1)).all())


def test_recency_the_icd_nearest_the_query_counts_most(bench):
    g = torch.Generator().manual_seed(0)
    q = bench.anchors[torch.randint(len(bench.anchors), (400,), generator=g)]
    ab = bench.random_sequences(q, None, 2, g)
    a, b = ab[:, :1], ab[:, 1:]
    forward, backward = bench.p_correct(q, ab), bench.p_correct(q, ab.flip(1))
    assert bool((forward != backward).all())
    # Swapping only moves weight between positions, so the order with the better
    # single ICD last (nearest the query) must win.
    better_last = bench.p_correct(q, b) > bench.p_correct(q, a)
    assert torch.equal(forward > backward, better_last)


def _toy_world(latents, helpfulness=None):
    n = latents.shape[0]
    return World(latents=latents.double(), topics=torch.zeros(n, dtype=torch.long),
                 embeddings=latents.float(), relevance=torch.eye(latents.shape[1], dtype=torch.float64),
                 helpfulness=torch.zeros(n, dtype=torch.float64) if helpfulness is None else helpfulness,
                 difficulty=torch.zeros(n, dtype=torch.float64))


def test_redundant_pair_scores_below_diverse_pair_of_equal_relevance():
    r = 2 ** -0.5
    # query e1; a and its duplicate b lie on one topic, c on another; all equally relevant to e1
    z = torch.tensor([[1, 0, 0], [r, r, 0], [r, r, 0], [r, -r, 0]])
    world = _toy_world(z)
    q = torch.tensor([0])
    dup = p_correct(world, OracleParams(), q, torch.tensor([[2, 1]]))
    diverse = p_correct(world, OracleParams(), q, torch.tensor([[3, 1]]))
    assert float(dup) < float(diverse)


def test_irrelevant_icds_cost_accuracy():
    z = torch.tensor([[1.0, 0, 0], [1.0, 0, 0], [0, 0, 1.0]])
    world = _toy_world(z)
    q = torch.tensor([0])
    one = p_correct(world, OracleParams(), q, torch.tensor([[1]]))
    with_irrelevant = p_correct(world, OracleParams(), q, torch.tensor([[2, 1]]))
    zero_shot = p_correct(world, OracleParams(), q, torch.empty(1, 0, dtype=torch.long))
    assert float(with_irrelevant) < float(one)
    assert float(zero_shot) < float(one)


def test_p_correct_rejects_bad_ids(bench):
    q = bench.anchors[:2]
    with pytest.raises(ValueError, match="torch.long"):
        bench.p_correct(q, torch.zeros(2, 2))
    with pytest.raises(ValueError, match="outside"):
        bench.p_correct(q, torch.full((2, 2), DEFAULT_SPEC.n_items))


def test_sampled_mode_mean_approaches_exact(bench):
    q = bench.anchors[:64]
    seqs = bench.retrieval_sequences(q, None, 2)
    exact = bench.p_correct(q, seqs)
    reps = 4000
    g = torch.Generator().manual_seed(3)
    draws = bench.sample_correct(q.repeat(reps), seqs.repeat(reps, 1), g).view(reps, -1)
    assert set(draws.unique().tolist()) <= {0.0, 1.0}
    se = (exact * (1 - exact) / reps).sqrt().clamp_min(1e-3)
    assert bool(((draws.mean(0) - exact).abs() < 5 * se).all())
    again = bench.sample_correct(q, seqs, torch.Generator().manual_seed(3))
    assert torch.equal(again, bench.sample_correct(q, seqs, torch.Generator().manual_seed(3)))


# -- baselines ---------------------------------------------------------------------


def test_baselines_stay_in_the_pool_in_prompt_order(bench):
    q = bench.anchors[:100]
    pools = bench.pools[:100]
    rand = bench.random_sequences(q, pools, 4, torch.Generator().manual_seed(0))
    ret = bench.retrieval_sequences(q, pools, 4)
    for row, pool, r in zip(rand.tolist(), pools.tolist(), ret.tolist()):
        assert len(set(row)) == 4 and set(row) <= set(pool)
        assert set(r) <= set(pool)
    # most similar nearest the query: cosine rises along the prompt
    cos = (bench.embeddings[ret] @ bench.embeddings[q][:, :, None]).squeeze(-1)
    assert bool((cos.diff(dim=1) >= 0).all())
    top = (bench.embeddings[pools] @ bench.embeddings[q][:, :, None]).squeeze(-1).max(1).values
    assert torch.allclose(cos[:, -1], top)


def test_best_beam_sequences_come_from_the_top_beam(bench):
    q = bench.anchors[[5, 7]]
    two, one = bench.best_beam_sequences(q, 2), bench.best_beam_sequences(q, 1)
    assert torch.equal(two, bench.beam_seqs[[5, 7], 0])
    assert torch.equal(one, two[:, 1:])
    with pytest.raises(ValueError):
        bench.best_beam_sequences(q, 3)


def test_pool_of_an_anchor_and_unknown_query(bench):
    q = int(bench.anchors[3])
    pool = bench.pool(q)
    assert pool.shape == (64,) and pool.dtype == torch.long
    assert q not in pool.tolist() and len(set(pool.tolist())) == 64
    non_anchor = next(i for i in range(DEFAULT_SPEC.n_items) if i not in set(bench.anchors.tolist()))
    with pytest.raises(DataError, match="not an anchor"):
        bench.pool(non_anchor)


# -- data generation and file formats ----------------------------------------------


def test_beam_json_is_infoscore_beam_search(smoke, smoke_files):
    beams, pools = load(smoke_files.beam), load(smoke_files.pools)
    assert list(beams) == [str(a) for a in smoke.anchors.tolist()] == list(pools)
    for key, entry in beams.items():
        q = int(key)
        assert set(entry) == {"id_list", "score_list"}
        assert len(entry["id_list"]) == len(entry["score_list"]) == SMOKE_SPEC.beam_size
        assert entry["score_list"] == sorted(entry["score_list"], reverse=True)
        for ids in entry["id_list"]:
            assert len(ids) == 3 and ids[-1] == q and set(ids[:-1]) <= set(pools[key])
    # score = P(c2 + [c1], q) - P([c1], q): the last step's gain with c2 prepended
    q = torch.tensor([int(k) for k in beams for _ in range(SMOKE_SPEC.beam_size)])
    seqs = torch.tensor([ids[:-1] for e in beams.values() for ids in e["id_list"]])
    gain = smoke.p_correct(q, seqs).double() - smoke.p_correct(q, seqs[:, 1:]).double()
    scores = torch.tensor([s for e in beams.values() for s in e["score_list"]], dtype=torch.float64)
    assert torch.allclose(gain, scores, atol=1e-5)


def test_top_beam_is_the_best_second_step(smoke):
    # no other pool item added in front of the top beam's first pick gains more
    a = torch.arange(len(smoke.anchors))
    first = smoke.beam_seqs[:, 0, 1]
    P = SMOKE_SPEC.pool_size
    seqs = torch.stack([smoke.pools, first[:, None].expand(-1, P)], -1).reshape(-1, 2)
    q = smoke.anchors.repeat_interleave(P)
    p = smoke.p_correct(q, seqs).view(-1, P).masked_fill(smoke.pools == first[:, None], -1)
    best = smoke.pools[a, p.argmax(1)]
    assert torch.equal(best, smoke.beam_seqs[:, 0, 0])


def test_rl_json_k64_format(smoke, smoke_files):
    rl, pools = load(smoke_files.rl), load(smoke_files.pools)
    meta = rl.pop("_meta")
    assert meta["spec"] == SMOKE_SPEC.to_dict() and meta["vqa_model"]
    assert list(rl) == list(pools)
    n_cands = []
    for key, entry in rl.items():
        q = int(key)
        assert set(entry) == {"query", "candidate_pool_ids", "pointer_candidates"}
        assert entry["query"]["query_id"] == q and len(entry["query"]["gt_answers_raw"]) == 10
        pool = entry["candidate_pool_ids"]
        assert pool == pools[key] and len(pool) == 64 and q not in pool
        pairs = set()
        for c in entry["pointer_candidates"]:
            assert set(c) == CANDIDATE_FIELDS
            assert c["pointer_global"] == [pool[i] for i in c["pointer"]]
            assert len(set(c["pointer"])) == 2 and all(0 <= i < 64 for i in c["pointer"])
            pairs.add(frozenset(c["pointer"]))
            assert c["vqa_acc_score"] in (0.0, 0.6, 1.0)
            assert c["vqa_correct"] == int(c["vqa_acc_score"] > 0)
            assert 0 < c["vqa_gt_prob"] < 1e-4 and 0 <= c["vqa_rel_score"] <= 1
            assert (c["vqa_eval_mode"], c["eval_failed"]) == ("vqaEval", False)
            is_beam = c["gen_method"] == "beam"
            assert (c["beam_rank"] is not None) == is_beam == (c["beam_score"] is not None)
            assert (c["temperature"] in (1.0, 1.3)) == (c["gen_method"] == "sample")
            assert (c["similarity_score"] is not None) == (c["gen_method"] == "retrieval")
            assert (c["logprob_score"] is not None) == (c["gen_method"] in ("beam", "sample"))
        methods = [c["gen_method"] for c in entry["pointer_candidates"]]
        order = {"beam": 0, "retrieval": 1, "sample": 2, "random": 3}
        assert methods[0] == "beam" and [order[m] for m in methods] == sorted(order[m] for m in methods)
        assert len(pairs) == len(methods)  # deduplicated by unordered pair
        n_cands.append(len(methods))
    assert 9 <= sum(n_cands) / len(n_cands) <= 15


def test_rl_rewards_follow_the_oracle(smoke):
    cands, scores = smoke.rl_data()
    beam = torch.tensor([m == "beam" for m in cands.method])
    rand = torch.tensor([m == "random" for m in cands.method])
    assert float(scores.p[beam].mean()) > float(scores.p[rand].mean()) + 0.05
    assert 0.4 < float(scores.correct.double().mean()) < 0.7
    # one Bernoulli draw each: correct tracks p
    hi, lo = scores.p > 0.7, scores.p < 0.3
    assert float(scores.correct[hi].double().mean()) > 0.7 > 0.3 > float(scores.correct[lo].double().mean())


def test_pools_and_embeddings_files(smoke, smoke_files):
    emb = torch.load(smoke_files.embeddings, weights_only=True)
    assert emb.dtype == torch.float32 and emb.shape == (SMOKE_SPEC.n_items, SMOKE_SPEC.dim)
    assert torch.equal(emb, smoke.embeddings)
    assert torch.allclose(emb.norm(dim=1), torch.ones(len(emb)), atol=1e-5)
    pools = load(smoke_files.pools)
    assert torch.equal(torch.tensor(list(pools.values())), smoke.pools)


def test_same_seed_same_bytes_other_seed_differs(smoke, smoke_files, tmp_path):
    again = Benchmark.build(SMOKE_SPEC).write(tmp_path / "again")
    for name, path in dataclasses.asdict(again).items():
        assert Path(path).read_bytes() == Path(getattr(smoke_files, name)).read_bytes(), name
    other = Benchmark.build(dataclasses.replace(SMOKE_SPEC, seed=1))
    assert not torch.equal(other.embeddings, smoke.embeddings)
    assert not torch.equal(other.anchors, smoke.anchors)
    assert other.key != smoke.key


# -- cache -------------------------------------------------------------------------


def test_ensure_files_reuses_the_cache(tmp_path, monkeypatch):
    first = ensure_files(SMOKE_SPEC, tmp_path)
    stamp = first.rl.stat().st_mtime_ns

    def no_build(*a, **k):
        raise AssertionError("regenerated a cached benchmark")

    monkeypatch.setattr(Benchmark, "build", no_build)
    assert ensure_files(SMOKE_SPEC, tmp_path) == first
    assert first.rl.stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == [first.rl.parent.name]


def test_ensure_files_survives_a_lost_race(tmp_path, monkeypatch):
    real_rename = os.rename

    def rival_wins(src, dst):
        # another process finishes first: its copy lands, ours can no longer be renamed
        Benchmark.build(SMOKE_SPEC).write(dst)
        real_rename(src, dst)

    monkeypatch.setattr(sim.os, "rename", rival_wins)
    files = ensure_files(SMOKE_SPEC, tmp_path)
    assert files.exist() and load(files.rl)["_meta"]["spec"] == SMOKE_SPEC.to_dict()
    assert [p.name for p in tmp_path.iterdir()] == [files.rl.parent.name]  # temp dir cleaned


# -- spec and CLI ------------------------------------------------------------------


@pytest.mark.parametrize("bad", [dict(pool_size=3), dict(n_anchors=10**6), dict(eval_fraction=1.0),
                                 dict(n_items=2.5), dict(seed=-1), dict(dim=8, latent_dim=16)])
def test_spec_validation(bad):
    with pytest.raises(ConfigError, match="BenchmarkSpec"):
        BenchmarkSpec(**bad)


def test_cli_report_json(tmp_path):
    out = subprocess.run([sys.executable, "-m", "trainer.simulator", "--report", "--json", "--smoke"],
                         cwd=REPO, capture_output=True, text=True, timeout=120, check=True)
    rows = json.loads(out.stdout)
    assert list(rows) == ["shot1", "shot2", "shot3", "shot4"]
    for k in range(1, 5):
        # "sft" comes from trainer.warmup:simulator_sft_sequences, the default SFT_BASELINE hook
        keys = {"random", "retrieval", "sft"} | ({"best_beam"} if k <= 2 else set())
        assert set(rows[f"shot{k}"]) == keys
        assert all(0 <= v <= 1 for v in rows[f"shot{k}"].values())


def test_cli_sft_hook_and_write(tmp_path, monkeypatch, capsys):
    calls = []

    def fake_sft(bench, files, query_ids, k):
        calls.append(k)
        assert files.exist() and torch.equal(query_ids, bench.eval_query_ids())
        return bench.retrieval_sequences(query_ids, None, k)

    monkeypatch.setattr(sim, "DEFAULT_CACHE_ROOT", tmp_path / "cache")
    monkeypatch.setattr(sim, "SFT_BASELINE", fake_sft)
    assert sim.main(["--report", "--json", "--smoke", "--seed", "2"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert calls == [1, 2, 3, 4]
    assert all(math.isclose(r["sft"], r["retrieval"], rel_tol=1e-6) for r in rows.values())

    monkeypatch.setattr(sim, "SFT_BASELINE", None)
    assert sim.main(["--report", "--smoke"]) == 0
    assert "sft: unavailable" in capsys.readouterr().out

    assert sim.main(["--write", str(tmp_path / "w"), "--smoke"]) == 0
    printed = capsys.readouterr().out
    for name in ("beam", "rl", "pools", "embeddings"):
        assert f"{name}: {tmp_path / 'w'}" in printed
    assert load(tmp_path / "w" / "beam.json")


def test_ensure_files_refuses_an_incomplete_cache(tmp_path):
    files = ensure_files(SMOKE_SPEC, tmp_path)
    files.pools.unlink()
    with pytest.raises(DataError, match="delete that directory"):
        ensure_files(SMOKE_SPEC, tmp_path)


@pytest.mark.slow
def test_a_selector_learned_from_beams_beats_random(bench, default_report):
    # The stand-in for SFT: a low-rank cosine pointer over embeddings, trained with
    # teacher-forced cross-entropy on the training anchors' beams (selection order).
    torch.manual_seed(0)
    emb, d = bench.embeddings, bench.spec.dim
    proj_q, proj_c = torch.nn.Linear(d, 64), torch.nn.Linear(d, 64)
    opt = torch.optim.AdamW([*proj_q.parameters(), *proj_c.parameters()], lr=3e-3)

    def logits(query_ids):
        q = torch.nn.functional.normalize(proj_q(emb[query_ids]), dim=-1)
        c = torch.nn.functional.normalize(proj_c(emb), dim=-1)[bench.pools[bench.rows(query_ids)]]
        return (c @ q[:, :, None]).squeeze(-1) / 0.1                         # [Q, P]

    train = bench.train_query_ids()
    rows = bench.rows(train)
    picks = (bench.pools[rows][:, None, None, :] == bench.beam_seqs[rows][..., None]).long().argmax(-1)
    picks = picks.flip(-1)                                                    # [Q, B, 2] selection order
    for _ in range(200):
        s = logits(train)
        loss = sum(torch.nn.functional.cross_entropy(s, picks[:, b, 0])
                   + torch.nn.functional.cross_entropy(s.scatter(1, picks[:, b, :1], -1e4), picks[:, b, 1])
                   for b in range(picks.shape[1]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    ev = bench.eval_query_ids()
    with torch.no_grad():
        top = logits(ev).topk(2, dim=1).indices.flip(1)                       # first pick nearest the query
    for k in (1, 2):
        seqs = bench.pools[bench.rows(ev)].gather(1, top[:, 2 - k:])
        acc = float(bench.p_correct(ev, seqs).double().mean())
        assert acc >= default_report[f"shot{k}"]["random"] + 0.05


@pytest.mark.slow
def test_sft_selector_beats_random_by_five_points_at_shots_1_and_2():
    """The fourth required property: the trainer's SFT recipe learns the benchmark (about 30 s)."""
    from trainer import simulator

    bench = simulator.Benchmark.build(simulator.DEFAULT_SPEC)
    files = simulator.ensure_files(simulator.DEFAULT_SPEC)
    out = simulator.report(bench, files, shots=(1, 2), sft_fn=simulator.resolve_sft_baseline())
    for shot in ("shot1", "shot2"):
        assert out[shot]["sft"] >= out[shot]["random"] + 0.05, out
