"""The simulator's data in Lever-Plus's exact file formats (reference lever-plus.md §1.2-1.5).

beam JSON   {"<q>": {"id_list": [[c2, c1, q] x beam], "score_list": [beam floats, desc]}}
RL JSON     k64 format: {"_meta": {...}, "<q>": {"query": {...}, "candidate_pool_ids": [64],
            "pointer_candidates": [{"pointer": local pair, "pointer_global": global pair, ...}]}}
pools JSON  the sampler cache {"<anchor>": [64 ids]}
embeddings  torch.save of a float32 tensor [N, d]

Floats are rounded so that the bytes do not depend on the last ulp of a platform's math.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from trainer.sim.candidates import Candidates, Scores
from trainer.sim.world import BenchmarkSpec

BEAM_NAME = "beam.json"
RL_NAME = "rl_data_k64.json"
POOLS_NAME = "pools.json"
EMBEDDINGS_NAME = "embeddings.pt"


@dataclass(frozen=True)
class BenchmarkFiles:
    """Paths of one written benchmark."""

    beam: Path
    rl: Path
    pools: Path
    embeddings: Path

    @classmethod
    def in_dir(cls, root: Path) -> "BenchmarkFiles":
        root = Path(root)
        return cls(beam=root / BEAM_NAME, rl=root / RL_NAME, pools=root / POOLS_NAME,
                   embeddings=root / EMBEDDINGS_NAME)

    def exist(self) -> bool:
        return all(Path(p).is_file() for p in (self.beam, self.rl, self.pools, self.embeddings))


def _num(x: float, digits: int = 8) -> float | None:
    return None if math.isnan(x) else round(float(x), digits)


def beam_json(anchors: torch.Tensor, beam_seqs: torch.Tensor, beam_scores: torch.Tensor) -> dict:
    """anchors [A], beam_seqs [A, B, S] prompt order, beam_scores [A, B] -> Lever-Plus beam JSON."""
    out = {}
    for q, seqs, scores in zip(anchors.tolist(), beam_seqs.tolist(), beam_scores.tolist()):
        out[str(q)] = {"id_list": [s + [q] for s in seqs], "score_list": [_num(x, 10) for x in scores]}
    return out


def pools_json(anchors: torch.Tensor, pools: torch.Tensor) -> dict:
    return {str(q): row for q, row in zip(anchors.tolist(), pools.tolist())}


def query_record(q: int, topic: int) -> dict:
    """A synthetic OK-VQA question: 8 annotators say a, 2 say b (so b scores acc 0.6)."""
    image_id = 100000 + q
    answers = [f"a{q}"] * 8 + [f"b{q}"] * 2
    return {"query_id": q, "question_id": image_id * 10 + 5, "image_id": image_id,
            "question": f"simulated question {q} (topic {topic})?",
            "gt_answers_raw": answers, "gt_answers_norm": answers}


def rl_json(spec: BenchmarkSpec, key: str, anchors: torch.Tensor, topics: torch.Tensor,
            pools: torch.Tensor, cands: Candidates, scores: Scores) -> dict:
    """The k64 RL file: local pointers into ``candidate_pool_ids`` plus ``pointer_global``."""
    out: dict[str, Any] = {"_meta": {
        "created_at": "simulated", "vqa_model": "trainer.simulator oracle",
        "generator": "trainer.simulator", "cache_key": key, "spec": spec.to_dict(),
        "task_gen_args": {"max_new_tokens": 5, "num_beams": 3, "length_penalty": 0.0,
                          "min_new_tokens": 0, "do_sample": False},
        "strict_eval": True, "save_prompts": False,
        "notes": "one Bernoulli draw per pair from the simulator's reader oracle; pointer = "
                 "positions in candidate_pool_ids (prompt order), pointer_global = item ids"}}
    groups: list[list[dict]] = [[] for _ in range(len(anchors))]
    pool_rows = pools.tolist()
    for m, a in enumerate(cands.query_index.tolist()):
        i, j = cands.positions[m].tolist()
        q = int(anchors[a])
        correct = int(scores.correct[m])
        acc = float(scores.acc[m])
        answer = f"a{q}" if acc == 1.0 else (f"b{q}" if correct else "unknown")
        rank = int(cands.beam_rank[m])
        groups[a].append({
            "pointer": [i, j], "pointer_global": [pool_rows[a][i], pool_rows[a][j]],
            "gen_method": cands.method[m], "beam_rank": rank if rank >= 0 else None,
            "beam_score": _num(cands.beam_score[m]), "logprob_score": _num(cands.logprob_score[m]),
            "temperature": _num(cands.temperature[m]), "similarity_score": _num(cands.similarity[m]),
            "vqa_raw_generation": answer, "vqa_pred_answer": answer,
            "vqa_acc_score": acc, "vqa_correct": correct,
            "vqa_gt_prob": _num(scores.gt_prob[m], 12), "vqa_rel_token_f1": _num(scores.rel[m], 4),
            "vqa_rel_edit_sim": _num(scores.rel[m], 4), "vqa_rel_score": _num(scores.rel[m], 4),
            "vqa_eval_mode": "vqaEval", "eval_split_used": "train", "eval_failed": False})
    for a, q in enumerate(anchors.tolist()):
        out[str(q)] = {"query": query_record(q, int(topics[q])), "candidate_pool_ids": pool_rows[a],
                       "pointer_candidates": groups[a]}
    return out


def write_json(path: Path, obj: Any) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, separators=(",", ":"))
        f.write("\n")


def save_embeddings(path: Path, embeddings: torch.Tensor) -> None:
    # clone() drops any view's storage sharing so the file holds exactly [N, d].
    torch.save(embeddings.detach().to(torch.float32).contiguous().clone(), os.fspath(path))
