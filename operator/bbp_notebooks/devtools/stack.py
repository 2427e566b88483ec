"""The local system minus the hub: emulated Slurm sites, their Kubernetes objects, the operator.

Shared by `make dev` (devtools.dev) and the operator's integration tests, so that both exercise
the same wiring. Everything listens on 127.0.0.0/8.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncssh
import yaml

from bbp_notebooks.api.constants import API_VERSION

OPERATOR_NAMESPACE = "bbp-notebooks"
USER_CA_SECRET = "bbp-user-ca"  # noqa: S105  (a Secret's name, not a secret)
MONITOR_USER = "bbpmon"


@dataclass(frozen=True)
class DevSite:
    name: str
    display_name: str
    address: str
    node_names: str
    nodes: int
    cpus: int
    first_job_id: int
    require_account: bool
    partitions: tuple[tuple[str, str, bool], ...]  # (name, max time, default)


DEV_SITES = (
    DevSite(
        "geneva",
        "Geneva",
        "127.0.0.21",
        "gva-cn[01-08]",
        8,
        8,
        1000000,
        False,
        (("prod", "1-00:00:00", True), ("debug", "1:00:00", False)),
    ),  # fmt: skip
    DevSite(
        "lugano",
        "Lugano",
        "127.0.0.22",
        "lug-cn[01-04]",
        4,
        16,
        2000000,
        True,
        (("prod", "1-00:00:00", True),),
    ),  # fmt: skip
)
DEV_USERS = {"alice": ["proj-a", "proj-b"], "bob": ["proj-b"], MONITOR_USER: []}


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    """Poll ``predicate`` until it returns something truthy, or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def _port_open(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=0.5).close()
        return True
    except OSError:
        return False


@dataclass
class Keys:
    """The user CA (signs short-lived login certificates) and the sites' host key."""

    user_ca: asyncssh.SSHKey
    host_key: asyncssh.SSHKey
    folder: Path

    @property
    def host_key_path(self) -> Path:
        return self.folder / "host_key"

    @classmethod
    def create(cls, folder: Path) -> Keys:
        folder.mkdir(parents=True, exist_ok=True)
        keys = cls(
            asyncssh.generate_private_key("ssh-ed25519"),
            asyncssh.generate_private_key("ssh-ed25519"),
            folder,
        )
        for name, key in (("user_ca", keys.user_ca), ("host_key", keys.host_key)):
            path = folder / name
            path.write_bytes(key.export_private_key())
            path.chmod(0o600)
            (folder / f"{name}.pub").write_bytes(key.export_public_key())
        return keys

    @property
    def user_ca_private(self) -> bytes:
        return bytes(self.user_ca.export_private_key())

    @property
    def user_ca_public(self) -> str:
        return bytes(self.user_ca.export_public_key()).decode().strip()

    @property
    def host_public(self) -> str:
        return bytes(self.host_key.export_public_key()).decode().strip()


