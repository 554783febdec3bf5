"""Splits, filters, pools and the padded QueryGroups built from the fixture files."""
import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from trainer.config import DataConfig
from trainer.data import filters
from trainer.data.build import (build_dataset, candidate_pools, load_dataset, prepare_rl, select_split,
                                split_ids, stack_pools)
from trainer.data.loaders import BeamEntry, RLEntry, load_beam_json, load_pools, load_rl_json
from trainer.errors import ConfigError, DataError

FIXTURES = Path(__file__).parent / "fixtures"
RL_GLOBAL = load_rl_json(FIXTURES / "rl_global.json")
RL_K64 = load_rl_json(FIXTURES / "rl_k64.json")
RL_BALANCED = load_rl_json(FIXTURES / "rl_balanced.json")
BEAM = load_beam_json(FIXTURES / "beam.json")
POOLS = load_pools(FIXTURES / "pools.json")
EMB = torch.randn(20, 4)


def kept_pointers(entries):
    return {q: [c.pointer for c in e.candidates] for q, e in entries.items()}


def gathered(groups):
    """Global ids of every valid sequence, per query: pool[seqs] read back."""
    out = {}
    for r, q in enumerate(groups.query_ids.tolist()):
        seqs = groups.seqs[r][groups.seq_mask[r]]
        out[q] = [tuple(groups.pool[r][s].tolist()) for s in seqs]
    return out


# ---------------------------------------------------------------------------
# split_ids


def test_split_is_deterministic_disjoint_and_complete():
    ids = list(range(100, 300, 2))
    a = split_ids(ids, val_fraction=0.15, test_fraction=0.1, seed=3)
    b = split_ids(torch.tensor(ids[::-1]), val_fraction=0.15, test_fraction=0.1, seed=3)
    for part in ("train", "val", "test"):
        assert torch.equal(getattr(a, part), getattr(b, part))
        assert getattr(a, part).dtype == torch.long
        assert torch.equal(getattr(a, part), getattr(a, part).sort().values)
    assert (len(a.train), len(a.val), len(a.test)) == (75, 15, 10)
    union = torch.cat([a.train, a.val, a.test])
    assert sorted(union.tolist()) == ids  # disjoint and complete
    c = split_ids(ids, val_fraction=0.15, test_fraction=0.1, seed=4)
    assert not torch.equal(a.val, c.val)


def test_split_small_and_degenerate():
    s = split_ids([5, 6, 7], val_fraction=0.15, test_fraction=0.0, seed=0)
    assert (len(s.train), len(s.val), len(s.test)) == (2, 1, 0)
    with pytest.raises(DataError, match="too few"):
        split_ids([5, 6], val_fraction=0.15, test_fraction=0.15, seed=0)


def test_split_does_not_depend_on_filters():
    cfgs = [DataConfig(), DataConfig(require_positive_query=True, filter_min_beam_score_quantile=0.5),
            DataConfig(skip_fallback=False, train_queries=1)]
    splits = [build_dataset(embeddings=EMB, rl=RL_GLOBAL, beam=BEAM, data_cfg=c)[1] for c in cfgs]
    for s in splits[1:]:
        assert all(torch.equal(getattr(s, p), getattr(splits[0], p)) for p in ("train", "val", "test"))


# ---------------------------------------------------------------------------
# Filters (train_ids=None: every query counts as training)


def test_validity_and_size_filters_exact_counts():
    kept, pools, report = prepare_rl(RL_GLOBAL, DataConfig())
    assert report.counts() == {"eval_failed": 1, "eval_mode_fallback": 1, "repeated_icd": 1,
                               "eval_mode_error": 1, "query_fewer_than_2_candidates": 1}
    assert kept_pointers(kept) == {1: [(3, 4), (5, 3), (6, 7)], 2: [(3, 5), (6, 8)],
                                   6: [(1, 2), (2, 3), (4, 5)]}
    # what each drop names: the file's candidate index, or None for a whole query
    assert {(d.query_id, d.candidate, d.reason) for d in report.items} == {
        (1, 4, "eval_failed"), (1, 3, "eval_mode_fallback"), (2, 2, "repeated_icd"),
        (4, 1, "eval_mode_error"), (4, None, "query_fewer_than_2_candidates")}


def test_fallback_kept_when_not_skipped():
    kept, _, report = prepare_rl(RL_GLOBAL, DataConfig(skip_fallback=False))
    assert "eval_mode_fallback" not in report.counts()
    assert (8, 9) in kept_pointers(kept)[1]


