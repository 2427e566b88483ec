"""The local system minus the hub: emulated Slurm sites, their Kubernetes objects, the operator.

Shared by `make dev` (devtools.dev) and the operator's integration tests, so that both exercise
the same wiring. Everything listens on 127.0.0.0/8.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncssh
import yaml

from bbp_notebooks.devtools import processes, topology
from bbp_notebooks.devtools.processes import Child
from bbp_notebooks.devtools.topology import MONITOR_USER as MONITOR_USER
from bbp_notebooks.devtools.topology import USER_CA_SECRET as USER_CA_SECRET
from bbp_notebooks.devtools.topology import EmulatedSite
from bbp_notebooks.devtools.waiting import wait_until

# The names the tests know the topology and the wait by (defined once elsewhere).
wait_for = wait_until
DevSite = EmulatedSite
DEV_SITES = topology.EMULATED_SITES
DEV_USERS = {user: list(accounts) for user, accounts in topology.USERS.items()}

OPERATOR_NAMESPACE = "bbp-notebooks"


def free_port(host: str = topology.LOOPBACK) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


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
    sites: tuple[EmulatedSite, ...] = topology.EMULATED_SITES
    min_job_age: float = topology.DEFAULT_MIN_JOB_AGE_S
    ports: dict[str, int] = field(default_factory=dict)
    control_port: int = 0
    child: Child | None = None

    @property
    def process(self) -> subprocess.Popen[bytes] | None:
        return self.child.process if self.child is not None else None

    def config(self) -> dict[str, Any]:
        return {
            "control": {"address": topology.LOOPBACK, "port": self.control_port},
            "sites": [
                topology.mockslurm_site_config(
                    site,
                    port=self.ports[site.name],
                    state_dir=str(self.workdir / site.name),
                    user_ca={"user_ca_keys": [self.keys.user_ca_public]},
                    host_key_path=str(self.keys.host_key_path),
                    min_job_age=self.min_job_age,
                )
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
        self.child = processes.start(
            "bbp-notebooks-mockslurm",
            [sys.executable, "-m", "bbp_notebooks.mockslurm", "--config", str(path)],
            self.workdir / "mockslurm.log",
            # Slurm prints local times: the sites' zone, which their SlurmSites name.
            env={**os.environ, "TZ": topology.mock_time_zone(self.sites)},
        )
        wait_until(
            lambda: self._alive() and _port_open(topology.LOOPBACK, self.control_port)
            and all(_port_open(s.address, self.ports[s.name]) for s in self.sites),
            30, "the mock Slurm sites",
        )  # fmt: skip

    def _alive(self) -> bool:
        assert self.child is not None, "not started"
        return self.child.check_alive()

    def stop(self) -> None:
        if self.child is not None:
            self.child.stop()

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


def site_object(
    site: EmulatedSite, port: int, keys: Keys, poll_interval: int, admin_user: str | None = None
) -> dict[str, Any]:
    return topology.slurm_site_object(
        site,
        port=port,
        host_keys={"knownHosts": [f"[{site.address}]:{port} {keys.host_public}"]},
        poll_interval=poll_interval,
        notebook_host=topology.LOOPBACK,
        admin_user=admin_user,
    )


def install_objects(
    kubectl: Callable[..., subprocess.CompletedProcess[str]],
    mock: MockSlurm,
    *,
    poll_interval: int = 2,
    profiles: Path | None = None,
    admin_user: str | None = None,
) -> None:
    """Namespace, the user CA Secret, SlurmSites for the emulated sites (with ``admin_user`` as
    their adminUser, if given), sample profiles."""
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
    objects += [
        site_object(s, mock.ports[s.name], mock.keys, poll_interval, admin_user) for s in mock.sites
    ]
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
    child: Child | None = None
    starts: int = 0

    @property
    def process(self) -> subprocess.Popen[bytes] | None:
        return self.child.process if self.child is not None else None

    @property
    def url(self) -> str:
        return f"http://{topology.LOOPBACK}:{self.http_port}"

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
            "BBP_HTTP_HOST": topology.LOOPBACK,
            "BBP_HTTP_PORT": str(self.http_port),
            "BBP_CALLBACK_URL": self.url,
            **self.settings,
        }
        self.starts += 1
        self.child = processes.start(
            "the operator",
            [sys.executable, "-m", "bbp_notebooks.operator.main"],
            self.log_path,
            env=env,
            banner=f"operator start #{self.starts}",
        )
        wait_until(lambda: self._alive() and self._healthy(), 60, "the operator's /healthz")

    def _alive(self) -> bool:
        assert self.child is not None, "not started"
        return self.child.check_alive()

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/healthz", timeout=1) as response:  # noqa: S310
                return bool(response.status == 200)
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL: no cleanup, no finalizer work — as a crashed node would."""
        if self.child is not None:
            self.child.kill()

    def stop(self) -> None:
        if self.child is not None:
            self.child.stop()

    def metrics(self) -> str:
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=5) as response:  # noqa: S310
            return str(response.read().decode())
