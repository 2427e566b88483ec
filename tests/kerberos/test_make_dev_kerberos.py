"""`make dev KERBEROS=1` (python -m bbp_notebooks.devtools.dev --kerberos): the banner's Kerberos
passwords log in at the real hub (ticket Secret created), a wrong one is refused, a server starts
at the GSSAPI site on real Slurm, logout deletes the ticket Secret, and Ctrl-C cancels the job.

It borrows the Kerberos lane's real Slurm (``--real-slurm``): run under the real-Slurm lock,
``flock /tmp/realslurm.lock python -m pytest tests/kerberos``.
"""

from __future__ import annotations

import base64
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
from pathlib import Path
from typing import Any

import pytest

from bbp_notebooks.api.kerberos import TICKET_LABEL, parse_ccache, ticket_secret_name
from bbp_notebooks.devtools.controlplane import repo_root, tools_bin
from bbp_notebooks.devtools.dev import ensure_dev_deps
from bbp_notebooks.devtools.stack import wait_for
from e2e.test_make_dev import Browserless
from fixtures.realslurm import RealSlurm

pytestmark = [pytest.mark.kube, pytest.mark.realslurm, pytest.mark.timeout(900)]

BANNER = re.compile(
    r"JupyterHub:\s+(?P<url>http://127\.0\.0\.1:\d+)/.*?"
    r"Kerberos:\s+realm (?P<realm>\S+), KDC (?P<kdc>127\.0\.0\.30:\d+).*?"
    r"log in as:\s+alice / (?P<alice>\S+), bob / (?P<bob>\S+)\s.*?"
    r"GSSAPI site: (?P<site>\S+) (?P<frontend>127\.0\.0\.31:\d+).*?"
    r"KUBECONFIG=(?P<kubeconfig>\S+)",
    re.DOTALL,
)


def _login(hub: Browserless, user: str, password: str) -> tuple[int, str]:
    """(HTTP status, final URL) of a login form post."""
    try:
        return 200, hub.post("/hub/login", {"username": user, "password": password})
    except urllib.error.HTTPError as error:
        return error.code, error.geturl()


def test_make_dev_kerberos_logs_in_with_the_realm_runs_at_the_gssapi_site_logout_drops_the_ticket(
    tmp_path: Path, real_slurm: RealSlurm
) -> None:
    ensure_dev_deps()
    workdir = tmp_path / "dev"
    process = subprocess.Popen(
        [sys.executable, "-m", "bbp_notebooks.devtools.dev", "--workdir", str(workdir),
         "--port", "0", "--idle-timeout", "0", "--kerberos", "--real-slurm", str(real_slurm.root)],
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
    job_id: int | None = None
    try:
        deadline = time.monotonic() + 300
        while "Ctrl-C stops everything" not in output:
            try:
                output += lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"make dev --kerberos did not come up:\n{output}") from None
            assert process.poll() is None, f"make dev --kerberos exited:\n{output}"
        banner = BANNER.search(output)
        assert banner, output
        assert banner["site"] == "geneva-krb" and banner["realm"] == "BBP.TEST", output
        password = banner["alice"]
        assert password != banner["bob"]
        env = {
            **os.environ,
            "KUBECONFIG": banner["kubeconfig"],
            "PATH": f"{tools_bin()}{os.pathsep}{os.environ['PATH']}",
        }

        def kubectl_json(*args: str) -> dict[str, Any] | None:
            result = subprocess.run(
                ["kubectl", *args, "-o", "json"], env=env, capture_output=True, text=True,
                timeout=30, check=False,
            )  # fmt: skip
            return json.loads(result.stdout) if result.returncode == 0 else None

        def ticket_secret() -> dict[str, Any] | None:
            return kubectl_json("get", "secret", ticket_secret_name("alice"), "-n", "default")

        def session() -> dict[str, Any] | None:
            found = kubectl_json("get", "notebooksessions", "-A")
            items = found["items"] if found else []
            return items[0] if items else None

        hub = Browserless(banner["url"])
        hub.get("/hub/login")
        # A wrong Kerberos password: the hub's normal refusal, and no ticket.
        status, _ = _login(hub, "alice", "not-" + password)
        assert status == 403, status
        assert ticket_secret() is None
        # bob's password is not alice's.
        assert _login(hub, "alice", banner["bob"])[0] == 403
        assert ticket_secret() is None
        # The banner's password: logged in, and a ticket of alice@BBP.TEST in her Secret.
        status, landed = _login(hub, "alice", password)
        assert status == 200 and landed.endswith(("/hub/spawn", "/hub/home")), (status, landed)
        secret = ticket_secret()
        assert secret is not None
        assert secret["metadata"]["labels"][TICKET_LABEL] == "true"
        ticket = parse_ccache(base64.b64decode(secret["data"]["ccache"]))
        ticket_base64 = secret["data"]["ccache"].encode()
        assert ticket.principal == "alice@BBP.TEST" and ticket.renewable

        # A server at the GSSAPI site, on real Slurm, with alice's ticket.
        hub.post("/hub/spawn", {"profile": "bluepy", "site": "geneva-krb"})
        ready = wait_for(
            lambda: (s := session()) and s.get("status", {}).get("phase") == "Ready" and s,
            240, "alice's session at geneva-krb to be Ready", 1,
        )  # fmt: skip
        assert ready["spec"]["site"] == "geneva-krb", ready["spec"]
        job_id = int(ready["status"]["jobId"])
        assert job_id >= real_slurm.sites["geneva"].first_job_id
        credentials = wait_for(
            lambda: next(
                (
                    c
                    for c in (session() or {}).get("status", {}).get("conditions", [])
                    if c["type"] == "CredentialsValid" and c["status"] == "True"
                ),
                None,
            ),
            30, "CredentialsValid=True", 1,
        )  # fmt: skip
        assert "alice@BBP.TEST" in credentials["message"]

        # Logout deletes the ticket Secret (the server keeps running).
        hub.get("/hub/logout")
        wait_for(lambda: ticket_secret() is None, 30, "the ticket Secret to be deleted", 0.5)
        assert (session() or {}).get("status", {}).get("phase") == "Ready"

        process.send_signal(signal.SIGINT)
        process.wait(timeout=180)
        reader.join(timeout=10)
        while not lines.empty():
            output += lines.get_nowait()
        assert process.returncode == 0, output
    finally:
        if process.poll() is None:
            # Ctrl-C even when the test failed: `make dev` stops what it started (a SIGKILL
            # would leave its daemons and the real Slurm job behind).
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=180)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=30)
        reader.join(timeout=10)
        stdout.close()

    # Ctrl-C deleted the session first: its real Slurm job was cancelled (with a certificate:
    # the ticket Secret was gone by then).
    sacct = subprocess.run(
        ["sacct", "-n", "-X", "-P", "-o", "State", "-j", str(job_id)],
        env={"SLURM_CONF": real_slurm.sites["geneva"].slurm_conf, "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert sacct.stdout.strip().startswith("CANCELLED"), (sacct.stdout, output)
    # Neither password nor ticket in any log of the system (hub, operator, sshd, KDC, API server).
    logs = b"".join(p.read_bytes() for p in workdir.rglob("*.log") if p.is_file())
    assert logs and b"alice@BBP.TEST" in logs  # the logs are there and do speak of alice
    for secret_bytes in (password.encode(), banner["bob"].encode(), ticket_base64,
                         ticket.data[-300:-100]):  # fmt: skip
        assert secret_bytes not in logs
