"""A tiny, fully synthetic task: the loop's tests need no simulator and no files."""
import pytest
import torch

from trainer.config import from_dict
from trainer.data.groups import QueryGroups
from trainer.state import EvalSplit, Task


class HiddenVectorEvaluator:
    """P(correct) rises with the ICDs' alignment to a hidden direction: a learnable signal."""

    name = "hidden-vector"

    def __init__(self, embeddings: torch.Tensor, direction: torch.Tensor):
        self.score_of = torch.sigmoid(3 * embeddings @ direction)

    def score(self, query_ids, seqs):
        return self.score_of[seqs].mean(1).double()


def make_tiny_task(seed: int = 0, n_queries: int = 24, pool: int = 8, cands: int = 6, dim: int = 16,
                   hidden: int = 16, **overrides):
    g = torch.Generator().manual_seed(seed)
    n_items = 120
    emb = torch.nn.functional.normalize(torch.randn(n_items, dim, generator=g), dim=-1)
    direction = torch.nn.functional.normalize(torch.randn(dim, generator=g), dim=0)
    evaluator = HiddenVectorEvaluator(emb, direction)
    q_ids = torch.arange(n_queries)
    pools = torch.stack([torch.randperm(n_items - n_queries, generator=g)[:pool] + n_queries
                         for _ in range(n_queries)])
    seqs = torch.stack([torch.stack([torch.randperm(pool, generator=g)[:2] for _ in range(cands)])
                        for _ in range(n_queries)])
    seq_mask = torch.ones(n_queries, cands, dtype=torch.bool)
    seq_mask[::5, -1] = False  # some padded candidates
    p = evaluator.score(q_ids.repeat_interleave(cands), torch.gather(
        pools.unsqueeze(1).expand(-1, cands, -1), 2, seqs).reshape(-1, 2)).float().reshape(n_queries, cands)
    correct = (torch.rand(n_queries, cands, generator=g) < p).float() * seq_mask
    groups = QueryGroups(query_ids=q_ids, pool=pools, pool_mask=torch.ones_like(pools, dtype=torch.bool),
                         seqs=seqs, seq_mask=seq_mask, correct=correct, acc=correct * 0.8,
                         beam_score=torch.rand(n_queries, cands, generator=g) * seq_mask)
    beam = QueryGroups(query_ids=q_ids, pool=pools, pool_mask=groups.pool_mask, seqs=seqs[:, :3],
                       seq_mask=torch.ones(n_queries, 3, dtype=torch.bool), correct=correct[:, :3],
                       acc=correct[:, :3], beam_score=p[:, :3])
    train_idx = torch.arange(0, n_queries - 8)
    val_idx = torch.arange(n_queries - 8, n_queries - 4)
    test_idx = torch.arange(n_queries - 4, n_queries)
    cfg = from_dict({"hidden_dim": hidden, "sft_epochs": 2, "rce_epochs": 2, "grpo_epochs": 2,
                     "batch_size": 4, "sft_batch_size": 8, "grpo_lr": 1e-3, "rce_lr": 1e-3, **overrides})
    task = Task(model_cfg=cfg.model, embeddings=emb, train=groups.select(train_idx),
                beam_train=beam.select(train_idx),
                splits={"val": EvalSplit(val_idx, pools[val_idx], groups.pool_mask[val_idx]),
                        "test": EvalSplit(test_idx, pools[test_idx], groups.pool_mask[test_idx])},
                evaluator=evaluator)
    return cfg, task


@pytest.fixture
def tiny():
    return make_tiny_task
