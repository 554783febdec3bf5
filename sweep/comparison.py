"""The comparison table: one row per configuration (over its seeds) plus baselines.

Every configuration and baseline is scored the same way from per-query
correctness on the validation queries: mean, seed std, two-level bootstrap CI,
and paired tests against SFT and against the document's original
configuration, Holm-corrected over all of the table's tests. Selections are
compared too: a row whose selections equal SFT's on every shot cannot differ
from it, whatever the sampled accuracy says.
"""
from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np
import pandas as pd

from sweep import evaluations as E
from sweep import stats
from sweep.evaluations import BASELINES

METRICS = ("acc_shot1", "acc_shot2", "acc_shot3", "acc_shot4", "acc_mean")
SHOT_KEYS = ("1", "2", "3", "4")
ALPHA = 0.05
N_BOOT = 2000
_PER_METRIC = ("", "_std", "_ci_low", "_ci_high") + tuple(
    col.format(ref) for ref in ("sft", "orig")
    for col in ("_diff_{}", "_diff_{}_ci_low", "_diff_{}_ci_high", "_p_{}_raw", "_p_{}", "_verdict_{}"))
TAIL = (["acc_mean_test", "acc_mean_test_ci_low", "acc_mean_test_ci_high"]
        + [f"drift_sft_shot{k}" for k in SHOT_KEYS] + ["identical_to_sft", "same_selections_as", "boundary"])


def _identical_pairs(configs: list[E.Entity]) -> list[tuple[str, str, list]]:
    """Config pairs whose selections agree on every shot for every seed they share."""
    intern: dict = {}
    sigs = []
    for ent in configs:
        shots = sorted(ent.selections, key=E.shot_order)
        sig = {}
        for i, seed in enumerate(ent.seeds):
            key = tuple(E.signature(ent.selections[k][i]) for k in shots) if shots else None
            sig[str(seed)] = None if key is None else intern.setdefault((tuple(shots), key), len(intern))
        sigs.append(sig)
    pairs = []
    for i in range(len(configs)):
        for j in range(i + 1, len(configs)):
            shared = sorted(set(sigs[i]) & set(sigs[j]))
            if shared and all(sigs[i][s] is not None and sigs[i][s] == sigs[j][s] for s in shared):
                pairs.append((configs[i].row, configs[j].row, shared))
    return pairs


def _is_num(x: Any) -> bool:
    """A real number (numpy scalars included), not a bool."""
    return isinstance(x, numbers.Real) and not isinstance(x, (bool, np.bool_))


def _edge(value: Any, rng: Any) -> str | None:
    """'lower'/'upper' when a numeric value sits at the edge of its searched range."""
    if not isinstance(rng, dict) or not _is_num(value):
        return None
    vals = [v for v in rng.get("values") or [] if _is_num(v)]
    if len(set(vals)) >= 2:
        lo, hi = min(vals), max(vals)
        near = lambda a, b: math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)  # noqa: E731
        return "lower" if near(value, lo) else "upper" if near(value, hi) else None
    lo, hi = rng.get("low"), rng.get("high")
    if not (_is_num(lo) and _is_num(hi)) or hi <= lo:
        return None
    # continuous ranges: the outer 10% (in log space for log-scaled ranges) counts as the edge
    logs = "log" in str(rng.get("kind", "")) and lo > 0 and value > 0
    pos = (math.log(value / lo) / math.log(hi / lo)) if logs else (value - lo) / (hi - lo)
    return "lower" if pos <= 0.1 else "upper" if pos >= 0.9 else None


def _matches(row: pd.Series, original: Any, hp_cols: list[str]) -> bool:
    """Is this configuration the document's original one (sweep.json ``original``)?"""
    if row.get("preset") == "original":  # the spaces' preset of that name
        return True
    if not isinstance(original, dict):
        return False
    keys = [h for h in hp_cols if h != "preset" or "preset" in original]
    if not keys or any(h not in original for h in keys):
        return False
    for h in keys:
        a, b = row[h], original[h]
        if _is_num(a) and _is_num(b):
            if not math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-15):
                return False
        elif a != b:
            return False
    return True


