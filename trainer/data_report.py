"""Data-quality report of an RL JSON file (and optionally beam JSON, pools, embeddings).

    python -m trainer.data_report --rl-data rl_data_k64_v3.json
    python -m trainer.data_report --rl-data rl.json --beam-data beam.json --embeddings emb.pt --json
    python -m trainer.data_report --rl-data rl.json --require-positive-query \
        --filter-min-beam-score-quantile 0.2

Applies the trainer's filters to *every* query as if all were training queries
(no split, no ``train_queries`` subsample), so the numbers describe the file under
the given filter flags: queries and candidates kept, drops by reason, the positive
fraction, all-negative / all-positive queries (no advantage signal for GRPO),
candidates per query, and quantiles of reward (vqa_acc_score) and beam_score.
Bad input prints one line naming the file and field and exits with code 2.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from typing import Any, Mapping, Sequence

import torch

from trainer.config import DataConfig
from trainer.data.build import check_ids, prepare_rl
from trainer.data.embeddings import load_embeddings
from trainer.data.loaders import BeamEntry, RLEntry, load_beam_json, load_pools, load_rl_json, rl_shot_num
from trainer.errors import UserError

QUANTILES = (5, 25, 50, 75, 95)


def quantiles(values: Sequence[float]) -> dict[str, float] | None:
    """{"p5": ..., "p95": ...} with linear interpolation (numpy's default); None if empty."""
    if not values:
        return None
    q = torch.quantile(torch.tensor(values, dtype=torch.float64),
                       torch.tensor([p / 100 for p in QUANTILES], dtype=torch.float64))
    return {f"p{p}": float(v) for p, v in zip(QUANTILES, q)}


def report(rl: Mapping[int, RLEntry], data_cfg: DataConfig, *, beam: Mapping[int, BeamEntry] | None = None,
           pools: Mapping[int, Sequence[int]] | None = None, max_pool: int = 64) -> dict[str, Any]:
    """The report as a JSON-ready dict (keys documented in the module docstring of the CLI)."""
    kept, _, drops = prepare_rl(rl, data_cfg, pools=pools, beam=beam, max_pool=max_pool)
    cands = [c for e in kept.values() for c in e.candidates]
    per_query = [len(e.candidates) for e in kept.values()]
    positives = [sum(c.correct for c in e.candidates) for e in kept.values()]
    out: dict[str, Any] = {
        "queries": len(kept),
        "candidates": len(cands),
        "shot_num": rl_shot_num(dict(rl)),
        "dropped": drops.counts(),
        "positive_fraction": sum(positives) / len(cands) if cands else None,
        "all_negative_queries": sum(p == 0 for p in positives),
        "all_positive_queries": sum(p == n for p, n in zip(positives, per_query)),
        "candidates_per_query": ({"min": min(per_query), "median": statistics.median(per_query),
                                  "max": max(per_query)} if per_query else None),
        "reward_quantiles": quantiles([c.vqa_acc_score for c in cands]),
        "beam_score_quantiles": quantiles([c.beam_score for c in cands if c.beam_score is not None]),
    }
    if beam is not None:
        scores = [s for e in beam.values() for s in e.scores]
        out["beam"] = {"queries": len(beam), "beams": len(scores),
                       "shared_with_rl": len(set(beam) & set(rl)), "score_quantiles": quantiles(scores)}
    return out


def format_text(rep: Mapping[str, Any]) -> str:
    """The report for people: one fact per line."""
    def num(x: Any) -> str:
        return "-" if x is None else f"{x:.4g}" if isinstance(x, float) else str(x)

    def qline(q: Mapping[str, float] | None) -> str:
        return "-" if q is None else "  ".join(f"{k}={num(v)}" for k, v in q.items())

    cpq = rep["candidates_per_query"] or {"min": None, "median": None, "max": None}
    lines = [
        f"queries kept            {rep['queries']}",
        f"candidates kept         {rep['candidates']}  (shot_num {num(rep['shot_num'])})",
        f"dropped                 " + (", ".join(f"{k}={v}" for k, v in rep["dropped"].items()) or "nothing"),
        f"positive fraction       {num(rep['positive_fraction'])}",
        f"all-negative queries    {rep['all_negative_queries']}",
        f"all-positive queries    {rep['all_positive_queries']}",
        f"candidates per query    min {num(cpq['min'])}  median {num(cpq['median'])}  max {num(cpq['max'])}",
        f"reward (vqa_acc_score)  {qline(rep['reward_quantiles'])}",
        f"beam_score              {qline(rep['beam_score_quantiles'])}",
    ]
    if "beam" in rep:
        b = rep["beam"]
        lines.append(f"beam data               {b['queries']} queries ({b['shared_with_rl']} also in RL "
                     f"data), {b['beams']} beams, InfoScore {qline(b['score_quantiles'])}")
    if "embeddings" in rep:
        lines.append(f"embeddings              {rep['embeddings']['rows']} rows x {rep['embeddings']['dim']}")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m trainer.data_report", description=__doc__.split("\n")[0])
    ap.add_argument("--rl-data", required=True, help="RL JSON (any of the three Lever-Plus variants)")
    ap.add_argument("--beam-data", help="beam-search JSON (id_list / score_list)")
    ap.add_argument("--pools", help="sampler candidate-set cache {anchor: [ids]}")
    ap.add_argument("--embeddings", help="[N, d] tensor saved with torch.save; checks every id is a row")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    ap.add_argument("--require-positive-query", action=argparse.BooleanOptionalAction, default=False,
                    help="keep only queries with at least one correct candidate")
    ap.add_argument("--filter-min-beam-score-quantile", type=float, default=0.0, metavar="Q",
                    help="drop beam candidates below this quantile of beam_score (0 = keep all)")
    ap.add_argument("--skip-fallback", action=argparse.BooleanOptionalAction, default=True,
                    help="drop candidates scored by the fallback evaluator")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        cfg = DataConfig(require_positive_query=args.require_positive_query,
                         filter_min_beam_score_quantile=args.filter_min_beam_score_quantile,
                         skip_fallback=args.skip_fallback)
        rl = load_rl_json(args.rl_data)
        beam = load_beam_json(args.beam_data) if args.beam_data else None
        pools = load_pools(args.pools) if args.pools else None
        emb = load_embeddings(args.embeddings, mmap=True) if args.embeddings else None
        if emb is not None:
            check_ids(emb.shape[0], rl=rl, beam=beam, pools=pools,
                      sources={"rl": args.rl_data, "beam": args.beam_data or "", "pools": args.pools or "",
                               "embeddings": args.embeddings})
        rep = report(rl, cfg, beam=beam, pools=pools)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if emb is not None:
        rep["embeddings"] = {"rows": int(emb.shape[0]), "dim": int(emb.shape[1])}
    print(json.dumps(rep, indent=2) if args.json else format_text(rep))
    return 0


if __name__ == "__main__":
    sys.exit(main())
