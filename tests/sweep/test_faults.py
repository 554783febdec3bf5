"""Nothing lost: failing trials, kill -9 of the driver, Ctrl-C, and the same seed giving the same board.

Every sweep here is the real CLI on the smoke benchmark (``--smoke-test``: two kl_beta values,
a shared warm-up, four GRPO epochs per trial) with ``--scheduler fifo`` so that no trial is
pruned and statuses are exact. Faults are injected with ICD_SWEEP_FAULT (trainer/faults.py).
A killed driver leaves Ray's helper processes behind; each test kills the process session it
started (by session id), nothing else.
"""
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from sweep.experiment import claim_experiment_dir
from sweep.ray_session import stop_tune_on_sigint
from trainer.errors import UserError
from trainer.faults import Fault, parse_rules

REPO = Path(__file__).resolve().parents[2]
SMOKE = ["--space", "kl_beta", "--smoke-test", "--scheduler", "fifo", "--verbose", "0"]


def command(out: Path, name: str, *extra: str) -> list[str]:
    return [sys.executable, str(REPO / "sweep" / "run.py"), *SMOKE, "--output", str(out), "--name", name,
            *extra]


def run_cli(args: list[str], env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, cwd=REPO,
                          env={**os.environ, **(env or {})})


def resume(out: Path, name: str, *extra: str) -> subprocess.CompletedProcess:
    return run_cli([sys.executable, str(REPO / "sweep" / "run.py"), "--resume", name, "--output", str(out),
                    "--verbose", "0", *extra])


