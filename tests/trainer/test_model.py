"""PointerSelector: the batched teacher-forced/greedy paths against a plain per-sequence loop."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from trainer.config import ModelConfig
from trainer.model import MASK_VALUE, TAU, PointerSelector

D_IN, HIDDEN = 12, 8


def small_model(num_layers: int = 1, num_heads: int = 2, dropout: float = 0.5,
                seed: int = 0) -> PointerSelector:
    torch.manual_seed(seed)
    return PointerSelector(D_IN, hidden_dim=HIDDEN, num_layers=num_layers, num_heads=num_heads,
                           dropout=dropout, attn_dropout=0.1)


def make_batch(seed: int = 0, shots: int = 2):
    """B=3 queries, P=7 slots, C=4 sequences. Query 1 has 2 padded slots in the middle of
    its pool, query 2 has 3 at the end; padded slots hold garbage embeddings so leakage
    would show. Query 2's last sequence is padding (labels [0, 0, ...], a repeat)."""
    g = torch.Generator().manual_seed(seed)
    b, p, c = 3, 7, 4
    query = torch.randn(b, D_IN, generator=g)
    cands = torch.randn(b, p, D_IN, generator=g)
    pool_mask = torch.ones(b, p, dtype=torch.bool)
    pool_mask[1, [2, 4]] = False
    pool_mask[2, 4:] = False
    labels = torch.zeros(b, c, shots, dtype=torch.long)
    seq_mask = torch.ones(b, c, dtype=torch.bool)
    for i in range(b):
        valid = pool_mask[i].nonzero().squeeze(1)
        for j in range(c):
            labels[i, j] = valid[torch.randperm(len(valid), generator=g)[:shots]]
    labels[2, 3] = 0
    seq_mask[2, 3] = False
    return query, cands, pool_mask, labels, seq_mask


# ---------------------------------------------------------------- reference loop
# One query, one sequence at a time, on the *compacted* pool (padded slots removed),
# excluded slots at -inf: an independent restatement of the architecture.


def loop_encode(m: PointerSelector, query: torch.Tensor, cands: torch.Tensor):
    h = m.input_proj(query)                       # [H]
    keys = m.input_proj(cands)                    # [P', H]
    for attn, norm in zip(m.cross_attn_layers, m.attn_norms):
        out, _ = attn(h[None, None], keys[None], keys[None])
        h = norm(out[0, 0] + h)
    return F.normalize(m.query_proj(h), dim=-1), F.normalize(m.cand_proj(keys), dim=-1)


def loop_gate(m, q, c):
    g = torch.sigmoid(m.query_update_gate(torch.cat([q, c])))
    return F.normalize(g * q + (1 - g) * c, dim=-1)


def loop_nll(m, query, cands, seq, label_smoothing=0.0):
    q, keys = loop_encode(m, query, cands)
    chosen, total = [], torch.zeros(())
    for a in seq:
        scores = keys @ q / TAU
        allowed = [k for k in range(len(keys)) if k not in chosen]
        logp = torch.log_softmax(scores[allowed], dim=0)
        step = -logp[allowed.index(a)]
        total = total + (1 - label_smoothing) * step + label_smoothing * -logp.mean()
        chosen.append(a)
        q = loop_gate(m, q, keys[a])
    return total


def loop_decode(m, query, cands, k):
    q, keys = loop_encode(m, query, cands)
    chosen = []
    for _ in range(k):
        scores = keys @ q / TAU
        for a in chosen:
            scores[a] = -math.inf
        a = int(scores.argmax())
        chosen.append(a)
        q = loop_gate(m, q, keys[a])
    return chosen


def compact(pool_mask_row):
    """Batched position -> compact position, and the list of valid batched positions."""
    valid = pool_mask_row.nonzero().squeeze(1).tolist()
    return {pos: i for i, pos in enumerate(valid)}, valid


# ---------------------------------------------------------------------------- tests


