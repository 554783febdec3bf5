"""From inputs to a ``Task``: the data source shared by a sweep and the warm start every trial reuses.

A ``DataSource`` is loaded once by the driver (the user's Lever-Plus files or
the embedded simulator) and handed to every trial; ``source.task(cfg)``
applies the trial's data hyperparameters (filters, train_queries) and builds
the tensors, the split and the evaluator. The split depends only on
``split_seed`` and the fractions, so every trial of a sweep validates on the
same queries: paired comparisons need that.

Shipping to trials: pickling a ``DataSource`` (Ray's object store, through
``tune.with_parameters``) turns the embeddings into a numpy array and the loaded
RL/beam/pool entries into flat numpy columns. Ray hands numpy buffers to every
worker as read-only views of the shared object store, so N concurrent trials
hold one copy of a 400k-row matrix, not N; and the unpickled ``rl``/``beam``/
``pools`` are read-only mappings that build an entry only when it is read.

Building a task's tensors from the entries (filters, pools, padding) is the
expensive part of ``task()`` in time and transient memory: a 5,000-query file
decodes 100k python candidate objects. ``task()`` therefore keeps what it built
per data configuration (:class:`TaskData`, keyed by :func:`data_key`), and the
driver calls :meth:`DataSource.prepare` with the sweep's configurations before
Ray ships the source, so every trial receives the built tensors and decodes no
entry at all. A trial whose data configuration was not prepared (an Optuna
sample of a data knob) builds its own, as before.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import warnings
from bisect import bisect_left
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import torch

from trainer.config import TrainConfig
from trainer.data.build import build_dataset, stack_pools
from trainer.data.groups import QueryGroups
from trainer.data.loaders import BeamEntry, RLCandidate, RLEntry, rl_shot_num
from trainer.errors import UserError
from trainer.evaluate import CallableEvaluator, Evaluator, LookupEvaluator, SimulatorEvaluator
from trainer.state import EvalSplit, Task


@dataclass
class TaskData:
    """The tensors ``DataSource.task`` builds for one data configuration (shared by the trials that have it)."""

    train: QueryGroups                  # the training queries' scored candidate groups
    beam_train: QueryGroups | None      # the training queries' beams (SFT)
    splits: dict[str, EvalSplit]        # "val", and "test" when held out
    lookup: QueryGroups | None          # every query's recorded candidates, for the lookup evaluator

    def __reduce__(self):
        """Pickle every tensor as a numpy array, so that Ray hands trials store views, not copies."""
        splits = {name: (s.query_ids.numpy(), s.pool.numpy(), s.pool_mask.numpy(), _columns(s.groups))
                  for name, s in self.splits.items()}
        return _unpickle_task_data, (_columns(self.train), _columns(self.beam_train), splits,
                                     _columns(self.lookup))


def _columns(groups: QueryGroups | None) -> dict[str, np.ndarray] | None:
    return None if groups is None else {f.name: getattr(groups, f.name).numpy() for f in fields(groups)}


def _groups(cols: dict[str, np.ndarray] | None) -> QueryGroups | None:
    return None if cols is None else QueryGroups(**{k: shared_tensor(v) for k, v in cols.items()})


def _unpickle_task_data(train, beam_train, splits, lookup) -> TaskData:
    return TaskData(_groups(train), _groups(beam_train),
                    {name: EvalSplit(shared_tensor(q), shared_tensor(p), shared_tensor(m), _groups(g))
                     for name, (q, p, m, g) in splits.items()}, _groups(lookup))


def data_key(cfg: TrainConfig) -> str:
    """What ``task()`` builds depends on the data stage only."""
    return config_hash(dataclasses.asdict(cfg.data))


@dataclass
class DataSource:
    """Loaded inputs: embeddings, RL groups, beams, pools, and how to score a selection."""

    embeddings: torch.Tensor            # [N, d]
    rl: Mapping[int, RLEntry] | None    # loaders.load_rl_json output (a PackedRL once shipped)
    beam: Mapping[int, BeamEntry] | None  # loaders.load_beam_json output (a PackedBeam once shipped)
    pools: Mapping[int, list[int]] | None  # loaders.load_pools output (a PackedPools once shipped)
    evaluator: str = "simulator"        # "simulator" | "lookup" | "module:function"
    bench: Any = None                   # the simulator (oracle) when evaluator == "simulator"
    eval_seed: int = 0                  # seed of sampled evaluation (fixed per sweep, like a fixed VLM)
    fingerprint: str = ""               # content hash of the inputs (cache keys)
    prepared: dict[str, TaskData] = field(default_factory=dict)  # data_key -> built tensors

    @classmethod
    def from_files(cls, *, embeddings: str, rl: str | None = None, beam: str | None = None,
                   pools: str | None = None, evaluator: str = "lookup", bench: Any = None,
                   eval_seed: int = 0) -> "DataSource":
        from trainer.data import loaders

        if rl is None and beam is None:
            raise UserError("--rl-data/--beam-data: give at least one of them")
        emb = loaders.load_embeddings(embeddings)
        src = cls(embeddings=emb, rl=loaders.load_rl_json(rl) if rl else None,
                  beam=loaders.load_beam_json(beam) if beam else None,
                  pools=loaders.load_pools(pools) if pools else None, evaluator=evaluator, bench=bench,
                  eval_seed=eval_seed, fingerprint=_hash_files([embeddings, rl, beam, pools]) + evaluator)
        if evaluator == "lookup" and src.rl is None:
            raise UserError("--evaluator lookup: needs --rl-data (recorded correctness)")
        if evaluator not in ("simulator", "lookup"):
            CallableEvaluator(evaluator)  # fail now, in the driver, not in every trial
        return src

    @classmethod
    def from_simulator(cls, spec, cache_root: str | Path, eval_seed: int = 0) -> "DataSource":
        from trainer.simulator import Benchmark, ensure_files

        files = ensure_files(spec, cache_root)
        src = cls.from_files(embeddings=str(files.embeddings), rl=str(files.rl), beam=str(files.beam),
                             pools=str(files.pools), evaluator="simulator", bench=Benchmark.build(spec),
                             eval_seed=eval_seed)
        return src

    def make_evaluator(self, cfg: TrainConfig, data: TaskData) -> Evaluator:
        if self.evaluator == "simulator":
            return SimulatorEvaluator(self.bench, cfg.eval.eval_mode, seed=self.eval_seed)
        if self.evaluator == "lookup":
            return LookupEvaluator.from_groups(data.lookup)
        return CallableEvaluator(self.evaluator)

    def task(self, cfg: TrainConfig, device: str | None = None) -> Task:
        key = data_key(cfg)
        data = self.prepared.get(key)
        if data is None:
            data = self.prepared[key] = self._build(cfg)
        return Task(model_cfg=cfg.model, embeddings=self.embeddings, train=data.train, beam_train=data.beam_train,
                    splits=data.splits, evaluator=self.make_evaluator(cfg, data),
                    device=torch.device(device or cfg.run.device))

    def prepare(self, configs: Iterable[TrainConfig]) -> int:
        """Build the tensors of every distinct data configuration among ``configs``; returns how many."""
        for cfg in configs:
            key = data_key(cfg)
            if key not in self.prepared:
                self.prepared[key] = self._build(cfg)
        return len(self.prepared)

    def _build(self, cfg: TrainConfig) -> TaskData:
        # one decode of packed entries per call (the builder reads them several times); freed on return
        rl, beam, pools = (None if m is None else dict(m) for m in (self.rl, self.beam, self.pools))
        dataset, split, _ = build_dataset(embeddings=self.embeddings, rl=rl, beam=beam, pools=pools,
                                          data_cfg=cfg.data, check_finite=False)
        del rl, beam, pools
        if dataset.rl is None:
            raise UserError("--rl-data: RCE and GRPO need scored candidate groups (RL data)")
        train = dataset.rl.select(torch.isin(dataset.rl.query_ids, split.train))
        beam_train = None
        if dataset.beam is not None:
            beam_train = dataset.beam.select(torch.isin(dataset.beam.query_ids, split.train))
        splits = {}
        for name in ("val", "test"):
            ids = torch.tensor([q for q in getattr(split, name).tolist() if q in dataset.pools], dtype=torch.long)
            if len(ids):
                pool, pool_mask = stack_pools(dataset.pools, ids)
                # ranking metrics over recorded candidates: real data only (the simulator scores exactly)
                groups = None if self.evaluator == "simulator" else dataset.rl.select(
                    torch.isin(dataset.rl.query_ids, ids))
                splits[name] = EvalSplit(ids, pool, pool_mask, groups)
        if "val" not in splits:
            raise UserError("val_fraction: no validation query has a candidate pool; add queries or pools")
        return TaskData(train, beam_train, splits, dataset.rl if self.evaluator == "lookup" else None)

    def __reduce__(self):
        """Pickle as numpy columns (module docstring): what Ray shares between trials without copies."""
        state = {f.name: getattr(self, f.name) for f in fields(self)}
        emb = self.embeddings.detach().cpu().contiguous()
        state["embeddings"] = emb.numpy()
        state["rl"] = None if self.rl is None else PackedRL.pack(self.rl)
        state["beam"] = None if self.beam is None else PackedBeam.pack(self.beam)
        state["pools"] = None if self.pools is None else PackedPools.pack(self.pools)
        return _unpickle_source, (state,)


def _unpickle_source(state: dict) -> DataSource:
    return DataSource(**{**state, "embeddings": shared_tensor(state["embeddings"])})


def shared_tensor(array: np.ndarray) -> torch.Tensor:
    """``array`` as a tensor without a copy, same shape.

    Ray returns numpy arrays from its object store read-only, and torch warns that
    it cannot mark a tensor read-only. Nothing in the trainer writes to the
    embeddings or a task's tensors (batches gather rows into new tensors), so the
    warning is silenced here, for this conversion only; an in-place write would
    change every trial's data.
    """
    if array.flags.writeable:
        return torch.from_numpy(array)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable", category=UserWarning)
        return torch.from_numpy(array)


# ---------------------------------------------------------------------------
# Columnar, read-only mappings of loaded entries (equal, entry by entry, to the loaders' dicts)


class _Packed(Mapping):
    """A read-only {query id: entry} over numpy columns; ``qids`` [Q] ascending, ``start`` [Q + 1]
    offsets of each query's rows. An entry is built on each read and not kept."""

    def __init__(self, cols: dict[str, np.ndarray], **meta: Any):
        self.cols, self.meta = cols, meta
        self._qids: list[int] = cols["qids"].tolist()

    def __reduce__(self):
        return _unpickle_packed, (type(self), self.cols, self.meta)

    def __len__(self) -> int:
        return len(self._qids)

    def __iter__(self) -> Iterator[int]:
        return iter(self._qids)

    def __contains__(self, qid: object) -> bool:
        return self._row(qid) is not None

    def __getitem__(self, qid: int):
        row = self._row(qid)
        if row is None:
            raise KeyError(qid)
        start = self.cols["start"]
        return self._entry(self._qids[row], int(start[row]), int(start[row + 1]), row)

    def _row(self, qid: object) -> int | None:
        if not isinstance(qid, (int, np.integer)):
            return None
        row = bisect_left(self._qids, int(qid))
        return row if row < len(self._qids) and self._qids[row] == qid else None

    def _entry(self, qid: int, lo: int, hi: int, row: int):
        raise NotImplementedError


