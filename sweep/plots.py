"""Plots of an experiment: accuracy vs each scientific hyperparameter, learning curves.

Figures are built with matplotlib's object API on the Agg canvas (no pyplot
state, no display needed) and written atomically into ``<exp_dir>/plots/``.
"""
from __future__ import annotations

import math
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")  # headless before anything imports pyplot

import numpy as np  # noqa: E402
from matplotlib.collections import LineCollection  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

PANELS = ("acc_shot1", "acc_shot2", "acc_shot3", "acc_shot4", "acc_mean")
BASELINE_STYLES = {"sft": ("k", "--"), "rce_only": ("tab:purple", "-."), "retrieval": ("tab:green", ":"),
                   "random": ("tab:red", ":")}
STATUS_COLORS = {"completed": "tab:blue", "pruned": "tab:gray", "errored": "tab:red",
                 "diverged": "tab:orange"}


def _save(fig: Figure, path: Path) -> Path:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        fig.savefig(tmp, format="png", dpi=100)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def x_scale(values: Sequence[float], search_range: Any = None) -> str:
    """'log' for positive log-spaced values, 'symlog' when 0 joins them, else 'linear'."""
    pos = [v for v in values if v > 0]
    kind = str((search_range or {}).get("kind", "")) if isinstance(search_range, dict) else ""
    spread = len(pos) >= 2 and max(pos) / min(pos) >= 10
    if not pos or not (spread or "log" in kind) or any(v < 0 for v in values):
        return "linear"
    return "symlog" if any(v == 0 for v in values) else "log"


def plot_accuracy_vs(table, key: str, search_range: Any = None) -> Figure | None:
    """Per-shot validation accuracy (seed mean ± std) of every configuration vs ``key``.

    ``table`` is the comparison DataFrame; the line joins the best configuration
    at each value (the playbook's isolation plot), dashed lines are SFT/baselines.
    """
    rows = table[(table["kind"] == "config") & table[key].notna()] if key in table else table.iloc[:0]
    if rows.empty:
        return None
    raw = list(rows[key])
    numeric = all(_finite(v) for v in raw)
    cats = sorted({str(v) for v in raw}) if not numeric else []
    xs = [float(v) for v in raw] if numeric else [cats.index(str(v)) for v in raw]
    fig = Figure(figsize=(4 * len(PANELS), 3.6))
    axes = fig.subplots(1, len(PANELS), sharey=True)
    bases = table[table["kind"] == "baseline"]
    for ax, metric in zip(axes, PANELS):
        ys = [100 * v for v in rows[metric]]
        err = [0.0 if not _finite(e) else 100 * e for e in rows[metric + "_std"]]
        ax.errorbar(xs, ys, yerr=err, fmt="o", ms=4, alpha=0.7, capsize=2, label="config (±std over seeds)")
        best: dict[float, float] = {}
        for x, y in zip(xs, ys):
            if _finite(y) and (x not in best or y > best[x]):
                best[x] = y
        ax.plot(sorted(best), [best[x] for x in sorted(best)], "-", color="tab:blue", lw=1)
        for _, b in bases.iterrows():
            if _finite(b[metric]):
                color, style = BASELINE_STYLES.get(b["row"], ("tab:gray", ":"))
                ax.axhline(100 * b[metric], ls=style, color=color, lw=1, label=b["row"])
        if numeric:
            scale = x_scale(xs, search_range)
            if scale == "symlog":
                thresh = min(x for x in xs if x > 0)
                ax.set_xscale("symlog", linthresh=thresh)
                # symlog would otherwise show empty negative decades and clip the top value
                ax.set_xlim(-0.5 * thresh, 1.6 * max(xs))
            elif scale == "log":
                ax.set_xscale("log")
                ax.set_xlim(min(xs) / 1.6, 1.6 * max(xs))
        else:
            ax.set_xticks(range(len(cats)), cats)
        ax.set_title(metric)
        ax.set_xlabel(key)
    axes[0].set_ylabel("validation accuracy (points)")
    axes[-1].legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig


def plot_learning_curves(records: Sequence[Any]) -> Figure | None:
    """acc_mean vs grpo_epoch, one line per trial (last report per epoch), one colour per status.

    One LineCollection per status keeps 500 trials cheap to draw; a dot marks
    where each trial ended (where pruned trials were cut).
    """
    curves: dict[str, list[np.ndarray]] = {}
    for r in records:
        curve: dict[float, float] = {}
        for rep in r.reports:
            if _finite(rep.get("grpo_epoch")) and _finite(rep.get("acc_mean")):
                curve[float(rep["grpo_epoch"])] = 100 * float(rep["acc_mean"])
        if curve:
            curves.setdefault(r.status, []).append(np.array(sorted(curve.items())))
    if not curves:
        return None
    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    for status, segs in curves.items():
        color = STATUS_COLORS.get(status, "k")
        ax.add_collection(LineCollection(segs, colors=color, linewidths=0.8, alpha=0.6,
                                         label=f"{status} ({len(segs)})"))
        ends = np.array([seg[-1] for seg in segs])
        ax.scatter(ends[:, 0], ends[:, 1], s=8, color=color)
    ax.autoscale_view()
    ax.set_xlabel("grpo_epoch (GRPO epochs done; 0 = after warm-up)")
    ax.set_ylabel("validation acc_mean (points)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def write_plots(plot_dir: str | Path, table, records: Sequence[Any], scientific: Sequence[str],
                search_ranges: dict | None = None) -> list[Path]:
    """Write acc_vs_<key>.png per scientific hyperparameter and learning_curves.png."""
    out = Path(plot_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for key in scientific:
        fig = plot_accuracy_vs(table, key, (search_ranges or {}).get(key))
        if fig is not None:
            written.append(_save(fig, out / f"acc_vs_{re.sub(r'[^A-Za-z0-9_.-]', '_', key)}.png"))
    fig = plot_learning_curves(records)
    if fig is not None:
        written.append(_save(fig, out / "learning_curves.png"))
    return written
