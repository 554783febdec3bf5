"""Experiment folder -> leaderboard.csv, comparison.csv/.md and plots.

    python sweep/leaderboard.py results/<name>                      # rebuild in place
    python sweep/leaderboard.py results/a results/b --out results/ab  # merge sweeps

Works on finished or partial experiments: every file is parsed defensively and
every leaderboard column exists from the first row, whatever the trials did.
The comparison table (sweep/comparison.py) is the verdict: which differences
from SFT and from the document's original configuration are real.
"""
from __future__ import annotations

import os
import sys

if __package__ in (None, ""):  # run as a script: make `sweep`/`trainer` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse
import hashlib
import json
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import pandas as pd

from sweep.comparison import build_comparison
from sweep.evaluations import trial_drift
from trainer.errors import UserError

__all__ = ["TrialRecord", "collect_trials", "build_leaderboard", "build_comparison", "write_outputs",
           "load_experiment", "main"]

SHOTS = (1, 2, 3, 4)
STATUSES = ("completed", "pruned", "errored", "diverged")
HEAD = ["trial_id", "status", "stop_reason", "grpo_epochs_done"]
TAIL = ([f"acc_shot{k}" for k in SHOTS]
        + ["acc_mean", "best_acc_mean", "best_epoch", "kl", "kl_beta_final", "time_s", "seed",
           "torch_threads", "node_id", "config_hash"])
# not hyperparameters of the configuration: two seeds (or devices) are the same config
_NOT_IN_HASH = ("seed", "device")


@dataclass
class TrialRecord:
    """One trial directory, parsed."""

    trial_id: str
    path: Path
    params: dict[str, Any]
    reports: list[dict[str, Any]] = field(repr=False)
    status: str                       # one of STATUSES
    stop_reason: str
    evaluation: dict[str, Any] | None = field(repr=False)
    config_hash: str


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Report lines; a torn last line (trial still writing) or garbage line is skipped."""
    try:
        text = path.read_text()
    except OSError:
        return []
    out = []
    for line in text.splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            out.append(row)
    return out


def _num(value: Any) -> float:
    """A finite float or NaN (missing, non-numeric, bool or inf)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return math.nan
    return float(value) if math.isfinite(value) else math.nan


def _last(reports: Sequence[dict], key: str) -> Any:
    for row in reversed(reports):
        if row.get(key) is not None:
            return row[key]
    return None


def config_hash(params: dict[str, Any]) -> str:
    """Stable 10-hex hash of a config without its seed; 0 and 0.0 hash alike."""
    def canon(v: Any) -> Any:
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v
    body = {k: canon(v) for k, v in params.items() if k not in _NOT_IN_HASH}
    return hashlib.sha1(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:10]


def _latest_evaluation(trial_dir: Path) -> dict | None:
    """evaluation.json of the highest-numbered checkpoint that has a readable one."""
    ckpts = sorted((p for p in trial_dir.glob("checkpoint_*") if p.is_dir()), reverse=True)
    for ckpt in ckpts:
        ev = _read_json(ckpt / "evaluation.json")
        if isinstance(ev, dict):
            return ev
    return None


def _status(trial_dir: Path, reports: list[dict]) -> tuple[str, str]:
    # A finished last report wins over error.txt: a --max-failures retry that completed
    # leaves the first attempt's error.txt behind.
    last = reports[-1] if reports else {}
    if last.get("train_finished") is True:
        reason = str(last.get("stop_reason") or "completed")
        return ("diverged" if reason.startswith("diverged") else "completed"), reason
    error = trial_dir / "error.txt"
    if error.exists():
        try:
            lines = [ln.strip() for ln in error.read_text(errors="replace").splitlines() if ln.strip()]
        except OSError:
            lines = []
        return "errored", ("errored: " + lines[-1][:200]) if lines else "errored"
    epoch = _num(_last(reports, "grpo_epoch"))
    return "pruned", f"pruned@grpo_epoch {0 if math.isnan(epoch) else int(epoch)}"


def collect_trials(exp_dir: str | Path) -> list[TrialRecord]:
    """Every trial directory (any folder holding params.json) under ``exp_dir``, by path."""
    root = Path(exp_dir)
    records = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        if "params.json" not in filenames or Path(dirpath) == root:
            continue
        dirnames[:] = []  # a trial folder holds checkpoints, never other trials
        tdir = Path(dirpath)
        params = _read_json(tdir / "params.json")
        params = params if isinstance(params, dict) else {}
        reports = _read_jsonl(tdir / "result.json")
        status, reason = _status(tdir, reports)
        tid = _last(reports, "trial_id")
        records.append(TrialRecord(trial_id=str(tid) if tid is not None else tdir.name, path=tdir,
                                   params=params, reports=reports, status=status, stop_reason=reason,
                                   evaluation=_latest_evaluation(tdir), config_hash=config_hash(params)))
    return records


