"""Per-query evaluations -> aligned arrays, one entity per configuration or baseline.

Parses ``evaluation.json`` (per trial) and ``baselines.json`` defensively into
correctness ``[seeds, n_queries]`` and ordered selections ``[n_queries, k]``
per shot, every entity on the same query order, so that any two rows of the
comparison table can be compared query by query. An evaluation whose query
ids differ from the table's is left out and counted, never misaligned.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from sweep import stats

BASELINES = ("sft", "rce_only", "retrieval", "random")


@dataclass(eq=False)  # identity, not a field-wise compare of numpy arrays
class Entity:
    """A configuration (several seeds) or a baseline, aligned to the table's query order."""

    row: str
    kind: str                                                  # "baseline" | "config"
    seeds: list = field(default_factory=list)
    correct: dict = field(default_factory=dict)                # split -> shot -> [S, n]
    selections: dict = field(default_factory=dict)             # shot -> [S] x [n, k] ids (val only)


def _canonical_ids(splits: list[Any]) -> list[int] | None:
    """The query ids shared by most evaluations of a split (SFT's come first and win ties)."""
    counts = Counter(tuple(s["query_ids"]) for s in splits
                     if isinstance(s, dict) and isinstance(s.get("query_ids"), list) and s["query_ids"])
    return list(counts.most_common(1)[0][0]) if counts else None


def _aligned(split: Any, ids: list[int]) -> tuple[dict, dict] | None:
    """(shot -> [S, n] correctness, shot -> [S][n] selections) in ``ids`` order, or None."""
    if not isinstance(split, dict) or not isinstance(split.get("query_ids"), list):
        return None
    qids = split["query_ids"]
    if len(qids) != len(ids) or (qids != ids and set(qids) != set(ids)):
        return None
    perm = None if qids == ids else np.array([{q: i for i, q in enumerate(qids)}[q] for q in ids])
    correct, sels = {}, {}
    for shot, vals in (split.get("correct") or {}).items():
        try:
            arr = np.asarray(vals, dtype=float)
        except (TypeError, ValueError):
            continue
        arr = arr[None, :] if arr.ndim == 1 else arr
        if arr.ndim != 2 or arr.shape[1] != len(ids) or not np.all((arr >= 0) & (arr <= 1)):
            continue  # malformed or unscorable shot: leave it out rather than guess
        correct[str(shot)] = arr if perm is None else arr[:, perm]
    for shot, rows in (split.get("selections") or {}).items():
        if not isinstance(rows, list) or len(rows) != len(ids):
            continue
        try:
            sel = np.asarray(rows, dtype=np.int64)      # [n, k]: the fast, usual case
        except (TypeError, ValueError):              # ragged: keep per-query tuples
            if not all(isinstance(r, list) for r in rows):
                continue
            sel = [tuple(r) for r in rows]
        if isinstance(sel, np.ndarray) and sel.ndim != 2:
            continue
        sels[str(shot)] = [sel if perm is None else (sel[perm] if isinstance(sel, np.ndarray)
                                                      else [sel[i] for i in perm])]
    return correct, sels


def _stack(parts: list[tuple[dict, dict]]) -> tuple[dict, dict]:
    """Concatenate per-seed parts over the shots every part has."""
    shots = set.intersection(*(set(c) for c, _ in parts))
    correct = {k: np.vstack([c[k] for c, _ in parts]) for k in shots}
    sel_shots = set.intersection(*(set(s) for _, s in parts))
    sels = {k: [x for _, s in parts for x in s[k]] for k in sel_shots}
    return correct, sels


def values(ent: Entity, split: str, metric: str, shots: set[str] | None = None) -> np.ndarray | None:
    """[S, n] correctness of one metric; acc_mean averages the given (default: all) shots."""
    data = ent.correct.get(split) or {}
    if metric != "acc_mean":
        return data.get(metric.removeprefix("acc_shot"))
    keys = sorted(set(data) if shots is None else set(data) & shots, key=shot_order)
    return np.mean([data[k] for k in keys], axis=0) if keys else None


def shot_order(k: str) -> tuple:
    return (0, int(k)) if k.isdigit() else (1, k)


