"""The tensors every stage trains on: per-query candidate groups, padded with masks.

Shapes: Q queries, P pool slots, C candidate sequences per query, S = shot_num.
``pool`` holds *global* item ids (rows of the embedding matrix); ``seqs`` holds
*positions into the pool*, in prompt order, so the pointer network never sees
global ids. Padding is 0 everywhere and masked.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch


@dataclass
class QueryGroups:
    query_ids: torch.Tensor      # [Q] long, global ids of the queries
    pool: torch.Tensor           # [Q, P] long, global ids of each query's candidate pool
    pool_mask: torch.Tensor      # [Q, P] bool
    seqs: torch.Tensor           # [Q, C, S] long, positions into pool
    seq_mask: torch.Tensor       # [Q, C] bool
    correct: torch.Tensor        # [Q, C] float, vqa_correct in {0, 1}
    acc: torch.Tensor            # [Q, C] float, vqa_acc_score in [0, 1]
    beam_score: torch.Tensor     # [Q, C] float, quality (SFT pointer's summed probs; 0 if absent)

    @property
    def num_queries(self) -> int:
        return int(self.query_ids.shape[0])

    @property
    def shot_num(self) -> int:
        return int(self.seqs.shape[-1])

    def select(self, index: torch.Tensor) -> "QueryGroups":
        """Rows ``index`` (a [Q'] long or [Q] bool tensor) of every field."""
        return QueryGroups(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    def with_seq_mask(self, seq_mask: torch.Tensor) -> "QueryGroups":
        return replace(self, seq_mask=seq_mask)

    def to(self, device: torch.device | str) -> "QueryGroups":
        return QueryGroups(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})


@dataclass
class Dataset:
    """Everything one training run reads.

    ``rl`` holds the scored candidate groups (RCE/GRPO); ``beam`` the beam-search
    sequences for SFT (``correct``/``acc`` unused there, ``beam_score`` = the
    beam's InfoScore); both index the same ``embeddings``. ``pools`` gives the
    evaluation pool of every query id that can be evaluated.
    """

    embeddings: torch.Tensor     # [N, d] float32
    rl: QueryGroups | None
    beam: QueryGroups | None
    pools: dict[int, torch.Tensor]  # query id -> [P_q] long global ids
