"""On-policy sampling and scoring for ``algorithm: online_grpo``.

The offline algorithms train on the recorded candidate groups; online GRPO
instead samples G sequences per training query from the current policy and
asks a reward oracle, ``Task.evaluator``, how good each one is. With the
embedded benchmark in ``eval_mode: exact`` the reward is the oracle's
P(correct) of the prompt; in ``sampled`` mode it is a 0/1 outcome; with
``--evaluator module:function`` it is whatever that function returns (NaN =
unscored: the sample is left out of its group). The lookup evaluator knows only
the recorded sequences, so it cannot be an oracle and is refused.

Shapes: B queries, P pool slots, G samples per query, k = shot_num.
"""
from __future__ import annotations

import torch

from trainer.errors import ConfigError
from trainer.evaluate import LookupEvaluator


def check_oracle(evaluator) -> None:
    """Refuse evaluators that cannot score arbitrary sequences (one line, names the field)."""
    if isinstance(evaluator, LookupEvaluator):
        raise ConfigError("algorithm: online_grpo scores the policy's own samples, which the lookup evaluator "
                          "cannot (it knows only recorded sequences); use the embedded benchmark or "
                          "--evaluator module:function")


@torch.no_grad()
def sample_sequences(model, query_emb: torch.Tensor, cand_emb: torch.Tensor, pool_mask: torch.Tensor, *,
                     k: int, num_samples: int, generator: torch.Generator,
                     temperature: float = 1.0) -> torch.Tensor:
    """G sequences of k distinct pool positions per query, sampled step by step from the policy.

    Step t draws from ``softmax(logits_t / temperature)`` over the slots still allowed
    (padding and earlier picks carry ``MASK_VALUE`` and get probability 0). Runs in eval
    mode, so the sampling policy is the dropout-free one whose log-probs
    ``reference_logp`` returns; the module's mode is restored afterwards. The logits
    come from the model's public teacher-forced ``step_logits`` fed the picks so far.

    Args:
        model: a :class:`trainer.model.PointerSelector`.
        query_emb: [B, d]; cand_emb: [B, P, d]; pool_mask: [B, P] bool.
        k: positions per sequence, at most the fewest valid slots of any query.
        num_samples: G >= 1.
        generator: the (CPU) stream of the draws.
        temperature: > 0.

    Returns:
        [B, G, k] long positions into the pool, distinct within each sequence.
    """
    n_valid = int(pool_mask.sum(-1).min()) if pool_mask.numel() else 0
    if not 0 < k <= n_valid:
        raise ValueError(f"sample_sequences: k={k} must be in [1, {n_valid}] (the fewest valid pool slots)")
    if not temperature > 0:
        raise ValueError(f"sample_sequences: temperature must be > 0, got {temperature}")
    was_training = model.training
    model.eval()
    try:
        q0, cands = model.encode(query_emb, cand_emb, pool_mask)
        b = query_emb.shape[0]
        picks = torch.zeros(b, num_samples, 0, dtype=torch.long, device=query_emb.device)
        placeholder = torch.zeros(b, num_samples, 1, dtype=torch.long, device=query_emb.device)
        for t in range(k):
            # the label at step t only feeds steps after t, so a placeholder is enough
            labels = torch.cat([picks, placeholder], dim=-1)
            logits = model.step_logits(q0, cands, pool_mask, labels)[:, :, t]      # [B, G, P]
            probs = torch.softmax(logits.float() / temperature, dim=-1).reshape(b * num_samples, -1)
            a = torch.multinomial(probs.cpu(), 1, generator=generator).to(picks.device)
            picks = torch.cat([picks, a.view(b, num_samples, 1)], dim=-1)
    finally:
        model.train(was_training)
    return picks


def score_samples(evaluator, query_ids: torch.Tensor, pool: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """The oracle's reward of every sample: [B, G] float (NaN where it cannot score).

    Args:
        evaluator: ``score(query_ids [Q], seqs [Q, k] global ids) -> [Q]``.
        query_ids: [B] global ids; pool: [B, P] global ids; positions: [B, G, k] into the pool.
    """
    b, g, k = positions.shape
    seqs = torch.gather(pool.unsqueeze(1).expand(b, g, pool.shape[-1]), 2, positions.cpu())  # [B, G, k]
    scores = evaluator.score(query_ids.repeat_interleave(g), seqs.reshape(b * g, k))
    return torch.as_tensor(scores, dtype=torch.float32).reshape(b, g)