def table_query_ids(evaluations: dict, baselines: dict) -> dict[str, list[int] | None]:
    """split -> the query ids every row is aligned to (SFT's, else the most common)."""
    ids = {}
    for sp in ("val", "test"):
        cands = [b.get(sp) for b in baselines.values() if isinstance(b, dict)]
        cands += [ev.get(sp) for ev in evaluations.values() if isinstance(ev, dict)]
        sft = baselines.get("sft")
        ids[sp] = _canonical_ids([sft.get(sp)] if isinstance(sft, dict) else []) or _canonical_ids(cands)
    return ids


def load_entities(board: pd.DataFrame, evaluations: dict, baselines: dict) -> tuple[list[Entity], dict, int]:
    """Baseline and configuration entities; also the split sizes and skipped evaluation count."""
    splits = ("val", "test")
    ids = table_query_ids(evaluations, baselines)
    skipped = 0
    ents = []
    for name in BASELINES:
        base = baselines.get(name) if isinstance(baselines, dict) else None
        if not isinstance(base, dict):
            continue
        ent = Entity(row=name, kind="baseline", seeds=[None])
        for sp in splits:
            got = _aligned(base.get(sp), ids[sp]) if ids[sp] else None
            if got:
                ent.correct[sp] = got[0]
                if sp == "val":
                    ent.selections = got[1]
        ents.append(ent)
    by_hash: dict[str, list] = {}
    for tid, chash, seed in board[["trial_id", "config_hash", "seed"]].itertuples(index=False):
        ev = evaluations.get(tid)
        if not ev:
            continue
        parts = {sp: _aligned(ev.get(sp), ids[sp]) if ids[sp] else None for sp in splits}
        if parts["val"] is None:
            skipped += 1
            continue
        by_hash.setdefault(chash, []).append((f"trial:{tid}" if pd.isna(seed) else seed, parts))
    for chash, trials in by_hash.items():
        ent = Entity(row=chash, kind="config", seeds=[s for s, _ in trials])
        for sp in splits:
            got = [p[sp] for _, p in trials]
            if all(got):
                ent.correct[sp], sels = _stack(got)
                if sp == "val":
                    ent.selections = sels
        ents.append(ent)
    return ents, {sp: len(ids[sp] or []) for sp in splits}, skipped


def drift(ent: Entity, ref: Entity) -> dict[str, float]:
    """shot -> fraction of (seed, query) whose ordered selection differs from the reference's."""
    out = {}
    for shot, ref_sel in ref.selections.items():
        if shot in ent.selections:
            out[shot] = float(np.mean([stats.selection_drift(s, ref_sel[0]) for s in ent.selections[shot]]))
    return out


def signature(sel: Any) -> Any:
    return (sel.shape, sel.tobytes()) if isinstance(sel, np.ndarray) else tuple(map(tuple, sel))


def trial_drift(trial_ids: list[str], evaluations: dict, baselines: dict, shots=("1", "2", "3", "4")) -> pd.DataFrame:
    """Per trial and shot, the fraction of validation queries whose selection differs from SFT's.

    Returns a DataFrame with ``trial_id`` and ``drift_sft_shot<k>`` per shot in
    ``shots`` (one row per id, in order); NaN where the trial has no aligned
    evaluation, the shot is missing, or there are no SFT selections.
    """
    ids = table_query_ids(evaluations, baselines or {})["val"]
    sft = (baselines or {}).get("sft")
    ref = _aligned(sft.get("val"), ids) if ids and isinstance(sft, dict) else None
    rows = []
    for tid in trial_ids:
        ev = evaluations.get(tid)
        got = _aligned(ev.get("val"), ids) if ref and isinstance(ev, dict) else None
        row = {"trial_id": tid}
        for k in shots:
            ok = got is not None and k in got[1] and k in ref[1]
            row[f"drift_sft_shot{k}"] = stats.selection_drift(got[1][k][0], ref[1][k][0]) if ok else np.nan
        rows.append(row)
    return pd.DataFrame(rows, columns=["trial_id"] + [f"drift_sft_shot{k}" for k in shots])