def _unpickle_packed(cls, cols: dict, meta: dict) -> _Packed:
    return cls(cols, **meta)


def _offsets(counts: list[int]) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(counts, dtype=np.int64)]).astype(np.int64)


def _codes(values: list[str | None], table: list[str]) -> np.ndarray:
    """Index of each value in ``table`` (appended when new), -1 for None."""
    out = np.empty(len(values), dtype=np.int16)
    for i, v in enumerate(values):
        if v is None:
            out[i] = -1
            continue
        if v not in table:
            table.append(v)
        out[i] = table.index(v)
    return out


def _optional(x: float) -> float | None:
    return None if x != x else x  # NaN encodes None: the loaders only keep finite numbers


class PackedRL(_Packed):
    """RL entries: per candidate (M rows) pointer [M, S], local [M, S] (+ has_local), labels and scores."""

    POINTER_FIELDS = ("pointer", "pointer_global", "pointer_pos")

    @classmethod
    def pack(cls, rl: Mapping[int, RLEntry]) -> "PackedRL":
        if isinstance(rl, PackedRL):
            return rl
        entries = [rl[q] for q in sorted(rl)]
        cands = [c for e in entries for c in e.candidates]
        shot = rl_shot_num(dict(rl)) or 0
        pools = [e.candidate_pool_ids or () for e in entries]
        gen_methods: list[str] = []
        modes: list[str] = []
        nan = float("nan")
        cols = {
            "qids": np.array([e.query_id for e in entries], dtype=np.int64),
            "start": _offsets([len(e.candidates) for e in entries]),
            "has_pool": np.array([e.candidate_pool_ids is not None for e in entries], dtype=bool),
            "pool_start": _offsets([len(p) for p in pools]),
            "pool_ids": np.array([i for p in pools for i in p], dtype=np.int64),
            "index": np.array([c.index for c in cands], dtype=np.int64),
            "pointer": np.array([c.pointer for c in cands], dtype=np.int64).reshape(len(cands), shot),
            "has_local": np.array([c.local is not None for c in cands], dtype=bool),
            "local": np.array([c.local or (0,) * shot for c in cands], dtype=np.int64).reshape(len(cands), shot),
            "field": np.array([cls.POINTER_FIELDS.index(c.pointer_field) for c in cands], dtype=np.int8),
            "acc": np.array([c.vqa_acc_score for c in cands], dtype=np.float64),
            "correct": np.array([-1 if c.vqa_correct is None else int(c.vqa_correct) for c in cands], dtype=np.int8),
            "beam_score": np.array([nan if c.beam_score is None else c.beam_score for c in cands], dtype=np.float64),
            "logprob": np.array([nan if c.logprob_score is None else c.logprob_score for c in cands],
                                dtype=np.float64),
            "gen_method": _codes([c.gen_method for c in cands], gen_methods),
            "eval_failed": np.array([c.eval_failed for c in cands], dtype=bool),
            "eval_mode": _codes([c.vqa_eval_mode for c in cands], modes),
        }
        return cls(cols, gen_methods=tuple(gen_methods), modes=tuple(modes))

    def _entry(self, qid: int, lo: int, hi: int, row: int) -> RLEntry:
        c, gens, modes = self.cols, self.meta["gen_methods"], self.meta["modes"]
        pool = None
        if c["has_pool"][row]:
            pool = tuple(c["pool_ids"][c["pool_start"][row]:c["pool_start"][row + 1]].tolist())
        cols = {k: c[k][lo:hi].tolist() for k in ("index", "pointer", "has_local", "local", "field", "acc",
                                                  "correct", "beam_score", "logprob", "gen_method",
                                                  "eval_failed", "eval_mode")}
        cands = tuple(RLCandidate(
            index=cols["index"][j], pointer=tuple(cols["pointer"][j]),
            pointer_field=self.POINTER_FIELDS[cols["field"][j]],
            local=tuple(cols["local"][j]) if cols["has_local"][j] else None, vqa_acc_score=cols["acc"][j],
            vqa_correct=None if cols["correct"][j] < 0 else bool(cols["correct"][j]),
            beam_score=_optional(cols["beam_score"][j]), logprob_score=_optional(cols["logprob"][j]),
            gen_method=None if cols["gen_method"][j] < 0 else gens[cols["gen_method"][j]],
            eval_failed=cols["eval_failed"][j],
            vqa_eval_mode=None if cols["eval_mode"][j] < 0 else modes[cols["eval_mode"][j]])
            for j in range(hi - lo))
        return RLEntry(qid, cands, pool)


