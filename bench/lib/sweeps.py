"""Running ``sweep/run.py`` as a user does (a subprocess) and reading what it wrote."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pandas as pd

REPO = Path(__file__).resolve().parents[2]
RUN = REPO / "sweep" / "run.py"


@dataclass
class CliRun:
    argv: list[str]
    rc: int
    wall_s: float
    stdout: str

    def command(self) -> str:
        return "python sweep/run.py " + " ".join(self.argv)


def run_cli(argv: list[str], *, during: Callable[[int], object] | None = None, timeout: float | None = None,
            log: Callable[[str], None] = print) -> CliRun:
    """Run ``python sweep/run.py ARGV``; ``during(pid)`` may return a context manager held while it runs."""
    log("$ python sweep/run.py " + " ".join(argv))
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, str(RUN), *argv], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    ctx = during(proc.pid) if during else None
    try:
        if ctx is not None:
            with ctx:
                out, _ = proc.communicate(timeout=timeout)
        else:
            out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        raise SystemExit(f"sweep/run.py {' '.join(argv)}: over {timeout} s; output tail:\n{out[-3000:]}")
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"sweep/run.py {' '.join(argv)}: exit {proc.returncode}; "
                         f"output tail:\n{out[-3000:]}")
    log(f"  done in {wall:.1f} s")
    return CliRun(argv, proc.returncode, wall, out)


@dataclass
class Experiment:
    """One finished experiment folder: leaderboard, sweep.json and every trial's reports."""

    path: Path
    leaderboard: pd.DataFrame
    sweep: dict
    reports: dict[str, list[dict]]   # trial id -> result.json rows, in order

    @classmethod
    def read(cls, path: str | os.PathLike) -> "Experiment":
        path = Path(path)
        reports = {}
        for trial_dir in sorted(path.glob("trial_*")):
            rows = []
            result = trial_dir / "result.json"
            if result.is_file():
                rows = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
            reports[trial_dir.name.removeprefix("trial_")] = rows
        return cls(path, pd.read_csv(path / "leaderboard.csv"), json.loads((path / "sweep.json").read_text()),
                   reports)

    def trial_rce_epochs(self) -> int:
        """RCE epochs the trials executed: one report with phase "rce" and a finite loss per epoch."""
        return sum(1 for rows in self.reports.values() for r in rows
                   if r.get("phase") == "rce" and _finite(r.get("rce_loss")))

    def grpo_epochs_done(self) -> int:
        return int(self.leaderboard["grpo_epochs_done"].sum())


def count_driver_epochs(stdout: str, stage: str) -> int:
    """Epochs of ``stage`` ("sft" or "rce") the driver logged ("sft epoch 2/3: ...")."""
    return sum(1 for line in stdout.splitlines() if line.startswith(f"{stage} epoch "))


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def write_tmp_root(keep: str | None, prefix: str) -> Path:
    """``keep`` (created) or a fresh folder under /tmp."""
    import tempfile

    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        return Path(keep).resolve()
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
