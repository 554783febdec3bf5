"""Candidate and query filters over loaded RL data; each says what it dropped and why.

Two kinds, applied in this order by ``trainer.data.build``:

* validity (every split): candidates whose label cannot be trusted or whose
  sequence the policy cannot produce: ``eval_failed``, ``vqa_eval_mode ==
  "error"``, ``"fallback"`` when ``skip_fallback``, and a repeated ICD (the pointer
  masks chosen items, so that sequence has probability 0 and its log-prob is -inf).
  ``skip_fallback`` therefore also decides which validation labels count: keep it
  fixed across a sweep whose trials are compared on the same validation queries.
  (``build`` adds ``outside_pool``: trajectories cut by Lever-Plus's pool truncation.)
* selection (training queries only, so that every config of a sweep is validated
  on the same queries with the same labels): the beam-score quantile, positive
  queries, at least 2 candidates (a group of one has no advantage), and the
  ``train_queries`` subsample.

Candidates without ``beam_score`` are not beam candidates (sampled, retrieval,
random, augmented). The quantile filter keeps them: its purpose is to remove weak
*beam* candidates, and ranking a sampled pair by a score it does not have would be
arbitrary. (Only the ``legacy`` reward reads a missing beam_score as 0.)
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Callable, Collection

import torch

from trainer.data.loaders import BeamEntry, RLCandidate, RLEntry
from trainer.errors import ConfigError

# Drop reasons; the "query_" ones remove a whole query, the others one candidate.
EVAL_FAILED = "eval_failed"
EVAL_MODE_ERROR = "eval_mode_error"
EVAL_MODE_FALLBACK = "eval_mode_fallback"
REPEATED_ICD = "repeated_icd"
OUTSIDE_POOL = "outside_pool"
BELOW_BEAM_QUANTILE = "below_beam_score_quantile"
QUERY_NO_POSITIVE = "query_no_positive"
QUERY_TOO_FEW = "query_fewer_than_2_candidates"
QUERY_NO_CANDIDATES = "query_no_candidates"
QUERY_NOT_SUBSAMPLED = "query_not_subsampled"
BEAM_REPEATED_ICD = "beam_repeated_icd"      # one beam of a beam JSON query
BEAM_QUERY_NO_BEAMS = "beam_query_no_beams"  # a beam JSON query left without beams

Entries = dict[int, RLEntry]
Only = Collection[int] | None  # the query ids a selection filter applies to; None = all


@dataclass(frozen=True)
class Dropped:
    query_id: int
    candidate: int | None  # index in the file's pointer_candidates; None when the whole query went
    reason: str


Result = tuple[Entries, list[Dropped]]


@dataclass
class DropReport:
    """Everything the filters removed, in the order they removed it."""

    items: list[Dropped] = field(default_factory=list)

    def add(self, drops: list[Dropped]) -> None:
        self.items.extend(drops)

    def counts(self) -> dict[str, int]:
        """reason -> number of candidates (or, for ``query_*`` reasons, queries) dropped."""
        return dict(Counter(d.reason for d in self.items))

    def __str__(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.counts().items()) or "nothing dropped"


def drop_candidates(entries: Entries, reason_of: Callable[[int, RLCandidate], str | None]) -> Result:
    """Remove every candidate for which ``reason_of(query_id, candidate)`` names a reason."""
    kept: Entries = {}
    drops: list[Dropped] = []
    for qid, entry in entries.items():
        keep = []
        for cand in entry.candidates:
            reason = reason_of(qid, cand)
            if reason is None:
                keep.append(cand)
            else:
                drops.append(Dropped(qid, cand.index, reason))
        kept[qid] = entry if len(keep) == len(entry.candidates) else replace(entry, candidates=tuple(keep))
    return kept, drops


def drop_invalid(entries: Entries, *, skip_fallback: bool) -> Result:
    """Validity filter (all splits): failed or error evaluations, fallback ones, repeated ICDs."""

    def reason(_: int, c: RLCandidate) -> str | None:
        if c.eval_failed:
            return EVAL_FAILED
        if c.vqa_eval_mode == "error":
            return EVAL_MODE_ERROR
        if skip_fallback and c.vqa_eval_mode == "fallback":
            return EVAL_MODE_FALLBACK
        if len(set(c.pointer)) < len(c.pointer):
            return REPEATED_ICD
        return None

    return drop_candidates(entries, reason)


def beam_score_threshold(entries: Entries, quantile: float) -> float | None:
    """The ``quantile`` of beam_score over every beam candidate in ``entries`` (linear
    interpolation, as numpy's default); None when ``quantile`` is 0 or there are no beam scores."""
    scores = [c.beam_score for e in entries.values() for c in e.candidates if c.beam_score is not None]
    if quantile <= 0 or not scores:
        return None
    return float(torch.quantile(torch.tensor(scores, dtype=torch.float64), quantile))


def drop_below_beam_quantile(entries: Entries, quantile: float, *, only: Only = None) -> Result:
    """Drop beam candidates of the queries in ``only`` (None = all) whose beam_score is below
    the dataset-wide ``quantile``; the threshold is computed over all of ``entries`` so it
    does not depend on the split. Candidates without beam_score are kept (module docstring)."""
    threshold = beam_score_threshold(entries, quantile)
    if threshold is None:
        return entries, []

    def reason(qid: int, c: RLCandidate) -> str | None:
        weak = c.beam_score is not None and c.beam_score < threshold
        return BELOW_BEAM_QUANTILE if weak and (only is None or qid in only) else None

    return drop_candidates(entries, reason)


def drop_queries(entries: Entries, reason_of: Callable[[RLEntry], str | None]) -> Result:
    """Remove every query for which ``reason_of(entry)`` names a reason."""
    kept: Entries = {}
    drops: list[Dropped] = []
    for qid, entry in entries.items():
        reason = reason_of(entry)
        if reason is None:
            kept[qid] = entry
        else:
            drops.append(Dropped(qid, None, reason))
    return kept, drops


def require_positive(entries: Entries, *, only: Only = None) -> Result:
    """Drop queries of ``only`` (None = all) without a correct candidate (vqa_correct, or acc > 0)."""
    return drop_queries(entries, lambda e: QUERY_NO_POSITIVE if (only is None or e.query_id in only)
                        and not any(c.correct for c in e.candidates) else None)


def drop_small_queries(entries: Entries, *, only: Only = None) -> Result:
    """Queries of ``only`` (None = all) need 2 candidates to train; any other query needs 1
    to be evaluated by lookup."""

    def reason(e: RLEntry) -> str | None:
        if only is None or e.query_id in only:
            return QUERY_TOO_FEW if len(e.candidates) < 2 else None
        return QUERY_NO_CANDIDATES if not e.candidates else None

    return drop_queries(entries, reason)


def select_training(entries: Entries, *, min_beam_score_quantile: float, require_positive_query: bool,
                    only: Only = None) -> Result:
    """The selection filters in order: beam-score quantile, positive queries, >= 2 candidates.

    Applied to the queries in ``only`` (None = all); other queries only lose empty groups.
    """
    entries, drops = drop_below_beam_quantile(entries, min_beam_score_quantile, only=only)
    if require_positive_query:
        entries, more = require_positive(entries, only=only)
        drops += more
    entries, more = drop_small_queries(entries, only=only)
    return entries, drops + more


def subsample_train(train_ids: Collection[int], n: int, *, seed: int) -> list[int]:
    """``n`` of ``train_ids`` (0 = all), sorted. A seeded permutation of the sorted ids whose
    first ``n`` are kept, so for fixed ids a smaller ``n`` gives a subset of a larger one."""
    ids = sorted(train_ids)
    if n == 0:
        return ids
    if n > len(ids):
        raise ConfigError(f"train_queries: {n} exceeds the {len(ids)} training queries left after "
                          f"filters; lower it or set 0 (all)")
    perm = torch.randperm(len(ids), generator=torch.Generator().manual_seed(seed))
    return sorted(ids[i] for i in perm[:n].tolist())


def drop_repeated_beams(beam: dict[int, BeamEntry]) -> tuple[dict[int, BeamEntry], list[Dropped]]:
    """Beams that repeat an ICD (impossible for the pointer, so their SFT loss would be inf)
    and queries left without beams. ``Dropped.candidate`` is the beam's index in id_list."""
    kept: dict[int, BeamEntry] = {}
    drops: list[Dropped] = []
    for qid, entry in beam.items():
        ok = [b for b, seq in enumerate(entry.beams) if len(set(seq)) == len(seq)]
        drops += [Dropped(qid, b, BEAM_REPEATED_ICD) for b in range(len(entry.beams)) if b not in ok]
        if not ok:
            drops.append(Dropped(qid, None, BEAM_QUERY_NO_BEAMS))
        elif len(ok) == len(entry.beams):
            kept[qid] = entry
        else:
            kept[qid] = BeamEntry(qid, tuple(entry.beams[b] for b in ok), tuple(entry.scores[b] for b in ok))
    return kept, drops