def kill_session(sid: int) -> None:
    """SIGKILL every process of session ``sid`` (the driver was started with start_new_session)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid:  # after "pid (comm)": state ppid pgrp session
            try:
                os.kill(int(stat.parent.name), signal.SIGKILL)
            except ProcessLookupError:
                pass


def start(args: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(args, cwd=REPO, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True, env={**os.environ, **(env or {})})


def wait_for(proc: subprocess.Popen, log: Path, condition, timeout: float = 600) -> None:
    deadline = time.time() + timeout
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"the sweep ended (rc {proc.returncode}) before the kill point:\n"
                        f"{log.read_text()[-3000:]}")
        if time.time() > deadline:
            kill_session(proc.pid)
            pytest.fail("kill point not reached in time")
        time.sleep(0.1)


def reports(exp: Path) -> dict[str, list[dict]]:
    """trial folder -> its result.json rows (a torn last line skipped)."""
    out = {}
    for path in sorted(exp.glob("trial_*/result.json")):
        rows = []
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                pass
        out[path.parent.name] = rows
    return out


def finished(exp: Path) -> int:
    return sum(bool(rows) and rows[-1].get("train_finished") is True for rows in reports(exp).values())


def board(exp: Path) -> pd.DataFrame:
    return pd.read_csv(exp / "leaderboard.csv")


# ---------------------------------------------------------------------------
# failing trials

FAULTS = ",".join([
    "raise-always@1:kl_beta=0:seed=0",  # raises on every attempt: errored once retries are used up
    "raise@2:kl_beta=0:seed=1",         # raises once: the retry continues from the checkpoint of report 2
    "nan@1:kl_beta=0.05:seed=0",        # the first GRPO loss is NaN: diverged, not retried
])                                      # kl_beta=0.05, seed=1: untouched


@pytest.fixture(scope="module")
def faulty_sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("faults")
    result = run_cli(command(out, "f", "--seeds", "2", "--max-failures", "1"),
                     env={"ICD_SWEEP_FAULT": FAULTS})
    assert result.returncode == 0, result.stderr[-3000:]
    exp = out / "f"
    rows = board(exp)
    by_config = {(float(r.kl_beta), int(r.seed)): r for r in rows.itertuples()}
    return exp, rows, by_config


def test_errored_and_diverged_trials_are_recorded_and_the_others_finish(faulty_sweep):
    exp, rows, by = faulty_sweep
    assert len(rows) == 4 and rows["trial_id"].is_unique
    errored, diverged, clean = by[(0.0, 0)], by[(0.05, 0)], by[(0.05, 1)]
    assert errored.status == "errored" and "injected fault" in errored.stop_reason
    assert errored.grpo_epochs_done == 1  # its one report is kept
    assert diverged.status == "diverged" and diverged.stop_reason.startswith("diverged: non-finite grpo_loss")
    assert clean.status == "completed" and clean.grpo_epochs_done == 4
    assert (exp / "comparison.md").exists()  # the sweep still ends with its outputs


def test_max_failures_retries_a_failed_trial_from_its_last_checkpoint(faulty_sweep):
    exp, rows, by = faulty_sweep
    retried = by[(0.0, 1)]
    trial = reports(exp)[f"trial_{retried.trial_id}"]
    epochs = [r["epoch"] for r in trial]
    assert epochs == [1, 2, 3, 4]  # reports 1-2, the fault, then 3-4 from checkpoint 2: nothing redone
    assert (exp / f"trial_{retried.trial_id}" / "error.txt").exists()  # the failure happened
    assert trial[-1]["train_finished"] is True and retried.grpo_epochs_done == 4


def test_a_trial_whose_retry_completed_is_listed_as_completed(faulty_sweep):
    exp, rows, by = faulty_sweep
    assert by[(0.0, 1)].status == "completed"


# ---------------------------------------------------------------------------
# kill -9 of the driver, then --resume

def _kill_then_resume(tmp_path: Path, point) -> tuple[Path, dict, dict, pd.DataFrame]:
    out, log = tmp_path / "out", tmp_path / "run.log"
    proc = start(command(out, "k", "--max-concurrent", "1"), log)
    exp = out / "k"
    try:
        wait_for(proc, log, lambda: point(exp))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        kill_session(proc.pid)
    before = {name: rows for name, rows in reports(exp).items()}
    files_before = {p.name: p.read_bytes() for p in exp.iterdir()
                    if p.is_file() and p.suffix in (".json", ".yaml")
                    and not p.name.startswith(("experiment_state", "basic-variant"))}
    result = resume(out, "k")
    assert result.returncode == 0, result.stderr[-3000:]
    for name, content in files_before.items():  # the record of what ran is never rewritten
        assert (exp / name).read_bytes() == content, name
    return exp, before, reports(exp), board(exp)


def _assert_finished_once(exp: Path, after: dict, rows: pd.DataFrame) -> None:
    assert len(rows) == 2 and rows["trial_id"].is_unique and set(rows["status"]) == {"completed"}
    assert sorted(f"trial_{t}" for t in rows["trial_id"]) == sorted(after)  # one folder per trial
    assert sorted(p.name for p in exp.glob("trial_*")) == sorted(after)
    for trial in after.values():
        assert [r["epoch"] for r in trial][-1] == 4


def test_kill_9_mid_sweep_then_resume_reruns_no_completed_trial(tmp_path):
    exp, before, after, rows = _kill_then_resume(tmp_path, lambda exp: finished(exp) >= 1)
    done = [name for name, trial in before.items() if trial and trial[-1].get("train_finished")]
    assert done
    for name in done:
        assert after[name] == before[name]  # completed before the kill: not one more report
    for name, trial in before.items():
        assert after[name][:len(trial)] == trial  # nothing recorded before the kill is lost
    _assert_finished_once(exp, after, rows)


@pytest.mark.slow
def test_kill_9_during_warm_up_then_resume_starts_tune(tmp_path):
    # the experiment folder and its record exist, Tune has saved no state yet
    exp, before, after, rows = _kill_then_resume(tmp_path, lambda exp: (exp / "run_args.json").exists())
    assert not before
    _assert_finished_once(exp, after, rows)


@pytest.mark.slow
def test_kill_9_while_trials_wait_at_a_halving_rung_then_resume(tmp_path):
    # sha on 4 trials of 4 GRPO epochs: rungs 1 and 3; floor(4 / 3) = 1 trial goes on from rung 1.
    # The kill comes while trials are paused at rung 1 (or later); the resumed sweep rebuilds the
    # rungs from the trials' last results and ends with the same budget shape.
    out, log = tmp_path / "out", tmp_path / "run.log"
    args = [a if a != "fifo" else "sha" for a in command(out, "h", "--seeds", "2")]
    proc = start(args, log)
    exp = out / "h"
    at_rung = lambda: sum(any(r.get("grpo_epoch") == 1 for r in rows) for rows in reports(exp).values())  # noqa
    try:
        wait_for(proc, log, lambda: at_rung() >= 2)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        kill_session(proc.pid)
    result = resume(out, "h")
    assert result.returncode == 0, result.stderr[-3000:]
    rows = board(exp)
    assert len(rows) == 4 and rows["trial_id"].is_unique and len(list(exp.glob("trial_*"))) == 4
    assert sorted(rows["status"]) == ["completed", "pruned", "pruned", "pruned"]
    kept = rows[rows["status"] == "completed"].iloc[0]
    assert kept.grpo_epochs_done == 4
    for trial in reports(exp).values():  # a trial's reports never repeat or skip an epoch
        epochs = [r["grpo_epoch"] for r in trial]
        assert epochs == list(range(1, len(epochs) + 1))
    decided = pd.read_csv(exp / "decisions.csv")
    assert set(decided[decided["rung"] == 1]["decision"]) <= {"continue", "stop"}


def test_resume_refuses_a_folder_that_is_not_an_experiment(tmp_path):
    (tmp_path / "out" / "stray").mkdir(parents=True)
    result = resume(tmp_path / "out", "stray")
    assert result.returncode == 2 and "no run_args.json" in result.stderr and "Traceback" not in result.stderr
    (tmp_path / "out" / "stray" / "run_args.json").write_text("{not json")
    result = resume(tmp_path / "out", "stray")
    assert result.returncode == 2 and "run_args.json" in result.stderr and "Traceback" not in result.stderr


# ---------------------------------------------------------------------------
# Ctrl-C

@pytest.mark.slow
def test_ctrl_c_stops_cleanly_saves_state_and_prints_the_resume_command(tmp_path):
    out, log = tmp_path / "out", tmp_path / "run.log"
    proc = start(command(out, "c", "--max-concurrent", "1"), log)
    exp = out / "c"
    try:
        wait_for(proc, log, lambda: sum(map(len, reports(exp).values())) >= 1)
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole foreground group
        assert proc.wait(timeout=180) == 130
    finally:
        kill_session(proc.pid)
    text = log.read_text()
    assert f"--resume c --output {out}" in text and "Traceback" not in text
    assert any(exp.glob("experiment_state-*.json")) and (exp / "leaderboard.csv").exists()
    result = resume(out, "c")
    assert result.returncode == 0, result.stderr[-3000:]
    rows = board(exp)
    assert len(rows) == 2 and set(rows["status"]) == {"completed"}


# ---------------------------------------------------------------------------
# determinism

METRICS = ["status", "stop_reason", "grpo_epochs_done", "acc_shot1", "acc_shot2", "acc_shot3", "acc_shot4",
           "acc_mean", "best_acc_mean", "best_epoch", "kl", "kl_beta_final", "seed", "config_hash"]


@pytest.mark.slow
def test_same_seed_and_one_trial_at_a_time_give_the_same_leaderboard(tmp_path):
    boards = []
    for i in range(2):  # separate output roots: the warm-up is recomputed, not read from a shared cache
        out = tmp_path / f"run{i}"
        result = run_cli(command(out, "d", "--seed", "3", "--max-concurrent", "1"))
        assert result.returncode == 0, result.stderr[-3000:]
        boards.append(board(out / "d").sort_values(["config_hash", "seed"]).reset_index(drop=True)[METRICS])
    pd.testing.assert_frame_equal(boards[0], boards[1], check_exact=True)


# ---------------------------------------------------------------------------
# fast checks of the pieces

def test_claimed_names_never_collide(tmp_path, monkeypatch):
    monkeypatch.setattr(time, "strftime", lambda fmt: "20261125-101500")  # every sweep in the same second
    claimed, errors = [], []

    def claim():
        try:
            claimed.append(claim_experiment_dir(tmp_path, None, "kl_beta",
                                                lambda name: {"run_args.json": json.dumps({"name": name})}))
        except Exception as exc:  # noqa: BLE001  (the assertion below reports it)
            errors.append(exc)

    threads = [threading.Thread(target=claim) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len({p.name for p in claimed}) == 12
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in claimed)  # no staging left
    for path in claimed:  # each folder arrived with its own record, naming it
        assert json.loads((path / "run_args.json").read_text()) == {"name": path.name}
    assert (tmp_path / "kl_beta-20261125-101500-12").is_dir()
    with pytest.raises(UserError, match="--name: .* already exists"):
        claim_experiment_dir(tmp_path, "kl_beta-20261125-101500", "kl_beta")
    assert claim_experiment_dir(tmp_path, "mine", "kl_beta") == tmp_path / "mine"


@pytest.mark.parametrize("spec, message", [("boom@1", "KIND@N"), ("nan@0", "KIND@N"), ("raise@x", "KIND@N"),
                                           ("raise@1:seed", "key=value")])
def test_malformed_fault_rules(spec, message):
    with pytest.raises(UserError, match=message):
        parse_rules(spec)


def test_fault_rules_select_trials_and_fire_once_or_always():
    rules = parse_rules("raise@2:kl_beta=0.0:seed=1, raise-always@1:adaptive_kl=true, nan@3")
    assert [r.kind for r in rules] == ["raise", "raise-always", "nan"]
    assert rules[0].matches({"kl_beta": 0, "seed": 1}) and not rules[0].matches({"kl_beta": 0.05, "seed": 1})
    assert rules[1].matches({"adaptive_kl": True}) and not rules[1].matches({"adaptive_kl": False})

    def at(epoch):
        return {"epoch": epoch}

    once = Fault(rules[:1])
    once.before_report(at(1)), once.before_report(at(2))
    with pytest.raises(RuntimeError, match="injected fault"):
        once.before_report(at(3))
    retry = Fault(rules[:1])  # a retry that restored the checkpoint of report 2 goes on
    retry.before_report(at(3)), retry.before_report(at(4))
    always = Fault(rules[1:2])
    with pytest.raises(RuntimeError):
        always.before_report(at(2))
    Fault(()).before_report({"epoch": float("nan")})  # no rule: never looks at the metrics
    nan = Fault(rules[2:])
    import torch

    finite = [bool(torch.isfinite(nan.loss_hook(torch.tensor(1.0)))) for _ in range(4)]
    assert finite == [True, True, False, False]


def test_ctrl_c_handler_hands_over_to_tune_once(monkeypatch):
    """Before Tune takes SIGUSR1 over Ctrl-C aborts; then the first asks Tune to stop, the second aborts."""
    monkeypatch.delenv("TUNE_DISABLE_SIGINT_HANDLER", raising=False)
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGUSR1)
    asked = []
    with stop_tune_on_sigint() as stop:
        assert os.environ["TUNE_DISABLE_SIGINT_HANDLER"] == "1"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.5)
        signal.signal(signal.SIGUSR1, lambda *a: asked.append(True))  # what tune.run does
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.5)
        assert stop.is_set() and asked == [True]
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.5)
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGUSR1)) == before  # restored
    assert "TUNE_DISABLE_SIGINT_HANDLER" not in os.environ
