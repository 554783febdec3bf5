"""Per-shot accuracy of a selector through an Evaluator.

For every evaluation query the selector decodes an ordered sequence of k ICDs
from the query's pool, k = 1..max_shot (trained at shot_num=2, extrapolated
beyond). An Evaluator turns (query ids, sequences) into per-query correctness:

* ``SimulatorEvaluator``: the embedded benchmark's exact expected accuracy, or
  a sampled 0/1 outcome with the noise of a real N-query evaluation;
* ``LookupEvaluator``: the correctness recorded in the user's RL data for the
  sequences that were evaluated (coverage is reported; other shots are absent);
* ``CallableEvaluator``: ``module:function`` supplied by the user (their VLM).

Per-query correctness is kept so that any two runs can be compared with a
paired test on the same queries.
"""
from __future__ import annotations

import importlib
import math
from dataclasses import dataclass, field
from typing import Callable, Protocol

import numpy as np
import torch

from trainer.errors import UserError


class Evaluator(Protocol):
    name: str

    def score(self, query_ids: torch.Tensor, seqs: torch.Tensor) -> torch.Tensor:
        """Correctness in [0, 1] per query, NaN where this source cannot score.

        Args:
            query_ids: [Q] long global ids.
            seqs: [Q, k] long global ids in prompt order.
        Returns: [Q] float.
        """


@dataclass
class EvalReport:
    """Accuracy per shot over the queries a source could score."""

    query_ids: torch.Tensor                                    # [Q]
    correct: dict[int, np.ndarray] = field(default_factory=dict)     # shot -> [Q] (NaN = unscored)
    selections: dict[int, torch.Tensor] = field(default_factory=dict)  # shot -> [Q, k] global ids
    extra: dict[str, float] = field(default_factory=dict)

    def accuracy(self, shot: int) -> float | None:
        values = self.correct.get(shot)
        if values is None or np.all(np.isnan(values)):
            return None
        return float(np.nanmean(values))

    def metrics(self, prefix: str = "") -> dict[str, float]:
        """``acc_shotK`` for the shots this source scores, their mean as ``acc_mean``."""
        out: dict[str, float] = {}
        for shot in sorted(self.correct):
            acc = self.accuracy(shot)
            if acc is not None:
                out[f"{prefix}acc_shot{shot}"] = acc
        accs = list(out.values())
        out[f"{prefix}acc_mean"] = float(np.mean(accs)) if accs else math.nan
        out[f"{prefix}acc_mean_se"] = self.mean_se()
        out.update({f"{prefix}{k}": v for k, v in self.extra.items()})
        return out

    def mean_se(self) -> float:
        """Standard error of acc_mean over queries (per-query correctness averaged over shots)."""
        rows = [v for v in self.correct.values() if not np.all(np.isnan(v))]
        if not rows:
            return math.nan
        per_query = np.nanmean(np.stack(rows), axis=0)
        per_query = per_query[~np.isnan(per_query)]
        if len(per_query) < 2:
            return math.nan
        return float(per_query.std(ddof=1) / math.sqrt(len(per_query)))

    def to_json(self) -> dict:
        """The per-split record stored in ``evaluation.json`` (see sweep.leaderboard)."""
        return {
            "query_ids": [int(q) for q in self.query_ids],
            "correct": {str(k): [None if math.isnan(x) else float(x) for x in v]
                        for k, v in self.correct.items()},
            "selections": {str(k): v.tolist() for k, v in self.selections.items()},
        }


# ---------------------------------------------------------------------------
# Evaluators


