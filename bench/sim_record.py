"""Record real simulator training runs once, replay their evaluation noise many times.

The benches need curves of *exact* per-query success probabilities: a run is
trained once through ``trainer.loop.train`` (no Ray), and every GRPO epoch's
validation selections and their exact P(correct) are kept. Sampled
evaluations are then drawn from them exactly as the product's sampled
evaluator does (``trainer.evaluate.prompt_uniforms``: one deterministic draw
per (eval seed, query, ordered prompt)), for any number of eval seeds, at no
training cost.

The benchmark is a reduced simulator (``BENCH_SPEC``: 1200 items, 400 anchors,
64-d) with 35% of the queries for validation (140) so that one accuracy has
the few-point noise of the users' 200-query evaluations; ``BASE`` is a small
training budget (SFT 10, RCE 3, GRPO 9 epochs, batch 4). Recordings are cached
under ``results/_cache/bench/`` by content hash of (spec, config).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import time
import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / "results" / "_cache" / "bench"
BASE = {"sft_epochs": 10, "rce_epochs": 3, "grpo_epochs": 9, "batch_size": 4, "val_fraction": 0.35,
        "test_fraction": 0.15, "eval_mode": "exact"}


def bench_spec():
    from trainer.simulator import SMOKE_SPEC

    return dataclasses.replace(SMOKE_SPEC, n_items=1200, n_anchors=400)


def _shr(x: torch.Tensor, n: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's ``>>`` is arithmetic: it copies the sign bit)."""
    return (x >> n) & ((1 << (64 - n)) - 1)


def _splitmix64(x: torch.Tensor) -> torch.Tensor:
    x = x ^ _shr(x, 30)
    x = x * -4658895280553007687  # 0xbf58476d1ce4e5b9
    x = x ^ _shr(x, 27)
    x = x * -7723592293110705685  # 0x94d049bb133111eb
    return x ^ _shr(x, 31)


def _corrected_prompt_uniforms(query_ids: torch.Tensor, seqs: torch.Tensor, seed: int) -> torch.Tensor:
    """``trainer.evaluate.prompt_uniforms`` with logical shifts: uniform on [0, 1)."""
    h = _splitmix64(torch.full_like(query_ids, seed + 0x9E3779B9) + query_ids)
    for t in range(seqs.shape[1]):
        h = _splitmix64(h ^ (seqs[:, t] + (t + 1) * 0x632BE5AB))
    return _shr(h, 11).double() / float(1 << 53)


@functools.lru_cache(maxsize=1)
def prompt_uniforms_source():
    """(function, label): the product's per-prompt uniforms if they cover [0, 1), else the corrected copy.

    With arithmetic shifts the product's last xor-shift clears the sign bit, so
    its uniforms lie in [0, 0.5) and a sampled outcome is correct with
    probability min(1, 2p) instead of p; the benches must not inherit that.
    """
    from trainer.evaluate import prompt_uniforms

    q = torch.arange(4096)
    if float(prompt_uniforms(q, (q * 7919 % 1000)[:, None], 0).max()) > 0.75:
        return prompt_uniforms, "trainer.evaluate.prompt_uniforms"
    return _corrected_prompt_uniforms, ("corrected copy of trainer.evaluate.prompt_uniforms (the product's "
                                        "draws lie in [0, 0.5): see bench/RESULTS.md)")


@dataclass
class Curve:
    """One run's validation record per GRPO epoch (E epochs, S shots, Q queries)."""

    hyper: dict
    query_ids: np.ndarray     # [Q] int64
    p: np.ndarray             # [E, S, Q] exact P(correct) of the selection of shot s+1
    sel: np.ndarray           # [E, Q, S] global ids; shot k's prompt is sel[e, :, :k]
    seconds: float = 0.0      # training time of this run (0 when read from the cache)

    def exact_acc(self, epoch: int = -1) -> float:
        """acc_mean (mean over shots and queries) of the exact probabilities at ``epoch``."""
        return float(self.p[epoch].mean())

    def sampled(self, epoch: int, eval_seed: int) -> np.ndarray:
        """[S, Q] 0/1 outcomes of the product's sampled evaluator with ``eval_seed``."""
        uniforms = prompt_uniforms_source()[0]
        q = torch.as_tensor(self.query_ids)
        out = np.empty(self.p.shape[1:])
        for s in range(self.p.shape[1]):
            u = uniforms(q, torch.as_tensor(self.sel[epoch, :, : s + 1]), eval_seed).numpy()
            out[s] = u < self.p[epoch, s]
        return out