def test_default_parameter_count_matches_lever_plus_v2_with_gate():
    m = PointerSelector(512)
    counts = {name: sum(p.numel() for p in mod.parameters()) for name, mod in m.named_children()}
    # 512*256 | 3*256*256 + 3*256 + 256*256 + 256 | 2*256 | 256*256 each | 512*256 + 256
    assert counts == {"input_proj": 131_072, "cross_attn_layers": 263_168, "attn_norms": 512,
                      "query_proj": 65_536, "cand_proj": 65_536, "query_update_gate": 131_328,
                      "dropout": 0}
    assert sum(p.numel() for p in m.parameters()) == 657_152


def test_state_dict_keys_are_lever_plus_v2_names():
    m = PointerSelector(512, num_layers=2)
    shapes = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    expected = {"input_proj.weight": (256, 512), "query_proj.weight": (256, 256),
                "cand_proj.weight": (256, 256), "query_update_gate.weight": (256, 512),
                "query_update_gate.bias": (256,)}
    for layer in range(2):
        expected.update({f"cross_attn_layers.{layer}.in_proj_weight": (768, 256),
                         f"cross_attn_layers.{layer}.in_proj_bias": (768,),
                         f"cross_attn_layers.{layer}.out_proj.weight": (256, 256),
                         f"cross_attn_layers.{layer}.out_proj.bias": (256,),
                         f"attn_norms.{layer}.weight": (256,), f"attn_norms.{layer}.bias": (256,)})
    assert shapes == expected
    # A prefix-stripped v2 state dict round-trips strictly.
    PointerSelector(512, num_layers=2).load_state_dict(m.state_dict(), strict=True)


def test_initialisation_follows_lever_plus():
    m = PointerSelector(512)
    eye = torch.eye(256)
    for proj in (m.query_proj, m.cand_proj):
        off = proj.weight.detach() - eye
        assert 0.005 < off.std() < 0.02          # identity + N(0, 0.01^2)
    assert torch.all(m.query_update_gate.bias == 0)
    assert "temperature" not in dict(m.named_buffers())   # TAU is a constant, not state


def test_from_config_uses_every_architecture_field():
    cfg = ModelConfig(num_layers=2, hidden_dim=16, num_heads=4, dropout=0.2, attn_dropout=0.05)
    m = PointerSelector.from_config(cfg, d_in=10)
    assert m.input_proj.weight.shape == (16, 10)
    assert len(m.cross_attn_layers) == 2 and m.cross_attn_layers[0].num_heads == 4
    assert m.cross_attn_layers[0].dropout == 0.05 and m.dropout.p == 0.2


def test_num_heads_must_divide_hidden_dim():
    with pytest.raises(ValueError, match="num_heads"):
        PointerSelector(8, hidden_dim=10, num_heads=3)


@pytest.mark.parametrize("num_layers", [0, 1, 2])
@pytest.mark.parametrize("shots", [2, 3])
def test_batched_sequence_logp_equals_per_sequence_loop(num_layers, shots):
    m = small_model(num_layers=num_layers).eval()
    query, cands, pool_mask, labels, seq_mask = make_batch(seed=num_layers, shots=shots)
    with torch.no_grad():
        batched = m.sequence_logp(query, cands, pool_mask, labels, seq_mask=seq_mask)
        expected = torch.zeros_like(batched)
        for i in range(query.shape[0]):
            to_compact, valid = compact(pool_mask[i])
            for j in range(labels.shape[1]):
                if seq_mask[i, j]:
                    seq = [to_compact[int(a)] for a in labels[i, j]]
                    expected[i, j] = -loop_nll(m, query[i], cands[i, valid], seq)
    assert batched[2, 3] == 0                    # padded sequence
    assert (batched - expected).abs().max() <= 1e-5


