"""The v2 pointer selector (Lever-Plus ``PointerSelectorV2`` with the V4-1 query gate).

Shapes: B queries, P pool slots, C candidate sequences per query, S steps
(shot_num), d input embedding width, H = ``hidden_dim``.

A query embedding and its pool's candidate embeddings are projected to H; the
query token cross-attends over the candidate tokens; both sides are projected
and L2-normalised; then, step by step, the selector scores every pool slot by
cosine similarity / ``TAU``, masks slots that are padding or already chosen,
and folds the chosen candidate into the query state through a learned gate.
Training always teacher-forces the chosen slot; decoding takes the argmax.

Parameter names equal Lever-Plus's un-prefixed v2 names, so a v2 checkpoint
loads strictly once ``lever_lm.pointer_selector.`` is stripped.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

TAU = 0.1
"""Fixed softmax temperature of the pointer scores (not learned, not saved), as in Lever-Plus."""

MASK_VALUE = -1e4
"""Logit of a padded or already-chosen slot. Finite so that masked rows never produce NaN
(log_softmax of -inf minus -inf), yet exp(-1e4 - 10) underflows to exactly 0 in float32,
and it fits in float16. Lever-Plus used -100, which leaves ~1e-48 of mass per slot."""


class PointerSelector(nn.Module):
    """Cross-attention pointer network that selects an ordered sequence of pool slots.

    Args:
        d_in: width of the query/candidate embeddings (512 for Lever-Plus's CLIP ViT-B/32).
        hidden_dim: width H of the projected space.
        num_layers: cross-attention layers; 0 is the v1-style bi-encoder (no attention).
        num_heads: attention heads (must divide ``hidden_dim``).
        dropout: dropout on the projected query and candidate tokens (train mode only).
        attn_dropout: dropout on the attention weights (train mode only).

    Dropout sits where Lever-Plus put it: ``q0 = normalize(dropout(W_q h))`` and
    ``c = normalize(dropout(W_c C))``. One dropout sample is drawn per query and shared
    by all C candidate sequences of that query in a forward pass.
    """

    def __init__(self, d_in: int, hidden_dim: int = 256, num_layers: int = 1, num_heads: int = 1,
                 dropout: float = 0.5, attn_dropout: float = 0.1) -> None:
        super().__init__()
        if hidden_dim % num_heads:
            raise ValueError(f"num_heads={num_heads} must divide hidden_dim={hidden_dim}")
        self.d_in, self.hidden_dim, self.num_layers = d_in, hidden_dim, num_layers
        # Always a Linear (Lever-Plus swapped in Identity when d_in == hidden_dim), so the
        # state-dict keys do not depend on the embedding width.
        self.input_proj = nn.Linear(d_in, hidden_dim, bias=False)
        self.cross_attn_layers = nn.ModuleList([
            nn.MultiheadAttention(hidden_dim, num_heads, dropout=attn_dropout, batch_first=True)
            for _ in range(num_layers)])
        self.attn_norms = nn.ModuleList([nn.LayerNorm(hidden_dim) for _ in range(num_layers)])
        self.query_proj = nn.Linear(hidden_dim, hidden_dim, bias=False)
        self.cand_proj = nn.Linear(hidden_dim, hidden_dim, bias=False)
        self.query_update_gate = nn.Linear(2 * hidden_dim, hidden_dim)
        self.dropout = nn.Dropout(dropout)
        self._init_weights()

    @classmethod
    def from_config(cls, cfg, d_in: int) -> "PointerSelector":
        """Build from a :class:`trainer.config.ModelConfig` (``label_smoothing`` is a loss
        setting, passed to :meth:`sequence_nll` by the caller)."""
        return cls(d_in, hidden_dim=cfg.hidden_dim, num_layers=cfg.num_layers, num_heads=cfg.num_heads,
                   dropout=cfg.dropout, attn_dropout=cfg.attn_dropout)

    def _init_weights(self) -> None:
        nn.init.xavier_uniform_(self.input_proj.weight)
        # Near-identity so that the initial score is the cosine of the (attended) projections.
        with torch.no_grad():
            for proj in (self.query_proj, self.cand_proj):
                proj.weight.copy_(torch.eye(self.hidden_dim) + 0.01 * torch.randn_like(proj.weight))
        nn.init.xavier_uniform_(self.query_update_gate.weight)
        nn.init.zeros_(self.query_update_gate.bias)

    # ------------------------------------------------------------------ encoder

    def encode(self, query_emb: torch.Tensor, cand_emb: torch.Tensor,
               pool_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Initial query state and candidate keys.

        Args:
            query_emb: [B, d] float.
            cand_emb: [B, P, d] float.
            pool_mask: [B, P] bool, True at real pool slots.

        Returns:
            q0 [B, H] and cands [B, P, H], both unit-norm rows.

        The pool costs most of the FLOPs, so it is touched as little as possible (the
        result equals the textbook ``MHA(W_in q, W_in C, W_in C)`` form up to rounding):
        attention runs on the query side (one query token: the key/value projections are
        applied to it, not to all P candidates) and, once a batch has at least ``d`` pool
        rows, ``cand_proj`` and ``input_proj`` are multiplied first so that the pool goes
        through one d -> H product instead of d -> H -> H.
        """
        h = self.input_proj(query_emb)                              # [B, H]
        fused = cand_emb.shape[0] * cand_emb.shape[1] >= self.d_in
        # Fused: attention reads the raw [B, P, d] embeddings; else the projected [B, P, H].
        memory = cand_emb if fused else self.input_proj(cand_emb)
        # A query with no valid slot would make every attention key masked and the softmax
        # NaN; such a row is padding anyway, so let it attend over its padded slots.
        ignore = ~pool_mask & pool_mask.any(dim=-1, keepdim=True)
        for attn, norm in zip(self.cross_attn_layers, self.attn_norms):
            h = norm(self._attend(attn, h, memory, ignore, raw=fused) + h)
        q0 = F.normalize(self.dropout(self.query_proj(h)), dim=-1)
        if fused:
            keys = F.linear(cand_emb, self.cand_proj.weight @ self.input_proj.weight)
        else:
            keys = self.cand_proj(memory)
        return q0, F.normalize(self.dropout(keys), dim=-1)

    def _attend(self, attn: nn.MultiheadAttention, h: torch.Tensor, memory: torch.Tensor,
                ignore: torch.Tensor, raw: bool) -> torch.Tensor:
        """``attn(h, W_in C, W_in C)`` for one query token per row, without projecting the pool.

        Args:
            h: [B, H] query state; memory: [B, P, d] raw embeddings if ``raw`` else [B, P, H]
            projected ones; ignore: [B, P] bool key padding mask.

        Returns:
            [B, H], the module's output (same parameters, same attention dropout).
        """
        b, n = h.shape[0], attn.num_heads
        dh = self.hidden_dim // n
        w_q, w_k, w_v = attn.in_proj_weight.chunk(3)
        b_q, _, b_v = attn.in_proj_bias.chunk(3)   # the key bias adds a per-row constant: softmax drops it
        q = F.linear(h, w_q, b_q).view(b, n, dh) * dh ** -0.5
        u = torch.einsum("bne,nei->bni", q, w_k.view(n, dh, -1))    # [B, n, H]: q.(W_k c) = (W_k^T q).c
        if raw:
            u = u @ self.input_proj.weight                          # [B, n, d]
        scores = torch.einsum("bni,bpi->bnp", u, memory).masked_fill(ignore.unsqueeze(1), -math.inf)
        weights = F.dropout(scores.softmax(-1), attn.dropout, self.training)   # [B, n, P]
        z = torch.einsum("bnp,bpi->bni", weights, memory)           # weighted pool, before W_v
        if raw:
            z = F.linear(z, self.input_proj.weight)                 # [B, n, H]
        out = torch.einsum("bni,nei->bne", z, w_v.view(n, dh, -1))
        out = out + weights.sum(-1, keepdim=True) * b_v.view(n, dh)  # dropout leaves sum(weights) != 1
        return attn.out_proj(out.reshape(b, self.hidden_dim))

    def _update_query(self, q: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
        """V4-1 gate: q' = normalize(g*q + (1-g)*c), g = sigmoid(W_g[q; c] + b_g).

        Shapes [..., H]; ``q`` may broadcast against ``chosen`` ([B, 1, H] vs [B, C, H]):
        W_g is applied in halves, so a state shared by C sequences is multiplied once.
        """
        w = self.query_update_gate.weight
        g = torch.sigmoid(F.linear(q, w[:, : self.hidden_dim], self.query_update_gate.bias)
                          + F.linear(chosen, w[:, self.hidden_dim:]))
        return F.normalize(g * q + (1 - g) * chosen, dim=-1)

    # ------------------------------------------------------------ teacher forcing

    def _teacher_forced(self, q0: torch.Tensor, cands: torch.Tensor, pool_mask: torch.Tensor,
                        labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Masked logits [B, C, S, P] and the matching bool ``allowed`` mask [B, C, S, P]."""
        b, c, s = labels.shape
        # Until the first update every sequence of a query has the same state, so step 0
        # is scored once per query ([B, 1, H]) and broadcast.
        q = q0.unsqueeze(1)
        chosen_mask = torch.zeros(b, c, cands.shape[1], dtype=torch.bool, device=cands.device)
        padded = ~pool_mask.unsqueeze(1)                                # [B, 1, P]
        logits, allowed = [], []
        for t in range(s):
            blocked = chosen_mask | padded                              # [B, C, P]
            scores = torch.einsum("bch,bph->bcp", q, cands) / TAU       # [B, 1 or C, P]
            logits.append(scores.masked_fill(blocked, MASK_VALUE))
            allowed.append(~blocked)
            a = labels[:, :, t]                                         # [B, C]
            chosen_mask = chosen_mask.scatter(2, a.unsqueeze(-1), True)
            if t + 1 < s:  # the last update would feed no score
                c_a = cands.gather(1, a.unsqueeze(-1).expand(b, c, cands.shape[-1]))  # [B, C, H]
                q = self._update_query(q, c_a)
        return torch.stack(logits, dim=2), torch.stack(allowed, dim=2)

    def step_logits(self, q0: torch.Tensor, cands: torch.Tensor, pool_mask: torch.Tensor,
                    labels: torch.Tensor) -> torch.Tensor:
        """Teacher-forced step logits.

        Args:
            q0: [B, H], cands: [B, P, H] from :meth:`encode`.
            pool_mask: [B, P] bool.
            labels: [B, C, S] long, positions into the pool in prompt order.

        Returns:
            [B, C, S, P] float; step t of sequence c masks the padded slots and
            ``labels[:, c, :t]`` with ``MASK_VALUE``.
        """
        return self._teacher_forced(q0, cands, pool_mask, labels)[0]

    def _log_probs(self, query_emb, cand_emb, pool_mask, labels):
        q0, cands = self.encode(query_emb, cand_emb, pool_mask)
        logits, allowed = self._teacher_forced(q0, cands, pool_mask, labels)
        return torch.log_softmax(logits, dim=-1), allowed

    def sequence_nll(self, query_emb: torch.Tensor, cand_emb: torch.Tensor, pool_mask: torch.Tensor,
                     labels: torch.Tensor, *, label_smoothing: float = 0.0,
                     seq_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Per-sequence cross-entropy summed over steps, with label smoothing.

        Step t's loss is ``(1-eps) * -log p(label) + eps * mean_k -log p(k)`` where the mean
        runs over the slots still *allowed* at that step (not padding, not already chosen):
        smoothing mass on masked slots would be a constant ~1e4 penalty with no meaning
        (Lever-Plus clamped logits at -100 and smoothed over all K instead).

        Args:
            query_emb: [B, d]; cand_emb: [B, P, d]; pool_mask: [B, P] bool.
            labels: [B, C, S] long.
            label_smoothing: eps in [0, 1).
            seq_mask: optional [B, C] bool; padded sequences get exactly 0.

        Returns:
            [B, C] float, equal to ``-sequence_logp`` when ``label_smoothing == 0``. A label
            at a masked slot (padding, or a repeat) costs ~1e4 per step.
        """
        logp, allowed = self._log_probs(query_emb, cand_emb, pool_mask, labels)
        picked = logp.gather(-1, labels.unsqueeze(-1)).squeeze(-1)      # [B, C, S]
        nll = -picked
        if label_smoothing:
            n_allowed = allowed.sum(-1).clamp(min=1)
            uniform = -torch.where(allowed, logp, 0.0).sum(-1) / n_allowed
            nll = (1 - label_smoothing) * nll + label_smoothing * uniform
        return _mask_seqs(nll.sum(-1), seq_mask)

    def sequence_logp(self, query_emb: torch.Tensor, cand_emb: torch.Tensor, pool_mask: torch.Tensor,
                      labels: torch.Tensor, *, label_smoothing: float = 0.0,
                      seq_mask: torch.Tensor | None = None) -> torch.Tensor:
        """log pi(sequence) = sum_t log_softmax(logits_t)[label_t], teacher-forced. [B, C].

        Same arguments as :meth:`sequence_nll`, of which this is the negative; with
        ``label_smoothing > 0`` it is the smoothed target's log-likelihood, which is *not* a
        policy log-probability: GRPO ratios and KL must use the default 0.
        """
        return -self.sequence_nll(query_emb, cand_emb, pool_mask, labels,
                                  label_smoothing=label_smoothing, seq_mask=seq_mask)

    @torch.no_grad()
    def reference_logp(self, query_emb: torch.Tensor, cand_emb: torch.Tensor, pool_mask: torch.Tensor,
                       labels: torch.Tensor, *, seq_mask: torch.Tensor | None = None) -> torch.Tensor:
        """:meth:`sequence_logp` in eval mode (no dropout), without grad; [B, C].

        Old/reference log-probs are always dropout-free; the module's train/eval mode is
        restored afterwards.
        """
        with self._eval_mode():
            return self.sequence_logp(query_emb, cand_emb, pool_mask, labels, seq_mask=seq_mask)

    # ------------------------------------------------------------------- decoding

    @torch.no_grad()
    def decode(self, query_emb: torch.Tensor, cand_emb: torch.Tensor, pool_mask: torch.Tensor,
               k: int) -> torch.Tensor:
        """Greedy decoding of k distinct pool positions per query, in prompt order.

        Runs in eval mode (greedy decoding with dropout noise is never wanted) and restores
        the previous mode. k may exceed the training shot_num; the gate keeps updating.

        Args:
            query_emb: [B, d]; cand_emb: [B, P, d]; pool_mask: [B, P] bool.
            k: number of positions, 0 <= k <= the smallest number of valid slots in the batch.

        Returns:
            [B, k] long positions into the pool.

        Raises:
            ValueError: if k is negative or some query has fewer than k valid slots.
        """
        n_valid = int(pool_mask.sum(-1).min())
        if not 0 <= k <= n_valid:
            raise ValueError(f"decode: k={k} must be in [0, {n_valid}] (the fewest valid pool slots "
                             f"of any query in the batch)")
        with self._eval_mode():
            q, cands = self.encode(query_emb, cand_emb, pool_mask)
            blocked = ~pool_mask
            picks = []
            for _ in range(k):
                scores = (torch.einsum("bh,bph->bp", q, cands) / TAU).masked_fill(blocked, MASK_VALUE)
                a = scores.argmax(dim=-1)                               # [B]
                picks.append(a)
                blocked = blocked.scatter(1, a.unsqueeze(-1), True)
                c_a = cands.gather(1, a.view(-1, 1, 1).expand(-1, 1, cands.shape[-1])).squeeze(1)
                q = self._update_query(q, c_a)
        if not picks:
            return torch.zeros(pool_mask.shape[0], 0, dtype=torch.long, device=pool_mask.device)
        return torch.stack(picks, dim=1)

    @contextmanager
    def _eval_mode(self) -> Iterator[None]:
        was_training = self.training
        self.eval()
        try:
            yield
        finally:
            self.train(was_training)


def _mask_seqs(values: torch.Tensor, seq_mask: torch.Tensor | None) -> torch.Tensor:
    return values if seq_mask is None else torch.where(seq_mask, values, torch.zeros_like(values))
