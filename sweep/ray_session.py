"""Ray for one sweep: starting or joining it (dashboard exposure, environment for the workers) and
handing Ctrl-C to Tune so that an interrupted sweep saves its state and says how to resume.
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Iterator

from trainer.faults import FAULT_ENV

REPO = Path(__file__).resolve().parent.parent


@contextlib.contextmanager
def stop_tune_on_sigint() -> Iterator[threading.Event]:
    """First Ctrl-C: Tune stops its trials, saves its state and returns; the event says it happened.

    Tune's own SIGINT handler leaves no trace in what ``fit`` returns, so ours
    records the interrupt and hands it on as SIGUSR1, which Tune always treats
    as "stop and save". Before Tune has installed that handler, and on a second
    Ctrl-C, it raises KeyboardInterrupt as usual.
    """
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def not_yet(signum, frame) -> None:  # SIGUSR1 until Tune takes it over (its default would kill us)
        pass

    def on_sigint(signum, frame) -> None:
        if stop.is_set() or signal.getsignal(signal.SIGUSR1) is not_yet:
            raise KeyboardInterrupt
        stop.set()
        print("\nCtrl-C: stopping the trials and saving the state (Ctrl-C again to abort)", file=sys.stderr)
        os.kill(os.getpid(), signal.SIGUSR1)

    previous = signal.signal(signal.SIGINT, on_sigint), signal.signal(signal.SIGUSR1, not_yet)
    saved_env = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous[0])
        signal.signal(signal.SIGUSR1, previous[1])
        if saved_env is None:
            os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
        else:
            os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = saved_env


def init_ray(*, address: str | None = None, dashboard: bool = False, dashboard_host: str = "127.0.0.1",
             dashboard_port: int = 8265, num_cpus: int | None = None) -> str | None:
    """Start (or join, with ``address``) Ray; returns the dashboard's URL when one was started.

    The dashboard binds ``dashboard_host`` (loopback unless the user says
    otherwise) and keeps Ray's token authentication: ``ray.init`` enables it
    for a new local cluster unless RAY_AUTH_MODE says otherwise, and
    ``sweep/cli.py`` refuses a non-loopback host when it is disabled.
    """
    import ray

    from sweep.cli import is_loopback

    if ray.is_initialized():  # cluster.attach joined the cluster already
        return None

    env_vars = {"PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    if os.environ.get(FAULT_ENV):  # workers of a joined cluster do not inherit the driver's environment
        env_vars[FAULT_ENV] = os.environ[FAULT_ENV]
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, runtime_env={"env_vars": env_vars}, log_to_driver=False)
        return None
    if dashboard and not is_loopback(dashboard_host):
        print(f"WARNING: the Ray dashboard will listen on {dashboard_host}:{dashboard_port}: anyone who "
              f"can reach it and holds the token can run code on this machine. Prefer 127.0.0.1 and an "
              f"SSH tunnel.",
              file=sys.stderr)
    ctx = ray.init(include_dashboard=dashboard, dashboard_host=dashboard_host, dashboard_port=dashboard_port,
                   num_cpus=num_cpus, runtime_env={"env_vars": env_vars}, log_to_driver=False,
                   configure_logging=True, logging_level="WARNING")
    if not dashboard:
        return None
    url = getattr(ctx, "dashboard_url", None) or f"{dashboard_host}:{dashboard_port}"
    auth = os.environ.get("RAY_AUTH_MODE", "token")
    print(f"Ray dashboard: http://{url} (authentication: {auth}; print the token with `ray get-auth-token`)")
    return f"http://{url}"