def test_require_positive_query():
    kept, _, report = prepare_rl(RL_GLOBAL, DataConfig(require_positive_query=True))
    assert sorted(kept) == [1, 6] and report.counts()["query_no_positive"] == 1


def test_require_positive_uses_acc_without_vqa_correct():
    # balanced files have no vqa_correct: any acc > 0 counts (not Lever-Plus's reward >= 1.0)
    def with_acc(entry, accs):
        cands = tuple(replace(c, vqa_acc_score=a) for c, a in zip(entry.candidates, accs))
        return replace(entry, candidates=cands)

    entries = {0: with_acc(RL_BALANCED[0], [0.3, 0.0, 0.0, 0.0]), 8: with_acc(RL_BALANCED[8], [0.0, 0.0])}
    kept, drops = filters.require_positive(entries)
    assert sorted(kept) == [0] and drops == [filters.Dropped(8, None, "query_no_positive")]


def test_beam_score_quantile_drops_weak_beam_candidates_only():
    # beam scores surviving validity: 1.2, 0.9 (q1), 0.3 (q2), 0.5 (q4), 1.5, 0.1 (q6) -> median 0.7
    assert filters.beam_score_threshold(filters.drop_invalid(RL_GLOBAL, skip_fallback=True)[0], 0.5) == \
        pytest.approx(0.7)
    kept, _, report = prepare_rl(RL_GLOBAL, DataConfig(filter_min_beam_score_quantile=0.5))
    assert report.counts()["below_beam_score_quantile"] == 3
    assert report.counts()["query_fewer_than_2_candidates"] == 2  # q2 and q4
    # non-beam candidates (beam_score null) survive: (6, 7) in q1, (4, 5) in q6
    assert kept_pointers(kept) == {1: [(3, 4), (5, 3), (6, 7)], 6: [(1, 2), (4, 5)]}


def test_selection_filters_touch_training_queries_only():
    cfg = DataConfig(require_positive_query=True, filter_min_beam_score_quantile=0.5)
    kept, _, report = prepare_rl(RL_GLOBAL, cfg, train_ids={1, 2, 6})
    # q4 is not training: keeps its single valid candidate for evaluation
    assert kept_pointers(kept)[4] == [(12, 13)]
    # q2 is training: its weak beam candidate goes, then the query (1 candidate, no positive)
    assert 2 not in kept
    assert ("query_no_positive", 2) in {(d.reason, d.query_id) for d in report.items}


def test_non_training_queries_need_one_candidate():
    entries = {7: RLEntry(7, (), None), **RL_GLOBAL}
    kept, drops = filters.drop_small_queries(entries, only={1})
    assert 7 not in kept and 4 in kept
    assert [(d.query_id, d.reason) for d in drops] == [(7, "query_no_candidates")]


def test_train_queries_subsample_is_seeded_nested_and_train_only():
    ids = list(range(50))
    small = filters.subsample_train(ids, 10, seed=1)
    large = filters.subsample_train(ids, 25, seed=1)
    assert len(small) == 10 and set(small) <= set(large) and small == sorted(small)
    assert filters.subsample_train(ids[::-1], 10, seed=1) == small
    assert filters.subsample_train(ids, 10, seed=2) != small
    assert filters.subsample_train(ids, 0, seed=1) == ids
    with pytest.raises(ConfigError, match="train_queries"):
        filters.subsample_train(ids, 51, seed=1)
    kept, _, report = prepare_rl(RL_GLOBAL, DataConfig(train_queries=1), train_ids={1, 2, 6})
    assert report.counts()["query_not_subsampled"] == 2
    assert len(set(kept) & {1, 2, 6}) == 1 and 4 in kept  # q4 is not training: never subsampled


# ---------------------------------------------------------------------------
# Pools


def test_lever_plus_pool_is_sorted_trajectory_ids_truncated():
    valid, _ = filters.drop_invalid(RL_GLOBAL, skip_fallback=True)
    pools = candidate_pools(rl=valid)
    assert pools[1] == [3, 4, 5, 6, 7]  # (8, 9) fallback and (10, 11) failed are not in it
    assert candidate_pools(rl=valid, max_pool=4)[1] == [3, 4, 5, 6]
    kept, pool_of, report = prepare_rl(RL_GLOBAL, DataConfig(), max_pool=4)
    # pools: q1 [3, 4, 5, 6] loses (6, 7); q6 [1, 2, 3, 4] loses (4, 5); q2 has only 4 ids
    assert report.counts()["outside_pool"] == 2
    assert kept_pointers(kept) == {1: [(3, 4), (5, 3)], 2: [(3, 5), (6, 8)], 6: [(1, 2), (2, 3)]}
    assert pool_of[6] == [1, 2, 3, 4]


