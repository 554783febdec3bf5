"""SFT, RCE warm-up and post-training epochs, read top to bottom.

    train(config, task, report, sft_state=...)

``report(metrics, save)`` is called after every RCE and post-training epoch
with one flat dict whose keys never change (Tune's strict metric check and CSV
logger both need the first report to carry every key); ``save(directory)``
writes a resumable checkpoint there. Nothing here knows about Ray.

The post-training stage runs ``algorithm`` (trainer.algorithms) for
``grpo_epochs`` epochs whatever the algorithm; its reports carry phase
``"grpo"`` and count ``grpo_epoch``, ASHA's time unit, so every algorithm is
pruned on the same clock, and its loss is reported as ``grpo_loss``.
``algorithm: rce_only`` has no such stage (as ``grpo_epochs: 0``).

The GRPO family's reference ("old") policy is the SFT model the run starts
from, evaluated in eval mode, as in the users' trainer; ``old_policy_refresh:
epoch`` makes it the previous epoch's policy instead. DPO's reference is
always the SFT model; online GRPO's old policy is the one that drew each batch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch

from trainer import losses
from trainer.algorithms import ALGORITHMS, StageData
from trainer.batching import Batch, batch_indices, lr_scheduler, make_batch, rce_temperature, steps_per_epoch
from trainer.config import TrainConfig, post_epochs, post_steps_per_batch
from trainer.online import check_oracle
from trainer.model import PointerSelector
from trainer.rewards import rewards_for_training
from trainer.state import RunState, Task, evaluate_split, reference_logp, seeded

ReportFn = Callable[[dict, Callable[[str], None]], None]
LossHook = Callable[[torch.Tensor], torch.Tensor]

METRIC_KEYS = (
    "phase", "epoch", "grpo_epoch", "rce_loss", "rce_tau", "grpo_loss", "ppo_loss", "kl", "kl_beta",
    "clip_frac", "mean_ratio", "adv_mean", "adv_std", "adv_abs_max", "group_k", "frac_zero_std", "lr",
    "acc_shot1", "acc_shot2", "acc_shot3", "acc_shot4", "acc_mean", "acc_mean_se", "best_acc_mean", "best_epoch",
    "train_finished", "stop_reason", "train_reward", "anchor_loss", "frac_used", "pair_acc",
)


@dataclass
class TrainResult:
    best_acc_mean: float
    best_epoch: int
    stop_reason: str
    history: list[dict] = field(default_factory=list)
    evaluation: dict = field(default_factory=dict)
    final_state: dict = field(default_factory=dict)


class Diverged(RuntimeError):
    """A loss became non-finite; the run stops and is recorded as diverged."""


def fit_sft(cfg: TrainConfig, task: Task, log: Callable[[str], None] = print) -> dict[str, torch.Tensor]:
    """Cross-entropy on the training queries' beam sequences; returns the selector's state dict.

    Lever-Plus's SFT recipe: AdamW (weight decay 1e-3), 5% warm-up then cosine.
    """
    if task.beam_train is None:
        raise ValueError("SFT needs beam data for the training queries (or pass an SFT checkpoint)")
    torch.manual_seed(cfg.run.seed)
    model = task.new_model()
    groups = task.beam_train
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.sft.sft_lr, weight_decay=1e-3, fused=True)
    total = cfg.sft.sft_epochs * steps_per_epoch(groups.num_queries, cfg.sft.sft_batch_size)
    sched = lr_scheduler(opt, "cosine", 0.05, total)
    gen = seeded(cfg.run.seed, "sft")
    model.train()
    for epoch in range(cfg.sft.sft_epochs):
        total_loss, n = 0.0, 0
        for idx in batch_indices(groups.num_queries, cfg.sft.sft_batch_size, gen):
            b = make_batch(groups, idx, task.embeddings, task.device)
            nll = model.sequence_nll(b.query_emb, b.cand_emb, b.pool_mask, b.seqs,
                                     label_smoothing=cfg.model.label_smoothing, seq_mask=b.seq_mask)
            loss = (nll * b.seq_mask).sum() / b.seq_mask.sum()
            _step(model, opt, sched, loss, cfg.optim.grad_clip, "sft_loss")
            total_loss, n = total_loss + loss.item(), n + 1
        log(f"sft epoch {epoch + 1}/{cfg.sft.sft_epochs}: loss {total_loss / max(n, 1):.4f}")
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def train(cfg: TrainConfig, task: Task, report: ReportFn, *, sft_state: dict, rce_state: dict | None = None,
          resume_dir: str | None = None, loss_hook: LossHook | None = None) -> TrainResult:
    """RCE warm-up (skipped when ``rce_state`` is the shared warm-up) then post-training, validating every epoch.

    ``resume_dir`` is a directory an earlier ``report``'s ``save`` wrote; the
    run continues from the epoch after it, bit for bit. ``loss_hook`` sees
    every post-training loss before the step (fault injection in tests).
    """
    g, n_post = cfg.grpo, post_epochs(cfg)
    algo = ALGORITHMS.get(g.algorithm)
    if n_post and g.algorithm == "online_grpo":
        check_oracle(task.evaluator)
    torch.manual_seed(cfg.run.seed)
    if resume_dir is None:
        st = RunState.start(cfg, task, sft_state, rce_state)
    else:
        st = RunState.restore(cfg, task, resume_dir, sft_state)
    raw, norm = rewards_for_training(task.train, cfg.reward)
    rce_weights = raw if cfg.rce.rce_use_raw_reward else norm
    ref_logp = reference_logp(st.ref_model, task.train, task) if n_post and algo.reference != "none" else None

    try:
        while st.phase == "rce" and st.stage_epoch < cfg.rce.rce_epochs:
            stats = run_rce_epoch(st, task, rce_weights, cfg)
            _end_epoch(st, task, cfg, report, stats)
        st.enter_grpo()
        while not st.stop_reason and st.stage_epoch < n_post:
            if algo.reference == "old" and g.old_policy_refresh == "epoch" and st.stage_epoch > 0:
                ref_logp = reference_logp(st.model, task.train, task)
            k = g.grpo_early_top_k if st.stage_epoch < g.grpo_early_epochs else g.grpo_late_top_k
            stats = run_post_epoch(st, task, StageData(raw, norm, ref_logp, k), cfg, loss_hook)
            _end_epoch(st, task, cfg, report, stats)
    except Diverged as exc:
        st.stop_reason = f"diverged: {exc} in {st.phase} epoch {st.stage_epoch + 1}"

    if not st.history:  # nothing to train: evaluate the starting policy once
        _end_epoch(st, task, cfg, report, {"phase": st.phase}, final=True)
    elif not st.last_metrics.get("train_finished"):  # diverged mid-epoch
        st.last_metrics = _complete({**st.last_metrics, "train_finished": True, "stop_reason": st.stop_reason})
        report(st.last_metrics, st.save_to)
    return TrainResult(st.best_acc, st.best_epoch, st.last_metrics["stop_reason"], st.history, st.evaluation,
                       {k: v.detach().clone() for k, v in st.model.state_dict().items()})


def run_rce_epoch(st: RunState, task: Task, weights: torch.Tensor, cfg: TrainConfig) -> dict:
    """One pass of reward-weighted CE: loss = sum_c softmax(w / tau)_c * CE(y_c), tau annealed per step."""
    model, groups, rce = st.model, task.train, cfg.rce
    total_steps = rce.rce_epochs * steps_per_epoch(groups.num_queries, cfg.optim.batch_size)
    losses_, tau = [], rce.rce_temp_start
    model.train()
    for idx in batch_indices(groups.num_queries, cfg.optim.batch_size, st.generator):
        b = make_batch(groups, idx, task.embeddings, task.device)
        tau = rce_temperature(st.stage_step, total_steps, rce.rce_temp_start, rce.rce_temp_end)
        w = weights[idx, : b.seq_mask.shape[1]].to(task.device)
        loss = rce_batch_loss(model, b, w, tau, cfg.model.label_smoothing)
        _step(model, st.optimizer, st.scheduler, loss, cfg.optim.grad_clip, "rce_loss")
        st.stage_step += 1
        losses_.append(loss.item())
    return {"phase": "rce", "rce_loss": _mean(losses_), "rce_tau": tau, "lr": st.lr}


def rce_batch_loss(model: PointerSelector, b: Batch, weights: torch.Tensor, tau: float,
                   label_smoothing: float = 0.0) -> torch.Tensor:
    """RCE loss of one batch: every candidate of every query in one forward; weights [B, C]."""
    nll = model.sequence_nll(b.query_emb, b.cand_emb, b.pool_mask, b.seqs, label_smoothing=label_smoothing,
                             seq_mask=b.seq_mask)
    return losses.rce_loss(-nll, weights, b.seq_mask, tau=tau)


def run_post_epoch(st: RunState, task: Task, data: StageData, cfg: TrainConfig,
                   loss_hook: LossHook | None = None) -> dict:
    """One pass of the post-training algorithm over the training queries (the one loop for all of them)."""
    g, groups = cfg.grpo, task.train
    algo = ALGORITHMS[g.algorithm]
    rows: list[dict] = []
    # Old/reference log-probs come from eval mode; with dropout on, the ratio of an unchanged
    # policy is already far from 1 (the users' setting), so post_dropout=false is offered.
    st.model.train(g.post_dropout)
    for idx in batch_indices(groups.num_queries, cfg.optim.batch_size, st.generator):
        prepared = algo.prepare(st, task, cfg, data, idx)
        for _ in range(post_steps_per_batch(cfg)):
            loss, stats = algo.loss(st, cfg, prepared)
            if loss_hook is not None:
                loss = loss_hook(loss)
            _step(st.model, st.optimizer, st.scheduler, loss, cfg.optim.grad_clip, "grpo_loss")
            if algo.kl and g.adaptive_kl:
                st.kl_beta = losses.update_kl_beta(st.kl_beta, stats["kl"], target_min=g.kl_target_min,
                                                   target_max=g.kl_target_max, factor=g.kl_adjust_factor)
            rows.append({"grpo_loss": loss.item(), **stats})
    out = {key: _mean([row[key] for row in rows if not math.isnan(row[key])]) for key in rows[0]}
    return {**out, "phase": "grpo", "kl_beta": st.kl_beta if algo.kl else math.nan,
            "group_k": data.group_k if algo.curriculum else math.nan, "lr": st.lr}


def _end_epoch(st: RunState, task: Task, cfg: TrainConfig, report: ReportFn, stats: dict,
               final: bool = False) -> None:
    """Validate, keep the best checkpoint, apply early stopping, report."""
    if not final:
        st.stage_epoch += 1
        st.epoch += 1
    val = evaluate_split(st.model, task, "val", cfg.eval.max_shot)
    metrics = val.metrics()
    # The best checkpoint is chosen among GRPO epochs (RCE epochs when there is
    # no GRPO), so a trial that starts from the shared warm-up and one that
    # runs its own RCE choose from the same set.
    n_post = post_epochs(cfg)
    selectable = final or stats["phase"] == "grpo" or n_post == 0
    if selectable and metrics["acc_mean"] > st.best:
        test = evaluate_split(st.model, task, "test", cfg.eval.max_shot)
        st.record_best(metrics["acc_mean"], val, test)
    elif selectable:
        st.evals_without_best += 1
    patience = cfg.optim.early_stopping_patience
    if stats["phase"] == "grpo" and patience and st.evals_without_best >= patience:
        st.stop_reason = f"early_stopped: no better acc_mean in {patience} evaluations"
    last_epoch = (st.phase == "grpo" and st.stage_epoch >= n_post) or (
        n_post == 0 and st.stage_epoch >= cfg.rce.rce_epochs)
    finished = final or last_epoch or bool(st.stop_reason)
    metrics.update(stats, epoch=st.epoch, grpo_epoch=st.grpo_epochs_done, best_acc_mean=st.best_acc,
                   best_epoch=st.best_epoch, train_finished=finished,
                   stop_reason=(st.stop_reason or "completed") if finished else "")
    st.last_metrics = _complete(metrics)
    st.history.append(st.last_metrics)
    report(st.last_metrics, st.save_to)


def _step(model: PointerSelector, opt, sched, loss: torch.Tensor, grad_clip: float, name: str) -> None:
    if not torch.isfinite(loss):
        raise Diverged(f"non-finite {name}")
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    opt.step()
    sched.step()


def _mean(values: list[float]) -> float:
    return float(sum(values) / len(values)) if values else math.nan


def _complete(metrics: dict) -> dict:
    """Every key of METRIC_KEYS, NaN where a phase has no such value."""
    return {key: metrics.get(key, math.nan) for key in METRIC_KEYS} | {
        k: v for k, v in metrics.items() if k not in METRIC_KEYS}
