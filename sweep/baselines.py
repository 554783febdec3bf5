"""Baseline rows of every comparison, evaluated exactly like the trials.

random ICDs, similarity retrieval, the SFT selector and the RCE-only selector
are scored on the same validation and test queries through the same
evaluator, so each trial can be compared with each baseline query by query.
"""
from __future__ import annotations

from trainer.config import TrainConfig
from trainer.evaluate import decode_sequences, evaluate_sequences, random_sequences, retrieval_sequences
from trainer.state import Task, seeded
from trainer.task import WarmStart


def evaluate_baselines(cfg: TrainConfig, task: Task, warm: WarmStart, rce_state: dict | None) -> dict:
    """{"random"|"retrieval"|"sft"|"rce_only": {"val": split record, "test": split record}}."""
    models = {"sft": warm.sft_state}
    if rce_state is not None:
        models["rce_only"] = rce_state
    out: dict[str, dict] = {}
    for split_name, split in task.splits.items():
        max_shot = min(cfg.eval.max_shot, int(split.pool_mask.sum(1).min()))
        shots = range(1, max_shot + 1)
        gen = seeded(cfg.run.seed, f"random-baseline-{split_name}")
        sequences = {
            "random": {k: random_sequences(split.pool, split.pool_mask, k, gen) for k in shots},
            "retrieval": {k: retrieval_sequences(task.embeddings, split.query_ids, split.pool, split.pool_mask, k)
                          for k in shots},
        }
        for name, state in models.items():
            model = task.new_model()
            model.load_state_dict(state)
            sequences[name] = decode_sequences(model, task.embeddings, split.query_ids, split.pool,
                                               split.pool_mask, max_shot)
        for name, seqs in sequences.items():
            report = evaluate_sequences(task.evaluator, split.query_ids, seqs)
            out.setdefault(name, {})[split_name] = report.to_json()
            out[name].setdefault("metrics", {})[split_name] = report.metrics()
    return out


def summary_lines(baselines: dict) -> list[str]:
    lines = []
    for name, rec in baselines.items():
        m = rec.get("metrics", {}).get("val", {})
        shots = " ".join(f"{m[k]:.3f}" for k in sorted(m) if k.startswith("acc_shot"))
        lines.append(f"  {name:<10} val acc_mean {m.get('acc_mean', float('nan')):.3f}  per shot {shots}")
    return lines

