"""Sweeps on a Ray cluster: a real two-node cluster on this machine (slow), address and storage rules (fast).

The slow tests start ``ray start --head`` and ``ray start --address`` as two
nodes of one cluster, each with its own temp dir and ports, token
authentication on (one token in the environment of head, worker and driver),
and run ``sweep/run.py --address`` against it. Teardown kills the process
groups this file started and any process left under its temp dir; it never
runs ``ray stop``, which would kill every Ray on the machine.
"""
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest

from sweep import cluster
from sweep.storage import STAGING_ENV
from trainer.errors import UserError

REPO = Path(__file__).resolve().parents[2]
RUN = [sys.executable, str(REPO / "sweep" / "run.py")]
RAY = str(Path(sys.executable).with_name("ray"))


# ----------------------------------------------------------------------------- fast: no cluster

def test_address_flag_beats_environment_and_refuses_what_we_cannot_drive():
    assert cluster.resolve_address("10.0.0.5:6379", {"RAY_ADDRESS": "10.0.0.9:6379"}) == "10.0.0.5:6379"
    assert cluster.resolve_address(None, {"RAY_ADDRESS": "10.0.0.9:6379"}) == "10.0.0.9:6379"
    assert cluster.resolve_address(None, {}) is None
    assert cluster.resolve_address(None, {"RAY_ADDRESS": ""}) is None
    assert cluster.resolve_address("auto", {}) == "auto"
    for bad, fragment in [("ray://head:10001", "Ray Client"), ("http://head:8265", "not a URL"),
                          ("head", "HOST:PORT"), ("head:port", "HOST:PORT")]:
        with pytest.raises(UserError, match=fragment):
            cluster.resolve_address(bad, {})
    with pytest.raises(UserError, match="^RAY_ADDRESS"):
        cluster.resolve_address(None, {"RAY_ADDRESS": "ray://head:10001"})


def test_dead_address_is_refused_in_seconds():
    port = _free_port()
    started = time.monotonic()
    with pytest.raises(UserError, match=f"127.0.0.1:{port}: nothing answers"):
        cluster.connect(f"127.0.0.1:{port}")
    assert time.monotonic() - started < 10  # ray.init alone retries for minutes


def test_fit_warning_only_when_no_node_can_hold_a_trial():
    info = cluster.ClusterInfo("h:1", "a", (cluster.NodeInfo("a", "1", 4, 0, True),
                                            cluster.NodeInfo("b", "2", 2, 1, False)))
    assert info.multi_node and "2 node(s), 6 CPUs, 1 GPUs" in info.summary()
    assert info.fit_warning(2, 0.25) is None
    assert "0.25 GPU" in info.fit_warning(4, 0.25)


# ----------------------------------------------------------------------------- slow: a two-node cluster

class LocalCluster:
    """Ray nodes started by ``ray start --block`` in their own sessions, so teardown can kill exactly them."""

    def __init__(self):
        # Ray's unix sockets live under the temp dir: keep the path short (about 107 characters at most)
        self.root = Path(tempfile.mkdtemp(prefix="icdc-", dir="/tmp"))
        self.token = secrets.token_hex(32)
        self.env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        self.env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=self.token, RAY_USAGE_STATS_ENABLED="0")
        self.procs: list[subprocess.Popen] = []
        self.address = f"127.0.0.1:{_free_port()}"

    def command(self, name: str, cpus: int, head: bool) -> list[str]:
        cmd = [RAY, "start", "--block", "--num-cpus", str(cpus), "--temp-dir", str(self.root / name),
               "--disable-usage-stats", "--dashboard-agent-listen-port", str(_free_port()),
               "--dashboard-agent-grpc-port", str(_free_port()), "--metrics-export-port", str(_free_port()),
               "--runtime-env-agent-port", str(_free_port())]
        if head:  # every fixed default port (6379, 8265, 10001) may be taken by another Ray on the machine
            return cmd + ["--head", "--port", self.address.split(":")[1], "--include-dashboard", "false",
                          "--dashboard-port", str(_free_port()),
                          "--ray-client-server-port", str(_free_port())]
        return cmd + ["--address", self.address]

    def start_node(self, name: str, cpus: int = 1, *, head: bool = False, prefix: list[str] = ()) -> None:
        log = self.root / f"{name}.log"
        with open(log, "w") as fh:
            proc = subprocess.Popen([*prefix, *self.command(name, cpus, head)], stdout=fh,
                                    stderr=subprocess.STDOUT, env=self.env, start_new_session=True)
        self.procs.append(proc)
        deadline = time.monotonic() + 180
        while "block forever" not in log.read_text():  # printed once the node has started
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ray start ({name}) failed:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)

    def node_ids(self, expect: int) -> list[str]:
        """Alive node ids, once ``expect`` nodes have registered (a driver with the cluster's token)."""
        code = ("import ray, sys, time\n"
                "ray.init(address=sys.argv[1], log_to_driver=False)\n"
                "deadline = time.time() + 120\n"
                "while sum(n['Alive'] for n in ray.nodes()) < int(sys.argv[2]) and time.time() < deadline:\n"
                "    time.sleep(0.5)\n"
                "print(' '.join(n['NodeID'] for n in ray.nodes() if n['Alive']))\n")
        out = subprocess.run([sys.executable, "-c", code, self.address, str(expect)], env=self.env,
                             capture_output=True, text=True, timeout=240)
        ids = out.stdout.split()
        assert len(ids) == expect, out.stderr[-3000:]
        return ids

    def stop(self) -> None:
        # SIGTERM lets raylets exit cleanly; `ray start --block` and the GCS ignore it, hence SIGKILL after
        for proc in self.procs:
            _killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 5
        for proc in self.procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            _killpg(proc.pid, signal.SIGKILL)
        for pid in _pids_mentioning(str(self.root)):  # workers a raylet moved to another session
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="module")
def two_nodes():
    started = time.monotonic()
    local = LocalCluster()
    try:
        local.start_node("h", head=True)
        local.start_node("w")
        local.ids = local.node_ids(2)
        local.start_s = time.monotonic() - started
        print(f"two-node cluster up in {local.start_s:.1f} s")
        yield local
    finally:
        stopping = time.monotonic()
        local.stop()
        print(f"two-node cluster torn down in {time.monotonic() - stopping:.1f} s")