def test_k64_pool_and_pools_file_are_extended_with_beam_ids():
    pools = candidate_pools(rl=RL_K64, beam={**BEAM, 5: BeamEntry(5, ((2, 7),), (0.1,))})
    assert pools[3] == [10, 11, 12, 13, 14, 15]  # beam ids of q3 already inside
    assert pools[5] == [7, 8, 9, 1, 2]  # beam id 2 appended
    pools = candidate_pools(rl=RL_BALANCED, beam=BEAM, pools={0: [40, 3], 9: [1, 2, 4, 5]})
    assert pools[0] == [40, 3, 1, 2, 4, 5, 6, 7]  # trajectory ids appended in order of first use
    assert pools[9] == [1, 2, 4, 5] and pools[3] == [12, 10, 11, 13, 15]


def test_stack_pools():
    pool, mask = stack_pools({1: torch.tensor([4, 5, 6]), 2: torch.tensor([9])}, torch.tensor([2, 1]))
    assert pool.tolist() == [[9, 0, 0], [4, 5, 6]]
    assert mask.tolist() == [[True, False, False], [True, True, True]]
    with pytest.raises(DataError, match="query 3"):
        stack_pools({1: torch.tensor([4])}, [1, 3])


# ---------------------------------------------------------------------------
# build_dataset


def everything_trains():
    # val/test take 1 query each; with these fractions the smallest split keeps the rest in train
    return DataConfig(val_fraction=0.01, test_fraction=0.0)


def test_global_variant_groups():
    ds, split, _ = build_dataset(embeddings=EMB, rl=RL_GLOBAL, data_cfg=everything_trains())
    g = ds.rl
    val_q = split.val.item()
    expected = {1: [(3, 4), (5, 3), (6, 7)], 2: [(3, 5), (6, 8)], 6: [(1, 2), (2, 3), (4, 5)]}
    if val_q == 4:  # not training: keeps its one valid candidate
        expected[4] = [(12, 13)]
    assert gathered(g) == expected
    assert g.seqs.shape == (len(expected), 3, 2) and g.shot_num == 2
    r = g.query_ids.tolist().index(1)
    assert g.pool[r].tolist() == [3, 4, 5, 6, 7] and g.pool_mask[r].all()
    assert g.seqs[r].tolist() == [[0, 1], [2, 0], [3, 4]]
    assert g.correct[r].tolist() == [1.0, 1.0, 0.0]
    assert g.acc[r].tolist() == pytest.approx([1.0, 0.6, 0.0])
    assert g.beam_score[r].tolist() == pytest.approx([1.2, 0.9, 0.0])  # null beam_score -> 0
    # padding is 0 and masked
    r2 = g.query_ids.tolist().index(2)
    assert g.seq_mask[r2].tolist() == [True, True, False] and g.seqs[r2, 2].tolist() == [0, 0]
    assert g.pool_mask[r2].tolist() == [True, True, True, True, False] and g.pool[r2, 4] == 0
    assert ds.embeddings is EMB or torch.equal(ds.embeddings, EMB)
    assert ds.pools[1].tolist() == [3, 4, 5, 6, 7] and ds.pools[4].tolist() == [12, 13]


def test_k64_local_pointers_map_to_pointer_global():
    ds, _, _ = build_dataset(embeddings=EMB, rl=RL_K64, data_cfg=everything_trains())
    raw = json.loads((FIXTURES / "rl_k64.json").read_text())
    want = {int(q): [tuple(c["pointer_global"]) for c in e["pointer_candidates"]]
            for q, e in raw.items() if q != "_meta"}
    assert gathered(ds.rl) == want
    r = ds.rl.query_ids.tolist().index(5)
    assert ds.rl.seqs[r, :2].tolist() == [[3, 0], [1, 2]]  # the file's local positions, unchanged


def test_balanced_variant_correct_from_acc():
    ds, _, _ = build_dataset(embeddings=EMB, rl=RL_BALANCED, beam=BEAM, data_cfg=everything_trains())
    r = ds.rl.query_ids.tolist().index(0)
    assert ds.rl.correct[r].tolist() == [1.0, 0.0, 1.0, 0.0]
    assert ds.rl.acc[r].tolist() == pytest.approx([0.3, 0.0, 1.0, 0.0])


