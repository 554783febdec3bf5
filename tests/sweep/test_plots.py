"""Plots from a hand-made comparison table and trial records."""
from types import SimpleNamespace

import matplotlib.colors
import numpy as np
import pandas as pd
import pytest

from sweep import plots

PNG = b"\x89PNG\r\n\x1a\n"


def table(key_values):
    """A comparison-table slice: SFT plus one configuration per value of ``kl_beta``."""
    rows = [{"row": "sft", "kind": "baseline", "kl_beta": None,
             **{m: 0.5 for m in plots.PANELS}, **{m + "_std": np.nan for m in plots.PANELS}}]
    for i, v in enumerate(key_values):
        rows.append({"row": f"c{i}", "kind": "config", "kl_beta": v,
                     **{m: 0.5 + 0.01 * i for m in plots.PANELS}, **{m + "_std": 0.02 for m in plots.PANELS}})
    return pd.DataFrame(rows)


def record(status, curve):
    return SimpleNamespace(status=status, reports=[{"grpo_epoch": e, "acc_mean": a} for e, a in curve])


@pytest.mark.parametrize("values, expected", [([0.001, 0.01, 0.1], "log"), ([0.0, 0.001, 0.3], "symlog"),
                                              ([1, 2, 3], "linear"), ([-1.0, 1.0, 100.0], "linear"),
                                              ([1e-5, 3e-5], "log")])
def test_x_scale(values, expected):
    rng = {"kind": "loguniform"} if values == [1e-5, 3e-5] else None  # a narrow log range is still log
    assert plots.x_scale(values, rng) == expected


def test_accuracy_axes_follow_the_values():
    fig = plots.plot_accuracy_vs(table([0.0, 0.001, 0.01, 0.3]), "kl_beta")
    axes = fig.get_axes()
    assert [ax.get_title() for ax in axes] == list(plots.PANELS)
    assert axes[0].get_xscale() == "symlog"
    assert axes[0].get_xlim()[0] < 0 < 0.001  # 0 is visible, no empty negative decades
    # the SFT baseline is a horizontal line at 50 points on every panel
    assert any(list(line.get_ydata()) == [50.0, 50.0] for line in axes[2].get_lines())
    cat = plots.plot_accuracy_vs(table(["never", "epoch"]), "kl_beta")
    assert [t.get_text() for t in cat.get_axes()[0].get_xticklabels()] == ["epoch", "never"]
    assert plots.plot_accuracy_vs(table([]), "kl_beta") is None
    assert plots.plot_accuracy_vs(table([0.1]), "not_a_column") is None


def test_learning_curves_one_line_per_trial_coloured_by_status():
    recs = [record("completed", [(0, 0.5), (0, 0.52), (1, 0.55), (2, 0.6)]),
            record("pruned", [(0, 0.5), (1, 0.45)]),
            record("pruned", [(0, 0.4), (1, 0.35)]),
            record("errored", [])]
    ax = plots.plot_learning_curves(recs).get_axes()[0]
    lines = {c.get_label(): c for c in ax.collections if c.get_label().endswith(")")}
    assert set(lines) == {"completed (1)", "pruned (2)"}  # no line for a trial that never reported
    # warm-up reports share grpo_epoch 0: the last one is kept
    np.testing.assert_allclose(lines["completed (1)"].get_segments()[0], [[0, 52], [1, 55], [2, 60]])
    assert len(lines["pruned (2)"].get_segments()) == 2
    pruned_rgb = matplotlib.colors.to_rgb(plots.STATUS_COLORS["pruned"])
    assert tuple(lines["pruned (2)"].get_colors()[0][:3]) == pruned_rgb
    assert plots.plot_learning_curves([record("errored", [])]) is None


def test_write_plots_writes_png_files_atomically(tmp_path):
    recs = [record("completed", [(0, 0.5), (1, 0.6)])]
    out = plots.write_plots(tmp_path / "plots", table([0.0, 0.01, 0.1]), recs, ["kl_beta", "grpo_lr"],
                            {"kl_beta": {"kind": "grid", "values": [0.0, 0.01, 0.1]}})
    # grpo_lr is not in the table: no empty figure for it
    assert [p.name for p in out] == ["acc_vs_kl_beta.png", "learning_curves.png"]
    for p in out:
        assert p.read_bytes()[:8] == PNG
    # nothing else in the folder: the temp files were renamed into place
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == [p.name for p in out]