def build_comparison(leaderboard: pd.DataFrame, evaluations: dict[str, dict], baselines: dict,
                     sweep_meta: dict) -> tuple[pd.DataFrame, str]:
    """(comparison DataFrame, markdown). Accuracies are fractions in the CSV, points in the markdown.

    Args:
        leaderboard: ``build_leaderboard`` output (trial_id, config_hash, seed, hyperparameters).
        evaluations: trial_id -> evaluation.json dict; trials without one are not aggregated.
        baselines: baselines.json dict (random/retrieval/sft/rce_only -> {"val", "test"}).
        sweep_meta: sweep.json dict (scientific, search_ranges, original).
    """
    cols = list(leaderboard.columns)
    hp_cols = cols[cols.index("grpo_epochs_done") + 1: cols.index("acc_shot1")]
    ents, sizes, skipped = E.load_entities(leaderboard, evaluations, baselines or {})
    first = leaderboard.drop_duplicates("config_hash").set_index("config_hash")
    counts = leaderboard.groupby("config_hash")["status"].agg(
        n_trials="size", n_failed=lambda s: int(s.isin(["errored", "diverged"]).sum()))
    meta = sweep_meta if isinstance(sweep_meta, dict) else {}
    orig = next((e for e in ents if e.kind == "config"
                 and _matches(first.loc[e.row], meta.get("original"), hp_cols)), None)
    index_of = {id(e): i for i, e in enumerate(ents)}
    sft = next((e for e in ents if e.row == "sft" and e.correct.get("val")), None)

    # pass 1: point estimates, and the arrays to resample (one batched bootstrap below)
    series: dict[tuple, int] = {}
    arrays, streams = [], []

    def resampled(ei: int, m: str, v: np.ndarray, shots: frozenset, stream: int) -> int:
        key = (ei, m, shots if m == "acc_mean" else None, stream)
        if key not in series:
            series[key] = len(arrays)
            arrays.append(v)
            streams.append(stream)
        return series[key]

    # between-seed variance of each metric, pooled over the configurations (stats.seed_variance)
    seeded = {m: stats.seed_variance([v for e in ents if e.kind == "config"
                                      for v in [E.values(e, "val", m)] if v is not None]) for m in METRICS}
    rows, cis, tests, diffs = [], [], [], []   # tests: (row, metric, ref tag, idx a, idx b, identical)
    seed_var, seed_df = [], []                 # per test: variance the seeds add to the mean difference
    for ei, ent in enumerate(ents):
        is_cfg = ent.kind == "config"
        row = {"row": ent.row, "kind": ent.kind, "label": "original" if ent is orig else
               (ent.row if not is_cfg else ""), "config_hash": ent.row if is_cfg else None}
        row.update({h: first.loc[ent.row, h] if is_cfg else None for h in hp_cols})
        row.update(n_trials=int(counts.loc[ent.row, "n_trials"]) if is_cfg else None,
                   n_failed=int(counts.loc[ent.row, "n_failed"]) if is_cfg else None,
                   n_seeds=len(ent.seeds) if ent.correct.get("val") else 0)
        drift = E.drift(ent, sft) if sft is not None and ent is not sft else {}
        # identical only when every scored shot was compared and none drifted
        identical = (bool(drift) and all(v == 0 for v in drift.values())
                     and set(ent.correct.get("val") or {}) <= set(drift))
        own = frozenset(ent.correct.get("val") or ())
        for m in METRICS:
            v = E.values(ent, "val", m)
            if v is None:
                continue
            per_seed = v.mean(1)
            row[m] = float(per_seed.mean())
            row[m + "_std"] = float(per_seed.std(ddof=1)) if len(per_seed) > 1 else math.nan
            cis.append((len(rows), m, resampled(ei, m, v, own, 0)))
            for ref, tag in ((sft, "sft"), (orig if is_cfg else None, "orig")):
                if ref is None or ref is ent or not ref.correct.get("val"):
                    continue
                shots = frozenset(ref.correct["val"]) & own
                a, b = E.values(ent, "val", m, shots), E.values(ref, "val", m, shots)
                if a is None or b is None:
                    continue
                same = tag == "sft" and (identical or drift.get(m.removeprefix("acc_shot")) == 0)
                tests.append((len(rows), m, tag, resampled(ei, m, a, shots, 0),
                              resampled(index_of[id(ref)], m, b, shots, 1), same))
                diffs.append(a.mean(0) - b.mean(0))
                row[f"{m}_diff_{tag}"] = float(diffs[-1].mean())
                # seeded configurations carry seed variance; a baseline is one fixed checkpoint
                weight = sum(1.0 / len(x.seeds) for x in (ent, ref) if x.kind == "config")
                seed_var.append(seeded[m][0] * weight)
                seed_df.append(seeded[m][1])
        t = E.values(ent, "test", "acc_mean")
        if t is not None:
            row["acc_mean_test"] = float(t.mean())
            lo, hi = stats.bootstrap_ci(t, n_boot=N_BOOT)
            row["acc_mean_test_ci_low"], row["acc_mean_test_ci_high"] = lo, hi
        row.update({f"drift_sft_shot{k}": drift.get(k, math.nan) for k in SHOT_KEYS})
        row["identical_to_sft"] = identical if drift else None
        rows.append(row)

    # pass 2: every CI from one set of replicates; paired CIs share the query draws
    reps = stats.bootstrap_replicates(arrays, n_boot=N_BOOT, streams=streams)
    q = (ALPHA / 2, 1 - ALPHA / 2)
    if cis:
        bounds = np.quantile(reps[[c[2] for c in cis]], q, axis=1)
        for (r, m, _), lo, hi in zip(cis, *bounds):
            rows[r][m + "_ci_low"], rows[r][m + "_ci_high"] = float(lo), float(hi)
    if tests:
        d_reps = reps[[t[3] for t in tests]] - reps[[t[4] for t in tests]]
        bounds = np.quantile(d_reps, q, axis=1)
        raw = stats.combined_pvalues(np.vstack(diffs), np.array(seed_var), np.array(seed_df), n_boot=N_BOOT)
    # Holm over every test of the table; identical selections need no test (p = 1)
    family = [i for i, t in enumerate(tests) if not t[5]]
    adj_of = dict(zip(family, stats.holm(raw[family]))) if family else {}
    discord = []
    for i, (r, m, tag, _, _, same) in enumerate(tests):
        p_raw, adj = (1.0, 1.0) if same else (float(raw[i]), float(adj_of[i]))
        rows[r][f"{m}_diff_{tag}_ci_low"], rows[r][f"{m}_diff_{tag}_ci_high"] = bounds[0][i], bounds[1][i]
        rows[r][f"{m}_p_{tag}_raw"], rows[r][f"{m}_p_{tag}"] = p_raw, adj
        rows[r][f"{m}_verdict_{tag}"] = stats.verdict(adj, rows[r][f"{m}_diff_{tag}"], ALPHA)
        if not same and tag == "sft" and m != "acc_mean":
            discord.append(float(np.mean(diffs[i] ** 2)))

    configs = [e for e in ents if e.kind == "config"]
    pairs = _identical_pairs(configs)
    for a, b, _ in pairs:
        for me, other in ((a, b), (b, a)):
            row = next(x for x in rows if x["row"] == me)
            row["same_selections_as"] = ";".join(filter(None, [row.get("same_selections_as"), other]))
    boundary = []
    scored = [x for x in rows if x["kind"] == "config" and not math.isnan(x.get("acc_mean", math.nan))]
    if scored:
        best = max(scored, key=lambda x: x["acc_mean"])
        ranges = meta.get("search_ranges") or {}
        for key in [k for k in meta.get("scientific") or [] if k in hp_cols]:
            # without a recorded range, the values the sweep actually tried are the range
            rng = ranges.get(key) or {"kind": "tried", "values": leaderboard[key].dropna().tolist()}
            side = _edge(best.get(key), rng)
            if side:
                boundary.append(f"{key}={best[key]} at the {side} edge")
        best["boundary"] = "; ".join(boundary) or None

    columns = (["row", "kind", "label", "config_hash"] + hp_cols + ["n_trials", "n_failed", "n_seeds"]
               + [m + s for m in METRICS for s in _PER_METRIC] + TAIL)
    table = pd.DataFrame(sorted(rows, key=_row_order), columns=columns)
    footer = dict(n_val=sizes["val"], n_test=sizes["test"], n_tests=len(family),
                  median_discordance=float(np.median(discord)) if discord else math.nan,
                  p_ref=float(E.values(sft, "val", "acc_mean").mean()) if sft is not None else 0.5,
                  skipped=skipped, pairs=pairs, boundary=boundary, has_best=bool(scored),
                  seed_var=seeded["acc_mean"],
                  statuses=leaderboard["status"].value_counts().to_dict())
    return table, render_markdown(table, hp_cols, footer)