def _cell(value: Any) -> Any:
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    return json.dumps(value, sort_keys=True, default=str)


def hyperparameter_columns(records: Iterable[TrialRecord], hyperparameters: Sequence[str]) -> list[str]:
    cols = [h for h in dict.fromkeys(hyperparameters) if h != "seed"]
    if "preset" not in cols and any("preset" in r.params for r in records):
        cols.append("preset")
    return cols


def build_leaderboard(records: Sequence[TrialRecord], hyperparameters: Sequence[str]) -> pd.DataFrame:
    """One row per trial, fixed columns (HEAD + hyperparameters [+ preset] + TAIL).

    acc_* are the trial's last report; best_* its best validation epoch so far.
    Sorted by best_acc_mean, descending; missing values are NaN/None.
    """
    hp_cols = hyperparameter_columns(records, hyperparameters)
    rows = []
    for r in records:
        rep = r.reports
        last = rep[-1] if rep else {}
        epochs = [_num(x.get("grpo_epoch")) for x in rep]
        done = max((e for e in epochs if not math.isnan(e)), default=0.0)
        best = _num(_last(rep, "best_acc_mean"))
        if math.isnan(best):  # older/partial reports: best of what was reported
            best = max((v for v in (_num(x.get("acc_mean")) for x in rep) if not math.isnan(v)),
                       default=math.nan)
        row = {"trial_id": r.trial_id, "status": r.status, "stop_reason": r.stop_reason,
               "grpo_epochs_done": int(done)}
        row.update({h: _cell(r.params.get(h)) for h in hp_cols})
        row.update({f"acc_shot{k}": _num(last.get(f"acc_shot{k}")) for k in SHOTS})
        row.update(acc_mean=_num(last.get("acc_mean")), best_acc_mean=best,
                   best_epoch=_num(_last(rep, "best_epoch")), kl=_num(_last(rep, "kl")),
                   kl_beta_final=_num(_last(rep, "kl_beta")), time_s=_num(_last(rep, "time_total_s")),
                   seed=_cell(r.params.get("seed")), torch_threads=_num(_last(rep, "torch_threads")),
                   node_id=_cell(_last(rep, "node_id")), config_hash=r.config_hash)
        rows.append(row)
    df = pd.DataFrame(rows, columns=HEAD + hp_cols + TAIL)
    df = df.sort_values("trial_id", kind="stable")
    return df.sort_values("best_acc_mean", ascending=False, na_position="last", kind="stable") \
        .reset_index(drop=True)


# ---------------------------------------------------------------------------
# experiment folders -> files


def _check_experiment_dir(path: Path) -> None:
    if not path.is_dir():
        raise UserError(f"{path}: not a directory; pass an experiment folder such as results/<name>")
    has_trial = any(True for pattern in ("*/params.json", "*/*/params.json") for _ in path.glob(pattern))
    if not has_trial and not (path / "sweep.json").exists():
        raise UserError(f"{path}: not an experiment folder (no sweep.json and no trial folder with "
                        f"params.json); pass results/<name> as written by sweep/run.py")


def _union_range(a: Any, b: Any) -> Any:
    """The range two merged sweeps searched together (for the boundary check)."""
    if not isinstance(a, dict) or not isinstance(b, dict):
        return b if isinstance(b, dict) else a
    if isinstance(a.get("values"), list) and isinstance(b.get("values"), list):
        seen = {json.dumps(v, default=str): v for v in a["values"] + b["values"]}
        return {**a, "values": list(seen.values())}
    try:
        return {**a, "low": min(a["low"], b["low"]), "high": max(a["high"], b["high"])}
    except (KeyError, TypeError):
        return a


