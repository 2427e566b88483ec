"""`make dev`: the whole system on this machine, on 127.0.0.1, until Ctrl-C.

A local control plane (kube-apiserver + etcd) with the CRDs, two emulated Slurm sites (Geneva with
8 nodes, Lugano with 4 and a required project), the sample profiles, the operator, and JupyterHub
with the NotebookSessionSpawner behind configurable-http-proxy. :func:`start_dev_system` returns
the running pieces; the browser end-to-end test starts the system through it too, so `make dev`
and the test share their wiring.

    python -m bbp_notebooks.devtools.dev [--workdir .dev] [--port 8000] [--kerberos]

With ``--kerberos`` (``make dev KERBEROS=1``) there is also a Kerberos realm and a GSSAPI site,
``geneva-krb``, on real Slurm (devtools/kerberos_site.py; needs root), and the hub logs users in
with their Kerberos passwords (KerberosAuthenticator), which the banner prints.

Stopping deletes the sessions first, so that the operator's finalizers cancel their Slurm jobs
(with a deadline), then stops the hub, the operator, the sites and the control plane.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from bbp_notebooks.devtools import admission, processes, realslurm, stack, topology
from bbp_notebooks.devtools.controlplane import ControlPlane, repo_root
from bbp_notebooks.devtools.kerberos_site import SITE_ACCOUNT, KerberosSite
from bbp_notebooks.devtools.processes import Child
from bbp_notebooks.devtools.prometheus import Prometheus, write_rules
from bbp_notebooks.devtools.stack import Keys, MockSlurm, Operator, free_port
from bbp_notebooks.devtools.waiting import wait_until

HOST = topology.LOOPBACK
DEV_USERS = ("alice", "bob")
SESSION_NAMESPACE = "default"
HUB_START_TIMEOUT_S = 60.0
SESSIONS_GONE_TIMEOUT_S = 60.0
DEPS_TIMEOUT_S = 1800.0
NOTEBOOK_AUTH_CACHE_S = 10
# `make dev` culls servers idle for an hour, as a deployment with idle culling on would.
DEV_IDLE_TIMEOUT_S = 3600
# The hub's ServiceAccount token outlives any `make dev` session (the local PKI lasts 30 days).
HUB_TOKEN_LIFETIME = datetime.timedelta(days=30)


class DevError(RuntimeError):
    pass


@dataclass(frozen=True)
class DevDeps:
    """What scripts/install-dev-deps.sh installs: the proxy, the jobs' notebook python, chromium."""

    chp: Path
    notebook_python: Path
    chromium: Path

    @property
    def singleuser(self) -> Path:
        return self.notebook_python.parent / "jupyterhub-singleuser"


def ensure_dev_deps(root: Path | None = None) -> DevDeps:
    """Run scripts/install-dev-deps.sh (a no-op when everything is there) and read what it found."""
    script = (root or repo_root()) / "scripts" / "install-dev-deps.sh"
    # stderr passes through: a first install takes a minute and says what it does.
    result = subprocess.run(
        ["bash", str(script)],
        stdout=subprocess.PIPE,
        text=True,
        check=False,
        timeout=DEPS_TIMEOUT_S,
        env={**os.environ, "PYTHON": sys.executable},
    )
    if result.returncode != 0:
        raise DevError(f"{script} failed with exit status {result.returncode}")
    found = dict(
        line.split("=", 1) for line in result.stdout.splitlines() if "=" in line
    )  # fmt: skip
    try:
        deps = DevDeps(Path(found["chp"]), Path(found["notebook_python"]), Path(found["chromium"]))
    except KeyError as error:
        raise DevError(f"{script} did not report {error}: {result.stdout!r}") from None
    for path in (deps.chp, deps.notebook_python, deps.singleuser, deps.chromium):
        if not os.access(path, os.X_OK):
            raise DevError(f"{path} is missing or not executable; run {script}")
    return deps


