"""Ray's dashboard as `--dashboard` starts it (sweep.experiment.init_ray): loopback only, token on.

The dashboard's Jobs API runs code for whoever reaches it (CVE-2023-48022), so the test checks
the two walls: it listens on 127.0.0.1 only, and without Ray's token it answers 401.
"""
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import pytest

RAY_CLI = str(Path(sys.executable).parent / "ray")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def status(url: str, headers: dict | None = None) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.fixture(scope="module")
def dashboard():
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
        pytest.skip("RAY_AUTH_MODE=disabled in this environment: the test is about token authentication")
    try:
        import ray.dashboard.optional_deps  # noqa: F401  (aiohttp & co come with ray[default])
    except ImportError as exc:
        pytest.skip(f"the dashboard cannot start here (ray[default] extras missing: {exc})")
    import ray

    from sweep.ray_session import init_ray

    auth_mode = os.environ.get("RAY_AUTH_MODE")  # ray.init sets it to "token" in this process
    url = init_ray(dashboard=True, dashboard_port=free_port(), num_cpus=1)
    try:
        deadline = time.time() + 60
        while time.time() < deadline:  # the HTTP server comes up a moment after ray.init returns
            try:
                status(f"{url}/api/version")
                break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.skip(f"the dashboard did not answer on {url} within 60 s")
        yield url
    finally:
        ray.shutdown()
        if auth_mode is None:
            os.environ.pop("RAY_AUTH_MODE", None)
        else:
            os.environ["RAY_AUTH_MODE"] = auth_mode


def test_dashboard_api_answers_401_without_the_token(dashboard):
    assert status(f"{dashboard}/api/jobs/") == 401
    assert status(f"{dashboard}/api/jobs/", {"Authorization": "Bearer not-the-token"}) == 403
    token = subprocess.run([RAY_CLI, "get-auth-token"], capture_output=True, text=True,
                           timeout=60).stdout.strip()
    assert token, "ray get-auth-token printed nothing"
    assert status(f"{dashboard}/api/jobs/", {"Authorization": f"Bearer {token}"}) == 200
    assert status(f"{dashboard}/api/jobs/", {"X-Ray-Authorization": f"Bearer {token}"}) == 200


def test_dashboard_listens_on_loopback_only(dashboard):
    import ray

    address = urlparse(dashboard)
    assert address.hostname == "127.0.0.1"
    node_ip = ray.util.get_node_ip_address()
    if node_ip.startswith("127."):
        pytest.skip("this machine has no non-loopback address to try")
    with pytest.raises(OSError):
        socket.create_connection((node_ip, address.port), timeout=3).close()


def test_another_host_is_passed_on_with_a_warning(monkeypatch, capsys):
    import ray

    from sweep.ray_session import init_ray

    seen = {}

    class Context:
        dashboard_url = "0.0.0.0:8266"

    def fake_init(**kwargs):
        seen.update(kwargs)
        return Context()

    monkeypatch.setattr(ray, "init", fake_init)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)  # an earlier test's Ray may still be up
    assert init_ray(dashboard=True, dashboard_host="0.0.0.0", dashboard_port=8266) == "http://0.0.0.0:8266"
    assert seen["dashboard_host"] == "0.0.0.0" and seen["include_dashboard"] is True
    assert "WARNING" in capsys.readouterr().err
    seen.clear()
    init_ray()
    assert seen["dashboard_host"] == "127.0.0.1" and seen["include_dashboard"] is False
    assert "WARNING" not in capsys.readouterr().err
