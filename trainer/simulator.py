"""The embedded ICL benchmark: a reader oracle over simulated items, and Lever-Plus-format data.

``python sweep/run.py`` trains on this when the user brings no data. The world
(trainer.sim.world), the reader (trainer.sim.oracle) and the generators
(trainer.sim.generate, trainer.sim.candidates) are pure functions of a
:class:`BenchmarkSpec`; :class:`Benchmark` ties them together and is what others call::

    bench = Benchmark.build(DEFAULT_SPEC)
    files = ensure_files(DEFAULT_SPEC)            # beam / RL / pools / embeddings, cached
    acc = bench.p_correct(query_ids, seqs).mean()  # exact expected accuracy

CLI: ``python -m trainer.simulator --report [--json] [--seed S] [--smoke]`` and
``python -m trainer.simulator --write DIR [--seed S] [--smoke]``.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from trainer.errors import ConfigError, DataError, UserError
from trainer.sim import files as _files
from trainer.sim.candidates import Candidates, ProposerParams, Scores, rl_candidates, score_candidates
from trainer.sim.files import BenchmarkFiles
from trainer.sim.generate import (SHOT_NUM, infoscore_beam_search, random_icds, sample_anchors_and_pools,
                                  similarity_retrieval)
from trainer.sim.oracle import OracleParams
from trainer.sim.oracle import p_correct as _oracle_p
from trainer.sim.world import BenchmarkSpec, World, WorldConstants, build_world, cache_key, rng_for

__all__ = ["BenchmarkSpec", "Benchmark", "BenchmarkFiles", "DEFAULT_SPEC", "SMOKE_SPEC", "SFT_BASELINE",
           "DEFAULT_CACHE_ROOT", "ensure_files", "report"]

DEFAULT_SPEC = BenchmarkSpec()
SMOKE_SPEC = BenchmarkSpec(n_items=600, n_anchors=160, dim=64, n_topics=12)
DEFAULT_CACHE_ROOT = Path(os.environ.get("ICD_SIM_CACHE",
                                         Path(__file__).resolve().parent.parent / ".sim_cache"))

# sft_sequences_fn(bench, files, query_ids [Q], k) -> [Q, k] global ids in prompt order,
# as a callable or a "module:function" string (imported lazily, so the trainer may import
# this module). The report's "sft" row needs it; it must train on bench.train_query_ids() only.
SFT_BASELINE: Callable[["Benchmark", BenchmarkFiles, torch.Tensor, int], torch.Tensor] | str | None = (
    "trainer.warmup:simulator_sft_sequences")


@dataclass(eq=False, repr=False)
class Benchmark:
    """One simulated benchmark. A anchors (the queries with data), P = pool_size, B = beam_size."""

    spec: BenchmarkSpec
    world: World
    oracle: OracleParams
    proposer: ProposerParams
    anchors: torch.Tensor      # [A] long, sorted query ids
    pools: torch.Tensor        # [A, P] long global ids
    beam_seqs: torch.Tensor    # [A, B, 2] long global ids, prompt order, best beam first
    beam_scores: torch.Tensor  # [A, B] float64, last-step InfoScore, descending

    @classmethod
    def build(cls, spec: BenchmarkSpec = DEFAULT_SPEC) -> "Benchmark":
        """Draw the world, anchors, pools and oracle beams (deterministic in ``spec``)."""
        world = build_world(spec)
        oracle = OracleParams()
        anchors, pools = sample_anchors_and_pools(spec)
        beam_seqs, beam_scores = infoscore_beam_search(world, oracle, anchors, pools, spec.beam_size)
        return cls(spec, world, oracle, ProposerParams(), anchors, pools, beam_seqs, beam_scores)

    def __repr__(self) -> str:
        return f"Benchmark({self.spec}, key={self.key})"

    @property
    def key(self) -> str:
        """Hash of everything that determines the files (the cache directory's name)."""
        return cache_key(self.spec, self.world.constants, self.oracle, self.proposer)

    @staticmethod
    def key_for(spec: BenchmarkSpec) -> str:
        """The key of ``Benchmark.build(spec)``, without building it."""
        return cache_key(spec, WorldConstants(), OracleParams(), ProposerParams())

    @property
    def embeddings(self) -> torch.Tensor:
        """[N, d] float32 unit rows: the only view of the items a selector gets."""
        return self.world.embeddings

    @functools.cached_property
    def _row(self) -> dict[int, int]:
        return {q: i for i, q in enumerate(self.anchors.tolist())}

    def rows(self, query_ids: torch.Tensor) -> torch.Tensor:
        """Anchor rows of query ids [Q] -> [Q] long; a non-anchor id is a DataError."""
        try:
            return torch.tensor([self._row[int(q)] for q in query_ids.tolist()], dtype=torch.long)
        except KeyError as e:
            raise DataError(f"simulator: query id {e.args[0]} is not an anchor of this benchmark "
                            f"(seed {self.spec.seed}); use bench.anchors") from None

    def pool(self, query_id: int) -> torch.Tensor:
        """The 64-item candidate pool of one anchor: [P] long global ids."""
        return self.pools[self.rows(torch.tensor([int(query_id)]))[0]].clone()

    def eval_query_ids(self) -> torch.Tensor:
        """The held-out anchors the report evaluates on: [spec.n_eval] long, sorted."""
        return self.anchors[self._eval_mask()]

    def train_query_ids(self) -> torch.Tensor:
        """The anchors a selector may train on for the report: [A - n_eval] long, sorted."""
        return self.anchors[~self._eval_mask()]

    def _eval_mask(self) -> torch.Tensor:
        perm = rng_for(self.spec, "eval-split").permutation(self.spec.n_anchors)[:self.spec.n_eval]
        mask = torch.zeros(self.spec.n_anchors, dtype=torch.bool)
        mask[torch.from_numpy(perm)] = True
        return mask

    # -- the reader ---------------------------------------------------------

    def p_correct(self, query_ids: torch.Tensor, seqs: torch.Tensor) -> torch.Tensor:
        """Exact P(correct). query_ids [B] long, seqs [B, k] long global ids in prompt order
        (last = nearest the query) -> [B] float32 on the input's device."""
        p = _oracle_p(self.world, self.oracle, query_ids.cpu(), seqs.cpu())
        return p.to(torch.float32).to(query_ids.device)

    def sample_correct(self, query_ids: torch.Tensor, seqs: torch.Tensor,
                       generator: torch.Generator | None = None) -> torch.Tensor:
        """One evaluation run: [B] float32 0/1 drawn from p_correct (a CPU generator)."""
        p = _oracle_p(self.world, self.oracle, query_ids.cpu(), seqs.cpu())
        return torch.bernoulli(p, generator=generator).to(torch.float32).to(query_ids.device)

    # -- baselines: [Q, k] global ids in prompt order ------------------------

    def _pools_for(self, query_ids: torch.Tensor, pools: torch.Tensor | None) -> torch.Tensor:
        return self.pools[self.rows(query_ids)] if pools is None else pools.cpu().long()

    def random_sequences(self, query_ids: torch.Tensor, pools: torch.Tensor | None, k: int,
                         generator: torch.Generator) -> torch.Tensor:
        """k distinct uniform ICDs from each query's pool (pools [Q, P] or None = the anchors')."""
        return random_icds(self._pools_for(query_ids, pools), k, generator)

    def retrieval_sequences(self, query_ids: torch.Tensor, pools: torch.Tensor | None, k: int
                            ) -> torch.Tensor:
        """Top-k by embedding cosine to the query, the most similar nearest the query."""
        pools = self._pools_for(query_ids, pools)
        return similarity_retrieval(self.embeddings, query_ids.cpu().long(), pools, k)

    def best_beam_sequences(self, query_ids: torch.Tensor, k: int = SHOT_NUM) -> torch.Tensor:
        """The beam JSON's top beam (k=2), or its first-chosen ICD alone (k=1)."""
        if not 1 <= k <= SHOT_NUM:
            raise ValueError(f"best_beam_sequences: beams have {SHOT_NUM} shots, asked for k={k}")
        return self.beam_seqs[self.rows(query_ids), 0, SHOT_NUM - k:].clone()

    # -- files ----------------------------------------------------------------

    def rl_data(self) -> tuple[Candidates, Scores]:
        """The scored RL candidates (about 12 pairs per anchor; ~1 s, computed on demand)."""
        cands = rl_candidates(self.world, self.oracle, self.proposer, self.spec, self.anchors, self.pools)
        return cands, score_candidates(self.world, self.oracle, self.spec, self.anchors, self.pools, cands)

    def write(self, directory: str | os.PathLike) -> BenchmarkFiles:
        """Write beam JSON, k64 RL JSON, pools JSON and embeddings.pt into ``directory``."""
        out = BenchmarkFiles.in_dir(Path(directory))
        out.beam.parent.mkdir(parents=True, exist_ok=True)
        cands, scores = self.rl_data()
        _files.write_json(out.beam, _files.beam_json(self.anchors, self.beam_seqs, self.beam_scores))
        _files.write_json(out.rl, _files.rl_json(self.spec, self.key, self.anchors, self.world.topics,
                                                 self.pools, cands, scores))
        _files.write_json(out.pools, _files.pools_json(self.anchors, self.pools))
        _files.save_embeddings(out.embeddings, self.embeddings)
        return out


def ensure_files(spec: BenchmarkSpec = DEFAULT_SPEC, cache_root: str | os.PathLike | None = None
                 ) -> BenchmarkFiles:
    """The benchmark's files, generated once per spec under ``cache_root/sim-<hash>``.

    Generation writes into a private temp dir and renames it into place, so readers
    never see half-written files and two racing processes both end with one complete copy.
    """
    root = Path(cache_root) if cache_root is not None else DEFAULT_CACHE_ROOT
    key = Benchmark.key_for(spec)
    final = root / f"sim-{key}"
    files = BenchmarkFiles.in_dir(final)
    if files.exist():
        return files
    if final.exists():
        raise DataError(f"{final}: cached simulator files are incomplete (something removed some); "
                        f"delete that directory to regenerate them")
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-sim-{key}-", dir=root))
    os.chmod(tmp, 0o755)  # mkdtemp's 0700 would hide the cache from other users of the checkout
    try:
        Benchmark.build(spec).write(tmp)
        try:
            os.rename(tmp, final)
        except OSError:
            if not files.exist():  # not a lost race: a real failure
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return files


def report(bench: Benchmark, files: BenchmarkFiles | None = None, *, shots: tuple[int, ...] = (1, 2, 3, 4),
           random_draws: int = 32, sft_fn: Callable | None = None) -> dict[str, dict[str, float]]:
    """Exact accuracy of the baselines on the held-out anchors, per shot.

    Returns {"shot1": {"random", "retrieval", "best_beam" (shots <= 2), "sft" (if sft_fn)}, ...};
    "random" averages ``random_draws`` independent draws per query.
    """
    q = bench.eval_query_ids()
    gen = torch.Generator().manual_seed(bench.spec.seed)
    out: dict[str, dict[str, float]] = {}
    for k in shots:
        rand = torch.stack([bench.p_correct(q, bench.random_sequences(q, None, k, gen))
                            for _ in range(random_draws)])
        row = {"random": float(rand.double().mean()),
               "retrieval": float(bench.p_correct(q, bench.retrieval_sequences(q, None, k)).double().mean())}
        if k <= SHOT_NUM:
            row["best_beam"] = float(bench.p_correct(q, bench.best_beam_sequences(q, k)).double().mean())
        if sft_fn is not None:
            seqs = sft_fn(bench, files, q, k)
            row["sft"] = float(bench.p_correct(q, seqs.long()).double().mean())
        out[f"shot{k}"] = row
    return out


def resolve_sft_baseline(hook: Callable | str | None = None) -> Callable | None:
    """SFT_BASELINE (or ``hook``) as a callable; None when unset."""
    hook = SFT_BASELINE if hook is None else hook
    if hook is None or callable(hook):
        return hook
    module, _, name = str(hook).partition(":")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"trainer.simulator.SFT_BASELINE: cannot import {hook!r} ({e}); "
                          f"give 'package.module:function'") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.simulator",
                                     description=__doc__.split("\n")[0])
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--report", action="store_true", help="baseline accuracy per shot (held-out anchors)")
    action.add_argument("--write", metavar="DIR", help="write beam/RL/pools/embeddings files into DIR")
    parser.add_argument("--json", action="store_true", help="--report as one JSON object")
    parser.add_argument("--seed", type=int, default=None, help="benchmark seed (default 0)")
    parser.add_argument("--smoke", action="store_true", help="the tiny SMOKE_SPEC instead of DEFAULT_SPEC")
    args = parser.parse_args(argv)
    try:
        spec = dataclasses.replace(SMOKE_SPEC if args.smoke else DEFAULT_SPEC,
                                   **({} if args.seed is None else {"seed": args.seed}))
        if args.write:
            files = Benchmark.build(spec).write(args.write)
            for name, path in dataclasses.asdict(files).items():
                print(f"{name}: {path}")
            return 0
        bench = Benchmark.build(spec)
        sft = resolve_sft_baseline()
        rows = report(bench, ensure_files(spec) if sft else None, sft_fn=sft)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(rows))
        return 0
    q = bench.eval_query_ids()
    print(f"simulated benchmark seed={spec.seed}: exact accuracy on {len(q)} held-out anchors "
          f"(of {spec.n_anchors}; {spec.n_items} items, pool {spec.pool_size})")
    cols = ["random", "retrieval", "best_beam"] + (["sft"] if sft else [])
    print("shot  " + "  ".join(f"{c:>9}" for c in cols))
    for shot, row in rows.items():
        print(f"{shot[4:]:>4}  " + "  ".join(f"{row[c]:9.4f}" if c in row else f"{'-':>9}" for c in cols))
    if not sft:
        print("sft: unavailable (trainer.simulator.SFT_BASELINE is not set)")
    return 0


if __name__ == "__main__":
    from trainer.simulator import main as _main  # the canonical module, whose SFT_BASELINE others set

    raise SystemExit(_main())
