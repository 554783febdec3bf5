"""What one training run holds: the task (data, splits, evaluator) and the resumable run state."""
from __future__ import annotations

import json
import math
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import torch

from trainer.batching import lr_scheduler, steps_per_epoch
from trainer.checkpoints import atomic_torch_save, safe_torch_load
from trainer.config import ModelConfig, TrainConfig, post_epochs, post_steps_per_batch
from trainer.data.groups import QueryGroups
from trainer.evaluate import EvalReport, Evaluator, decode_sequences, evaluate_sequences, queries_per_chunk
from trainer.model import PointerSelector

STATE_FILE = "state.pt"
EVALUATION_FILE = "evaluation.json"


def seeded(seed: int, label: str) -> torch.Generator:
    """A generator whose stream depends on (seed, label), so stages never share a stream by accident."""
    return torch.Generator().manual_seed((seed * 1_000_003 + zlib.crc32(label.encode())) % (2**63 - 1))


@dataclass
class EvalSplit:
    """Queries evaluated by decoding from their pools."""

    query_ids: torch.Tensor   # [Q]
    pool: torch.Tensor        # [Q, P] global ids
    pool_mask: torch.Tensor   # [Q, P]
    groups: QueryGroups | None = None   # recorded candidates of these queries (real data), for ranking metrics


@dataclass
class Task:
    """The data and evaluator of one run; built once per trial, never mutated."""

    model_cfg: ModelConfig
    embeddings: torch.Tensor            # [N, d]
    train: QueryGroups                  # scored candidate groups for RCE/GRPO
    beam_train: QueryGroups | None      # beam sequences for SFT
    splits: dict[str, EvalSplit]        # "val", and "test" when held out
    evaluator: Evaluator
    device: torch.device = torch.device("cpu")

    def new_model(self) -> PointerSelector:
        return PointerSelector.from_config(self.model_cfg, int(self.embeddings.shape[1])).to(self.device)


def evaluate_split(model: PointerSelector, task: Task, split: str, max_shot: int) -> EvalReport:
    s = task.splits.get(split)
    if s is None:
        return EvalReport(query_ids=torch.empty(0, dtype=torch.long))
    seqs = decode_sequences(model, task.embeddings, s.query_ids, s.pool, s.pool_mask, max_shot)
    report = evaluate_sequences(task.evaluator, s.query_ids, seqs)
    if s.groups is not None and s.groups.num_queries:
        report.extra.update(ranking_metrics(reference_logp(model, s.groups, task), s.groups))
    return report


def ranking_metrics(logp: torch.Tensor, groups: QueryGroups) -> dict[str, float]:
    """How the policy ranks the recorded candidates, whatever it would decode.

    ``expected_reward``: sum_c softmax(logp over the recorded group)_c * acc_c,
    averaged over queries; ``ndcg``: NDCG of the candidates sorted by logp with
    acc as gain. Both are defined on every recorded query, so they stay
    informative where the lookup evaluator's coverage is low.

    Args:
        logp: [Q, C] sequence log-probs; groups: the same queries' QueryGroups.
    """
    mask, gain = groups.seq_mask, groups.acc.double()
    weights = torch.softmax(logp.double().masked_fill(~mask, -math.inf), dim=1).nan_to_num(0.0)
    expected = (weights * gain).sum(1)
    order = logp.masked_fill(~mask, -math.inf).argsort(dim=1, descending=True)
    discount = 1.0 / torch.log2(torch.arange(mask.shape[1], dtype=torch.float64) + 2.0)
    dcg = (torch.gather(gain * mask, 1, order) * discount).sum(1)
    ideal = ((gain * mask).sort(dim=1, descending=True).values * discount).sum(1)
    has_gain = ideal > 0
    ndcg = (dcg[has_gain] / ideal[has_gain]).mean() if has_gain.any() else torch.tensor(math.nan)
    return {"expected_reward": float(expected.mean()), "ndcg": float(ndcg)}


@torch.no_grad()
def reference_logp(model: PointerSelector, groups: QueryGroups, task: Task, chunk: int | None = None) -> torch.Tensor:
    """Eval-mode sequence log-probs of every candidate of ``groups``: [Q, C] (padding = 0).

    ``chunk`` queries at a time (default: ``DECODE_CHUNK_BYTES`` of pool embeddings).
    """
    out = torch.zeros(groups.seq_mask.shape)
    chunk = chunk or queries_per_chunk(groups.pool.shape[1], task.embeddings.shape[1])
    for start in range(0, groups.num_queries, chunk):
        idx = torch.arange(start, min(start + chunk, groups.num_queries))
        pool = groups.pool[idx]
        logp = model.reference_logp(task.embeddings[groups.query_ids[idx]].float().to(task.device),
                                    task.embeddings[pool].float().to(task.device),
                                    groups.pool_mask[idx].to(task.device), groups.seqs[idx].to(task.device))
        out[idx] = logp.cpu().masked_fill(~groups.seq_mask[idx], 0.0)
    return out


