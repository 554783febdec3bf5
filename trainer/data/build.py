"""From loaded Lever-Plus data to the training tensors: splits, pools, QueryGroups.

``build_dataset`` runs, in order:

1. every id (queries, pointers, pools) is checked against the embedding rows;
2. the query ids of the RL and beam data are split into train/val/test *before*
   any filter, so a query's split depends only on ``split_seed``: paired
   comparisons between configs need the same validation queries in every trial,
   whatever filters a trial's config turns on;
3. validity filters (all splits), then one candidate pool per query;
4. selection filters on the training queries only, then ``train_queries``;
5. padding into ``QueryGroups`` whose ``seqs`` are positions into ``pool``.

SFT data (beam) is never touched by the selection filters: SFT is computed once
per sweep and must not depend on a trial's data knobs.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Collection, Iterable, Mapping, Sequence

import torch

from trainer.config import DataConfig
from trainer.data import filters
from trainer.data.filters import DropReport
from trainer.data.groups import Dataset, QueryGroups
from trainer.data.embeddings import check_embeddings, load_embeddings
from trainer.data.loaders import BeamEntry, RLEntry, load_beam_json, load_pools, load_rl_json, rl_shot_num
from trainer.errors import DataError

Pools = Mapping[int, Sequence[int]]  # query id -> global ids
_SOURCES = {"rl": "RL data", "beam": "beam data", "pools": "pools", "embeddings": "the embeddings"}


@dataclass(frozen=True)
class SplitIds:
    """Query ids of each split, each a sorted [Q_split] long tensor; disjoint."""

    train: torch.Tensor
    val: torch.Tensor
    test: torch.Tensor


def split_ids(query_ids: Iterable[int] | torch.Tensor, *, val_fraction: float, test_fraction: float,
              seed: int) -> SplitIds:
    """Split ``query_ids`` by a ``torch.Generator``-seeded permutation of the sorted ids.

    No hashing: the same ids and seed give the same split on every machine and Python
    version. Each non-zero fraction gets at least one query; train keeps the rest.
    """
    ids = sorted(set(query_ids.tolist() if isinstance(query_ids, torch.Tensor) else map(int, query_ids)))
    n = len(ids)
    n_val = max(1, round(val_fraction * n)) if val_fraction > 0 else 0
    n_test = max(1, round(test_fraction * n)) if test_fraction > 0 else 0
    if n - n_val - n_test < 1:
        raise DataError(f"only {n} queries: too few to split with val_fraction={val_fraction} and "
                        f"test_fraction={test_fraction}; provide more queries or lower the fractions")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()

    def part(idx: list[int]) -> torch.Tensor:
        return torch.tensor(sorted(ids[i] for i in idx), dtype=torch.long)

    return SplitIds(train=part(perm[n_val + n_test:]), val=part(perm[:n_val]),
                    test=part(perm[n_val:n_val + n_test]))


def check_ids(num_rows: int, *, rl: Mapping[int, RLEntry] | None = None,
              beam: Mapping[int, BeamEntry] | None = None, pools: Pools | None = None,
              sources: Mapping[str, str] | None = None) -> None:
    """Every id must be a row of the ``[num_rows, d]`` embedding matrix (DataError otherwise)."""
    src = {**_SOURCES, **(sources or {})}

    def check(where: str, ids: Iterable[int]) -> None:
        top = max(ids, default=-1)
        if top >= num_rows:
            raise DataError(f"{where}: id {top} is beyond the {num_rows} rows of {src['embeddings']}; ids "
                            f"must index the embedding rows (the question_id-sorted train split)")

    for qid, entry in (rl or {}).items():
        at = f"{src['rl']}: query {qid}"
        check(f"{at}: query id", [qid])
        check(f"{at}: candidate_pool_ids", entry.candidate_pool_ids or ())
        for c in entry.candidates:
            check(f"{at}: pointer_candidates[{c.index}].{c.pointer_field}", c.pointer)
    for qid, b_entry in (beam or {}).items():
        check(f"{src['beam']}: query {qid}: query id", [qid])
        for b, seq in enumerate(b_entry.beams):
            check(f"{src['beam']}: query {qid}: id_list[{b}]", seq)
    for qid, ids in (pools or {}).items():
        check(f"{src['pools']}: query {qid}", [qid, *ids])


def candidate_pools(*, rl: Mapping[int, RLEntry] | None = None, beam: Mapping[int, BeamEntry] | None = None,
                    pools: Pools | None = None, max_pool: int = 64) -> dict[int, list[int]]:
    """Global-id candidate pool of every query of ``rl`` or ``beam``.

    Base: the k64 file's ``candidate_pool_ids``; else the ``pools`` entry; else, as
    Lever-Plus builds it, the sorted set of ids in the query's RL trajectories
    truncated to ``max_pool``. Ids of the query's beams not yet in the pool are then
    appended in order of first use, and so are those of its RL trajectories unless
    the base came from the trajectories: there the truncation is deliberate and
    ``prepare_rl`` drops the trajectories it cut (``outside_pool``).
    """
    out: dict[int, list[int]] = {}
    for qid in sorted(set(rl or {}) | set(beam or {})):
        entry = (rl or {}).get(qid)
        used = [c.pointer for c in entry.candidates] if entry else []
        if entry is not None and entry.candidate_pool_ids is not None:
            pool = list(entry.candidate_pool_ids)
        elif pools is not None and qid in pools:
            pool = list(pools[qid])
        else:
            pool, used = sorted({i for seq in used for i in seq})[:max_pool], []
        if qid in (beam or {}):
            used = used + list(beam[qid].beams)  # type: ignore[index]
        seen = set(pool)
        for seq in used:
            for i in seq:
                if i not in seen:
                    seen.add(i)
                    pool.append(i)
        out[qid] = pool
    return out


def prepare_rl(rl: Mapping[int, RLEntry], data_cfg: DataConfig, *, train_ids: Collection[int] | None = None,
               pools: Pools | None = None, beam: Mapping[int, BeamEntry] | None = None,
               max_pool: int = 64) -> tuple[dict[int, RLEntry], dict[int, list[int]], DropReport]:
    """Filtered RL entries, the pool of every query (of ``rl`` and ``beam``), and what was dropped.

    Selection filters and the ``train_queries`` subsample apply to ``train_ids``;
    ``train_ids=None`` treats every query as training and skips the subsample (the
    data report's view of a whole file). Pools depend only on the validity filters,
    so a query's evaluation pool is the same under every selection config.
    """
    report = DropReport()
    entries, drops = filters.drop_invalid(dict(rl), skip_fallback=data_cfg.skip_fallback)
    report.add(drops)
    pool_of = candidate_pools(rl=entries, beam=beam, pools=pools, max_pool=max_pool)
    members = {q: set(p) for q, p in pool_of.items()}
    entries, drops = filters.drop_candidates(entries, lambda q, c: filters.OUTSIDE_POOL if c.local is None
                                             and not members[q].issuperset(c.pointer) else None)
    report.add(drops)
    only = None if train_ids is None else set(train_ids)
    entries, drops = filters.select_training(
        entries, min_beam_score_quantile=data_cfg.filter_min_beam_score_quantile,
        require_positive_query=data_cfg.require_positive_query, only=only)
    report.add(drops)
    if only is not None and data_cfg.train_queries:
        keep = set(filters.subsample_train([q for q in entries if q in only], data_cfg.train_queries,
                                           seed=data_cfg.split_seed))
        entries, drops = filters.drop_queries(entries, lambda e: filters.QUERY_NOT_SUBSAMPLED
                                              if e.query_id in only and e.query_id not in keep else None)
        report.add(drops)
    return entries, pool_of, report


def build_dataset(*, embeddings: torch.Tensor, rl: Mapping[int, RLEntry] | None = None,
                  beam: Mapping[int, BeamEntry] | None = None, pools: Pools | None = None,
                  data_cfg: DataConfig, max_pool: int = 64, sources: Mapping[str, str] | None = None,
                  check_finite: bool = True) -> tuple[Dataset, SplitIds, DropReport]:
    """The training tensors of loaded data (module docstring gives the order of steps).

    ``embeddings`` is [N, d] float; ``sources`` names the inputs in messages
    (keys rl, beam, pools, embeddings; ``load_dataset`` passes the paths);
    ``check_finite=False`` skips the NaN/inf pass that ``load_embeddings`` already made.
    ``Dataset.rl`` holds the filtered training queries plus the validation and test
    queries with at least one valid candidate; ``Dataset.pools`` holds the pool of
    every query of ``rl`` or ``beam`` whose pool is not empty. The returned split is
    that of all query ids, before filters.
    """
    if rl is None and beam is None:
        raise DataError("no data: pass RL data, beam data or both")
    if max_pool < 1:
        raise ValueError(f"max_pool must be >= 1, got {max_pool}")
    src = {**_SOURCES, **(sources or {})}
    embeddings = check_embeddings(embeddings, src["embeddings"], finite=check_finite)
    check_ids(embeddings.shape[0], rl=rl, beam=beam, pools=pools, sources=src)
    split = split_ids(set(rl or {}) | set(beam or {}), val_fraction=data_cfg.val_fraction,
                      test_fraction=data_cfg.test_fraction, seed=data_cfg.split_seed)
    report = DropReport()
    beam_kept = None
    if beam is not None:
        beam_kept, drops = filters.drop_repeated_beams(dict(beam))
        report.add(drops)
    rl_kept = None
    if rl is not None:
        train = set(split.train.tolist())
        rl_kept, pool_of, rl_report = prepare_rl(rl, data_cfg, train_ids=train, pools=pools, beam=beam_kept,
                                                 max_pool=max_pool)
        report.add(rl_report.items)
        if not any(q in train for q in rl_kept):
            raise DataError(f"{src['rl']}: no training query left after filters ({rl_report}); relax "
                            f"require_positive_query or filter_min_beam_score_quantile")
    else:
        pool_of = candidate_pools(beam=beam_kept, pools=pools, max_pool=max_pool)
    dataset = Dataset(
        embeddings=embeddings,
        rl=_rl_groups(rl_kept, pool_of) if rl_kept else None,
        beam=_beam_groups(beam_kept, pool_of) if beam_kept else None,
        pools={q: torch.tensor(p, dtype=torch.long) for q, p in pool_of.items() if p},
    )
    return dataset, split, report


def load_dataset(*, embeddings: str | os.PathLike, rl: str | os.PathLike | None = None,
                 beam: str | os.PathLike | None = None, pools: str | os.PathLike | None = None,
                 data_cfg: DataConfig, max_pool: int = 64, mmap: bool = False,
                 ) -> tuple[Dataset, SplitIds, DropReport]:
    """Load the files (paths), then ``build_dataset``; every message names its file."""
    given = {"rl": rl, "beam": beam, "pools": pools, "embeddings": embeddings}
    return build_dataset(
        embeddings=load_embeddings(embeddings, mmap=mmap),
        rl=load_rl_json(rl) if rl is not None else None,
        beam=load_beam_json(beam) if beam is not None else None,
        pools=load_pools(pools) if pools is not None else None,
        data_cfg=data_cfg, max_pool=max_pool, check_finite=False,
        sources={k: os.fspath(v) for k, v in given.items() if v is not None})


def stack_pools(pools: Mapping[int, torch.Tensor], query_ids: Iterable[int] | torch.Tensor,
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad the pools of ``query_ids`` [Q] into ``pool`` [Q, P] long (0-padded) and ``pool_mask`` [Q, P]."""
    ids = query_ids.tolist() if isinstance(query_ids, torch.Tensor) else [int(q) for q in query_ids]
    missing = [q for q in ids if q not in pools]
    if missing:
        raise DataError(f"query {missing[0]}: has no candidate pool ({len(missing)} of {len(ids)} "
                        f"queries lack one); only queries of the RL or beam data can be evaluated")
    rows = [pools[q] for q in ids]
    width = max((len(r) for r in rows), default=0)
    pool = torch.zeros(len(ids), width, dtype=torch.long)
    mask = torch.zeros(len(ids), width, dtype=torch.bool)
    for r, row in enumerate(rows):
        pool[r, :len(row)] = row
        mask[r, :len(row)] = True
    return pool, mask


def select_split(groups: QueryGroups, ids: torch.Tensor) -> QueryGroups:
    """Rows of ``groups`` whose query id is in ``ids`` (e.g. ``SplitIds.train``)."""
    return groups.select(torch.isin(groups.query_ids, ids))


# ---------------------------------------------------------------------------
# Padding


def _rl_groups(entries: Mapping[int, RLEntry], pool_of: Mapping[int, list[int]]) -> QueryGroups:
    qids = sorted(entries)
    seqs, values = [], []
    for q in qids:
        where = _positions(pool_of[q])
        cands = entries[q].candidates
        seqs.append([c.local if c.local is not None else tuple(where[i] for i in c.pointer) for c in cands])
        values.append([(float(c.correct), c.vqa_acc_score, c.beam_score or 0.0) for c in cands])
    return _pack(qids, [pool_of[q] for q in qids], seqs, values, rl_shot_num(dict(entries)) or 0)


def _beam_groups(beam: Mapping[int, BeamEntry], pool_of: Mapping[int, list[int]]) -> QueryGroups:
    qids = sorted(beam)
    seqs, values = [], []
    for q in qids:
        where = _positions(pool_of[q])
        seqs.append([tuple(where[i] for i in seq) for seq in beam[q].beams])
        values.append([(0.0, 0.0, s) for s in beam[q].scores])
    return _pack(qids, [pool_of[q] for q in qids], seqs, values, len(beam[qids[0]].beams[0]))


def _positions(pool: list[int]) -> dict[int, int]:
    """global id -> its first position in ``pool``."""
    where: dict[int, int] = {}
    for pos, i in enumerate(pool):
        where.setdefault(i, pos)
    return where


def _pack(qids: list[int], pools: list[list[int]], seqs: list[list[tuple[int, ...]]],
          values: list[list[tuple[float, float, float]]], shot: int) -> QueryGroups:
    """Pad per-query lists to QueryGroups: P = longest pool, C = most sequences, S = ``shot``.

    ``values[q][c]`` is (correct, acc, beam_score) of sequence c of query q.
    """
    q_n, p_n, c_n = len(qids), max(len(p) for p in pools), max(len(s) for s in seqs)
    pool = torch.zeros(q_n, p_n, dtype=torch.long)
    pool_mask = torch.zeros(q_n, p_n, dtype=torch.bool)
    seq_t = torch.zeros(q_n, c_n, shot, dtype=torch.long)
    seq_mask = torch.zeros(q_n, c_n, dtype=torch.bool)
    vals = torch.zeros(3, q_n, c_n, dtype=torch.float32)
    for r in range(q_n):
        pool[r, :len(pools[r])] = torch.tensor(pools[r], dtype=torch.long)
        pool_mask[r, :len(pools[r])] = True
        n = len(seqs[r])
        if n:
            seq_t[r, :n] = torch.tensor(seqs[r], dtype=torch.long)
            seq_mask[r, :n] = True
            vals[:, r, :n] = torch.tensor(values[r], dtype=torch.float32).T
    return QueryGroups(query_ids=torch.tensor(qids, dtype=torch.long), pool=pool, pool_mask=pool_mask,
                       seqs=seq_t, seq_mask=seq_mask, correct=vals[0], acc=vals[1], beam_score=vals[2])