def test_beam_groups():
    beam = {**BEAM, 4: BeamEntry(4, ((6, 6), (6, 7)), (0.5, 0.2))}
    ds, _, report = build_dataset(embeddings=EMB, beam=beam, pools=POOLS, data_cfg=everything_trains())
    b = ds.beam
    assert ds.rl is None and b.query_ids.tolist() == [3, 4, 9]
    assert gathered(b) == {3: [(12, 10), (11, 10), (13, 15)], 4: [(6, 7)], 9: [(1, 2), (2, 1)]}
    assert b.beam_score[0].tolist() == pytest.approx([0.05, 0.04, 0.03])
    assert b.correct.abs().sum() == 0 and b.acc.abs().sum() == 0
    assert report.counts() == {"beam_repeated_icd": 1}
    assert ds.pools[3].tolist() == POOLS[3] and ds.pools[4].tolist() == [6, 7]


def test_select_split_rows():
    ds, split, _ = build_dataset(embeddings=EMB, rl=RL_BALANCED, beam=BEAM, data_cfg=everything_trains())
    train = select_split(ds.rl, split.train)
    assert set(train.query_ids.tolist()) == set(ds.rl.query_ids.tolist()) & set(split.train.tolist())


def test_id_beyond_embedding_rows_names_query_and_field(tmp_path):
    torch.save(torch.randn(12, 4), tmp_path / "emb.pt")
    with pytest.raises(DataError) as err:
        load_dataset(embeddings=tmp_path / "emb.pt", rl=FIXTURES / "rl_global.json", data_cfg=DataConfig())
    msg = str(err.value)
    assert "rl_global.json: query 4: pointer_candidates[0].pointer: id 13" in msg
    assert "12 rows" in msg and str(tmp_path / "emb.pt") in msg
    with pytest.raises(DataError, match=r"rl_k64.json: query 3: candidate_pool_ids: id 15"):
        load_dataset(embeddings=tmp_path / "emb.pt", rl=FIXTURES / "rl_k64.json", data_cfg=DataConfig())
    msg = r"rl_balanced.json: query 0: pointer_candidates\[2\].pointer: id 6 .* 5 rows"
    with pytest.raises(DataError, match=msg):
        build_dataset(embeddings=torch.randn(5, 2), rl=RL_BALANCED, data_cfg=DataConfig(),
                      sources={"rl": "rl_balanced.json"})
    with pytest.raises(DataError, match=r"beam.json: query 3: id_list\[0\]"):
        load_dataset(embeddings=tmp_path / "emb.pt", beam=FIXTURES / "beam.json", data_cfg=DataConfig())
    torch.save(torch.randn(16, 4), tmp_path / "e16.pt")  # beam ids fit, pool ids 16 and 17 do not
    with pytest.raises(DataError, match=r"pools.json: query 3"):
        load_dataset(embeddings=tmp_path / "e16.pt", beam=FIXTURES / "beam.json",
                     pools=FIXTURES / "pools.json", data_cfg=DataConfig())
    with pytest.raises(DataError, match="query 9: query id"):
        build_dataset(embeddings=torch.randn(9, 4), beam={9: BEAM[9]}, data_cfg=DataConfig())


def test_build_rejects_bad_embeddings_and_empty_training_data():
    with pytest.raises(DataError, match="floating"):
        build_dataset(embeddings=torch.zeros(20, 4, dtype=torch.long), rl=RL_GLOBAL, data_cfg=DataConfig())
    nan = EMB.clone()
    nan[7, 1] = float("nan")
    with pytest.raises(DataError, match="row 7"):
        build_dataset(embeddings=nan, rl=RL_GLOBAL, data_cfg=DataConfig())
    with pytest.raises(DataError, match="no data"):
        build_dataset(embeddings=EMB, data_cfg=DataConfig())
    none_positive = {q: e for q, e in RL_GLOBAL.items() if q == 2}
    with pytest.raises(DataError, match="no training query left"):
        build_dataset(embeddings=EMB, rl={**none_positive, 3: RL_K64[3]},
                      data_cfg=DataConfig(require_positive_query=True, val_fraction=0.01, test_fraction=0.0,
                                          split_seed=_seed_putting_in_val(3, [2, 3])))


def _seed_putting_in_val(qid, ids):
    return next(s for s in range(100) if split_ids(ids, val_fraction=0.01, test_fraction=0.0,
                                                   seed=s).val.tolist() == [qid])