@dataclass
class Hub:
    """JupyterHub (examples/jupyterhub_config.py), which starts configurable-http-proxy itself."""

    workdir: Path
    kubeconfig: Path
    chp: Path
    port: int = 0
    password: str = field(default_factory=lambda: secrets.token_urlsafe(12), repr=False)
    # jupyterhub-idle-culler as a hub service: seconds without activity (0: no culler).
    idle_timeout: int = 0
    cull_every: int = 60
    # More environment for the hub (the Kerberos realm and krb5.conf of `--kerberos`).
    extra_env: Mapping[str, str] = field(default_factory=dict)
    child: Child | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "jupyterhub.log"

    def start(self, timeout: float = HUB_START_TIMEOUT_S) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        env = {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "JPY_COOKIE_SECRET": secrets.token_hex(32),
            "CONFIGPROXY_AUTH_TOKEN": secrets.token_hex(32),
            "BBP_DEV_PASSWORD": self.password,
            "BBP_CHP": str(self.chp),
            "BBP_HUB_PORT": str(self.port),
            "BBP_HUB_API_PORT": str(free_port()),
            "BBP_PROXY_API_PORT": str(free_port()),
            "BBP_HUB_STATE_DIR": str(self.workdir),
            "BBP_SESSION_NAMESPACE": SESSION_NAMESPACE,
            "BBP_IDLE_TIMEOUT": str(self.idle_timeout),
            "BBP_IDLE_CULL_EVERY": str(self.cull_every),
            **self.extra_env,
        }
        config = repo_root() / "examples" / "jupyterhub_config.py"
        # A session of its own: Ctrl-C reaches only `make dev`, which stops the pieces in order.
        self.child = processes.start(
            "JupyterHub",
            [sys.executable, "-m", "jupyterhub", "-f", str(config)],
            self.log_path,
            env=env,
            cwd=self.workdir,
        )
        wait_until(lambda: self.alive() and self._healthy(), timeout, "JupyterHub behind the proxy")

    def alive(self) -> bool:
        assert self.child is not None, "not started"
        return self.child.check_alive()

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/hub/health", timeout=2) as response:  # noqa: S310
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def stop(self) -> None:
        # SIGTERM: the hub stops the proxy it started; the sessions stay (cleanup_servers=False),
        # they are deleted by DevSystem.stop.
        if self.child is not None:
            self.child.stop(grace=20)
        # The proxy runs in a session of its own: a hub that died or had to be killed leaves it.
        _stop_pid_file(self.workdir / "jupyterhub-proxy.pid", "configurable-http-proxy")


@dataclass
class DevSystem:
    """Every running piece of `make dev`; stop() undoes start_dev_system()."""

    workdir: Path
    deps: DevDeps
    control_plane: ControlPlane
    mock: MockSlurm
    operator: Operator
    hub: Hub
    kerberos: KerberosSite | None = None

    @property
    def url(self) -> str:
        return self.hub.url

    def kubectl(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["kubectl", *args], input=stdin, env=self.control_plane.env, capture_output=True,
            text=True, timeout=60, check=False,
        )  # fmt: skip

    def sessions(self) -> list[str]:
        """namespace/name of every NotebookSession, or an error when the API cannot be asked."""
        result = self.kubectl("get", "notebooksessions", "-A", "-o", "json")
        if result.returncode != 0:
            raise DevError(f"kubectl get notebooksessions failed: {result.stderr}")
        items = json.loads(result.stdout)["items"]
        return [f"{i['metadata']['namespace']}/{i['metadata']['name']}" for i in items]

    def check_alive(self) -> None:
        """Raise if a child process died."""
        self.hub.alive()
        self.operator._alive()
        self.mock._alive()

    def stop(self, timeout: float = SESSIONS_GONE_TIMEOUT_S) -> None:
        steps: list[tuple[str, Callable[[], None]]] = [
            ("JupyterHub and the proxy", self.hub.stop),
            ("the sessions (the operator cancels their jobs)", lambda: self._end_sessions(timeout)),
            ("the operator", self.operator.stop),
            ("the emulated Slurm sites", self.mock.stop),
            ("the Kerberos realm and real Slurm", self.kerberos.stop if self.kerberos else _noop),
            ("the control plane", self.control_plane.stop),
        ]
        failures = []
        for what, step in steps:
            try:
                step()
            except Exception as error:  # keep stopping the rest
                failures.append(f"stopping {what}: {error}")
        if failures:
            raise DevError("; ".join(failures))

    def _end_sessions(self, timeout: float) -> None:
        if self.operator.process is None or self.operator.process.poll() is not None:
            return  # nobody would remove the finalizers; the mock kills the jobs when it stops
        result = self.kubectl("delete", "notebooksessions", "--all", "-A", "--wait=false")
        if result.returncode != 0:
            raise DevError(f"kubectl delete notebooksessions failed: {result.stderr}")
        try:
            wait_until(lambda: not self.sessions(), timeout, "the sessions to be gone", 0.5)
        except TimeoutError:
            raise DevError(
                f"sessions still present after {timeout:.0f} s: {', '.join(self.sessions())} "
                f"(see {self.operator.log_path})"
            ) from None