def cluster_cli(local: LocalCluster, *args, timeout=900, env=None):
    return subprocess.run([*RUN, *args, "--address", local.address, "--verbose", "0"], capture_output=True,
                          text=True, timeout=timeout, env={**local.env, **(env or {})})


@pytest.mark.slow
def test_smoke_sweep_places_trials_on_both_nodes(two_nodes, tmp_path):
    out = tmp_path / "results"
    started = time.monotonic()
    # fifo: the test is about placement and complete results, not about which trial ASHA would prune
    result = cluster_cli(two_nodes, "--space", "kl_beta", "--smoke-test", "--output", str(out),
                         "--name", "c1", "--max-concurrent", "2", "--cpus-per-trial", "1",
                         "--scheduler", "fifo")
    print(f"smoke sweep on the cluster: {time.monotonic() - started:.1f} s")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "visible from every node" in result.stdout
    board = pd.read_csv(out / "c1" / "leaderboard.csv")
    assert len(board) == 2 and set(board["status"]) == {"completed"}
    assert set(board["node_id"]) == set(two_nodes.ids)  # one trial per node: each node has one CPU
    metrics = ["acc_shot1", "acc_shot2", "acc_shot3", "acc_shot4", "acc_mean", "best_acc_mean"]
    assert board[metrics].notna().all().all() and (board["grpo_epochs_done"] == 4).all()
    assert "| sft |" in (out / "c1" / "comparison.md").read_text()
    assert not list(out.glob(".icd-sweep-visible-*"))


@pytest.mark.slow
def test_smoke_sweep_writes_to_a_uri_output(two_nodes, tmp_path):
    remote = tmp_path / "bucket"
    result = cluster_cli(two_nodes, "--space", "kl_beta", "--smoke-test", "--output", f"file://{remote}",
                         "--name", "u1", "--max-concurrent", "2", "--cpus-per-trial", "1",
                         "--scheduler", "fifo", env={STAGING_ENV: str(tmp_path / "staging")})
    assert result.returncode == 0, result.stderr[-3000:]
    exp = remote / "u1"
    board = pd.read_csv(exp / "leaderboard.csv")
    assert len(board) == 2 and set(board["status"]) == {"completed"}
    for name in ("run_args.json", "baselines.json", "sweep.json", "comparison.md", "command.txt"):
        assert (exp / name).is_file(), name
    assert json.loads((exp / "run_args.json").read_text())["name"] == "u1"
    assert len(list(exp.glob("trial_*/checkpoint_*/evaluation.json"))) >= 2
    assert (tmp_path / "staging").is_dir()  # the driver's side of the mirror, never the home folder here


@pytest.mark.slow
def test_node_that_cannot_see_the_output_is_refused(two_nodes, tmp_path):
    """A third node in a private mount namespace sees an empty tmpfs where --output is: node-local storage."""
    out = tmp_path / "results"
    out.mkdir()
    hide = _mount_namespace_prefix(out)
    if hide is None:
        pytest.skip("needs mount namespaces (unshare -m as root, or unshare -Urm) to hide a folder")
    two_nodes.start_node("hidden", prefix=hide)
    two_nodes.node_ids(3)
    result = cluster_cli(two_nodes, "--space", "kl_beta", "--smoke-test", "--output", str(out),
                         "--name", "c2")
    assert result.returncode == 2, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert f"--output {out}: not visible from 1 of 3 Ray node(s)" in lines[0]
    assert not any(out.iterdir())  # no experiment folder, no cache, no marker left behind


# ----------------------------------------------------------------------------- helpers

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _pids_mentioning(text: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if text.encode() in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


def _mount_namespace_prefix(folder: Path) -> list[str] | None:
    """A command prefix that runs the rest in a mount namespace where ``folder`` is an empty tmpfs."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return None
    script = 'mount -t tmpfs icd-hidden "$1" && shift && exec "$@"'
    for flags in (["-m"], ["-Urm"]):
        prefix = [unshare, *flags, "sh", "-c", script, "sh", str(folder)]
        if subprocess.run([*prefix, "true"], capture_output=True).returncode == 0:
            return prefix
    return None