@pytest.mark.parametrize("num_heads", [1, 2])
def test_small_and_large_batches_take_different_encoder_paths_to_the_same_result(num_heads):
    # encode() multiplies the pool through cand_proj @ input_proj once B * P >= d_in (the batch);
    # one query (P = 7 < d_in = 12) projects the pool first. Both must equal the loop, in train mode too.
    m = small_model(num_heads=num_heads).eval()
    query, cands, pool_mask, labels, seq_mask = make_batch(seed=12)
    assert query.shape[0] * cands.shape[1] >= D_IN > cands.shape[1]
    with torch.no_grad():
        batched = m.sequence_logp(query, cands, pool_mask, labels, seq_mask=seq_mask)
        for i in range(3):
            one = m.sequence_logp(query[i:i + 1], cands[i:i + 1], pool_mask[i:i + 1], labels[i:i + 1],
                                  seq_mask=seq_mask[i:i + 1])
            assert (one[0] - batched[i]).abs().max() <= 1e-5
            to_compact, valid = compact(pool_mask[i])
            seq = [to_compact[int(a)] for a in labels[i, 0]]
            assert abs(float(one[0, 0]) + float(loop_nll(m, query[i], cands[i, valid], seq))) <= 1e-5
    m.train()
    for batch in (slice(0, 3), slice(1, 2)):
        m.zero_grad()
        m.sequence_logp(query[batch], cands[batch], pool_mask[batch], labels[batch],
                        seq_mask=seq_mask[batch]).sum().backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters())


def test_label_smoothing_spreads_only_over_allowed_slots():
    m = small_model().eval()
    query, cands, pool_mask, labels, seq_mask = make_batch(seed=3)
    with torch.no_grad():
        plain = m.sequence_nll(query, cands, pool_mask, labels, seq_mask=seq_mask)
        logp = m.sequence_logp(query, cands, pool_mask, labels, seq_mask=seq_mask)
        smoothed = m.sequence_nll(query, cands, pool_mask, labels, label_smoothing=0.1, seq_mask=seq_mask)
        i, j = 1, 2                              # a query with padding in the middle of its pool
        to_compact, valid = compact(pool_mask[i])
        seq = [to_compact[int(a)] for a in labels[i, j]]
        expected = loop_nll(m, query[i], cands[i, valid], seq, label_smoothing=0.1)
    torch.testing.assert_close(plain, -logp)
    assert abs(float(smoothed[i, j]) - float(expected)) <= 1e-5
    # Smoothing over masked slots would add ~0.1 * 1e4 per step.
    assert float(smoothed.max()) < 100


def test_step_logits_mask_padding_and_earlier_labels_without_nan():
    m = small_model().train()                    # masking must hold under dropout too
    query, cands, pool_mask, labels, _ = make_batch(seed=4, shots=3)
    q0, keys = m.encode(query, cands, pool_mask)
    logits = m.step_logits(q0, keys, pool_mask, labels)
    assert logits.shape == (3, 4, 3, 7)
    probs = torch.softmax(logits, dim=-1)
    assert torch.isfinite(logits).all() and torch.isfinite(probs).all()
    for i in range(3):
        for j in range(4):
            for t in range(3):
                blocked = (~pool_mask[i]).clone()
                blocked[labels[i, j, :t]] = True
                assert torch.all(logits[i, j, t][blocked] == MASK_VALUE)
                assert torch.all(logits[i, j, t][~blocked] > -1 / TAU - 1e-4)   # cosine / TAU >= -10
                assert float(probs[i, j, t][blocked].sum().detach()) < 1e-30


def test_query_with_no_valid_slot_stays_finite_and_isolated():
    m = small_model().eval()
    query, cands, pool_mask, labels, seq_mask = make_batch(seed=5)
    with torch.no_grad():
        before = m.sequence_logp(query, cands, pool_mask, labels, seq_mask=seq_mask)
        pool_mask[0] = False
        seq_mask[0] = False
        after = m.sequence_logp(query, cands, pool_mask, labels, seq_mask=seq_mask)
    assert torch.isfinite(after).all() and torch.all(after[0] == 0)
    torch.testing.assert_close(after[1:], before[1:])