def _row_order(row: dict) -> tuple:
    """Baselines first (SFT on top), then configurations by validation acc_mean, descending."""
    if row["kind"] == "baseline":
        return (0, BASELINES.index(row["row"]), 0.0)
    acc = row.get("acc_mean", math.nan)
    return (1, 0, -acc if not math.isnan(acc) else math.inf)


# ---------------------------------------------------------------------------
# markdown


def _pts(x: Any, signed: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return ""
    return f"{100 * x:+.1f}" if signed else f"{100 * x:.1f}"


def _p(x: Any) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return ""
    return "<0.001" if x < 0.001 else f"{x:.3f}"


def _fmt(x: Any) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return ""
    return f"{x:.4g}" if isinstance(x, float) else str(x)


def _text(x: Any) -> str:
    return x if isinstance(x, str) else ""


def _delta(r: dict, m: str, ref: str) -> str:
    d = _pts(r[f"{m}_diff_{ref}"], True)
    lo, hi = _pts(r[f"{m}_diff_{ref}_ci_low"], True), _pts(r[f"{m}_diff_{ref}_ci_high"], True)
    return f"{d} [{lo}, {hi}]" if d and lo else d


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    clean = lambda c: str(c).replace("|", "/")  # noqa: E731
    return (["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            + ["| " + " | ".join(clean(c) for c in r) + " |" for r in rows])


def _name(r: dict) -> str:
    return r["row"] + (" (original)" if r["label"] == "original" else "")


def _estimate(r: dict, m: str) -> str:
    std = _pts(r[m + "_std"])
    return _pts(r[m]) + (f" ± {std}" if std else "")


def _drift_cell(r: dict) -> str:
    if r["identical_to_sft"] is True:
        return "identical to SFT"
    if r["row"] == "sft":
        return ""
    return "/".join("-" if pd.isna(x) else f"{x:.2f}" for x in (r[f"drift_sft_shot{k}"] for k in SHOT_KEYS))


def _seed_note(seed_var: tuple[float, int]) -> str:
    """How seed variance entered the p-values (stats.combined_pvalues), for the footer."""
    sigma2, df = seed_var
    if not df:
        return " (one seed per configuration: seed variance is not in the p-values)"
    return (f" and, for seeded configurations, a t-test that adds the between-seed variance (seed sd of "
            f"acc_mean {100 * math.sqrt(sigma2):.1f} points, {df} df; the larger p counts)")


def render_markdown(table: pd.DataFrame, hp_cols: list[str], f: dict) -> str:
    """Headline table (acc_mean), per-shot table, notes and the noise footer."""
    recs = table.to_dict("records")
    main = []
    for r in recs:
        lo, hi = _pts(r["acc_mean_ci_low"]), _pts(r["acc_mean_ci_high"])
        ci = f"[{lo}, {hi}]" if lo else ""
        main.append([_name(r)] + [_fmt(r[h]) for h in hp_cols] + [
            r["n_seeds"], _estimate(r, "acc_mean"), ci, _pts(r["acc_mean_test"]),
            _delta(r, "acc_mean", "sft"), _p(r["acc_mean_p_sft"]), _text(r["acc_mean_verdict_sft"]),
            _delta(r, "acc_mean", "orig"), _p(r["acc_mean_p_orig"]), _text(r["acc_mean_verdict_orig"]),
            _drift_cell(r)])
    header = ["row"] + hp_cols + ["seeds", "val mean ± std", "95% CI", "test mean", "Δ vs SFT [95% CI]", "p",
                                  "verdict vs SFT", "Δ vs original [95% CI]", "p", "verdict vs original",
                                  "drift vs SFT (shots 1/2/3/4)"]
    lines = ["## Comparison (validation acc_mean; accuracy in points)", ""] + _md_table(header, main)
    shots = []
    for r in recs:
        cells = []
        for m in METRICS[:-1]:
            diff = _pts(r[m + "_diff_sft"], True)
            verdict = f", Δ {diff} (p {_p(r[m + '_p_sft'])}, {_text(r[m + '_verdict_sft'])})" if diff else ""
            cells.append(_estimate(r, m) + verdict)
        shots.append([_name(r)] + cells)
    lines += ["", "### Per shot (validation; Δ, p and verdict vs SFT)", ""]
    lines += _md_table(["row"] + [f"shot {k}" for k in SHOT_KEYS], shots)

    notes = []
    same = [_name(r) for r in recs if r["identical_to_sft"] is True]
    if same:
        notes.append("Identical to SFT (same selection on every validation query and shot, so the accuracy "
                     "cannot differ): " + ", ".join(same) + ".")
    for a, b, seeds in f["pairs"]:
        notes.append(f"Identical selections on every shot: {a} and {b} (seeds {', '.join(map(str, seeds))}); "
                     "their hyperparameters made no difference.")
    if f["boundary"]:
        notes.append("Boundary: the best configuration has " + "; ".join(f["boundary"])
                     + " of the searched range; widen the range before concluding.")
    elif f["has_best"]:
        notes.append("Boundary: no scientific hyperparameter of the best configuration is at a range edge.")
    if f["skipped"]:
        notes.append(f"{f['skipped']} trial evaluation(s) left out: their validation query ids differ from "
                     "this table's.")
    notes.append("Trials: " + ", ".join(f"{f['statuses'].get(s, 0)} {s}"
                                        for s in ("completed", "pruned", "errored", "diverged")) + ".")
    d, n, p_ref = f["median_discordance"], f["n_val"], f["p_ref"]
    m = max(f["n_tests"], 1)
    # Holm tests the smallest p at alpha/m and the largest at alpha: the MDE of a verdict lies in between
    paired = (f"paired at the median discordance d = {d:.3f}: {100 * stats.min_detectable_effect(n, d):.1f} "
              f"points per comparison, {100 * stats.min_detectable_effect(n, d, alpha=ALPHA / m):.1f} at the "
              f"Holm worst case alpha/{m}" if n and not math.isnan(d) else "paired: n/a (no comparison with SFT)")
    unpaired = (f"unpaired at p = {p_ref:.2f}: {100 * stats.min_detectable_effect_unpaired(n, p_ref):.1f} "
                "points" if n else "unpaired: n/a")
    footer = [f"Queries: {f['n_val']} validation, {f['n_test']} test (configurations are chosen on "
              "validation; test is held out).",
              f"Tests: paired sign-flip per query{_seed_note(f['seed_var'])}, Holm-corrected over the "
              f"{f['n_tests']} comparisons of this table, alpha {ALPHA}; CIs: bootstrap over queries and seeds.",
              f"Minimum detectable effect at n = {n} (80% power, alpha {ALPHA}): {paired}; {unpaired}."]
    return "\n".join(lines + [""] + [f"- {x}" for x in notes] + [""] + footer) + "\n"
