"""Running a sweep on an existing Ray cluster: address, code shipping, shared storage.

A multi-node sweep has two things that must reach every node:

* **code and data** travel through Ray: our packages as ``py_modules`` of the
  job's runtime env (no assumption that the checkout exists on every node),
  the data source and the shared SFT/RCE states through the object store
  (``tune.with_parameters``), never as paths;
* **storage**: Tune's workers write checkpoints straight to ``storage_path``,
  so ``--output`` must be a path every node mounts at the same place, or a
  URI pyarrow opens (``s3://``, ``gs://``, ``file://``, ...). A URI output
  keeps our own files (run_args.json, leaderboard.csv, ...) and the caches in
  a local staging folder and mirrors them to the URI (``Output.push/pull``).

``check_output_visible`` turns "the head's local disk" into a one-line
refusal before anything is trained, instead of a trial error at the first
checkpoint on a remote node.
"""
from __future__ import annotations

import os
import secrets
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

from sweep.storage import Output, resolve_output  # noqa: F401  (experiment.py reaches both through here)
from trainer.errors import UserError

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("trainer", "sweep")
ENV_PREFIX = "ICD_SWEEP_"            # forwarded to every worker (e.g. the fault-injection switch)
PROBE_TIMEOUT_S = 120.0
_MARKER = ".icd-sweep-visible-"


def resolve_address(flag: str | None, environ=os.environ) -> str | None:
    """--address, else RAY_ADDRESS, else None (start a local Ray); refuses forms we cannot drive."""
    address = (flag or environ.get("RAY_ADDRESS") or "").strip() or None
    source = "--address" if flag else "RAY_ADDRESS"
    if address is None or address == "auto":
        return address
    if address.startswith("ray://"):
        raise UserError(f"{source} {address}: Ray Client is not supported (the sweep's driver writes "
                        f"its files locally); run this command on a cluster node with --address auto or "
                        f"HOST:PORT")
    if "://" in address:
        raise UserError(f"{source} {address}: give the cluster's GCS address HOST:PORT (what `ray "
                        f"start --head` prints, port 6379 by default), not a URL; the dashboard URL is not a "
                        f"Ray address")
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"{source} {address}: expected HOST:PORT (e.g. 10.0.0.5:6379) or 'auto'")
    return address


@dataclass(frozen=True)
class NodeInfo:
    node_id: str
    ip: str
    cpus: float
    gpus: float
    is_head: bool


@dataclass(frozen=True)
class ClusterInfo:
    """The alive nodes at connection time; ``address`` is None for a Ray this process started."""

    address: str | None
    driver_node: str
    nodes: tuple[NodeInfo, ...]

    @property
    def multi_node(self) -> bool:
        return len(self.nodes) > 1

    def summary(self) -> str:
        cpus, gpus = sum(n.cpus for n in self.nodes), sum(n.gpus for n in self.nodes)
        where = f"Ray cluster {self.address}" if self.address else "local Ray"
        return f"{where}: {len(self.nodes)} node(s), {cpus:g} CPUs, {gpus:g} GPUs"

    def fit_warning(self, cpus_per_trial: float, gpus_per_trial: float) -> str | None:
        """A line when no node can hold one trial (an autoscaler may still add one, so not an error)."""
        if any(n.cpus >= cpus_per_trial and n.gpus >= gpus_per_trial for n in self.nodes):
            return None
        return (f"warning: no node of this cluster has {cpus_per_trial:g} CPU(s) and {gpus_per_trial:g} "
                f"GPU(s) for one trial; trials wait until a node that fits joins "
                f"(--cpus-per-trial/--gpus-per-trial)")


def describe(address: str | None = None) -> ClusterInfo:
    """ClusterInfo of the Ray this process is connected to."""
    import ray

    nodes = tuple(NodeInfo(node_id=n["NodeID"], ip=n["NodeManagerAddress"],
                           cpus=float(n["Resources"].get("CPU", 0)),
                           gpus=float(n["Resources"].get("GPU", 0)),
                           is_head="node:__internal_head__" in n["Resources"])
                  for n in ray.nodes() if n["Alive"])
    return ClusterInfo(address=address, driver_node=ray.get_runtime_context().get_node_id(), nodes=nodes)


def runtime_env(env_vars: dict[str, str] | None = None) -> dict:
    """Our packages shipped by Ray to every node, and the ICD_SWEEP_* switches of this shell.

    Workers run the Python of the node's ``ray start``: it must have the same
    third-party packages (torch, optuna, ...) as this driver.
    """
    forwarded = {k: v for k, v in os.environ.items() if k.startswith(ENV_PREFIX)}
    return {"py_modules": [str(REPO / p) for p in PACKAGES], "env_vars": {**forwarded, **(env_vars or {})}}


