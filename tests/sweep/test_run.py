"""The real CLI: every space dry-runs, a smoke sweep runs end to end and resumes."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from sweep.run import main
from sweep.spaces import list_spaces

REPO = Path(__file__).resolve().parents[2]
RUN = [sys.executable, str(REPO / "sweep" / "run.py")]


def cli(*args, cwd=None, timeout=600, env=None):
    return subprocess.run([*RUN, *args], capture_output=True, text=True, timeout=timeout, cwd=cwd,
                          env={**os.environ, **(env or {})})


@pytest.mark.parametrize("name", [n for n, _ in list_spaces()])
def test_every_space_dry_runs(name, capsys, tmp_path):
    assert main(["--space", name, "--dry-run", "--output", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert " trials (" in out.splitlines()[-1]
    assert not any(tmp_path.iterdir()), "--dry-run must not write anything"


def test_list_spaces_names_every_file(capsys):
    assert main(["--list-spaces"]) == 0
    out = capsys.readouterr().out
    for path in (REPO / "search_spaces").glob("*.yaml"):
        assert path.stem in out


# Bad flags, spaces and data files: tests/sweep/test_bad_inputs.py (the corpus in tests/bad_inputs/).


def test_smoke_sweep_end_to_end_then_resume_and_name_reuse(tmp_path):
    out = tmp_path / "results"
    result = cli("--space", "kl_beta", "--smoke-test", "--output", str(out), "--name", "smoke",
                 "--verbose", "0")
    assert result.returncode == 0, result.stderr[-3000:]
    exp = out / "smoke"
    board = pd.read_csv(exp / "leaderboard.csv")
    # ASHA (the default) may stop the second trial at its first rung: completed or pruned, never lost
    statuses = set(board["status"])
    assert len(board) == 2 and statuses <= {"completed", "pruned"} and "completed" in statuses
    assert {"kl_beta", "adaptive_kl", "acc_shot1", "acc_shot4", "acc_mean", "best_acc_mean", "seed",
            "torch_threads", "time_s"} <= set(board.columns)
    comparison = (exp / "comparison.md").read_text()
    for row in ("sft", "rce_only", "retrieval", "random"):
        assert f"| {row} |" in comparison
    for name in ("comparison.csv", "command.txt", "space-kl_beta.yaml", "baselines.json", "sweep.json"):
        assert (exp / name).exists(), name
    assert "--smoke-test" in (exp / "command.txt").read_text()
    assert list((exp / "plots").glob("*.png"))
    assert json.loads((exp / "sweep.json").read_text())["shared_rce"] is True

    again = cli("--space", "kl_beta", "--smoke-test", "--output", str(out), "--name", "smoke")
    assert again.returncode == 2 and "--resume smoke" in again.stderr

    resumed = cli("--resume", "smoke", "--output", str(out), "--verbose", "0")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    after = pd.read_csv(exp / "leaderboard.csv")
    assert sorted(after["trial_id"]) == sorted(board["trial_id"])  # nothing ran twice, nothing lost
    assert after.set_index("trial_id")["acc_mean"].equals(board.set_index("trial_id")["acc_mean"])