@dataclass
class MockSlurm:
    """`bbp-notebooks-mockslurm` as a child process with two sites and its control interface."""

    workdir: Path
    keys: Keys
    sites: tuple[DevSite, ...] = DEV_SITES
    min_job_age: float = 300.0
    ports: dict[str, int] = field(default_factory=dict)
    control_port: int = 0
    process: subprocess.Popen[bytes] | None = None

    def config(self) -> dict[str, Any]:
        host_key = self.keys.host_key_path
        return {
            "control": {"address": "127.0.0.1", "port": self.control_port},
            "sites": [
                {
                    "name": site.name,
                    "address": site.address,
                    "port": self.ports[site.name],
                    "state_dir": str(self.workdir / site.name),
                    "host_key_path": str(host_key),
                    "user_ca_keys": [self.keys.user_ca_public],
                    "users": [{"name": u, "accounts": a} for u, a in DEV_USERS.items()],
                    "require_account": site.require_account,
                    "nodes": [{"names": site.node_names, "cpus": site.cpus, "memory_mb": 65536}],
                    "partitions": [
                        {"name": name, "max_time": max_time, "default": default}
                        for name, max_time, default in site.partitions
                    ],
                    "first_job_id": site.first_job_id,
                    "min_job_age": self.min_job_age,
                    "sched_interval": 0.1,
                    "kill_wait": 2.0,
                    "controller_down_delay": 1.0,
                    # Slurm's default (and our real test clusters'): over-limit jobs pend.
                    "enforce_partition_limits": False,
                }
                for site in self.sites
            ],
        }

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        for site in self.sites:
            self.ports.setdefault(site.name, free_port(site.address))
        self.control_port = self.control_port or free_port()
        path = self.workdir / "mockslurm.yaml"
        path.write_text(yaml.safe_dump(self.config()))
        log = open(self.workdir / "mockslurm.log", "wb")  # noqa: SIM115  (child keeps it open)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bbp_notebooks.mockslurm", "--config", str(path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        wait_for(
            lambda: self._alive() and _port_open("127.0.0.1", self.control_port)
            and all(_port_open(s.address, self.ports[s.name]) for s in self.sites),
            30, "the mock Slurm sites",
        )  # fmt: skip

    def _alive(self) -> bool:
        if self.process is None or self.process.poll() is not None:
            log = (self.workdir / "mockslurm.log").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"bbp-notebooks-mockslurm exited:\n{log}")
        return True

    def stop(self) -> None:
        _stop(self.process)

    def control(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> Any:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.control_port}{path}",
            data=json.dumps(body).encode() if body is not None else None,
            method=method,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 (loopback)
            return json.loads(response.read() or b"null")

    def faults(self, site: str, **faults: Any) -> Any:
        return self.control("POST", f"/sites/{site}/faults", faults)

    def jobs(self, site: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.control("GET", f"/sites/{site}/jobs")
        return result

    def commands(self, site: str) -> dict[str, int]:
        """Slurm commands the site ran since the last reset, by command name."""
        result: dict[str, int] = self.control("GET", f"/sites/{site}/commands")["commands"]
        return result

    def reset_commands(self, site: str) -> None:
        self.control("POST", f"/sites/{site}/commands/reset", {})


def site_object(site: DevSite, port: int, keys: Keys, poll_interval: int) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "SlurmSite",
        "metadata": {"name": site.name},
        "spec": {
            "displayName": site.display_name,
            "frontend": {"host": site.address, "port": port},
            "hostKeys": {"knownHosts": [f"[{site.address}]:{port} {keys.host_public}"]},
            "partitions": [{"name": n, "default": d} for n, _, d in site.partitions],
            "accountPolicy": "Required" if site.require_account else "Optional",
            "auth": {"method": "Certificate", "caSecretName": USER_CA_SECRET},
            "monitorUser": MONITOR_USER,
            "pollIntervalSeconds": poll_interval,
            "notebookHost": "127.0.0.1",
        },
    }


def install_objects(
    kubectl: Callable[..., subprocess.CompletedProcess[str]],
    mock: MockSlurm,
    *,
    poll_interval: int = 2,
    profiles: Path | None = None,
) -> None:
    """Namespace, the user CA Secret, SlurmSites for the emulated sites, sample profiles."""
    import base64

    objects: list[dict[str, Any]] = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": OPERATOR_NAMESPACE}},
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": USER_CA_SECRET, "namespace": OPERATOR_NAMESPACE},
            "type": "Opaque",
            "data": {"ca": base64.b64encode(mock.keys.user_ca_private).decode()},
        },
    ]
    objects += [site_object(s, mock.ports[s.name], mock.keys, poll_interval) for s in mock.sites]
    manifest = "\n---\n".join(json.dumps(o) for o in objects)
    result = kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", stdin=manifest)
    if result.returncode != 0:
        raise RuntimeError(f"kubectl apply failed: {result.stderr}")
    if profiles is not None:
        result = kubectl("apply", "-f", str(profiles))
        if result.returncode != 0:
            raise RuntimeError(f"kubectl apply {profiles} failed: {result.stderr}")


@dataclass
class Operator:
    """The operator as a child process, so that tests can SIGKILL and restart it."""

    workdir: Path
    kubeconfig: Path
    settings: dict[str, str] = field(default_factory=dict)
    http_port: int = 0
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "operator.log"

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.http_port = self.http_port or free_port()
        env = {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "BBP_NAMESPACE": OPERATOR_NAMESPACE,
            "BBP_HTTP_HOST": "127.0.0.1",
            "BBP_HTTP_PORT": str(self.http_port),
            "BBP_CALLBACK_URL": self.url,
            **self.settings,
        }
        self.starts += 1
        log = open(self.log_path, "ab")  # noqa: SIM115
        log.write(f"\n===== operator start #{self.starts} =====\n".encode())
        log.flush()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bbp_notebooks.operator.main"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        wait_for(lambda: self._alive() and self._healthy(), 60, "the operator's /healthz")

    def _alive(self) -> bool:
        if self.process is None or self.process.poll() is not None:
            raise RuntimeError(f"the operator exited:\n{self.log_path.read_text()[-4000:]}")
        return True

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/healthz", timeout=1) as response:  # noqa: S310
                return bool(response.status == 200)
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL: no cleanup, no finalizer work — as a crashed node would."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        _stop(self.process)

    def metrics(self) -> str:
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=5) as response:  # noqa: S310
            return str(response.read().decode())


def _stop(process: subprocess.Popen[bytes] | None, timeout: float = 15) -> None:
    if process is None or process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