class _Recorder:
    """Wraps the task's evaluator; keeps the last validation score of each shot."""

    def __init__(self, inner, val_ids: torch.Tensor):
        self.inner, self.val_ids, self.name = inner, val_ids, inner.name
        self.last: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def score(self, query_ids: torch.Tensor, seqs: torch.Tensor) -> torch.Tensor:
        p = self.inner.score(query_ids, seqs)
        if torch.equal(query_ids, self.val_ids):
            self.last[seqs.shape[1]] = (p.numpy().copy(), seqs.numpy().copy())
        return p


class Recorder:
    """Source, SFT and (optionally shared) RCE warm start of ``BENCH_SPEC``; trains and records runs."""

    def __init__(self, *, share_rce: bool):
        from trainer.config import from_dict
        from trainer.task import DataSource
        from trainer.warmup import prepare_warm_start

        torch.set_num_threads(1)
        self.spec = bench_spec()
        self.source = DataSource.from_simulator(self.spec, CACHE / "simulator")
        self.share_rce = share_rce
        base = from_dict(BASE)
        self.warm = prepare_warm_start(base, self.source, CACHE / "warmup", share_rce=share_rce,
                                       log=lambda s: None)

    def key(self, hyper: dict) -> str:
        blob = json.dumps({"spec": dataclasses.asdict(self.spec), "base": BASE, "hyper": hyper,
                           "share_rce": self.share_rce}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def record(self, hyper: dict, *, use_cache: bool = True) -> Curve:
        """Train ``BASE | hyper`` for its full GRPO budget; every GRPO epoch's validation record."""
        path = CACHE / "curves" / f"{self.key(hyper)}.npz"
        if use_cache and path.exists():
            with np.load(path) as z:  # plain arrays, allow_pickle stays False
                return Curve(hyper, z["query_ids"], z["p"], z["sel"])
        from trainer.config import from_dict
        from trainer.loop import train

        cfg = from_dict({**BASE, **hyper})
        task = self.source.task(cfg)
        rec = _Recorder(task.evaluator, task.splits["val"].query_ids)
        task = dataclasses.replace(task, evaluator=rec)
        ps, sels = [], []

        def report(m: dict, save) -> None:
            if m["phase"] != "grpo":
                return
            shots = sorted(rec.last)
            ps.append(np.stack([rec.last[k][0] for k in shots]))
            sels.append(rec.last[shots[-1]][1])  # the longest decode; shorter shots are its prefixes

        start = time.time()
        train(cfg, task, report, sft_state=self.warm.sft_state,
              rce_state=self.warm.rce_state if self.share_rce else None)
        curve = Curve(hyper, task.splits["val"].query_ids.numpy(), np.stack(ps), np.stack(sels),
                      time.time() - start)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.stem + ".tmp.npz")
        np.savez(tmp, query_ids=curve.query_ids, p=curve.p, sel=curve.sel)
        tmp.replace(path)
        return curve

    def sft_record(self) -> tuple[np.ndarray, np.ndarray]:
        """The SFT selector's validation (p [S, Q], sel [Q, S]), decoded like the baseline row."""
        from trainer.config import from_dict
        from trainer.evaluate import decode_sequences

        task = self.source.task(from_dict(BASE))
        split = task.splits["val"]
        model = task.new_model()
        model.load_state_dict(self.warm.sft_state)
        seqs = decode_sequences(model, task.embeddings, split.query_ids, split.pool, split.pool_mask, 4)
        p = np.stack([task.evaluator.score(split.query_ids, seqs[k]).numpy() for k in sorted(seqs)])
        return p, seqs[max(seqs)].numpy()