class PackedBeam(_Packed):
    """Beam entries: every query's beams as rows of ``seqs`` [B_total, S] and ``scores`` [B_total]."""

    @classmethod
    def pack(cls, beam: Mapping[int, BeamEntry]) -> "PackedBeam":
        if isinstance(beam, PackedBeam):
            return beam
        entries = [beam[q] for q in sorted(beam)]
        shot = len(entries[0].beams[0]) if entries else 0
        seqs = [s for e in entries for s in e.beams]
        return cls({"qids": np.array([e.query_id for e in entries], dtype=np.int64),
                    "start": _offsets([len(e.beams) for e in entries]),
                    "seqs": np.array(seqs, dtype=np.int64).reshape(len(seqs), shot),
                    "scores": np.array([s for e in entries for s in e.scores], dtype=np.float64)})

    def _entry(self, qid: int, lo: int, hi: int, row: int) -> BeamEntry:
        seqs = self.cols["seqs"][lo:hi].tolist()
        return BeamEntry(qid, tuple(tuple(s) for s in seqs), tuple(self.cols["scores"][lo:hi].tolist()))


class PackedPools(_Packed):
    """Sampler pools: every query's candidate ids concatenated in ``ids``."""

    @classmethod
    def pack(cls, pools: Mapping[int, list[int]]) -> "PackedPools":
        if isinstance(pools, PackedPools):
            return pools
        qids = sorted(pools)
        return cls({"qids": np.array(qids, dtype=np.int64), "start": _offsets([len(pools[q]) for q in qids]),
                    "ids": np.array([i for q in qids for i in pools[q]], dtype=np.int64)})

    def _entry(self, qid: int, lo: int, hi: int, row: int) -> list[int]:
        return self.cols["ids"][lo:hi].tolist()


@dataclass
class WarmStart:
    """The SFT weights every trial starts from, and the shared RCE warm-up when no RCE knob varies."""

    sft_state: dict[str, torch.Tensor]
    rce_state: dict[str, torch.Tensor] | None = None
    info: dict = field(default_factory=dict)

    def states(self, cfg: TrainConfig) -> tuple[dict, dict | None]:
        return self.sft_state, self.rce_state


def _hash_files(paths: list[str | None]) -> str:
    h = hashlib.sha256()
    for p in paths:
        if p is None:
            h.update(b"-")
            continue
        with open(p, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]


def config_hash(values: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:16]
