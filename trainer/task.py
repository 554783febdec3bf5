"""From inputs to a ``Task``: the data source shared by a sweep and the warm start every trial reuses.

A ``DataSource`` is loaded once by the driver (the user's Lever-Plus files or
the embedded simulator) and handed to every trial; ``source.task(cfg)``
applies the trial's data hyperparameters (filters, train_queries) and builds
the tensors, the split and the evaluator. The split depends only on
``split_seed`` and the fractions, so every trial of a sweep validates on the
same queries: paired comparisons need that.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from trainer.config import TrainConfig
from trainer.data.build import build_dataset, stack_pools
from trainer.errors import UserError
from trainer.evaluate import CallableEvaluator, Evaluator, LookupEvaluator, SimulatorEvaluator
from trainer.state import EvalSplit, Task


@dataclass
class DataSource:
    """Loaded inputs: embeddings, RL groups, beams, pools, and how to score a selection."""

    embeddings: torch.Tensor            # [N, d]
    rl: dict | None                     # loaders.load_rl_json output
    beam: dict | None                   # loaders.load_beam_json output
    pools: dict | None                  # loaders.load_pools output
    evaluator: str = "simulator"        # "simulator" | "lookup" | "module:function"
    bench: Any = None                   # the simulator (oracle) when evaluator == "simulator"
    eval_seed: int = 0                  # seed of sampled evaluation (fixed per sweep, like a fixed VLM)
    fingerprint: str = ""               # content hash of the inputs (cache keys)

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

    def make_evaluator(self, cfg: TrainConfig, dataset) -> Evaluator:
        if self.evaluator == "simulator":
            return SimulatorEvaluator(self.bench, cfg.eval.eval_mode, seed=self.eval_seed)
        if self.evaluator == "lookup":
            return LookupEvaluator.from_groups(dataset.rl)
        return CallableEvaluator(self.evaluator)

    def task(self, cfg: TrainConfig, device: str | None = None) -> Task:
        dataset, split, _ = build_dataset(embeddings=self.embeddings, rl=self.rl, beam=self.beam,
                                          pools=self.pools, data_cfg=cfg.data, check_finite=False)
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
        return Task(model_cfg=cfg.model, embeddings=self.embeddings, train=train, beam_train=beam_train,
                    splits=splits, evaluator=self.make_evaluator(cfg, dataset),
                    device=torch.device(device or cfg.run.device))


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