def connect(address: str, *, env_vars: dict[str, str] | None = None) -> ClusterInfo:
    """``ray.init`` on an existing cluster, with Ray's failures turned into one-line UserErrors."""
    import ray
    from ray.exceptions import AuthenticationError

    _reachable(address)
    try:
        ray.init(address=address, runtime_env=runtime_env(env_vars), log_to_driver=False,
                 configure_logging=True, logging_level="WARNING")
    except (AuthenticationError, ConnectionError) as exc:
        # a wrong or missing token surfaces as a ConnectionError after about 20 s (Ray 2.60)
        raise UserError(f"--address {address}: cannot join the Ray cluster ({_first_line(exc)}); run this "
                        f"on a node of the cluster and, if it uses token authentication, export "
                        f"RAY_AUTH_MODE=token and its token (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or "
                        f"~/.ray/auth_token); see docs/cluster.md")
    return describe(address)


def _reachable(address: str, timeout_s: float = 5.0) -> None:
    """Fail in seconds on a dead HOST:PORT (ray.init itself retries for minutes)."""
    if address == "auto":
        return
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise UserError(f"--address {address}: nothing answers there ({exc.strerror or exc}); start a "
                        f"cluster with `ray start --head` (docs/cluster.md) or fix the address")


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]


def check_output_visible(output: Output, info: ClusterInfo, *,
                         timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """Refuse (UserError) when some alive node cannot see --output, before anything is trained.

    The driver writes a marker with a random token under the output root and a
    task pinned to every alive node reads it back. Nodes that join later (an
    autoscaler) are not checked here; Ray's own storage check then fails
    their trials at the first checkpoint.
    """
    if info.address is None:
        return  # a local Ray started by this process: one node, the driver's
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    token = secrets.token_hex(8)
    marker = _MARKER + token
    created = output.write_marker(marker, token)
    try:
        probe = ray.remote(num_cpus=0, max_retries=0)(_probe)  # zero CPUs: runs even on a busy node
        location = output.uri or str(output.local)
        refs = {n.node_id: probe.options(
                    scheduling_strategy=NodeAffinitySchedulingStrategy(n.node_id, soft=False),
                ).remote(location, marker, token) for n in info.nodes}
        ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=timeout_s)
        problems = []
        for node in info.nodes:
            ref = refs[node.node_id]
            if ref not in ready:
                problems.append(f"{node.ip} (node {node.node_id[:8]}): no answer in {timeout_s:g} s")
                continue
            try:
                seen = ray.get(ref)
            except Exception as exc:  # the probe itself failed on that node (import, permissions)
                seen = f"probe failed: {_first_line(exc)}"
            if seen != "ok":
                problems.append(f"{node.ip} (node {node.node_id[:8]}): {seen}")
    finally:
        output.remove_marker(marker, created)
    if problems:
        raise UserError(
            f"--output {output.spec}: not visible from {len(problems)} of {len(info.nodes)} Ray node(s) "
            f"[{'; '.join(problems)}]; trials there could not write checkpoints. Give a path every node "
            f"mounts at the same place (NFS, ...) or a URI such as s3://bucket/prefix (docs/cluster.md)")


def _probe(location: str, marker: str, token: str) -> str:
    """Runs on one node: 'ok' when the driver's marker is there with the right token."""
    try:
        if "://" in location:
            import pyarrow.fs as pafs

            fs, root = pafs.FileSystem.from_uri(location)
            with fs.open_input_stream(f"{root.rstrip('/')}/{marker}") as fh:
                text = fh.read().decode()
        else:
            text = Path(location, marker).read_text()
    except FileNotFoundError:
        return "the marker the driver wrote is not there (node-local disk?)"
    except OSError as exc:
        return f"cannot read it ({exc.strerror or exc})"
    return "ok" if text == token else "a different folder with the same path (node-local disk?)"


def attach(address_flag: str | None, output: Output, *, cpus_per_trial: float = 1.0,
           gpus_per_trial: float = 0.0, log=print) -> ClusterInfo | None:
    """Join the cluster of --address/RAY_ADDRESS and check --output from every node; None: a local run."""
    address = resolve_address(address_flag)
    if address is None:
        return None
    info = connect(address)
    try:
        check_output_visible(output, info)
    except BaseException:
        import ray

        ray.shutdown()
        raise
    log(f"{info.summary()}; --output {output.spec} is visible from every node")
    warning = info.fit_warning(cpus_per_trial, gpus_per_trial)
    if warning:
        print(warning, file=sys.stderr)
    return info
