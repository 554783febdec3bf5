"""Batches: padding trimmed to the batch, sequence cuts, schedules."""
import torch

from tests.trainer.conftest import make_tiny_task
from trainer.batching import make_batch, rce_temperature


def test_take_sequences_keeps_the_marked_sequences_in_order():
    _, task = make_tiny_task()
    b = make_batch(task.train, torch.tensor([0, 1, 2]), task.embeddings, task.device)
    keep = torch.zeros_like(b.seq_mask)
    keep[0, [4, 1]] = True        # two, given out of order
    keep[2, 3] = True             # one
    cut, cols = b.take_sequences(keep)                   # query 1 keeps nothing
    assert cols.shape == (3, 2) and cut.seqs.shape == (3, 2, 2)
    assert cols[0].tolist() == [1, 4] and cols[2, 0] == 3
    assert torch.equal(cut.seqs[0], b.seqs[0, [1, 4]]) and torch.equal(cut.seqs[2, 0], b.seqs[2, 3])
    assert cut.seq_mask.tolist() == [[True, True], [False, False], [True, False]]
    assert cut.cand_emb is b.cand_emb and cut.pool_mask is b.pool_mask      # the pool is not copied
    empty, _ = b.take_sequences(torch.zeros_like(b.seq_mask))
    assert empty.seqs.shape == (3, 1, 2) and not empty.seq_mask.any()


def test_make_batch_trims_padding_to_the_batch():
    _, task = make_tiny_task()
    g = task.train
    g.seq_mask[:2, -1] = False
    b = make_batch(g, torch.tensor([0, 1]), task.embeddings, task.device)
    assert b.seqs.shape[1] == g.seq_mask.shape[1] - 1 and b.cand_emb.shape == (2, g.pool.shape[1], 16)
    assert torch.equal(b.query_emb, task.embeddings[g.query_ids[:2]])


def test_rce_temperature_is_annealed_linearly_per_step():
    assert rce_temperature(0, 5, 2.0, 0.5) == 2.0 and rce_temperature(4, 5, 2.0, 0.5) == 0.5
    assert rce_temperature(2, 5, 2.0, 0.5) == 1.25 and rce_temperature(9, 5, 2.0, 0.5) == 0.5