@dataclass
class RunState:
    """Everything a checkpoint must hold to continue a run exactly where it stopped."""

    cfg: TrainConfig
    model: PointerSelector
    ref_model: PointerSelector
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    generator: torch.Generator
    phase: str                     # "rce" | "grpo" (the post-training stage, whatever the algorithm)
    kl_beta: float
    n_train: int                   # training query groups (sets steps per epoch)
    stage_epoch: int = 0           # epochs done in the current phase
    stage_step: int = 0            # optimiser steps done in the current phase
    epoch: int = 0                 # epochs done over both phases
    best: float = -math.inf
    best_epoch: int = 0
    best_state: dict | None = None
    evals_without_best: int = 0
    evaluation: dict = field(default_factory=dict)
    history: list = field(default_factory=list)
    last_metrics: dict = field(default_factory=dict)
    stop_reason: str = ""

    @classmethod
    def start(cls, cfg: TrainConfig, task: Task, sft_state: dict, rce_state: dict | None) -> "RunState":
        ref = task.new_model()
        ref.load_state_dict(sft_state)
        ref.eval()
        model = task.new_model()
        model.load_state_dict(rce_state if rce_state is not None else sft_state)
        phase = "rce" if rce_state is None and cfg.rce.rce_epochs > 0 else "grpo"
        st = cls(cfg, model, ref, None, None, seeded(cfg.run.seed, "batches"), phase,  # type: ignore[arg-type]
                 kl_beta=cfg.grpo.kl_beta, n_train=task.train.num_queries)
        st._new_optimizer()
        return st

    def _new_optimizer(self) -> None:
        """A fresh AdamW and LR schedule for the current phase (each stage has its own, as in Lever-Plus)."""
        cfg, rce = self.cfg, self.phase == "rce"
        lr = cfg.rce.rce_lr if rce else cfg.grpo.grpo_lr
        epochs = cfg.rce.rce_epochs if rce else post_epochs(cfg) * post_steps_per_batch(cfg)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=lr, weight_decay=cfg.optim.weight_decay,
                                           fused=True)  # one kernel per step: ~20% of a batch-1 step on CPU
        total = epochs * steps_per_epoch(self.n_train, cfg.optim.batch_size)
        self.scheduler = lr_scheduler(self.optimizer, cfg.optim.lr_schedule, cfg.optim.warmup_ratio, total)

    def enter_grpo(self) -> None:
        if self.phase == "grpo":
            return
        self.phase, self.stage_epoch, self.stage_step = "grpo", 0, 0
        self._new_optimizer()

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    @property
    def best_acc(self) -> float:
        return self.best if math.isfinite(self.best) else math.nan

    @property
    def grpo_epochs_done(self) -> int:
        return self.stage_epoch if self.phase == "grpo" else 0

    def record_best(self, acc: float, val: EvalReport, test: EvalReport) -> None:
        self.best, self.best_epoch, self.evals_without_best = acc, self.epoch, 0
        self.best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.evaluation = {"best_epoch": self.epoch, "metric": "acc_mean", "val": val.to_json(),
                           "test": test.to_json()}

    # -- checkpoints --------------------------------------------------------

    def save_to(self, directory: str | os.PathLike) -> None:
        """``state.pt`` (weights-only loadable) and ``evaluation.json`` of the best epoch so far."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        blob = {
            "model_state_dict": self.model.state_dict(), "best_state_dict": self.best_state,
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "generator": self.generator.get_state(), "torch_rng": torch.get_rng_state(),
            "counters": {"phase": self.phase, "kl_beta": self.kl_beta, "stage_epoch": self.stage_epoch,
                         "stage_step": self.stage_step, "epoch": self.epoch, "best": self.best,
                         "best_epoch": self.best_epoch, "evals_without_best": self.evals_without_best,
                         "stop_reason": self.stop_reason},
            "config": self.cfg.to_dict(),
        }
        atomic_torch_save(blob, directory / STATE_FILE)
        tmp = directory / f".{EVALUATION_FILE}.tmp"
        tmp.write_text(json.dumps(self.evaluation))
        os.replace(tmp, directory / EVALUATION_FILE)
        (directory / "history.json").write_text(json.dumps(self.history, default=float))

    @classmethod
    def restore(cls, cfg: TrainConfig, task: Task, directory: str | os.PathLike, sft_state: dict) -> "RunState":
        """The state ``save_to(directory)`` wrote; training continues with the next epoch."""
        directory = Path(directory)
        blob = safe_torch_load(directory / STATE_FILE, what="trial checkpoint")
        c = blob["counters"]
        st = cls.start(cfg, task, sft_state, rce_state=blob["model_state_dict"])
        st.phase = c["phase"]
        st._new_optimizer()
        st.optimizer.load_state_dict(blob["optimizer"])
        st.scheduler.load_state_dict(blob["scheduler"])
        st.generator.set_state(blob["generator"])
        torch.set_rng_state(blob["torch_rng"])
        for key in ("kl_beta", "stage_epoch", "stage_step", "epoch", "best", "best_epoch",
                    "evals_without_best", "stop_reason"):
            setattr(st, key, c[key])
        st.best_state = blob["best_state_dict"]
        st.evaluation = json.loads((directory / EVALUATION_FILE).read_text())
        st.history = json.loads((directory / "history.json").read_text())
        st.last_metrics = st.history[-1] if st.history else {}
        return st