def _merge_meta(metas: list[dict]) -> dict:
    out: dict[str, Any] = {"hyperparameters": [], "scientific": [], "search_ranges": {}, "original": None}
    for meta in metas:
        # the documented keys first; the sweep driver's describe() names as a fallback
        for key, alt in (("hyperparameters", "swept_keys"), ("scientific", "scientific_keys")):
            keys = meta.get(key) or meta.get(alt)
            keys = list(keys) if isinstance(keys, (list, dict)) else []
            out[key] = list(dict.fromkeys(out[key] + [k for k in keys if isinstance(k, str)]))
        ranges = meta.get("search_ranges")
        for name, rng in (ranges.items() if isinstance(ranges, dict) else ()):
            out["search_ranges"][name] = _union_range(out["search_ranges"].get(name), rng)
        if out["original"] is None and isinstance(meta.get("original"), dict):
            out["original"] = meta["original"]
        for key in ("space", "metric"):
            out.setdefault(key, meta.get(key))
    return out


def load_experiment(exp_dirs: str | Path | Sequence[str | Path]):
    """(records, baselines, sweep_meta) of one experiment, or of several merged.

    Trial ids that collide across experiments are prefixed with the folder name.
    Baselines come from the first folder that has them (they are per data split).
    """
    dirs = [Path(exp_dirs)] if isinstance(exp_dirs, (str, Path)) else [Path(d) for d in exp_dirs]
    if not dirs:
        raise UserError("no experiment folder given; pass results/<name>")
    records, metas, baselines, seen = [], [], {}, set()
    for d in dirs:
        _check_experiment_dir(d)
        meta = _read_json(d / "sweep.json")
        metas.append(meta if isinstance(meta, dict) else {})
        base = _read_json(d / "baselines.json")
        if not baselines and isinstance(base, dict):
            baselines = base
        for r in collect_trials(d):
            if r.trial_id in seen:
                r.trial_id = f"{d.name}/{r.trial_id}"
            seen.add(r.trial_id)
            records.append(r)
    meta = _merge_meta(metas)
    if not meta["hyperparameters"]:  # no sweep.json: the keys that vary across trials
        keys = dict.fromkeys(k for r in records for k in r.params)
        meta["hyperparameters"] = [k for k in keys if k != "seed" and len(
            {json.dumps(r.params.get(k), sort_keys=True, default=str) for r in records}) > 1]
    return records, baselines, meta


def _atomic_write(path: Path, write) -> Path:
    """``write(tmp_path)`` then os.replace: readers never see a half-written file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_outputs(exp_dirs: str | Path | Sequence[str | Path], out_dir: str | Path | None = None,
                  *, plots: bool = True) -> dict[str, Path]:
    """Write leaderboard.csv, comparison.csv, comparison.md (and plots/*.png).

    ``exp_dirs``: one experiment folder (outputs go into it) or several to merge
    (``out_dir`` required). Returns {name: path} of everything written.
    """
    multi = not isinstance(exp_dirs, (str, Path))
    if out_dir is None:
        if multi and len(exp_dirs) != 1:
            raise UserError("merging several experiments needs --out DIR for the merged tables")
        out_dir = exp_dirs[0] if multi else exp_dirs
    records, baselines, meta = load_experiment(exp_dirs)
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{out}: cannot create the output folder ({exc.strerror}); pass another --out")
    board = build_leaderboard(records, meta["hyperparameters"])
    evaluations = {r.trial_id: r.evaluation for r in records if r.evaluation}
    table, markdown = build_comparison(board, evaluations, baselines, meta)
    # selection drift vs SFT per trial and shot (0 everywhere: the trial cannot differ from SFT)
    board = board.merge(trial_drift([str(t) for t in board["trial_id"]], evaluations, baselines),
                        on="trial_id", how="left")
    written = {
        "leaderboard.csv": _atomic_write(out / "leaderboard.csv", lambda t: board.to_csv(t, index=False)),
        "comparison.csv": _atomic_write(out / "comparison.csv", lambda t: table.to_csv(t, index=False)),
        "comparison.md": _atomic_write(out / "comparison.md", lambda t: Path(t).write_text(markdown)),
    }
    if plots:
        from sweep.plots import write_plots  # matplotlib only when plotting

        for path in write_plots(out / "plots", table, records, meta.get("scientific") or [],
                                meta.get("search_ranges") or {}):
            written[f"plots/{path.name}"] = path
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Rebuild leaderboard.csv and the comparison table of "
                                     "finished or partial experiments; print the comparison.")
    parser.add_argument("exp_dirs", nargs="+", help="experiment folder(s), e.g. results/kl_beta")
    parser.add_argument("--out", help="output folder (required when merging several experiments)")
    parser.add_argument("--no-plots", action="store_true", help="skip plots/*.png")
    args = parser.parse_args(argv)
    try:
        paths = write_outputs(args.exp_dirs, args.out, plots=not args.no_plots)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(paths["comparison.md"].read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
