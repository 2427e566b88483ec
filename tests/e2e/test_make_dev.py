"""`make dev` (python -m bbp_notebooks.devtools.dev): it prints a hub URL and a login that work, and
Ctrl-C cancels the running notebooks' Slurm jobs and stops everything it started."""

from __future__ import annotations

import http.cookiejar
import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from bbp_notebooks.devtools.controlplane import repo_root, tools_bin
from bbp_notebooks.devtools.dev import ensure_dev_deps
from bbp_notebooks.devtools.stack import wait_for

pytestmark = [pytest.mark.kube, pytest.mark.timeout(600)]

BANNER = re.compile(
    r"JupyterHub:\s+(?P<url>http://127\.0\.0\.1:\d+)/.*?password (?P<password>\S+).*?"
    r"sites:\s+(?P<sites>.*?)\n.*?KUBECONFIG=(?P<kubeconfig>\S+)",
    re.DOTALL,
)


def _port_open(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=0.5).close()
        return True
    except OSError:
        return False


class Browserless:
    """Just enough of a browser for JupyterHub's login and spawn forms (cookies, _xsrf)."""

    def __init__(self, base: str):
        self.base = base
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar))

    def xsrf(self) -> str:
        return next(c.value for c in self.jar if c.name == "_xsrf" and c.value)

    def get(self, path: str) -> str:
        with self.opener.open(self.base + path, timeout=30) as response:
            return str(response.read().decode())

    def post(self, path: str, form: dict[str, str]) -> str:
        data = urllib.parse.urlencode({**form, "_xsrf": self.xsrf()}).encode()
        with self.opener.open(self.base + path, data=data, timeout=60) as response:
            return str(response.geturl())


def test_make_dev_serves_a_notebook_and_ctrl_c_cancels_its_job_and_stops_everything(
    tmp_path: Path,
) -> None:
    ensure_dev_deps()
    workdir = tmp_path / "dev"
    process = subprocess.Popen(
        [sys.executable, "-m", "bbp_notebooks.devtools.dev", "--workdir", str(workdir),
         "--port", "0"],
        cwd=repo_root(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    assert process.stdout is not None
    lines: queue.Queue[str] = queue.Queue()
    stdout = process.stdout

    def read() -> None:
        for line in stdout:
            lines.put(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    output = ""
    try:
        deadline = time.monotonic() + 240
        while "Ctrl-C stops everything" not in output:
            try:
                output += lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"make dev did not come up in time:\n{output}") from None
            assert process.poll() is None, f"make dev exited:\n{output}"
        banner = BANNER.search(output)
        assert banner, output
        url, password = banner["url"], banner["password"]
        site_ports = [
            (host, int(port))
            for host, port in re.findall(r"(127\.0\.0\.\d+):(\d+)", banner["sites"])
        ]
        assert len(site_ports) == 2, banner["sites"]
        env = {
            **os.environ,
            "KUBECONFIG": banner["kubeconfig"],
            "PATH": f"{tools_bin()}{os.pathsep}{os.environ['PATH']}",
        }

        def session() -> dict[str, Any] | None:
            result = subprocess.run(
                ["kubectl", "get", "notebooksessions", "-A", "-o", "json"],
                env=env, capture_output=True, text=True, timeout=30, check=True,
            )  # fmt: skip
            items: list[dict[str, Any]] = json.loads(result.stdout)["items"]
            return items[0] if items else None

        # The printed login works, and the spawn form starts a notebook.
        hub = Browserless(url)
        hub.get("/hub/login")
        assert hub.post("/hub/login", {"username": "bob", "password": password}).endswith(
            ("/hub/spawn", "/hub/home")
        )
        hub.post("/hub/spawn", {"profile": "bluepy", "site": "geneva"})
        ready = wait_for(
            lambda: (s := session()) and s.get("status", {}).get("phase") == "Ready" and s,
            180, "bob's session to be Ready", 0.5,
        )  # fmt: skip
        job_id = ready["status"]["jobId"]

        process.send_signal(signal.SIGINT)
        process.wait(timeout=180)
        reader.join(timeout=10)
        while not lines.empty():
            output += lines.get_nowait()
        assert process.returncode == 0, output
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)
        reader.join(timeout=10)
        stdout.close()

    mock_log = (workdir / "mockslurm" / "mockslurm.log").read_text()
    assert f"job {job_id} ended CANCELLED" in mock_log, output
    for host, port in [*site_ports, ("127.0.0.1", int(url.rsplit(":", 1)[1]))]:
        assert not _port_open(host, port), f"{host}:{port} still listens\n{output}"
    assert not (workdir / "controlplane" / "processes.json").exists(), output


def test_an_idle_server_is_culled_its_session_deleted_and_its_job_cancelled(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """make dev's wiring with jupyterhub-idle-culler at --timeout=20 --cull-every=5: a server
    nobody uses is stopped by the culler through the hub, so the spawner deletes its session and
    the operator cancels its Slurm job."""
    from bbp_notebooks.devtools.dev import start_dev_system

    system = start_dev_system(tmp_path / "dev", idle_timeout=20, cull_every=5, poll_interval=1)
    try:
        hub = Browserless(system.url)
        hub.get("/hub/login")
        hub.post("/hub/login", {"username": "alice", "password": system.hub.password})
        hub.post("/hub/spawn", {"profile": "bluepy", "site": "geneva"})

        def ready() -> dict[str, Any] | None:
            result = system.kubectl("get", "notebooksessions", "-A", "-o", "json")
            items = json.loads(result.stdout)["items"] if result.returncode == 0 else []
            return items[0] if items and items[0]["status"].get("phase") == "Ready" else None

        session = wait_for(ready, 180, "alice's session to be Ready", 0.5)
        became_ready = time.monotonic()
        job_id = int(session["status"]["jobId"])
        # Nobody touches the server from here on.
        wait_for(lambda: not system.sessions(), 120, "the culler to stop the idle server", 1)
        culled_after = time.monotonic() - became_ready

        def job_state() -> str | None:
            jobs = [j for j in system.mock.jobs("geneva") if j["job_id"] == job_id]
            state = jobs[0]["state"] if jobs else None
            return state if state not in ("RUNNING", "PENDING", "COMPLETING") else None

        assert wait_for(job_state, 60, f"job {job_id} to end", 0.5) == "CANCELLED"
        # The hub stopped it because the culler asked: its request is in the hub's log (written
        # when the hub answers, which may be after the session is gone).
        culler_asked = re.compile(r"DELETE /hub/api/users/alice/server \(idle-culler@")
        wait_for(
            lambda: culler_asked.search(system.hub.log_path.read_text()),
            60,
            "the culler's DELETE in the hub's log",
            0.5,
        )
        with capsys.disabled():
            print(f"\nidle culling: session gone {culled_after:.1f} s after Ready, job CANCELLED")
    finally:
        system.stop()