def _shr(x: torch.Tensor, n: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's >> is arithmetic: it copies the sign bit)."""
    return (x >> n) & ((1 << (64 - n)) - 1)


def _mix64(x: torch.Tensor) -> torch.Tensor:
    """SplitMix64 finaliser on int64 (wrapping arithmetic); a cheap deterministic hash."""
    x = x ^ _shr(x, 30)
    x = x * -4658895280553007687  # 0xbf58476d1ce4e5b9 as a signed int64
    x = x ^ _shr(x, 27)
    x = x * -7723592293110705685  # 0x94d049bb133111eb
    return x ^ _shr(x, 31)


def prompt_uniforms(query_ids: torch.Tensor, seqs: torch.Tensor, seed: int) -> torch.Tensor:
    """A uniform in [0, 1) that depends only on (seed, query, ordered sequence): [Q].

    A real VLM decodes greedily, so the same prompt always gets the same
    answer; sampled evaluation must behave the same way (re-evaluating an
    unchanged selection cannot flip its outcome), hence a hash, not a stream.
    """
    h = _mix64(torch.full_like(query_ids, seed + 0x9E3779B9) + query_ids)
    for t in range(seqs.shape[1]):
        h = _mix64(h ^ (seqs[:, t] + (t + 1) * 0x632BE5AB))
    return _shr(h, 11).double() / float(1 << 53)


class SimulatorEvaluator:
    """Exact expected accuracy from the oracle, or one deterministic Bernoulli draw per prompt."""

    def __init__(self, bench, mode: str = "exact", seed: int = 0):
        if mode not in ("exact", "sampled"):
            raise UserError(f"eval_mode: {mode!r} is not one of exact, sampled")
        self.bench, self.mode, self.seed = bench, mode, seed
        self.name = f"simulator-{mode}"

    def score(self, query_ids: torch.Tensor, seqs: torch.Tensor) -> torch.Tensor:
        p = self.bench.p_correct(query_ids, seqs).double()
        if self.mode == "exact":
            return p
        return (prompt_uniforms(query_ids, seqs, self.seed) < p).double()


class LookupEvaluator:
    """Recorded correctness of evaluated sequences (the user's RL data); unscored -> NaN.

    Only sequences that were actually run through the VLM have an outcome, so
    this source scores one shot count (the data's shot_num) and reports the
    fraction of queries whose selected sequence it found (``coverage``).

    The records stay the candidate groups' own tensors (no per-sequence dict): a
    trial of a 5,000-query file holds a few MB, looked up vectorised per query.
    """

    name = "lookup"

    def __init__(self, query_ids: torch.Tensor, seqs: torch.Tensor, mask: torch.Tensor, acc: torch.Tensor):
        if len(query_ids) > 1 and not bool((query_ids[1:] > query_ids[:-1]).all()):
            order = torch.argsort(query_ids)
            query_ids, seqs, mask, acc = query_ids[order], seqs[order], mask[order], acc[order]
        self.query_ids = query_ids          # [Q] ascending
        self.seqs = seqs                    # [Q, C, S] global ids in prompt order
        self.mask = mask                    # [Q, C]
        self.acc = acc                      # [Q, C] recorded correctness

    @classmethod
    def from_groups(cls, groups) -> "LookupEvaluator":
        globals_ = torch.gather(groups.pool.unsqueeze(1).expand(-1, groups.seqs.shape[1], -1), 2, groups.seqs)
        return cls(groups.query_ids, globals_, groups.seq_mask, groups.acc)

    @property
    def shots(self) -> set[int]:
        return {int(self.seqs.shape[-1])} if self.mask.any() else set()

    def score(self, query_ids: torch.Tensor, seqs: torch.Tensor) -> torch.Tensor:
        out = torch.full((len(query_ids),), math.nan, dtype=torch.float64)
        if len(query_ids) == 0 or len(self.query_ids) == 0 or seqs.shape[1] != self.seqs.shape[-1]:
            return out
        rows = torch.searchsorted(self.query_ids, query_ids).clamp(max=len(self.query_ids) - 1)
        known = self.query_ids[rows] == query_ids
        match = (self.seqs[rows] == seqs.unsqueeze(1)).all(-1) & self.mask[rows]      # [n, C]
        last = match.shape[1] - 1 - match.flip(1).to(torch.uint8).argmax(1)          # a repeat: the last
        hit = known & match.any(1)
        out[hit] = self.acc[rows[hit], last[hit]].double()
        return out


class CallableEvaluator:
    """``module:function`` called as ``fn(query_ids: list[int], sequences: list[list[int]]) -> list[float]``.

    This imports and runs the user's code: only pass modules you trust.
    """

    def __init__(self, spec: str):
        self.name = spec
        self.fn = load_callable(spec, flag="--evaluator")

    def score(self, query_ids: torch.Tensor, seqs: torch.Tensor) -> torch.Tensor:
        out = self.fn(query_ids.tolist(), seqs.tolist())
        values = torch.as_tensor(np.asarray(out, dtype=np.float64))
        if values.shape != (len(query_ids),):
            raise UserError(f"--evaluator {self.name}: returned shape {tuple(values.shape)}, "
                            f"expected ({len(query_ids)},)")
        return values


def load_callable(spec: str, *, flag: str) -> Callable:
    """Import ``module:function``; bad specs are a UserError naming the flag."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise UserError(f"{flag}: {spec!r} is not of the form module:function")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # the user's module may fail in any way on import
        raise UserError(f"{flag}: cannot import module {module_name!r}: {exc}") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise UserError(f"{flag}: {module_name!r} has no callable {attr!r}")
    return fn


# ---------------------------------------------------------------------------
# Running a selector


def evaluate_sequences(evaluator: Evaluator, query_ids: torch.Tensor,
                       sequences: dict[int, torch.Tensor]) -> EvalReport:
    """Score precomputed sequences (baselines or a selector's decodes), shot -> [Q, k] global ids."""
    report = EvalReport(query_ids=query_ids)
    for shot, seqs in sequences.items():
        report.correct[shot] = evaluator.score(query_ids, seqs).numpy()
        report.selections[shot] = seqs
    return report


DECODE_CHUNK_BYTES = 8 << 20
"""Pool embeddings gathered per chunk of queries (queries x P x d x 4 bytes) when decoding or
scoring a split: a trial's evaluation peak stays near this whatever the split's size."""


def queries_per_chunk(pool_width: int, dim: int) -> int:
    """How many queries' pools fit in ``DECODE_CHUNK_BYTES`` (at least one)."""
    return max(1, DECODE_CHUNK_BYTES // max(pool_width * dim * 4, 1))


@torch.no_grad()
def decode_sequences(model, embeddings: torch.Tensor, query_ids: torch.Tensor, pool: torch.Tensor,
                     pool_mask: torch.Tensor, max_shot: int, chunk: int | None = None) -> dict[int, torch.Tensor]:
    """Greedy decodes for k = 1..max_shot as global ids: shot -> [Q, k].

    One decode of ``max_shot`` steps gives every shorter prefix: greedy
    decoding of k ICDs is the first k steps of decoding max_shot. ``chunk``
    queries are decoded at a time (default: ``DECODE_CHUNK_BYTES`` of pool embeddings).
    """
    was_training = model.training
    model.eval()
    try:
        max_shot = min(max_shot, int(pool_mask.sum(1).min()))
        device = next(model.parameters()).device
        chunk = chunk or queries_per_chunk(pool.shape[1], embeddings.shape[1])
        parts = []
        for s in range(0, len(query_ids), chunk):
            q = query_ids[s:s + chunk]
            pos = model.decode(embeddings[q].to(device), embeddings[pool[s:s + chunk]].to(device),
                               pool_mask[s:s + chunk].to(device), max_shot).cpu()
            parts.append(torch.gather(pool[s:s + chunk], 1, pos))
        full = torch.cat(parts)
    finally:
        model.train(was_training)
    return {k: full[:, :k] for k in range(1, max_shot + 1)}


def random_sequences(pool: torch.Tensor, pool_mask: torch.Tensor, k: int,
                     generator: torch.Generator) -> torch.Tensor:
    """k distinct random ICDs per query from its pool: [Q, k] global ids."""
    noise = torch.rand(pool.shape, generator=generator).masked_fill(~pool_mask, -1.0)
    return torch.gather(pool, 1, noise.topk(k, dim=1).indices)


def retrieval_sequences(embeddings: torch.Tensor, query_ids: torch.Tensor, pool: torch.Tensor,
                        pool_mask: torch.Tensor, k: int) -> torch.Tensor:
    """Top-k pool items by embedding cosine similarity, most similar nearest the query: [Q, k].

    Prompt order puts the last ICD next to the query, so the ranking is reversed.
    """
    q = torch.nn.functional.normalize(embeddings[query_ids].float(), dim=-1)
    c = torch.nn.functional.normalize(embeddings[pool].float(), dim=-1)
    sim = torch.einsum("qd,qpd->qp", q, c).masked_fill(~pool_mask, -math.inf)
    top = sim.topk(k, dim=1).indices.flip(1)
    return torch.gather(pool, 1, top)
