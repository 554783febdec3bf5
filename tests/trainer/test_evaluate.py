"""Evaluators and decoding: the lookup of recorded outcomes, chunked decodes."""
import math

import torch

from tests.trainer.conftest import make_tiny_task
from trainer.data.groups import QueryGroups
from trainer.evaluate import LookupEvaluator, decode_sequences, queries_per_chunk
from trainer.model import PointerSelector


def recorded_groups() -> QueryGroups:
    """Query 7: pool [10, 11, 12], two recorded pairs; query 3: pool [20, 21], one pair (and a padded slot)."""
    return QueryGroups(
        query_ids=torch.tensor([7, 3]), pool=torch.tensor([[10, 11, 12], [20, 21, 0]]),
        pool_mask=torch.tensor([[True, True, True], [True, True, False]]),
        seqs=torch.tensor([[[0, 1], [2, 0]], [[1, 0], [0, 0]]]), seq_mask=torch.tensor([[True, True], [True, False]]),
        correct=torch.tensor([[1.0, 0.0], [1.0, 0.0]]), acc=torch.tensor([[1.0, 0.0], [0.5, 0.0]]),
        beam_score=torch.zeros(2, 2))


def test_lookup_returns_the_recorded_outcome_of_exactly_that_ordered_sequence():
    ev = LookupEvaluator.from_groups(recorded_groups())
    assert ev.shots == {2}
    q = torch.tensor([7, 7, 3, 3, 7, 5])
    seqs = torch.tensor([[10, 11], [12, 10], [21, 20], [20, 21], [11, 10], [10, 11]])
    got = ev.score(q, seqs).tolist()
    assert got[:3] == [1.0, 0.0, 0.5]
    assert all(math.isnan(x) for x in got[3:])   # reversed order, reversed pair, unknown query
    assert all(math.isnan(x) for x in ev.score(torch.tensor([7]), torch.tensor([[10]])).tolist())  # other shot
    assert ev.score(torch.tensor([], dtype=torch.long), torch.zeros(0, 2, dtype=torch.long)).shape == (0,)
    assert ev.query_ids.tolist() == [3, 7]       # sorted for the search, whatever the groups' order


def test_lookup_ignores_padded_candidates_and_keeps_the_last_repeat():
    g = recorded_groups()
    # query 3's padded slot holds the pair (20, 20); a repeat of query 7's first pair with another outcome
    g.seqs = torch.cat([g.seqs, torch.tensor([[[0, 1]], [[0, 0]]])], 1)
    g.seq_mask = torch.cat([g.seq_mask, torch.tensor([[True], [False]])], 1)
    g.acc = torch.cat([g.acc, torch.tensor([[0.25], [0.0]])], 1)
    ev = LookupEvaluator.from_groups(g)
    assert ev.score(torch.tensor([7]), torch.tensor([[10, 11]])).tolist() == [0.25]
    assert math.isnan(ev.score(torch.tensor([3]), torch.tensor([[20, 20]])).item())


def test_decoding_in_chunks_equals_one_chunk():
    cfg, task = make_tiny_task()
    torch.manual_seed(0)
    model = PointerSelector(16, hidden_dim=16)
    g = task.train
    whole = decode_sequences(model, task.embeddings, g.query_ids, g.pool, g.pool_mask, 3, chunk=len(g.query_ids))
    parts = decode_sequences(model, task.embeddings, g.query_ids, g.pool, g.pool_mask, 3, chunk=5)
    assert whole.keys() == parts.keys() == {1, 2, 3}
    assert all(torch.equal(whole[k], parts[k]) for k in whole)


def test_chunks_are_bounded_by_bytes_not_by_queries():
    assert queries_per_chunk(64, 512) == 64           # 8 MB of [64, 512] float32 pools
    assert queries_per_chunk(64, 16) == 2048 and queries_per_chunk(10**6, 10**6) == 1