@pytest.mark.parametrize("num_layers", [0, 1])
def test_decode_returns_distinct_valid_positions_matching_a_loop(num_layers):
    m = small_model(num_layers=num_layers).eval()
    query, cands, pool_mask, _, _ = make_batch(seed=6)
    k = int(pool_mask.sum(-1).min())             # 4: every valid slot of query 2
    picks = m.decode(query, cands, pool_mask, k)
    assert picks.shape == (3, k) and picks.dtype == torch.long
    with torch.no_grad():
        for i in range(3):
            row = picks[i].tolist()
            assert len(set(row)) == k and all(pool_mask[i, a] for a in row)
            _, valid = compact(pool_mask[i])
            assert row == [valid[a] for a in loop_decode(m, query[i], cands[i, valid], k)]
    assert m.decode(query, cands, pool_mask, 0).shape == (3, 0)


def test_decode_rejects_k_beyond_the_smallest_pool():
    m = small_model()
    query, cands, pool_mask, _, _ = make_batch()
    with pytest.raises(ValueError, match="k=5"):
        m.decode(query, cands, pool_mask, 5)
    with pytest.raises(ValueError):
        m.decode(query, cands, pool_mask, -1)


def test_masked_slot_is_never_selected_even_when_it_is_the_favourite():
    m = small_model().eval()
    query, cands, pool_mask, _, _ = make_batch(seed=7)
    full = torch.ones_like(pool_mask)
    favourite = m.decode(query, cands, full, 1)[:, 0]          # the slot each query wants first
    masked = full.clone()
    masked[torch.arange(3), favourite] = False
    picks = m.decode(query, cands, masked, 6)                  # every remaining slot
    for i in range(3):
        assert int(favourite[i]) not in picks[i].tolist()
        assert sorted(picks[i].tolist()) == sorted(masked[i].nonzero().squeeze(1).tolist())


def test_reference_logp_is_deterministic_and_restores_the_mode():
    m = small_model(dropout=0.5).train()
    query, cands, pool_mask, labels, seq_mask = make_batch(seed=8)
    torch.manual_seed(1)
    noisy_a = m.sequence_logp(query, cands, pool_mask, labels, seq_mask=seq_mask)
    noisy_b = m.sequence_logp(query, cands, pool_mask, labels, seq_mask=seq_mask)
    assert not torch.allclose(noisy_a, noisy_b)                 # dropout is live in train mode
    ref_a = m.reference_logp(query, cands, pool_mask, labels, seq_mask=seq_mask)
    assert m.training                                           # restored to train
    ref_b = m.reference_logp(query, cands, pool_mask, labels, seq_mask=seq_mask)
    assert torch.equal(ref_a, ref_b) and not ref_a.requires_grad
    m.eval()
    torch.testing.assert_close(ref_a, m.sequence_logp(query, cands, pool_mask, labels, seq_mask=seq_mask))
    m.reference_logp(query, cands, pool_mask, labels)
    assert not m.training                                       # restored to eval
    m.train()
    m.decode(query, cands, pool_mask, 2)
    assert m.training


def test_decode_ignores_dropout():
    m = small_model(dropout=0.5).train()
    query, cands, pool_mask, _, _ = make_batch(seed=9)
    assert torch.equal(m.decode(query, cands, pool_mask, 4), m.decode(query, cands, pool_mask, 4))


@pytest.mark.parametrize("num_layers", [0, 1])
def test_gradients_reach_every_parameter(num_layers):
    m = small_model(num_layers=num_layers).train()
    query, cands, pool_mask, labels, seq_mask = make_batch(seed=10)
    m.sequence_logp(query, cands, pool_mask, labels, seq_mask=seq_mask).sum().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_teacher_forcing_feeds_the_label_not_the_argmax():
    # Same first label, different second labels -> identical step-2 rows; different first
    # labels -> the gate sees different candidates and the step-2 scores change.
    m = small_model().eval()
    query, cands, pool_mask, _, _ = make_batch(seed=11)
    labels = torch.tensor([[[0, 1], [0, 3], [5, 1]]]).expand(3, 3, 2).clone()
    full = torch.ones_like(pool_mask)
    with torch.no_grad():
        q0, keys = m.encode(query, cands, full)
        logits = m.step_logits(q0, keys, full, labels)
    torch.testing.assert_close(logits[:, 0], logits[:, 1])
    assert not torch.allclose(logits[:, 0, 1, 2], logits[:, 2, 1, 2])
