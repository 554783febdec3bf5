"""Mini-batches of query groups and the schedules the loops step through."""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Iterator

import torch

from trainer.data.groups import QueryGroups


@dataclass
class Batch:
    """``batch_size`` query groups, all candidates of each in one forward."""

    index: torch.Tensor       # [B] rows of the QueryGroups
    query_emb: torch.Tensor   # [B, d]
    cand_emb: torch.Tensor    # [B, P, d]
    pool_mask: torch.Tensor   # [B, P]
    seqs: torch.Tensor        # [B, C, S]
    seq_mask: torch.Tensor    # [B, C]

    def take_sequences(self, keep: torch.Tensor) -> tuple["Batch", torch.Tensor]:
        """The batch cut to the sequences ``keep`` [B, C] marks, and their columns [B, K].

        K is the largest number kept by one query; columns stay in their original order
        (stable), so ties among the kept sequences break as they did before the cut. The
        pool is untouched: the encoder's cost does not depend on C, the decoder's does.
        """
        k = max(int(keep.sum(1).max()) if keep.numel() else 0, 1)   # never an empty C axis
        cols = torch.sort(keep.to(torch.uint8), dim=1, descending=True, stable=True).indices[:, :k]
        seqs = self.seqs.gather(1, cols.unsqueeze(-1).expand(-1, -1, self.seqs.shape[-1]))
        return replace(self, seqs=seqs, seq_mask=keep.gather(1, cols)), cols


def make_batch(groups: QueryGroups, index: torch.Tensor, embeddings: torch.Tensor,
               device: torch.device) -> Batch:
    # Trim padding to this batch's widest pool / group: with batch_size=1 most
    # of a globally padded tensor would be masked work.
    pool_mask = groups.pool_mask[index]
    seq_mask = groups.seq_mask[index]
    p = int(pool_mask.sum(1).max())
    c = int(seq_mask.sum(1).max())
    pool = groups.pool[index, :p]
    return Batch(
        index=index,
        query_emb=embeddings[groups.query_ids[index]].float().to(device),
        cand_emb=embeddings[pool].float().to(device),
        pool_mask=pool_mask[:, :p].to(device),
        seqs=groups.seqs[index, :c].to(device),
        seq_mask=seq_mask[:, :c].to(device),
    )


def batch_indices(n: int, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """A fresh permutation of ``range(n)`` cut into batches (the last may be smaller)."""
    order = torch.randperm(n, generator=generator)
    for start in range(0, n, batch_size):
        yield order[start:start + batch_size]


def steps_per_epoch(n: int, batch_size: int) -> int:
    return math.ceil(n / batch_size)


def lr_scheduler(optimizer: torch.optim.Optimizer, schedule: str, warmup_ratio: float,
                 total_steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    """Constant, or linear warm-up then cosine decay (transformers' schedule) over one stage."""
    if schedule == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    from transformers import get_cosine_schedule_with_warmup

    return get_cosine_schedule_with_warmup(optimizer, int(warmup_ratio * total_steps), max(total_steps, 1))


def rce_temperature(step: int, total_steps: int, start: float, end: float) -> float:
    """tau annealed linearly per optimiser step: tau(s) = start + (end - start) * clip(s / (S - 1), 0, 1)."""
    frac = min(max(step / max(total_steps - 1, 1), 0.0), 1.0)
    return start + (end - start) * frac