def start_dev_system(
    workdir: Path,
    *,
    hub_port: int = 0,
    deps: DevDeps | None = None,
    poll_interval: int = 2,
    idle_timeout: int = 0,
    cull_every: int = 60,
    operator_settings: Mapping[str, str] | None = None,
    kerberos: bool = False,
    real_slurm: realslurm.Deployment | None = None,
) -> DevSystem:
    """Start everything under `workdir` (wiped first: every start is a fresh system). With
    ``kerberos``, also the realm and the GSSAPI site, on ``real_slurm`` if given (else its own)."""
    deps = deps or ensure_dev_deps()
    workdir = workdir.resolve()
    for part in ("keys", "mockslurm", "operator", "hub"):
        shutil.rmtree(workdir / part, ignore_errors=True)
    control_plane = ControlPlane(workdir / "controlplane")
    started: list[ControlPlane | MockSlurm | Operator | Hub | KerberosSite] = []
    kerberos_site = KerberosSite(workdir, real_slurm=real_slurm) if kerberos else None
    try:
        control_plane.start()
        started.append(control_plane)
        control_plane.install_crds(repo_root() / "crds")
        control_plane.ensure_namespace(SESSION_NAMESPACE)
        # As deployed: the chart's admission policy decides who may run as whom, and the hub
        # runs as the chart's hub ServiceAccount with the chart's hub RBAC, not as admin.
        admission.install_admission_policy(
            control_plane,
            protected_users=[
                topology.MONITOR_USER,
                topology.ADMIN_USER,
                *([SITE_ACCOUNT] if kerberos_site else []),
            ],
            probe_namespace=SESSION_NAMESPACE,
        )
        hub_kubeconfig = admission.install_hub_identity(
            control_plane, SESSION_NAMESPACE, expiration=HUB_TOKEN_LIFETIME
        )

        mock = MockSlurm(workdir / "mockslurm", Keys.create(workdir / "keys"))
        mock.start()
        started.append(mock)
        if kerberos_site is not None:
            started.append(kerberos_site)
            kerberos_site.start()

        def kubectl(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                ["kubectl", *args], input=stdin, env=control_plane.env, capture_output=True,
                text=True, timeout=60, check=False,
            )  # fmt: skip

        stack.install_objects(
            kubectl,
            mock,
            poll_interval=poll_interval,
            profiles=repo_root() / "examples" / "profiles.yaml",
            # Extensions work in make dev: the sites' admin account may raise time limits.
            admin_user=topology.ADMIN_USER,
        )
        if kerberos_site is not None:
            kerberos_site.install(kubectl, poll_interval)
        operator = Operator(
            workdir / "operator",
            control_plane.kubeconfig,
            settings={
                # Jobs run as alice or bob with Debian's python3 on PATH: the notebook comes from
                # the world-readable environment that install-dev-deps.sh built for them.
                # The notebook asks the hub again about a token after 10 s (default 300 s), so
                # that a revoked share closes an open session within seconds.
                "BBP_NOTEBOOK_COMMAND": json.dumps(
                    [
                        str(deps.singleuser),
                        "--ip={host}",
                        "--port={port}",
                        f"--HubOAuth.cache_max_age={NOTEBOOK_AUTH_CACHE_S}",
                    ]
                ),  # fmt: skip
                **(kerberos_site.operator_settings() if kerberos_site else {}),
                **(operator_settings or {}),
            },
        )
        operator.start()
        started.append(operator)

        hub = Hub(
            workdir / "hub", hub_kubeconfig, deps.chp, port=hub_port,
            idle_timeout=idle_timeout, cull_every=cull_every,
            extra_env=kerberos_site.hub_environment() if kerberos_site else {},
        )  # fmt: skip
        hub.start()
        started.append(hub)
    except BaseException:
        for piece in reversed(started):
            try:
                piece.stop()
            except Exception as error:
                print(f"dev: while cleaning up: {error}", file=sys.stderr)
        if control_plane not in started:
            control_plane.stop()
        raise
    return DevSystem(workdir, deps, control_plane, mock, operator, hub, kerberos_site)


def _noop() -> None:
    pass


def _stop_pid_file(pid_file: Path, expected: str, timeout: float = 10.0) -> None:
    """SIGTERM (then SIGKILL) the process in `pid_file` while it is still `expected`."""
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return  # no file

    def running() -> bool:  # False once gone, or once the PID is reused
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            return False
        return expected in command

    processes.stop_pid(pid, running=running, grace=timeout, kill_wait=1.0)
    pid_file.unlink(missing_ok=True)


def _banner(system: DevSystem, prometheus: Prometheus | None = None) -> str:
    sites = ", ".join(
        f"{site.display_name} {site.address}:{system.mock.ports[site.name]} ({site.nodes} nodes"
        + (", project required" if site.require_account else "")
        + ")"
        for site in system.mock.sites
    )
    logins = (
        system.kerberos.banner_lines()
        if system.kerberos is not None
        else [f"  log in as:   {' or '.join(DEV_USERS)}, password {system.hub.password}"]
    )
    return "\n".join(
        [
            "",
            "bbp-notebooks dev system is up",
            f"  JupyterHub:  {system.url}/",
            *logins,
            f"  idle cull:   after {system.hub.idle_timeout} s without activity"
            if system.hub.idle_timeout
            else "  idle cull:   off",
            f"  sites:       {sites}",
            f"  kubectl:     export KUBECONFIG={system.control_plane.kubeconfig}",
            f"  metrics:     {system.operator.url}/metrics",
            f"  Prometheus:  {prometheus.url}/classic/alerts"
            if prometheus is not None
            else "  Prometheus:  BBP_DEV_PROMETHEUS=1 make dev starts one scraping the operator",
            f"  logs:        {system.workdir}/{{controlplane,mockslurm,operator,hub}}/*.log",
            "Ctrl-C stops everything.",
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make dev", description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path(".dev"), help="state (default .dev)")
    parser.add_argument("--port", type=int, default=8000, help="the hub's port (default 8000)")
    parser.add_argument(
        "--prometheus",
        action="store_true",
        default=os.environ.get("BBP_DEV_PROMETHEUS") == "1",
        help="also run Debian's Prometheus, scraping the operator with the chart's alert rules "
        "(or BBP_DEV_PROMETHEUS=1)",
    )
    parser.add_argument(
        "--idle-timeout",
        type=int,
        default=DEV_IDLE_TIMEOUT_S,
        help="jupyterhub-idle-culler stops servers idle this long, in seconds "
        f"(default {DEV_IDLE_TIMEOUT_S}; 0: no culling)",
    )
    parser.add_argument(
        "--kerberos",
        action="store_true",
        help="also a local MIT KDC and a GSSAPI site on real Slurm; the hub logs users in with "
        "Kerberos passwords (make dev KERBEROS=1; needs root)",
    )
    parser.add_argument(
        "--real-slurm",
        type=Path,
        default=None,
        help="with --kerberos: use the real Slurm deployment already running in this folder "
        "(devtools/realslurm.py up --dir) instead of starting one",
    )
    args = parser.parse_args(argv)
    borrowed = realslurm.Deployment.load(args.real_slurm) if args.real_slurm else None

    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    began = time.monotonic()
    system = start_dev_system(
        args.workdir,
        hub_port=args.port,
        idle_timeout=args.idle_timeout,
        kerberos=args.kerberos,
        real_slurm=borrowed,
    )
    prometheus = _start_prometheus(system) if args.prometheus else None
    print(_banner(system, prometheus), flush=True)
    print(f"(started in {time.monotonic() - began:.1f} s)", flush=True)
    status = 0
    try:
        while not stop.wait(1.0):
            system.check_alive()
    except Exception as error:  # a piece died: stop the others all the same
        print(f"dev: {error}", file=sys.stderr)
        status = 1
    print("dev: stopping (deleting sessions first, so their jobs are cancelled)", flush=True)
    if prometheus is not None:
        prometheus.stop()
    try:
        system.stop()
    except DevError as error:
        print(f"dev: {error}", file=sys.stderr)
        status = 1
    print("dev: stopped", flush=True)
    return status


def _start_prometheus(system: DevSystem) -> Prometheus:
    """Prometheus scraping the operator, with the chart's alerts (its own data in the workdir)."""
    workdir = system.workdir / "prometheus"
    shutil.rmtree(workdir, ignore_errors=True)
    address = system.operator.url.removeprefix("http://")
    prometheus = Prometheus(
        workdir,
        {"bbp-notebooks-operator": [address]},
        rule_files=[write_rules(workdir / "rules.yaml")],
        scrape_interval="5s",
        evaluation_interval="5s",
    )
    prometheus.start()
    return prometheus


if __name__ == "__main__":
    sys.exit(main())
